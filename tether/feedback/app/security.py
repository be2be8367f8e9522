"""Passwords, API tokens, login sessions, CSRF tokens and rate limits.

- Passwords: argon2id (argon2-cffi defaults), rehashed on login when the parameters change.
- API tokens and session cookies are 256-bit random strings; only their SHA-256 is stored. A
  slow hash is for guessable secrets (passwords); a random 256-bit token cannot be brute-forced,
  and a fast hash lets every request look its token up by an index.
- CSRF: the synchronizer-token pattern. A logged-in session keeps a random token in its row;
  before login the token lives in its own cookie (login CSRF). Every form POST must echo it.
- Rate limits: an in-process sliding window per (bucket, key); one server process holds them.
- Failed logins: counted per (username, client address) with exponential backoff, so a stranger
  guessing a name cannot lock its owner out, and people behind one address do not share one
  budget; a much larger budget per address slows spraying many names from one place.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
TOKEN_PREFIX = "tl_"
MIN_PASSWORD_LENGTH = 8
# argon2 takes 64 MiB and a core for a fraction of a second: a burst of logins running at once
# would take every core and gigabytes from the other requests. They queue here instead (outside
# any database lock), on at most half the cores.
_hashing_slots = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))


def hash_password(password: str) -> str:
    with _hashing_slots:
        return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        with _hashing_slots:
            return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


@functools.cache
def dummy_hash() -> str:
    """A real hash to verify against when the user does not exist, so a login for an unknown
    name takes as long as one with a wrong password (no user enumeration by timing)."""
    return hash_password(secrets.token_urlsafe(16))  # create_app makes it before serving


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


class FailureBackoff:
    """Failures per key with exponential backoff: after ``free`` failures, each further one
    makes the key wait ``base * 2**(extra - 1)`` seconds (at most ``longest``) from its last
    failure. ``succeeded`` clears a key; a key without failures for ``forget`` seconds starts
    over. Count an attempt with ``failed`` before checking the password (parallel guesses then
    see each other) and take it back with ``succeeded`` or ``forgive``."""

    MAX_KEYS = 100_000  # beyond this, keys past their wait are dropped

    def __init__(self, free: int, base: float = 1.0, longest: float = 900.0,
                 forget: float = 3600.0, clock=time.monotonic):
        self.free, self.base, self.longest, self.forget = free, base, longest, forget
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (count, last failure)
        self._lock = threading.Lock()

    def _delay(self, count: int) -> float:
        extra = count - self.free
        return 0.0 if extra < 1 else min(self.longest, self.base * 2 ** (extra - 1))

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        now = self._clock()
        with self._lock:
            count, last = self._failures.get(key, (0, now))
            if now - last > self.forget:
                self._failures.pop(key, None)
                return 0.0
            return max(0.0, last + self._delay(count) - now)

    def failed(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            count, last = self._failures.get(key, (0, now))
            if now - last > self.forget:
                count = 0
            self._failures[key] = (count + 1, now)
            if len(self._failures) > self.MAX_KEYS:
                self._prune(now)

    def forgive(self, key: str) -> None:
        """Take back one failure (an attempt counted up front that succeeded)."""
        with self._lock:
            count, last = self._failures.get(key, (0, 0.0))
            if count <= 1:
                self._failures.pop(key, None)
            else:
                self._failures[key] = (count - 1, last)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        self._failures = {key: (count, last) for key, (count, last) in self._failures.items()
                          if last + self._delay(count) > now}
