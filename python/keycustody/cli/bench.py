"""``keycustody bench``: keycustody against its baselines, with the targets checked.

All the measuring lives in :mod:`keycustody.bench` (shared with ``benches/``); this module
parses the options and renders the report as rich tables, or as JSON with ``--json``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from keycustody.bench import Report

_SIZE = re.compile(r"^\s*(\d+)\s*(B|K|KB|KIB|M|MB|MIB)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 2**20, "MB": 2**20, "MIB": 2**20}
_MAX_SIZE = 512 * 2**20


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"1KiB,4KiB,1MiB"`` -> ``(1024, 4096, 1048576)``; units B, KiB, MiB (K, M too).

    Raises:
        typer.BadParameter: an entry is not a size, or is 0 or above 512 MiB.
    """
    sizes: list[int] = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = _SIZE.match(part)
        if match is None:
            raise typer.BadParameter(f"{part.strip()!r} is not a size like 4KiB or 1MiB")
        size = int(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
        if not 0 < size <= _MAX_SIZE:
            raise typer.BadParameter(f"{part.strip()!r}: sizes go from 1B to 512MiB")
        sizes.append(size)
    if not sizes:
        raise typer.BadParameter("give at least one size, e.g. --sizes 4KiB,1MiB")
    return tuple(dict.fromkeys(sizes))


def bench(
    sizes: Annotated[
        str | None,
        typer.Option(
            "--sizes",
            help="Record sizes of the envelope cases, comma-separated "
            "(default 1KiB,4KiB,64KiB,1MiB,16MiB; with --quick 4KiB,1MiB).",
        ),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(
            "--repeats", min=1, help="Timed runs per case; medians are reported (default 5)."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout instead of tables.")
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="A smoke run of about 30 s: fewer sizes and repeats, small batches, a 32 MiB "
            "stream and a 10,000-file ingest.",
        ),
    ] = False,
    stdlib: Annotated[
        bool,
        typer.Option(
            "--stdlib/--no-stdlib",
            help="Also measure a real source tree: this Python's standard library.",
        ),
    ] = True,
    stream_mib: Annotated[
        int | None,
        typer.Option(
            "--stream-mib",
            min=0,
            help="Payload of the put_stream/open_stream case in MiB (default 1024; --quick 32; "
            "0 skips it).",
        ),
    ] = None,
    ingest_files: Annotated[
        int | None,
        typer.Option(
            "--ingest-files",
            min=0,
            help="Files of the synthetic ingest (default 400,000; --quick 10,000; 0 skips it).",
        ),
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option(
            "--save",
            dir_okay=False,
            help="Also write the JSON report to this file (the tables still print).",
        ),
    ] = None,
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            file_okay=False,
            help="Where the temporary vaults and databases go (default: the system temp "
            "folder). The full ingest needs about 15 GB free.",
        ),
    ] = None,
) -> None:
    """Measure keycustody against its baselines and check the performance targets.

    Runs, in one process, keycustody (the Rust batch call and the Vault API) and the baselines
    (the pure-Python pyca/cryptography envelope loop, raw single-key AES-256-GCM, the pyca loop
    with sqlite3, and sqlite3 alone as the floor) on records of each size and on the standard
    library; then put_stream/open_stream and a synthetic codebase ingest (put_many over a
    generator) in child processes, for their peak RSS; then the machine's bounds (memory copy,
    page faults, disk). Prints ratios, peak RSS, the targets with PASS/FAIL and the bound that
    stops each missed one. Needs pyca/cryptography (`pip install cryptography`).

    Example: `keycustody bench --quick`  or  `keycustody bench --save bench.json`
    """
    from keycustody.bench import BenchConfig, run_bench
    from keycustody.cli.commands import fail, handle_errors

    err = Console(stderr=True, highlight=False)
    changes: dict[str, Any] = {"stdlib": stdlib, "progress_bars": not as_json}
    if sizes is not None:
        changes["sizes"] = parse_sizes(sizes)
    for key, value in (
        ("repeats", repeats),
        ("stream_mib", stream_mib),
        ("ingest_files", ingest_files),
    ):
        if value is not None:
            changes[key] = value
    if directory is not None:
        changes["directory"] = str(directory)
    config = BenchConfig.quick(**changes) if quick else BenchConfig(**changes)

    def progress(message: str) -> None:
        err.print(f"[dim]bench: {escape(message)}[/dim]", soft_wrap=True)

    with handle_errors():
        try:
            report = run_bench(config, progress=progress)
        except RuntimeError as exc:  # a child process failed; its stderr already shows why
            fail(str(exc), 1)
        if save is not None:
            save.write_text(report.to_json() + "\n")
    if as_json:
        typer.echo(report.to_json())
        return
    out = Console(highlight=False)
    if not out.is_terminal:  # a file or a pipe: wide enough that rows do not fold
        out = Console(highlight=False, width=160)
    render(report, out)


def _ratio(value: float | None) -> str:
    if value is None:
        return ""
    style = "green" if value >= 1 else "red"
    return f"[{style}]{value:.2f}x[/{style}]"


def _mib(value: int | float | None) -> str:
    return "" if value is None else f"{value / 2**20:,.0f}"


def render(report: Report, console: Console) -> None:
    """Prints ``report`` as rich tables: cases, phases, bounds, targets and the machine."""
    from keycustody.bench import BASELINES

    present = {m.case for m in report.measurements}
    columns = [b for b in BASELINES if b in present]
    table = Table(
        title="keycustody bench: median of the timed runs; ratio = baseline time / case time",
        title_justify="left",
    )
    for name in ("op", "case"):
        table.add_column(name)
    for name in ("records", "median ms", "records/s", "MB/s", "faults/rec", "RSS +MiB"):
        table.add_column(name, justify="right")
    for b in columns:
        table.add_column(f"vs {b}", justify="right")
    group = None
    for m in report.measurements:
        if group is not None and m.group != group:
            table.add_section()
        group = m.group
        faults = m.faults_per_record
        cells = [
            m.group,
            m.case,
            f"{m.records:,}",
            f"{m.median * 1e3:,.2f}",
            f"{m.records_per_s:,.0f}",
            f"{m.bytes_per_s / 1e6:,.0f}",
            "" if faults is None else f"{faults:,.1f}",
            _mib(m.peak_rss_delta),
        ]
        cells += [_ratio(None if b == m.case else report.ratio(m, b)) for b in columns]
        table.add_row(*cells)
    console.print(table)
    if report.phases:
        phases = Table(
            title="whole-process phases (each in a child process; peak RSS = the child's)",
            title_justify="left",
        )
        phases.add_column("phase")
        for name in ("seconds", "items", "MB/s", "items/s", "peak RSS MiB", "RSS before MiB"):
            phases.add_column(name, justify="right")
        phases.add_column("KMS calls", justify="right")
        phases.add_column("vs baseline", justify="right")
        for p in report.phases:
            phases.add_row(
                p.name,
                f"{p.seconds:,.2f}",
                f"{p.items:,}",
                f"{p.bytes_per_s / 1e6:,.0f}",
                f"{p.items_per_s:,.0f}",
                _mib(p.peak_rss),
                _mib(p.base_rss),
                "" if p.kms_calls is None else str(p.kms_calls),
                "" if p.ratio is None else f"{p.ratio:.2f}x {p.baseline}",
            )
        console.print(phases)
    if report.bounds:
        bounds = Table(title="bounds measured on this machine", title_justify="left")
        bounds.add_column("bound")
        bounds.add_column("value", justify="right")
        for key, value in report.bounds.items():
            shown = (
                f"{value * 1e6:.2f} us" if key.endswith("record") else f"{value / 1e9:.2f} GB/s"
            )
            bounds.add_row(key.replace("_", " "), shown)
        console.print(bounds)
    if report.targets:
        targets = Table(title="targets", title_justify="left")
        for name in ("", "target", "goal", "measured", "bound and what sets it"):
            targets.add_column(name, overflow="fold")
        marks = {True: "[green]✓ PASS[/green]", False: "[red]✗ FAIL[/red]", None: "[dim]n/a[/dim]"}
        for t in report.targets:
            targets.add_row(marks[t.passed], t.what, t.goal, t.shown, escape(t.note))
        console.print(targets)
    machine = ", ".join(f"{k} {v}" for k, v in report.machine.items())
    console.print(f"machine: {escape(machine)}", soft_wrap=True)
    took = "" if report.seconds is None else f", took {report.seconds:,.0f} s"
    console.print(
        f"started {report.started}{took}; peak RSS of this process {_mib(report.peak_rss)} MiB; "
        f"KMS calls: {report.kms or 'n/a'}",
        soft_wrap=True,
    )
    if not sys.platform.startswith("linux"):
        console.print("[dim]per-case RSS and page faults are measured on Linux only[/dim]")
