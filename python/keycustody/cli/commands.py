"""The ``keycustody`` command line: a thin layer over :class:`keycustody.Vault`.

Each command parses its options, calls the Python API and maps keycustody's errors to a one-line
message and a distinct exit code (see :data:`EXIT_CODES`); it never prints a traceback.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keycustody import __version__
from keycustody._core import KeyHandle
from keycustody.cli import evidence, keys
from keycustody.cli.bench import bench as bench_command
from keycustody.cli.columns import columns
from keycustody.cli.ingest import IngestReport, ingest_tree
from keycustody.cli.walk import DEFAULT_BATCH_BYTES, DEFAULT_BATCH_FILES, SkipLog, file_ids
from keycustody.errors import (
    AuditError,
    ConcurrentRotationError,
    ConfigError,
    IntegrityError,
    InvalidInputError,
    KeyCustodyError,
    KeyRevokedError,
    KmsError,
    NotFoundError,
    ShreddedError,
    StorageError,
)
from keycustody.kms import plugins
from keycustody.kms.base import KmsProvider
from keycustody.kms.local import LocalKMS
from keycustody.kms.registry import ProviderRegistry
from keycustody.types import EncryptionContext, KeyId
from keycustody.wording import plural

# The vault, SQLAlchemy, the report and the demo are imported by the commands that use them:
# they take a second to import, and --help or a usage error needs none of them.
if TYPE_CHECKING:
    from keycustody.vault import Vault

DEFAULT_HOME = Path(".keycustody")
DEFAULT_DB = f"sqlite:///./{DEFAULT_HOME.as_posix()}/vault.db"
DEFAULT_KMS_DIR = DEFAULT_HOME / "keys"

EXIT_USAGE = 2
EXIT_CODES: tuple[tuple[type[KeyCustodyError], int], ...] = (
    # Order matters: the first match wins (UnsupportedKeyIdError is a KmsError and a ConfigError).
    (NotFoundError, 3),
    (ConcurrentRotationError, 10),
    (IntegrityError, 4),
    (KeyRevokedError, 5),
    (ShreddedError, 6),
    (ConfigError, EXIT_USAGE),
    (InvalidInputError, EXIT_USAGE),
    (KmsError, 7),
    (StorageError, 8),
    (AuditError, 9),
)
"""Exit code of each error class; any other failure exits with 1."""

_SKIPS_SHOWN = 20

app = typer.Typer(
    name="keycustody",
    help=(
        "Envelope-encrypted storage under customer-held keys.\n\n"
        "Every record gets its own data key, wrapped by a per-scope key, wrapped by the "
        "tenant's KEK in a KMS (LocalKMS by default: key files under --kms-dir).\n\n"
        "Quick start:  `keycustody demo`   (runs in a temporary folder, no setup)\n\n"
        "Exit codes: 0 ok, 1 other failure, 2 usage/config/invalid input, 3 not found, "
        "4 integrity failure (tampered data, or a certificate or audit trail that does not "
        "verify), 5 key revoked, 6 key shredded, 7 KMS failure, 8 storage failure, "
        "9 audit failure, 10 concurrent rotation (retry)."
    ),
    rich_markup_mode="markdown",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks with local variables could print plaintext or key ids: never show them.
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Global options shared by the commands that open a vault."""

    db: str
    kms_dir: Path
    actor: str | None
    kms: str = "local"
    """Comma-separated KMS providers (``--kms``): local, aws, azure, pkcs11 or a plugin."""
    audit_kek: str | None = None
    blob_store: str | None = None
    """Blob store URL for large payloads (``--blob-store``): file:///PATH or s3://BUCKET/PREFIX."""


_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` with its control characters as ``\\xNN``: record and file names are data, and
    an escape sequence in one must not drive the terminal."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def printable(text: str) -> str:
    """:func:`terminal_safe`, with rich markup escaped too (for text printed through rich)."""
    return escape(terminal_safe(text))


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr, driven by a long job's ``progress(done, total)`` calls."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr()) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def stdout() -> Console:
    return Console(highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def exit_code(exc: KeyCustodyError) -> int:
    """The process exit code for a keycustody error."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


def fail(message: str, code: int) -> NoReturn:
    """Prints ``error: message`` in red on stderr, on one line, and exits with ``code``."""
    one_line = " ".join(message.split())
    stderr().print(f"[bold red]error:[/bold red] [red]{printable(one_line)}[/red]", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turns every failure into a one-line message and an exit code (never a traceback).

    Set ``KEYCUSTODY_DEBUG=1`` to let unexpected errors raise with their traceback.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except KeyCustodyError as exc:
        fail(f"{type(exc).__name__}: {exc}", exit_code(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:  # e.g. `keycustody ls ... | head`: the reader left, stop quietly
        with suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", 1)
    except Exception as exc:
        if os.environ.get("KEYCUSTODY_DEBUG"):
            raise
        # Only the type: the message of an unexpected error could quote a name or data.
        fail(
            f"internal error ({type(exc).__name__}); set KEYCUSTODY_DEBUG=1 to see the traceback",
            1,
        )


def _sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL, or None (other backends, in memory)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # Vault.open reports the bad URL as a ConfigError
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser()


@contextmanager
def open_vault(settings: Settings, *, must_exist: bool) -> Iterator[Vault]:
    """Opens the vault named by the global options; closes it on exit.

    Args:
        settings: ``--db``, ``--kms-dir`` and ``--actor``.
        must_exist: Fail with NotFoundError rather than create a new SQLite database.
    """
    from keycustody.vault import Vault

    path = _sqlite_file(settings.db)
    if path is not None:
        if must_exist and not path.exists():
            raise NotFoundError(
                f"no vault database at {path}: ingest something first, "
                "or point --db / KEYCUSTODY_DB at an existing vault"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with Vault.open(
        settings.db,
        kms=kms_providers(settings),
        actor=settings.actor,
        audit_kek=settings.audit_kek,
        blob_store=settings.blob_store or None,
    ) as vault:
        yield vault


def kms_providers(settings: Settings) -> list[KmsProvider]:
    """The providers of ``--kms``; LocalKMS is added when no audit KEK is named, because the
    audit trail's key lives there by default."""
    found = plugins.providers(settings.kms, kms_dir=settings.kms_dir)
    if settings.audit_kek is None and not any(isinstance(p, LocalKMS) for p in found):
        found.append(LocalKMS(settings.kms_dir))
    return found


def _vault_files(settings: Settings) -> dict[tuple[int, int], str]:
    """The vault's own database files and key directory, never to be ingested into it."""
    protect = file_ids([settings.kms_dir], "the LocalKMS key directory (never ingested)")
    path = _sqlite_file(settings.db)
    if path is not None:
        names = [path.name + suffix for suffix in ("", "-wal", "-shm", "-journal")]
        protect.update(
            file_ids(
                [path.with_name(n) for n in names], "the vault's own database (never ingested)"
            )
        )
    return protect


def get_settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    if settings is None:  # a command invoked without the app callback (tests, embedding)
        settings = Settings(DEFAULT_DB, DEFAULT_KMS_DIR, None)
    return settings


def _version(value: bool) -> None:
    if value:
        typer.echo(f"keycustody {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar="KEYCUSTODY_DB",
            help=(
                "SQLAlchemy URL of the vault database; its folder is created if missing. "
                "Example: `--db sqlite:///ctx.db`"
            ),
        ),
    ] = DEFAULT_DB,
    kms_dir: Annotated[
        Path,
        typer.Option(
            "--kms-dir",
            envvar="KEYCUSTODY_KMS_DIR",
            file_okay=False,
            help=(
                "LocalKMS key directory (KEKs, ids `local:NAME`); keep it outside "
                "the database folder and its backups. Example: `--kms-dir ~/kek`"
            ),
        ),
    ] = DEFAULT_KMS_DIR,
    actor: Annotated[
        str | None,
        typer.Option(
            "--actor",
            envvar="KEYCUSTODY_ACTOR",
            help="Who acts, recorded in the audit trail; default user@host. "
            "Example: `--actor ops@acme`",
        ),
    ] = None,
    kms: Annotated[
        str,
        typer.Option(
            "--kms",
            envvar="KEYCUSTODY_KMS",
            help=(
                "KMS providers, comma-separated: `local`, `aws`, `azure`, `pkcs11`, or an "
                "installed plugin; key ids route to them by prefix. Cloud providers read their "
                "settings from the environment (see README). Example: `--kms local,aws`"
            ),
        ),
    ] = "local",
    audit_kek: Annotated[
        str | None,
        typer.Option(
            "--audit-kek",
            envvar="KEYCUSTODY_AUDIT_KEK",
            help="KEK wrapping the audit trail's key (default: LocalKMS local:keycustody-audit).",
        ),
    ] = None,
    blob_store: Annotated[
        str | None,
        typer.Option(
            "--blob-store",
            envvar="KEYCUSTODY_BLOB_STORE",
            help=(
                "Where the ciphertext of payloads above 4 MiB goes (headers and wrapped keys "
                "stay in the database): `file:///PATH` or `s3://BUCKET/PREFIX` (boto3, "
                "environment settings). Default: everything in the database. "
                "Example: `--blob-store s3://acme-vault/prod`"
            ),
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Global options; every one can also be set in the environment."""
    ctx.obj = Settings(
        db=db,
        kms_dir=kms_dir.expanduser(),
        actor=actor,
        kms=kms,
        audit_kek=audit_kek,
        blob_store=blob_store,
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def summary(console: Console, title: str, rows: list[tuple[str, str]]) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # hashes and paths wrap whole, never cut with "…"
    for key, value in rows:
        table.add_row(key, value)
    console.print(title)
    console.print(table)


def print_skips(console: Console, log: SkipLog, *, verbose: bool) -> None:
    """Reports every skipped entry (by reason, with examples) and the excluded ones."""
    if log.skipped:
        console.print(
            f"[yellow]skipped {plural(len(log.skipped), 'entry', 'entries')}"
            " (not stored):[/yellow]",
            soft_wrap=True,
        )
        for reason, count in log.reasons().most_common():
            console.print(f"  {count:>7,}  {printable(reason)}", soft_wrap=True)
        shown = log.skipped if verbose else log.skipped[:_SKIPS_SHOWN]
        for item in shown:
            console.print(
                f"  [yellow]-[/yellow] {printable(item.path)}: {printable(item.reason)}",
                soft_wrap=True,
            )
        if len(shown) < len(log.skipped):
            more = len(log.skipped) - len(shown)
            console.print(f"  … and {more:,} more (use --verbose to list them all)")
    if log.excluded:
        console.print(
            f"excluded {plural(len(log.excluded), 'entry', 'entries')} on purpose by name pattern"
            + ("" if verbose else " (--verbose lists them)"),
            soft_wrap=True,
        )
        if verbose:
            for item in log.excluded:
                console.print(
                    f"  - {printable(item.path)}: {printable(item.reason)}", soft_wrap=True
                )


def _ingest_rows(report: IngestReport, kms_calls: int) -> list[tuple[str, str]]:
    return [
        ("files", f"{report.files:,}"),
        ("size", _mb(report.nbytes)),
        ("time", f"{report.seconds:.2f} s"),
        ("throughput", f"{report.mb_per_s:,.1f} MB/s"),
        ("skipped", f"{len(report.log.skipped):,}"),
        ("excluded", f"{len(report.log.excluded):,}"),
        ("KMS calls", f"{kms_calls:,}"),
    ]


@app.command()
def ingest(
    ctx: typer.Context,
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            exists=True,
            file_okay=False,
            dir_okay=True,
            help="Directory to ingest; every regular file becomes one record.",
        ),
    ],
    scope: Annotated[
        str,
        typer.Option(
            "--scope", "-s", help="Scope path to store into, e.g. acme or acme/repos/api."
        ),
    ],
    kek: Annotated[
        list[str] | None,
        typer.Option(
            "--kek",
            help=(
                "KEK id protecting a new tenant scope, e.g. `local:acme-kek` "
                "(default: the KMS's default key, local:default; "
                "create one with `keycustody kek create NAME`). Repeat it for several KEKs "
                "(multi-cloud, disaster recovery), primary first: any one of them unwraps."
            ),
        ),
    ] = None,
    create: Annotated[
        bool,
        typer.Option("--create/--no-create", help="Create the scope if it does not exist."),
    ] = True,
    prefix: Annotated[
        str,
        typer.Option(
            "--prefix",
            "-p",
            help="Name prefix: files are stored as PREFIX/relative/path (e.g. --prefix src).",
        ),
    ] = "",
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            "-x",
            help="Leave out files and directories whose name matches this shell pattern "
            "(repeatable, reported), e.g. `-x .git -x '*.pyc'`.",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            help=f"Files per batch (a batch also closes at {DEFAULT_BATCH_BYTES // 2**20} MiB).",
        ),
    ] = DEFAULT_BATCH_FILES,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit with code 1 if any file was skipped."),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List every skipped and excluded entry.")
    ] = False,
) -> None:
    """Encrypt and store every file under DIR as records of a scope.

    Record names are POSIX paths relative to DIR. Symbolic links are not followed; nothing is
    skipped silently: symlinks, special files and unreadable files are reported with the
    reason. Files are streamed in batches, so memory stays bounded on big trees.

    Example: `keycustody ingest ./repo --scope acme/repos/api -x .git`
    """
    settings = get_settings(ctx)
    out, err = stdout(), stderr()
    report = IngestReport()
    with handle_errors(), open_vault(settings, must_exist=not create) as vault:
        target = vault.scope(
            scope, kek=kek[0] if kek and len(kek) == 1 else kek or None, create=create
        )
        try:
            ingest_tree(
                target,
                directory,
                console=err,
                prefix=prefix,
                exclude=tuple(exclude or ()),
                batch_files=batch_size,
                report=report,
                protect=_vault_files(settings),
                max_file_bytes=vault.max_record_bytes,
            )
        except KeyCustodyError:
            if report.files:
                err.print(
                    f"{plural(report.files, 'file')} ({_mb(report.nbytes)}) were stored before "
                    "the error",
                    soft_wrap=True,
                )
            print_skips(err, report.log, verbose=verbose)
            raise
        summary(
            out,
            f"ingested [bold]{printable(str(directory))}[/bold] into scope "
            f"[bold]{escape(target.path)}[/bold]",
            _ingest_rows(report, vault.kms_calls),
        )
    print_skips(err, report.log, verbose=verbose)
    if strict and report.log.skipped:
        fail(f"{plural(len(report.log.skipped), 'entry', 'entries')} skipped (--strict)", 1)


def looks_binary(data: bytes) -> bool:
    """True unless ``data`` is UTF-8 text without terminal control characters (escapes)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return _CONTROL.search(text) is not None


def _write_private(path: Path, data: bytes) -> None:
    # Decrypted data: a new file is readable by its owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@app.command()
def get(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Record name, e.g. src/app.py.")],
    scope: Annotated[str, typer.Option("--scope", "-s", help="Scope path, e.g. acme.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            help="Write the payload to this file (created 0600) instead of stdout; '-' is stdout.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", "-f", help="Write binary data to stdout even if it is a terminal."
        ),
    ] = False,
) -> None:
    """Decrypt one record and write its bytes to stdout or a file.

    Binary data (or text with terminal control characters) is not written to a terminal
    unless --force is given. A missing record exits with code 3, a tampered one with 4.

    Example: `keycustody get src/app.py --scope acme -o app.py`
    """
    settings = get_settings(ctx)
    with handle_errors():
        with open_vault(settings, must_exist=True) as vault:
            data = vault.scope(scope).get(name)
        if output is None or str(output) == "-":
            if sys.stdout.isatty() and not force and looks_binary(data):
                fail(
                    "refusing to write binary data to a terminal; use -o FILE or --force",
                    EXIT_USAGE,
                )
            stream = typer.get_binary_stream("stdout")
            stream.write(data)
            stream.flush()
        else:
            _write_private(output, data)
            stderr().print(
                f"wrote {len(data):,} bytes to {printable(str(output))}", soft_wrap=True
            )


@app.command("ls")
def list_records(
    ctx: typer.Context,
    scope: Annotated[str, typer.Option("--scope", "-s", help="Scope path, e.g. acme.")],
    prefix: Annotated[
        str, typer.Option("--prefix", "-p", help="Only names starting with this, e.g. src/.")
    ] = "",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print a JSON array of {name, size, key_version, record_id, created_at}.",
        ),
    ] = False,
) -> None:
    """List the records of a scope: name, size, key version and record id.

    Names are stored encrypted; listing decrypts them.

    Example: `keycustody ls --scope acme --prefix src/ --json`
    """
    settings = get_settings(ctx)
    with handle_errors():
        with open_vault(settings, must_exist=True) as vault:
            infos = vault.scope(scope).list(prefix=prefix)
        if as_json:
            rows = [
                {
                    "name": i.name,
                    "size": i.size,
                    "key_version": i.key_version,
                    "record_id": i.record_id,
                    "created_at": i.created_at.isoformat() if i.created_at else None,
                }
                for i in infos
            ]
            typer.echo(json.dumps(rows, indent=1, ensure_ascii=False))
            return
        cells = [
            [f"{i.size:,}", str(i.key_version), i.record_id, terminal_safe(i.name)] for i in infos
        ]
        lines = columns(["size", "version", "record id", "name"], cells, (0, 1))
        lines.append(
            f"{plural(len(infos), 'record')}, {_mb(sum(i.size for i in infos))} in scope "
            f"{terminal_safe(scope)}"
        )
        typer.echo("\n".join(lines))


@app.command()
def demo(
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help=(
                "What to ingest: `stdlib` (the Python standard library, without "
                "site-packages and `__pycache__`), `package` (keycustody's own "
                "installed source) or a directory path (write ./stdlib for a folder of that name)."
            ),
        ),
    ] = "stdlib",
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Keep the demo vault and keys in ./.keycustody-demo/run-TIMESTAMP "
            "instead of a temporary folder that is deleted afterwards.",
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Files per put_many/get_many batch.")
    ] = DEFAULT_BATCH_FILES,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List every skipped and excluded entry.")
    ] = False,
) -> None:
    """Run the whole job end to end on the embedded defaults, with no setup.

    Creates a LocalKMS and a SQLite vault in a fresh folder (ignoring --db and --kms-dir), a
    tenant scope under its own KEK, ingests a real source tree, reads every record back and
    compares it byte for byte, shows that a tampered stored byte is detected, scans the
    database for known plaintext, and prints a summary. Exits non-zero if any check fails.

    Example: `keycustody demo`  or  `keycustody demo --source package --keep`
    """
    from keycustody.cli.demo import DEMO_EXCLUDES, resolve_source, run_demo

    out, err = stdout(), stderr()
    with handle_errors():
        root = resolve_source(source)
        exclude = DEMO_EXCLUDES if source == "stdlib" else ("__pycache__",)
        result = run_demo(
            root, out=out, err=err, keep=keep, batch_files=batch_size, exclude=exclude
        )
        print_skips(err, result.ingest.log, verbose=verbose)
        if not result.ok:
            fail(f"demo failed: {'; '.join(result.failures)}", result.exit_code)


app.command("bench")(bench_command)


kek_app = typer.Typer(
    help="Manage LocalKMS KEKs (key files under --kms-dir) and the KEKs of each tenant "
    "(add, remove, ls --tenant). Cloud KMS keys are created in the cloud provider's own "
    "console or CLI.",
    no_args_is_help=True,
)
app.add_typer(kek_app, name="kek")


@kek_app.command("create")
def kek_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Key name: 1-128 of A-Z a-z 0-9 . _ -")],
) -> None:
    """Create a LocalKMS KEK and print its id (local:NAME).

    Example: `keycustody kek create acme-kek`, then
    `keycustody ingest ./repo --scope acme --kek local:acme-kek`
    """
    settings = get_settings(ctx)
    with handle_errors():
        key_id = LocalKMS(settings.kms_dir).create_key(name)
        typer.echo(key_id)


@kek_app.command("ls")
def kek_list(
    ctx: typer.Context,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", "-t", help="List the KEKs of this tenant (opens the vault)."),
    ] = None,
    all_tenants: Annotated[
        bool,
        typer.Option("--all-tenants", help="List the KEKs of every tenant (opens the vault)."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="With --tenant/--all-tenants: print a JSON array of {tenant, state, keks} "
            "(KEK ids in failover order, primary first).",
        ),
    ] = False,
) -> None:
    """List the LocalKMS KEKs with their state and primary version; with --tenant or
    --all-tenants, the KEKs protecting tenants instead, in failover order (primary first).

    Example: `keycustody --kms-dir ~/kek kek ls`  or  `keycustody kek ls --tenant acme`
    """
    settings = get_settings(ctx)
    with handle_errors():
        if tenant is not None or all_tenants:
            _tenant_keks(settings, tenant, as_json=as_json)
            return
        if as_json:
            raise ConfigError("--json applies to --tenant or --all-tenants")
        kms = LocalKMS(settings.kms_dir)
        table = Table(title=f"LocalKMS {escape(str(settings.kms_dir))}")
        table.add_column("key id", overflow="fold")
        table.add_column("state")
        table.add_column("primary version", justify="right")
        for key_id in kms.list_keys():
            meta = kms.describe_key(key_id)
            table.add_row(escape(key_id), str(meta.get("state")), str(meta.get("primary")))
        stdout().print(table)


def _tenant_keks(settings: Settings, tenant: str | None, *, as_json: bool) -> None:
    with open_vault(settings, must_exist=True) as vault:
        paths = [vault.scope(tenant).path] if tenant else vault.scopes()
        rows = [{"tenant": p, "keks": vault.keks(p)} for p in paths if "/" not in p or tenant]
    if as_json:
        typer.echo(json.dumps(rows, indent=1, ensure_ascii=False))
        return
    table = Table(title="tenant KEKs (failover order)")
    table.add_column("tenant", overflow="fold")
    table.add_column("#", justify="right")
    table.add_column("KEK id", overflow="fold")
    table.add_column("role")
    for row in rows:
        for i, kek in enumerate(row["keks"]):
            table.add_row(
                escape(str(row["tenant"])) if i == 0 else "",
                str(i + 1),
                escape(kek),
                "primary" if i == 0 else "failover",
            )
    stdout().print(table)


TenantOption = Annotated[str, typer.Option("--tenant", "-t", help="Tenant path, e.g. acme.")]
KekArgument = Annotated[
    str, typer.Argument(help="KEK id, e.g. pkcs11:acme-dr, aws:alias/acme or local:acme-2.")
]


def _change_keks(
    ctx: typer.Context,
    tenant: str,
    change: Callable[[Vault], int],
    *,
    status: str,
    title: str,
    counted: str,
) -> None:
    """Opens the vault and runs ``change`` (which returns a count) under the ``status`` line;
    then prints the summary ``title``: the count as ``counted`` and the tenant's KEKs in
    failover order."""
    settings = get_settings(ctx)
    with handle_errors(), open_vault(settings, must_exist=True) as vault:
        with stderr().status(status):
            count = change(vault)
        keks = vault.keks(tenant)
        summary(
            stdout(),
            title,
            [(counted, f"{count:,}"), ("KEKs (failover order)", escape(", ".join(keks)))],
        )


@kek_app.command("add")
def kek_add(ctx: typer.Context, tenant: TenantOption, key_id: KekArgument) -> None:
    """Add a KEK to a tenant (multi-cloud, disaster recovery): every live key version of the
    tenant is wrapped under it too, one unwrap and one wrap per version, records untouched.
    From then on any one of the tenant's KEKs unwraps its keys: the primary first, then the
    others in order (each failover is recorded in the audit trail).

    Example: `keycustody --kms local,pkcs11 kek add --tenant acme pkcs11:acme-dr`
    """
    _change_keks(
        ctx,
        tenant,
        lambda vault: vault.add_kek(tenant, key_id),
        status=f"wrapping the keys of {escape(tenant)} under {escape(key_id)}…",
        title=f"added KEK [bold]{escape(key_id)}[/bold] to tenant [bold]{escape(tenant)}[/bold]",
        counted="key versions wrapped",
    )


@kek_app.command("remove")
def kek_remove(ctx: typer.Context, tenant: TenantOption, key_id: KekArgument) -> None:
    """Remove a KEK from a tenant: its wraps of the tenant's keys are deleted. First checks
    that the remaining KEKs unwrap every live key version (one KMS call each); the last KEK
    cannot be removed (use `keycustody rotate --kek` to move the tenant). Removing the primary
    makes the next KEK the primary. Copies of the database made before keep the removed
    KEK's wraps until that KEK is destroyed in its KMS.

    Example: `keycustody kek remove --tenant acme local:acme-old`
    """
    _change_keks(
        ctx,
        tenant,
        lambda vault: vault.remove_kek(tenant, key_id),
        status=f"checking the remaining KEKs of {escape(tenant)}…",
        title=(
            f"removed KEK [bold]{escape(key_id)}[/bold] from tenant [bold]{escape(tenant)}[/bold]"
        ),
        counted="wraps deleted",
    )


kms_app = typer.Typer(
    help="Check the KMS providers and keys this vault uses (see --kms).", no_args_is_help=True
)
app.add_typer(kms_app, name="kms")


@kms_app.command("check")
def kms_check(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="KEK id, e.g. local:acme-kek or aws:alias/acme.")],
    rounds: Annotated[int, typer.Option(min=1, max=100, help="Round trips to time.")] = 3,
) -> None:
    """Wrap and unwrap a random key under KEY_ID, check it comes back intact, and show the
    latency: can this vault use that KEK right now?

    Example: `keycustody --kms local,aws kms check aws:alias/acme`
    """
    settings = get_settings(ctx)
    with handle_errors():
        registry = ProviderRegistry(kms_providers(settings))
        context = EncryptionContext({"keycustody": "kms-check", "key": key_id})
        timings = []
        for _ in range(rounds):
            key = KeyHandle.generate()
            started = time.perf_counter()
            wrapped = registry.wrap(KeyId(key_id), key, context)
            back = registry.unwrap(wrapped, context)
            timings.append(time.perf_counter() - started)
            original, returned = key.export_secret(), back.export_secret()
            try:
                same = hmac.compare_digest(original, returned)
            finally:
                original[:] = bytes(len(original))
                returned[:] = bytes(len(returned))
            if not same:
                raise IntegrityError(f"{key_id} returned a different key than it wrapped")
        median = sorted(timings)[len(timings) // 2] * 1000
        summary(
            stdout(),
            f"KMS check {escape(key_id)}",
            [
                ("provider", escape(type(registry.provider(key_id)).__name__)),
                ("key version", escape(wrapped.key_version)),
                ("round trips", f"{rounds} ok (wrap + unwrap, context bound)"),
                ("latency", f"median {median:.1f} ms per wrap + unwrap"),
            ],
        )


@kms_app.command("providers")
def kms_providers_command() -> None:
    """List the built-in KMS providers and the installed plugins (entry point group
    keycustody.kms)."""
    for name in plugins.BUILTIN:
        typer.echo(f"{name}\tbuilt-in")
    for name in plugins.plugin_names():
        typer.echo(f"{name}\tplugin")


@app.command("report", rich_help_panel=evidence.PANEL)
def report_command(
    ctx: typer.Context,
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            "-s",
            help="Report only this scope and its subtree, e.g. acme (the audit chain is "
            "still verified whole).",
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            file_okay=False,
            help="Folder for report.html and report.json (created if missing; the two "
            "files are replaced atomically).",
        ),
    ] = Path("keycustody-report"),
    include_names: Annotated[
        bool,
        typer.Option(
            "--include-names",
            help="Also decrypt and list every record name (the files are then created "
            "readable by their owner only). Off by default: the report holds no name.",
        ),
    ] = False,
) -> None:
    """Write a key custody evidence pack: report.html (one offline page) and report.json.

    Shows the scope tree with each scope's key versions and states, each tenant's KEK, a
    timeline of key events, records per key version, the audit chain verification, every
    erasure certificate with its phase, usage per scope and the security settings, under a
    plain-language summary. No key material, wrapped key or record name is in it. The page
    carries the SHA-256 of report.json and the audit head (check them with `sha256sum` and
    `keycustody audit verify --expect-head`). Exits 4 if the audit trail does not verify
    (the report is still written, and says where it breaks).

    Example: `keycustody report --scope acme -o evidence/acme-2026-11`
    """
    from keycustody.report import write_report

    settings = get_settings(ctx)
    with handle_errors():
        with open_vault(settings, must_exist=True) as vault:
            paths = write_report(vault, output, scope=scope, include_names=include_names)
        color = {"green": "green", "amber": "yellow", "red": "bold red"}.get(paths.status, "")
        summary(
            stdout(),
            f"key custody report written to [bold]{printable(str(output))}[/bold]",
            [
                ("report.html", printable(str(paths.html))),
                ("report.json", printable(str(paths.json))),
                ("report.json sha256", paths.json_sha256),
                ("audit head", paths.audit_head),
                ("status", f"[{color}]{paths.status.upper()}[/{color}]: {escape(paths.headline)}"),
            ],
        )
        if not paths.audit_ok:
            fail(
                "the audit trail does NOT verify (the report shows the first broken link)",
                exit_code(IntegrityError("not verified")),
            )


# Registration of the command groups that live in their own modules.
keys.register(app)
evidence.register(app)
