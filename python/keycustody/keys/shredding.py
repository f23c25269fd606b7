"""Crypto-shredding with proof: destroy keys, scrub storage, issue an erasure certificate.

Phase 1 (:func:`shred`) destroys every key version of a scope and its subtree in one
transaction (kill -9 leaves all or nothing; a rerun completes the rest), purges key caches in
every process (epoch bump), scrubs the SQLite files (``secure_delete=ON`` overwrote the freed
cells; a ``wal_checkpoint(TRUNCATE)`` empties the WAL) and scans them for the destroyed wrapped
keys. Its cost depends on the number of keys, never on the number of records: records are
only counted, and purged later (:func:`purge`).

Phase 2 (:func:`complete_erasures`) makes the erasure hold for every copy of the database,
backups included: the keys above the shredded scope are re-keyed up to the KEK (new ancestor
versions, surviving children and records rewrapped), the KEK gets a new version, and the old
KEK versions are destroyed in the KMS, somewhere the database never was. Many pending erasures
share one pass.

KMSs that destroy only whole keys, after a waiting period (AWS KMS, Azure Key Vault: the
:class:`~keycustody.kms.base.KeyDestroyer` contract), cannot lose one version of a key. There
phase 2 moves every surviving tenant of the old KMS key to a key the customer made (named in
``new_keks``, or, for an AWS alias, the key the alias now points at), checks that nothing in the
vault is still wrapped by the old key, and schedules its destruction. The certificate then says
``scheduled`` with the provider's date (``not_before_purge``); the KMS refuses the key at once,
and a later :func:`complete_erasures` asks the KMS whether the destruction is final
(``confirmed``) or was cancelled (``cancelled``: AWS CancelKeyDeletion, Azure recover, through
:func:`cancel_erasure` or outside keycustody). Every schedule, confirmation and cancellation is an
audit event, and every change of the certificate is bound into the audit trail again.

The certificate follows NIST SP 800-88r1 §4.8 (who, what, how, when, verification) and is bound
into the audit trail: its SHA-256 is in the audit event that records it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from keycustody import derived
from keycustody.errors import (
    ConcurrentRotationError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
    ShreddedError,
)
from keycustody.keys import filescan, rotation
from keycustody.keys.hierarchy import ScopeRef, bump_epoch, load_scope, tenant_keks
from keycustody.keys.states import (
    CANCELLED,
    CONFIRMED,
    DESTROYED,
    PENDING,
    SCHEDULED,
    SHREDDED,
)
from keycustody.kms import base as kms
from keycustody.kms.base import Destruction, KeyDestroyer
from keycustody.kms.registry import key_prefix
from keycustody.storage.models import (
    AuditKeyRow,
    ErasureCertificateRow,
    RecordRow,
    ScopeKeyRow,
    ScopeKeyWrapRow,
    ScopeRow,
    TenantKekRow,
)
from keycustody.storage.repository import in_chunks

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from keycustody.audit.events import AuditReport
    from keycustody.vault import Vault

CERTIFICATE_FORMAT = "keycustody-erasure-certificate/v1"
_SCAN_CHUNK = 1 << 20


@runtime_checkable
class KeyVersionDestroyer(Protocol):
    """A KMS provider that can add a KEK version and destroy old ones (LocalKMS; PKCS#11)."""

    def rotate_key(self, key_id: str) -> str: ...

    def destroy_key(self, key_id: str, version: str | None = None) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def canonical(document: dict[str, Any]) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace) of a certificate without its seal."""
    body = {k: v for k, v in document.items() if k != "integrity"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class ErasureCertificate:
    """A signed-off record of a crypto-shred (NIST SP 800-88r1 sanitization record).

    ``document`` is the whole certificate; ``sha256`` is the digest of its canonical JSON
    (everything but the ``integrity`` section), which the audit trail records.
    """

    document: dict[str, Any]

    @property
    def id(self) -> str:
        """Certificate id."""
        return str(self.document["certificate_id"])

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the canonical JSON, as bound into the audit trail."""
        return hashlib.sha256(canonical(self.document)).hexdigest()

    @property
    def records_unreadable(self) -> int:
        """Records made unreadable."""
        return int(self.document["what"]["records_unreadable"])

    @property
    def phase2_status(self) -> str:
        """pending, scheduled, confirmed or cancelled."""
        return str(self.document["when"]["phase2"]["status"])

    @property
    def not_before_purge(self) -> str | None:
        """While phase 2 is scheduled: when the KMS destroys the old key for good (ISO UTC)."""
        value = self.document["when"]["phase2"].get("not_before_purge")
        return None if value is None else str(value)

    def summary(self) -> dict[str, Any]:
        """The facts that list a certificate: id, scope, tenant, request time, records made
        unreadable and phase 2 status (as ``keycustody erasures ls --json`` prints them)."""
        doc = self.document
        return {
            "certificate_id": self.id,
            "scope": doc["what"]["scope"],
            "tenant": doc["what"]["tenant"],
            "requested": doc["when"]["requested"],
            "records_unreadable": self.records_unreadable,
            "phase2": self.phase2_status,
            "phase2_not_before_purge": self.not_before_purge,
            "phase2_confirmed_at": doc["when"]["phase2"].get("confirmed_at"),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """The certificate as JSON text."""
        return json.dumps(self.document, indent=indent, sort_keys=True, ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        """Writes the certificate to ``path`` as JSON."""
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")


def subtree(session: Session, root: ScopeRef) -> list[ScopeRow]:
    """The scope and all its descendants, parents first: a level at a time (a scope per data
    subject can give a tenant tens of thousands of children), each level by path."""
    level = [row for row in [session.get(ScopeRow, root.id)] if row is not None]
    out: list[ScopeRow] = []
    while level:
        out += level
        level = sorted(
            (
                row
                for ids in in_chunks(r.id for r in level)
                for row in session.scalars(select(ScopeRow).where(ScopeRow.parent_id.in_(ids)))
            ),
            key=lambda row: row.path,
        )
    return out


def _database_files(vault: Vault) -> list[Path]:
    database = vault._engine.url.database if vault._engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        return []
    main = Path(database)
    return [p for p in (main, *(Path(f"{main}{s}") for s in ("-wal", "-shm", "-journal")))]


def _scrub(vault: Vault) -> dict[str, Any]:
    """Empties the SQLite WAL into the (securely deleted) main file; on PostgreSQL rewrites
    the key table without its dead rows."""
    if vault._engine.dialect.name == "postgresql":
        return _scrub_postgres(vault)
    if vault._engine.dialect.name != "sqlite":
        return {"backend": vault._engine.dialect.name, "performed": "none"}
    with vault._engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)  # noqa: S101 - SQLite dialect
        secure = raw.execute("PRAGMA secure_delete").fetchone()[0]
        journal = raw.execute("PRAGMA journal_mode").fetchone()[0]
        busy, log, moved = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return {
        "backend": "sqlite",
        "secure_delete": "ON" if secure else "OFF",
        "journal_mode": journal,
        "checkpoint": "wal_checkpoint(TRUNCATE)",
        "checkpoint_complete": not busy,
        "wal_frames": log,
        "frames_checkpointed": moved,
    }


PG_SCRUB_TIMEOUT = "30s"
"""How long the PostgreSQL scrub waits for readers of the key table before it gives up (the
shred itself has committed; a later shred or purge scrubs again)."""


def _scrub_postgres(vault: Vault) -> dict[str, Any]:
    """``VACUUM FULL`` of the key table: PostgreSQL copies the live rows into a new file and
    unlinks the old one, so destroyed wrapped keys leave the table's heap (a plain VACUUM only
    marks their space reusable: measured, 70 of 1,000 deleted values stayed, TESTPLAN §2).
    WAL is another matter: what the certificate says about it is in ``wal``."""
    result: dict[str, Any] = {
        "backend": "postgresql",
        "command": "VACUUM FULL scope_keys, scope_key_wraps",
        "wal": "the destroyed rows stay in WAL segments until the server recycles them, and in "
        "WAL archives, replicas and base backups until those expire; they hold the scope "
        "keys wrapped by the tenant's KEK, so phase 2 (destroying the old KEK version) is "
        "what makes them unreadable",
    }
    try:
        with vault._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"SET lock_timeout = '{PG_SCRUB_TIMEOUT}'")
            conn.exec_driver_sql("VACUUM FULL scope_keys, scope_key_wraps")
    except SQLAlchemyError as exc:
        # The shred has committed and the keys are destroyed; only the heap rewrite failed.
        result["performed"] = False
        result["why"] = (
            f"VACUUM FULL did not run: {type(getattr(exc, 'orig', None) or exc).__name__}"
        )
        return result
    result["performed"] = True
    return result


def _not_scanned(why: str) -> dict[str, Any]:
    """The certificate's ``forensic_scan`` of a scan that did not run: why, and nothing found
    claimed."""
    return {"performed": False, "why": why, "values_searched": 0, "files": [], "hits": 0}


def _scan(files: Iterable[Path], needles: list[bytes]) -> dict[str, Any]:
    """Searches the files for each needle and each 16-byte half, in a child process
    (:mod:`keycustody.keys.filescan` says why); a scan that cannot run says so instead."""
    request = {
        "files": [str(p) for p in files],
        "needles": [n.hex() for n in needles],
        "chunk": _SCAN_CHUNK,
    }
    try:
        child = subprocess.run(  # noqa: S603 (this interpreter, a module of ours, JSON on stdin)
            [sys.executable, "-I", "-S", filescan.__file__],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        return _not_scanned(
            f"the scanner process could not start ({sys.executable}): {exc.strerror}"
        )
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or [""])[-1][:300]
        return _not_scanned(
            f"the scanner process failed with exit code {child.returncode}: {last}"
        )
    found = json.loads(child.stdout)
    return {
        "performed": True,
        "method": "byte search for every destroyed wrapped key, whole and 16-byte halves",
        "values_searched": len(needles),
        "files": found["files"],
        "hits": found["hits"],
    }


def shred(
    vault: Vault, path: str, reason: str, *, destroy_kek: bool = False
) -> ErasureCertificate:
    """See :meth:`keycustody.Vault.shred`."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInputError("a shred needs a reason (the request reference, e.g. a ticket)")
    with vault._read() as s:
        ref = load_scope(s, path)
        if destroy_kek and ref.parent_id is not None:
            raise ConfigError(
                "destroy_kek applies to shredding a whole tenant, not a child scope; "
                "nothing was changed"
            )
        existing = _certificate_for(s, ref)
        if existing is not None and existing.document["how"]["storage_scrub"]:
            return existing  # idempotent: already shredded and certified
        scopes = subtree(s, ref)
        ids = [r.id for r in scopes]
        path_of = {r.id: r.path for r in scopes}
        keys = [
            k
            for chunk in in_chunks(ids)
            for k in s.scalars(select(ScopeKeyRow).where(ScopeKeyRow.scope_id.in_(chunk)))
        ]
        # The wraps of tenant key versions by the tenant's other KEKs die with them.
        extra: dict[tuple[bytes, int], list[ScopeKeyWrapRow]] = {}
        for chunk in in_chunks(ids):
            for w in s.scalars(
                select(ScopeKeyWrapRow)
                .where(ScopeKeyWrapRow.scope_id.in_(chunk))
                .order_by(ScopeKeyWrapRow.kek_id)
            ):
                extra.setdefault((w.scope_id, w.version), []).append(w)
        needles = [k.wrapped for k in keys if k.wrapped is not None] + [
            w.wrapped for ws in extra.values() for w in ws
        ]
        destroyed = [
            {
                "scope": path_of[k.scope_id],
                "version": k.version,
                "state_before": k.state,
                "wrapped_by": (
                    f"kek:{k.kek_id}#{k.kek_version}"
                    if k.kek_id
                    else f"parent scope key v{k.parent_version}"
                ),
            }
            | (
                {
                    "also_wrapped_by": [
                        f"kek:{w.kek_id}#{w.kek_version}" for w in extra[(k.scope_id, k.version)]
                    ]
                }
                if (k.scope_id, k.version) in extra
                else {}
            )
            for k in keys
            if k.state != DESTROYED or existing is not None
        ]
        counts = {
            scope_id: count
            for chunk in in_chunks(ids)
            for scope_id, count in s.execute(
                select(RecordRow.scope_id, func.count())
                .where(RecordRow.scope_id.in_(chunk))
                .group_by(RecordRow.scope_id)
            )
        }
        tenant = scopes[0] if ref.parent_id is None else _tenant(s, ref)
        keks = tenant_keks(s, tenant.id, tenant.kek_id)
        kek_versions: dict[str, set[str]] = {}
        for k in keys:
            if k.kek_id and k.kek_version:
                kek_versions.setdefault(k.kek_id, set()).add(k.kek_version)
        for w in (w for ws in extra.values() for w in ws):
            kek_versions.setdefault(w.kek_id, set()).add(w.kek_version)
    certificate_id = existing.id if existing else f"ec-{secrets.token_hex(8)}"
    now = _now()
    if existing is None:
        with vault._write() as s, s.begin():
            current = s.get(ScopeRow, ref.id)
            if current is not None and current.erasure_certificate is not None:
                # Another worker shredded it meanwhile: its certificate is the one.
                certificate_id = current.erasure_certificate
                existing = _certificate_for(s, ref)
        if existing is not None and existing.document["how"]["storage_scrub"]:
            return existing
    if existing is None:
        with vault._write() as s, s.begin():
            listed = {(k.scope_id, k.version) for k in keys}
            for chunk in in_chunks(ids):
                # The scope rows first: on PostgreSQL their locks hold off a rotation, which
                # updates its scope's row, until this commits.
                s.execute(
                    update(ScopeRow)
                    .where(ScopeRow.id.in_(chunk))
                    .values(
                        state=SHREDDED, state_changed_at=now, erasure_certificate=certificate_id
                    )
                )
                live = ScopeKeyRow.scope_id.in_(chunk), ScopeKeyRow.state != DESTROYED
                found = s.execute(select(ScopeKeyRow.scope_id, ScopeKeyRow.version).where(*live))
                if not {(i, v) for i, v in found} <= listed:
                    raise ConcurrentRotationError(
                        "a key version was created in this subtree during the shred; "
                        "nothing was changed: rerun it"
                    )
                # Every key version of a scope at once (an UPDATE per version took 19 s of
                # a 30 s shred of 10,000 scopes); the metadata stays as evidence.
                s.execute(
                    update(ScopeKeyRow)
                    .where(*live)
                    .values(state=DESTROYED, state_changed_at=now, destroyed_at=now, wrapped=None)
                )
                s.execute(delete(ScopeKeyWrapRow).where(ScopeKeyWrapRow.scope_id.in_(chunk)))
            # Every scope read is SHREDDED now: a live child of one was created since.
            for chunk in in_chunks(ids):
                late = select(ScopeRow.id).where(
                    ScopeRow.parent_id.in_(chunk), ScopeRow.state != SHREDDED
                )
                if s.execute(late.limit(1)).first() is not None:
                    raise ConcurrentRotationError(
                        "a scope was created in this subtree during the shred; "
                        "nothing was changed: rerun it"
                    )
            rotation.lineage_event(
                s,
                ref.id,
                "shredded",
                count=sum(counts.values()),
                at=now,
                details={"certificate": certificate_id, "reason": reason},
            )
            vault._audit_change(
                s,
                "scope.shred",
                ref.path,
                details={
                    "certificate": certificate_id,
                    "reason": reason,
                    "scopes": len(ids),
                    "key_versions_destroyed": len(destroyed),
                },
            )
            epoch = bump_epoch(s)
        vault._keys.changed(epoch)
    scrub = _scrub(vault)
    if vault._engine.dialect.name != "sqlite":
        scan = _not_scanned(
            "the database files live on the database server, out of this client's reach; the "
            "server's operator can search its heap and WAL for the destroyed keys"
        )
    elif needles or existing is None:
        scan = _scan(_database_files(vault), needles)
    else:
        scan = _not_scanned(
            "the keys were destroyed by an interrupted run of this shred; their wrapped values "
            "were not kept (keeping them would defeat the erasure), so there was nothing to "
            "search for"
        )
    sample = _verify_sample(vault, ref, scopes)
    kek_result = _destroy_keks(vault, tenant, ref, keks, kek_versions) if destroy_kek else None
    by_scope = {r.path: int(counts.get(r.id, 0)) for r in scopes}
    document = _document(
        vault,
        certificate_id,
        ref,
        reason,
        now,
        scopes,
        destroyed,
        by_scope,
        tenant,
        scrub,
        scan,
        sample,
        kek_result,
        keks,
    )
    return _store(vault, document, "erasure.certificate")


def _tenant(s: Session, ref: ScopeRef) -> ScopeRow:
    row = s.get(ScopeRow, ref.id)
    while row is not None and row.parent_id is not None:
        row = s.get(ScopeRow, row.parent_id)
    if row is None:
        raise NotFoundError("the tenant of this scope is missing")
    return row


def _verify_sample(vault: Vault, ref: ScopeRef, scopes: list[ScopeRow]) -> dict[str, Any]:
    """Checks, through the key hierarchy (fresh state, no cache), that no shredded scope's key
    can be used any more. Not through the audited read path: a routine shred must not look
    like denied accesses in the trail."""
    tried = refused = 0
    with vault._read() as s:
        vault._keys.revalidate(s, force=True)
        for row in scopes[:20]:
            tried += 1
            try:
                vault._keys.check_usable(s, ScopeRef.of(row))
            except ShreddedError:
                refused += 1
    return {
        "method": "sampling: the key path of every shredded scope (up to 20) is refused",
        "tried": tried,
        "refused_with_shredded_error": refused,
        "result": "pass" if tried == refused else "FAIL",
    }


def _users_of(s: Session, kek: str, but: bytes) -> int:
    """How many live tenants other than ``but`` have ``kek`` in their KEK list."""
    primary = s.scalars(
        select(ScopeRow.id).where(
            ScopeRow.kek_id == kek, ScopeRow.id != but, ScopeRow.state != SHREDDED
        )
    ).all()
    extra = s.scalars(
        select(TenantKekRow.scope_id)
        .join(ScopeRow, ScopeRow.id == TenantKekRow.scope_id)
        .where(
            TenantKekRow.kek_id == kek, TenantKekRow.scope_id != but, ScopeRow.state != SHREDDED
        )
    ).all()
    return len(set(primary) | set(extra))


def _destroy_keks(
    vault: Vault,
    tenant: ScopeRow,
    ref: ScopeRef,
    keks: list[str],
    versions: dict[str, set[str]],
) -> dict[str, Any]:
    """``destroy_kek`` for every KEK of the tenant, as far as each provider allows. With one
    KEK the result is that KEK's; with several, a summary with each one's under ``keks``."""
    if ref.parent_id is not None:
        raise ConfigError("destroy_kek applies to shredding a whole tenant, not a child scope")
    results = [_destroy_kek(vault, tenant, kek, versions.get(kek, set())) for kek in keks]
    if len(results) == 1:
        return results[0]
    out: dict[str, Any] = {
        "kek": ", ".join(keks),
        "destroyed": all(r.get("destroyed") for r in results),
        "at": _iso(_now()),
        "call": "per KEK, see keks",
        "keks": results,
    }
    why = "; ".join(f"{r['kek']}: {r['why']}" for r in results if r.get("why"))
    if why:
        out["why"] = why
    destructions = [d for r in results for d in r.get("destructions") or []]
    if destructions:
        out["destructions"] = destructions
    return out


def _destroy_kek(vault: Vault, tenant: ScopeRow, kek: str, versions: set[str]) -> dict[str, Any]:
    with vault._read() as s:
        others = _users_of(s, kek, tenant.id)
    if others:
        return {"kek": kek, "destroyed": False, "why": f"shared with {others} other tenant(s)"}
    provider = vault._registry.provider(kek)
    if kek == vault.audit_kek:
        return {"kek": kek, "destroyed": False, "why": "it also protects the audit trail"}
    if isinstance(provider, KeyDestroyer):
        return _schedule_kek_destruction(vault, provider, kek, versions)
    if not isinstance(provider, KeyVersionDestroyer):
        return {"kek": kek, "destroyed": False, "why": "the provider cannot destroy keys"}
    provider.destroy_key(kek)
    return {
        "kek": kek,
        "destroyed": True,
        "at": _iso(_now()),
        "call": "destroy_key (all versions)",
    }


def _schedule_kek_destruction(
    vault: Vault, provider: KeyDestroyer, kek: str, versions: set[str]
) -> dict[str, Any]:
    """``destroy_kek`` with a KMS that destroys whole keys (maybe after a waiting period);
    ``versions``: the KEK versions that wrapped the tenant's keys."""
    keys = sorted(
        str(k)
        for k in {provider.key_of(kek, v) for v in versions if v} or {provider.key_of(kek, "")}
    )
    users = _live_users(vault, keys)
    if users:
        return {
            "kek": kek,
            "destroyed": False,
            "why": f"the KMS key also protects {', '.join(users)}",
        }
    destructions = [_schedule(vault, provider, key, reason="destroy_kek") for key in keys]
    return {
        "kek": kek,
        "destroyed": all(d.state == kms.DESTROYED for d in destructions),
        "at": _iso(_now()),
        "call": "schedule_destruction (the whole KMS key)",
        "destructions": [_destruction_entry(d, _iso(_now())) for d in destructions],
    }


def _document(
    vault: Vault,
    certificate_id: str,
    ref: ScopeRef,
    reason: str,
    at: datetime,
    scopes: list[ScopeRow],
    destroyed: list[dict[str, Any]],
    by_scope: dict[str, int],
    tenant: ScopeRow,
    scrub: dict[str, Any],
    scan: dict[str, Any],
    sample: dict[str, Any],
    kek_result: dict[str, Any] | None,
    keks: list[str],
) -> dict[str, Any]:
    from keycustody import __version__  # here: the package imports this module

    kek_destroyed = bool(kek_result and kek_result.get("destroyed"))
    residual = [
        "Record rows (ciphertext and wrapped DEKs) stay in the database until "
        "`keycustody purge`; without the destroyed keys they cannot be decrypted.",
        "Database backups, replicas, snapshots and WAL archives made before this shred still "
        "hold the destroyed scope keys wrapped by the tenant's KEK; whoever holds that KEK "
        "could unwrap them from such a copy until phase 2 destroys the old KEK version.",
        "SSD wear levelling and file-system snapshots may keep old pages; they hold only "
        "ciphertext and wrapped keys.",
    ]
    if kek_destroyed:
        residual[1] = (
            "The tenant's KEK was destroyed in the KMS, so backups of the database can no "
            "longer be decrypted either."
        )
    document: dict[str, Any] = {
        "format": CERTIFICATE_FORMAT,
        "certificate_id": certificate_id,
        "who": {"operator": vault.actor, "role": "keycustody operator", "approver": None},
        "what": {
            "vault_id": vault.id,
            "tenant": tenant.path,
            "scope": ref.path,
            "subtree": [r.path for r in scopes],
            "reason": reason,
            "key_versions_destroyed": destroyed,
            "kek": {"id": tenant.kek_id, "provider": (tenant.kek_id or ":").split(":")[0]},
            "keks": [{"id": k, "provider": k.split(":")[0]} for k in keks],
            "records_unreadable": sum(by_scope.values()),
            "records_by_scope": by_scope,
            "backups": "unknown to keycustody: the operator must list backups and replicas",
        },
        "how": {
            "method_type": "Purge",
            "technique": "Cryptographic Erase by key destruction",
            "tool": f"keycustody {__version__}",
            "key_strength": "AES-256",
            "precondition": (
                "every record was stored encrypted (AES-256-GCM under a per-record DEK); "
                "keycustody writes no plaintext payload, name or key to the database"
            ),
            "storage_scrub": scrub,
            "kek_destruction": kek_result,
        },
        "when": {
            "requested": _iso(at),
            "phase1_completed": _iso(_now()),
            "phase2": {
                "status": CONFIRMED if kek_destroyed else PENDING,
                "scheduled_at": None,
                "confirmed_at": kek_result.get("at") if kek_destroyed and kek_result else None,
                "events": [],
            },
        },
        "verification": {"sample": sample, "forensic_scan": scan},
        "residual_risk": residual,
    }
    if (
        kek_result
        and kek_result.get("destructions")
        and all(
            r.get("destroyed") or r.get("destructions")
            for r in kek_result.get("keks", [kek_result])
        )
    ):
        # Every KEK is destroyed or scheduled: phase 2 waits on the scheduled ones only.
        phase2 = document["when"]["phase2"]
        phase2["destructions"] = kek_result["destructions"]
        phase2["scheduled_at"] = kek_result.get("at")
        _summarize(document)
    return document


def _store(vault: Vault, document: dict[str, Any], action: str) -> ErasureCertificate:
    """Binds the certificate into the audit trail and stores it (insert or update)."""
    certificate = ErasureCertificate(document)
    digest = certificate.sha256
    with vault._write() as s, s.begin():
        event = vault.audit.append(
            s,
            action=action,
            subject=document["what"]["scope"],
            details={"certificate": certificate.id, "sha256": digest},
        )
        document["integrity"] = {
            "sha256": digest,
            "audit_seq": event.seq,
            "audit_event_hash": event.hash.hex(),
        }
        text = certificate.to_json(indent=None)
        row = s.get(ErasureCertificateRow, certificate.id)
        if row is None:
            s.add(
                ErasureCertificateRow(
                    id=certificate.id,
                    scope_path=document["what"]["scope"],
                    created_at=_now(),
                    phase2_status=certificate.phase2_status,
                    body=text,
                    sha256=digest,
                )
            )
        else:
            row.body, row.sha256, row.phase2_status = text, digest, certificate.phase2_status
    return certificate


def _certificate_for(s: Session, ref: ScopeRef) -> ErasureCertificate | None:
    row = s.get(ScopeRow, ref.id)
    if row is None or row.erasure_certificate is None:
        return None
    cert = s.get(ErasureCertificateRow, row.erasure_certificate)
    if cert is None:
        # Keys destroyed, certificate not written yet (a crash between): the rerun writes it.
        return ErasureCertificate(
            {"certificate_id": row.erasure_certificate, "how": {"storage_scrub": None}}
        )
    return ErasureCertificate(json.loads(cert.body))


def certificates(vault: Vault) -> list[ErasureCertificate]:
    """Every erasure certificate, oldest first."""
    with vault._read() as s:
        rows = s.scalars(
            select(ErasureCertificateRow).order_by(ErasureCertificateRow.created_at)
        ).all()
        return [ErasureCertificate(json.loads(r.body)) for r in rows]


def verify_certificate(
    vault: Vault, document: object, *, trail: AuditReport | None = None
) -> tuple[bool, str]:
    """Checks a certificate against the audit trail: its digest is the one the trail recorded
    for it, and the trail itself verifies. Returns ``(ok, why)``; never raises on a malformed
    document (that is a failed verification).

    ``trail`` is a verification of the whole trail made just before (checking many
    certificates then verifies the chain once, not once per certificate)."""
    if not isinstance(document, dict):
        return False, "malformed certificate: not a JSON object"
    certificate = ErasureCertificate(document)
    integrity = document.get("integrity")
    seq = integrity.get("audit_seq") if isinstance(integrity, dict) else None
    if not isinstance(integrity, dict) or not isinstance(document.get("certificate_id"), str):
        return False, "malformed certificate: no integrity section or certificate id"
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < 2**62:
        return False, "malformed certificate: audit_seq is not a positive integer"
    try:
        digest = certificate.sha256
    except (TypeError, ValueError) as exc:
        return False, f"malformed certificate: {type(exc).__name__}"
    if integrity.get("sha256") != digest:
        return False, "the certificate was modified: its SHA-256 does not match its seal"
    event = next((e for e in vault.audit.events(since=seq - 1) if e.seq == seq), None)
    if event is None:
        return False, f"the audit trail has no event {seq}"
    details = event.details_dict()
    if details.get("certificate") != certificate.id or details.get("sha256") != certificate.sha256:
        return False, f"audit event {seq} does not record this certificate's digest"
    if event.hash.hex() != integrity.get("audit_event_hash"):
        return False, f"audit event {seq} is not the one the certificate names"
    report = vault.audit.verify() if trail is None else trail
    if not report.ok:
        return False, f"the audit trail is broken at event {report.first_bad_seq}: {report.reason}"
    return True, f"bound to audit event {seq}; trail verified ({report.events_checked} events)"


# -- phase 2 ------------------------------------------------------------------------------


def complete_erasures(
    vault: Vault,
    new_keks: dict[str, str] | None = None,
    *,
    include_cancelled: bool = False,
) -> list[ErasureCertificate]:
    """See :meth:`keycustody.Vault.complete_erasures`."""
    replacements = dict(new_keks or {})
    everything = certificates(vault)
    pending = [c for c in everything if c.phase2_status == PENDING]
    if replacements and not pending:
        raise InvalidInputError("new_keks was given, but no erasure awaits phase 2")
    updated: dict[str, ErasureCertificate] = {}
    scheduled = [c for c in everything if c.phase2_status == SCHEDULED]
    if scheduled:
        updated.update((c.id, c) for c in _check_scheduled(vault, scheduled))
    cancelled = [c for c in everything if c.phase2_status == CANCELLED]
    if include_cancelled and cancelled:
        updated.update((c.id, c) for c in _reschedule(vault, cancelled))
    if pending:
        updated.update((c.id, c) for c in _complete_pending(vault, pending, replacements))
    return list(updated.values())


def _kek_versions(s: Session, kek: str) -> set[str]:
    """Every version of ``kek`` that wraps (or, per metadata, wrapped) a tenant key here."""
    primary = s.scalars(
        select(ScopeKeyRow.kek_version).where(
            ScopeKeyRow.kek_id == kek, ScopeKeyRow.kek_version.is_not(None)
        )
    )
    extra = s.scalars(select(ScopeKeyWrapRow.kek_version).where(ScopeKeyWrapRow.kek_id == kek))
    return {v for v in [*primary, *extra] if v}


def _destroyed_versions(cert: ErasureCertificate, kek: str) -> set[str]:
    """The versions of ``kek`` that wrapped the keys this erasure destroyed (its metadata)."""
    out: set[str] = set()
    for k in cert.document["what"]["key_versions_destroyed"]:
        for wrap in [k["wrapped_by"], *k.get("also_wrapped_by", [])]:
            if str(wrap).startswith(f"kek:{kek}#"):
                out.add(str(wrap).rpartition("#")[2])
    return out


def _tenants_using(s: Session, kek: str) -> list[ScopeRow]:
    """The live tenants that have ``kek`` in their KEK list."""
    extra = select(TenantKekRow.scope_id).where(TenantKekRow.kek_id == kek)
    return list(
        s.scalars(
            select(ScopeRow).where(
                ScopeRow.parent_id.is_(None),
                (ScopeRow.kek_id == kek) | ScopeRow.id.in_(extra),
                ScopeRow.state != SHREDDED,
            )
        ).all()
    )


def _complete_pending(
    vault: Vault, pending: list[ErasureCertificate], replacements: dict[str, str]
) -> list[ErasureCertificate]:
    done: list[ErasureCertificate] = []
    keks: dict[str, set[str]] = {}  # KEK id -> versions to destroy
    rekeyed: dict[str, list[str]] = {}
    with vault._read() as s:
        for cert in pending:
            scope = load_scope(s, cert.document["what"]["scope"])
            chain = _ancestors(s, scope)
            rekeyed[cert.id] = [a.path for a in chain]
    # Every KEK the erasure's tenant had when shredded is retired (a rerun after a crash
    # finds the tenant on its new KEKs already). KMSs that destroy whole keys: who moves
    # where, checked before anything changes.
    cert_keks = {c.id: _cert_keks(c) for c in pending}
    cloud = {c.id: [k for k in cert_keks[c.id] if _destroys_whole_keys(vault, k)] for c in pending}
    retirements = _plan_retirements(vault, pending, cloud, replacements)
    # Re-key every ancestor, bottom-up, once (shared by all pending erasures).
    seen: set[str] = set()
    for cert in pending:
        with vault._read() as s:
            chain = _ancestors(s, load_scope(s, cert.document["what"]["scope"]))
        for ancestor in chain:
            if ancestor.path in seen:
                continue
            seen.add(ancestor.path)
            rotation.rotate_key(vault, ancestor)
            rotation.rewrap(vault, ancestor)
    # Every ancestor version that ever wrapped a shredded key must be gone now; a COMPROMISED
    # one (re-encryption pending) survives the re-key, and would leave backups readable.
    with vault._read() as s:
        survivors = [
            f"{path}#{version} ({state})"
            for path in sorted(seen)
            for version, state in s.execute(
                select(ScopeKeyRow.version, ScopeKeyRow.state)
                .join(ScopeRow, ScopeRow.id == ScopeKeyRow.scope_id)
                .where(ScopeRow.path == path, ScopeKeyRow.state.not_in(["ACTIVE", DESTROYED]))
            ).all()
        ]
    if survivors:
        raise InvalidInputError(
            "phase 2 is blocked: these ancestor key versions must be destroyed first (run "
            f"reencrypt on their scopes): {', '.join(survivors)}; nothing was confirmed"
        )
    # The KEKs that wrapped any tenant key of these erasures: new version, rewrap, destroy old.
    with vault._read() as s:
        for cert in pending:
            for kek in cert_keks[cert.id]:
                if kek in cloud[cert.id]:
                    continue
                keks.setdefault(kek, set()).update(_kek_versions(s, kek))
                # Versions of destroyed tenant keys still name their KEK version in metadata.
                keks[kek].update(_destroyed_versions(cert, kek))
    events: dict[str, list[str]] = {}
    destructions = {kek: _retire(vault, plan) for kek, plan in retirements.items()}
    for kek, versions in keks.items():
        if kek == vault.audit_kek:
            raise ConfigError("a tenant shares the audit KEK; phase 2 would destroy the evidence")
        provider = vault._registry.provider(kek)
        if not isinstance(provider, KeyVersionDestroyer):
            raise ConfigError(
                f"phase 2 needs a KMS that destroys keys or key versions; the provider of "
                f"{kek!r} can do neither, so the erasure stays pending"
            )
        try:
            new_version = provider.rotate_key(kek)
        except ShreddedError:
            # The whole KEK is already destroyed (a tenant shred with destroy_kek): nothing
            # it ever wrapped can be unwrapped again, which is what phase 2 is for.
            events.setdefault(kek, []).append(f"{kek} already destroyed in the KMS")
            continue
        with vault._read() as s:
            tenants = _tenants_using(s, kek)
        for t in tenants:
            rotation.rotate_kek(vault, ScopeRef.of(t), kek, old=kek)
        for version in sorted(versions - {new_version}):
            try:
                provider.destroy_key(kek, version)
            except NotFoundError:
                continue
            events.setdefault(kek, []).append(f"{kek} version {version} destroyed")
    confirmed = _iso(_now())
    for cert in pending:
        document = dict(cert.document)
        document["when"] = dict(document["when"])
        local_events = [
            e for k in cert_keks[cert.id] if k not in cloud[cert.id] for e in events.get(k, [])
        ]
        if cloud[cert.id]:
            gone = [d for k in cloud[cert.id] for d in destructions[k]]
            document["when"]["phase2"] = {
                "status": SCHEDULED,
                "scheduled_at": confirmed,
                "confirmed_at": None,
                "ancestors_rekeyed": rekeyed[cert.id],
                "tenants_moved": {
                    label: target
                    for k in cloud[cert.id]
                    for label, target in retirements[k].moved().items()
                },
                "destructions": [_destruction_entry(d, confirmed) for d in gone],
                "events": [f"{d.key_id}: {d.event}" for d in gone] + local_events,
            }
            _summarize(document)
            document.pop("integrity", None)
            done.append(_store(vault, document, "erasure.phase2"))
            continue
        document["when"]["phase2"] = {
            "status": CONFIRMED,
            "scheduled_at": confirmed,
            "confirmed_at": confirmed,
            "ancestors_rekeyed": rekeyed[cert.id],
            "events": local_events,
        }
        document["residual_risk"] = [
            r for r in document["residual_risk"] if "phase 2" not in r.lower()
        ] + [
            "Phase 2 confirmed: the KEK versions that wrapped the destroyed keys no longer "
            "exist, so no copy of the database (backups included) can unwrap them."
        ]
        document.pop("integrity", None)
        done.append(_store(vault, document, "erasure.phase2"))
    return done


# -- phase 2 with KMSs that destroy whole keys (AWS KMS, Azure Key Vault) ----------------


@dataclass(frozen=True, slots=True)
class _Retirement:
    """What phase 2 does for one tenant KEK whose KMS destroys only whole keys."""

    kek: str
    provider: KeyDestroyer
    keys: list[str]
    """The whole KMS keys that wrapped the tenant keys (``key_of`` ids): to be destroyed."""
    moves: list[tuple[str, str, str, bool]]
    """``(surviving tenant path, its KEK on the old key, the KEK it moves to, whether that
    is the tenant's primary KEK)``."""

    def moved(self) -> dict[str, str]:
        """The moves for the certificate: by tenant path (``path (old KEK)`` for a KEK that
        is not the tenant's primary)."""
        return {(p if primary else f"{p} ({old})"): t for p, old, t, primary in self.moves}


def _plan_retirements(
    vault: Vault,
    pending: list[ErasureCertificate],
    cloud: dict[str, list[str]],
    replacements: dict[str, str],
) -> dict[str, _Retirement]:
    """For each KEK of these erasures whose provider destroys whole keys (``cloud``, by
    certificate id): which keys go, and where their surviving tenants move. Raises before
    anything changes when a tenant has nowhere to go, or ``new_keks`` names something phase 2
    does not need."""
    plans: dict[str, _Retirement] = {}
    missing: list[str] = []
    suggest: list[str] = []
    used: set[str] = set()
    with vault._read() as s:
        keks: dict[str, set[str]] = {}
        for cert in pending:
            for kek in cloud.get(cert.id, []):
                if kek == vault.audit_kek:
                    raise ConfigError(
                        "a tenant shares the audit KEK; phase 2 would destroy the evidence"
                    )
                versions = keks.setdefault(kek, set())
                versions.update(_kek_versions(s, kek))
                versions.update(_destroyed_versions(cert, kek))
    for kek, versions in sorted(keks.items()):
        provider = vault._registry.provider(kek)
        assert isinstance(provider, KeyDestroyer)  # noqa: S101 - filtered above
        keys = sorted(
            str(k)
            for k in {provider.key_of(kek, v) for v in versions} or {provider.key_of(kek, "")}
        )
        moves: list[tuple[str, str, str, bool]] = []
        with vault._read() as s:
            live = _live_scopes(vault, s, keys)
            rows = [(s.get(ScopeRow, scope_id), entries) for scope_id, entries in live.items()]
            lists = {
                row.id: tenant_keks(s, row.id, row.kek_id) for row, _ in rows if row is not None
            }
        for row, entries in rows:
            if row is None or row.parent_id is not None:
                continue
            for current in sorted(entries):
                target = replacements.get(current) or (
                    replacements.get(row.path) if len(entries) == 1 else None
                )
                if target is not None:
                    used.update(k for k in (row.path, current) if k in replacements)
                elif (
                    key_prefix(current) == key_prefix(kek)
                    and provider.key_of(current, "") not in keys
                ):
                    target = current  # e.g. an AWS alias pointed at a new key (UpdateAlias)
                if target is None:
                    missing.append(f"{row.path} (KEK {current})")
                    # new_keks is keyed by tenant path, or by KEK id for a tenant with
                    # several KEKs on the old key.
                    suggest.append(row.path if len(entries) == 1 else current)
                    continue
                destroyer = vault._registry.provider(target)
                if isinstance(destroyer, KeyDestroyer) and destroyer.key_of(target, "") in keys:
                    raise ConfigError(
                        f"the new KEK {target!r} for tenant {row.path!r} is the KMS key that "
                        "phase 2 must destroy; name a different key; nothing was changed"
                    )
                if target != current and target in lists[row.id]:
                    raise ConfigError(
                        f"the new KEK {target!r} for tenant {row.path!r} already protects it; "
                        f"name another key, or remove {current!r} from the tenant "
                        "(remove_kek); nothing was changed"
                    )
                moves.append((row.path, current, target, current == row.kek_id))
        plans[kek] = _Retirement(kek, provider, keys, moves)
    if missing:
        first = suggest[0]
        raise ConfigError(
            "phase 2 must destroy KMS key(s) "
            f"{', '.join(k for p in plans.values() for k in p.keys)}, and AWS KMS and Azure "
            "Key Vault destroy whole keys only (never one version), but these tenants still "
            f"use them: {', '.join(missing)}. Create a new key in your KMS and name it: "
            f"vault.complete_erasures(new_keks={{'{first}': 'aws:arn:...' or "
            f"'azure:https://...'}}) or `keycustody erasures complete --new-kek "
            f"{first}=KEK-ID`; for an AWS alias, pointing the alias at the new key "
            "(UpdateAlias) is enough. Nothing was changed"
        )
    unused = sorted(set(replacements) - used)
    if unused:
        raise InvalidInputError(
            f"new_keks names {', '.join(unused)}, which no pending erasure moves (keys are "
            "tenant paths or the KEK ids they use); nothing was changed"
        )
    return plans


def _live_scopes(vault: Vault, s: Session, keys: list[str]) -> dict[bytes, set[str]]:
    """Scopes with a key version (not destroyed) wrapped by one of these whole KMS keys, with
    the KEK ids (of the scope's list) whose wraps are on them."""
    wanted = set(keys)
    prefixes = {key_prefix(k) for k in keys}
    rows: list[Any] = [
        *s.execute(
            select(ScopeKeyRow.scope_id, ScopeKeyRow.kek_id, ScopeKeyRow.kek_version).where(
                ScopeKeyRow.wrapped.is_not(None), ScopeKeyRow.kek_id.is_not(None)
            )
        ).all(),
        *s.execute(
            select(ScopeKeyWrapRow.scope_id, ScopeKeyWrapRow.kek_id, ScopeKeyWrapRow.kek_version)
        ).all(),
    ]
    out: dict[bytes, set[str]] = {}
    for scope_id, kek_id, version in rows:
        if kek_id is None or key_prefix(kek_id) not in prefixes:
            continue
        provider = vault._registry.provider(kek_id)
        if isinstance(provider, KeyDestroyer) and provider.key_of(kek_id, version or "") in wanted:
            out.setdefault(scope_id, set()).add(kek_id)
    return out


def _live_users(vault: Vault, keys: list[str]) -> list[str]:
    """What in this vault is still wrapped by one of these whole KMS keys (scope paths, the
    audit key): destroying the key would destroy them too."""
    wanted = set(keys)
    with vault._read() as s:
        users = sorted(
            row.path
            for row in (s.get(ScopeRow, i) for i in _live_scopes(vault, s, keys))
            if row is not None
        )
        for row in s.scalars(select(AuditKeyRow)):
            provider = vault._registry.provider(row.kek_id)
            if (
                key_prefix(row.kek_id) in {key_prefix(k) for k in keys}
                and isinstance(provider, KeyDestroyer)
                and provider.key_of(row.kek_id, row.kek_version) in wanted
            ):
                users.append("the audit trail's key")
    return users


def _cert_keks(cert: ErasureCertificate) -> list[str]:
    """The KEKs the erasure's tenant had when it was shredded (primary first)."""
    what = cert.document["what"]
    listed = [str(k["id"]) for k in what.get("keks") or [] if k.get("id")]
    return listed or [k for k in [str(what["kek"]["id"] or "")] if k]


def _destroys_whole_keys(vault: Vault, kek: str) -> bool:
    return isinstance(vault._registry.provider(kek), KeyDestroyer)


def _retire(vault: Vault, plan: _Retirement) -> list[Destruction]:
    """Moves the surviving tenants off the old KMS keys, then schedules their destruction."""
    for path, old, target, _ in plan.moves:
        with vault._read() as s:
            tenant = load_scope(s, path)
        rotation.rotate_kek(vault, tenant, target, old=old)
    users = _live_users(vault, plan.keys)
    if users:
        raise ConfigError(
            f"the KMS key(s) {', '.join(plan.keys)} still protect {', '.join(users)} (a tenant "
            "created meanwhile?); nothing was scheduled, the erasure stays pending: run "
            "phase 2 again"
        )
    return [_schedule(vault, plan.provider, key, reason="phase 2") for key in plan.keys]


def _schedule(vault: Vault, provider: KeyDestroyer, key: str, *, reason: str) -> Destruction:
    destruction = provider.schedule_destruction(key)
    vault.audit.record(
        "kek.destroy" if destruction.state == kms.DESTROYED else "kek.destroy_schedule",
        key,
        outcome="ok",
        kms_key_id=key,
        details={
            "why": reason,
            "state": destruction.state,
            "not_before_purge": _iso(destruction.not_before_purge),
            "provider": destruction.event,
        },
    )
    return destruction


def _destruction_entry(destruction: Destruction, at: str | None) -> dict[str, Any]:
    done = destruction.state == kms.DESTROYED
    return {
        "key": destruction.key_id,
        "provider": destruction.key_id.partition(":")[0],
        "state": destruction.state,
        "scheduled_at": at,
        "not_before_purge": _iso(destruction.not_before_purge),
        "confirmed_at": at if done else None,
        "cancelled_at": None,
    }


def _summarize(document: dict[str, Any]) -> None:
    """Sets phase 2's status, dates and residual risk from its destructions."""
    phase2 = document["when"]["phase2"]
    entries = phase2["destructions"]
    keys = ", ".join(str(d["key"]) for d in entries)
    dates = [str(d["not_before_purge"]) for d in entries if d["not_before_purge"]]
    if any(d["state"] == CANCELLED for d in entries):
        status = CANCELLED
        risk = (
            f"Phase 2 was cancelled: the destruction of {keys} was cancelled in the KMS "
            "(CancelKeyDeletion or recover), so database backups made before phase 2 can "
            "again be unwrapped by whoever holds that key; `complete_erasures("
            "include_cancelled=True)` schedules it again."
        )
    elif all(d["state"] == kms.DESTROYED for d in entries):
        status = CONFIRMED
        risk = (
            f"Phase 2 confirmed: the KMS key(s) that wrapped the destroyed keys ({keys}) no "
            "longer exist, so no copy of the database (backups included) can unwrap them."
        )
    else:
        status = SCHEDULED
        risk = (
            f"Phase 2 scheduled, not confirmed: the KMS refuses every use of {keys} from now "
            f"on and destroys it not before {max(dates) if dates else 'its waiting period ends'}"
            "; until then the destruction can be cancelled (AWS CancelKeyDeletion, Azure "
            "recover), which would let database backups made before phase 2 be unwrapped "
            "again. Run phase 2 again after that date to confirm it."
        )
    phase2["status"] = status
    phase2["not_before_purge"] = max(dates) if dates and status == SCHEDULED else None
    confirmed = [d["confirmed_at"] for d in entries if d["confirmed_at"]]
    phase2["confirmed_at"] = max(confirmed) if status == CONFIRMED and confirmed else None
    document["residual_risk"] = [
        r for r in document["residual_risk"] if "phase 2" not in r.lower()
    ] + [
        risk,
        "AWS KMS and Azure Key Vault destroy whole keys, never one version: the surviving "
        "tenants of the old key were moved to another key before its destruction was "
        "scheduled.",
    ]
    document["residual_risk"] = list(dict.fromkeys(document["residual_risk"]))


def _update(
    vault: Vault, certs: list[ErasureCertificate], statuses: dict[str, Destruction]
) -> list[ErasureCertificate]:
    """Applies what the KMS said about these keys to the certificates that depend on them;
    stores (and binds into the audit trail) each certificate that changed."""
    now = _iso(_now())
    out: list[ErasureCertificate] = []
    for cert in certs:
        document = json.loads(json.dumps(cert.document))
        phase2 = document["when"]["phase2"]
        changed = False
        for entry in phase2.get("destructions") or []:
            status = statuses.get(entry["key"])
            state = None if status is None else status.state
            if state == kms.NOT_SCHEDULED:
                state = CANCELLED
            if status is None or state == entry["state"]:
                continue
            entry["state"] = state
            if state == kms.DESTROYED:
                entry["confirmed_at"] = now
            elif state == CANCELLED:
                entry["cancelled_at"] = now
            else:
                entry["scheduled_at"] = now
                entry["cancelled_at"] = None
                entry["not_before_purge"] = _iso(status.not_before_purge)
            phase2["events"].append(f"{entry['key']}: {status.event}")
            changed = True
        if changed:
            _summarize(document)
            document.pop("integrity", None)
            out.append(_store(vault, document, "erasure.phase2"))
    return out


def _destroyer(vault: Vault, key: str) -> KeyDestroyer:
    provider = vault._registry.provider(key)
    if not isinstance(provider, KeyDestroyer):
        raise ConfigError(f"the provider of {key!r} cannot destroy keys")
    return provider


def _keys_in(certs: list[ErasureCertificate], *states: str) -> list[str]:
    return sorted(
        {
            str(d["key"])
            for c in certs
            for d in c.document["when"]["phase2"].get("destructions") or []
            if d["state"] in states
        }
    )


def _check_scheduled(vault: Vault, certs: list[ErasureCertificate]) -> list[ErasureCertificate]:
    """Asks the KMS about every scheduled destruction: final (confirmed), still waiting, or
    cancelled outside keycustody (customers hold that lever; it is recorded, not undone)."""
    statuses: dict[str, Destruction] = {}
    for key in _keys_in(certs, kms.DESTROY_SCHEDULED):
        status = _destroyer(vault, key).destruction_status(key)
        statuses[key] = status
        if status.state == kms.DESTROY_SCHEDULED:
            continue
        vault.audit.record(
            "kek.destroy_confirm" if status.state == kms.DESTROYED else "kek.destroy_cancelled",
            key,
            outcome="ok",
            kms_key_id=key,
            details={
                "state": status.state,
                "provider": status.event,
                "certificates": [c.id for c in certs if key in _keys_in([c], *_ANY)],
                **(
                    {"observed": "the destruction was cancelled outside keycustody"}
                    if status.state == kms.NOT_SCHEDULED
                    else {}
                ),
            },
        )
    return _update(vault, certs, statuses)


_ANY = (kms.DESTROYED, kms.DESTROY_SCHEDULED, kms.NOT_SCHEDULED, CANCELLED)


def _reschedule(vault: Vault, certs: list[ErasureCertificate]) -> list[ErasureCertificate]:
    """Schedules the cancelled destructions again (``include_cancelled=True``)."""
    statuses: dict[str, Destruction] = {}
    for key in _keys_in(certs, CANCELLED, kms.DESTROY_SCHEDULED):
        users = _live_users(vault, [key])
        if users:
            raise ConfigError(
                f"the KMS key {key!r} protects {', '.join(users)} again; phase 2 cannot "
                "destroy it (move them to another KEK first)"
            )
        statuses[key] = _schedule(vault, _destroyer(vault, key), key, reason="rescheduled")
    return _update(vault, certs, statuses)


def cancel_erasure(vault: Vault, certificate_id: str, reason: str) -> list[ErasureCertificate]:
    """See :meth:`keycustody.Vault.cancel_erasure`."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInputError("a cancellation needs a reason (e.g. the legal hold)")
    everything = certificates(vault)
    cert = next((c for c in everything if c.id == certificate_id), None)
    if cert is None:
        raise NotFoundError(f"no erasure certificate {certificate_id!r}")
    if cert.phase2_status != SCHEDULED:
        raise InvalidInputError(
            f"only a scheduled phase 2 can be cancelled; {certificate_id} is {cert.phase2_status}"
        )
    statuses: dict[str, Destruction] = {}
    for key in _keys_in([cert], kms.DESTROY_SCHEDULED):
        status = _destroyer(vault, key).cancel_destruction(key)
        statuses[key] = status
        vault.audit.record(
            "kek.destroy_cancel",
            key,
            outcome="ok",
            kms_key_id=key,
            details={"certificate": cert.id, "reason": reason, "provider": status.event},
        )
    scheduled = [c for c in everything if c.phase2_status == SCHEDULED]
    return _update(vault, scheduled, statuses)


def _ancestors(s: Session, ref: ScopeRef) -> list[ScopeRef]:
    """The surviving ancestors of a scope, nearest first (the tenant last)."""
    out: list[ScopeRef] = []
    parent_id = ref.parent_id
    while parent_id is not None:
        row = s.get(ScopeRow, parent_id)
        if row is None:
            break
        if row.state != SHREDDED:
            out.append(ScopeRef.of(row))
        parent_id = row.parent_id
    return out


def purge(
    vault: Vault, *, batch_size: int = 5000, progress: rotation.Progress | None = None
) -> int:
    """Deletes the records (and segments, and blob store objects) of shredded scopes, and
    derived records whose source is gone; returns how many. ``progress(done, total)`` is
    called after each batch."""
    total = 0
    # A subquery: every scope ever shredded can be more than a statement's parameters.
    shredded = select(ScopeRow.id).where(ScopeRow.state == SHREDDED)
    if progress is not None:
        with vault._read() as s:
            todo = int(s.scalar(select(func.count()).where(RecordRow.scope_id.in_(shredded))) or 0)
        progress(0, todo)
    while True:
        with vault._write() as s, s.begin():
            batch = list(
                s.scalars(
                    select(RecordRow.record_id)
                    .where(RecordRow.scope_id.in_(shredded))
                    .limit(batch_size)
                )
            )
            if not batch:
                break
            # Their blob store objects go after the commit (see keycustody.payloads).
            for chunk in in_chunks(batch):
                vault._payloads.delete_records(s, RecordRow.record_id.in_(chunk))
            total += len(batch)
        if progress is not None:
            progress(total, max(todo, total))
    with vault._write() as s, s.begin():
        orphans = derived.purge_orphans(s, vault._payloads)
        total += orphans
        vault._audit_change(
            s,
            "records.purge",
            "shredded scopes",
            details={"records": total, "orphaned_derivatives": orphans},
        )
    _scrub(vault)
    return total
