"""Errors the app's operations raise; the web and API layers map them to HTTP statuses."""

from __future__ import annotations

from tether.errors import TetherError


class NotFound(TetherError):
    status = 404


class Conflict(TetherError):
    """The request is valid but the state forbids it (judged already, lease taken over)."""

    status = 409


class Invalid(TetherError):
    status = 422
