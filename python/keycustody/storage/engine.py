"""Engine creation: one URL picks the backend; SQLite gets the pragmas erasure depends on.

SQLite: WAL journal (never PERSIST, which keeps page pre-images), ``secure_delete=ON`` so
deleted key bytes are overwritten (``FAST`` is not enough, see TESTPLAN §2), and
``synchronous=FULL`` so an acknowledged write survives power loss. Write transactions start
with ``BEGIN IMMEDIATE`` so two processes never deadlock upgrading a read lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from keycustody.errors import ConfigError

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA secure_delete=ON",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
)

WRITE = {"keycustody_write": True}
"""Execution option marking a transaction that writes (SQLite: BEGIN IMMEDIATE)."""


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event own transaction starts (pysqlite's own are deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in SQLITE_PRAGMAS:
            cur.execute(pragma)
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("keycustody_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def make_engine(url: str) -> Engine:
    """Creates the engine for ``url`` (``sqlite:///path.db`` or ``postgresql+psycopg://…``).

    Raises:
        ConfigError: the URL is malformed, the backend is unsupported or its folder is missing.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            engine = create_engine(
                parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            folder = Path(database).expanduser().resolve().parent
            if not folder.is_dir():
                raise ConfigError(f"the database folder {folder} does not exist")
            engine = create_engine(parsed, connect_args={"timeout": 30})
        _sqlite_hooks(engine)
        return engine
    if backend == "postgresql":
        raise ConfigError(
            "PostgreSQL support is planned (issue: scale out) and not available yet; "
            "use a sqlite:/// URL"
        )
    raise ConfigError(f"unsupported database backend {backend!r}; use sqlite:///PATH")
