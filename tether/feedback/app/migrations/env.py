"""Alembic environment: tether passes an open connection (see ``db.migrate``)."""

from alembic import context

from tether.feedback.app.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tether label init` (tether.feedback.app.db.migrate)")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")  # SQLite ALTER TABLE
with context.begin_transaction():
    context.run_migrations()
