"""Erasure and evidence commands: ``shred``, ``erasures complete|ls|cancel``, ``purge``,
``cert verify`` and ``audit verify|export|tail``.

They are added to the main app with :func:`register`. Like every command, each one opens the
vault named by the global options, calls the Python API, and maps keycustody's errors to a
one-line message and an exit code (see :data:`keycustody.cli.commands.EXIT_CODES`); a
certificate or audit trail that does not verify exits with the integrity code (4).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# The module, not its names: commands.py may import this module while it is still loading.
from keycustody.cli import commands as base
from keycustody.cli.columns import Cell, columns
from keycustody.errors import ConfigError, IntegrityError, InvalidInputError
from keycustody.keys.states import CANCELLED, CONFIRMED, SCHEDULED
from keycustody.storage.blobs import DEFAULT_ORPHAN_GRACE
from keycustody.wording import plural

if TYPE_CHECKING:
    from keycustody.keys.shredding import ErasureCertificate

PANEL = "Erasure and evidence"
"""Help panel grouping these commands in ``keycustody --help``."""


def _not_verified() -> int:
    """Exit code of a certificate or audit trail that does not verify: that of tampered data
    (looked up when needed: commands.py may still be loading when this module is imported)."""
    return base.exit_code(IntegrityError("not verified"))


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")
]


def _echo_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=1, ensure_ascii=False))


def _phase2_colour(status: str) -> str:
    """Confirmed green, cancelled red, anything still open yellow."""
    return {CONFIRMED: "green", CANCELLED: "red"}.get(status, "yellow")


def _phase2(status: str) -> str:
    colour = _phase2_colour(status)
    return f"[{colour}]{status}[/{colour}]"


# -- shred -------------------------------------------------------------------------------


def _scan_text(scan: dict[str, Any]) -> str:
    files = scan.get("files") or []
    hits = int(scan.get("hits", 0))
    style = "green" if hits == 0 else "bold red"
    return (
        f"[{style}]{hits} hits[/{style}] in {len(files)} files "
        f"({int(scan.get('values_searched', 0))} destroyed wrapped keys searched, "
        "whole and 16-byte halves)"
    )


def _scrub_text(scrub: dict[str, Any]) -> str:
    if scrub.get("backend") == "postgresql":
        command = escape(str(scrub.get("command")))
        if scrub.get("performed"):
            return f"{command} done; WAL: {escape(str(scrub.get('wal')))}"
        return f"[red]{command} not done[/red]: {escape(str(scrub.get('why')))}"
    if scrub.get("backend") != "sqlite":
        return escape(str(scrub.get("performed", "none")))
    complete = "complete" if scrub.get("checkpoint_complete") else "[red]incomplete[/red]"
    return (
        f"secure_delete={escape(str(scrub.get('secure_delete')))}, "
        f"journal {escape(str(scrub.get('journal_mode')))}, "
        f"{escape(str(scrub.get('checkpoint')))} {complete}"
    )


def _kek_text(result: dict[str, Any] | None) -> str:
    if result is None:
        return "not requested (phase 2 destroys the KEK versions that wrapped the keys)"
    kek = escape(str(result.get("kek")))
    if result.get("destroyed"):
        return f"[green]{kek} destroyed[/green] ({escape(str(result.get('call')))})"
    return f"[yellow]{kek} not destroyed[/yellow]: {escape(str(result.get('why')))}"


def print_certificate(console: Console, certificate: ErasureCertificate) -> None:
    """A summary of an erasure certificate: what was erased, how, its proof and what remains."""
    doc = certificate.document
    what, how, when = doc["what"], doc["how"], doc["when"]
    verification, integrity = doc["verification"], doc.get("integrity") or {}
    phase2 = when["phase2"]
    sample = verification["sample"]
    rows = [
        ("certificate", escape(certificate.id)),
        ("scope", escape(str(what["scope"]))),
        ("tenant", escape(str(what["tenant"]))),
        ("reason", base.printable(str(what["reason"]))),
        ("operator", base.printable(str(doc["who"]["operator"]))),
        ("scopes erased", f"{len(what['subtree']):,}"),
        ("key versions destroyed", f"{len(what['key_versions_destroyed']):,}"),
        ("records unreadable", f"{certificate.records_unreadable:,}"),
        ("method", f"{escape(how['method_type'])}: {escape(how['technique'])}"),
        ("storage scrub", _scrub_text(how["storage_scrub"] or {})),
        ("forensic scan", _scan_text(verification["forensic_scan"])),
        (
            "read check",
            f"{escape(str(sample['result']))}: {sample['refused_with_shredded_error']} of "
            f"{sample['tried']} scopes refused with ShreddedError",
        ),
        ("KEK destruction", _kek_text(how.get("kek_destruction"))),
        ("requested", escape(str(when["requested"]))),
        ("phase 2", _phase2(str(phase2["status"]))),
    ]
    if phase2.get("not_before_purge"):
        rows.append(("KMS destroys not before", escape(str(phase2["not_before_purge"]))))
    if phase2.get("confirmed_at"):
        rows.append(("phase 2 confirmed", escape(str(phase2["confirmed_at"]))))
    for event in phase2.get("events") or []:
        rows.append(("phase 2 event", escape(str(event))))
    if integrity:
        rows.append(
            (
                "audit anchor",
                f"event {integrity.get('audit_seq')}, "
                f"hash {escape(str(integrity.get('audit_event_hash')))}",
            )
        )
        rows.append(("sha256", escape(str(integrity.get("sha256")))))
    base.summary(console, f"erasure certificate [bold]{escape(certificate.id)}[/bold]", rows)
    console.print("[bold]residual risk[/bold]")
    for risk in doc.get("residual_risk") or []:
        console.print(f"  - {escape(str(risk))}", soft_wrap=True)


def shred(
    ctx: typer.Context,
    scope: Annotated[
        str,
        typer.Option(
            "--scope", "-s", help="Scope to erase with its subtree, e.g. acme/subjects/7f3a."
        ),
    ],
    reason: Annotated[
        str,
        typer.Option(
            "--reason", "-r", help="The request reference, e.g. 'GDPR Art.17 request #123'."
        ),
    ],
    destroy_kek: Annotated[
        bool,
        typer.Option(
            "--destroy-kek",
            help="For a tenant with a KEK of its own, also destroy the KEK in the KMS "
            "(refused, and said so in the certificate, when another tenant shares it).",
        ),
    ] = False,
    durable: Annotated[
        bool,
        typer.Option(
            "--durable",
            help="Also run phase 2 now (see `keycustody erasures complete`), so that no "
            "backup of the database can unwrap the destroyed keys either.",
        ),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="Also write the certificate here."),
    ] = None,
    yes: YesOption = False,
) -> None:
    """Crypto-shred a scope and its subtree, and print the erasure certificate.

    Destroys every key version of the scope and of every scope below it (their records can
    never be decrypted again), scrubs the database files, scans them for the destroyed keys,
    and issues a certificate bound into the audit trail. Asks for confirmation unless --yes.
    Rerunning it is safe: it returns the same certificate.

    Example: `keycustody shred --scope acme/subjects/alice --reason 'GDPR #123' -o cert.json`
    """
    settings = base.get_settings(ctx)
    out = base.stdout()
    with base.handle_errors(), base.open_vault(settings, must_exist=True) as vault:
        target = vault.scope(scope)
        if not reason.strip():
            raise InvalidInputError("--reason must name the request (e.g. a ticket reference)")
        if destroy_kek and "/" in target.path:
            # Checked here, before anything changes (the library checks it after phase 1).
            raise ConfigError("--destroy-kek applies to a whole tenant (a top-level scope)")
        if not yes:
            protected = vault.protected_by(target.path)
            extra = " and destroy its tenant's KEK in the KMS" if destroy_kek else ""
            typer.confirm(
                f"Shred scope {target.path!r}{extra}? {plural(len(protected.by_scope), 'scope')} "
                f"and {plural(protected.records, 'record')} become unreadable forever",
                abort=True,
            )
        certificate = vault.shred(
            target.path, reason=reason, destroy_kek=destroy_kek, durable=durable
        )
        if output is not None:
            certificate.save(output)
        print_certificate(out, certificate)
        if output is not None:
            out.print(f"certificate written to {base.printable(str(output))}", soft_wrap=True)


# -- erasures ----------------------------------------------------------------------------

erasures_app = typer.Typer(
    help="Erasure certificates and phase 2 (durable erasure, backups included).",
    no_args_is_help=True,
)


def _certificate_lines(title: str, certificates: list[ErasureCertificate]) -> list[str]:
    """A title, then a line per certificate in plain columns, scope last (a rich Table took
    2.8 ms a row: 28 s for the 10,000 certificates of a year of erasure requests)."""
    rows: list[list[Cell]] = []
    for c in certificates:
        row = c.summary()
        status = c.phase2_status
        rows.append(
            [
                c.id,
                str(row["requested"]),
                f"{c.records_unreadable:,}",
                (status, typer.style(status, fg=_phase2_colour(status))),
                str(row["phase2_not_before_purge"] or "-"),
                str(row["phase2_confirmed_at"] or "-"),
                base.terminal_safe(str(row["scope"])),
            ]
        )
    header = ["certificate", "requested", "records", "phase 2", "KMS destroys not before"]
    return [title, *columns([*header, "confirmed", "scope"], rows, (2,))]


@erasures_app.command("ls")
def erasures_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List every erasure certificate with its phase 2 status, oldest first.

    Example: `keycustody erasures ls --json`
    """
    settings = base.get_settings(ctx)
    with base.handle_errors(), base.open_vault(settings, must_exist=True) as vault:
        certificates = vault.certificates()
    if as_json:
        _echo_json([c.summary() for c in certificates])
        return
    lines = _certificate_lines("erasure certificates", certificates)
    pending = sum(1 for c in certificates if c.phase2_status != CONFIRMED)
    lines.append(f"{plural(len(certificates), 'certificate')}, {pending:,} awaiting phase 2")
    typer.echo("\n".join(lines))


def _new_keks(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, kek = value.partition("=")
        if not sep or not name or not kek:
            raise InvalidInputError(
                f"--new-kek {value!r}: use TENANT=KEK-ID or OLD-KEK-ID=KEK-ID, e.g. "
                "acme=aws:arn:aws:kms:eu-west-1:111122223333:key/NEW"
            )
        out[name] = kek
    return out


@erasures_app.command("complete")
def erasures_complete(
    ctx: typer.Context,
    new_kek: Annotated[
        list[str] | None,
        typer.Option(
            "--new-kek",
            metavar="TENANT=KEK",
            help="Where the surviving tenants of an AWS KMS or Azure Key Vault KEK move before "
            "the old key's deletion is scheduled (those KMSs destroy whole keys only), by "
            "tenant or by the old KEK id; repeatable. Not needed for an AWS alias that already "
            "points at a new key.",
        ),
    ] = None,
    include_cancelled: Annotated[
        bool,
        typer.Option(
            "--include-cancelled", help="Also schedule cancelled key destructions again."
        ),
    ] = False,
) -> None:
    """Run phase 2 for every pending erasure, and confirm scheduled ones.

    Re-keys the scopes above each shredded scope up to the KEK, then retires the KEK that
    wrapped them, so that no copy of the database (backups included) can unwrap the shredded
    keys: LocalKMS and PKCS#11 get a new KEK version and lose the old ones at once
    (confirmed); AWS KMS and Azure Key Vault keys are scheduled for deletion after the KMS's
    waiting period (scheduled, with the date), and a later run confirms it. Many erasures
    share one pass; the updated certificates are bound into the audit trail.

    Example: `keycustody --kms local,aws erasures complete --new-kek acme=aws:alias/acme-2`
    """
    settings = base.get_settings(ctx)
    out = base.stdout()
    with base.handle_errors(), base.open_vault(settings, must_exist=True) as vault:
        done = vault.complete_erasures(
            _new_keks(new_kek or []), include_cancelled=include_cancelled
        )
        changed = {c.id for c in done}
        waiting = [
            c for c in vault.certificates() if c.phase2_status == SCHEDULED and c.id not in changed
        ]
    if not done and not waiting:
        out.print("no erasure awaits phase 2")
        return
    if done:
        title = (
            f"phase 2 completed for {plural(len(done), 'erasure')}"
            if all(c.phase2_status == CONFIRMED for c in done)
            else f"phase 2 updated for {plural(len(done), 'erasure')}: "
            + ", ".join(
                f"{sum(1 for c in done if c.phase2_status == s):,} {s}"
                for s in (SCHEDULED, CONFIRMED, CANCELLED)
            )
        )
        typer.echo("\n".join(_certificate_lines(title, done)))
        for c in done:
            for event in c.document["when"]["phase2"].get("events") or []:
                out.print(f"  {escape(c.id)}: {escape(str(event))}", soft_wrap=True)
    if waiting:
        title = f"{plural(len(waiting), 'erasure')} still waiting for the KMS's waiting period"
        typer.echo("\n".join(_certificate_lines(title, waiting)))


@erasures_app.command("cancel")
def erasures_cancel(
    ctx: typer.Context,
    certificate_id: Annotated[str, typer.Argument(metavar="CERTIFICATE-ID")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why, e.g. 'legal hold LH-42'.")],
    yes: YesOption = False,
) -> None:
    """Cancel a scheduled phase 2 while the KMS allows it (AWS CancelKeyDeletion, Azure
    recover): backups made before phase 2 become readable again with the old key. Audited.

    Example: `keycustody erasures cancel ec-0123456789abcdef --reason 'legal hold LH-42'`
    """
    settings = base.get_settings(ctx)
    with base.handle_errors(), base.open_vault(settings, must_exist=True) as vault:
        if not yes:
            typer.confirm(
                f"Cancel the scheduled key destruction of {certificate_id}? Backups made "
                "before phase 2 become readable again with the old key",
                abort=True,
            )
        done = vault.cancel_erasure(certificate_id, reason=reason)
    title = f"phase 2 cancelled for {plural(len(done), 'erasure')}"
    typer.echo("\n".join(_certificate_lines(title, done)))


# -- purge -------------------------------------------------------------------------------


def purge(
    ctx: typer.Context,
    yes: YesOption = False,
    orphan_grace: Annotated[
        float,
        typer.Option(
            "--orphan-grace",
            min=0,
            help="With --blob-store: remove unreferenced blobs (left by a crash) only once "
            "they are older than this many seconds, so writes in flight are safe. "
            "0 only when nothing else writes.",
        ),
    ] = DEFAULT_ORPHAN_GRACE.total_seconds(),
) -> None:
    """Delete the record rows of every shredded scope (they are already unreadable).

    Shredding destroys keys, not rows; this frees the space, and the deleted rows are
    overwritten on disk. With --blob-store, their blobs are deleted too, and so are blobs
    that no record references (a crash between writing a blob and committing its record
    leaves one). Asks for confirmation unless --yes.

    Example: `keycustody purge --yes`
    """
    settings = base.get_settings(ctx)
    with base.handle_errors(), base.open_vault(settings, must_exist=True) as vault:
        if not yes:
            typer.confirm(
                "Delete the stored records of every shredded scope? They cannot be "
                "decrypted any more; this only frees their space",
                abort=True,
            )
        with base.progress_bar("purging shredded scopes") as progress:
            removed = vault.purge(orphan_grace=None, progress=progress)
        sweep = (
            vault.sweep_blobs(grace=timedelta(seconds=orphan_grace))
            if vault.blob_store is not None
            else None
        )
    out = base.stdout()
    out.print(f"purged {plural(removed, 'record')} of shredded scopes")
    if sweep is not None:
        out.print(
            f"removed {sweep.orphans_removed:,} orphaned blobs and "
            f"{sweep.incomplete_removed:,} interrupted uploads; kept {sweep.recent_kept:,} "
            "unreferenced blobs younger than the grace period"
        )


# -- cert --------------------------------------------------------------------------------

cert_app = typer.Typer(help="Erasure certificates as files.", no_args_is_help=True)


def _load_certificate(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        base.fail(f"not verified: {path} is not JSON ({exc})", _not_verified())
    if not isinstance(document, dict):
        base.fail(f"not verified: {path} does not hold a certificate object", _not_verified())
    return document


@cert_app.command("verify")
def cert_verify(
    ctx: typer.Context,
    certificate: Annotated[
        Path,
        typer.Argument(
            metavar="CERT.json",
            exists=True,
            dir_okay=False,
            help="An erasure certificate written by `keycustody shred -o`.",
        ),
    ],
) -> None:
    """Check an erasure certificate against this vault's audit trail.

    It verifies when its SHA-256 is the one the audit trail recorded for it and the whole
    trail verifies. Exits 0 if it does, 4 (with the reason) if it does not.

    Example: `keycustody cert verify cert.json`
    """
    settings = base.get_settings(ctx)
    with base.handle_errors():
        document = _load_certificate(certificate)
        with base.open_vault(settings, must_exist=True) as vault:
            try:
                ok, why = vault.verify_certificate(document)
            except (KeyError, TypeError, AttributeError, ValueError, OverflowError):
                ok, why = False, "the certificate is malformed (a field has the wrong type)"
        if not ok:
            base.fail(f"certificate NOT verified: {why}", _not_verified())
        base.stdout().print(
            f"[green]certificate verified[/green]: {escape(str(document['certificate_id']))}"
            f" - {escape(why)}",
            soft_wrap=True,
        )


# -- audit -------------------------------------------------------------------------------

audit_app = typer.Typer(
    help="The tamper-evident audit trail: verify, export for a SIEM, show the latest events.",
    no_args_is_help=True,
)


def _head(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    seq, sep, digest = value.partition(":")
    if not sep or not seq.strip().isdigit():
        raise InvalidInputError("--expect-head must be SEQ:HASH, e.g. 42:9f86d08...")
    return int(seq), digest.strip()


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            metavar="SEQ:HASH",
            help="A head printed by an earlier verify (kept outside the database): the trail "
            "must still hold it, which detects events removed from the end.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute the audit trail's hash chain and MACs; report the first broken link.

    Exits 0 if every event verifies, 4 if not. Keep the printed head (SEQ:HASH) somewhere
    the database administrator cannot write, and pass it to --expect-head next time.

    Example: `keycustody audit verify --expect-head 42:9f86d08...`
    """
    settings = base.get_settings(ctx)
    with base.handle_errors():
        anchor = _head(expect_head)
        with base.open_vault(settings, must_exist=True) as vault:
            report = vault.audit.verify(anchor)
        if as_json:
            _echo_json(report.to_dict())
        elif report.ok:
            base.stdout().print(
                f"[green]audit trail verified[/green]: {plural(report.events_checked, 'event')}; "
                f"head {report.head_seq}:{report.head_hash}",
                soft_wrap=True,
            )
        if not report.ok:
            base.fail(
                f"audit trail broken at event {report.first_bad_seq}: {report.reason}",
                _not_verified(),
            )


@audit_app.command("export")
def audit_export(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(metavar="PATH", dir_okay=False, help="JSON Lines file to write (0600)."),
    ],
    since: Annotated[
        int | None,
        typer.Option("--since", min=0, help="Only events after this sequence number."),
    ] = None,
) -> None:
    """Write the audit trail as JSON Lines for a SIEM (one event per line, with its hash
    chain and MAC), atomically.

    Example: `keycustody audit export audit.jsonl --since 1200`
    """
    settings = base.get_settings(ctx)
    with base.handle_errors(), base.open_vault(settings, must_exist=True) as vault:
        count = vault.audit.export(path, since=since)
    after = f" after event {since}" if since else ""
    base.stdout().print(
        f"exported {count:,} audit events{after} to {base.printable(str(path))}",
        soft_wrap=True,
    )


@audit_app.command("tail")
def audit_tail(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("-n", "--lines", min=0, help="How many events.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Show the latest audit events, oldest first.

    Example: `keycustody audit tail -n 50 --json`
    """
    settings = base.get_settings(ctx)
    with base.handle_errors(), base.open_vault(settings, must_exist=True) as vault:
        events = vault.audit.tail(n)
    if as_json:
        _echo_json([e.to_dict() for e in events])
        return
    table = Table(title="audit trail")
    table.add_column("seq", justify="right")
    table.add_column("at")
    table.add_column("actor", overflow="fold")
    table.add_column("action")
    table.add_column("subject", overflow="fold")
    table.add_column("outcome")
    table.add_column("details", overflow="fold")
    styles = {"ok": "green", "denied": "yellow", "failed": "bold red"}
    for e in events:
        style = styles.get(e.outcome, "")
        table.add_row(
            str(e.seq),
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            base.printable(e.actor),
            escape(e.action),
            base.printable(e.subject),
            f"[{style}]{escape(e.outcome)}[/{style}]" if style else escape(e.outcome),
            base.printable(e.details),
        )
    base.stdout().print(table)


# -- registration ------------------------------------------------------------------------

COMMANDS: tuple[tuple[str, Callable[..., None]], ...] = (("shred", shred), ("purge", purge))
"""The top-level commands :func:`register` adds, by name."""

GROUPS: tuple[tuple[str, typer.Typer], ...] = (
    ("erasures", erasures_app),
    ("cert", cert_app),
    ("audit", audit_app),
)
"""The command groups :func:`register` adds, by name."""


def register(app: typer.Typer) -> None:
    """Adds the erasure and evidence commands to ``app``; registering twice adds nothing."""
    present = {info.callback for info in app.registered_commands}
    for name, command in COMMANDS:
        if command not in present:
            app.command(name, rich_help_panel=PANEL)(command)
    groups = {info.typer_instance for info in app.registered_groups}
    for name, group in GROUPS:
        if group not in groups:
            app.add_typer(group, name=name, rich_help_panel=PANEL)
