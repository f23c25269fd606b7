"""Database failures under the public API: every Vault, Scope and StreamReader operation that
touches the database raises StorageError with the driver's message only, chained to the
SQLAlchemy error, whose own text echoes the statement's parameters (blind indexes, record ids,
wrapped keys). The database is broken for real: a table renamed behind the vault's back.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

import keycustody as kc
from dbadmin import RawDB
from keycustody import _core
from keycustody.storage.engine import db_message, raises_storage_errors

SEG = _core.SEGMENT_LEN
Operation = Callable[[kc.Vault, kc.Scope], object]
SEALED: dict[str, bytes] = {}
"""A blob sealed as ``n`` by each ``filled`` scope, by scope id."""


@contextmanager
def table_missing(raw: RawDB, table: str) -> Iterator[None]:
    """``table`` renamed away while the block runs, as an administrator's mistake or a
    half-applied migration would leave it."""
    raw.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        yield
    finally:
        raw.execute(f"ALTER TABLE {table}_away RENAME TO {table}")


def secrets_of(raw: RawDB) -> list[bytes]:
    """Values of the database a statement's parameters would carry: record ids and blind
    indexes."""
    return [v for row in raw.rows("SELECT record_id, name_index FROM records") for v in row]


def assert_clean(error: kc.StorageError, secrets: list[bytes], table: str) -> None:
    """The message is the driver's: it names the table, and carries neither SQLAlchemy's
    statement and parameters nor any stored value. The chained SQLAlchemy error (what a
    logged traceback shows) has the statement but not its parameters."""
    message = str(error)
    assert isinstance(error.__cause__, SQLAlchemyError)
    cause = str(error.__cause__)
    assert "[SQL" in cause
    assert "[parameters" not in cause or "hidden due to hide_parameters" in cause, cause
    for value in secrets:
        assert repr(value) not in cause and value.hex() not in cause, cause
    assert table in message
    for dump in ("[parameters", "[SQL", "SELECT", "LINE", "DETAIL"):
        assert dump not in message, message
    for value in secrets:
        assert repr(value) not in message and value.hex() not in message, message


@pytest.fixture
def filled(acme: kc.Scope) -> kc.Scope:
    acme.put_many([("a.txt", b"alpha"), ("b.txt", b"beta")])
    acme.put_stream("s.bin", io.BytesIO(b"s" * (3 * SEG + 5)))
    SEALED[acme.id] = acme.seal("n", b"data")
    return acme


OPERATIONS: list[tuple[str, str, Operation]] = [
    ("records", "get", lambda v, s: s.get("a.txt")),
    ("records", "get_many", lambda v, s: s.get_many(["a.txt", "b.txt"])),
    ("records", "list", lambda v, s: s.list()),
    ("records", "open_stream", lambda v, s: s.open_stream("s.bin")),
    ("records", "lineage", lambda v, s: s.lineage("a.txt")),
    ("records", "keys", lambda v, s: s.keys()),
    ("records", "delete", lambda v, s: s.delete("a.txt")),
    ("records", "rewrap", lambda v, s: s.rewrap(dry_run=True)),
    ("records", "protected_by", lambda v, s: v.protected_by("acme")),
    ("records", "usage", lambda v, s: v.usage()),
    ("records", "purge", lambda v, s: v.purge()),
    ("scopes", "seal", lambda v, s: s.seal("n", b"data")),
    ("scopes", "open", lambda v, s: s.open("n", SEALED[s.id])),
    ("scopes", "scopes", lambda v, s: v.scopes()),
    ("scopes", "scope", lambda v, s: v.scope("acme")),
    ("tenant_keks", "keks", lambda v, s: v.keks("acme")),
    ("erasure_certificates", "certificates", lambda v, s: v.certificates()),
    ("segments", "get of a stream", lambda v, s: s.get("s.bin")),
]


@pytest.mark.parametrize(
    ("table", "operation"),
    [pytest.param(t, op, id=name) for t, name, op in OPERATIONS],
)
def test_a_failing_database_is_a_storage_error(
    vault: kc.Vault, filled: kc.Scope, raw: RawDB, table: str, operation: Operation
) -> None:
    secrets = secrets_of(raw)
    with table_missing(raw, table), pytest.raises(kc.StorageError) as info:
        operation(vault, filled)
    assert_clean(info.value, secrets, table)
    operation(vault, filled)  # the same call works once the table is back


def test_reading_a_stream_fails_cleanly_midway_and_resumes(filled: kc.Scope, raw: RawDB) -> None:
    """The reader fetches segments long after open_stream returned, each in a short
    transaction of its own: a failure there is a StorageError too, and the reader stays
    where it was."""
    secrets = secrets_of(raw)
    with filled.open_stream("s.bin") as reader:
        assert reader.read(SEG) == b"s" * SEG
        with table_missing(raw, "segments"), pytest.raises(kc.StorageError) as info:
            reader.read()
        assert "reading a stream record's segments failed" in str(info.value)
        assert_clean(info.value, secrets, "segments")
        assert reader.tell() == SEG
        assert reader.read() == b"s" * (2 * SEG + 5)


def test_keycustody_errors_pass_unchanged(filled: kc.Scope) -> None:
    with pytest.raises(kc.NotFoundError):
        filled.get("missing")
    with pytest.raises(kc.InvalidInputError):
        filled.open_stream("a.txt")
    with pytest.raises(kc.InvalidInputError):
        filled.put_many([("a.txt", b"x")], commit_every=0)


def test_the_write_message_keeps_its_count(filled: kc.Scope, raw: RawDB) -> None:
    """put_many's own StorageError, more precise, is not replaced by the generic one."""
    with table_missing(raw, "records"), pytest.raises(kc.StorageError) as info:
        filled.put_many([("c.txt", b"gamma")])
    assert str(info.value).startswith("storing records failed after 0 were committed: ")
    assert_clean(info.value, [], "records")


def test_a_batch_refused_midway_stores_none_of_it(acme: kc.Scope, raw: RawDB) -> None:
    """A put_many batch goes in as one statement (a binary COPY on PostgreSQL): when the
    database refuses a row in its middle, none of the batch is stored, the message quotes
    none of the row's values (PostgreSQL's DETAIL lists them all), and writes work again
    once the database takes them."""
    acme.put("kept.txt", b"k")
    postgres = raw.backend == "postgresql"
    if postgres:
        raw.execute("ALTER TABLE records ADD CONSTRAINT small_only CHECK (size < 100)")
    else:
        raw.execute(
            "CREATE TRIGGER small_only BEFORE INSERT ON records WHEN NEW.size >= 100 "
            "BEGIN SELECT RAISE(ABORT, 'small_only'); END"
        )
    items = [("a.txt", b"a" * 10), ("big.txt", b"b" * 200), ("c.txt", b"c" * 10)]
    with pytest.raises(kc.StorageError, match="small_only") as info:
        acme.put_many(items)
    message = str(info.value)
    assert message.startswith("storing records failed after 0 were committed: ")
    for dump in ("DETAIL", "Failing row", "\\x", "[parameters"):
        assert dump not in message, message
    assert [r.name for r in acme.list()] == ["kept.txt"]
    raw.execute(
        "ALTER TABLE records DROP CONSTRAINT small_only" if postgres else "DROP TRIGGER small_only"
    )
    acme.put_many(items)
    assert acme.get_many([n for n, _ in items]) == dict(items)


def test_db_message_leaves_out_the_values_of_a_violated_key(vault: kc.Vault) -> None:
    """SQLAlchemy's text hides the parameters (hide_parameters), but PostgreSQL's DETAIL, in
    the driver's own text, quotes the duplicate key's value (on records: the record id);
    SQLite names the columns only."""
    insert = text("INSERT INTO vault_meta (key, value) VALUES (:k, 'v')")
    with vault._engine.begin() as conn:
        conn.execute(insert, {"k": "a-value-that-must-not-leak"})
    with pytest.raises(SQLAlchemyError) as info, vault._engine.begin() as conn:
        conn.execute(insert, {"k": "a-value-that-must-not-leak"})
    assert "hidden due to hide_parameters" in str(info.value)
    quoted = "a-value-that-must-not-leak" in str(info.value)
    assert quoted == (vault._engine.dialect.name == "postgresql")  # the server's DETAIL
    message = db_message(info.value)
    assert "vault_meta" in message
    assert "a-value-that-must-not-leak" not in message


def test_a_generator_cannot_be_wrapped() -> None:
    """Its body would run after the wrapper returned, past the conversion."""

    def rows() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        raises_storage_errors("listing")(rows)
