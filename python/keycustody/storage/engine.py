"""Engine creation: one URL picks the backend; each backend gets the settings keycustody's
invariants depend on.

SQLite: WAL journal (never PERSIST, which keeps page pre-images), ``secure_delete=ON`` so
deleted key bytes are overwritten (``FAST`` is not enough, see TESTPLAN §2), and
``synchronous=FULL`` so an acknowledged write survives power loss. Write transactions start
with ``BEGIN IMMEDIATE`` so two processes never deadlock upgrading a read lock.

PostgreSQL (psycopg 3): many processes write at once. Transactions that change keys (rotate,
shred, suspend, KEK moves) take a transaction-scoped advisory lock exclusively, so they see and
change key state as SQLite's single writer would; record writes (put, delete, rewrap batches)
take it shared, so they run side by side but never across a key change. The audit trail's head
has a lock of its own (see :mod:`keycustody.audit.log`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Dialect, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from keycustody.errors import ConfigError, StorageError

SQLITE_PAGE_SIZE = 16384
"""Page size of a SQLite database keycustody creates (SQLite's default is 4096); an existing
database keeps its own. Records are kilobytes of ciphertext, and at 4 KiB a 4 KiB record
spills into an overflow page of its own. Measured with 100,000 files of the standard
library's sizes (1.76 GB) plus 4,096 records of 4 KiB, against 4 KiB pages: 16 KiB pages
ingest in 10.3-12.4 s instead of 13.5-15.3, put the small records in 190-207 ms instead of
210-242, with the same latency for a one-record put (2-3 ms) and a file 7% larger. 64 KiB
pages were faster in bulk still, but made a one-record put about 1 ms slower (each commit
writes whole pages to the WAL) and the file 12% larger."""

SQLITE_PRAGMAS = (
    f"PRAGMA page_size={SQLITE_PAGE_SIZE}",  # before WAL mode and the first table, or no effect
    "PRAGMA journal_mode=WAL",
    "PRAGMA secure_delete=ON",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
)

WRITE = {"keycustody_write": "keys"}
"""Execution option marking a transaction that changes keys (SQLite: BEGIN IMMEDIATE;
PostgreSQL: the vault's write lock, exclusive)."""

RECORD_WRITE = {"keycustody_write": "records"}
"""Execution option marking a transaction that writes records only, under key versions it
does not change (SQLite: BEGIN IMMEDIATE; PostgreSQL: the vault's write lock, shared)."""

# Advisory lock ids (one-key space, per database): arbitrary constants no other code uses.
PG_WRITE_LOCK = 0x2C3A6E1F0B9D4A57
PG_AUDIT_LOCK = 0x5B17C9E2D04F3A86


def shares_one_connection(engine: Engine) -> bool:
    """Whether every checkout of ``engine`` is the same connection (an in-memory SQLite
    database): work on another thread would then share a transaction with this one."""
    return isinstance(engine.pool, StaticPool)


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


def _postgres_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("keycustody_write")
        if write == "keys":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")
        elif write == "records":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock_shared({PG_WRITE_LOCK})")


BULK_WRITE_CACHE_KIB = 64 * 1024
"""SQLite page cache of a connection while put_many writes (the default is 2 MiB): enough
for the indexes of a few hundred thousand records. Measured on an ingest of 100,000 files
(1.76 GB): 4.55 GB written with the default, 4.00 with 16 MiB, 3.87 with 32 MiB, 3.81 with
64 MiB (3.5 GB is the WAL and the checkpoint writing each byte once)."""


@contextlib.contextmanager
def bulk_write_cache(conn: Connection) -> Iterator[None]:
    """Gives a SQLite connection a larger page cache while the block runs (put_many's
    transaction), then its own again, which frees the pages above it.

    With the default 2 MiB, a batch's random inserts into the record-id and blind-index
    indexes evict index pages that the next rows dirty again: each is written to the WAL
    several times per transaction and read back in between. Stream writes, whose memory must
    stay flat, and reads keep the default."""
    if conn.dialect.name != "sqlite":
        yield
        return
    (previous,) = conn.exec_driver_sql("PRAGMA cache_size").one()
    conn.exec_driver_sql(f"PRAGMA cache_size=-{BULK_WRITE_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={int(previous)}")


def lock_audit_head(conn: Any) -> None:
    """Serialises appends to the audit chain until the transaction ends (PostgreSQL; on
    SQLite the write transaction already holds the database's only write lock)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_AUDIT_LOCK})")


def db_message(exc: SQLAlchemyError) -> str:
    """The driver's message of a database error, for keycustody's own errors: SQLAlchemy's
    text would echo the statement's parameters (ciphertext, wrapped keys, blind indexes).

    From PostgreSQL only the primary message: psycopg's text adds the server's DETAIL, which
    quotes the values of a violated key (record ids, blind indexes), and the statement's
    LINE."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return type(exc).__name__
    primary = getattr(getattr(orig, "diag", None), "message_primary", None)
    return str(primary or orig)


@contextlib.contextmanager
def driver_errors(dialect: Dialect, statement: str | None = None) -> Iterator[None]:
    """Raises the driver's errors as SQLAlchemy's DBAPIError, with ``statement`` but not its
    parameters, as they would be raised through a session (so :func:`raises_storage_errors`
    converts them): for work on a driver connection itself."""
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        raise DBAPIError.instance(
            statement, None, exc, dbapi_error, hide_parameters=True, dialect=dialect
        ) from exc


@contextlib.contextmanager
def driver_cursor(driver: Any, dialect: Dialect, sql: str, params: Any) -> Iterator[Any]:
    """A cursor of a driver connection that has run ``sql``, closed on exit; errors raise as
    with :func:`driver_errors`, also while its rows are fetched.

    psycopg gets its results in binary format: in text, each bytea value crosses the wire as
    hex, twice its size, and is decoded back (a 4 KiB get_many: 305 -> 175 ms; stream reads
    2.3x faster).
    """
    with driver_errors(dialect, sql):
        cursor = driver.cursor()
        try:
            if dialect.name == "postgresql":
                cursor.execute(sql, params, binary=True)
            else:
                cursor.execute(sql, params)
            yield cursor
        finally:
            cursor.close()


def driver_rows(driver: Any, dialect: Dialect, sql: str, params: Any) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` run on a driver connection, as the driver's tuples, without
    SQLAlchemy's result objects (see :func:`driver_cursor`)."""
    with driver_cursor(driver, dialect, sql, params) as cursor:
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    return rows


@contextlib.contextmanager
def driver_connection(engine: Engine) -> Iterator[Any]:
    """A driver (DBAPI) connection from ``engine``'s pool, outside any session, for hot
    statements: a session's setup and teardown cost 0.2 ms, and a Connection's 0.1-0.2 ms,
    several times the statement. Its errors raise as with :func:`driver_errors`."""
    with driver_errors(engine.dialect):
        pooled = engine.raw_connection()
        try:
            yield pooled.driver_connection
        finally:
            pooled.close()


_F = TypeVar("_F", bound=Callable[..., Any])
_C = TypeVar("_C", bound=type)


def raises_storage_errors(operation: str) -> Callable[[_F], _F]:
    """Makes a function raise :class:`StorageError` (``"<operation> failed in the database:
    <driver's message>"``, chained to the original) where the database fails, instead of the
    SQLAlchemy exception whose text echoes the statement's parameters. keycustody's own
    errors, and the more specific StorageErrors of the function itself, pass unchanged."""

    def decorate(func: _F) -> _F:
        if inspect.isgeneratorfunction(func):
            # Its body runs after the wrapper has returned: nothing would be converted.
            raise TypeError(f"{func.__qualname__} is a generator function")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except SQLAlchemyError as exc:
                raise StorageError(
                    f"{operation} failed in the database: {db_message(exc)}"
                ) from exc

        return cast(_F, wrapper)

    return decorate


def public_methods_raise_storage_errors(cls: _C) -> _C:
    """Class decorator: :func:`raises_storage_errors` on every public method defined in
    ``cls`` (operation ``Class.method``), so that no method added later can leak a database
    error's parameters. A method calling another converts once, where it failed."""
    for name, attr in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(attr):
            setattr(cls, name, raises_storage_errors(f"{cls.__name__}.{name}")(attr))
    return cls


def make_engine(url: str) -> Engine:
    """Creates the engine for ``url`` (``sqlite:///path.db`` or ``postgresql+psycopg://…``).

    Its errors and logs never show a statement's parameters (``hide_parameters``): they
    are ciphertext, wrapped keys and blind indexes, and keycustody's StorageErrors chain the
    SQLAlchemy error they convert.

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
                parsed,
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
                hide_parameters=True,
            )
        else:
            folder = Path(database).expanduser().resolve().parent
            if not folder.is_dir():
                raise ConfigError(f"the database folder {folder} does not exist")
            engine = create_engine(parsed, connect_args={"timeout": 30}, hide_parameters=True)
        _sqlite_hooks(engine)
        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # no driver named: ours, not SQLAlchemy's psycopg2
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_driver_name() != "psycopg":
            raise ConfigError(
                "PostgreSQL is supported through psycopg 3: use a postgresql+psycopg://… URL"
            )
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(
                "PostgreSQL needs psycopg 3: pip install 'keycustody[postgres]'"
            ) from None
        # pool_pre_ping: a worker whose connection the server dropped reconnects on checkout.
        engine = create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
        _postgres_hooks(engine)
        return engine
    raise ConfigError(
        f"unsupported database backend {backend!r}; use sqlite:///PATH or postgresql+psycopg://…"
    )
