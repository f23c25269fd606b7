"""Byte scans of database files, for tests that prove something is *not* stored, and the key
bytes they look for."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

import keycustody as kc
from keycustody.keys.hierarchy import load_scope
from keycustody.storage.models import ScopeKeyRow


def database_files(db_path: Path) -> list[Path]:
    """The database file and its WAL, shared-memory and journal siblings that exist."""
    candidates = [db_path] + [
        db_path.with_name(db_path.name + s) for s in ("-wal", "-shm", "-journal")
    ]
    return [p for p in candidates if p.exists()]


def checkpoint(db_path: Path) -> None:
    """Moves the WAL into the main file and truncates it, as a shred does."""
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def hits(files: Iterable[Path], needles: Iterable[bytes]) -> list[tuple[str, bytes]]:
    """Every (file, needle) where the needle, or a 16-byte half of a 32+-byte needle, occurs."""
    contents = {str(p): p.read_bytes() for p in files}
    found: list[tuple[str, bytes]] = []
    for needle in needles:
        parts = [needle]
        if len(needle) >= 32:
            parts += [needle[:16], needle[-16:]]
        for name, data in contents.items():
            if any(part in data for part in parts):
                found.append((name, needle))
    return found


def plaintext_keys(vault: kc.Vault, kms_dir: Path) -> set[bytes]:
    """Every plaintext key reachable now: each live version of every scope key (unwrapped
    through the vault), the audit MAC key, and the bytes of every LocalKMS key file in
    ``kms_dir``."""
    found: set[bytes] = set()
    with vault._read() as s:
        for path in vault.scopes():
            ref = load_scope(s, path)
            if ref.state == "SHREDDED":
                continue
            versions = s.scalars(
                select(ScopeKeyRow.version).where(
                    ScopeKeyRow.scope_id == ref.id, ScopeKeyRow.wrapped.is_not(None)
                )
            ).all()
            for version in versions:
                secret = vault._keys.key(s, ref, version).export_secret()
                found.add(bytes(secret))
                secret[:] = bytes(len(secret))
    audit_key = vault.audit._cached()
    assert audit_key is not None
    found.add(bytes(audit_key.export_secret()))
    for key_file in kms_dir.glob("*/v*.key"):
        found.add(key_file.read_bytes())
    return found
