"""One worker of the concurrency test: random put/get/rotate/rewrap/shred for a while.

Run as ``python concurrency_worker.py DB_URL KMS_DIR WORKER_ID SECONDS LOG``. Every write is
logged (JSON Lines) only after the call returned, so the log is what the caller saw
acknowledged; the test checks the database against it afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import keycustody as kc

TENANTS = ("t0", "t1", "t2")
SHARED = tuple(f"{t}/shared" for t in TENANTS)


def main() -> int:
    db_url, kms_dir, worker, seconds, log_path = sys.argv[1:6]
    me = int(worker)
    rng = random.Random(me)
    deadline = time.monotonic() + float(seconds)
    kms = kc.LocalKMS(Path(kms_dir))
    counts: dict[str, int] = {}
    written: list[tuple[str, str, str]] = []  # (scope, name, sha256) acknowledged
    shredded = 0
    with kc.Vault.open(db_url, kms=kms, revalidate_s=0.2) as vault, open(log_path, "w") as log:

        def note(kind: str, **fields: object) -> None:
            log.write(json.dumps({"kind": kind, **fields}) + "\n")
            log.flush()
            counts[kind] = counts.get(kind, 0) + 1

        while time.monotonic() < deadline:
            op = rng.choices(
                ("put", "get", "rotate", "rewrap", "shred"), weights=(10, 8, 2, 2, 1)
            )[0]
            scope_path = rng.choice(SHARED)
            scope = vault.scope(scope_path)
            if op == "put":
                batch = [
                    (f"w{me}-{len(written) + i}", os.urandom(rng.randrange(1, 5000)))
                    for i in range(rng.randrange(1, 200))
                ]
                scope.put_many(batch)
                for name, data in batch:
                    digest = hashlib.sha256(data).hexdigest()
                    written.append((scope_path, name, digest))
                    note("put", scope=scope_path, name=name, sha256=digest)
            elif op == "get" and written:
                sample = rng.sample(written, min(len(written), 50))
                by_scope: dict[str, list[tuple[str, str]]] = {}
                for path, name, digest in sample:
                    by_scope.setdefault(path, []).append((name, digest))
                for path, items in by_scope.items():
                    got = vault.scope(path).get_many([n for n, _ in items])
                    for name, digest in items:
                        if hashlib.sha256(got[name]).hexdigest() != digest:
                            note("error", what=f"{path}/{name} read back different bytes")
                note("get", records=len(sample))
            elif op == "rotate":
                try:
                    scope.rotate_key()
                    note("rotate", scope=scope_path)
                except kc.ConcurrentRotationError:
                    note("rotate_lost_race", scope=scope_path)
            elif op == "rewrap":
                report = scope.rewrap(batch_size=100)
                note("rewrap", scope=scope_path, records=report.records_done)
            elif op == "shred":
                # A data subject of this worker's own: written, then erased.
                path = f"{rng.choice(TENANTS)}/subjects/w{me}-{shredded}"
                shredded += 1
                subject = vault.scope(path, create=True)
                names = [f"s{i}" for i in range(rng.randrange(1, 100))]
                subject.put_many((n, os.urandom(100)) for n in names)
                certificate = vault.shred(path, reason=f"worker {me} test erasure")
                note("shred", scope=path, names=names, certificate=certificate.id)
        note("done", counts=counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
