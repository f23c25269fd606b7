"""Key custody reports: a self-contained evidence pack for a vault or one scope's subtree.

:func:`write_report` writes two files into a folder: ``report.json`` (the facts,
machine-readable; see :mod:`keycustody.report.facts`) and ``report.html`` (the same facts as
one offline HTML page with an inline SVG timeline; see :mod:`keycustody.report.html`). The
page carries the SHA-256 of report.json and the audit trail's head hash, so a reviewer can
check both against the files and against ``keycustody audit verify --expect-head``.

Example::

    from keycustody.report import write_report

    paths = write_report(vault, "evidence/2026-11", scope="acme")
    print(paths.html, paths.json_sha256)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from keycustody.durable import fsync_dir
from keycustody.errors import OutputError
from keycustody.report.facts import REPORT_FORMAT, ReportFacts, gather
from keycustody.report.html import render

if TYPE_CHECKING:
    from keycustody.vault import Vault

HTML_NAME = "report.html"
JSON_NAME = "report.json"


@dataclass(frozen=True, slots=True)
class ReportPaths:
    """What :func:`write_report` wrote, and the facts a reviewer checks it by."""

    html: Path
    json: Path
    json_sha256: str
    """SHA-256 (hex) of the report.json bytes, also printed in report.html."""
    audit_head: str
    """``SEQ:HASH`` of the audit trail's last verified event (for ``--expect-head``)."""
    audit_ok: bool
    """Whether the whole audit trail verified."""
    status: str
    """green, amber or red (see the summary in the report)."""
    headline: str


def report_json(facts: ReportFacts) -> bytes:
    """The exact bytes of report.json for ``facts`` (UTF-8, indented, stable key order)."""
    return (json.dumps(facts, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _write_all(folder: Path, files: dict[str, bytes], mode: int) -> None:
    """Writes every file to a temporary name first, then renames them into place: a failure
    leaves any earlier report untouched and no temporary file behind."""
    temps: dict[str, Path] = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            temps[name] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for name, tmp in temps.items():
            os.replace(tmp, folder / name)
        fsync_dir(folder)
    except OSError as exc:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise OutputError(
            f"cannot write the report to {str(folder)!r}: {exc.strerror or exc}"
        ) from exc


def write_report(
    vault: Vault,
    out_dir: str | os.PathLike[str],
    *,
    scope: str | None = None,
    include_names: bool = False,
) -> ReportPaths:
    """Writes the key custody report of ``vault`` into ``out_dir`` (created if missing).

    The files are replaced atomically (temporary file, fsync, rename). They hold no key
    material and no wrapped key; record names only with ``include_names`` (then both files
    are created readable by their owner only).

    Args:
        vault: An open vault.
        out_dir: Folder for report.html and report.json.
        scope: Report only this scope and its subtree (the audit chain is verified whole).
        include_names: Decrypt and list every record name of the ACTIVE scopes.

    Returns:
        The paths written, the SHA-256 of report.json and the audit head.

    Raises:
        NotFoundError: ``scope`` does not exist.
        OutputError: the folder or a file cannot be written (nothing is half-written).
        AuditError: the audit trail could not be read.
        StorageError: the database failed (the driver's message only).
    """
    facts = gather(vault, scope=scope, include_names=include_names)
    data = report_json(facts)
    digest = hashlib.sha256(data).hexdigest()
    page = render(facts, json_sha256=digest).encode()
    folder = Path(out_dir)
    _write_all(folder, {JSON_NAME: data, HTML_NAME: page}, 0o600 if include_names else 0o644)
    audit = facts["audit"]
    return ReportPaths(
        html=folder / HTML_NAME,
        json=folder / JSON_NAME,
        json_sha256=digest,
        audit_head=f"{audit['head_seq']}:{audit['head_hash']}",
        audit_ok=audit["ok"],
        status=facts["summary"]["status"],
        headline=facts["summary"]["headline"],
    )


__all__ = ["HTML_NAME", "JSON_NAME", "REPORT_FORMAT", "ReportPaths", "gather", "write_report"]
