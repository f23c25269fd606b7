"""Searches files for byte strings, streaming each in overlapping chunks (constant memory).

The shred's forensic scan (:func:`keycustody.keys.shredding.shred`) runs this module as a
child process, never inside the vault's process: closing a file descriptor releases every
POSIX lock the process holds on that file, SQLite's included, and another process could then
take the WAL index for its own and reset it under the vault's open connections (a test worker
died of SIGBUS) or write under its readers. It uses only the standard library, because the
child runs with ``python -I -S``.

As a program it reads one JSON object on stdin, ``{"files": [path, ...], "needles": [hex,
...], "chunk": bytes}``, and writes :func:`scan`'s result as JSON on stdout.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any


def scan(files: list[str], needles: list[bytes], chunk: int) -> dict[str, Any]:
    """Searches each file for each needle and each needle's first and last 16 bytes (WAL
    pages can split a value); a file that does not exist is left out.

    Returns:
        ``{"files": [{"file", "bytes", "sha256", "hits"}, ...], "hits": total}``, where a
        file's hits count the distinct needles and pieces found in it.
    """
    parts = {part for n in needles for part in (n, n[:16], n[-16:])}
    overlap = max((len(p) for p in parts), default=1) - 1
    scanned = []
    hits = 0
    for path in files:
        digest = hashlib.sha256()
        found: set[bytes] = set()
        size = 0
        tail = b""
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; a missing file is skipped
        except FileNotFoundError:
            continue
        with f:
            while data := f.read(chunk):
                digest.update(data)
                size += len(data)
                window = tail + data
                found.update(part for part in parts if part not in found and part in window)
                tail = window[-overlap:] if overlap else b""
        hits += len(found)
        scanned.append(
            {
                "file": Path(path).name,
                "bytes": size,
                "sha256": digest.hexdigest(),
                "hits": len(found),
            }
        )
    return {"files": scanned, "hits": hits}


def main() -> int:
    """Runs :func:`scan` on the request read from stdin."""
    request = json.load(sys.stdin)
    needles = [bytes.fromhex(n) for n in request["needles"]]
    json.dump(scan(request["files"], needles, int(request["chunk"])), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
