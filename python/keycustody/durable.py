"""Durable file writes: what a rename needs to survive a crash."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flushes a directory's entries (a file created or renamed in it) to disk: without it a
    crash can lose a rename that ``os.replace`` already returned from."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
