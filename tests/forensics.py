"""Byte scans of database files, for tests that prove something is *not* stored."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path


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
