"""The labeling web app (``tether label serve``): FastAPI + SQLAlchemy, SQLite or PostgreSQL.

| file          | job                                                                     |
|---------------|-------------------------------------------------------------------------|
| `models.py`   | tables                                                                  |
| `db.py`       | engine (SQLite WAL, busy timeout, BEGIN IMMEDIATE) and Alembic upgrade  |
| `projects.py` | users, tokens, projects, guidelines versions, item import, records out  |
| `queue.py`    | leases, overlap, gold mixing, blinding, submit / skip, AI bulk upload   |
| `security.py` | argon2 passwords, hashed tokens, CSRF comparison, rate limiter          |
| `server.py`   | ``create_app``, settings, sessions, error pages                         |
| `web.py`      | HTML pages (Jinja2, autoescaped) and admin pages                        |
| `api.py`      | JSON API for scripts and judge bots                                     |
"""

from tether.feedback.app.server import Settings, create_app

__all__ = ["Settings", "create_app"]
