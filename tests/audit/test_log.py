"""AuditLog on a real database and a real LocalKMS: round trip, tamper evidence, fail closed.

Every test runs on SQLite and on PostgreSQL. The tampering is done the way a database
administrator would do it: with a raw connection of the backend's own driver (sqlite3 on the
file, psycopg on the database), behind the library's back (see :mod:`dbadmin`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from dbadmin import (
    AUDIT_COLUMNS,
    admin_sql,
    as_datetime,
    backend_of,
    pg_create,
    pg_drop,
    raw_db,
    sqlite_file,
)
from keycustody._core import KeyHandle
from keycustody.audit import AuditEvent, AuditLog, AuditReport
from keycustody.audit.events import GENESIS, canonical_details, event_hash, format_at
from keycustody.errors import AuditError, InvalidInputError, KeyRevokedError
from keycustody.kms.local import LocalKMS
from keycustody.kms.registry import ProviderRegistry
from keycustody.storage import schema
from keycustody.storage.engine import WRITE, make_engine
from keycustody.storage.models import AuditEventRow, AuditKeyRow, Base, VaultMeta
from keycustody.types import EncryptionContext, KeyId

N = 1000
VAULT = "vault-0123"
ACTOR = "ops@example"
AUDIT_KEK = "local:audit"
COLUMN_LIST = ", ".join(AUDIT_COLUMNS)
PRISTINE = tuple(t.name for t in Base.metadata.sorted_tables)
"""The vault's tables, parents first (restored before each use of the PostgreSQL scratch)."""
ACTIONS = ("scope.create", "key.rotate", "record.put_many", "kek.rotate", "access.denied")


@dataclass
class Env:
    """A database with an AuditLog on it."""

    url: str
    engine: Engine
    kms: LocalKMS
    registry: ProviderRegistry
    log: AuditLog
    write: Callable[[], Session]


@contextmanager
def open_env(url: str, keys: Path) -> Iterator[Env]:
    engine = make_engine(url)
    try:
        schema.upgrade(engine)
        kms = LocalKMS(keys)
        registry = ProviderRegistry(kms)
        write = sessionmaker(engine.execution_options(**WRITE), expire_on_commit=False)
        read = sessionmaker(engine, expire_on_commit=False)
        log = AuditLog(VAULT, ACTOR, write, registry, AUDIT_KEK, read_sessions=read)
        yield Env(url, engine, kms, registry, log, write)
    finally:
        engine.dispose()


def db_files(db: Path) -> list[Path]:
    names = [db] + [db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal")]
    return [p for p in names if p.exists()]


def fill(log: AuditLog, write: Callable[[], Session], n: int, batch: int = 100) -> None:
    """Appends ``n`` varied events, ``batch`` per transaction."""
    done = 0
    while done < n:
        with write() as s, s.begin():
            for _ in range(min(batch, n - done)):
                done += 1
                log.append(
                    s,
                    action=ACTIONS[done % len(ACTIONS)],
                    subject=f"acme/repos/r{done % 7}",
                    outcome="denied" if done % 11 == 0 else "ok",
                    kms_key_id=None if done % 3 == 0 else "local:acme-kek",
                    kms_key_version=None if done % 2 == 0 else str(done % 5 + 1),
                    details={"i": done, "range": [done, done + 9], "f": 0.5, "flag": True},
                )


@dataclass(frozen=True)
class Template:
    """A database holding N events (a SQLite file, or a PostgreSQL database used as the
    template of each copy) and the KMS directory with its audit KEK."""

    url: str
    keys: Path


class Templates:
    """One template per backend, built on first use and shared by the module's tests.

    On PostgreSQL the template also keeps a pristine copy of its tables (schema ``pristine``),
    so tests and hypothesis examples reset one scratch database in a few milliseconds instead
    of copying a database each (see :func:`copied`).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Template] = {}
        self.scratch: str | None = None

    def get(self, backend: str) -> Template:
        if backend not in self.built:
            self.built[backend] = self._build(backend)
        return self.built[backend]

    def _build(self, backend: str) -> Template:
        keys = self.root / backend / "keys"
        LocalKMS(keys).create_key("audit")
        if backend == "postgresql":
            url = pg_create(prefix="kc_audit_template")
        else:
            db = self.root / backend / "db" / "audit.db"
            db.parent.mkdir()
            url = f"sqlite:///{db}"
        with open_env(url, keys) as env:
            fill(env.log, env.write, N)
        if backend == "sqlite":
            with closing(sqlite3.connect(sqlite_file(url))) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            with raw_db(url) as conn:
                conn.execute("CREATE SCHEMA pristine")
                for table in PRISTINE:
                    conn.execute(f"CREATE TABLE pristine.{table} AS SELECT * FROM {table}")
        return Template(url, keys)

    def copy(self, backend: str) -> str:
        """A new PostgreSQL database copied from the template (the caller drops it)."""
        return pg_create(template=make_url(self.get(backend).url).database)

    def reset_scratch(self) -> str:
        """The PostgreSQL scratch database, its audit tables as the template's again."""
        if self.scratch is None:
            self.scratch = self.copy("postgresql")
        with raw_db(self.scratch) as conn:
            conn.execute("BEGIN")
            for table in reversed(PRISTINE):
                conn.execute(f"DELETE FROM {table}")
            for table in PRISTINE:
                conn.execute(f"INSERT INTO {table} SELECT * FROM pristine.{table}")
            conn.execute("COMMIT")
        return self.scratch

    def close(self) -> None:
        for url in [self.scratch, *(t.url for t in self.built.values())]:
            if url is not None and backend_of(url) == "postgresql":
                pg_drop(url)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Templates]:
    made = Templates(tmp_path_factory.mktemp("audit-template"))
    yield made
    made.close()


@contextmanager
def copied(templates: Templates, backend: str, *, scratch: bool = True) -> Iterator[Env]:
    """A fresh copy of the backend's template database (works inside hypothesis examples).

    SQLite: the template's files copied. PostgreSQL: the scratch database, its rows reset to
    the template's (``scratch``: for tests that change rows only), or a new database copied
    from the template (for tests that change the schema).
    """
    template = templates.get(backend)
    if backend == "postgresql":
        if scratch:
            with open_env(templates.reset_scratch(), template.keys) as env:
                yield env
            return
        url = templates.copy(backend)
        try:
            with open_env(url, template.keys) as env:
                yield env
        finally:
            pg_drop(url)
        return
    db = sqlite_file(template.url)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / db.name
        for path in db_files(db):
            shutil.copy(path, Path(tmp) / path.name)
        with open_env(f"sqlite:///{target}", template.keys) as env:
            yield env


@pytest.fixture
def full(templates: Templates, backend: str) -> Iterator[Env]:
    with copied(templates, backend) as env:
        yield env


@pytest.fixture
def empty(db_url: str, tmp_path: Path) -> Iterator[Env]:
    keys = tmp_path / "keys"
    LocalKMS(keys).create_key("audit")
    with open_env(db_url, keys) as env:
        yield env


def sql(url: str, statement: str, *params: Any) -> None:
    """Runs one statement on a raw connection, as an attacker at the database would."""
    admin_sql(url, statement, *params)


def rows(url: str) -> list[tuple[Any, ...]]:
    with raw_db(url) as conn:
        return conn.rows(f"SELECT {COLUMN_LIST} FROM audit_events ORDER BY seq")


def row(url: str, seq: int) -> dict[str, Any]:
    with raw_db(url) as conn:
        got = conn.one(f"SELECT {COLUMN_LIST} FROM audit_events WHERE seq = ?", (seq,))
    assert got is not None
    return dict(zip(AUDIT_COLUMNS, got, strict=True))


def flip(value: bytes) -> bytes:
    return bytes([value[0] ^ 0x01]) + value[1:]


def edited(column: str, seq: int, old: Any) -> Any:
    """A different value for ``column`` of event ``seq``, of the column's own type."""
    if column == "seq":
        return seq + 100_000
    if column == "at":
        when = as_datetime(old) + timedelta(microseconds=1)
        return when if isinstance(old, datetime) else when.strftime("%Y-%m-%d %H:%M:%S.%f")
    if column in ("prev_hash", "hash", "mac"):
        return flip(old)
    if column == "details":
        return '{"forged":true}'
    if old is None:
        return "forged"
    return old + "x"


def examples(backend: str, n: int) -> settings:
    """``n`` hypothesis examples on SQLite, a quarter of them on PostgreSQL: the verifier's
    logic is the same on both; what PostgreSQL adds (its types and constraints, psycopg's
    values) a few examples cover, and each example there resets a database over the network."""
    return settings(max_examples=n if backend == "sqlite" else max(n // 4, 5))


def check_bad(report: AuditReport, seq: int) -> None:
    assert report.ok is False
    assert report.first_bad_seq == seq, report.reason
    assert report.reason
    assert report.events_checked == max(seq - 1, 0)
    assert report.head_seq == max(seq - 1, 0)


def chain_values(seq: int, prev: bytes, fields_: dict[str, Any]) -> bytes:
    """The SHA-256 link of a raw row, as anyone can recompute it without the audit key."""
    return event_hash(
        seq=seq,
        at=as_datetime(fields_["at"]),
        actor=fields_["actor"],
        action=fields_["action"],
        subject=fields_["subject"],
        kms_key_id=fields_["kms_key_id"],
        kms_key_version=fields_["kms_key_version"],
        outcome=fields_["outcome"],
        details=fields_["details"],
        prev_hash=prev,
    )


def rechain(url: str, start: int, mac: Callable[[bytes], bytes]) -> None:
    """Recomputes prev_hash, hash and mac of every event from ``start`` on."""
    with raw_db(url) as conn:
        conn.execute("BEGIN")
        if start == 1:
            prev = GENESIS
        else:
            got = conn.one("SELECT hash FROM audit_events WHERE seq = ?", (start - 1,))
            assert got is not None
            prev = bytes(got[0])
        values = conn.rows(
            f"SELECT {COLUMN_LIST} FROM audit_events WHERE seq >= ? ORDER BY seq",
            (start,),
        )
        updates = []
        for value in values:
            r = dict(zip(AUDIT_COLUMNS, value, strict=True))
            digest = chain_values(r["seq"], prev, r)
            updates.append((prev, digest, mac(digest), r["seq"]))
            prev = digest
        conn.executemany(
            "UPDATE audit_events SET prev_hash = ?, hash = ?, mac = ? WHERE seq = ?", updates
        )
        conn.execute("COMMIT")


def forged_mac(digest: bytes) -> bytes:
    return hmac.new(b"\x42" * 32, digest, hashlib.sha256).digest()


# -- round trip -------------------------------------------------------------------------------


def test_round_trip_of_1000_events(full: Env) -> None:
    report = full.log.verify()

    assert report == AuditReport(True, N, N, rows(full.url)[-1][10].hex(), None, None)
    events = list(full.log.events())
    assert [e.seq for e in events] == list(range(1, N + 1))
    assert events[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
    assert events[9].details_dict() == {"i": 10, "range": [10, 19], "f": 0.5, "flag": True}
    assert events[2].kms_key_id is None and events[0].kms_key_id == "local:acme-kek"
    assert all(e.actor == ACTOR and e.at.tzinfo is not None for e in events)


def test_append_returns_what_is_stored(empty: Env) -> None:
    with empty.write() as s, s.begin():
        ev = empty.log.append(
            s,
            action="kek.rotate",
            subject="acme",
            kms_key_id="local:acme-kek",
            kms_key_version="2",
            details={"z": 1, "a": {"y": None, "b": [1.25, "x"]}},
        )

    assert empty.log.tail(1) == [ev]
    assert ev.seq == 1 and ev.prev_hash == GENESIS and ev.outcome == "ok"
    assert ev.details == '{"a":{"b":[1.25,"x"],"y":null},"z":1}'
    key = empty.log._cached()
    assert key is not None and ev.mac == key.mac(ev.hash)
    assert ev.hash == hashlib.sha256(_reference_encoding(ev)).digest()


def _reference_encoding(ev: AuditEvent) -> bytes:
    """The documented encoding, written out independently of the library's code."""

    def field(raw: bytes) -> bytes:
        return len(raw).to_bytes(4, "big") + raw

    def opt(text: str | None) -> bytes:
        return b"\x00" if text is None else b"\x01" + field(text.encode())

    return (
        field(b"keycustody/audit-event/v1")
        + ev.seq.to_bytes(8, "big")
        + field(ev.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode())
        + field(ev.actor.encode())
        + field(ev.action.encode())
        + field(ev.subject.encode())
        + opt(ev.kms_key_id)
        + opt(ev.kms_key_version)
        + field(ev.outcome.encode())
        + field(ev.details.encode())
        + field(ev.prev_hash)
    )


def test_encoding_is_unambiguous() -> None:
    base: dict[str, Any] = {
        "seq": 1,
        "at": datetime.fromisoformat("2026-11-26T10:00:00+00:00"),
        "actor": "a",
        "action": "b",
        "subject": "c",
        "kms_key_id": None,
        "kms_key_version": "",
        "outcome": "ok",
        "details": "{}",
        "prev_hash": GENESIS,
    }
    variants = [
        base,
        {**base, "actor": "ab", "action": ""},  # shifting a boundary
        {**base, "kms_key_id": "", "kms_key_version": None},  # None vs empty, swapped
        {**base, "kms_key_id": ""},
        {**base, "seq": 2},
        {**base, "at": base["at"] + timedelta(microseconds=1)},
    ]
    assert len({event_hash(**v) for v in variants}) == len(variants)
    assert format_at(base["at"]) == "2026-11-26T10:00:00.000000Z"


def test_verify_on_an_empty_log(empty: Env) -> None:
    report = empty.log.verify()

    assert report == AuditReport(True, 0, 0, "0" * 64, None, None)
    assert empty.log.verify(expected_head=(0, "0" * 64)).ok
    assert empty.log.tail() == [] and list(empty.log.events()) == []


def test_tail_and_events_since(full: Env) -> None:
    assert [e.seq for e in full.log.tail(3)] == [N - 2, N - 1, N]
    assert full.log.tail(0) == []
    assert [e.seq for e in full.log.events(since=N - 5)] == list(range(N - 4, N + 1))
    assert list(full.log.events(since=N)) == []
    with pytest.raises(InvalidInputError):
        full.log.tail(-1)
    with pytest.raises(InvalidInputError):
        list(full.log.events(since=-1))


def test_events_carry_no_key_material() -> None:
    names = {f.name for f in fields(AuditEvent)}
    assert names == set(AUDIT_COLUMNS)
    assert "__slots__" in AuditEvent.__dict__


# -- tampering: every column, deletion, reordering, insertion -----------------------------------


def test_editing_any_column_of_any_event_is_detected(templates: Templates, backend: str) -> None:
    @examples(backend, 60)
    @given(seq=st.integers(1, N), column=st.sampled_from(AUDIT_COLUMNS))
    def check(seq: int, column: str) -> None:
        with copied(templates, backend) as env:
            old = row(env.url, seq)[column]
            sql(
                env.url,
                f"UPDATE audit_events SET {column} = ? WHERE seq = ?",
                edited(column, seq, old),
                seq,
            )

            check_bad(env.log.verify(), seq)

    check()


@pytest.mark.parametrize("column", AUDIT_COLUMNS)
def test_editing_each_column_of_a_middle_event_is_detected(full: Env, column: str) -> None:
    seq = 500
    old = row(full.url, seq)[column]
    sql(
        full.url,
        f"UPDATE audit_events SET {column} = ? WHERE seq = ?",
        edited(column, seq, old),
        seq,
    )

    check_bad(full.log.verify(), seq)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        # PostgreSQL's timestamptz column refuses these (its types are enforced).
        pytest.param("at", "not a time", marks=pytest.mark.sqlite_only),
        pytest.param("at", 12345, marks=pytest.mark.sqlite_only),
        ("actor", 7),
        ("kms_key_id", b"\x00" * 4),
        ("outcome", 1.5),
        ("details", b"{}"),
        ("prev_hash", "00" * 32),
        ("hash", b"\x00" * 31),
        ("mac", "mac"),
        ("kms_key_version", 99),  # stored as "99" (TEXT affinity, PostgreSQL's cast): an edit
    ],
)
def test_values_of_the_wrong_type_are_reported_not_crashed_on(
    full: Env, column: str, value: object
) -> None:
    # SQLite stores any type in any column, PostgreSQL casts what it can (bytes into text,
    # text into bytea, numbers into text) and keeps digests of any length: the verifier must
    # cope with what it finds.
    sql(full.url, f"UPDATE audit_events SET {column} = ? WHERE seq = 321", value)

    check_bad(full.log.verify(), 321)


@pytest.mark.sqlite_only  # a PostgreSQL UTF8 database refuses text that is not UTF-8
def test_text_that_is_not_utf8_is_reported(full: Env) -> None:
    sql(full.url, "UPDATE audit_events SET actor = CAST(X'FFFE41' AS TEXT) WHERE seq = 777")

    check_bad(full.log.verify(), 777)
    with pytest.raises(AuditError, match="777"):
        list(full.log.events())


def test_deleting_one_event_is_detected(templates: Templates, backend: str) -> None:
    @examples(backend, 30)
    @given(seq=st.integers(1, N - 1))
    def check(seq: int) -> None:
        with copied(templates, backend) as env:
            sql(env.url, "DELETE FROM audit_events WHERE seq = ?", seq)

            report = env.log.verify()

        check_bad(report, seq)
        assert "missing" in (report.reason or "")

    check()


def test_deleting_an_event_and_renumbering_is_detected(full: Env) -> None:
    sql(full.url, "DELETE FROM audit_events WHERE seq = 400")
    sql(full.url, "UPDATE audit_events SET seq = -seq WHERE seq > 400")
    sql(full.url, "UPDATE audit_events SET seq = -seq - 1 WHERE seq < 0")

    check_bad(full.log.verify(), 400)


def test_swapping_two_events_is_detected(templates: Templates, backend: str) -> None:
    @examples(backend, 30)
    @given(pair=st.lists(st.integers(1, N), min_size=2, max_size=2, unique=True))
    def check(pair: list[int]) -> None:
        i, j = sorted(pair)
        with copied(templates, backend) as env:
            sql(env.url, "UPDATE audit_events SET seq = -1 WHERE seq = ?", i)
            sql(env.url, "UPDATE audit_events SET seq = ? WHERE seq = ?", i, j)
            sql(env.url, "UPDATE audit_events SET seq = ? WHERE seq = -1", j)

            check_bad(env.log.verify(), i)

    check()


def test_a_forged_event_at_the_end_with_a_valid_sha256_chain_is_detected(full: Env) -> None:
    last = row(full.url, N)
    forged = {**last, "action": "scope.shred", "subject": "acme", "details": "{}"}
    digest = chain_values(N + 1, last["hash"], forged)
    values = {**forged, "seq": N + 1, "prev_hash": last["hash"], "hash": digest}
    for mac in (forged_mac(digest), hashlib.sha256(digest).digest(), bytes(32)):
        sql(full.url, "DELETE FROM audit_events WHERE seq = ?", N + 1)
        sql(
            full.url,
            f"INSERT INTO audit_events ({COLUMN_LIST}) VALUES ({', '.join('?' * 12)})",
            *[mac if c == "mac" else values[c] for c in AUDIT_COLUMNS],
        )

        report = full.log.verify()

        check_bad(report, N + 1)
        assert "MAC" in (report.reason or "")


def test_an_event_inserted_in_the_middle_and_rechained_is_detected(
    templates: Templates, backend: str
) -> None:
    @examples(backend, 20)
    @given(seq=st.integers(1, N))
    def check(seq: int) -> None:
        with copied(templates, backend) as env:
            model = row(env.url, seq)
            sql(env.url, "UPDATE audit_events SET seq = -seq WHERE seq >= ?", seq)
            sql(env.url, "UPDATE audit_events SET seq = -seq + 1 WHERE seq < 0")
            values = {**model, "seq": seq, "action": "access.denied", "outcome": "ok"}
            sql(
                env.url,
                f"INSERT INTO audit_events ({COLUMN_LIST}) VALUES ({', '.join('?' * 12)})",
                *[values[c] for c in AUDIT_COLUMNS],
            )
            rechain(env.url, seq, forged_mac)

            report = env.log.verify()

        check_bad(report, seq)
        assert "MAC" in (report.reason or "")

    check()


def test_rechaining_after_an_edit_with_another_audit_key_is_detected(full: Env) -> None:
    other = KeyHandle.generate(32)
    sql(full.url, "UPDATE audit_events SET subject = 'nothing/happened' WHERE seq = 250")

    rechain(full.url, 250, other.mac)
    check_bad(full.log.verify(), 250)

    rechain(full.url, 1, other.mac)  # the whole chain, sealed with the wrong key
    check_bad(full.log.verify(), 1)


def test_a_rewrite_by_someone_holding_the_kms_is_caught_by_the_anchor(full: Env) -> None:
    """With KMS access an attacker can seal a new history; only an external anchor catches it."""
    anchor = (full.log.verify().head_seq, full.log.verify().head_hash)
    other = KeyHandle.generate(32)
    context = EncryptionContext({"keycustody": "audit-key/v1", "vault": VAULT, "id": "1"})
    wrapped = full.registry.wrap(KeyId(AUDIT_KEK), other, context)
    sql(full.url, "UPDATE audit_keys SET wrapped = ?", wrapped.ciphertext)
    sql(full.url, "UPDATE audit_events SET outcome = 'denied' WHERE seq = 10")
    rechain(full.url, 1, other.mac)

    with open_env(full.url, full.kms.path) as fresh:
        assert fresh.log.verify().ok  # the documented limit without an anchor
        report = fresh.log.verify(expected_head=anchor)

    assert report.ok is False and report.first_bad_seq == N
    assert "rewritten" in (report.reason or "")


def test_a_tampered_or_missing_audit_key_fails_verification(full: Env) -> None:
    keys = full.kms.path
    sql(full.url, "UPDATE audit_keys SET wrapped = ?", b"\x00" * 60)
    with open_env(full.url, keys) as fresh:
        check_bad(fresh.log.verify(), 1)
    assert full.log.verify().ok is False  # this instance never unwrapped it either

    sql(full.url, "DELETE FROM audit_keys")
    with open_env(full.url, keys) as fresh:
        report = fresh.log.verify()
    check_bad(report, 1)
    assert "no audit key" in (report.reason or "")


# -- truncation and anchors ----------------------------------------------------------------------


def test_truncating_the_tail_is_detected_against_an_anchor(
    templates: Templates, backend: str
) -> None:
    @examples(backend, 20)
    @given(keep=st.integers(0, N - 1))
    def check(keep: int) -> None:
        with copied(templates, backend) as env:
            before = env.log.verify()
            sql(env.url, "DELETE FROM audit_events WHERE seq > ?", keep)

            plain = env.log.verify()
            anchored = env.log.verify(expected_head=(before.head_seq, before.head_hash))

        assert plain.ok and plain.head_seq == keep  # a shorter chain is consistent by itself
        check_bad(anchored, keep + 1)
        assert "truncated" in (anchored.reason or "")

    check()


def test_an_older_anchor_still_verifies(full: Env) -> None:
    ev = full.log.tail(N)[499]
    assert full.log.verify(expected_head=(ev.seq, ev.hash.hex())).ok
    bad = full.log.verify(expected_head=(ev.seq, "ab" * 32))
    assert bad.ok is False and bad.first_bad_seq == ev.seq


@pytest.mark.parametrize(
    "anchor", [(1, "zz"), (1, "ab" * 31), (-1, "00" * 32), (0, "ab" * 32), ("1", "00" * 32)]
)
def test_malformed_anchors_are_rejected(empty: Env, anchor: Any) -> None:
    with pytest.raises(InvalidInputError):
        empty.log.verify(expected_head=anchor)


# -- export -----------------------------------------------------------------------------------


def test_export_writes_json_lines_with_the_chain(full: Env, tmp_path: Path) -> None:
    target = tmp_path / "out" / "audit.jsonl"
    target.parent.mkdir()
    target.write_text("old contents\n")

    assert full.log.export(target) == N

    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(lines) == N
    assert [p.name for p in target.parent.iterdir()] == ["audit.jsonl"]  # no temp file left
    events = list(full.log.events())
    prev = GENESIS
    for line, ev in zip(lines, events, strict=True):
        assert line["vault"] == VAULT and line["seq"] == ev.seq
        assert line["hash"] == ev.hash.hex() and line["mac"] == ev.mac.hex()
        assert line["at"].endswith("Z")
        # The SIEM side can recompute the SHA-256 chain from the file alone.
        digest = event_hash(
            seq=line["seq"],
            at=datetime.fromisoformat(line["at"].replace("Z", "+00:00")),
            actor=line["actor"],
            action=line["action"],
            subject=line["subject"],
            kms_key_id=line["kms_key_id"],
            kms_key_version=line["kms_key_version"],
            outcome=line["outcome"],
            details=canonical_details(line["details"]),
            prev_hash=bytes.fromhex(line["prev_hash"]),
        )
        assert bytes.fromhex(line["prev_hash"]) == prev and digest.hex() == line["hash"]
        prev = digest


def test_export_since_and_empty(full: Env, empty: Env, tmp_path: Path) -> None:
    assert full.log.export(tmp_path / "tail.jsonl", since=N - 10) == 10
    assert [json.loads(x)["seq"] for x in (tmp_path / "tail.jsonl").read_text().splitlines()] == (
        list(range(N - 9, N + 1))
    )
    assert empty.log.export(tmp_path / "none.jsonl") == 0
    assert (tmp_path / "none.jsonl").read_bytes() == b""


def test_a_failed_export_leaves_the_old_file(full: Env, tmp_path: Path) -> None:
    target = tmp_path / "audit.jsonl"
    target.write_text("previous export\n")
    sql(full.url, "UPDATE audit_events SET hash = ? WHERE seq = 900", b"\x00")

    with pytest.raises(AuditError, match="900"):
        full.log.export(target)
    sql(
        full.url,
        "UPDATE audit_events SET hash = ?, details = '{not json' WHERE seq = 900",
        b"\x01" * 32,
    )
    with pytest.raises(AuditError, match="900"):
        full.log.export(target)

    assert target.read_text() == "previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl"]
    with pytest.raises(AuditError):
        full.log.export(tmp_path / "missing-dir" / "x.jsonl")


# -- fail closed ----------------------------------------------------------------------------


class BoomError(Exception):
    pass


def _count(env: Env, model: type[Any]) -> int:
    with env.write() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_an_append_rolled_back_with_its_transaction_leaves_nothing(empty: Env) -> None:
    with pytest.raises(BoomError), empty.write() as s, s.begin():
        s.execute(insert(VaultMeta).values(key="change", value="x"))
        empty.log.append(s, action="scope.create", subject="acme")
        raise BoomError

    assert _count(empty, AuditEventRow) == 0
    assert _count(empty, VaultMeta) == 0
    # The audit key made in that transaction was rolled back too, and forgotten with it.
    assert _count(empty, AuditKeyRow) == 0 and empty.log._cached() is None
    ev = empty.log.record("scope.create", "acme", outcome="ok")
    assert ev.seq == 1 and _count(empty, AuditKeyRow) == 1
    assert empty.log.verify().ok


@pytest.mark.parametrize(
    "details",
    [
        {"key": b"\x00" * 32},
        {"nested": {"deep": [1, bytearray(b"x")]}},
        {"view": memoryview(b"abc")},
        {"nan": float("nan")},
        {"set": {1, 2}},
        {1: "non-str key"},
    ],
)
def test_an_invalid_append_raises_and_writes_nothing(full: Env, details: Any) -> None:
    before = full.log.verify()
    with pytest.raises(InvalidInputError), full.write() as s, s.begin():
        s.execute(insert(VaultMeta).values(key="change", value="x"))
        full.log.append(s, action="key.rotate", subject="acme", details=details)

    assert _count(full, VaultMeta) == 0
    assert full.log.verify() == before


def test_bytes_in_details_get_a_clear_message(empty: Env) -> None:
    with pytest.raises(InvalidInputError, match=r"must not hold bytes \(details\.dek\)"):
        empty.log.record("key.rotate", "acme", outcome="ok", details={"dek": b"k" * 32})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"action": "", "subject": "acme"},
        {"action": "x" * 65, "subject": "acme"},
        {"action": "a", "subject": "acme", "outcome": "maybe"},
        {"action": "a", "subject": "acme", "kms_key_id": 3},
        {"action": "a", "subject": "s\udc80"},
    ],
)
def test_invalid_fields_are_rejected(empty: Env, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError), empty.write() as s, s.begin():
        empty.log.append(s, **kwargs)
    assert _count(empty, AuditEventRow) == 0


def test_a_database_failure_fails_the_callers_change(templates: Templates, backend: str) -> None:
    with copied(templates, backend, scratch=False) as full:  # its own copy: the schema changes
        sql(full.url, "ALTER TABLE audit_events RENAME TO audit_events_gone")

        with (
            pytest.raises(AuditError, match=r"cannot append audit event 'scope\.suspend'"),
            full.write() as s,
            s.begin(),
        ):
            s.execute(insert(VaultMeta).values(key="change", value="x"))
            full.log.append(s, action="scope.suspend", subject="acme")

        assert _count(full, VaultMeta) == 0
        with pytest.raises(AuditError):
            full.log.record("access.denied", "acme", outcome="denied")


def test_a_disabled_audit_kek_fails_the_first_append(empty: Env) -> None:
    kms = empty.kms
    kms.disable_key(AUDIT_KEK)

    with (
        pytest.raises(AuditError, match="audit key is unavailable") as info,
        empty.write() as s,
        s.begin(),
    ):
        s.execute(insert(VaultMeta).values(key="change", value="x"))
        empty.log.append(s, action="scope.create", subject="acme")

    assert isinstance(info.value.__cause__, KeyRevokedError)
    assert _count(empty, VaultMeta) == 0 and _count(empty, AuditKeyRow) == 0


def test_record_commits_on_its_own(empty: Env) -> None:
    """A denied decrypt is recorded after the caller's own transaction rolled back."""
    try:
        with empty.write() as s, s.begin():
            s.execute(insert(VaultMeta).values(key="change", value="x"))
            raise BoomError
    except BoomError:
        empty.log.record("access.denied", "acme/subjects/alice", outcome="denied")

    assert [(e.action, e.outcome) for e in empty.log.tail()] == [("access.denied", "denied")]
    assert _count(empty, VaultMeta) == 0


# -- the audit key ------------------------------------------------------------------------------


@pytest.mark.sqlite_only  # scans the database files (PostgreSQL's: tests/storage/test_postgres)
def test_no_key_bytes_in_the_database_or_the_export(full: Env, tmp_path: Path) -> None:
    full.log.ensure_key()
    key = full.log._cached()
    assert key is not None
    secret = bytes(key.export_secret())
    full.log.record("kek.rotate", "acme", outcome="ok", details={"n": 1})
    full.log.export(tmp_path / "audit.jsonl")
    with full.write() as s:
        wrapped = s.scalars(select(AuditKeyRow.wrapped)).one()

    files = [*db_files(sqlite_file(full.url)), tmp_path / "audit.jsonl"]
    blob = b"".join(p.read_bytes() for p in files)
    needles = [secret, secret[:16], secret[16:], secret.hex().encode()]
    assert [n for n in needles if n in blob] == []
    assert wrapped in blob  # the scan does see what is stored


def test_the_key_is_unwrapped_once_per_instance(full: Env) -> None:
    calls = full.registry.calls
    full.log.ensure_key()
    full.log.ensure_key()
    for i in range(50):
        full.log.record("record.put_many", f"acme:{i}", outcome="ok")
    full.log.verify()

    assert full.registry.calls == calls + 1


def test_the_first_event_creates_the_key_once(empty: Env) -> None:
    empty.log.record("scope.create", "acme", outcome="ok")
    keys_dir = empty.kms.path

    with open_env(empty.url, keys_dir) as other:
        other.log.ensure_key()
        other.log.record("scope.create", "beta", outcome="ok")
        with other.write() as s:
            (stored,) = s.scalars(select(AuditKeyRow)).all()
        assert stored.kek_id == AUDIT_KEK and stored.kek_version == "1"
        assert other.log.verify().events_checked == 2


def test_ensure_key_creates_it_outside_any_transaction(empty: Env) -> None:
    empty.log.ensure_key()
    assert _count(empty, AuditKeyRow) == 1 and _count(empty, AuditEventRow) == 0
    assert empty.log.verify().ok


def test_rewrap_key_moves_it_to_another_kek(full: Env) -> None:
    kms = full.kms
    new_kek = kms.create_key("audit-2")

    ev = full.log.rewrap_key(new_kek)
    kms.destroy_key(AUDIT_KEK)

    assert ev.action == "audit.key.rewrap" and ev.kms_key_id == new_kek
    assert ev.details_dict() == {"from_kek": AUDIT_KEK}
    with open_env(full.url, kms.path) as fresh:
        report = fresh.log.verify()
    assert report.ok and report.events_checked == N + 1


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_writers_keep_one_chain(empty: Env) -> None:
    empty.log.ensure_key()
    keys_dir = empty.kms.path
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with open_env(empty.url, keys_dir) as env:
                for i in range(25):
                    env.log.record("record.put_many", f"w{worker}/{i}", outcome="ok")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    report = empty.log.verify()
    assert report.ok and report.events_checked == 100
    assert {e.subject for e in empty.log.events()} == {
        f"w{w}/{i}" for w in range(4) for i in range(25)
    }
