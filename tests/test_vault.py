"""The Python API end to end on a real database (a SQLite file, a PostgreSQL database) and a
real LocalKMS directory. Tampering goes through the backend's own driver (:mod:`dbadmin`)."""

from __future__ import annotations

import gc
import io
import itertools
import os
import subprocess
import sys
import sysconfig
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import keycustody as kc
from dbadmin import RawDB
from forensics import checkpoint, database_files, hits
from keycustody import _core
from keycustody.kms.local import LocalKMS
from keycustody.storage.repository import IN_LIST_CHUNK
from keycustody.types import EncryptionContext, KeyId, WrappedKey

MIB = 1024 * 1024


class CountingKMS(LocalKMS):
    """A real LocalKMS that counts the wraps and unwraps it serves."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.wraps = 0
        self.unwraps = 0

    def wrap(
        self, key_id: KeyId, key: kc._core.KeyHandle, context: EncryptionContext
    ) -> WrappedKey:
        self.wraps += 1
        return super().wrap(key_id, key, context)

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> kc._core.KeyHandle:
        self.unwraps += 1
        return super().unwrap(wrapped, context)


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("empty.txt", b""),
        ("a", b"x"),
        ("src/app.py", b"print('hello')\n"),
        ("données/日本語/файл 🐍.py", "unicode content ✓".encode()),
        ("big.bin", os.urandom(20 * MIB)),
    ],
    ids=["empty", "one-byte", "small", "unicode-name", "20MiB"],
)
def test_put_get_round_trip(acme: kc.Scope, name: str, data: bytes) -> None:
    info = acme.put(name, data)
    assert (info.name, info.size, info.key_version) == (name, len(data), 1)
    assert acme.get(name) == data
    assert acme.open(name, acme.seal(name, data)) == data


def test_buffer_inputs(acme: kc.Scope) -> None:
    data = os.urandom(5000)
    acme.put("ba", bytearray(data))
    acme.put("mv", memoryview(data)[100:])
    assert acme.get("ba") == data
    assert acme.get("mv") == data[100:]


def _source_tree() -> list[tuple[str, bytes]]:
    """A real source tree: the json, email and importlib packages of the standard library."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    items = []
    for package in ("json", "email", "importlib", "asyncio", "unittest", "xml"):
        for path in sorted((stdlib / package).rglob("*.py")):
            items.append((path.relative_to(stdlib).as_posix(), path.read_bytes()))
    return items


def test_put_many_get_many_source_tree(acme: kc.Scope) -> None:
    items = _source_tree()
    assert len(items) > 100
    infos = acme.put_many(items)
    assert [i.name for i in infos] == [n for n, _ in items]
    got = acme.get_many([n for n, _ in items])
    assert got == dict(items)
    listed = acme.list(prefix="json/")
    assert [i.name for i in listed] == sorted(n for n, _ in items if n.startswith("json/"))


def test_round_trip_property(vault: kc.Vault) -> None:
    scopes = itertools.count()

    @given(
        name=st.text(min_size=1, max_size=64).filter(lambda s: "\x00" not in s),
        data=st.binary(max_size=4096),
    )
    def check(name: str, data: bytes) -> None:
        try:
            name.encode()
        except UnicodeEncodeError:
            return  # lone surrogates are rejected; tested below
        scope = vault.scope(f"t{next(scopes)}", create=True)  # a scope of its own per example
        scope.put(name, data)
        assert scope.get(name) == data
        assert scope.open(name, scope.seal(name, data)) == data
        assert [i.name for i in scope.list()] == [name]

    check()


def test_seal_many_open_many_keep_order(acme: kc.Scope) -> None:
    items = [(f"f{i}", os.urandom(i * 37)) for i in range(300)]
    blobs = acme.seal_many(items)
    assert acme.open_many(list(zip([n for n, _ in items], blobs, strict=True))) == [
        d for _, d in items
    ]


# -- tampering and misplacement ---------------------------------------------------------


def _flip(conn: RawDB, column: str, record_id: bytes, pos: int) -> bytes:
    (value,) = conn.execute(
        f"SELECT {column} FROM records WHERE record_id = ?", (record_id,)
    ).fetchone()
    if isinstance(value, int):
        conn.execute(
            f"UPDATE records SET {column} = ? WHERE record_id = ?", (value ^ 1, record_id)
        )
        return record_id
    buf = bytearray(value)
    buf[pos % len(buf)] ^= 0x01
    conn.execute(f"UPDATE records SET {column} = ? WHERE record_id = ?", (bytes(buf), record_id))
    return bytes(buf) if column == "record_id" else record_id


@pytest.mark.parametrize(
    ("column", "positions"),
    [
        ("header", range(176)),
        ("body", [0, 1, 100, 4095, 4096, 4111]),
        ("name_ct", range(len("secret/file.py") + 16)),
        ("record_id", range(16)),
        ("key_version", [0]),
        ("size", [0]),
    ],
)
def test_flipping_any_stored_byte_is_detected(
    vault: kc.Vault, acme: kc.Scope, raw: RawDB, column: str, positions: range | list[int]
) -> None:
    """Every byte of every column that carries crypto material or record facts is checked."""
    data = os.urandom(4096)
    rid = bytes.fromhex(acme.put("secret/file.py", data).record_id)
    for pos in positions:
        current = _flip(raw, column, rid, pos)
        with pytest.raises(kc.IntegrityError):
            if column == "name_ct":
                acme.list()
            else:
                acme.get("secret/file.py")
        _flip(raw, column, current, pos)  # flip back
        assert acme.get("secret/file.py") == data


_CHANGED_COLUMNS = [
    ("key_version", 2),
    ("key_version", -1),
    ("record_id", bytes(16)),
    ("name_index", bytes(32)),
]
# Values of another type, which only SQLite's dynamic typing lets a column hold.
_MISTYPED_COLUMNS = [
    ("key_version", 1 << 40),
    ("key_version", "x"),
    ("record_id", 1),
    ("header", "x"),
]


@pytest.mark.parametrize(("column", "value"), _CHANGED_COLUMNS + _MISTYPED_COLUMNS)
def test_get_and_list_refuse_a_row_whose_columns_are_not_its_headers(
    vault: kc.Vault, acme: kc.Scope, raw: RawDB, db_url: str, column: str, value: object
) -> None:
    """The lookup columns are unauthenticated copies of the header's: a changed or mistyped
    one fails the reads of the row with the same error, never a TypeError from inside."""
    if (column, value) in _MISTYPED_COLUMNS and db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL refuses a value of another type for the column")
    rid = bytes.fromhex(acme.put("a.py", b"x").record_id)
    acme.put("b.py", b"y")
    raw.execute(f"UPDATE records SET {column} = ? WHERE record_id = ?", (value, rid))
    with pytest.raises(kc.IntegrityError, match="columns do not match its header"):
        acme.list()
    if column != "name_index":  # get_many looks rows up by it: that row is not found
        with pytest.raises(kc.IntegrityError, match="columns do not match its header"):
            acme.get_many(["b.py", "a.py"])


@pytest.mark.parametrize("value", ["x", 5, b"2026-11-28"])
def test_list_refuses_a_created_at_that_is_not_a_time(
    acme: kc.Scope, raw: RawDB, db_url: str, value: object
) -> None:
    """SQLite stores created_at as text and lets a row hold anything there: listing such a
    row is an IntegrityError, not a ValueError from the date parser; the record still reads."""
    if db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL refuses a value of another type for the column")
    rid = bytes.fromhex(acme.put("a.py", b"x").record_id)
    raw.execute("UPDATE records SET created_at = ? WHERE record_id = ?", (value, rid))
    with pytest.raises(kc.IntegrityError, match="created_at is not a time"):
        acme.list()
    assert acme.get("a.py") == b"x"


def test_get_many_checks_every_group_of_a_long_call(acme: kc.Scope, raw: RawDB) -> None:
    """get_many looks names up IN_LIST_CHUNK at a time and opens a group on a worker thread
    while it reads the next: a tampered record in the first, a middle or the last group fails
    the call, as does a missing name in any of them."""
    count = 2 * IN_LIST_CHUNK + 100
    items = [(f"src/f{i}.py", os.urandom(64 + i % 500)) for i in range(count)]
    infos = acme.put_many(items)
    names = [n for n, _ in items]
    assert acme.get_many(names) == dict(items)
    for i in (0, IN_LIST_CHUNK + 7, count - 1):
        rid = bytes.fromhex(infos[i].record_id)
        _flip(raw, "body", rid, 5)
        with pytest.raises(kc.IntegrityError, match="failed authentication"):
            acme.get_many(names)
        _flip(raw, "body", rid, 5)
    for i in (3, IN_LIST_CHUNK + 3, count - 3):
        with pytest.raises(kc.NotFoundError, match="1 of the requested records do not exist"):
            acme.get_many([*names[:i], "src/missing.py", *names[i:]])
    assert acme.get_many(reversed(names)) == dict(items)


def test_get_many_opens_its_groups_itself_when_the_vaults_threads_are_busy(
    vault: kc.Vault, acme: kc.Scope
) -> None:
    """With every background thread of the vault busy (other readers' stream fetches), a
    long get_many opens its queued groups itself instead of waiting for a thread."""
    pool = vault._prefetch
    assert pool is not None
    items = [(f"f{i}", os.urandom(100)) for i in range(2 * IN_LIST_CHUNK + 1)]
    acme.put_many(items)
    release = threading.Event()
    busy = [pool.submit(release.wait, 60) for _ in range(pool._max_workers)]
    got: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: got.update(acme.get_many([n for n, _ in items])))
    try:
        reader.start()
        reader.join(30)
        assert not reader.is_alive(), "get_many waited for the vault's busy threads"
        assert got == dict(items)
    finally:
        release.set()
        for waiting in busy:
            waiting.result()
        reader.join()


def test_flipping_lookup_columns_never_returns_data(acme: kc.Scope, raw: RawDB) -> None:
    """The blind index and scope id are lookup keys: a flip hides the record (NotFound) and
    list() reports the inconsistency; no path returns wrong data."""
    rid = bytes.fromhex(acme.put("a.py", b"alpha").record_id)
    raw.execute("UPDATE records SET name_index = ? WHERE record_id = ?", (bytes(32), rid))
    with pytest.raises(kc.NotFoundError):
        acme.get("a.py")
    with pytest.raises(kc.IntegrityError):
        acme.list()


def test_swapped_crypto_material_between_records(acme: kc.Scope, raw: RawDB) -> None:
    a = bytes.fromhex(acme.put("a.py", b"alpha").record_id)
    b = bytes.fromhex(acme.put("b.py", b"bravo").record_id)

    def row(rid: bytes) -> tuple[bytes, bytes]:
        header, body = raw.execute(
            "SELECT header, body FROM records WHERE record_id = ?", (rid,)
        ).fetchone()
        return header, body

    (header_a, body_a), (header_b, body_b) = row(a), row(b)
    cases = {
        "A's header and body in B's row": (header_a, body_a),
        "A's body under B's header": (header_b, body_a),
        "A's wrapped DEK in B's header": (
            header_b[:72] + header_a[72:132] + header_b[132:],
            body_b,
        ),
        "A's DEK, nonce and commitment in B's header": (header_b[:72] + header_a[72:], body_b),
    }
    for case, (header, body) in cases.items():
        raw.execute(
            "UPDATE records SET header = ?, body = ? WHERE record_id = ?", (header, body, b)
        )
        with pytest.raises(kc.IntegrityError):
            acme.get("b.py")
        assert acme.get("a.py") == b"alpha", case
    raw.execute(
        "UPDATE records SET header = ?, body = ? WHERE record_id = ?", (header_b, body_b, b)
    )
    assert acme.get("b.py") == b"bravo"


@pytest.mark.parametrize("target", ["sibling", "child", "other-tenant"])
def test_crypto_material_moved_to_another_scope(
    vault: kc.Vault, acme: kc.Scope, kms: kc.LocalKMS, raw: RawDB, target: str
) -> None:
    paths = {"sibling": "acme2", "child": "acme/subjects/alice", "other-tenant": "globex"}
    other = vault.scope(paths[target], create=True)
    src = bytes.fromhex(acme.put("a.py", b"alpha").record_id)
    dst = bytes.fromhex(other.put("a.py", b"other").record_id)
    header, name_ct, body = raw.execute(
        "SELECT header, name_ct, body FROM records WHERE record_id = ?", (src,)
    ).fetchone()
    raw.execute(
        "UPDATE records SET header = ?, name_ct = ?, body = ? WHERE record_id = ?",
        (header, name_ct, body, dst),
    )
    with pytest.raises(kc.IntegrityError):
        other.get("a.py")
    with pytest.raises(kc.IntegrityError):
        other.list()
    # The blob form: a blob sealed in acme does not open in the other scope.
    with pytest.raises(kc.IntegrityError):
        other.open("a.py", acme.seal("a.py", b"alpha"))


def test_whole_row_moved_to_another_scope(vault: kc.Vault, acme: kc.Scope, raw: RawDB) -> None:
    other = vault.scope("globex", create=True)
    rid = bytes.fromhex(acme.put("a.py", b"alpha").record_id)
    raw.execute(
        "UPDATE records SET scope_id = ? WHERE record_id = ?", (bytes.fromhex(other.id), rid)
    )
    with pytest.raises(kc.IntegrityError):
        other.list()
    with pytest.raises(kc.NotFoundError):
        other.get("a.py")


def test_tampered_blob_and_wrong_name(acme: kc.Scope) -> None:
    blob = acme.seal("x.py", b"payload")
    with pytest.raises(kc.IntegrityError):
        acme.open("y.py", blob)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x80
        with pytest.raises(kc.IntegrityError):
            acme.open("x.py", bytes(bad))
    with pytest.raises(kc.IntegrityError):
        acme.open("x.py", blob[:-1])


def test_wrapped_scope_key_tampering_is_detected(
    vault: kc.Vault, db_url: str, raw: RawDB, kms: kc.LocalKMS
) -> None:
    acme = vault.scope("acme", create=True)
    child = vault.scope("acme/repos/api", create=True)
    child.put("a", b"1")
    for scope_id, version, wrapped in raw.execute(
        "SELECT scope_id, version, wrapped FROM scope_keys"
    ).fetchall():
        flipped = bytearray(wrapped)
        flipped[20] ^= 0x01
        raw.execute(
            "UPDATE scope_keys SET wrapped = ? WHERE scope_id = ? AND version = ?",
            (bytes(flipped), scope_id, version),
        )
    # A fresh vault has a cold cache: the keys are unwrapped again, and fail.
    with kc.Vault.open(db_url, kms=kms) as fresh, pytest.raises(kc.IntegrityError):
        fresh.scope("acme/repos/api").get("a")
    del acme


# -- KMS calls --------------------------------------------------------------------------


def test_kms_calls_are_per_key_version_not_per_record(db_url: str, tmp_path: Path) -> None:
    """One wrap per scope key version made, zero calls per record; opening a vault costs one
    call for the audit trail's key."""
    kms = CountingKMS(tmp_path / "counting-keys")
    kek = kms.create_key("t")
    with kc.Vault.open(db_url, kms=kms) as vault:
        assert (kms.wraps, kms.unwraps) == (1, 0)  # the audit key, made on first open
        scope = vault.scope("t", kek=kek, create=True)
        child = vault.scope("t/repos/api", create=True)
        assert (kms.wraps, kms.unwraps) == (2, 0)  # + the tenant key; children are wrapped in Rust
        before = vault.kms_calls
        scope.put_many((f"f{i}", b"x" * 100) for i in range(5000))
        child.put_many((f"f{i}", b"y" * 100) for i in range(5000))
        assert child.get_many([f"f{i}" for i in range(100)])["f7"] == b"y" * 100
        assert vault.kms_calls == before
        assert (kms.wraps, kms.unwraps) == (2, 0)  # warm cache: zero calls for 10,000 records
    with kc.Vault.open(db_url, kms=kms) as cold:
        assert kms.unwraps == 1  # the audit key
        cold.scope("t/repos/api").put_many((f"g{i}", b"z") for i in range(2000))
        assert kms.unwraps == 2  # cold cache: one unwrap of the tenant key; children in Rust
        assert cold.kms_calls == 2


def test_cache_ttl_zero_unwraps_every_time(db_url: str, tmp_path: Path) -> None:
    kms = CountingKMS(tmp_path / "k")
    with kc.Vault.open(db_url, kms=kms, cache_ttl=0) as vault:
        scope = vault.scope("t", create=True)
        scope.put("a", b"1")
        scope.get("a")
        assert kms.unwraps >= 2


# -- processes and threads ---------------------------------------------------------------


def test_second_process_reads_the_data(acme: kc.Scope, db_url: str, kms: kc.LocalKMS) -> None:
    items = {f"dir/f{i}.py": os.urandom(100 + i) for i in range(50)}
    acme.put_many(items.items())
    script = (
        "import sys, keycustody as kc\n"
        "v = kc.Vault.open(sys.argv[1], kms=kc.LocalKMS(sys.argv[2]))\n"
        "s = v.scope('acme')\n"
        "got = s.get_many([i.name for i in s.list()])\n"
        "sys.stdout.buffer.write(b''.join(got[k] for k in sorted(got)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, db_url, str(kms.path)], capture_output=True, check=True
    ).stdout
    assert out == b"".join(items[k] for k in sorted(items))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_unclosed_vault_is_collected_with_its_connections(
    db_url: str, kms: kc.LocalKMS
) -> None:
    """A vault dropped without close() is garbage: nothing the library registers (session
    events) keeps it, its engine or its pooled connections alive. (psycopg warns when the
    collector closes a connection: expected here.)"""
    kek = kms.create_key("acme")
    with kc.Vault.open(db_url, kms=kms) as first:
        first.scope("acme", kek=kek, create=True).put("a", b"x")
    vault = kc.Vault.open(db_url, kms=kms)
    assert vault.scope("acme").get("a") == b"x"
    ref = weakref.ref(vault)
    del vault
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("memory", [False, True], ids=["file", "memory"])
def test_a_closed_vault_refuses_everything_that_needs_the_database(
    db_url: str, kms: kc.LocalKMS, memory: bool
) -> None:
    """After close(), the engine does not quietly connect again (an in-memory database
    would come back empty): every call that needs the database says the vault is closed,
    including a stream reader opened before. Closing twice is harmless."""
    kek = kms.create_key("acme")
    vault = kc.Vault.open("sqlite://" if memory else db_url, kms=kms)
    acme = vault.scope("acme", kek=kek, create=True)
    acme.put("a", b"alpha")
    acme.put_stream("s.bin", io.BytesIO(b"s" * (3 * _core.SEGMENT_LEN)))
    blob = acme.seal("b", b"bravo")
    reader = acme.open_stream("s.bin")
    assert reader.read(5) == b"sssss"
    vault.close()
    vault.close()
    calls: list[Callable[[], object]] = [
        lambda: acme.get("a"),
        lambda: acme.put("c", b"charlie"),
        lambda: acme.seal("b", b"bravo"),
        lambda: acme.open("b", blob),
        lambda: acme.list(),
        lambda: vault.scope("acme"),
        lambda: vault.audit.verify(),
        lambda: reader.read(),
    ]
    for call in calls:
        with pytest.raises(kc.InvalidInputError, match="this vault is closed"):
            call()
    reader.close()
    if not memory:
        with kc.Vault.open(db_url, kms=kms) as again:
            assert again.scope("acme").get("a") == b"alpha"


def test_threads_share_a_vault(acme: kc.Scope) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            items = [(f"t{t}/f{i}", os.urandom(2048)) for i in range(200)]
            acme.put_many(items)
            assert acme.get_many([n for n, _ in items]) == dict(items)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(acme.list()) == 800


# -- replacement, deletion, nothing half-written -----------------------------------------


def test_put_replaces_and_destroys_old_dek(acme: kc.Scope, db_path: Path, raw: RawDB) -> None:
    first = acme.put("a.py", b"version one")
    (old_header,) = raw.execute(
        "SELECT header FROM records WHERE record_id = ?", (bytes.fromhex(first.record_id),)
    ).fetchone()
    second = acme.put("a.py", b"version two")
    assert second.record_id != first.record_id
    assert acme.get("a.py") == b"version two"
    assert [i.name for i in acme.list()] == ["a.py"]
    checkpoint(db_path)
    wrapped_dek = old_header[72:132]
    assert hits(database_files(db_path), [wrapped_dek]) == []


def test_put_many_mixes_new_and_replaced_names(acme: kc.Scope, db_path: Path, raw: RawDB) -> None:
    """A batch with new names and names that exist (inserted first, then replaced on
    SQLite): each name ends with one record, the new one, and the old DEKs are gone."""
    old = acme.put_many([(f"f{i}", b"old %d" % i) for i in range(0, 3000, 3)])
    select_header = "SELECT header FROM records WHERE record_id = ?"
    old_deks = [
        raw.execute(select_header, (bytes.fromhex(i.record_id),)).fetchone()[0][72:132]
        for i in old[:50]
    ]
    new = acme.put_many([(f"f{i}", b"new %d" % i) for i in range(3000)])
    assert {i.name for i in new} == {f"f{i}" for i in range(3000)}
    assert raw.one("SELECT count(*) FROM records") == (3000,)
    assert acme.get_many([f"f{i}" for i in range(3000)]) == {
        f"f{i}": b"new %d" % i for i in range(3000)
    }
    checkpoint(db_path)
    assert hits(database_files(db_path), old_deks) == []


def test_delete(acme: kc.Scope) -> None:
    acme.put("a.py", b"a")
    acme.delete("a.py")
    with pytest.raises(kc.NotFoundError):
        acme.get("a.py")
    with pytest.raises(kc.NotFoundError):
        acme.delete("a.py")


def test_failed_put_many_writes_nothing(acme: kc.Scope, raw: RawDB) -> None:
    items: list[tuple[str, object]] = [(f"f{i}", b"ok") for i in range(2500)]
    items.append(("bad", "not bytes"))
    with pytest.raises(kc.InvalidInputError, match="bytes"):
        acme.put_many(items)  # type: ignore[arg-type]
    assert raw.one("SELECT count(*) FROM records") == (0,)


def test_database_errors_do_not_echo_the_rows(acme: kc.Scope, raw: RawDB) -> None:
    """A failed write says what the driver said, never SQLAlchemy's text with the statement's
    parameters (ciphertext, wrapped DEKs, blind indexes)."""
    acme.put("first", b"x")
    raw.execute("ALTER TABLE records RENAME TO records_away")
    try:
        with pytest.raises(kc.StorageError) as info:
            acme.put_many([("a.py", b"print(1)")])
    finally:
        raw.execute("ALTER TABLE records_away RENAME TO records")
    message = str(info.value)
    assert "storing records failed after 0 were committed" in message
    assert "records" in message  # the driver's own words name the table
    assert "[parameters" not in message and "[SQL" not in message
    assert acme.get("first") == b"x"


def test_size_limit_checked_before_writing(db_url: str, kms: kc.LocalKMS) -> None:
    with kc.Vault.open(db_url, kms=kms, max_record_bytes=1000) as vault:
        scope = vault.scope("t", create=True)
        scope.put("max", b"x" * 1000)
        with pytest.raises(kc.InvalidInputError, match="exceeds"):
            scope.put_many([("ok", b"x"), ("big", b"x" * 1001)])
        assert [i.name for i in scope.list()] == ["max"]


def test_no_plaintext_names_or_payloads_in_the_database(acme: kc.Scope, db_path: Path) -> None:
    items = [
        (f"very/secret/name-{i}.py", f"TOP-SECRET-PAYLOAD-{i}-".encode() * 20) for i in range(50)
    ]
    acme.put_many(items)
    found = hits(
        database_files(db_path), [n.encode() for n, _ in items] + [d[:40] for _, d in items]
    )
    assert found == []
    checkpoint(db_path)
    assert hits(database_files(db_path), [b"TOP-SECRET", b"very/secret"]) == []


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", 5, None, "a\x00b", "x" * 5000, "\udc80"])
def test_bad_names_are_clear_errors(acme: kc.Scope, name: object) -> None:
    with pytest.raises(kc.InvalidInputError):
        acme.put(name, b"data")  # type: ignore[arg-type]


@pytest.mark.parametrize("data", ["text", 5, None, [1, 2]])
def test_bad_data_is_a_clear_error(acme: kc.Scope, data: object) -> None:
    with pytest.raises(kc.InvalidInputError):
        acme.put("a", data)  # type: ignore[arg-type]


def test_scope_errors(vault: kc.Vault, kms: kc.LocalKMS) -> None:
    with pytest.raises(kc.NotFoundError):
        vault.scope("nope")
    with pytest.raises(kc.InvalidInputError):
        vault.scope("bad//path", create=True)
    with pytest.raises(kc.InvalidInputError):
        vault.scope("../etc", create=True)
    with pytest.raises(kc.ConfigError, match="top-level"):
        vault.scope("acme/sub", kek="local:x", create=True)
    with pytest.raises(kc.UnsupportedKeyIdError):
        vault.scope("acme", kek="gcp:projects/x", create=True)
    with pytest.raises(kc.NotFoundError, match="create_key"):
        vault.scope("acme", kek="local:missing", create=True)
    kek = kms.create_key("k1")
    vault.scope("acme", kek=kek, create=True)
    with pytest.raises(kc.ConfigError, match="rotate_kek"):
        vault.scope("acme", kek=kms.create_key("k2"))
    assert vault.scopes() == ["acme"]
    vault.scope("acme/subjects/s1", create=True)
    assert vault.scopes() == ["acme", "acme/subjects", "acme/subjects/s1"]


def test_default_kek_is_created_on_first_use(vault: kc.Vault, kms: kc.LocalKMS) -> None:
    vault.scope("t", create=True).put("a", b"1")
    assert kms.list_keys() == ["local:default", "local:keycustody-audit"]


def test_errors_are_keycustody_errors() -> None:
    for err in (
        kc.NotFoundError,
        kc.IntegrityError,
        kc.ShreddedError,
        kc.KeyRevokedError,
        kc.KmsError,
        kc.ConfigError,
        kc.InvalidInputError,
        kc.StorageError,
    ):
        assert issubclass(err, kc.KeyCustodyError)
