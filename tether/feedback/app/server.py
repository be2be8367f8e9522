"""The FastAPI application: settings, per-request transactions, authentication, CSRF, limits.

Pages live in ``web.py``, the JSON API in ``api.py``. ``create_app(Settings(db_url=...))``
migrates the database to the newest schema before serving.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from tether.errors import DataValidationError, TetherError
from tether.feedback.app import security
from tether.feedback.app.db import make_engine, migrate, session_factory
from tether.feedback.app.models import LoginSession, User, utcnow
from tether.feedback.app.render import render_markdown

HERE = Path(__file__).parent
SESSION_COOKIE = "tether_session"
LOGIN_CSRF_COOKIE = "tether_csrf"


@dataclass
class Settings:
    db_url: str
    secure_cookies: bool = False  # set behind HTTPS: cookies then never travel in clear text
    session_hours: float = 12.0
    # failed logins: free tries per (username, client address), then waits doubling from
    # login_backoff[0] seconds up to login_backoff[1]; per address (any names) a larger budget
    login_free_failures: int = 5
    login_client_free_failures: int = 100
    login_backoff: tuple[float, float] = (1.0, 900.0)
    # (events, seconds) per window
    submit_limit: tuple[int, float] = (240, 60.0)  # judgments per user
    api_limit: tuple[int, float] = (1200, 60.0)  # API requests per user
    max_upload_mb: float = 64.0  # the largest request body (an import upload); larger: 413


class HTTPProblem(TetherError):
    """An error with an HTTP status, shown as a page or as JSON ``{"detail": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class LoginRequired(TetherError):
    pass


templates = Jinja2Templates(directory=str(HERE / "templates"))  # autoescape on for .html
templates.env.filters["markdown"] = render_markdown


def create_app(settings: Settings) -> FastAPI:
    from tether.feedback.app import api, web

    engine = make_engine(settings.db_url)
    migrate(engine)
    app = FastAPI(title="tether label", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    # SQLite runs one write transaction at a time anyway; queueing the server's threads on a
    # lock hands the database over at once, where SQLite's busy handler would poll with sleeps
    # of up to 100 ms (benchmarks/RESULTS.md, "Measurements behind design choices").
    app.state.write_lock = (threading.Lock() if engine.dialect.name == "sqlite"
                            else nullcontext())
    security.dummy_hash()  # now, not by each of the first parallel logins for unknown names
    app.state.limits = {name: security.RateLimiter(*getattr(settings, f"{name}_limit"))
                        for name in ("submit", "api")}
    base, longest = settings.login_backoff
    app.state.login_failures = {
        "user": security.FailureBackoff(settings.login_free_failures, base, longest),
        "client": security.FailureBackoff(settings.login_client_free_failures, base, longest)}
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(web.router)
    app.include_router(api.router, prefix="/api")

    app.add_middleware(BodyLimits, upload_bytes=int(settings.max_upload_mb * 2**20))
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(TetherError)
    async def tether_error(request: Request, error: TetherError):
        if isinstance(error, LoginRequired):
            if request.url.path.startswith("/api/"):
                return JSONResponse({"detail": "authentication required"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        status = getattr(error, "status", 422 if isinstance(error, DataValidationError) else 400)
        headers = getattr(error, "headers", {})
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)
        return templates.TemplateResponse(request, "error.html",
                                          {"status": status, "message": str(error), "user": None},
                                          status_code=status, headers=headers)

    return app


class BodyLimits:
    """413 for a request body over its route's limit, counted as it is read (a Content-Length
    over the limit is refused before any of it is): an import upload or an AI judgment batch
    may take ``upload_bytes``, every other request (forms, submissions) ``FORM_BYTES``. Those
    two handlers check the login or token before they read (web.admin_import, api.bulk)."""

    FORM_BYTES = 2**20
    UPLOADS = re.compile(r"^/(admin/p/[^/]+/import|api/projects/[^/]+/judgments/bulk)$")

    def __init__(self, app, upload_bytes: int):
        self.uploads = RequestBodyLimitMiddleware(app, upload_bytes)
        self.others = RequestBodyLimitMiddleware(app, self.FORM_BYTES)

    async def __call__(self, scope, receive, send):
        upload = scope["type"] == "http" and self.UPLOADS.match(scope["path"])
        await (self.uploads if upload else self.others)(scope, receive, send)


class SecurityHeaders:
    """Headers on every response (a plain ASGI middleware: Starlette's ``BaseHTTPMiddleware``
    costs a task and a stream per request). The CSP lets no inline script run even if some
    text slipped through unescaped."""

    HEADERS = [
        (b"content-security-policy",
         b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
         b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
        (b"cache-control", b"no-store"),
    ]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    header for header in self.HEADERS if header[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@contextmanager
def transaction(request: Request) -> Iterator[Session]:
    """One database transaction for the request: committed on success, rolled back on error."""
    with request.app.state.write_lock, request.app.state.sessions.begin() as db:
        yield db


def rate_limit(request: Request, bucket: str, key: str) -> None:
    limiter = request.app.state.limits[bucket]
    if not limiter.hit(f"{bucket}:{key}"):
        raise HTTPProblem(429, "too many requests; wait a minute and try again",
                          {"Retry-After": str(int(limiter.window))})


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# ---- web sessions ---------------------------------------------------------------------------

def current_session(request: Request, db: Session) -> LoginSession | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    session = db.scalar(select(LoginSession)
                        .where(LoginSession.token_hash == security.token_hash(token)))
    if session is None or session.expires_at <= utcnow() or not session.user.is_active:
        return None
    return session


def web_user(request: Request, db: Session, *, admin: bool = False) -> tuple[User, LoginSession]:
    session = current_session(request, db)
    if session is None:
        raise LoginRequired()
    if admin and session.user.role != "admin":
        raise HTTPProblem(403, "this page is for admins")
    return session.user, session


def start_session(request: Request, db: Session, user: User) -> str:
    token = security.new_token("ts_")
    hours = request.app.state.settings.session_hours
    db.add(LoginSession(token_hash=security.token_hash(token), user_id=user.id,
                        csrf_token=security.new_token(""),
                        expires_at=utcnow() + timedelta(hours=hours)))
    return token


def set_cookie(request: Request, response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=request.app.state.settings.secure_cookies, path="/")


def check_csrf(request: Request, given: str | None, session: LoginSession | None) -> None:
    """Reject a form POST whose token does not match the session's (or, before login, the
    login cookie's)."""
    expected = session.csrf_token if session else request.cookies.get(LOGIN_CSRF_COOKIE)
    if not security.same_token(given, expected):
        raise HTTPProblem(403, "the form's CSRF token is missing or stale; reload the page")


# ---- API tokens -----------------------------------------------------------------------------

def api_user(request: Request, db: Session, *, roles: tuple[str, ...] | None = None) -> User:
    from tether.feedback.app.projects import user_for_token

    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise LoginRequired()
    user = user_for_token(db, token.strip())
    if user is None:
        raise HTTPProblem(401, "invalid or revoked API token", {"WWW-Authenticate": "Bearer"})
    rate_limit(request, "api", str(user.id))
    if roles is not None and user.role not in roles:
        raise HTTPProblem(403, f"this endpoint is for {' or '.join(roles)} accounts")
    return user
