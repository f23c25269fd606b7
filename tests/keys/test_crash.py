"""kill -9 in the middle of rotate_kek, rewrap and reencrypt loses nothing (TESTPLAN T19).

Each job runs in a child process that is SIGKILLed at a random moment after it has started.
Afterwards every record still reads byte for byte with exactly one key path, the database
passes ``PRAGMA integrity_check``, and rerunning the job finishes it.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

import keycustody as kc
from kill9 import kill_during

RECORDS = 10_000
KILLS = 10
CHILD = """
import sys, keycustody as kc
db, kms_dir, job, arg = sys.argv[1:5]
vault = kc.Vault.open(db, kms=kc.LocalKMS(kms_dir))
scope = vault.scope("acme")
print("START", flush=True)
if job == "rewrap":
    scope.rewrap(batch_size=250)
elif job == "reencrypt":
    scope.reencrypt(batch_size=250)
elif job == "rotate_kek":
    vault.rotate_kek("acme", arg)
print("DONE", flush=True)
"""

pytestmark = pytest.mark.slow


def _payloads() -> dict[str, bytes]:
    rng = random.Random(19)
    return {
        f"src/{i // 100}/f{i}.py": rng.randbytes(rng.randrange(0, 200)) for i in range(RECORDS)
    }


def _check_database(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Exactly one key path: every record names a version of its scope that still has key
        # material, and no record is duplicated under one name.
        orphans = conn.execute(
            "SELECT count(*) FROM records r LEFT JOIN scope_keys k "
            "ON k.scope_id = r.scope_id AND k.version = r.key_version "
            "WHERE k.wrapped IS NULL"
        ).fetchone()[0]
        assert orphans == 0
        assert (
            conn.execute(
                "SELECT count(*) FROM (SELECT scope_id, name_index FROM records "
                "GROUP BY 1, 2 HAVING count(*) > 1)"
            ).fetchone()[0]
            == 0
        )
    finally:
        conn.close()


def _verify(db_url: str, kms: kc.LocalKMS, expected: dict[str, bytes]) -> None:
    with kc.Vault.open(db_url, kms=kms) as fresh:  # cold cache: every key path is exercised
        assert fresh.scope("acme").get_many(list(expected)) == expected


@pytest.fixture
def filled(db_url: str, kms: kc.LocalKMS) -> dict[str, bytes]:
    expected = _payloads()
    with kc.Vault.open(db_url, kms=kms) as vault:
        vault.scope("acme", kek=kms.create_key("kek-a"), create=True).put_many(expected.items())
    kms.create_key("kek-b")
    return expected


@pytest.mark.parametrize("job", ["rewrap", "reencrypt", "rotate_kek"])
def test_kill_9_mid_job_loses_nothing(
    job: str, db_url: str, db_path: Path, kms: kc.LocalKMS, filled: dict[str, bytes]
) -> None:
    rng = random.Random(job)
    kills = attempts = 0
    target = "local:kek-b"
    # Kill within the job's typical run time here (rotate_kek is O(key versions): give it 30).
    window = {"rewrap": 0.5, "reencrypt": 0.8, "rotate_kek": 0.04}[job]
    if job == "rotate_kek":
        with kc.Vault.open(db_url, kms=kms) as vault:
            for _ in range(30):
                vault.scope("acme").rotate_key()
    while kills < KILLS:
        attempts += 1
        assert attempts <= 4 * KILLS, "the job kept finishing before it could be killed"
        with kc.Vault.open(db_url, kms=kms) as vault:
            scope = vault.scope("acme")
            if job == "rewrap":
                scope.rotate_key()  # leaves every record on an older version to move
            elif job == "reencrypt":
                versions = scope.keys()
                if not any(k.state == "COMPROMISED" for k in versions):
                    scope.mark_compromised(reason="test: key leaked")
        if job == "rotate_kek":
            target = "local:kek-b" if target == "local:kek-a" else "local:kek-a"
        kills += kill_during(
            CHILD, db_url, str(kms.path), job, target, delay=rng.uniform(0.0, window)
        )
        _check_database(db_path)
        if job == "reencrypt":
            # Records still under the compromised version refuse to decrypt by design until
            # the job is finished: the rerun below must complete it.
            with kc.Vault.open(db_url, kms=kms) as vault:
                vault.scope("acme").reencrypt()
        _verify(db_url, kms, filled)
    # A rerun finishes the job and leaves one ACTIVE version and nothing half-done.
    with kc.Vault.open(db_url, kms=kms) as vault:
        scope = vault.scope("acme")
        if job == "rewrap":
            scope.rewrap()
        elif job == "reencrypt":
            scope.reencrypt()
        else:
            vault.rotate_kek("acme", target)
        versions = scope.keys()
        states = [k.state for k in versions]
        assert states.count("ACTIVE") == 1
        if job != "rotate_kek":
            assert set(states) <= {"ACTIVE", "DESTROYED"}
            assert [k.records for k in versions if k.state == "ACTIVE"] == [RECORDS]
        else:
            live = {k.wrapped_by.split("#")[0] for k in versions if k.state != "DESTROYED"}
            assert live == {f"kek:{target}"}
    _check_database(db_path)
    _verify(db_url, kms, filled)
