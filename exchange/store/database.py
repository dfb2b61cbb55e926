"""The database: engine from a URL, SQLite tuned for durability, migrations on start.

``--db URL`` (or ``EXCHANGE_DB``) picks the store: ``sqlite:///path`` (the embedded
default) or ``postgresql+psycopg://...``. SQLite runs in WAL mode with
``synchronous=FULL``: a commit is on disk before the hub sends its evidence.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import ArgumentError, OperationalError

from exchange.errors import InputError

DEFAULT_DB = "sqlite:///exchange.db"


def database_url(explicit: str | None = None) -> str:
    """``--db`` if given, else ``EXCHANGE_DB``, else SQLite under the working directory."""
    return explicit or os.environ.get("EXCHANGE_DB") or DEFAULT_DB


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a malformed URL is an :class:`InputError` (exit 2)."""
    try:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    except (ArgumentError, ValueError) as error:
        raise InputError(f"--db {url!r} is not a database URL: {error}") from None
    except ModuleNotFoundError as error:
        raise InputError(f"--db {url!r}: the driver is not installed ({error.name})") from None


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "exchange.store:migrations")
    return config


#: the advisory lock replicas take to migrate the database one at a time
_MIGRATE = 0x65786D67


def upgrade(engine: Engine) -> str:
    """Apply every migration up to head; returns the revision now in force."""
    config = _alembic_config()
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                # replicas starting together migrate one after the other
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except OperationalError as error:
        raise InputError(f"cannot open the database {engine.url!r}: {error.orig}") from None
    return head_revision()


def head_revision() -> str:
    """The newest migration shipped with this version."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    return head or ""


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
