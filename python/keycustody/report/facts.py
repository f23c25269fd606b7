"""The facts of a key custody report, gathered from an open vault (:func:`gather`).

Every number comes from the database or the audit trail, read through the same library calls
the ``keys``, ``usage``, ``erasures`` and ``audit`` commands use; record counts are SQL
aggregates (``GROUP BY scope, key version``), so a report never loads the records themselves.
The result is plain JSON-ready data (str, int, bool, None, lists and dicts) and holds no key
material, wrapped key, record id or record name (names only with ``include_names``).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypedDict
from urllib.parse import urlsplit

from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from keycustody.errors import KeyCustodyError
from keycustody.keys import lineage
from keycustody.keys.hierarchy import kek_lists
from keycustody.keys.shredding import verify_certificate
from keycustody.keys.states import (
    ACTIVE,
    COMPROMISED,
    CONFIRMED,
    DEACTIVATED,
    DESTROYED,
    SCHEDULED,
    SHREDDED,
    SUSPENDED,
)
from keycustody.kms.local import LocalKMS
from keycustody.kms.pkcs11 import Pkcs11KMS
from keycustody.kms.registry import key_prefix
from keycustody.storage.engine import raises_storage_errors
from keycustody.storage.models import ScopeKeyRow, ScopeKeyWrapRow, ScopeRow
from keycustody.storage.repository import in_chunks
from keycustody.usage import ScopeUsage, _subject_scope
from keycustody.validation import check_path
from keycustody.wording import plural

if TYPE_CHECKING:
    from keycustody.vault import Vault

REPORT_FORMAT: Final = "keycustody-custody-report/v1"
"""Value of ``format`` in report.json; changes when a key's meaning changes."""

OK: Final = "ok"
WARN: Final = "warn"
BAD: Final = "bad"
STATUS_OF_LEVEL: Final = {OK: "green", WARN: "amber", BAD: "red"}
"""Summary status colour by the worst level of its points."""

TIMELINE_KINDS: Final[dict[str, str]] = {
    "scope.create": "created",
    "key.rotate": "rotated",
    "kek.rotate": "kek_rotated",
    "kek.add": "kek_added",
    "kek.remove": "kek_removed",
    "kek.failover": "kek_failover",
    "key.rewrap": "rewrapped",
    "key.reencrypt": "reencrypted",
    "key.compromise": "compromised",
    "key.destroy": "destroyed",
    "scope.suspend": "suspended",
    "scope.resume": "resumed",
    "scope.shred": "shredded",
    "erasure.certificate": "certified",
    "erasure.phase2": "phase2",
}
"""Audit actions drawn on the timeline, and the event kind each one is."""

_DETAIL_KEYS: Final = (
    "certificate",
    "reason",
    "from",
    "key_versions",
    "versions",
    "records",
    "child_keys",
    "destroyed",
    "scopes",
    "key_versions_destroyed",
    "keks",
    "used",
    "passed_over",
    "tampered_wrap",
)
"""Audit details a timeline event carries (counts, versions, ids and the operator's reason)."""

_SYNCHRONOUS: Final = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
_AWS_ARN: Final = re.compile(r"arn:aws[\w-]*:kms:([\w-]+):(\d+):(?:key|alias)/.+")


class AuditFacts(TypedDict):
    """The audit chain verification (the whole trail, whatever the scope filter)."""

    ok: bool
    events_checked: int
    head_seq: int
    head_hash: str
    first_break: dict[str, Any] | None
    """``{"seq", "reason"}`` of the first broken link, or None."""


class KekFacts(TypedDict):
    """A tenant's KEK: where it lives and which of its versions wrap live keys."""

    id: str
    provider: str
    """The key id's prefix: ``local``, ``aws``, ``azure``, ``pkcs11`` or a plugin's."""
    location: str
    versions_in_use: list[str]
    """KEK versions wrapping the tenant's live (not DESTROYED) key versions."""
    kms_state: dict[str, Any] | None
    """LocalKMS only (read from its key directory, no KMS call): state and versions."""


class TenantFacts(TypedDict):
    """A top-level scope and its KEKs."""

    tenant: str
    state: str
    kek: KekFacts | None
    """The primary KEK (tried first)."""
    keks: list[KekFacts]
    """Every KEK of the tenant in failover order, the primary first: any one unwraps."""


class ScopeFacts(TypedDict):
    """One scope of the tree with its key versions and record counts."""

    path: str
    parent: str | None
    tenant: str
    depth: int
    state: str
    created_at: str
    state_changed_at: str
    active_version: int
    erasure_certificate: str | None
    records: int
    records_derived: int
    """Records whose DEK hangs below another record's (they have no key version)."""
    bytes: int
    key_versions: list[dict[str, Any]]
    names: list[dict[str, Any]] | None
    """With ``include_names`` only: ``{"name", "key_version", "size"}`` of every record."""
    names_note: str | None


class TimelineEvent(TypedDict):
    """A key lifecycle event from the audit trail."""

    seq: int
    at: str
    action: str
    kind: str
    scope: str
    key_version: int | None
    kms_key_id: str | None
    kms_key_version: str | None
    outcome: str
    actor: str
    details: dict[str, Any]


class CertificateFacts(TypedDict):
    """An erasure certificate, its phase status and its binding into the audit trail."""

    certificate_id: str
    scope: str
    tenant: str
    reason: str
    requested: str | None
    phase1_completed: str | None
    records_unreadable: int
    scopes_erased: int
    key_versions_destroyed: int
    phase2: dict[str, Any]
    storage_scrub: dict[str, Any] | None
    forensic_scan: dict[str, Any]
    read_check: dict[str, Any]
    kek_destruction: dict[str, Any] | None
    residual_risk: list[str]
    sha256: str
    audit_seq: int | None
    audit_event_hash: str | None
    verified: bool
    verification: str


class SummaryPoint(TypedDict):
    """One line of the summary, with its level (ok, warn, bad)."""

    level: str
    text: str


class SummaryFacts(TypedDict):
    """The plain-language summary at the top of the report."""

    status: str
    """green, amber or red: the worst level of the points."""
    headline: str
    points: list[SummaryPoint]
    records: int
    records_protected: int
    records_shredded: int
    tenants: int
    scopes: int
    key_versions: dict[str, int]
    erasures: dict[str, int]


class ReportFacts(TypedDict):
    """Everything report.json holds, in this key order."""

    format: str
    generated_at: str
    generator: str
    vault_id: str
    database: dict[str, Any]
    scope: str | None
    include_names: bool
    summary: SummaryFacts
    audit: AuditFacts
    tenants: list[TenantFacts]
    scopes: list[ScopeFacts]
    timeline: list[TimelineEvent]
    certificates: list[CertificateFacts]
    usage: list[dict[str, Any]]
    config: dict[str, Any]


def iso(at: datetime) -> str:
    """ISO-8601 in UTC (``2026-11-26T10:00:00.123456+00:00``), as ``keys --json`` prints."""
    return at.astimezone(UTC).isoformat()


def _in(path: str, root: str | None) -> bool:
    return root is None or path == root or path.startswith(root + "/")


# -- tenants and KEKs ---------------------------------------------------------------------


def kek_location(vault: Vault, kek_id: str) -> str:
    """Where a KEK lives, in words, from its id and the provider serving it (no KMS call)."""
    try:
        provider = vault._registry.provider(kek_id)
    except KeyCustodyError:
        return "no provider for this key id is configured in the process that made the report"
    prefix = key_prefix(kek_id)
    target = kek_id[len(prefix) + 1 :]
    if isinstance(provider, LocalKMS):
        return f"LocalKMS key file directory {provider.path.resolve()} (on this host)"
    if isinstance(provider, Pkcs11KMS):
        return f"PKCS#11 token {provider.token_label!r} (module {provider.lib_path})"
    if prefix == "aws":
        if m := _AWS_ARN.fullmatch(target):
            return f"AWS KMS, region {m.group(1)}, account {m.group(2)}"
        return f"AWS KMS, {provider!r}"
    if prefix == "azure":
        host = urlsplit(target).hostname
        return f"Azure Key Vault {host}" if host else "Azure Key Vault"
    return f"{type(provider).__name__} (KMS plugin)"


def _kms_state(vault: Vault, kek_id: str) -> dict[str, Any] | None:
    try:
        provider = vault._registry.provider(kek_id)
    except KeyCustodyError:
        return None
    if not isinstance(provider, LocalKMS):
        return None
    try:
        meta = provider.describe_key(kek_id)
    except KeyCustodyError as exc:
        return {"state": "unknown", "error": type(exc).__name__}
    versions = meta.get("versions") or {}
    return {
        "state": meta.get("state"),
        "primary_version": str(meta.get("primary")),
        "versions": {
            str(v): str(entry.get("state")) for v, entry in sorted(versions.items(), key=_vkey)
        },
    }


def _vkey(item: tuple[str, Any]) -> tuple[int, str]:
    version = item[0]
    return (int(version), version) if str(version).isdigit() else (1 << 62, str(version))


def _tenants(vault: Vault, rows: list[Any]) -> list[TenantFacts]:
    tenants = [r for r in rows if r.parent_id is None]
    in_use: dict[tuple[bytes, str], set[str]] = {}
    with vault._read() as s:
        for ids in in_chunks(t.id for t in tenants):
            for scope_id, kek_id, version in [
                *s.execute(
                    select(ScopeKeyRow.scope_id, ScopeKeyRow.kek_id, ScopeKeyRow.kek_version)
                    .where(
                        ScopeKeyRow.scope_id.in_(ids),
                        ScopeKeyRow.state != DESTROYED,
                        ScopeKeyRow.kek_version.is_not(None),
                    )
                    .distinct()
                ).all(),
                *s.execute(
                    select(
                        ScopeKeyWrapRow.scope_id,
                        ScopeKeyWrapRow.kek_id,
                        ScopeKeyWrapRow.kek_version,
                    )
                    .where(ScopeKeyWrapRow.scope_id.in_(ids))
                    .distinct()
                ).all(),
            ]:
                in_use.setdefault((scope_id, str(kek_id)), set()).add(str(version))
        lists = kek_lists(s, [(t.id, t.kek_id) for t in tenants])
    # Once per KEK, not per tenant: tenants often share one, and a KMS answers each ask.
    kek_ids = sorted({kek_id for keks in lists.values() for kek_id in keks})
    locations = {kek_id: kek_location(vault, kek_id) for kek_id in kek_ids}
    kms_states = {kek_id: _kms_state(vault, kek_id) for kek_id in kek_ids}
    out: list[TenantFacts] = []
    for t in tenants:
        keks: list[KekFacts] = [
            {
                "id": kek_id,
                "provider": key_prefix(kek_id),
                "location": locations[kek_id],
                "versions_in_use": sorted(
                    in_use.get((t.id, kek_id), set()), key=lambda v: (len(v), v)
                ),
                "kms_state": kms_states[kek_id],
            }
            for kek_id in lists[t.id]
        ]
        out.append(
            {"tenant": t.path, "state": t.state, "kek": keks[0] if keks else None, "keks": keks}
        )
    return out


# -- scopes ---------------------------------------------------------------------------------


def _names(
    vault: Vault, path: str, blocked: tuple[str, str] | None
) -> tuple[list[dict[str, Any]] | None, str]:
    # Checked here first: a refused listing would be recorded as a denied access.
    if blocked is not None:
        where, state = blocked
        scope = "the scope" if where == path else f"scope {where}"
        return None, f"names not listed: {scope} is {state}"
    try:
        infos = vault.scope(path).list()
    except KeyCustodyError as exc:
        return None, f"names not listed: {type(exc).__name__}"
    names = [{"name": i.name, "key_version": i.key_version, "size": i.size} for i in infos]
    return names, f"{len(names):,} names decrypted for this report (--include-names)"


def _scopes(
    vault: Vault,
    rows: list[Any],
    selected: list[Any],
    usage: dict[str, ScopeUsage],
    include_names: bool,
) -> list[ScopeFacts]:
    by_id = {r.id: r for r in rows}
    versions = lineage.all_key_versions(vault)
    out: list[ScopeFacts] = []
    for r in selected:
        tenant = r
        while tenant.parent_id is not None:
            tenant = by_id[tenant.parent_id]
        infos = versions.get(r.path, [])
        used = usage.get(r.path)
        records = used.records if used is not None else 0
        names, note = (None, None)
        if include_names:
            names, note = _names(vault, r.path, _blocked(r, by_id))
        out.append(
            {
                "path": r.path,
                "parent": by_id[r.parent_id].path if r.parent_id is not None else None,
                "tenant": tenant.path,
                "depth": r.path.count("/"),
                "state": r.state,
                "created_at": iso(_aware(r.created_at)),
                "state_changed_at": iso(_aware(r.state_changed_at)),
                "active_version": r.active_version,
                "erasure_certificate": r.erasure_certificate,
                "records": records,
                "records_derived": records - sum(i.records for i in infos),
                "bytes": used.bytes if used is not None else 0,
                "key_versions": [
                    {k: v for k, v in i.to_dict().items() if k != "scope"} for i in infos
                ],
                "names": names,
                "names_note": note,
            }
        )
    return out


def _blocked(row: Any, by_id: dict[bytes, Any]) -> tuple[str, str] | None:
    """The nearest scope, this one or an ancestor, that is not ACTIVE: (path, state)."""
    while row is not None:
        if row.state != ACTIVE:
            return row.path, row.state
        row = by_id.get(row.parent_id) if row.parent_id is not None else None
    return None


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


# -- audit trail: verification and key events ----------------------------------------------


def _timeline(vault: Vault, paths: set[str]) -> list[TimelineEvent]:
    out: list[TimelineEvent] = []
    for e in vault.audit.events():
        kind = TIMELINE_KINDS.get(e.action)
        if kind is None:
            continue
        scope = _subject_scope(e.subject)
        if scope not in paths:
            continue
        _, sep, version = e.subject.partition("#")
        details = e.details_dict()
        out.append(
            {
                "seq": e.seq,
                "at": iso(e.at),
                "action": e.action,
                "kind": kind,
                "scope": scope,
                "key_version": int(version) if sep and version.isdigit() else None,
                "kms_key_id": e.kms_key_id,
                "kms_key_version": e.kms_key_version,
                "outcome": e.outcome,
                "actor": e.actor,
                "details": {k: details[k] for k in _DETAIL_KEYS if k in details},
            }
        )
    return out


def _certificates(vault: Vault, paths: set[str], trail: Any) -> list[CertificateFacts]:
    out: list[CertificateFacts] = []
    for c in vault.certificates():
        doc = c.document
        what, how, when = doc.get("what", {}), doc.get("how", {}), doc.get("when", {})
        if not paths.intersection(what.get("subtree") or [what.get("scope")]):
            continue
        verification = doc.get("verification", {})
        scan = verification.get("forensic_scan", {})
        integrity = doc.get("integrity") or {}
        try:
            ok, why = verify_certificate(vault, doc, trail=trail)
        except KeyCustodyError as exc:
            ok, why = False, f"could not be checked: {type(exc).__name__}"
        phase2 = when.get("phase2") or {}
        out.append(
            {
                "certificate_id": c.id,
                "scope": str(what.get("scope")),
                "tenant": str(what.get("tenant")),
                "reason": str(what.get("reason")),
                "requested": when.get("requested"),
                "phase1_completed": when.get("phase1_completed"),
                "records_unreadable": c.records_unreadable,
                "scopes_erased": len(what.get("subtree") or []),
                "key_versions_destroyed": len(what.get("key_versions_destroyed") or []),
                "phase2": {
                    "status": c.phase2_status,
                    "scheduled_at": phase2.get("scheduled_at"),
                    "confirmed_at": phase2.get("confirmed_at"),
                    "events": [str(e) for e in phase2.get("events") or []],
                },
                "storage_scrub": how.get("storage_scrub"),
                "forensic_scan": {
                    "performed": scan.get("performed"),
                    "values_searched": scan.get("values_searched", 0),
                    "files": len(scan.get("files") or []),
                    "hits": scan.get("hits", 0),
                },
                "read_check": verification.get("sample", {}),
                "kek_destruction": how.get("kek_destruction"),
                "residual_risk": [str(r) for r in doc.get("residual_risk") or []],
                "sha256": c.sha256,
                "audit_seq": integrity.get("audit_seq"),
                "audit_event_hash": integrity.get("audit_event_hash"),
                "verified": ok,
                "verification": why,
            }
        )
    return out


# -- configuration --------------------------------------------------------------------------


def storage_settings(dialect: str, query: Callable[[str], object]) -> dict[str, Any]:
    """The database settings erasure and durability depend on, read from the live database.

    Args:
        dialect: The engine's dialect name (``sqlite``, ``postgresql``, ...).
        query: Runs one SQL statement and returns the first column of its first row.
    """
    if dialect == "sqlite":
        secure = query("PRAGMA secure_delete")
        synchronous = query("PRAGMA synchronous")
        return {
            "backend": "sqlite",
            "secure_delete": "ON" if secure else "OFF",
            "journal_mode": str(query("PRAGMA journal_mode")).upper(),
            "synchronous": _SYNCHRONOUS.get(synchronous, str(synchronous))
            if isinstance(synchronous, int)
            else str(synchronous),
            "scrub_on_shred": "secure_delete overwrites freed cells; then "
            "PRAGMA wal_checkpoint(TRUNCATE) empties the WAL into the main file",
        }
    if dialect == "postgresql":
        settings: dict[str, Any] = {"backend": "postgresql"}
        for name in ("server_version", "wal_level", "archive_mode", "full_page_writes", "fsync"):
            try:
                settings[name] = str(query(f"SHOW {name}"))
            except SQLAlchemyError:
                settings[name] = "unavailable"
        settings["scrub_on_shred"] = (
            "VACUUM FULL scope_keys, scope_key_wraps rewrites the key tables and unlinks the "
            "old files; deleted "
            "rows survive in pg_wal, WAL archives, replicas and base backups until phase 2 "
            "destroys the old KEK version"
        )
        return settings
    return {"backend": dialect, "scrub_on_shred": "as recorded in each erasure certificate"}


def _config(vault: Vault, certificates: list[CertificateFacts]) -> dict[str, Any]:
    engine = vault._engine

    def query(sql: str) -> object:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()

    storage = storage_settings(engine.dialect.name, query)
    scrubs = [c["storage_scrub"] for c in certificates if c["storage_scrub"]]
    storage["last_scrub"] = scrubs[-1] if scrubs else None
    period = vault.rotation_period
    return {
        "source": "the settings of the process that generated this report",
        "cache_ttl_s": vault._keys.cache.ttl,
        "max_key_uses": vault._keys.cache.max_uses,
        "revalidate_s": vault._keys.revalidate_s,
        "rotation_period_s": period.total_seconds() if period is not None else None,
        "max_record_bytes": vault.max_record_bytes,
        "audit_kek": vault.audit_kek,
        "kms_providers": {
            prefix: type(p).__name__ for prefix, p in sorted(vault._registry.providers().items())
        },
        "storage": storage,
    }


# -- summary --------------------------------------------------------------------------------


def _summary(
    scopes: list[ScopeFacts],
    tenants: list[TenantFacts],
    audit: AuditFacts,
    certificates: list[CertificateFacts],
    storage: dict[str, Any],
    timeline: list[TimelineEvent] | None = None,
) -> SummaryFacts:
    live = [s for s in scopes if s["state"] != SHREDDED]
    tenant_kek = {t["tenant"]: t["kek"] for t in tenants}
    protected = sum(s["records"] for s in live if tenant_kek.get(s["tenant"]) is not None)
    total = sum(s["records"] for s in scopes)
    shredded = total - sum(s["records"] for s in live)
    states: Counter[str] = Counter(
        v["state"] for s in scopes for v in s["key_versions"] if v["state"]
    )
    phases: Counter[str] = Counter(c["phase2"]["status"] for c in certificates)
    points: list[SummaryPoint] = []

    keks = {k["id"] for t in tenants for k in t["keks"]}
    providers = {k["provider"] for t in tenants for k in t["keks"]}
    unprotected = sum(s["records"] for s in live) - protected
    if unprotected:
        verb = "has" if unprotected == 1 else "have"
        points.append(
            {"level": BAD, "text": f"{plural(unprotected, 'record')} {verb} no tenant KEK"}
        )
    else:
        points.append(
            {
                "level": OK,
                "text": f"{plural(protected, 'record')} in {plural(len(live), 'live scope')} "
                f"are protected by {plural(len(keks), 'customer-held KEK')} "
                f"({', '.join(sorted(providers)) or 'none'})",
            }
        )
    if audit["ok"]:
        points.append(
            {
                "level": OK,
                "text": f"the audit trail verifies: {plural(audit['events_checked'], 'event')}"
                f", head {audit['head_seq']}:{audit['head_hash'][:16]}…",
            }
        )
    else:
        brk = audit["first_break"] or {}
        points.append(
            {
                "level": BAD,
                "text": f"the audit trail is BROKEN at event {brk.get('seq')}: "
                f"{brk.get('reason')}",
            }
        )
    compromised = sum(
        v["records"] for s in scopes for v in s["key_versions"] if v["state"] == COMPROMISED
    )
    if compromised:
        points.append(
            {
                "level": BAD,
                "text": f"{plural(compromised, 'record')} under a COMPROMISED key version "
                "await re-encryption",
            }
        )
    failovers = [e for e in timeline or [] if e["kind"] == "kek_failover"]
    tampered = [e for e in failovers if e["details"].get("tampered_wrap")]
    if failovers:
        points.append(
            {
                "level": BAD if tampered else WARN,
                "text": f"{plural(len(failovers), 'key unwrap')} failed over to another "
                "KEK of the tenant (a KEK was unavailable"
                + (
                    f"; {len(tampered):,} because a stored wrap did NOT authenticate: "
                    "tampered or corrupt key material in the database"
                    if tampered
                    else ""
                )
                + ")",
            }
        )
    suspended = [s for s in scopes if s["state"] == SUSPENDED]
    if suspended:
        points.append(
            {
                "level": WARN,
                "text": f"{plural(len(suspended), 'scope is', 'scopes are')} suspended "
                f"({', '.join(s['path'] for s in suspended)}): nothing below "
                f"{'it' if len(suspended) == 1 else 'them'} encrypts or decrypts",
            }
        )
    deactivated = sum(
        v["records"] for s in live for v in s["key_versions"] if v["state"] == DEACTIVATED
    )
    if deactivated:
        points.append(
            {
                "level": OK,
                "text": f"{plural(deactivated, 'record')} still under DEACTIVATED key versions "
                "(decrypt only; a rewrap moves them to the active version)",
            }
        )
    erasures = ""
    if certificates:
        pending = len(certificates) - phases[CONFIRMED] - phases[SCHEDULED]
        parts = [f"{plural(phases[CONFIRMED], 'erasure')} completed"]
        if phases[SCHEDULED]:
            parts.append(f"{phases[SCHEDULED]:,} pending the KMS waiting period")
        if pending:
            parts.append(f"{pending:,} awaiting phase 2 (backups can still unwrap)")
        erasures = ", ".join(parts)
        level = OK if phases[CONFIRMED] == len(certificates) else WARN
        points.append({"level": level, "text": erasures})
        if shredded:
            points.append(
                {
                    "level": OK,
                    "text": f"{plural(shredded, 'record')} in shredded scopes can never be "
                    "decrypted again",
                }
            )
        unverified = [c["certificate_id"] for c in certificates if not c["verified"]]
        if unverified:
            points.append(
                {
                    "level": BAD,
                    "text": f"{plural(len(unverified), 'certificate')} do not verify against "
                    f"the audit trail: {', '.join(unverified)}",
                }
            )
        hits = sum(int(c["forensic_scan"]["hits"] or 0) for c in certificates)
        if hits:
            points.append(
                {
                    "level": BAD,
                    "text": f"forensic scans found {plural(hits, 'destroyed key value')} "
                    "still in the database files",
                }
            )
    if storage.get("backend") == "sqlite" and storage.get("secure_delete") != "ON":
        points.append(
            {"level": BAD, "text": "SQLite secure_delete is OFF: deleted key bytes may remain"}
        )

    worst = BAD if any(p["level"] == BAD for p in points) else OK
    if worst == OK and any(p["level"] == WARN for p in points):
        worst = WARN
    headline = (
        f"All {plural(protected, 'live record')} are protected by customer-held keys"
        if not unprotected
        else f"{unprotected:,} of {total:,} records are not protected by a tenant KEK"
    )
    if erasures:
        headline += "; " + erasures
    if not audit["ok"]:
        headline += "; the audit trail does NOT verify"
    return {
        "status": STATUS_OF_LEVEL[worst],
        "headline": headline,
        "points": points,
        "records": total,
        "records_protected": protected,
        "records_shredded": shredded,
        "tenants": len(tenants),
        "scopes": len(scopes),
        "key_versions": dict(sorted(states.items())),
        "erasures": dict(sorted(phases.items())),
    }


# -- entry point ----------------------------------------------------------------------------


@raises_storage_errors("gathering the report")  # it reads the database directly too
def gather(
    vault: Vault,
    *,
    scope: str | None = None,
    include_names: bool = False,
    now: datetime | None = None,
) -> ReportFacts:
    """The facts of a key custody report of ``vault`` (or of one scope's subtree).

    The audit chain is always verified whole; everything else is restricted to ``scope``
    and the scopes below it (certificates: those whose erased subtree meets it).

    Args:
        vault: An open vault.
        scope: Restrict the report to this scope and its subtree (e.g. ``acme``).
        include_names: Decrypt and list the record names of every ACTIVE scope (the
            report then holds plaintext names; off by default).
        now: The report's time (default: now).

    Raises:
        NotFoundError: ``scope`` does not exist.
        AuditError: the audit trail could not be read.
        StorageError: the database failed (the driver's message only).
    """
    from keycustody import __version__  # here: the package imports the vault module

    root = vault.scope(check_path(scope)).path if scope is not None else None
    with vault._read() as s:
        rows = [
            r
            for r in s.execute(
                select(
                    ScopeRow.id,
                    ScopeRow.path,
                    ScopeRow.parent_id,
                    ScopeRow.kek_id,
                    ScopeRow.state,
                    ScopeRow.active_version,
                    ScopeRow.created_at,
                    ScopeRow.state_changed_at,
                    ScopeRow.erasure_certificate,
                ).order_by(ScopeRow.path)
            ).all()
        ]
    selected = [r for r in rows if _in(r.path, root)]
    paths = {r.path for r in selected}
    report = vault.audit.verify()
    audit: AuditFacts = {
        "ok": report.ok,
        "events_checked": report.events_checked,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "first_break": None
        if report.ok
        else {"seq": report.first_bad_seq, "reason": report.reason},
    }
    usage = {u.scope: u for u in vault.usage() if u.scope in paths}
    scopes = _scopes(vault, rows, selected, usage, include_names)
    # The tenants at the top of the selection (for a child scope: the one whose KEK protects it).
    tenant_paths = {p.split("/", 1)[0] for p in paths}
    tenants = _tenants(vault, [r for r in rows if r.parent_id is None and r.path in tenant_paths])
    certificates = _certificates(vault, paths, report)
    config = _config(vault, certificates)
    timeline = _timeline(vault, paths)
    return {
        "format": REPORT_FORMAT,
        "generated_at": iso(now or datetime.now(UTC)),
        "generator": f"keycustody {__version__}",
        "vault_id": vault.id,
        "database": {
            "backend": vault._engine.dialect.name,
            "url": vault._engine.url.render_as_string(hide_password=True),
        },
        "scope": root,
        "include_names": include_names,
        "summary": _summary(scopes, tenants, audit, certificates, config["storage"], timeline),
        "audit": audit,
        "tenants": tenants,
        "scopes": scopes,
        "timeline": timeline,
        "certificates": certificates,
        "usage": [_usage_dict(u) for u in usage.values()],
        "config": config,
    }


def _usage_dict(u: ScopeUsage) -> dict[str, Any]:
    return dataclasses.asdict(u)
