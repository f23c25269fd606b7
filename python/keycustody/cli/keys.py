"""Key lifecycle commands: ``keys``, ``rotate``, ``rewrap``, ``reencrypt``, ``compromise``,
``suspend``, ``resume`` and ``lineage``.

They are added to the main app with :func:`register`. Like every command, each one opens the
vault named by the global options, calls the Python API, and maps keycustody's errors to a
one-line message and an exit code (see :data:`keycustody.cli.commands.EXIT_CODES`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

# The module, not its names: commands.py may import this module while it is still loading.
from keycustody.cli import commands as base
from keycustody.cli.columns import Cell, columns
from keycustody.errors import ConfigError
from keycustody.keys.states import ACTIVE, COMPROMISED, DEACTIVATED, DESTROYED, PRE_ACTIVE
from keycustody.types import KeyVersionInfo
from keycustody.wording import plural

if TYPE_CHECKING:
    from keycustody.keys.lineage import RecordLineage
    from keycustody.keys.rotation import JobReport
    from keycustody.scope import Scope

PANEL = "Key lifecycle"
"""Help panel grouping these commands in ``keycustody --help``."""

_STATE_STYLE: dict[str, dict[str, Any]] = {
    ACTIVE: {"fg": "green"},
    DEACTIVATED: {"fg": "yellow"},
    COMPROMISED: {"fg": "red", "bold": True},
    DESTROYED: {"dim": True},
    PRE_ACTIVE: {"fg": "cyan"},
}
"""Each state's colour, as ``click.style`` arguments (``_state`` spells them for rich)."""

ScopeOption = Annotated[
    str, typer.Option("--scope", "-s", help="Scope path, e.g. acme or acme/repos/api.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Only count what would be done; change nothing.")
]
BatchSizeOption = Annotated[
    int, typer.Option("--batch-size", min=1, help="Records per transaction.")
]
JobJsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print {scope, active_version, dry_run, records_by_version, records_done, "
        "child_keys_done, versions_destroyed} as JSON.",
    ),
]


def _when(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def _short_time(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "-"


def _state(state: str) -> str:
    """``state`` in rich markup, in its colour."""
    style = " ".join(k if v is True else v for k, v in _STATE_STYLE.get(state, {}).items())
    return f"[{style}]{state}[/{style}]" if style else state


def _state_cell(state: str) -> Cell:
    return state, typer.style(state, **_STATE_STYLE.get(state, {}))


def _echo_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=1, ensure_ascii=False, sort_keys=False))


# -- keys --------------------------------------------------------------------------------


def _since(info: KeyVersionInfo) -> str:
    """When the version reached its current state (UTC, to the minute)."""
    if info.state == DESTROYED:
        ts = info.destroyed_at
    elif info.state == COMPROMISED:
        ts = info.compromised_at
    elif info.state == DEACTIVATED:
        ts = info.deactivated_at
    else:
        ts = info.created_at
    return ts.strftime("%Y-%m-%d %H:%M") if ts is not None else "-"


def keys_command(
    ctx: typer.Context,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope", "-s", help="Only this scope, e.g. acme/repos/api (default: every scope)."
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print a JSON array of {scope, version, state, wrapped_by, records, "
            "created_at, deactivated_at, compromised_at, destroyed_at, also_wrapped_by}.",
        ),
    ] = False,
) -> None:
    """List scope key versions: state, what wraps each one, how many records it protects.

    States follow NIST SP 800-57: ACTIVE (new writes), DEACTIVATED (decrypt only, until a
    rewrap), COMPROMISED (refuses to decrypt until a re-encryption), DESTROYED (key material
    gone, metadata kept as evidence). WRAPPED BY is `kek:<KEK id>#<KEK version>` for a tenant
    (one line per KEK when it has several, primary first: any one of them unwraps it) and
    `scope:<parent>#v<n>` for a child scope.

    Example: `keycustody keys --scope acme`  or  `keycustody keys --json`
    """
    settings = base.get_settings(ctx)
    with base.handle_errors():
        with base.open_vault(settings, must_exist=True) as vault:
            if scope is not None:
                target = vault.scope(scope)
                paths, versions = [target.path], target.keys()
            else:
                by_scope = vault.key_versions()
                paths, versions = list(by_scope), [v for vs in by_scope.values() for v in vs]
        if as_json:
            _echo_json([v.to_dict() for v in versions])
            return
        rows: list[list[Cell]] = []
        for v in versions:
            rows.append(
                [
                    v.scope,
                    str(v.version),
                    _state_cell(v.state),
                    f"{v.records:,}",
                    _since(v),
                    base.terminal_safe(v.wrapped_by),
                ]
            )
            rows += [["", "", "", "", "", base.terminal_safe(also)] for also in v.also_wrapped_by]
        lines = columns(
            ["scope", "version", "state", "records", "since (UTC)", "wrapped by"], rows, (1, 3)
        )
        lines.append(
            f"{plural(len(paths), 'scope')}, {plural(len(versions), 'key version')}, "
            f"{plural(sum(v.records for v in versions), 'record')}"
        )
        typer.echo("\n".join(lines))


# -- rotate ------------------------------------------------------------------------------


def rotate(
    ctx: typer.Context,
    scope: ScopeOption,
    kek: Annotated[
        str | None,
        typer.Option(
            "--kek",
            help="Move the tenant to this KEK instead (e.g. `local:acme-kek-2`): every live "
            "key version is rewrapped by it, two KMS calls each, records untouched. Give the "
            "current KEK id to rewrap under its newest version after a rotation in the KMS.",
        ),
    ] = None,
    replace: Annotated[
        str | None,
        typer.Option(
            "--replace",
            help="With --kek, for a tenant with several KEKs: which of them --kek replaces "
            "(default: the primary). See `keycustody kek ls --tenant TENANT`.",
        ),
    ] = None,
) -> None:
    """Rotate a scope's key, or (with --kek) move a tenant to another KEK.

    Without --kek: a new ACTIVE key version takes the new writes; the previous one becomes
    DEACTIVATED and still decrypts its records until `keycustody rewrap` moves them.

    Example: `keycustody rotate --scope acme`  or
    `keycustody rotate --scope acme --kek local:acme-kek-2`
    """
    settings = base.get_settings(ctx)
    out = base.stdout()
    with base.handle_errors(), base.open_vault(settings, must_exist=True) as vault:
        target = vault.scope(scope)
        if replace is not None and kek is None:
            raise ConfigError("--replace names the KEK that --kek replaces: give --kek too")
        if kek is None:
            version = target.rotate_key()
            out.print(
                f"rotated scope [bold]{escape(target.path)}[/bold]: key version {version} is "
                f"ACTIVE; version {version - 1} is DEACTIVATED (decrypt only) until "
                f"`keycustody rewrap --scope {escape(target.path)}`",
                soft_wrap=True,
            )
            return
        moved = vault.rotate_kek(target.path, kek, old=replace)
        what = f"KEK {escape(replace)} of tenant" if replace else "tenant"
        out.print(
            f"moved {what} [bold]{escape(target.path)}[/bold] to KEK [bold]{escape(kek)}"
            f"[/bold]: {moved:,} key versions rewrapped; records untouched",
            soft_wrap=True,
        )


# -- rewrap and reencrypt ----------------------------------------------------------------


def _job_json(report: JobReport) -> dict[str, Any]:
    return {
        "scope": report.scope,
        "active_version": report.active_version,
        "dry_run": report.dry_run,
        "records_by_version": {str(v): n for v, n in sorted(report.records_by_version.items())},
        "records_done": report.records_done,
        "child_keys_done": report.child_keys_done,
        "versions_destroyed": report.versions_destroyed,
    }


def _print_job(console: Console, verb: str, report: JobReport) -> None:
    by_version = ", ".join(f"v{v}: {n:,}" for v, n in sorted(report.records_by_version.items()))
    total = sum(report.records_by_version.values())
    scope = escape(report.scope)
    if report.dry_run:
        base.summary(
            console,
            f"dry run: {verb} in scope [bold]{scope}[/bold] would move {plural(total, 'record')} "
            f"to key version {report.active_version}",
            [("records by version", by_version or "none"), ("changed", "nothing (--dry-run)")],
        )
        return
    destroyed = ", ".join(f"v{v}" for v in report.versions_destroyed) or "none"
    base.summary(
        console,
        f"{verb} done in scope [bold]{scope}[/bold]",
        [
            ("active version", str(report.active_version)),
            ("records by version", by_version or "none"),
            ("records done", f"{report.records_done:,}"),
            ("child keys rewrapped", f"{report.child_keys_done:,}"),
            ("versions destroyed", destroyed),
        ],
    )


def _run_job(
    ctx: typer.Context,
    verb: str,
    scope: str,
    job: Callable[..., JobReport],
    *,
    dry_run: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    settings = base.get_settings(ctx)
    with base.handle_errors():
        with base.open_vault(settings, must_exist=True) as vault:
            target = vault.scope(scope)
            if dry_run:
                report = job(target, batch_size=batch_size, dry_run=True)
            else:
                label = f"{verb} {target.path}"
                with base.progress_bar(escape(label)) as progress:
                    report = job(target, batch_size=batch_size, progress=progress)
        if as_json:
            _echo_json(_job_json(report))
        else:
            _print_job(base.stdout(), verb, report)


def rewrap(
    ctx: typer.Context,
    scope: ScopeOption,
    dry_run: DryRunOption = False,
    batch_size: BatchSizeOption = 5000,  # rotation.DEFAULT_BATCH, not imported for --help
    as_json: JobJsonOption = False,
) -> None:
    """Move every record of a scope to its ACTIVE key version, then destroy the old versions.

    Only each record's wrapped data key (60 bytes) is rewrapped, in batches; payloads are not
    re-encrypted. Child scope keys follow. DEACTIVATED versions left with nothing to protect
    become DESTROYED. Safe to interrupt: rerun it to finish. COMPROMISED versions are left to
    `keycustody reencrypt`.

    Example: `keycustody rewrap --scope acme --dry-run`, then `keycustody rewrap --scope acme`
    """
    _run_job(
        ctx,
        "rewrap",
        scope,
        lambda target, **options: target.rewrap(**options),
        dry_run=dry_run,
        batch_size=batch_size,
        as_json=as_json,
    )


def reencrypt(
    ctx: typer.Context,
    scope: ScopeOption,
    dry_run: DryRunOption = False,
    batch_size: BatchSizeOption = 1000,
    as_json: JobJsonOption = False,
) -> None:
    """Re-encrypt every record under a COMPROMISED key version with a new data key.

    Each record gets a new data key (and record id) and fresh ciphertext under the ACTIVE
    version; then the compromised versions are DESTROYED. Safe to interrupt: rerun it to
    finish. Mark a version compromised first with `keycustody compromise`.

    Example: `keycustody reencrypt --scope acme --dry-run`
    """
    _run_job(
        ctx,
        "reencrypt",
        scope,
        lambda target, **options: target.reencrypt(**options),
        dry_run=dry_run,
        batch_size=batch_size,
        as_json=as_json,
    )


# -- compromise, suspend, resume ---------------------------------------------------------

ReasonOption = Annotated[
    str | None, typer.Option("--reason", "-r", help="Why, for the audit trail.")
]


def _change_scope(ctx: typer.Context, scope: str, change: Callable[[Scope], str]) -> None:
    """Opens the vault, applies ``change`` to the scope and prints the line it returns."""
    settings = base.get_settings(ctx)
    with base.handle_errors(), base.open_vault(settings, must_exist=True) as vault:
        target = vault.scope(scope)
        base.stdout().print(change(target), soft_wrap=True)


def compromise(
    ctx: typer.Context,
    scope: ScopeOption,
    reason: Annotated[
        str,
        typer.Option(
            "--reason", "-r", help="Why, for the audit trail, e.g. 'key found in a core dump'."
        ),
    ],
    version: Annotated[
        int | None,
        typer.Option(
            "--version",
            min=1,
            help="Key version to mark (default: the ACTIVE one, after rotating to a new one).",
        ),
    ] = None,
) -> None:
    """Mark a scope key version COMPROMISED: its records refuse to decrypt at once.

    New writes go to a fresh version. Run `keycustody reencrypt` to give the affected records
    new data keys and make them readable again.

    Example: `keycustody compromise --scope acme --reason "incident 4711"`
    """

    def mark(target: Scope) -> str:
        marked = target.mark_compromised(version, reason=reason)
        return (
            f"key version {marked} of scope [bold]{escape(target.path)}[/bold] is "
            f"[bold red]COMPROMISED[/bold red]: its records refuse to decrypt until "
            f"`keycustody reencrypt --scope {escape(target.path)}`"
        )

    _change_scope(ctx, scope, mark)


def suspend(ctx: typer.Context, scope: ScopeOption, reason: ReasonOption = None) -> None:
    """Suspend (revoke) a scope and its whole subtree: nothing under it encrypts or decrypts.

    Reads and writes fail with exit code 5 (key revoked) until `keycustody resume`; other
    processes stop within their revalidation bound (1 s by default). Nothing is deleted.

    Example: `keycustody suspend --scope acme --reason "tenant offboarding review"`
    """

    def apply(target: Scope) -> str:
        target.suspend(reason=reason)
        return (
            f"scope [bold]{escape(target.path)}[/bold] and its subtree are "
            "[bold red]SUSPENDED[/bold red]"
        )

    _change_scope(ctx, scope, apply)


def resume(ctx: typer.Context, scope: ScopeOption, reason: ReasonOption = None) -> None:
    """Lift a suspension: the scope and its subtree encrypt and decrypt again.

    Example: `keycustody resume --scope acme`
    """

    def apply(target: Scope) -> str:
        target.resume(reason=reason)
        return f"scope [bold]{escape(target.path)}[/bold] is [green]ACTIVE[/green] again"

    _change_scope(ctx, scope, apply)


# -- lineage -----------------------------------------------------------------------------


def _lineage_json(lineage: RecordLineage) -> dict[str, Any]:
    return {
        "name": lineage.name,
        "scope": lineage.scope,
        "dek_id": lineage.dek_id,
        "key_version": lineage.key_version,
        "sealed_version": lineage.sealed_version,
        "kek": {"id": lineage.kek_id, "version": lineage.kek_version},
        "keks": [
            {"id": k.rpartition("#")[0], "version": k.rpartition("#")[2]} for k in lineage.keks
        ],
        "chain": [
            {"scope": k.scope, "version": k.version, "state": k.state, "wrapped_by": k.wrapped_by}
            | ({"also_wrapped_by": list(k.also_wrapped_by)} if k.also_wrapped_by else {})
            for k in lineage.chain
        ],
        "events": [
            {
                "at": _when(e.at),
                "event": e.event,
                "scope": e.scope,
                "from_version": e.from_version,
                "to_version": e.to_version,
                "details": e.details,
            }
            for e in lineage
        ],
    }


def _versions(from_version: int | None, to_version: int | None) -> str:
    if from_version is not None and to_version is not None:
        return f"v{from_version} → v{to_version}"
    if to_version is not None:
        return f"v{to_version}"
    if from_version is not None:
        return f"v{from_version}"
    return ""


def _details(details: dict[str, Any]) -> str:
    parts = []
    for key, value in sorted(details.items()):
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key}: {shown}")
    return base.printable("; ".join(parts))


def _lineage_trees(lineage: RecordLineage) -> tuple[Tree, Tree]:
    """The key custody tree (record → DEK → scope keys → KEK) and the history tree."""
    custody = Tree(
        f"record [bold]{base.printable(lineage.name)}[/bold]  (scope {escape(lineage.scope)})"
    )
    node = custody.add(
        f"DEK [bold]{lineage.dek_id}[/bold]  sealed under v{lineage.sealed_version}, "
        f"wrapped by v{lineage.key_version}"
    )
    for link in lineage.chain:
        node = node.add(
            f"scope key [bold]{escape(link.scope)}[/bold] v{link.version}  {_state(link.state)}"
        )
    keks = lineage.keks or [f"{lineage.kek_id}#{lineage.kek_version}"]
    for i, kek in enumerate(keks):
        kek_id, _, kek_version = kek.rpartition("#")
        role = "" if len(keks) == 1 else ("  primary" if i == 0 else "  or, failing that")
        node.add(
            f"KEK [bold]{escape(kek_id)}[/bold] version {escape(kek_version)}  (in the KMS)" + role
        )
    count = plural(len(lineage), "event")
    history = Tree(f"history ({count}, oldest first)")
    for e in lineage:
        text = f"{_short_time(e.at)}  [bold]{e.event}[/bold]"
        versions = _versions(e.from_version, e.to_version)
        if versions:
            text += f"  {versions}"
        if e.scope != lineage.scope:
            text += f"  (scope {escape(e.scope)})"
        if e.details:
            text += f"  [dim]{_details(e.details)}[/dim]"
        history.add(text)
    return custody, history


def lineage(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Record name, e.g. src/app.py.")],
    scope: ScopeOption,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print {name, scope, dek_id, key_version, sealed_version, kek, keks, chain, "
            "events} as JSON.",
        ),
    ] = False,
) -> None:
    """Show a record's key custody: its data key, the key chain up to the KEK, and history.

    The chain lists each scope key version (with its state) from the record's scope up to the
    tenant, then the KEK (id and version) that wraps the tenant key. The history lists every
    key event since the record was sealed: rewraps, re-encryption, KEK rotations.

    Example: `keycustody lineage src/app.py --scope acme/repos/api`
    """
    settings = base.get_settings(ctx)
    with base.handle_errors():
        with base.open_vault(settings, must_exist=True) as vault:
            found = vault.scope(scope).lineage(name)
        if as_json:
            _echo_json(_lineage_json(found))
            return
        out = base.stdout()
        for tree in _lineage_trees(found):
            out.print(tree)


def usage(
    ctx: typer.Context,
    since: Annotated[
        datetime | None,
        typer.Option(help="Start of the period (UTC), e.g. 2026-11-01.", formats=["%Y-%m-%d"]),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(help="End of the period (UTC, exclusive).", formats=["%Y-%m-%d"]),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the usage as JSON.")] = False,
) -> None:
    """Usage per scope for chargeback: records and bytes stored, writes, key operations, KMS
    calls and denied accesses in a period (from the tamper-evident audit trail).

    Example: `keycustody usage --since 2026-11-01 --until 2026-12-01 --json`
    """
    settings = base.get_settings(ctx)
    start = since.replace(tzinfo=UTC) if since else None
    end = until.replace(tzinfo=UTC) if until else None
    with base.handle_errors():
        with base.open_vault(settings, must_exist=True) as vault:
            rows = vault.usage(since=start, until=end)
        if as_json:
            _echo_json([dataclasses.asdict(r) for r in rows])
            return
        header = ["scope", "records", "bytes", "writes", "key ops", "KMS calls", "denied"]
        counts = [
            (r.records, r.bytes, r.writes, r.key_operations, r.kms_calls, r.denied) for r in rows
        ]
        cells = [
            [base.terminal_safe(r.scope), *(f"{n:,}" for n in c)]
            for r, c in zip(rows, counts, strict=True)
        ]
        lines = columns(header, cells, range(1, len(header)))
        lines.append(
            f"{plural(len(rows), 'scope')}, {plural(sum(r.records for r in rows), 'record')}, "
            f"{plural(sum(r.bytes for r in rows), 'byte')}"
        )
        typer.echo("\n".join(lines))


# -- registration ------------------------------------------------------------------------

COMMANDS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("keys", keys_command),
    ("rotate", rotate),
    ("rewrap", rewrap),
    ("reencrypt", reencrypt),
    ("compromise", compromise),
    ("suspend", suspend),
    ("resume", resume),
    ("lineage", lineage),
    ("usage", usage),
)
"""The commands :func:`register` adds, by name."""


def register(app: typer.Typer) -> None:
    """Adds the key lifecycle commands to ``app``; registering twice adds nothing."""
    present = {info.callback for info in app.registered_commands}
    for name, command in COMMANDS:
        if command not in present:
            app.command(name, rich_help_panel=PANEL)(command)
