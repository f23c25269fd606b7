"""PostgreSQL: engine settings, concurrent record writers, shared rewrap jobs, and what a shred
leaves in the server's files (TESTPLAN T27).

Everything here runs against the real PostgreSQL server named by ``KEYCUSTODY_PG_URL`` (started
by ``.ci/postgres-setup.sh``); the file scans also need its data directory,
``KEYCUSTODY_PG_DIR``, which exists when the server runs on this machine as in CI.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

import keycustody as kc
from forensics import hits
from keycustody.keys.hierarchy import load_scope
from keycustody.keys.rotation import JobReport
from keycustody.storage.models import ScopeKeyRow


def test_concurrent_writers_of_one_name_replace_not_fail(pg_url: str, kms: kc.LocalKMS) -> None:
    """Record writers run side by side on PostgreSQL (shared write lock). Eight threads
    writing the same names must each succeed, and every name ends with one whole record."""
    with kc.Vault.open(pg_url, kms=kms) as vault:
        acme = vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def writer(n: int) -> None:
            try:
                barrier.wait()
                for round_ in range(10):
                    acme.put_many((f"shared-{i}", f"{n}:{round_}:{i}".encode()) for i in range(50))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(acme.list()) == 50
        for i, data in acme.get_many([f"shared-{i}" for i in range(50)]).items():
            writer_id, round_, index = data.decode().split(":")
            assert f"shared-{index}" == i
            assert int(writer_id) in range(8)
            assert round_ == "9" or int(round_) in range(10)
        assert vault.audit.verify().ok


def test_rewrap_job_shared_by_workers(db_url: str, kms: kc.LocalKMS) -> None:
    """Three workers run the same rewrap job at once: each record is claimed by exactly one
    (FOR UPDATE SKIP LOCKED on PostgreSQL; one writer at a time on SQLite), so the counts add
    up to the number of records and the old version is destroyed once."""
    with kc.Vault.open(db_url, kms=kms) as vault:
        acme = vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
        acme.put_many((f"r{i}", os.urandom(64)) for i in range(6000))
        acme.rotate_key()
    reports: list[JobReport] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with kc.Vault.open(db_url, kms=kms) as v:
                reports.append(v.scope("acme").rewrap(batch_size=200))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.records_done for r in reports) == 6000
    with kc.Vault.open(db_url, kms=kms) as vault:
        acme = vault.scope("acme")
        versions = acme.keys()
        assert {k.version: k.state for k in versions} == {1: "DESTROYED", 2: "ACTIVE"}
        assert len(acme.get_many([f"r{i}" for i in range(0, 6000, 97)])) == len(range(0, 6000, 97))
        assert vault.audit.verify().ok


def _relation_file(pg_url: str, table: str) -> Path:
    data = Path(os.environ["KEYCUSTODY_PG_DIR"]) / "data"
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        conn.execute(text("CHECKPOINT"))  # flush dirty pages, so the files hold what we scan
        relative = conn.execute(text("SELECT pg_relation_filepath(:t)"), {"t": table}).scalar()
    engine.dispose()
    return data / str(relative)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.skipif(
    "KEYCUSTODY_PG_DIR" not in os.environ, reason="the PostgreSQL data directory is not here"
)
def test_shred_on_postgres_leaves_no_plaintext_key_and_vacuums_the_key_table(
    pg_url: str, kms: kc.LocalKMS
) -> None:
    """TESTPLAN T27 against the server's own files. After a shred (VACUUM FULL of the key table
    in the scrub): every record of the scope refuses with ShreddedError; no plaintext scope key
    (whole or 16-byte halves) appears anywhere in the data directory, heap or WAL; the key
    table's new heap file holds none of the destroyed wrapped keys. Wrapped keys left in
    ``pg_wal`` are reported, not required to be absent (phase 2 handles them)."""
    data = Path(os.environ["KEYCUSTODY_PG_DIR"]) / "data"
    with kc.Vault.open(pg_url, kms=kms) as vault:
        vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
        alice = vault.scope("acme/subjects/alice", create=True)
        alice.put_many((f"a{i}", os.urandom(200)) for i in range(500))
        alice.rotate_key()
        alice.put_many((f"b{i}", os.urandom(200)) for i in range(500))
        bob = vault.scope("acme/subjects/bob", create=True)
        bob.put_many((f"b{i}", os.urandom(200)) for i in range(100))
        plaintext: set[bytes] = set()
        wrapped: list[bytes] = []
        with vault._read() as s:
            for path in vault.scopes():
                ref = load_scope(s, path)
                for row in s.scalars(select(ScopeKeyRow).where(ScopeKeyRow.scope_id == ref.id)):
                    secret = vault._keys.key(s, ref, row.version).export_secret()
                    plaintext.add(bytes(secret))
                    secret[:] = bytes(len(secret))
                    if path.endswith("alice") and row.wrapped is not None:
                        wrapped.append(row.wrapped)
        assert len(wrapped) == 2
        heap_before = _relation_file(pg_url, "scope_keys")
        assert hits([heap_before], wrapped) != []  # the scan would see them

        certificate = vault.shred("acme/subjects/alice", reason="T27")
        scrub = certificate.document["how"]["storage_scrub"]
        assert scrub["backend"] == "postgresql"
        assert scrub["performed"] is True
        assert "WAL" in scrub["wal"]
        with pytest.raises(kc.ShreddedError):
            vault.scope("acme/subjects/alice").get("a1")
        assert len(vault.scope("acme/subjects/bob").list()) == 100

        heap_after = _relation_file(pg_url, "scope_keys")
        assert heap_after != heap_before  # VACUUM FULL wrote a new file
        assert not heap_before.exists()  # and unlinked the old one
        assert hits([heap_after], wrapped) == []
        everything = _files(data)
        assert hits(everything, plaintext) == []
        in_wal = hits(_files(data / "pg_wal"), wrapped)
        print(f"T27: destroyed wrapped keys still in pg_wal segments: {len(in_wal)}")


def test_a_failed_open_leaves_no_connection_behind(pg_url: str, kms: kc.LocalKMS) -> None:
    """Vault.open migrates, then fails on a bad setting or an unavailable audit key: the
    connections it opened are closed (they used to stay in the pool until garbage
    collection, where psycopg warns, failing whichever test runs then)."""
    audit = kms.create_key("audit")
    kms.disable_key(audit)
    with pytest.raises(kc.ConfigError):
        kc.Vault.open(pg_url, kms=kms, rotation_period=timedelta(0))
    with pytest.raises(kc.AuditError):
        kc.Vault.open(pg_url, kms=kms, audit_kek=audit)

    name = make_url(pg_url).database
    server = create_engine(make_url(pg_url).set(database="postgres"))
    with server.connect() as conn:
        sessions = conn.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"), {"name": name}
        )
    server.dispose()
    assert sessions == 0
