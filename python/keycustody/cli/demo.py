"""``keycustody demo``: the main job end to end on the embedded defaults, checked.

LocalKMS + SQLite in a fresh folder, a tenant under its own KEK, a real source tree ingested,
every record read back and compared byte for byte, one stored byte flipped to show that
tampering is detected, and the database files scanned for known plaintext.
"""

from __future__ import annotations

import contextlib
import mmap
import sqlite3
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import keycustody
from keycustody.cli.ingest import IngestReport, ingest_tree, progress_bar
from keycustody.cli.walk import SkipLog, file_ids, prefetch, read_batches, walk
from keycustody.errors import ConfigError, IntegrityError, KeyCustodyError, NotFoundError
from keycustody.kms.local import LocalKMS
from keycustody.scope import Scope
from keycustody.types import RecordInfo
from keycustody.vault import Vault

DEMO_EXCLUDES = ("__pycache__", "site-packages", "dist-packages")
"""Left out of the standard library: installed third-party packages and bytecode caches."""

TENANT = "acme"
KEK_NAME = "acme-kek"
KEEP_ROOT = Path(".keycustody-demo")
_PROBES = 5
_SNIPPET = 48

EXIT_DIFFERS = 4
EXIT_PLAINTEXT = 1


def resolve_source(source: str) -> Path:
    """The directory a ``--source`` value names: ``stdlib``, ``package`` or a path.

    Raises:
        ConfigError: the path is not a directory.
    """
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
    elif source == "package":
        root = Path(keycustody.__file__).resolve().parent
    else:
        root = Path(source)
    if not root.is_dir():
        raise ConfigError(f"demo source {root} is not a directory")
    return root


@dataclass(slots=True)
class ReadBack:
    """Outcome of reading every ingested file back and comparing it with the source."""

    verified: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    name_probes: list[bytes] = field(default_factory=list)
    content_probes: list[bytes] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        """Read-back throughput (get_many only) in MB per second."""
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class DemoResult:
    """Everything the demo measured and checked."""

    source: Path
    workdir: Path | None
    ingest: IngestReport
    read: ReadBack
    listed: int
    tamper_detected: bool | None
    tamper_note: str
    probes: int
    hits: int
    scanned_bytes: int
    kms_calls: int
    failures: list[str] = field(default_factory=list)
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.failures


def _keep_dir() -> Path:
    base = KEEP_ROOT / time.strftime("run-%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(mode=0o700, parents=True)
    return path


def _read_back(
    scope: Scope,
    source: Path,
    report: IngestReport,
    *,
    console: Console,
    exclude: tuple[str, ...],
    batch_files: int,
    protect: dict[tuple[int, int], str],
    max_file_bytes: int,
) -> ReadBack:
    """Walks ``source`` again and compares every file with its record (get_many is timed)."""
    result = ReadBack()
    # Entries skipped at ingest are skipped again by the same walk; records the vault rejected
    # are logged under their record names.
    not_stored = {s.path for s in report.log.skipped}
    log = SkipLog()
    batches = prefetch(
        read_batches(
            walk(source, log, exclude=exclude, protect=protect),
            log,
            batch_files=batch_files,
            max_file_bytes=max_file_bytes,
        )
    )
    with progress_bar(console) as progress:
        task = progress.add_task("verify", total=report.nbytes, files=0, total_files=report.files)
        try:
            for batch in batches:
                items = [(n, d) for n, d in batch if n not in not_stored]
                _compare(scope, items, result)
                progress.update(task, advance=sum(len(d) for _, d in items), files=result.verified)
        finally:
            batches.close()
    return result


def _compare(scope: Scope, items: list[tuple[str, bytes]], result: ReadBack) -> None:
    names = [n for n, _ in items]
    start = time.perf_counter()
    try:
        found = scope.get_many(names)
    except NotFoundError:  # a file appeared since the ingest: find which, one by one
        found = {}
        for name in names:
            with contextlib.suppress(NotFoundError):
                found[name] = scope.get(name)
    result.seconds += time.perf_counter() - start
    for name, data in items:
        got = found.get(name)
        if got is None:
            result.missing.append(name)
        elif got != data:
            result.mismatched.append(name)
        else:
            result.verified += 1
            result.nbytes += len(got)
            _collect_probes(result, name, data)


def _collect_probes(result: ReadBack, name: str, data: bytes) -> None:
    """Keeps a few names and content snippets that cannot appear in ciphertext by chance."""
    raw = name.encode("utf-8")
    if len(result.name_probes) < _PROBES and len(raw) >= 10 and "/" in name:
        result.name_probes.append(raw)
    if len(result.content_probes) < _PROBES and len(data) >= 4 * _SNIPPET:
        mid = len(data) // 2
        snippet = data[mid : mid + _SNIPPET]
        if len(set(snippet)) >= 12:
            result.content_probes.append(snippet)


def _tamper_check(
    scope: Scope, db_path: Path, sample: RecordInfo | None
) -> tuple[bool | None, str]:
    """Flips one bit of a stored ciphertext, expects IntegrityError, then restores the byte."""
    if sample is None:
        return None, "skipped (no record stored)"
    record_id = bytes.fromhex(sample.record_id)
    con = sqlite3.connect(db_path, timeout=30)
    try:
        row = con.execute("SELECT body FROM records WHERE record_id = ?", (record_id,)).fetchone()
        if row is None:
            return None, "skipped (record not found in the database)"
        body = bytes(row[0])
        i = len(body) // 2
        tampered = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        with con:
            con.execute("UPDATE records SET body = ? WHERE record_id = ?", (tampered, record_id))
        try:
            scope.get(sample.name)
        except IntegrityError:
            return True, "1 flipped bit in a stored ciphertext -> IntegrityError (restored)"
        except KeyCustodyError as exc:
            return False, f"1 flipped bit -> unexpected {type(exc).__name__}"
        finally:
            with con:
                con.execute("UPDATE records SET body = ? WHERE record_id = ?", (body, record_id))
        return False, "1 flipped bit in a stored ciphertext was NOT detected"
    except sqlite3.Error as exc:
        return None, f"skipped (cannot edit the database: {exc})"
    finally:
        con.close()


def _scan_plaintext(files: list[Path], probes: list[bytes]) -> tuple[int, int]:
    """Counts probes found in any of ``files``; returns (hits, bytes scanned)."""
    found: set[bytes] = set()
    scanned = 0
    for path in files:
        if not path.is_file() or path.stat().st_size == 0:
            continue
        scanned += path.stat().st_size
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            found.update(p for p in probes if m.find(p) != -1)
    return len(found), scanned


def _run(
    source: Path,
    workdir: Path,
    *,
    err: Console,
    batch_files: int,
    exclude: tuple[str, ...],
) -> DemoResult:
    kms = LocalKMS(workdir / "keys")
    kek = kms.create_key(KEK_NAME)
    db_path = workdir / "vault.db"
    with Vault.open(f"sqlite:///{db_path}", kms=kms, actor="keycustody-demo") as vault:
        tenant = vault.scope(TENANT, kek=kek, create=True)
        protect = file_ids([workdir, KEEP_ROOT], "the demo's own vault folder (never ingested)")
        report = ingest_tree(
            tenant,
            source,
            console=err,
            exclude=exclude,
            batch_files=batch_files,
            protect=protect,
            max_file_bytes=vault.max_record_bytes,
        )
        read = _read_back(
            tenant,
            source,
            report,
            console=err,
            exclude=exclude,
            batch_files=batch_files,
            protect=protect,
            max_file_bytes=vault.max_record_bytes,
        )
        listed = len(tenant.list())
        detected, note = _tamper_check(tenant, db_path, report.sample)
        kms_calls = vault.kms_calls
    db_files = [db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))]
    probes = read.name_probes + read.content_probes
    hits, scanned = _scan_plaintext(db_files, probes)
    result = DemoResult(
        source=source,
        workdir=None,
        ingest=report,
        read=read,
        listed=listed,
        tamper_detected=detected,
        tamper_note=note,
        probes=len(probes),
        hits=hits,
        scanned_bytes=scanned,
        kms_calls=kms_calls,
    )
    _judge(result)
    return result


def _judge(result: DemoResult) -> None:
    checks: list[tuple[bool, str, int]] = [
        (result.ingest.files > 0, "no file was ingested", 1),
        (
            not result.read.mismatched,
            f"{len(result.read.mismatched)} records differ from their source files",
            EXIT_DIFFERS,
        ),
        (not result.read.missing, f"{len(result.read.missing)} records are missing", EXIT_DIFFERS),
        (
            result.listed == result.ingest.files,
            f"ls shows {result.listed} records, {result.ingest.files} were stored",
            EXIT_DIFFERS,
        ),
        (result.tamper_detected is not False, result.tamper_note, EXIT_DIFFERS),
        (
            result.hits == 0,
            f"{result.hits} plaintext probes found in the database",
            EXIT_PLAINTEXT,
        ),
    ]
    for passed, message, code in checks:
        if not passed:
            result.failures.append(message)
            if not result.exit_code:
                result.exit_code = code


def _mark(passed: bool | None) -> str:
    if passed is None:
        return "[yellow]skipped[/yellow]"
    return "[green]ok[/green]" if passed else "[bold red]FAILED[/bold red]"


def render(result: DemoResult, console: Console) -> None:
    """Prints the demo summary table."""
    ing, read = result.ingest, result.read
    where = (
        f"kept in {escape(str(result.workdir))} (vault.db, keys/)"
        if result.workdir
        else "temporary folder, deleted"
    )
    differs = len(read.mismatched) + len(read.missing)
    table = Table(title="keycustody demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_column()
    table.add_row("source", escape(str(result.source)), "")
    table.add_row("vault", f"LocalKMS + SQLite, {where}", "")
    table.add_row("tenant", f"scope '{TENANT}' under its own KEK local:{KEK_NAME}", "")
    table.add_row(
        "files",
        f"{ing.files:,} stored ({len(ing.log.skipped):,} skipped, "
        f"{len(ing.log.excluded):,} excluded)",
        _mark(ing.files > 0),
    )
    table.add_row("size", f"{ing.nbytes / 1e6:,.1f} MB", "")
    table.add_row(
        "ingest", f"{ing.seconds:.2f} s, {ing.mb_per_s:,.1f} MB/s (read, encrypt, store)", ""
    )
    table.add_row(
        "read back",
        f"{read.verified:,}/{ing.files:,} byte-identical, {read.mb_per_s:,.1f} MB/s (get_many)",
        _mark(differs == 0 and read.verified == ing.files),
    )
    table.add_row("ls", f"{result.listed:,} names decrypted", _mark(result.listed == ing.files))
    table.add_row("tamper", escape(result.tamper_note), _mark(result.tamper_detected))
    table.add_row(
        "plaintext",
        f"{result.hits} hits for {result.probes} probes (file names and contents) in "
        f"{result.scanned_bytes / 1e6:,.1f} MB of database files",
        _mark(result.hits == 0 if result.probes else None),
    )
    table.add_row(
        "KMS calls",
        f"{result.kms_calls:,} (one per key: the scope key and the audit key; none per record)",
        "",
    )
    console.print(table)


def run_demo(
    source: Path,
    *,
    out: Console,
    err: Console,
    keep: bool = False,
    batch_files: int = 1000,
    exclude: tuple[str, ...] = DEMO_EXCLUDES,
) -> DemoResult:
    """Runs the demo on ``source`` and prints its summary on ``out``.

    Args:
        source: Directory to ingest.
        out: Where the summary goes.
        err: Where progress bars go (drawn only on a terminal).
        keep: Keep the vault under ``./.keycustody-demo/run-TIMESTAMP`` instead of a
            temporary folder.
        batch_files: Files per batch.
        exclude: Base-name patterns to leave out (reported as excluded).

    Returns:
        The measurements and the failed checks (``result.ok`` is true when none failed).

    Raises:
        KeyCustodyError: the vault failed outright.
    """
    if keep:
        workdir = _keep_dir()
        result = _run(source, workdir, err=err, batch_files=batch_files, exclude=exclude)
        result.workdir = workdir
    else:
        with tempfile.TemporaryDirectory(prefix="keycustody-demo-") as tmp:
            result = _run(source, Path(tmp), err=err, batch_files=batch_files, exclude=exclude)
    render(result, out)
    return result
