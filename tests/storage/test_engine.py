"""make_engine against real SQLite files: pragmas, URL checks, BEGIN IMMEDIATE."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError

import keycustody as kc
from keycustody.errors import ConfigError
from keycustody.storage.engine import (
    BULK_WRITE_CACHE_KIB,
    SQLITE_PAGE_SIZE,
    WRITE,
    make_engine,
)

MARKER = b"key-bytes-that-must-vanish-" + bytes(range(32))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "vault.db"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{db_path}")
    yield engine
    engine.dispose()


def _pragma(conn: Connection, name: str) -> Any:
    return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


def _short_busy_timeout(engine: Engine, ms: int = 50) -> None:
    """Runs after make_engine's own connect hook, so it overrides its busy_timeout."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA busy_timeout={ms}")


def _statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(*args: Any) -> None:
        seen.append(args[2])

    return seen


# -- pragmas -------------------------------------------------------------------------------


def test_pragmas_on_every_new_connection(engine: Engine, db_path: Path) -> None:
    with engine.connect() as a, engine.connect() as b:
        assert a.connection.dbapi_connection is not b.connection.dbapi_connection
        for conn in (a, b):
            assert _pragma(conn, "journal_mode") == "wal"
            assert _pragma(conn, "secure_delete") == 1
            assert _pragma(conn, "synchronous") == 2  # FULL
            assert _pragma(conn, "foreign_keys") == 1
            assert _pragma(conn, "busy_timeout") == 30000
    engine.dispose()  # the pool is empty now: the next connection is brand new
    with engine.connect() as c:
        assert _pragma(c, "secure_delete") == 1
        assert _pragma(c, "synchronous") == 2
        assert _pragma(c, "foreign_keys") == 1
    assert db_path.exists()


def test_wal_is_persistent_in_the_file(engine: Engine, db_path: Path) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()


def test_a_new_database_gets_16_kib_pages_an_existing_one_keeps_its_own(
    engine: Engine, db_path: Path, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x BLOB)")
    engine.dispose()
    with engine.connect() as conn:
        assert _pragma(conn, "page_size") == SQLITE_PAGE_SIZE == 16384

    old_path = tmp_path / "old.db"
    raw = sqlite3.connect(old_path, isolation_level=None)
    try:  # as an earlier keycustody made it: SQLite's default pages, WAL
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("CREATE TABLE t (x BLOB)")
        raw.execute("INSERT INTO t VALUES (?)", (b"kept" * 2000,))
        assert raw.execute("PRAGMA page_size").fetchone() == (4096,)
    finally:
        raw.close()
    old = make_engine(f"sqlite:///{old_path}")
    try:
        with old.begin() as conn:
            assert _pragma(conn, "page_size") == 4096
            conn.exec_driver_sql("INSERT INTO t VALUES (x'00')")
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 2
    finally:
        old.dispose()


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE p (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("CREATE TABLE c (p_id INTEGER NOT NULL REFERENCES p(id))")
    with (
        pytest.raises(IntegrityError, match="FOREIGN KEY constraint failed"),
        engine.begin() as conn,
    ):
        conn.exec_driver_sql("INSERT INTO c VALUES (42)")


def _scan(db_path: Path) -> list[str]:
    return [
        p.name
        for p in sorted(db_path.parent.iterdir())
        if p.name.startswith(db_path.name) and MARKER in p.read_bytes()
    ]


def test_secure_delete_scrubs_deleted_rows(engine: Engine, db_path: Path) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE k (id INTEGER PRIMARY KEY, wrapped BLOB)")
        conn.exec_driver_sql("INSERT INTO k VALUES (?, ?)", [(1, MARKER), (2, b"other")])
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    assert _scan(db_path) == ["vault.db"]  # the scan finds live rows

    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM k WHERE id = 1")
    with engine.connect() as conn:
        busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        assert busy == 0

    assert _scan(db_path) == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT wrapped FROM k").scalars().all() == [b"other"]


def test_without_secure_delete_the_bytes_would_remain(tmp_path: Path) -> None:
    """Control for the test above: the scan does detect leftovers of a plain delete."""
    db_path = tmp_path / "plain.db"
    raw = sqlite3.connect(db_path, isolation_level=None)
    try:
        raw.execute("PRAGMA secure_delete=OFF")
        raw.execute("CREATE TABLE k (id INTEGER PRIMARY KEY, wrapped BLOB)")
        raw.execute("INSERT INTO k VALUES (1, ?), (2, ?)", (MARKER, b"other"))
        raw.execute("DELETE FROM k WHERE id = 1")
    finally:
        raw.close()
    assert _scan(db_path) == ["plain.db"]


def test_memory_url_works_and_shares_one_connection() -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalar() == 1
            assert _pragma(conn, "foreign_keys") == 1
            assert _pragma(conn, "secure_delete") == 1
    finally:
        engine.dispose()


# -- URL checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["nonsense://", "nonsense://host/db", "mysql://u@h/db"])
def test_unsupported_backend_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="unsupported"):
        make_engine(url)


@pytest.mark.parametrize("url", ["not a url", "", "sqlite"])
def test_malformed_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        make_engine(url)


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nonexistent-dir"):
        make_engine("sqlite:////nonexistent-dir/x.db")
    missing = tmp_path / "missing" / "x.db"
    with pytest.raises(ConfigError, match="does not exist"):
        make_engine(f"sqlite:///{missing}")
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@localhost/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u:p@localhost:5432/db", "postgresql+psycopg"),
    ],
)
def test_postgresql_goes_through_psycopg_3(url: str, expected: str) -> None:
    engine = make_engine(url)  # no connection yet: nothing needs a server
    assert engine.url.drivername == expected
    assert ":p@" not in repr(engine)
    engine.dispose()


@pytest.mark.parametrize("url", ["postgresql+psycopg2://u:p@localhost/db", "mysql://u@h/db"])
def test_other_drivers_and_backends_are_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_engine(url)
    message = str(info.value)
    assert "postgresql+psycopg" in message
    assert ":p@" not in message


# -- transactions --------------------------------------------------------------------------


def test_write_transaction_emits_begin_immediate(engine: Engine) -> None:
    seen = _statements(engine)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        conn.execute(text("SELECT 1"))
    assert seen[0] == "BEGIN IMMEDIATE"

    seen.clear()
    with engine.execution_options(**WRITE).begin() as conn:
        conn.execute(text("SELECT 1"))
    assert seen[0] == "BEGIN IMMEDIATE"

    seen.clear()
    with engine.begin() as conn:
        conn.execute(text("SELECT 1"))
    assert seen[0] == "BEGIN"


def test_write_transaction_takes_the_write_lock_at_begin(db_path: Path) -> None:
    first = make_engine(f"sqlite:///{db_path}")
    second = make_engine(f"sqlite:///{db_path}")
    _short_busy_timeout(second)
    try:
        with first.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")

        with first.connect().execution_options(**WRITE) as holder, holder.begin():
            holder.exec_driver_sql("SELECT count(*) FROM t").scalar()  # reads only, yet locked

            started = time.monotonic()
            with (
                pytest.raises(OperationalError, match="database is locked"),
                second.connect().execution_options(**WRITE) as conn,
                conn.begin(),
            ):
                conn.exec_driver_sql("SELECT 1")
            assert time.monotonic() - started < 5

            with second.connect() as reader:  # WAL: readers are never blocked
                assert reader.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0

        with second.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    finally:
        first.dispose()
        second.dispose()


def test_read_transaction_does_not_take_the_write_lock(db_path: Path) -> None:
    """Control: a plain BEGIN is deferred, so only the WRITE option explains the lock above."""
    first = make_engine(f"sqlite:///{db_path}")
    second = make_engine(f"sqlite:///{db_path}")
    _short_busy_timeout(second)
    try:
        with first.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with first.connect() as holder, holder.begin():
            holder.exec_driver_sql("SELECT count(*) FROM t").scalar()
            with second.connect().execution_options(**WRITE) as conn, conn.begin():
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    finally:
        first.dispose()
        second.dispose()


def test_bulk_write_cache_is_put_many_s_and_given_back(db_path: Path, tmp_path: Path) -> None:
    """put_many's transaction runs with the larger page cache; the pooled connection gets
    its own back afterwards, also when put_many fails half-way."""
    kms = kc.LocalKMS(str(tmp_path / "kek"))
    with kc.Vault.open(f"sqlite:///{db_path}", kms=kms) as vault:
        scope = vault.scope("acme", kek=kms.create_key("acme"), create=True)
        seen = _statements(vault._engine)
        scope.put_many([(f"f{i}", b"x") for i in range(10)])
        assert f"PRAGMA cache_size=-{BULK_WRITE_CACHE_KIB}" in seen
        with pytest.raises(kc.InvalidInputError):
            scope.put_many([("ok", b"x"), ("bad", "not bytes")])  # type: ignore[list-item]
        with vault._engine.connect() as conn:
            assert _pragma(conn, "cache_size") == -2000  # SQLite's default
        seen.clear()
        scope.get_many(["f1"])
        assert not [s for s in seen if "cache_size" in s]
