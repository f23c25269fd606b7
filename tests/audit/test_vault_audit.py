"""The audit trail of a real Vault (TESTPLAN T31, T32): a realistic workload of key lifecycle
operations, then tampering with a raw connection (sqlite3 on SQLite, psycopg on PostgreSQL) the
way a database administrator would.

Every lifecycle operation writes exactly one event with its action; denied and failed access is
recorded; editing any column of any event, deleting, reordering or inserting events is found by
``vault.audit.verify()``; and no audit row holds key bytes.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

import keycustody as kc
from dbadmin import AUDIT_COLUMNS, RawDB, pg_create, pg_drop, sqlite_file
from forensics import plaintext_keys
from keycustody.audit.events import event_hash

ACTOR = "ops@acme.example"
SHRED = "acme/subjects/alice"
LEAF = "acme/subjects/bob"
LIFECYCLE = {
    "scope.create",
    "record.put",
    "key.rotate",
    "key.rewrap",
    "kek.rotate",
    "scope.suspend",
    "scope.resume",
    "scope.shred",
    "erasure.certificate",
    "erasure.phase2",
    "records.purge",
    "key.compromise",
    "key.reencrypt",
}


def raw_db(db_url: str) -> RawDB:
    """A raw connection, as a database administrator (or attacker) would use."""
    conn = RawDB(db_url)
    if conn.backend == "sqlite":
        conn.execute("PRAGMA synchronous=OFF")  # only speeds up the many tamper-and-restore steps
    return conn


def records(prefix: str, n: int, size: int = 200) -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{i:04d}", (f"{prefix}:{i};" * size)[:size].encode()) for i in range(n)]


def flip_body_byte(db_url: str) -> tuple[bytes, bytes]:
    """Flips one ciphertext byte of one record of acme; returns (record_id, original body)."""
    with raw_db(db_url) as conn:
        rid, body = conn.execute(
            "SELECT r.record_id, r.body FROM records r JOIN scopes s ON s.id = r.scope_id "
            "WHERE s.path = 'acme' ORDER BY r.record_id LIMIT 1"
        ).fetchone()
        tampered = bytearray(body)
        tampered[len(tampered) // 2] ^= 0x40
        conn.execute("UPDATE records SET body = ? WHERE record_id = ?", (bytes(tampered), rid))
        return bytes(rid), bytes(body)


def restore_body(db_url: str, rid: bytes, body: bytes) -> None:
    with raw_db(db_url) as conn:
        conn.execute("UPDATE records SET body = ? WHERE record_id = ?", (body, rid))


# -- a realistic workload, built once ----------------------------------------------------


def workload(url: str, kms: kc.LocalKMS) -> None:
    """A realistic workload: tenants and child scopes, writes, a delete, rotation and rewrap, a
    KEK move, a suspension with a denied read, a tampered record, a compromise with
    re-encryption, a shred with phase 2, and a purge; the vault closed after it."""
    with kc.Vault.open(url, kms=kms, actor=ACTOR) as vault:
        acme = vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
        globex = vault.scope("globex", create=True)
        api = vault.scope("acme/repos/api", create=True)
        alice = vault.scope(SHRED, create=True)
        vault.scope("acme/subjects/bob", create=True).put_many(records("bob", 20))
        acme.put_many(records("acme", 300))
        api.put_many(records("api", 200))
        alice.put_many(records("alice", 50))
        globex.put_many(records("globex", 100))
        api.put_stream("big.bin", io.BytesIO(b"s" * (2**20 + 5)))
        acme.put("single.txt", b"single")
        acme.delete("single.txt")
        acme.rotate_key()
        acme.rewrap()
        vault.rotate_kek("acme", kms.create_key("acme-kek-2"))
        api.suspend(reason="incident 42")
        with pytest.raises(kc.KeyRevokedError):
            api.get("api/0001")
        api.resume(reason="incident 42 closed")
        rid, body = flip_body_byte(url)
        with pytest.raises(kc.IntegrityError):
            acme.get_many([name for name, _ in records("acme", 300)])
        restore_body(url, rid, body)
        globex.mark_compromised(reason="key seen in a crash dump")
        globex.reencrypt()
        vault.shred(SHRED, reason="GDPR Art.17 request #123")
        with pytest.raises(kc.ShreddedError):
            alice.get("alice/0001")
        vault.complete_erasures()
        vault.purge()
        assert vault.audit.verify().ok


@dataclass(frozen=True)
class Workload:
    """The workload's closed vault (a SQLite file, or a PostgreSQL database each test copies
    as a template) and its KMS directory."""

    url: str
    keys: Path


class Workloads:
    """The workload's vault per backend, run on first use and shared by the module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Workload] = {}

    def get(self, backend: str) -> Workload:
        if backend not in self.built:
            kms = kc.LocalKMS(self.root / backend / "keys")
            if backend == "postgresql":
                url = pg_create(prefix="kc_audit_workload")
            else:
                (self.root / backend / "db").mkdir(parents=True)
                url = f"sqlite:///{self.root / backend / 'db' / 'ctx.db'}"
            workload(url, kms)
            self.built[backend] = Workload(url, kms.path)
        return self.built[backend]

    def copy(self, backend: str, folder: Path) -> str:
        """A private copy of the workload's database: its URL (PostgreSQL: drop it after)."""
        source = self.get(backend).url
        if backend == "postgresql":
            return pg_create(template=make_url(source).database)
        db = sqlite_file(source)
        folder.mkdir()
        shutil.copyfile(db, folder / db.name)
        return f"sqlite:///{folder / db.name}"

    def close(self) -> None:
        for built in self.built.values():
            if built.url.startswith("postgresql"):
                pg_drop(built.url)


@pytest.fixture(scope="module")
def workloads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workloads]:
    made = Workloads(tmp_path_factory.mktemp("audit-workload"))
    yield made
    made.close()


@dataclass
class Trail:
    vault: kc.Vault
    url: str
    conn: RawDB
    events: list[dict[str, Any]] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return self.conn.dicts("SELECT * FROM audit_events ORDER BY seq")

    def sql(self, statement: str, *args: Any) -> None:
        self.conn.execute(statement, args)

    def set(self, seq: int, column: str, value: Any) -> None:
        self.sql(f"UPDATE audit_events SET {column} = ? WHERE seq = ?", value, seq)

    def insert(self, row: dict[str, Any]) -> None:
        names = ",".join(row)
        marks = ",".join("?" * len(row))
        self.sql(f"INSERT INTO audit_events ({names}) VALUES ({marks})", *row.values())

    def shift(self, start: int, by: int) -> None:
        """Renumbers every event from ``start`` on by ``by`` (in two steps: seq is unique)."""
        self.sql("UPDATE audit_events SET seq = -seq WHERE seq >= ?", start)
        self.sql("UPDATE audit_events SET seq = -seq + ? WHERE seq < 0", by)


@pytest.fixture
def trail(workloads: Workloads, backend: str, tmp_path: Path) -> Iterator[Trail]:
    """A private copy of the workload's vault, open through the Python API."""
    url = workloads.copy(backend, tmp_path / "db")
    keys = workloads.get(backend).keys
    try:
        with (
            kc.Vault.open(url, kms=kc.LocalKMS(keys), actor=ACTOR) as vault,
            raw_db(url) as conn,
        ):
            trail = Trail(vault, url, conn)
            trail.events = trail.rows()
            yield trail
    finally:
        if backend == "postgresql":
            pg_drop(url)


def forge(column: str, value: Any) -> Any:
    """A plausible forgery of one stored value."""
    if column == "seq":
        return value + 100_000
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if value is None:
        return "local:forged"
    if column == "actor":
        return "mallory@elsewhere"
    if column == "outcome":
        return "ok" if value != "ok" else "denied"
    if column == "details":
        details = json.loads(value)
        details["forged"] = True
        return json.dumps(details, sort_keys=True, separators=(",", ":"))
    if isinstance(value, datetime):  # PostgreSQL's timestamptz: one microsecond later
        return value + timedelta(microseconds=1)
    if column == "at":  # SQLite's '2026-11-26 10:00:00.123456': one microsecond later
        return value[:-1] + ("1" if value[-1] != "1" else "2")
    assert isinstance(value, str)
    return value + "x"


# -- the workload's trail ----------------------------------------------------------------


def test_the_workload_trail_verifies_and_records_every_kind_of_operation(trail: Trail) -> None:
    report = trail.vault.audit.verify()
    assert report.ok, report.reason
    assert report.events_checked == len(trail.events) == report.head_seq
    actions = Counter(e["action"] for e in trail.events)
    assert set(actions) >= LIFECYCLE, LIFECYCLE - set(actions)
    assert {e["actor"] for e in trail.events} == {ACTOR}
    outcomes = Counter((e["action"], e["outcome"]) for e in trail.events)
    assert outcomes[("access.denied", "denied")] >= 2  # the suspended and the shredded read
    assert outcomes[("integrity.failure", "failed")] == 1
    again = trail.vault.audit.verify(expected_head=(report.head_seq, report.head_hash))
    assert again.ok


def test_editing_any_column_of_any_event_is_detected(trail: Trail) -> None:
    audit = trail.vault.audit
    assert len(trail.events) > 40
    for row in trail.events:
        seq = row["seq"]
        for column in AUDIT_COLUMNS:
            original = row[column]
            forged = forge(column, original)
            trail.set(seq, column, forged)
            report = audit.verify()
            assert not report.ok, f"edit of {column} in event {seq} ({row['action']}) missed"
            assert report.first_bad_seq == seq, (column, seq, report.reason)
            trail.set(forged if column == "seq" else seq, column, original)
    assert audit.verify().ok


def test_deleting_any_event_is_detected(trail: Trail) -> None:
    audit = trail.vault.audit
    head = audit.verify()
    anchor = (head.head_seq, head.head_hash)
    for row in trail.events:
        trail.sql("DELETE FROM audit_events WHERE seq = ?", row["seq"])
        report = audit.verify(expected_head=anchor)
        assert not report.ok
        assert report.first_bad_seq == row["seq"], report.reason
        if row["seq"] < head.head_seq:  # a gap is found even without the anchor
            assert audit.verify().first_bad_seq == row["seq"]
        trail.insert(row)
    assert audit.verify(expected_head=anchor).ok


def test_reordering_two_events_is_detected(trail: Trail) -> None:
    audit = trail.vault.audit
    rows = trail.events
    pairs = [(i, i + 1) for i in range(len(rows) - 1)] + [(0, len(rows) - 1), (3, len(rows) // 2)]
    for i, j in pairs:
        a, b = rows[i], rows[j]
        for row, other in ((a, b), (b, a)):
            for column in AUDIT_COLUMNS[1:]:
                trail.set(row["seq"], column, other[column])
        report = audit.verify()
        assert not report.ok
        assert report.first_bad_seq == a["seq"], (i, j, report.reason)
        for row in (a, b):
            for column in AUDIT_COLUMNS[1:]:
                trail.set(row["seq"], column, row[column])
    assert audit.verify().ok


def test_inserting_an_event_is_detected(trail: Trail) -> None:
    audit = trail.vault.audit
    rows = trail.events
    last = rows[-1]["seq"]
    for at in (1, len(rows) // 2, last):
        trail.shift(at, 1)
        # A genuine event (another one), replayed in a new position.
        trail.insert(dict(rows[at % len(rows)], seq=at))
        report = audit.verify()
        assert not report.ok
        assert report.first_bad_seq == at, report.reason
        trail.sql("DELETE FROM audit_events WHERE seq = ?", at)
        trail.shift(at + 1, -1)
    trail.insert(dict(rows[-1], seq=last + 1))  # a replayed event appended at the end
    assert audit.verify().first_bad_seq == last + 1
    trail.sql("DELETE FROM audit_events WHERE seq = ?", last + 1)
    assert audit.verify().ok


def test_a_chain_recomputed_without_the_audit_key_is_detected(trail: Trail) -> None:
    """Someone who rewrites the reason of the shred and recomputes every SHA-256 link after it
    (the algorithm is public) cannot make the MACs match without the KMS-held audit key."""
    audit = trail.vault.audit
    events = list(audit.events())
    target = next(e for e in events if e.action == "scope.shred")
    details = target.details_dict()
    details["reason"] = "routine cleanup"
    new_details = json.dumps(details, sort_keys=True, separators=(",", ":"))
    prev = target.prev_hash
    for ev in events[target.seq - 1 :]:
        text = new_details if ev.seq == target.seq else ev.details
        digest = event_hash(
            seq=ev.seq,
            at=ev.at,
            actor=ev.actor,
            action=ev.action,
            subject=ev.subject,
            kms_key_id=ev.kms_key_id,
            kms_key_version=ev.kms_key_version,
            outcome=ev.outcome,
            details=text,
            prev_hash=prev,
        )
        trail.set(ev.seq, "details", text)
        trail.set(ev.seq, "prev_hash", prev)
        trail.set(ev.seq, "hash", digest)
        prev = digest
    report = audit.verify()
    assert not report.ok
    assert report.first_bad_seq == target.seq
    assert report.reason is not None and "MAC" in report.reason
    ok, _ = trail.vault.verify_certificate(trail.vault.certificates()[0].document)
    assert not ok


# -- one event per operation -------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """A lifecycle operation, what it must write, and its setup."""

    action: str
    run: Callable[[kc.Vault, kc.LocalKMS], object]
    setup: Callable[[kc.Vault, kc.LocalKMS], object] = lambda v, k: None
    extras: tuple[str, ...] = ()
    """Other events the operation writes, each a key state change of its own (SP 800-57:
    every transition is audited), e.g. the DEACTIVATED -> DESTROYED of a rewrap."""


def _compromise_v1(v: kc.Vault, k: kc.LocalKMS) -> None:
    v.scope(LEAF).rotate_key()
    v.scope(LEAF).mark_compromised(1, reason="leak")


OPS = {
    "scope.create": Op("scope.create", lambda v, k: v.scope("acme/repos/web", create=True)),
    "record.put": Op("record.put", lambda v, k: v.scope("acme").put("n.txt", b"n")),
    "record.put-many": Op(
        "record.put", lambda v, k: v.scope("acme").put_many(records("many", 12_000, 16))
    ),
    "record.put_stream": Op(
        "record.put_stream",
        lambda v, k: v.scope("acme").put_stream("s.bin", io.BytesIO(b"s" * 3_000_000)),
    ),
    "record.delete": Op("record.delete", lambda v, k: v.scope("acme").delete("acme/0001")),
    "key.rotate": Op("key.rotate", lambda v, k: v.scope("acme").rotate_key()),
    "key.rewrap": Op(
        "key.rewrap",
        lambda v, k: v.scope("acme").rewrap(),
        setup=lambda v, k: v.scope("acme").rotate_key(),
        extras=("key.destroy",),
    ),
    "kek.rotate": Op(
        "kek.rotate",
        lambda v, k: v.rotate_kek("acme", "local:acme-kek-2"),
        setup=lambda v, k: k.create_key("acme-kek-2"),
    ),
    "scope.suspend": Op("scope.suspend", lambda v, k: v.scope("acme/repos/api").suspend()),
    "scope.resume": Op(
        "scope.resume",
        lambda v, k: v.scope("acme/repos/api").resume(reason="cleared"),
        setup=lambda v, k: v.scope("acme/repos/api").suspend(reason="incident"),
    ),
    "scope.shred": Op(
        "scope.shred",
        lambda v, k: v.shred(SHRED, reason="GDPR #1"),
        extras=("erasure.certificate",),
    ),
    "erasure.phase2": Op(
        "erasure.phase2",
        lambda v, k: v.complete_erasures(),
        setup=lambda v, k: v.shred(SHRED, reason="GDPR #1"),
        # re-key acme/subjects and acme (rotate, rewrap, destroy the old version), move acme
        # to the KEK's new version
        extras=(
            *("key.rotate", "key.rotate", "key.rewrap", "key.rewrap"),
            *("key.destroy", "key.destroy", "kek.rotate"),
        ),
    ),
    "records.purge": Op(
        "records.purge",
        lambda v, k: v.purge(),
        setup=lambda v, k: v.shred(SHRED, reason="GDPR #1"),
    ),
    # A leaf scope: a compromise cascades to child key versions, each an event of its own.
    "key.compromise": Op(
        "key.compromise",
        lambda v, k: v.scope(LEAF).mark_compromised(1, reason="leak"),
        setup=lambda v, k: v.scope(LEAF).rotate_key(),
    ),
    "key.reencrypt": Op(
        "key.reencrypt",
        lambda v, k: v.scope(LEAF).reencrypt(),
        setup=_compromise_v1,
        extras=("key.destroy",),
    ),
}


@pytest.fixture
def base(vault: kc.Vault, kms: kc.LocalKMS) -> kc.Vault:
    vault.scope("acme", kek=kms.create_key("acme-kek"), create=True).put_many(records("acme", 50))
    vault.scope("acme/repos/api", create=True).put_many(records("api", 20))
    vault.scope(SHRED, create=True).put_many(records("alice", 20))
    vault.scope(f"{SHRED}/chats", create=True).put_many(records("chats", 5))
    vault.scope("acme/subjects/bob", create=True).put_many(records("bob", 5))
    return vault


@pytest.mark.parametrize(
    "name",
    OPS,
)
def test_each_lifecycle_operation_writes_exactly_one_event(
    name: str, base: kc.Vault, kms: kc.LocalKMS
) -> None:
    op = OPS[name]
    op.setup(base, kms)
    head = base.audit.verify().head_seq
    op.run(base, kms)
    events = list(base.audit.events(since=head))
    actions = Counter(e.action for e in events)
    assert actions == Counter([op.action, *op.extras]), [e.action for e in events]
    assert all(e.outcome == "ok" and e.actor == base.actor for e in events)
    assert base.audit.verify().ok


def test_a_shred_writes_one_shred_and_one_certificate_event(base: kc.Vault) -> None:
    head = base.audit.verify().head_seq
    certificate = base.shred(SHRED, reason="GDPR #1")
    events = [e for e in base.audit.events(since=head) if e.outcome == "ok"]
    assert [(e.action, e.subject) for e in events] == [
        ("scope.shred", SHRED),
        ("erasure.certificate", SHRED),
    ]
    shred, issued = (e.details_dict() for e in events)
    assert shred["certificate"] == issued["certificate"] == certificate.id
    assert shred["reason"] == "GDPR #1"
    assert (shred["scopes"], shred["key_versions_destroyed"]) == (2, 2)
    assert issued["sha256"] == certificate.sha256


# -- denied and failed access ------------------------------------------------------------


def test_denied_and_failed_access_is_recorded(
    base: kc.Vault, kms: kc.LocalKMS, db_url: str
) -> None:
    audit = base.audit

    def last_events(call: Callable[[], object], error: type[Exception]) -> list[Any]:
        head = audit.verify().head_seq
        with pytest.raises(error):
            call()
        return list(audit.events(since=head))

    api = base.scope("acme/repos/api")
    api.suspend(reason="incident")
    (denied,) = last_events(lambda: api.get("api/0001"), kc.KeyRevokedError)
    assert (denied.action, denied.outcome) == ("access.denied", "denied")
    assert denied.subject == "acme/repos/api:get_many"
    assert denied.details_dict() == {"error": "KeyRevokedError"}
    (denied_put,) = last_events(lambda: api.put("x", b"x"), kc.KeyRevokedError)
    assert (denied_put.outcome, denied_put.subject) == ("denied", "acme/repos/api:put_many")
    api.resume()

    rid, body = flip_body_byte(db_url)
    names = [n for n, _ in records("acme", 50)]
    (failed,) = last_events(lambda: base.scope("acme").get_many(names), kc.IntegrityError)
    assert (failed.action, failed.outcome) == ("integrity.failure", "failed")
    assert failed.subject == "acme:get_many"
    assert failed.details_dict() == {"error": "IntegrityError"}
    restore_body(db_url, rid, body)

    kms.disable_key("local:acme-kek")
    with kc.Vault.open(db_url, kms=kms, cache_ttl=0) as cold:
        head = cold.audit.verify().head_seq
        with pytest.raises(kc.KeyRevokedError):
            cold.scope("acme").get(names[0])
        (revoked,) = cold.audit.events(since=head)
        assert (revoked.action, revoked.outcome) == ("access.denied", "denied")
    kms.enable_key("local:acme-kek")

    base.shred(SHRED, reason="GDPR #2")
    (shredded,) = last_events(lambda: base.scope(SHRED).get("alice/0001"), kc.ShreddedError)
    assert (shredded.outcome, shredded.details_dict()) == ("denied", {"error": "ShreddedError"})
    assert audit.verify().ok
    assert base.scope("acme").get_many(names) == dict(records("acme", 50))


# -- no key bytes in the trail -----------------------------------------------------------


def _key_material(vault: kc.Vault, conn: RawDB, kms_dir: Path) -> set[bytes]:
    """Plaintext keys (live scope key versions, the audit key, KEK files) and stored key
    material (wrapped scope keys, the wrapped audit key, every record's wrapped DEK)."""
    found = plaintext_keys(vault, kms_dir)
    found.update(bytes(w) for (w,) in conn.rows("SELECT wrapped FROM scope_keys") if w)
    found.update(bytes(w) for (w,) in conn.rows("SELECT wrapped FROM audit_keys"))
    found.update(bytes(h)[72:132] for (h,) in conn.rows("SELECT header FROM records"))
    return found


def test_no_key_bytes_in_any_audit_row(
    trail: Trail, workloads: Workloads, backend: str, tmp_path: Path
) -> None:
    keys = _key_material(trail.vault, trail.conn, workloads.get(backend).keys)
    assert len(keys) > 500
    pieces: set[bytes] = set()
    for key in keys:
        pieces.update(key[i : i + 16] for i in range(0, len(key) - 15, 16))
    forms: list[bytes] = []
    for piece in pieces:
        forms += [piece, piece.hex().encode(), piece.hex().upper().encode()]
    forms += [base64.b64encode(k) for k in keys] + [base64.urlsafe_b64encode(k) for k in keys]
    for row in trail.rows():
        stored = b"|".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
        hit = next((f for f in forms if f in stored), None)
        assert hit is None, f"event {row['seq']} ({row['action']}) holds key material"
    export = tmp_path / "audit.jsonl"
    assert trail.vault.audit.export(export) == len(trail.events)
    text = export.read_bytes()
    assert not [f for f in forms if f in text]
