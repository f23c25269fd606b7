"""AuditLog on real SQLite files and a real LocalKMS: round trip, tamper evidence, fail closed.

The tampering is done the way a database administrator would do it: with raw sqlite3 on the
database file, behind the library's back.
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
from sqlalchemy.orm import Session, sessionmaker

from keycustody._core import KeyHandle
from keycustody.audit import AuditEvent, AuditLog, AuditReport
from keycustody.audit.events import GENESIS, canonical_details, event_hash, format_at
from keycustody.errors import AuditError, InvalidInputError, KeyRevokedError
from keycustody.kms.local import LocalKMS
from keycustody.kms.registry import ProviderRegistry
from keycustody.storage import schema
from keycustody.storage.engine import WRITE, make_engine
from keycustody.storage.models import AuditEventRow, AuditKeyRow, VaultMeta
from keycustody.types import EncryptionContext, KeyId

N = 1000
VAULT = "vault-0123"
ACTOR = "ops@example"
AUDIT_KEK = "local:audit"
COLUMNS = (
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
ACTIONS = ("scope.create", "key.rotate", "record.put_many", "kek.rotate", "access.denied")


@dataclass
class Env:
    """A database file with an AuditLog on it."""

    db: Path
    engine: Engine
    kms: LocalKMS
    registry: ProviderRegistry
    log: AuditLog
    write: Callable[[], Session]


@contextmanager
def open_env(db: Path, keys: Path) -> Iterator[Env]:
    engine = make_engine(f"sqlite:///{db}")
    try:
        schema.upgrade(engine)
        kms = LocalKMS(keys)
        registry = ProviderRegistry(kms)
        write = sessionmaker(engine.execution_options(**WRITE), expire_on_commit=False)
        read = sessionmaker(engine, expire_on_commit=False)
        log = AuditLog(VAULT, ACTOR, write, registry, AUDIT_KEK, read_sessions=read)
        yield Env(db, engine, kms, registry, log, write)
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


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A database holding N events, and the KMS directory with its audit KEK (copied per test)."""
    root = tmp_path_factory.mktemp("audit-template")
    keys = root / "keys"
    LocalKMS(keys).create_key("audit")
    db = root / "db" / "audit.db"
    db.parent.mkdir()
    with open_env(db, keys) as env:
        fill(env.log, env.write, N)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db, keys


@contextmanager
def copied(template: tuple[Path, Path]) -> Iterator[Env]:
    """A fresh copy of the template database (works inside hypothesis examples too)."""
    db, keys = template
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / db.name
        for path in db_files(db):
            shutil.copy(path, Path(tmp) / path.name)
        with open_env(target, keys) as env:
            yield env


@pytest.fixture
def full(template: tuple[Path, Path]) -> Iterator[Env]:
    with copied(template) as env:
        yield env


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[Env]:
    keys = tmp_path / "keys"
    LocalKMS(keys).create_key("audit")
    (tmp_path / "db").mkdir()
    with open_env(tmp_path / "db" / "audit.db", keys) as env:
        yield env


def sql(db: Path, statement: str, *params: Any) -> None:
    """Runs one statement with raw sqlite3, as an attacker at the database would."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(statement, params)
        conn.commit()


def rows(db: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM audit_events ORDER BY seq"
        ).fetchall()


def row(db: Path, seq: int) -> dict[str, Any]:
    with closing(sqlite3.connect(db)) as conn:
        got = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM audit_events WHERE seq = ?", (seq,)
        ).fetchone()
    return dict(zip(COLUMNS, got, strict=True))


def flip(value: bytes) -> bytes:
    return bytes([value[0] ^ 0x01]) + value[1:]


def edited(column: str, seq: int, old: Any) -> Any:
    """A different value for ``column`` of event ``seq``, of the column's own type."""
    if column == "seq":
        return seq + 100_000
    if column == "at":
        when = datetime.fromisoformat(old) + timedelta(microseconds=1)
        return when.strftime("%Y-%m-%d %H:%M:%S.%f")
    if column in ("prev_hash", "hash", "mac"):
        return flip(old)
    if column == "details":
        return '{"forged":true}'
    if old is None:
        return "forged"
    return old + "x"


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
        at=datetime.fromisoformat(fields_["at"]),
        actor=fields_["actor"],
        action=fields_["action"],
        subject=fields_["subject"],
        kms_key_id=fields_["kms_key_id"],
        kms_key_version=fields_["kms_key_version"],
        outcome=fields_["outcome"],
        details=fields_["details"],
        prev_hash=prev,
    )


def rechain(db: Path, start: int, mac: Callable[[bytes], bytes]) -> None:
    """Recomputes prev_hash, hash and mac of every event from ``start`` on."""
    with closing(sqlite3.connect(db)) as conn:
        prev = (
            GENESIS
            if start == 1
            else conn.execute(
                "SELECT hash FROM audit_events WHERE seq = ?", (start - 1,)
            ).fetchone()[0]
        )
        got = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM audit_events WHERE seq >= ? ORDER BY seq",
            (start,),
        ).fetchall()
        for values in got:
            r = dict(zip(COLUMNS, values, strict=True))
            digest = chain_values(r["seq"], prev, r)
            conn.execute(
                "UPDATE audit_events SET prev_hash = ?, hash = ?, mac = ? WHERE seq = ?",
                (prev, digest, mac(digest), r["seq"]),
            )
            prev = digest
        conn.commit()


def forged_mac(digest: bytes) -> bytes:
    return hmac.new(b"\x42" * 32, digest, hashlib.sha256).digest()


# -- round trip -------------------------------------------------------------------------------


def test_round_trip_of_1000_events(full: Env) -> None:
    report = full.log.verify()

    assert report == AuditReport(True, N, N, rows(full.db)[-1][10].hex(), None, None)
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
    assert names == set(COLUMNS)
    assert "__slots__" in AuditEvent.__dict__


# -- tampering: every column, deletion, reordering, insertion -----------------------------------


@settings(max_examples=60)
@given(seq=st.integers(1, N), column=st.sampled_from(COLUMNS))
def test_editing_any_column_of_any_event_is_detected(
    template: tuple[Path, Path], seq: int, column: str
) -> None:
    with copied(template) as env:
        old = row(env.db, seq)[column]
        sql(
            env.db,
            f"UPDATE audit_events SET {column} = ? WHERE seq = ?",
            edited(column, seq, old),
            seq,
        )

        check_bad(env.log.verify(), seq)


@pytest.mark.parametrize("column", COLUMNS)
def test_editing_each_column_of_a_middle_event_is_detected(full: Env, column: str) -> None:
    seq = 500
    old = row(full.db, seq)[column]
    sql(
        full.db,
        f"UPDATE audit_events SET {column} = ? WHERE seq = ?",
        edited(column, seq, old),
        seq,
    )

    check_bad(full.log.verify(), seq)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("at", "not a time"),
        ("at", 12345),
        ("actor", 7),
        ("kms_key_id", b"\x00" * 4),
        ("outcome", 1.5),
        ("details", b"{}"),
        ("prev_hash", "00" * 32),
        ("hash", b"\x00" * 31),
        ("mac", "mac"),
        ("kms_key_version", 99),  # TEXT affinity stores it as "99": still an edit
    ],
)
def test_values_of_the_wrong_type_are_reported_not_crashed_on(
    full: Env, column: str, value: object
) -> None:
    # SQLite stores any type in any column: the verifier must cope with what it finds.
    sql(full.db, f"UPDATE audit_events SET {column} = ? WHERE seq = 321", value)

    check_bad(full.log.verify(), 321)


def test_text_that_is_not_utf8_is_reported(full: Env) -> None:
    sql(full.db, "UPDATE audit_events SET actor = CAST(X'FFFE41' AS TEXT) WHERE seq = 777")

    check_bad(full.log.verify(), 777)
    with pytest.raises(AuditError, match="777"):
        list(full.log.events())


@settings(max_examples=30)
@given(seq=st.integers(1, N - 1))
def test_deleting_one_event_is_detected(template: tuple[Path, Path], seq: int) -> None:
    with copied(template) as env:
        sql(env.db, "DELETE FROM audit_events WHERE seq = ?", seq)

        report = env.log.verify()

    check_bad(report, seq)
    assert "missing" in (report.reason or "")


def test_deleting_an_event_and_renumbering_is_detected(full: Env) -> None:
    sql(full.db, "DELETE FROM audit_events WHERE seq = 400")
    sql(full.db, "UPDATE audit_events SET seq = -seq WHERE seq > 400")
    sql(full.db, "UPDATE audit_events SET seq = -seq - 1 WHERE seq < 0")

    check_bad(full.log.verify(), 400)


@settings(max_examples=30)
@given(pair=st.lists(st.integers(1, N), min_size=2, max_size=2, unique=True))
def test_swapping_two_events_is_detected(template: tuple[Path, Path], pair: list[int]) -> None:
    i, j = sorted(pair)
    with copied(template) as env:
        sql(env.db, "UPDATE audit_events SET seq = -1 WHERE seq = ?", i)
        sql(env.db, "UPDATE audit_events SET seq = ? WHERE seq = ?", i, j)
        sql(env.db, "UPDATE audit_events SET seq = ? WHERE seq = -1", j)

        check_bad(env.log.verify(), i)


def test_a_forged_event_at_the_end_with_a_valid_sha256_chain_is_detected(full: Env) -> None:
    last = row(full.db, N)
    forged = {**last, "action": "scope.shred", "subject": "acme", "details": "{}"}
    digest = chain_values(N + 1, last["hash"], forged)
    values = {**forged, "seq": N + 1, "prev_hash": last["hash"], "hash": digest}
    for mac in (forged_mac(digest), hashlib.sha256(digest).digest(), bytes(32)):
        sql(full.db, "DELETE FROM audit_events WHERE seq = ?", N + 1)
        sql(
            full.db,
            f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 12)})",
            *[mac if c == "mac" else values[c] for c in COLUMNS],
        )

        report = full.log.verify()

        check_bad(report, N + 1)
        assert "MAC" in (report.reason or "")


@settings(max_examples=20)
@given(seq=st.integers(1, N))
def test_an_event_inserted_in_the_middle_and_rechained_is_detected(
    template: tuple[Path, Path], seq: int
) -> None:
    with copied(template) as env:
        model = row(env.db, seq)
        sql(env.db, "UPDATE audit_events SET seq = -seq WHERE seq >= ?", seq)
        sql(env.db, "UPDATE audit_events SET seq = -seq + 1 WHERE seq < 0")
        values = {**model, "seq": seq, "action": "access.denied", "outcome": "ok"}
        sql(
            env.db,
            f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 12)})",
            *[values[c] for c in COLUMNS],
        )
        rechain(env.db, seq, forged_mac)

        report = env.log.verify()

    check_bad(report, seq)
    assert "MAC" in (report.reason or "")


def test_rechaining_after_an_edit_with_another_audit_key_is_detected(full: Env) -> None:
    other = KeyHandle.generate(32)
    sql(full.db, "UPDATE audit_events SET subject = 'nothing/happened' WHERE seq = 250")

    rechain(full.db, 250, other.mac)
    check_bad(full.log.verify(), 250)

    rechain(full.db, 1, other.mac)  # the whole chain, sealed with the wrong key
    check_bad(full.log.verify(), 1)


def test_a_rewrite_by_someone_holding_the_kms_is_caught_by_the_anchor(full: Env) -> None:
    """With KMS access an attacker can seal a new history; only an external anchor catches it."""
    anchor = (full.log.verify().head_seq, full.log.verify().head_hash)
    other = KeyHandle.generate(32)
    context = EncryptionContext({"keycustody": "audit-key/v1", "vault": VAULT, "id": "1"})
    wrapped = full.registry.wrap(KeyId(AUDIT_KEK), other, context)
    sql(full.db, "UPDATE audit_keys SET wrapped = ?", wrapped.ciphertext)
    sql(full.db, "UPDATE audit_events SET outcome = 'denied' WHERE seq = 10")
    rechain(full.db, 1, other.mac)

    with open_env(full.db, full.kms.path) as fresh:
        assert fresh.log.verify().ok  # the documented limit without an anchor
        report = fresh.log.verify(expected_head=anchor)

    assert report.ok is False and report.first_bad_seq == N
    assert "rewritten" in (report.reason or "")


def test_a_tampered_or_missing_audit_key_fails_verification(full: Env) -> None:
    keys = full.kms.path
    sql(full.db, "UPDATE audit_keys SET wrapped = ?", b"\x00" * 60)
    with open_env(full.db, keys) as fresh:
        check_bad(fresh.log.verify(), 1)
    assert full.log.verify().ok is False  # this instance never unwrapped it either

    sql(full.db, "DELETE FROM audit_keys")
    with open_env(full.db, keys) as fresh:
        report = fresh.log.verify()
    check_bad(report, 1)
    assert "no audit key" in (report.reason or "")


# -- truncation and anchors ----------------------------------------------------------------------


@settings(max_examples=20)
@given(keep=st.integers(0, N - 1))
def test_truncating_the_tail_is_detected_against_an_anchor(
    template: tuple[Path, Path], keep: int
) -> None:
    with copied(template) as env:
        before = env.log.verify()
        sql(env.db, "DELETE FROM audit_events WHERE seq > ?", keep)

        plain = env.log.verify()
        anchored = env.log.verify(expected_head=(before.head_seq, before.head_hash))

    assert plain.ok and plain.head_seq == keep  # a shorter chain is consistent by itself
    check_bad(anchored, keep + 1)
    assert "truncated" in (anchored.reason or "")


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
    sql(full.db, "UPDATE audit_events SET hash = X'00' WHERE seq = 900")

    with pytest.raises(AuditError, match="900"):
        full.log.export(target)
    sql(
        full.db,
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


def test_a_database_failure_fails_the_callers_change(full: Env) -> None:
    sql(full.db, "ALTER TABLE audit_events RENAME TO audit_events_gone")

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


def test_no_key_bytes_in_the_database_or_the_export(full: Env, tmp_path: Path) -> None:
    full.log.ensure_key()
    key = full.log._cached()
    assert key is not None
    secret = bytes(key.export_secret())
    full.log.record("kek.rotate", "acme", outcome="ok", details={"n": 1})
    full.log.export(tmp_path / "audit.jsonl")
    with full.write() as s:
        wrapped = s.scalars(select(AuditKeyRow.wrapped)).one()

    files = [*db_files(full.db), tmp_path / "audit.jsonl"]
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

    with open_env(empty.db, keys_dir) as other:
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
    with open_env(full.db, kms.path) as fresh:
        report = fresh.log.verify()
    assert report.ok and report.events_checked == N + 1


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_writers_keep_one_chain(empty: Env) -> None:
    empty.log.ensure_key()
    keys_dir = empty.kms.path
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with open_env(empty.db, keys_dir) as env:
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
