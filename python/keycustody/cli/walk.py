"""Walking a source tree for ingestion: regular files only, nothing skipped silently.

The walk follows no symbolic links, sorts entries so that runs are repeatable, and records
every entry it does not ingest (symlink, special file, unreadable, name not UTF-8, excluded)
with the reason. Files are read in bounded batches, so memory stays flat on big trees.
"""

from __future__ import annotations

import fnmatch
import os
import queue
import stat
import threading
from collections import Counter
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_BATCH_FILES = 1000
DEFAULT_BATCH_BYTES = 64 * 1024 * 1024
"""A batch closes at this many bytes even below its file count (one big file is its own batch)."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A regular file found by the walk: its path, record name and size at walk time."""

    path: Path
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry the walk or the reader did not ingest, and why."""

    path: str
    reason: str


@dataclass(slots=True)
class SkipLog:
    """Entries not ingested. Appended to from the reader thread; read after it finished."""

    skipped: list[Skipped] = field(default_factory=list)
    excluded: list[Skipped] = field(default_factory=list)

    def skip(self, path: str | os.PathLike[str], reason: str) -> None:
        """Records an entry that could not be ingested."""
        self.skipped.append(Skipped(os.fsdecode(path), reason))

    def exclude(self, path: str | os.PathLike[str], pattern: str) -> None:
        """Records an entry left out on purpose by an ``--exclude`` pattern."""
        self.excluded.append(Skipped(os.fsdecode(path), f"excluded by pattern {pattern!r}"))

    def reasons(self) -> Counter[str]:
        """How many entries were skipped for each reason."""
        return Counter(s.reason for s in self.skipped)


def _matching(name: str, patterns: Sequence[str]) -> str | None:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


def record_name(rel: str, prefix: str) -> str:
    """The record name of a file: its POSIX path relative to the root, under ``prefix``."""
    prefix = prefix.strip("/")
    return f"{prefix}/{rel}" if prefix else rel


def file_ids(paths: Iterable[Path], reason: str) -> dict[tuple[int, int], str]:
    """``(device, inode) -> reason`` for the existing ``paths``, to pass as ``walk(protect=)``."""
    ids: dict[tuple[int, int], str] = {}
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        ids[(st.st_dev, st.st_ino)] = reason
    return ids


def walk(
    root: Path,
    log: SkipLog,
    *,
    prefix: str = "",
    exclude: Sequence[str] = (),
    protect: Mapping[tuple[int, int], str] | None = None,
) -> Iterator[FileEntry]:
    """Yields every regular file under ``root`` in a repeatable order, following no symlinks.

    Args:
        root: The directory to walk.
        log: Receives every entry that is not yielded, with the reason.
        prefix: Prepended to each record name as a path component (``PREFIX/rel/path``).
        exclude: Shell patterns matched against file and directory base names.
        protect: Files and directories never to ingest, by ``(device, inode)``, with the
            reason (the vault's own database and key directory).
    """
    protect = protect or {}
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, rel_dir = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            log.skip(directory, f"unreadable directory ({exc.strerror or exc})")
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            pattern = _matching(entry.name, exclude)
            if pattern is not None:
                log.exclude(entry.path, pattern)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                log.skip(entry.path, f"cannot stat ({exc.strerror or exc})")
                continue
            reason = protect.get((st.st_dev, st.st_ino))
            if reason is not None:
                log.skip(entry.path, reason)
            elif stat.S_ISLNK(st.st_mode):
                log.skip(entry.path, "symbolic link (not followed)")
            elif stat.S_ISDIR(st.st_mode):
                subdirs.append((Path(entry.path), rel))
            elif not stat.S_ISREG(st.st_mode):
                log.skip(entry.path, "not a regular file (device, FIFO or socket)")
            else:
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    log.skip(entry.path, "file name is not valid UTF-8")
                    continue
                yield FileEntry(Path(entry.path), record_name(rel, prefix), st.st_size)
        # Depth first in sorted order: push in reverse so the smallest name pops first.
        stack.extend(reversed(subdirs))


def scan(
    root: Path,
    *,
    exclude: Sequence[str] = (),
    protect: Mapping[tuple[int, int], str] | None = None,
) -> tuple[int, int]:
    """Counts the regular files under ``root`` and their bytes (for the progress bar)."""
    files = total = 0
    for entry in walk(root, SkipLog(), exclude=exclude, protect=protect):
        files += 1
        total += entry.size
    return files, total


def read_file(path: Path) -> bytes:
    """Reads a regular file without following a symlink swapped in since the walk.

    Raises:
        OSError: the file cannot be opened or read, or is no longer a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "no longer a regular file")
        return f.read()


def read_batches(
    entries: Iterable[FileEntry],
    log: SkipLog,
    *,
    batch_files: int = DEFAULT_BATCH_FILES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    max_file_bytes: int | None = None,
) -> Iterator[list[tuple[str, bytes]]]:
    """Reads files into batches of at most ``batch_files`` files or ``batch_bytes`` bytes.

    Files that cannot be read, or are larger than ``max_file_bytes`` (not read at all), are
    recorded in ``log`` and left out of the batch.
    """
    batch: list[tuple[str, bytes]] = []
    size = 0
    for entry in entries:
        if max_file_bytes is not None and entry.size > max_file_bytes:
            log.skip(entry.path, f"larger than the per-record limit of {max_file_bytes:,} bytes")
            continue
        try:
            data = read_file(entry.path)
        except OSError as exc:
            log.skip(entry.path, f"unreadable ({exc.strerror or exc})")
            continue
        if batch and size + len(data) > batch_bytes:
            yield batch
            batch, size = [], 0
        batch.append((entry.name, data))
        size += len(data)
        if len(batch) >= batch_files:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _Done:
    pass


@dataclass(frozen=True, slots=True)
class _Failed:
    exc: BaseException


def prefetch(items: Iterator[T], depth: int = 1) -> Generator[T, None, None]:
    """Produces ``items`` from a background thread, at most ``depth`` ahead of the consumer.

    File reads then overlap with encryption and storage (which release the GIL). Errors in
    the producer are raised in the consumer; closing the consumer stops the producer.
    """
    slots: queue.Queue[T | _Done | _Failed] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: T | _Done | _Failed) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_Done())
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failed(exc))

    thread = threading.Thread(target=produce, name="keycustody-reader", daemon=True)
    thread.start()
    try:
        while True:
            got = slots.get()
            if isinstance(got, _Done):
                return
            if isinstance(got, _Failed):
                raise got.exc
            yield got
    finally:
        stop.set()
        thread.join()
