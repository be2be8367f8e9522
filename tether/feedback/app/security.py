"""Passwords, API tokens, login sessions, CSRF tokens and rate limits.

- Passwords: argon2id (argon2-cffi defaults), rehashed on login when the parameters change.
- API tokens and session cookies are 256-bit random strings; only their SHA-256 is stored. A
  slow hash is for guessable secrets (passwords); a random 256-bit token cannot be brute-forced,
  and a fast hash lets every request look its token up by an index.
- CSRF: the synchronizer-token pattern. A logged-in session keeps a random token in its row;
  before login the token lives in its own cookie (login CSRF). Every form POST must echo it.
- Rate limits: an in-process sliding window per (bucket, key); one server process holds them.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
TOKEN_PREFIX = "tl_"
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


@functools.cache
def dummy_hash() -> str:
    """A real hash to verify against when the user does not exist, so a login for an unknown
    name takes as long as one with a wrong password (no user enumeration by timing)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def new_token(prefix: str = TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(given: str | None, expected: str | None) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(given, expected)


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds for each key; ``hit`` says whether the
    event is allowed (and counts it when it is)."""

    def __init__(self, limit: int, window: float):
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            return True

    def reset(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)
