"""Vaults over the providers of tests/kms: a tenant with records to shred (erasure phase 2)
and a file-level backup of the database (vaults come from ``vaults.vault_opener``).

Shared by test_aws.py, test_azure.py and test_contract.py; the providers themselves (moto's
server behind the proxy, the Azure stand-in, ...) come from their fixtures, not from here.
"""

from __future__ import annotations

from pathlib import Path

import keycustody as kc


def fill_tenant(vault: kc.Vault, kek: str) -> dict[str, dict[str, bytes]]:
    """Tenant acme under ``kek`` with records in acme, acme/subjects/alice (the one to shred)
    and acme/subjects/bob; returns the records by scope path."""
    data = {
        path: {f"{path}/f{i}.txt": f"{path} {i}\n".encode() for i in range(n)}
        for path, n in (("acme", 5), ("acme/subjects/alice", 8), ("acme/subjects/bob", 4))
    }
    vault.scope("acme", kek=kek, create=True)
    for path, records in data.items():
        vault.scope(path, create=True).put_many(records.items())
    return data


def backup_url(db: Path, folder: Path) -> str:
    """Copies the SQLite file ``db`` and its WAL into ``folder`` (a new folder), as a
    file-level backup does; returns the copy's URL."""
    folder.mkdir()
    for suffix in ("", "-wal"):
        source = Path(f"{db}{suffix}")
        if source.exists():
            (folder / f"{db.name}{suffix}").write_bytes(source.read_bytes())
    return f"sqlite:///{folder / db.name}"
