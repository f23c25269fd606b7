"""Ingesting a directory tree into a scope: batched, with a progress bar, nothing lost silently."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from keycustody.cli.walk import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_FILES,
    SkipLog,
    prefetch,
    read_batches,
    scan,
    walk,
)
from keycustody.errors import InvalidInputError
from keycustody.types import RecordInfo


class Writable(Protocol):
    """The part of :class:`keycustody.Scope` that ingestion needs."""

    def put(self, name: str, data: bytes, /) -> RecordInfo: ...

    def put_many(self, records: Iterable[tuple[str, bytes]], /) -> list[RecordInfo]: ...


@dataclass(slots=True)
class IngestReport:
    """What an ingestion did: counts, bytes, wall time, and what it skipped."""

    files: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    log: SkipLog = field(default_factory=SkipLog)
    sample: RecordInfo | None = None
    """One stored record (the first), for callers that want to inspect it."""

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB (10^6 bytes) per second."""
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def _put_batch(scope: Writable, batch: list[tuple[str, bytes]], log: SkipLog) -> list[RecordInfo]:
    try:
        return scope.put_many(batch)
    except InvalidInputError:
        # The batch was rejected as a whole (nothing written). Store the records one by one
        # so that only the offending ones are skipped, each with the library's reason.
        if len(batch) == 1:
            raise
    stored: list[RecordInfo] = []
    rejected: list[tuple[str, InvalidInputError]] = []
    for name, data in batch:
        try:
            stored.append(scope.put(name, data))
        except InvalidInputError as exc:
            rejected.append((name, exc))
    if not stored:  # every record rejected: a problem with the scope, not with the files
        raise rejected[0][1]
    for name, reason in rejected:
        log.skip(name, f"rejected by the vault ({reason})")
    return stored


def progress_bar(console: Console) -> Progress:
    """A files-and-bytes progress bar, drawn only when ``console`` is a terminal."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[files]:,}/{task.fields[total_files]:,} files"),
        DownloadColumn(binary_units=False),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def ingest_tree(
    scope: Writable,
    root: Path,
    *,
    console: Console,
    prefix: str = "",
    exclude: Sequence[str] = (),
    batch_files: int = DEFAULT_BATCH_FILES,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    description: str = "ingest",
    report: IngestReport | None = None,
    protect: Mapping[tuple[int, int], str] | None = None,
    max_file_bytes: int | None = None,
) -> IngestReport:
    """Stores every regular file under ``root`` in ``scope``, in batches, with a progress bar.

    Files are read by a background thread one batch ahead of storage, so at most about three
    batches are in memory at any time.

    Args:
        scope: Where the records go (``keycustody.Scope``).
        root: The directory to ingest.
        console: Where the progress bar is drawn (only when it is a terminal).
        prefix: Prepended to each record name as a path component.
        exclude: Shell patterns of file and directory base names to leave out (reported).
        batch_files: Maximum files per ``put_many`` call.
        batch_bytes: Maximum bytes per ``put_many`` call (a bigger file goes alone).
        description: Label of the progress bar.
        report: Filled in as batches are stored (so a caller sees progress made before an
            error); a new one by default.
        protect: Files and directories never to ingest (see :func:`walk`).
        max_file_bytes: Skip (and report) files above this size without reading them.

    Returns:
        The counts, the wall time and every skipped or excluded entry with its reason.

    Raises:
        KeyCustodyError: storing failed; batches stored before the failure stay stored.
    """
    report = IngestReport() if report is None else report
    total_files, total_bytes = scan(root, exclude=exclude, protect=protect)
    entries = walk(root, report.log, prefix=prefix, exclude=exclude, protect=protect)
    batches = prefetch(
        read_batches(
            entries,
            report.log,
            batch_files=batch_files,
            batch_bytes=batch_bytes,
            max_file_bytes=max_file_bytes,
        )
    )
    with progress_bar(console) as progress:
        task = progress.add_task(description, total=total_bytes, files=0, total_files=total_files)
        start = time.perf_counter()
        try:
            for batch in batches:
                infos = _put_batch(scope, batch, report.log)
                if report.sample is None and infos:
                    report.sample = infos[0]
                stored = sum(info.size for info in infos)
                report.files += len(infos)
                report.nbytes += stored
                progress.update(task, advance=stored, files=report.files)
        finally:
            batches.close()
            report.seconds = time.perf_counter() - start
    return report
