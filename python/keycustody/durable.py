"""Durable file writes: what a rename needs to survive a crash, and what makes the fsync
before it short."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

WRITEBACK_CHUNK = 8 * 1024 * 1024
"""Bytes a large file write lets pile up in the page cache before it starts writing them to
disk (:class:`Writeback`)."""


def fsync_dir(path: Path) -> None:
    """Flushes a directory's entries (a file created or renamed in it) to disk: without it a
    crash can lose a rename that ``os.replace`` already returned from."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Writeback:
    """Starts writing a file's new bytes to disk while more are being written, so that the
    fsync that makes the file durable has little left to wait for.

    Left to itself, the kernel keeps what a writer writes in the page cache, and the final
    fsync then writes it all while the writer waits. Measured here (medians): AES-GCM
    sealing, writing then syncing 512 MiB took 1.78 s, against 1.17 s when the writeback of
    each 8 MiB starts once it is written (the disk's own speed); put_stream of 1 GiB into a
    local blob store went from 339 to 387 MB/s. Durability still comes from the fsync; this
    only moves the disk's work earlier.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._written = 0
        self._started = 0  # bytes whose writeback has been started

    def wrote(self, n: int) -> None:
        """Counts ``n`` more bytes written at the end of the file; starts their writeback
        once :data:`WRITEBACK_CHUNK` of them are waiting."""
        self._written += n
        if self._written - self._started >= WRITEBACK_CHUNK:
            _start_writeback(self._fd, self._started, self._written - self._started)
            self._started = self._written


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Starts writing the dirty pages of ``length`` bytes of ``fd`` from ``offset`` to disk,
    without waiting for them.

    Linux's ``POSIX_FADV_DONTNEED`` starts writeback of the range's dirty pages, then drops
    its pages that are clean; the ones just written are dirty or being written, so they stay
    cached. (Python has no ``sync_file_range``.) Where there is no ``posix_fadvise``, it
    does nothing. An error is ignored: this is only an early start, and the fsync that
    follows reports any failure to write.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, offset, length, os.POSIX_FADV_DONTNEED)
