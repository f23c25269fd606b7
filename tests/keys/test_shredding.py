"""Crypto-shredding with proof (DESIGN §4 "Why two phases"; TESTPLAN T9, T25, T26, T28).

Everything runs on a real SQLite file in its default WAL journal and a real LocalKMS folder;
raw ``sqlite3`` reads and tampers the files the way a database administrator (or an attacker
holding a backup) would, and kill -9 hits a real child process.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import dbadmin
import keycustody as kc
from dbadmin import RawDB
from forensics import hits, plaintext_keys
from keycustody.keys import shredding
from kill9 import kill_during

SHRED = "acme/subjects/alice"
SUBTREE = (SHRED, f"{SHRED}/chats")
SURVIVORS = ("acme", "acme/repos/api", "acme/subjects", "acme/subjects/bob")
COUNTS = {
    "acme": 40,
    "acme/repos/api": 40,
    "acme/subjects": 5,
    SHRED: 60,
    f"{SHRED}/chats": 30,
    "acme/subjects/bob": 30,
}

Data = dict[str, dict[str, bytes]]


# -- helpers -----------------------------------------------------------------------------


def raw_db(db: Path | str) -> sqlite3.Connection | RawDB:
    """A plain connection, as a database administrator (or attacker) would use: sqlite3 on a
    SQLite file, or the backend's own driver on a database URL (:mod:`dbadmin`)."""
    if isinstance(db, str):
        return dbadmin.raw_db(db)
    return sqlite3.connect(db, isolation_level=None)


def payloads(path: str, n: int, seed: int = 0, size: int = 1500) -> dict[str, bytes]:
    rng = random.Random(f"{path}/{seed}")
    return {f"{path}/{seed}/f{i:05d}.txt": rng.randbytes(rng.randrange(0, size)) for i in range(n)}


def fill(vault: kc.Vault, kms: kc.LocalKMS) -> Data:
    """Tenant acme (own KEK) with records in the tenant, in siblings, in the parent of the
    scope to shred, in the scope to shred and in its child."""
    vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
    data: Data = {}
    for path, n in COUNTS.items():
        data[path] = payloads(path, n)
        vault.scope(path, create=True).put_many(data[path].items())
    return data


def assert_reads(vault: kc.Vault, data: Data, paths: Iterable[str]) -> None:
    for path in paths:
        assert vault.scope(path).get_many(list(data[path])) == data[path], path


def subtree_paths(vault: kc.Vault, root: str) -> list[str]:
    return [p for p in vault.scopes() if p == root or p.startswith(root + "/")]


def key_rows(
    db_path: Path | str, paths: Iterable[str]
) -> list[tuple[str, int, str, bytes | None]]:
    """(path, version, state, wrapped) of every key version of the scopes."""
    paths = list(paths)
    marks = ",".join("?" * len(paths))
    conn = raw_db(db_path)
    try:
        return [
            (p, v, st, None if w is None else bytes(w))
            for p, v, st, w in conn.execute(
                "SELECT s.path, k.version, k.state, k.wrapped FROM scope_keys k "
                f"JOIN scopes s ON s.id = k.scope_id WHERE s.path IN ({marks}) "
                "ORDER BY s.path, k.version",
                paths,
            )
        ]
    finally:
        conn.close()


def wrapped_keys(db_path: Path | str, paths: Iterable[str]) -> set[bytes]:
    """The wrapped key material stored for the scopes right now."""
    return {w for _, _, _, w in key_rows(db_path, paths) if w is not None}


def chunks(values: Iterable[bytes]) -> list[bytes]:
    """Every aligned 16-byte piece of each value and its last 16 bytes: a WAL or page boundary
    can split a value (TESTPLAN §2). A stored whole value contains all its pieces, so finding
    none of the pieces also proves that no whole value and no 16-byte half is stored."""
    out: set[bytes] = set()
    for value in values:
        assert len(value) >= 16
        out.update(value[i : i + 16] for i in range(0, len(value) - 15, 16))
        out.add(value[-16:])
    return sorted(out)


def folder_files(folder: Path) -> list[Path]:
    """Every file in the database's folder: the database, -wal, -shm, -journal, temp files."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def copy_database(src: Path, dst_folder: Path) -> Path:
    """Copies the database file and its WAL, as a file-level backup does."""
    dst_folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        source = src.with_name(src.name + suffix)
        if source.exists():
            shutil.copyfile(source, dst_folder / (src.name + suffix))
    return dst_folder / src.name


def restore(backup: Path, folder: Path) -> str:
    """A fresh copy of a backup (so that opening it never changes the backup); its URL."""
    return f"sqlite:///{copy_database(backup, folder)}"


def audit_actions(vault: kc.Vault, since: int = 0) -> list[str]:
    return [e.action for e in vault.audit.events(since=since)]


@pytest.fixture
def data(vault: kc.Vault, kms: kc.LocalKMS) -> Data:
    return fill(vault, kms)


# -- forensics: the destroyed key bytes are gone from every database file -----------------


def test_no_destroyed_key_bytes_remain_in_any_database_file(
    vault: kc.Vault, kms: kc.LocalKMS, db_path: Path, data: Data
) -> None:
    """After a child shred, no wrapped key of the subtree is in the .db, its WAL or journal,
    whole or as 16-byte pieces, while siblings and parents read byte for byte."""
    alice = vault.scope(SHRED)
    # Older key versions too: wrapped values the subtree held at any time must all be gone.
    ever = wrapped_keys(db_path, SUBTREE)
    alice.rotate_key()
    ever |= wrapped_keys(db_path, SUBTREE)
    alice.put_many(payloads(SHRED, 10, seed=1).items())
    alice.rewrap()  # destroys v1 and rewraps chats under v2
    ever |= wrapped_keys(db_path, SUBTREE)
    live = wrapped_keys(db_path, SUBTREE)
    siblings = wrapped_keys(db_path, SURVIVORS)
    files = folder_files(db_path.parent)
    assert {p.name for p in files} >= {"ctx.db", "ctx.db-wal"}, "expected the WAL journal"
    # Positive controls: the scan does find key material that is still stored.
    assert {n for _, n in hits(files, live)} == live, "the scan must see the live keys"
    assert {n for _, n in hits(files, siblings)} == siblings

    certificate = vault.shred(SHRED, reason="GDPR Art.17 request #123")

    files = folder_files(db_path.parent)
    assert hits(files, chunks(ever)) == []
    assert {n for _, n in hits(files, siblings)} == siblings, "siblings' keys stay stored"
    assert all(w is None for _, _, _, w in key_rows(db_path, SUBTREE))
    assert_reads(vault, data, SURVIVORS)
    with kc.Vault.open(f"sqlite:///{db_path}", kms=kms) as cold:
        assert_reads(cold, data, SURVIVORS)

    scan = certificate.document["verification"]["forensic_scan"]
    assert scan["hits"] == 0
    assert scan["values_searched"] == len(live)
    assert {f["file"] for f in scan["files"]} >= {"ctx.db", "ctx.db-wal"}
    assert all(f["hits"] == 0 and len(f["sha256"]) == 64 for f in scan["files"])
    scrub = certificate.document["how"]["storage_scrub"]
    assert scrub["secure_delete"] == "ON"
    assert scrub["journal_mode"] == "wal"
    assert scrub["checkpoint"] == "wal_checkpoint(TRUNCATE)"
    assert scrub["checkpoint_complete"] is True


_DMS_PROBE = """
import fcntl, sys
with open(sys.argv[1], "r+b") as f:
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
    except OSError:
        print("held")
    else:
        print("free")
"""


def _wal_index_lock(db_path: Path) -> str:
    """Returns "held" while some process has the SQLite database open: no other process can
    then take the lock SQLite's WAL index is reset under (byte 128 of the -shm file,
    ``UNIX_SHM_DMS`` in SQLite's os_unix.c) for itself. Probed from a child process, so that
    this one's locks stay as they are."""
    probe = subprocess.run(
        [sys.executable, "-c", _DMS_PROBE, f"{db_path}-shm"],
        capture_output=True,
        text=True,
        check=True,
    )
    return probe.stdout.strip()


def test_the_forensic_scan_keeps_the_sqlite_locks_of_this_process(
    vault: kc.Vault, db_path: Path, data: Data
) -> None:
    """The scan reads the database files. Closing a descriptor of a file releases every POSIX
    lock the process holds on it, SQLite's included: another process could then take the WAL
    index for its own and reset it under this one's open connections (a worker of the
    four-process test died of SIGBUS), or write under its readers. So the scan reads them from
    a child process, and the vault's locks hold throughout."""
    assert vault.scope("acme").get_many(list(data["acme"])) == data["acme"]
    assert _wal_index_lock(db_path) == "held"
    certificate = vault.shred(SHRED, reason="locks test")
    assert certificate.document["verification"]["forensic_scan"]["performed"] is True
    assert _wal_index_lock(db_path) == "held"
    assert vault.scope("acme").get_many(list(data["acme"])) == data["acme"]


# -- backups: readable until phase 2, then not even with the customer's KMS -------------


@pytest.mark.parametrize("phase2", ["complete_erasures", "durable"])
def test_a_backup_reads_the_shredded_scope_only_until_phase_2(
    phase2: str,
    vault: kc.Vault,
    kms: kc.LocalKMS,
    db_path: Path,
    tmp_path: Path,
    data: Data,
) -> None:
    backup = copy_database(db_path, tmp_path / "backup")
    shredded = {name: blob for path in SUBTREE for name, blob in data[path].items()}
    kek_versions_before = set(kms.describe_key("local:acme-kek")["versions"])
    ancestors_before = [
        (p, v) for p, v, _, w in key_rows(db_path, ["acme", "acme/subjects"]) if w is not None
    ]

    if phase2 == "complete_erasures":
        certificate = vault.shred(SHRED, reason="GDPR #7")
        assert certificate.phase2_status == "pending"
        risk = " ".join(certificate.document["residual_risk"])
        assert "backups" in risk.lower()
        assert "phase 2" in risk
        # The documented residual risk: the old copy plus the same KMS still decrypts.
        with kc.Vault.open(restore(backup, tmp_path / "r1"), kms=kms) as old:
            for path in SUBTREE:
                assert old.scope(path).get_many(list(data[path])) == data[path]
        (updated,) = vault.complete_erasures()
    else:
        updated = vault.shred(SHRED, reason="GDPR #7", durable=True)

    assert updated.phase2_status == "confirmed"
    phase = updated.document["when"]["phase2"]
    assert phase["confirmed_at"] is not None
    assert phase["ancestors_rekeyed"] == ["acme/subjects", "acme"]
    assert any("destroyed" in e for e in phase["events"])
    assert vault.verify_certificate(updated.document)[0]
    risk = " ".join(updated.document["residual_risk"])
    assert "Phase 2 confirmed" in risk
    assert "until phase 2" not in risk

    # The chain from the shredded keys up to the KEK is broken outside the database: the KEK
    # versions that wrapped the tenant's keys at shred time are destroyed in the KMS ...
    versions = kms.describe_key("local:acme-kek")["versions"]
    for v in kek_versions_before:
        assert versions[v]["state"] == "destroyed"
        assert not (kms.path / "acme-kek" / f"v{v}.key").exists()
    # ... and the ancestor key versions that wrapped them are destroyed in the live database.
    live = {(p, v): (st, w) for p, v, st, w in key_rows(db_path, ["acme", "acme/subjects"])}
    for key in ancestors_before:
        assert live[key] == ("DESTROYED", None), key

    with kc.Vault.open(restore(backup, tmp_path / "r2"), kms=kms) as old:
        for path in SUBTREE:
            scope = old.scope(path)
            with pytest.raises(kc.KeyCustodyError) as listed:
                scope.list()
            assert isinstance(listed.value, kc.ShreddedError | kc.KeyRevokedError)
            assert "destroyed" in str(listed.value)
        for name in sorted(shredded):  # one by one: not a single record decrypts
            path = SHRED if "/chats/" not in name else f"{SHRED}/chats"
            with pytest.raises(kc.ShreddedError, match="KEK 'local:acme-kek' was destroyed"):
                old.scope(path).get(name)
        for path in SUBTREE:
            with pytest.raises(kc.ShreddedError, match="destroyed"):
                old.scope(path).get_many(list(data[path]))

    # The live vault reads everything that survives, byte for byte, also after a restart.
    assert_reads(vault, data, SURVIVORS)
    with kc.Vault.open(f"sqlite:///{db_path}", kms=kms) as fresh:
        assert_reads(fresh, data, SURVIVORS)


def hybrid(backup: Path, live: Path, folder: Path) -> str:
    """The attacker's best copy after phase 2: a pre-shred backup whose surviving scopes take
    the live database's (re-keyed) key rows, with every key state set to decrypt. Its URL."""
    db = copy_database(backup, folder)
    conn = raw_db(db)
    try:
        conn.execute("ATTACH DATABASE ? AS live", (str(live),))
        surviving = "SELECT id FROM live.scopes WHERE state != 'SHREDDED'"
        conn.execute(f"DELETE FROM scope_keys WHERE scope_id IN ({surviving})")
        conn.execute(
            f"INSERT INTO scope_keys SELECT * FROM live.scope_keys WHERE scope_id IN ({surviving})"
        )
        conn.execute(
            "UPDATE scopes SET kek_id = (SELECT l.kek_id FROM live.scopes l WHERE l.id = "
            f"scopes.id) WHERE id IN ({surviving})"
        )
        conn.execute("UPDATE scope_keys SET state = 'DEACTIVATED' WHERE state = 'COMPROMISED'")
        # Name lookups use the active version: point the shredded scope at its oldest one.
        conn.execute(
            "UPDATE scopes SET active_version = 1, state = 'ACTIVE' WHERE path = ?", (SHRED,)
        )
    finally:
        conn.close()
    return f"sqlite:///{db}"


def _hybrid_reads(url: str, kms: kc.LocalKMS, names: list[str]) -> dict[str, bytes] | None:
    with kc.Vault.open(url, kms=kms) as attacker:
        try:
            return attacker.scope(SHRED).get_many(names)
        except kc.KeyCustodyError:
            return None


def test_a_backup_combined_with_the_live_database_reads_nothing_after_phase_2(
    vault: kc.Vault, kms: kc.LocalKMS, db_path: Path, tmp_path: Path, data: Data
) -> None:
    """Phase 2 must leave no path from the shredded keys to a live KEK version, even for
    someone holding a pre-shred backup, the live database and the KMS."""
    backup = copy_database(db_path, tmp_path / "backup")
    names = list(data[SHRED])
    vault.shred(SHRED, reason="GDPR #16")
    # Positive control: before phase 2 the combination reads everything.
    assert _hybrid_reads(hybrid(backup, db_path, tmp_path / "h1"), kms, names) == data[SHRED]
    vault.complete_erasures()
    assert _hybrid_reads(hybrid(backup, db_path, tmp_path / "h2"), kms, names) is None


def test_phase_2_with_a_compromised_ancestor_version_reads_nothing_either(
    vault: kc.Vault, kms: kc.LocalKMS, db_path: Path, tmp_path: Path, data: Data
) -> None:
    vault.scope("acme").mark_compromised(reason="key seen in a crash dump")  # cascades down
    backup = copy_database(db_path, tmp_path / "backup")
    names = list(data[SHRED])
    vault.shred(SHRED, reason="GDPR #17")
    # Blocked, not falsely confirmed, while a compromised ancestor version survives ...
    with pytest.raises(kc.InvalidInputError, match="blocked"):
        vault.complete_erasures()
    assert [c.phase2_status for c in vault.certificates()] == ["pending"]
    # ... and confirmed, with nothing readable from the backup, once it is re-encrypted away.
    vault.scope("acme").reencrypt()
    (certificate,) = vault.complete_erasures()
    assert certificate.phase2_status == "confirmed"
    assert _hybrid_reads(hybrid(backup, db_path, tmp_path / "h"), kms, names) is None


# -- T9: no plaintext key ever touches storage ------------------------------------------


@pytest.mark.slow
def test_no_plaintext_key_ever_touches_storage(
    db_url: str, db_path: Path, kms: kc.LocalKMS
) -> None:
    """TESTPLAN T9 through a whole workload: 10,000 writes, a rotation (rotate_key, rewrap,
    rotate_kek) and a shred. At every checkpoint, every plaintext key seen so far (scope key
    versions, the audit key, the LocalKMS KEK files) is absent from every file of the database
    folder (.db, -wal, -shm, -journal, temp files, an audit export), whole and in 16-byte
    pieces.

    Per-record DEKs are generated, used and wiped inside the Rust core and never reach Python,
    so this test cannot collect them; they are covered by the Rust core's own tests and by the
    record format (only the wrapped DEK is stored).
    """
    keys: set[bytes] = set()
    folder = db_path.parent

    def check(vault: kc.Vault, step: str) -> None:
        keys.update(plaintext_keys(vault, kms.path))
        found = hits(folder_files(folder), chunks(keys))
        assert found == [], f"plaintext key bytes stored after {step}: {found[:3]}"

    with kc.Vault.open(db_url, kms=kms) as vault:
        acme = vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
        api = vault.scope("acme/repos/api", create=True)
        alice = vault.scope(SHRED, create=True)
        globex = vault.scope("globex", create=True)  # the default KEK
        scopes = [acme, api, alice, globex]
        for i in range(4):
            for j, scope in enumerate(scopes):
                scope.put_many(payloads(scope.path, 625, seed=i, size=300).items())
                scope.put(f"single-{i}-{j}", os.urandom(100))
        alice.put_stream("big.bin", io.BytesIO(os.urandom(2**20 + 17)))
        check(vault, "the writes")
        # six scope keys (acme, acme/repos, acme/repos/api, acme/subjects, alice, globex),
        # three KEK files (acme-kek, default, keycustody-audit) and the audit key
        assert len(keys) == 10

        acme.rotate_key()
        alice.rotate_key()
        acme.put_many(payloads("acme", 200, seed=9).items())
        check(vault, "rotate_key")
        acme.rewrap()
        alice.rewrap()
        check(vault, "rewrap")
        vault.rotate_kek("acme", kms.create_key("acme-kek-2"))
        check(vault, "rotate_kek")

        vault.shred(SHRED, reason="T9 workload")
        check(vault, "the shred")
        vault.audit.export(folder / "audit.jsonl")
        check(vault, "the audit export")
        total = sum(len(s.list()) for s in (acme, api, globex))
        assert total >= 3 * 2500 + 200  # 4 x 4 x 625 = 10,000 put_many writes and 16 puts
    found = hits(folder_files(folder), chunks(keys))
    assert found == [], "plaintext key bytes stored after close (final checkpoint)"
    assert len(keys) >= 10 + 3  # + acme v2, alice v2, acme-kek-2


# -- cost: independent of the number of records -----------------------------------------


def _shred_statements(root: Path, records: int) -> list[tuple[str, int]]:
    """Shreds a scope holding ``records`` records; returns (verb + table, rows modified) of
    every SQL statement the shred ran."""
    (root / "db").mkdir(parents=True)
    kms = kc.LocalKMS(root / "keys")
    with kc.Vault.open(f"sqlite:///{root}/db/ctx.db", kms=kms, revalidate_s=0) as vault:
        vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
        vault.scope("acme/subjects/bob", create=True).put_many(payloads("bob", 100).items())
        alice = vault.scope(SHRED, create=True)
        alice.put_many((f"r{i}", b"x" * 64) for i in range(records))
        vault.scope(f"{SHRED}/chats", create=True).put_many(
            (f"c{i}", b"y" * 32) for i in range(records // 10)
        )
        statements: list[str] = []
        modified: list[tuple[str, int]] = []

        def before(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
            statements.append(statement)

        def after(_c: Any, cursor: Any, statement: str, *_: Any) -> None:
            words = statement.split()
            verb = words[0].upper()
            table = ""
            if verb in ("INSERT", "UPDATE", "DELETE"):
                table = words[2] if verb != "UPDATE" else words[1]
            modified.append((f"{verb} {table}".strip(), max(cursor.rowcount, 0)))

        event.listen(vault._engine, "before_cursor_execute", before)
        event.listen(vault._engine, "after_cursor_execute", after)
        try:
            certificate = vault.shred(SHRED, reason="cost test")
        finally:
            event.remove(vault._engine, "before_cursor_execute", before)
            event.remove(vault._engine, "after_cursor_execute", after)
        assert certificate.records_unreadable == records + records // 10
    assert len(statements) == len(modified)
    return modified


@pytest.mark.slow
def test_shred_cost_does_not_depend_on_the_number_of_records(tmp_path: Path) -> None:
    small = _shred_statements(tmp_path / "small", 1_000)
    large = _shred_statements(tmp_path / "large", 20_000)
    assert len(small) == len(large)
    assert sum(n for _, n in small) == sum(n for _, n in large)
    assert small == large
    # No statement writes to the record tables: records are counted, not touched.
    touched = {what for what, n in large if n and what.split()[-1] in ("records", "segments")}
    assert touched == set()
    assert sum(n for _, n in large) < 20  # O(keys): two key versions, two scopes, evidence


def test_shred_memory_does_not_grow_with_the_database(
    vault: kc.Vault, kms: kc.LocalKMS, db_path: Path
) -> None:
    acme = vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
    for i in range(4):
        acme.put_many((f"big/{i}/{j}", os.urandom(100_000)) for j in range(100))
    vault.scope(SHRED, create=True).put("one", b"x")
    assert sum(p.stat().st_size for p in folder_files(db_path.parent)) > 40_000_000
    tracemalloc.start()
    try:
        vault.shred(SHRED, reason="memory test")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"shred allocated {peak / 2**20:.0f} MiB"


# -- idempotence, concurrency and crash safety ------------------------------------------


def test_shredding_twice_returns_the_same_certificate(vault: kc.Vault, data: Data) -> None:
    first = vault.shred(SHRED, reason="GDPR #1")
    head = vault.audit.verify().head_seq
    again = vault.shred(SHRED, reason="GDPR #1 (retried)")
    assert again.id == first.id
    assert again.document == first.document
    assert vault.audit.verify().head_seq == head, "a repeated shred must change nothing"
    # A scope inside the erased subtree answers with the certificate that erased it.
    assert vault.shred(f"{SHRED}/chats", reason="again").id == first.id
    assert [c.id for c in vault.certificates()] == [first.id]
    (confirmed,) = vault.complete_erasures()
    assert vault.shred(SHRED, reason="after phase 2").document == confirmed.document
    assert vault.complete_erasures() == []


def test_overlapping_shreds_of_one_scope_return_one_certificate(
    vault: kc.Vault, kms: kc.LocalKMS, db_url: str, data: Data
) -> None:
    with kc.Vault.open(db_url, kms=kms) as other:
        writes = other._write
        first: list[kc.ErasureCertificate] = []

        def write_after_the_other_shred() -> Any:
            # `other` has read the keys; the first shred commits before it writes.
            if not first:
                first.append(vault.shred(SHRED, reason="GDPR #1"))
            return writes()

        other._write = write_after_the_other_shred  # type: ignore[method-assign]
        second = other.shred(SHRED, reason="GDPR #1")
    assert second.id == first[0].id


def _crash_after_phase1(monkeypatch: pytest.MonkeyPatch, vault: kc.Vault) -> None:
    """Runs a shred that dies right after its key-destroying transaction committed."""

    def crash(_vault: kc.Vault) -> dict[str, Any]:
        raise KeyboardInterrupt("simulated crash after the commit")

    with monkeypatch.context() as m:
        m.setattr(shredding, "_scrub", crash)
        with pytest.raises(KeyboardInterrupt):
            vault.shred(SHRED, reason="GDPR #5")


def test_a_rerun_after_a_crash_completes_the_shred(
    vault: kc.Vault,
    kms: kc.LocalKMS,
    db_url: str,
    data: Data,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _crash_after_phase1(monkeypatch, vault)
    assert vault.certificates() == []
    assert all(st == "DESTROYED" and w is None for _, _, st, w in key_rows(db_url, SUBTREE))
    with kc.Vault.open(db_url, kms=kms) as restarted:
        certificate = restarted.shred(SHRED, reason="GDPR #5")
        assert [c.id for c in restarted.certificates()] == [certificate.id]
        assert restarted.verify_certificate(certificate.document)[0]
        assert certificate.document["what"]["records_by_scope"] == {p: COUNTS[p] for p in SUBTREE}
        assert certificate.document["verification"]["sample"]["result"] == "pass"
        with pytest.raises(kc.ShreddedError, match=certificate.id):
            restarted.scope(SHRED).get(next(iter(data[SHRED])))
        assert_reads(restarted, data, SURVIVORS)


def test_the_certificate_after_a_crash_still_lists_every_destroyed_key(
    vault: kc.Vault, db_path: Path, data: Data, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = len(key_rows(db_path, SUBTREE))
    _crash_after_phase1(monkeypatch, vault)
    certificate = vault.shred(SHRED, reason="GDPR #5")
    assert len(certificate.document["what"]["key_versions_destroyed"]) == versions
    # The wrapped values are gone (keeping them would defeat the erasure): the certificate
    # says plainly that the scan could not search instead of reporting a vacuous 0 hits.
    scan = certificate.document["verification"]["forensic_scan"]
    assert (scan["performed"], scan["values_searched"]) == (False, 0)
    assert "interrupted" in scan["why"]


KILL_CHILD = """
import sys, keycustody as kc
db, kms_dir, path = sys.argv[1:4]
vault = kc.Vault.open(db, kms=kc.LocalKMS(kms_dir))
print("START", flush=True)
vault.shred(path, reason="kill -9 test")
print("DONE", flush=True)
"""
KILLS = 10
BRANCHES = 8


def _branch(vault: kc.Vault, root: str) -> dict[str, dict[str, bytes]]:
    """A subtree of 1 + BRANCHES scopes with two key versions each and a few records."""
    out = {}
    for path in [root] + [f"{root}/c{j}" for j in range(BRANCHES)]:
        scope = vault.scope(path, create=True)
        out[path] = payloads(path, 10)
        scope.put_many(out[path].items())
        scope.rotate_key()
    return out


@pytest.mark.slow
def test_kill_9_during_shred_destroys_all_keys_or_none(
    db_url: str, db_path: Path, kms: kc.LocalKMS
) -> None:
    """kill -9 at random moments of a shred in a child process: afterwards every key of the
    subtree is destroyed or none is, the database and audit trail are intact, and a rerun
    completes the shred with one certificate and no trace of the keys in the files."""
    rng = random.Random(26)
    with kc.Vault.open(db_url, kms=kms) as vault:
        data = fill(vault, kms)
        calibration = _branch(vault, "acme/subjects/s-calibrate")
        started = time.perf_counter()
        vault.shred("acme/subjects/s-calibrate", reason="calibration")
        window = 1.5 * (time.perf_counter() - started)
    assert calibration
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 3 * KILLS, "the shred kept finishing before it could be killed"
        root = f"acme/subjects/s{attempts}"
        with kc.Vault.open(db_url, kms=kms) as vault:
            branch = _branch(vault, root)
        rows = key_rows(db_path, branch)
        needles = {w for _, _, _, w in rows if w is not None}
        kills += kill_during(
            KILL_CHILD, db_url, str(kms.path), root, delay=rng.uniform(0.0, window)
        )

        conn = raw_db(db_path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            states = {
                st
                for (st,) in conn.execute(
                    "SELECT state FROM scopes WHERE path = ? OR path LIKE ?", (root, root + "/%")
                )
            }
        finally:
            conn.close()
        destroyed = [w is None for _, _, _, w in key_rows(db_path, branch)]
        assert len(destroyed) == len(rows) == 2 * (1 + BRANCHES)
        assert all(destroyed) or not any(destroyed), "a shred was left half-done"
        assert states == ({"SHREDDED"} if all(destroyed) else {"ACTIVE"})

        with kc.Vault.open(db_url, kms=kms) as vault:  # a restarted process reruns the shred
            assert vault.audit.verify().ok
            certificate = vault.shred(root, reason="kill -9 test")
            assert vault.verify_certificate(certificate.document)[0]
            assert [c.id for c in vault.certificates() if c.document["what"]["scope"] == root] == [
                certificate.id
            ]
            assert set(certificate.document["what"]["subtree"]) == set(branch)
            with pytest.raises(kc.ShreddedError, match=certificate.id):
                vault.scope(f"{root}/c0").get(next(iter(branch[f"{root}/c0"])))
            assert_reads(vault, data, SURVIVORS)
        assert all(w is None for _, _, _, w in key_rows(db_path, branch))
        assert hits(folder_files(db_path.parent), chunks(needles)) == []
    assert kills >= KILLS


# -- what a shredded scope does ----------------------------------------------------------


def test_shredded_records_raise_shredded_error_naming_scope_and_certificate(
    vault: kc.Vault, kms: kc.LocalKMS, db_url: str, data: Data
) -> None:
    alice = vault.scope(SHRED)
    chats = vault.scope(f"{SHRED}/chats")
    blob = alice.seal("kept-outside.txt", b"sealed before the shred")
    name = next(iter(data[SHRED]))
    with kc.Vault.open(db_url, kms=kms, revalidate_s=0) as other:  # another process, warm
        other_alice = other.scope(SHRED)
        assert other_alice.get(name) == data[SHRED][name]

        certificate = vault.shred(SHRED, reason="GDPR #9")

        def refused(call: Any, where: str = SHRED) -> None:
            with pytest.raises(kc.ShreddedError) as caught:
                call()
            assert where in str(caught.value)
            assert certificate.id in str(caught.value)

        refused(lambda: alice.get(name))
        refused(lambda: alice.get_many(list(data[SHRED])))
        refused(lambda: alice.list())
        refused(lambda: alice.open("kept-outside.txt", blob))
        refused(lambda: alice.put("new.txt", b"new"))
        refused(lambda: alice.put_many([("a", b"1"), ("b", b"2")]))
        refused(lambda: alice.seal("x", b"x"))
        refused(lambda: alice.delete(name))
        refused(lambda: alice.put_stream("s", io.BytesIO(b"s" * 1000)))
        refused(lambda: alice.rotate_key())
        # The subtree is shredded with it.
        chat = next(iter(data[f"{SHRED}/chats"]))
        refused(lambda: chats.get(chat), f"{SHRED}/chats")
        refused(lambda: chats.put("c", b"c"), f"{SHRED}/chats")
        refused(lambda: vault.scope(f"{SHRED}/chats").list(), f"{SHRED}/chats")
        # No new scope can be hung below it.
        refused(lambda: vault.scope(f"{SHRED}/new", create=True))
        refused(lambda: vault.scope(f"{SHRED}/chats/deeper", create=True), f"{SHRED}/chats")
        # Another process with the key cached stops at once (epoch bump, revalidate_s=0).
        refused(lambda: other_alice.get(name))
    assert set(subtree_paths(vault, SHRED)) == set(SUBTREE)
    with kc.Vault.open(db_url, kms=kms) as fresh:
        with pytest.raises(kc.ShreddedError, match=certificate.id):
            fresh.scope(f"{SHRED}/chats").get(chat)
        assert_reads(fresh, data, SURVIVORS)
    assert_reads(vault, data, SURVIVORS)


def test_shred_needs_no_kms(vault: kc.Vault, kms: kc.LocalKMS, data: Data) -> None:
    """Phase 1 destroys keys in the database only: a disabled KEK does not stop it."""
    kms.disable_key("local:acme-kek")
    certificate = vault.shred(SHRED, reason="GDPR #10")
    assert certificate.records_unreadable == COUNTS[SHRED] + COUNTS[f"{SHRED}/chats"]
    with pytest.raises(kc.ShreddedError):
        vault.scope(SHRED).get(next(iter(data[SHRED])))
    kms.enable_key("local:acme-kek")
    assert_reads(vault, data, SURVIVORS)


def test_bad_requests_change_nothing(vault: kc.Vault, db_url: str, data: Data) -> None:
    before = key_rows(db_url, vault.scopes())
    for reason in ("", "   "):
        with pytest.raises(kc.InvalidInputError, match="reason"):
            vault.shred(SHRED, reason=reason)
    with pytest.raises(kc.NotFoundError):
        vault.shred("acme/subjects/nobody", reason="GDPR #11")
    assert key_rows(db_url, vault.scopes()) == before
    assert vault.certificates() == []
    assert_reads(vault, data, COUNTS)


def test_destroy_kek_for_a_child_scope_is_refused_before_anything_changes(
    vault: kc.Vault, data: Data
) -> None:
    with pytest.raises(kc.ConfigError, match="tenant"):
        vault.shred(SHRED, reason="GDPR #12", destroy_kek=True)
    assert_reads(vault, data, COUNTS)


# -- tenants and their KEKs --------------------------------------------------------------


@pytest.fixture
def tenants(vault: kc.Vault, kms: kc.LocalKMS) -> Data:
    """Five tenants: a and b with KEKs of their own, c, d and e sharing one KEK."""
    shared = kms.create_key("shared-kek")
    data: Data = {}
    for name in "abcde":
        kek = kms.create_key(f"{name}-kek") if name in "ab" else shared
        vault.scope(name, kek=kek, create=True)
        for path in (name, f"{name}/repos/api", f"{name}/subjects/x"):
            data[path] = payloads(path, 15)
            vault.scope(path, create=True).put_many(data[path].items())
    return data


def _assert_tenant_gone(vault: kc.Vault, data: Data, tenant: str, certificate_id: str) -> None:
    for path in data:
        if path.split("/")[0] == tenant:
            with pytest.raises(kc.ShreddedError, match=certificate_id):
                vault.scope(path).get_many(list(data[path]))


def test_tenant_shred_with_its_own_kek_destroys_the_kek(
    vault: kc.Vault, kms: kc.LocalKMS, db_url: str, tenants: Data
) -> None:
    """TESTPLAN T25: shredding tenant a of a-e leaves 100% of b-e readable."""
    certificate = vault.shred("a", reason="offboarding a", destroy_kek=True)
    assert kms.describe_key("local:a-kek")["state"] == "destroyed"
    assert not list((kms.path / "a-kek").glob("*.key"))
    kek = certificate.document["how"]["kek_destruction"]
    assert kek["kek"] == "local:a-kek"
    assert kek["destroyed"] is True
    assert certificate.phase2_status == "confirmed"
    subtree = certificate.document["what"]["subtree"]
    assert subtree[0] == "a"
    assert set(subtree) == {"a", "a/repos", "a/subjects", "a/repos/api", "a/subjects/x"}
    assert certificate.records_unreadable == 45
    assert vault.verify_certificate(certificate.document)[0]
    _assert_tenant_gone(vault, tenants, "a", certificate.id)
    assert_reads(vault, tenants, [p for p in tenants if not p.startswith("a")])
    assert kms.describe_key("local:shared-kek")["state"] == "enabled"
    assert vault.complete_erasures() == []  # nothing left to do: the KEK itself is gone
    with kc.Vault.open(db_url, kms=kms) as fresh:
        assert fresh.audit.verify().ok
        _assert_tenant_gone(fresh, tenants, "a", certificate.id)
        assert_reads(fresh, tenants, [p for p in tenants if not p.startswith("a")])


def test_destroy_kek_is_refused_when_another_tenant_shares_it(
    vault: kc.Vault, kms: kc.LocalKMS, db_path: Path, tmp_path: Path, tenants: Data
) -> None:
    backup = copy_database(db_path, tmp_path / "backup")
    certificate = vault.shred("c", reason="offboarding c", destroy_kek=True)
    kek = certificate.document["how"]["kek_destruction"]
    assert kek["destroyed"] is False
    assert "shared with 2 other tenant(s)" in kek["why"]
    assert kms.describe_key("local:shared-kek")["state"] == "enabled"
    assert certificate.phase2_status == "pending"
    _assert_tenant_gone(vault, tenants, "c", certificate.id)
    others = [p for p in tenants if not p.startswith("c")]
    assert_reads(vault, tenants, others)

    # Phase 2 gives the shared KEK a new version, moves d and e to it, destroys the old one.
    (updated,) = vault.complete_erasures()
    assert updated.phase2_status == "confirmed"
    described = kms.describe_key("local:shared-kek")
    assert described["state"] == "enabled"
    assert described["versions"]["1"]["state"] == "destroyed"
    assert_reads(vault, tenants, others)
    with kc.Vault.open(restore(backup, tmp_path / "r"), kms=kms) as old:
        for path in [p for p in tenants if p.startswith("c")]:
            with pytest.raises(kc.ShreddedError, match="destroyed"):
                old.scope(path).get_many(list(tenants[path]))


def test_destroy_kek_never_destroys_the_audit_kek(vault: kc.Vault, kms: kc.LocalKMS) -> None:
    tenant = vault.scope("solo", kek=vault.audit_kek, create=True)
    tenant.put("a", b"a")
    certificate = vault.shred("solo", reason="offboarding solo", destroy_kek=True)
    kek = certificate.document["how"]["kek_destruction"]
    assert kek["destroyed"] is False
    assert "audit" in kek["why"]
    assert kms.describe_key(vault.audit_kek)["state"] == "enabled"
    assert vault.audit.verify().ok
    assert vault.verify_certificate(certificate.document)[0]


def test_phase_2_after_the_tenant_kek_was_destroyed(
    vault: kc.Vault, kms: kc.LocalKMS, data: Data
) -> None:
    child = vault.shred(SHRED, reason="GDPR #13")
    vault.shred("acme", reason="offboarding acme", destroy_kek=True)
    done = {c.id: c for c in vault.complete_erasures()}
    assert done[child.id].phase2_status == "confirmed"
    assert all(c.phase2_status == "confirmed" for c in vault.certificates())


# -- purge -------------------------------------------------------------------------------


def _count(db_path: Path | str, sql: str, *args: object) -> int:
    conn = raw_db(db_path)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


def _records_of(db_path: Path | str, path: str) -> int:
    return _count(
        db_path,
        "SELECT count(*) FROM records r JOIN scopes s ON s.id = r.scope_id WHERE s.path = ?",
        path,
    )


def _segments_of(db_path: Path | str, path: str) -> int:
    return _count(
        db_path,
        "SELECT count(*) FROM segments g JOIN records r ON r.record_id = g.record_id "
        "JOIN scopes s ON s.id = r.scope_id WHERE s.path = ?",
        path,
    )


def test_purge_removes_only_the_shredded_records_and_their_segments(
    vault: kc.Vault, db_url: str, data: Data
) -> None:
    big = os.urandom(5 * 2**20 + 123)
    vault.scope(SHRED).put_stream("video.bin", io.BytesIO(big))
    vault.scope("acme/subjects/bob").put_stream("video.bin", io.BytesIO(big))
    assert _segments_of(db_url, SHRED) > 1
    bob_segments = _segments_of(db_url, "acme/subjects/bob")
    assert vault.purge() == 0, "nothing is shredded yet"
    certificate = vault.shred(SHRED, reason="GDPR #14")
    before = {p: _records_of(db_url, p) for p in SURVIVORS}
    head = vault.audit.verify().head_seq

    calls: list[tuple[int, int]] = []
    purged = vault.purge(progress=lambda done, total: calls.append((done, total)))

    assert purged == COUNTS[SHRED] + 1 + COUNTS[f"{SHRED}/chats"]
    assert calls == [(0, purged), (purged, purged)]  # counted first, then one batch
    assert all(_records_of(db_url, p) == 0 for p in SUBTREE)
    assert _segments_of(db_url, SHRED) == 0
    assert (
        _count(
            db_url,
            "SELECT count(*) FROM segments WHERE record_id NOT IN (SELECT record_id FROM records)",
        )
        == 0
    )
    assert {p: _records_of(db_url, p) for p in SURVIVORS} == before
    assert _segments_of(db_url, "acme/subjects/bob") == bob_segments
    assert_reads(vault, data, SURVIVORS)
    bob_video = vault.scope("acme/subjects/bob").open_stream("video.bin")
    assert bob_video.read() == big
    events = list(vault.audit.events(since=head))
    assert [(e.action, e.outcome) for e in events] == [("records.purge", "ok")]
    assert events[0].details_dict()["records"] == purged
    # Still shredded (not merely missing), and the evidence still holds.
    with pytest.raises(kc.ShreddedError, match=certificate.id):
        vault.scope(SHRED).get(next(iter(data[SHRED])))
    assert vault.verify_certificate(certificate.document)[0]
    assert vault.purge() == 0


def test_certificate_json_round_trip(vault: kc.Vault, tmp_path: Path, data: Data) -> None:
    certificate = vault.shred(SHRED, reason="GDPR #15")
    path = tmp_path / "cert.json"
    certificate.save(path)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document == json.loads(certificate.to_json())
    assert vault.verify_certificate(document)[0]


@contextlib.contextmanager
def before_next_write(vault: kc.Vault, change: Callable[[], object]) -> Iterator[None]:
    """Makes ``change`` (another process's, say) right before ``vault``'s next write
    transaction, once: between a job's read and its write."""
    writes = vault._write
    done: list[object] = []

    def change_then_write() -> Any:
        if not done:
            done.append(change())
        return writes()

    vault._write = change_then_write  # type: ignore[method-assign]
    try:
        yield
    finally:
        del vault._write


def test_a_key_version_made_during_a_shred_stops_it_unchanged(
    vault: kc.Vault, kms: kc.LocalKMS, db_url: str, data: Data
) -> None:
    """A rotation in the subtree that commits between the shred's read and its write: the
    shred writes nothing (its certificate would miss the new version) and a rerun lists it."""
    chats = f"{SHRED}/chats"
    before = key_rows(db_url, SUBTREE)
    with kc.Vault.open(db_url, kms=kms) as other:
        rotate = other.scope(chats).rotate_key
        refused = pytest.raises(kc.ConcurrentRotationError, match="key version was created")
        with before_next_write(vault, rotate), refused:
            vault.shred(SHRED, reason="GDPR #20")
    after = key_rows(db_url, SUBTREE)
    assert [r for r in after if r[0] != chats] == [r for r in before if r[0] != chats]
    assert {(p, v, st) for p, v, st, _ in after if p == chats} == {
        (chats, 1, "DEACTIVATED"),
        (chats, 2, "ACTIVE"),
    }
    assert_reads(vault, data, SUBTREE)
    certificate = vault.shred(SHRED, reason="GDPR #20")
    destroyed = certificate.document["what"]["key_versions_destroyed"]
    assert {(k["scope"], k["version"]) for k in destroyed} >= {(chats, 1), (chats, 2)}
    assert all(st == "DESTROYED" and w is None for _, _, st, w in key_rows(db_url, SUBTREE))


def test_a_rotation_racing_a_shred_makes_no_live_key(
    vault: kc.Vault, kms: kc.LocalKMS, db_url: str, data: Data
) -> None:
    """A shred that commits between a rotation's read and its write: the rotation fails and
    leaves no ACTIVE key version in the shredded scope."""
    with kc.Vault.open(db_url, kms=kms) as other:
        target = other.scope(SHRED)
        shred = functools.partial(vault.shred, SHRED, reason="GDPR #21")
        refused = pytest.raises(kc.ConcurrentRotationError, match="shredded concurrently")
        with before_next_write(other, shred), refused:
            target.rotate_key()
    assert all(st == "DESTROYED" and w is None for _, _, st, w in key_rows(db_url, SUBTREE))


def test_a_scope_made_in_the_subtree_during_a_shred_stops_it_unchanged(
    vault: kc.Vault, kms: kc.LocalKMS, db_url: str, data: Data
) -> None:
    """A child scope created between the shred's read and its write would be left ACTIVE and
    out of the certificate: the shred writes nothing, and a rerun shreds and lists it."""
    late = f"{SHRED}/late"
    before = key_rows(db_url, SUBTREE)
    with kc.Vault.open(db_url, kms=kms) as other:
        create = functools.partial(other.scope, late, create=True)
        refused = pytest.raises(kc.ConcurrentRotationError, match="scope was created")
        with before_next_write(vault, create), refused:
            vault.shred(SHRED, reason="GDPR #22")
    assert key_rows(db_url, SUBTREE) == before
    assert vault.scope(late).list() == []
    certificate = vault.shred(SHRED, reason="GDPR #22")
    assert certificate.document["what"]["records_by_scope"][late] == 0
    assert {p for p, _, st, _ in key_rows(db_url, [late]) if st == "DESTROYED"} == {late}


def test_purge_reports_progress_batch_by_batch(vault: kc.Vault, data: Data) -> None:
    vault.shred(SHRED, reason="GDPR #23")
    expected = COUNTS[SHRED] + COUNTS[f"{SHRED}/chats"]
    calls: list[tuple[int, int]] = []
    purged = shredding.purge(
        vault, batch_size=25, progress=lambda done, total: calls.append((done, total))
    )
    assert purged == expected
    assert calls == [(0, 90), (25, 90), (50, 90), (75, 90), (90, 90)] and expected == 90
