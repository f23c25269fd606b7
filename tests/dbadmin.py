"""Raw access to a test database behind the library's back, as its administrator (or an
attacker holding the database's credentials) has it: plain ``sqlite3`` on a SQLite file, plain
``psycopg`` on a PostgreSQL database. Tests tamper and read rows through it on both backends.

Statements are written once, with sqlite3's ``?`` placeholders; on PostgreSQL they are rewritten
to psycopg's ``%s``. Bytes come back as ``bytes`` on both; timestamps come back as SQLite's
stored text or as PostgreSQL's ``datetime`` (:func:`as_datetime` reads either).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
from sqlalchemy.engine import make_url

AUDIT_COLUMNS = (
    "seq",
    "at",
    "actor",
    "action",
    "subject",
    "kms_key_id",
    "kms_key_version",
    "outcome",
    "details",
    "prev_hash",
    "hash",
    "mac",
)
"""The columns of ``audit_events`` in their order, as a raw reader or tamperer names them
(spelled out, not read from the model: a test compares :class:`AuditEvent`'s fields with it)."""


def backend_of(db_url: str) -> str:
    """``sqlite`` or ``postgresql``."""
    return make_url(db_url).get_backend_name()


def sqlite_file(db_url: str) -> Path:
    """The file of a ``sqlite:///PATH`` URL."""
    url = make_url(db_url)
    assert url.get_backend_name() == "sqlite" and url.database, db_url
    return Path(url.database)


def libpq_url(db_url: str) -> str:
    """A ``postgresql+psycopg://`` URL as psycopg (libpq) takes it."""
    return make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)


class RawDB:
    """A DBAPI connection in autocommit mode, with sqlite3's ``execute(sql, params)`` on both
    backends (each statement commits on its own unless the caller runs ``BEGIN`` itself).

    Foreign keys are not enforced unless ``foreign_keys``: sqlite3's default; on PostgreSQL
    ``session_replication_role = replica`` (superuser), what an administrator does to load or
    edit rows past the constraints. The library must notice such edits by itself.
    """

    def __init__(self, db_url: str, *, foreign_keys: bool = False) -> None:
        self.backend = backend_of(db_url)
        self._conn: Any
        if self.backend == "sqlite":
            self._conn = sqlite3.connect(sqlite_file(db_url), isolation_level=None)
            if foreign_keys:
                self._conn.execute("PRAGMA foreign_keys=ON")
        else:
            self._conn = psycopg.connect(libpq_url(db_url), autocommit=True)
            if not foreign_keys:
                self._conn.execute("SET session_replication_role = replica")

    def _sql(self, statement: str) -> str:
        if self.backend == "sqlite":
            return statement
        return statement.replace("%", "%%").replace("?", "%s")

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        """Runs one statement; returns the cursor (``fetchone``, ``fetchall``, ``rowcount``)."""
        return self._conn.execute(self._sql(statement), tuple(params))

    def executemany(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        if self.backend == "sqlite":
            self._conn.executemany(statement, params)
        else:
            with self._conn.cursor() as cur:
                cur.executemany(self._sql(statement), [tuple(p) for p in params])

    def rows(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.execute(statement, params).fetchall()]

    def one(self, statement: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        got = self.execute(statement, params).fetchone()
        return None if got is None else tuple(got)

    def dicts(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.execute(statement, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def raw_db(db_url: str, *, foreign_keys: bool = False) -> RawDB:
    """A raw connection to the test database (close it, or use it in ``with``)."""
    return RawDB(db_url, foreign_keys=foreign_keys)


def admin_sql(db_url: str, statement: str, *params: Any) -> None:
    """Runs one statement on its own raw connection and commits it."""
    with RawDB(db_url) as conn:
        conn.execute(statement, params)


def as_datetime(value: object) -> datetime:
    """A stored timestamp: SQLite's text or PostgreSQL's ``datetime``."""
    if isinstance(value, datetime):
        return value
    assert isinstance(value, str), value
    return datetime.fromisoformat(value)


# -- PostgreSQL databases for tests -------------------------------------------------------------


def pg_server() -> str:
    """The test PostgreSQL server's URL (``KEYCUSTODY_PG_URL``; any database on it)."""
    url = os.environ.get("KEYCUSTODY_PG_URL")
    assert url, "KEYCUSTODY_PG_URL is not set"
    return url


def _server(db_url: str) -> psycopg.Connection[Any]:
    """A connection to the server's ``postgres`` database (CREATE and DROP run outside the
    database they name)."""
    url = make_url(db_url).set(database="postgres").render_as_string(hide_password=False)
    return psycopg.connect(libpq_url(url), autocommit=True)


def pg_create(*, template: str | None = None, prefix: str = "kc") -> str:
    """Creates a database on the test server (a copy of the database ``template`` if given)
    and returns its URL, for ``Vault.open``.

    ``STRATEGY FILE_COPY`` copies the template's files in one go, several times faster than
    PostgreSQL 15's default (WAL_LOG) for the small databases tests use.
    """
    name = f"{prefix}_{secrets.token_hex(6)}"
    how = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
    server = pg_server()
    with _server(server) as conn:
        conn.execute(f"CREATE DATABASE {name}{how}".encode())
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def pg_drop(db_url: str) -> None:
    """Drops the database of ``db_url``, closing whatever still connects to it."""
    name = make_url(db_url).database
    with _server(db_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
