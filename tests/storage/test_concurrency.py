"""Four processes doing mixed put/get/rotate/rewrap/shred on one database keep every invariant.

Workers (concurrency_worker.py) run for ``KEYCUSTODY_CONCURRENCY_SECONDS`` (default 30 s on
PostgreSQL, 10 s on SQLite) and log what the vault acknowledged. Afterwards: every
acknowledged write reads back byte for byte, every record of a shredded scope raises
ShreddedError, every scope has exactly one ACTIVE key version (shredded ones none but
DESTROYED), and the audit chain verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import func, select

import keycustody as kc
from keycustody.keys.hierarchy import load_scope
from keycustody.storage.models import ScopeKeyRow

WORKER = Path(__file__).with_name("concurrency_worker.py")
WORKERS = 4


@pytest.mark.slow
def test_four_processes_keep_every_invariant(
    backend: str, db_url: str, kms: kc.LocalKMS, tmp_path: Path
) -> None:
    seconds = float(
        os.environ.get("KEYCUSTODY_CONCURRENCY_SECONDS", "30" if backend == "postgresql" else "10")
    )
    with kc.Vault.open(db_url, kms=kms) as vault:
        for tenant in ("t0", "t1", "t2"):
            vault.scope(tenant, kek=kms.create_key(f"{tenant}-kek"), create=True)
            vault.scope(f"{tenant}/shared", create=True).put("seed", b"seed")
    logs = [tmp_path / f"worker{n}.jsonl" for n in range(WORKERS)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), db_url, str(kms.path), str(n), str(seconds), str(log)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, log in enumerate(logs)
    ]
    failures = []
    for n, proc in enumerate(procs):
        _, stderr = proc.communicate(timeout=seconds + 300)
        if proc.returncode != 0:
            failures.append(f"worker {n} exited {proc.returncode}:\n{stderr[-3000:]}")
    assert failures == [], "\n".join(failures)

    puts: dict[str, dict[str, str]] = defaultdict(dict)
    shreds: dict[str, list[str]] = {}
    kinds: dict[str, int] = defaultdict(int)
    for log in logs:
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert lines[-1]["kind"] == "done", f"{log.name} did not finish"
        for entry in lines:
            kinds[entry["kind"]] += 1
            if entry["kind"] == "put":
                puts[entry["scope"]][entry["name"]] = entry["sha256"]
            elif entry["kind"] == "shred":
                shreds[entry["scope"]] = entry["names"]
    assert kinds["error"] == 0
    # The mix really happened, concurrently, in every worker.
    for kind in ("put", "get", "rewrap", "shred"):
        assert kinds[kind] >= WORKERS, f"too few {kind} operations: {dict(kinds)}"
    assert kinds["rotate"] + kinds["rotate_lost_race"] >= WORKERS

    with kc.Vault.open(db_url, kms=kms) as vault:
        # No lost writes: every acknowledged record reads back as written.
        for path, records in puts.items():
            got = vault.scope(path).get_many(list(records))
            for name, digest in records.items():
                assert hashlib.sha256(got[name]).hexdigest() == digest, f"{path}/{name}"
        # Nothing readable after its shred.
        for path, names in shreds.items():
            scope = vault.scope(path)
            for name in names[:5]:
                with pytest.raises(kc.ShreddedError):
                    scope.get(name)
        # Exactly one ACTIVE key version per live scope; only DESTROYED in shredded ones.
        with vault._read() as s:
            for path in vault.scopes():
                ref = load_scope(s, path)
                states = dict(
                    s.execute(
                        select(ScopeKeyRow.state, func.count())
                        .where(ScopeKeyRow.scope_id == ref.id)
                        .group_by(ScopeKeyRow.state)
                    ).all()
                )
                if path in shreds:
                    assert set(states) == {"DESTROYED"}, (path, states)
                else:
                    assert states.get("ACTIVE") == 1, (path, states)
        report = vault.audit.verify()
        assert report.ok, report
        assert report.events_checked > kinds["rotate"] + kinds["shred"] + kinds["rewrap"]
