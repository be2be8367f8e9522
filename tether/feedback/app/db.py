"""Database engine and migrations.

SQLite (the default) runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE``: the queue reads counts and then writes a lease or a judgment, and taking the
write lock up front makes that read-then-write atomic (a deferred transaction would fail with
"database is locked" when two of them try to upgrade their read locks at once). PostgreSQL
(``postgresql+psycopg://...``) gets row locks (``SELECT ... FOR UPDATE``) in ``queue.py`` instead.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.orm import Session, sessionmaker

from tether.errors import ConfigError

DEFAULT_DB = "sqlite:///tether-label.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def database_url(value: str | None) -> str:
    """A SQLAlchemy URL from ``--db``: a URL as is, a bare path as a SQLite file."""
    if not value:
        return DEFAULT_DB
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def make_engine(url: str) -> Engine:
    url = database_url(url)
    if url.startswith("sqlite"):
        if ":memory:" in url or url in ("sqlite://", "sqlite:///"):
            raise ConfigError("an in-memory SQLite database is not shared between the server's "
                              "threads; give a file path")
        folder = Path(make_url(url).database).parent
        if not folder.is_dir():  # sqlite3 would only say "unable to open database file"
            raise ConfigError(f"cannot create the database {make_url(url).database}: the folder "
                              f"{folder} does not exist (create it first: mkdir -p {folder})")
        engine = create_engine(url, connect_args={"check_same_thread": False,
                                                  "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _sqlite_pragmas(engine)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as error:
        raise ConfigError(f"the database driver for {url.split('://')[0]} is not installed "
                          f"({error.name}); e.g. pip install 'psycopg[binary]'") from None


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync at checkpoints
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest migration shipped with tether; returns its revision."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return ScriptDirectory.from_config(config).get_current_head()


def is_initialized(engine: Engine) -> bool:
    return inspect(engine).has_table("alembic_version")
