"""Rotation, rewrap, re-encryption, compromise and revocation of scope keys.

Every job here is crash-safe by construction: each step is one transaction that leaves every
record with exactly one valid key path, and a rerun continues where a crash stopped.

- rotate_key: a new ACTIVE version (same name-index half, so names stay findable); the old one
  is DEACTIVATED (still decrypts). Compare-and-swap on the active version: of two concurrent
  rotations exactly one wins, the other gets ConcurrentRotationError.
- rotate_kek: every live version of a tenant's scope key is unwrapped (through any of the
  tenant's KEKs) and wrapped by the new KEK, then all rows switch in one transaction: KMS calls
  are O(key versions). add_kek and remove_kek change a tenant's list of KEKs the same way.
- rewrap: records' DEKs move from older versions to the active one in batches (60 bytes each,
  in Rust; payloads untouched), child scope keys follow, then the emptied versions are DESTROYED.
- reencrypt: records under COMPROMISED versions get new DEKs and fresh ciphertext.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from keycustody import _core, derived
from keycustody.errors import (
    ConcurrentRotationError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
)
from keycustody.keys.hierarchy import (
    ScopeRef,
    bump_epoch,
    child_aad,
    extra_wraps,
    tenant_keks,
)
from keycustody.keys.states import (
    ACTIVE,
    COMPROMISED,
    DEACTIVATED,
    DESTROYED,
    SHREDDED,
    check_key_transition,
    check_scope_transition,
)
from keycustody.payloads import bounded
from keycustody.storage.models import (
    LineageEventRow,
    RecordRow,
    ScopeKeyRow,
    ScopeKeyWrapRow,
    ScopeRow,
    TenantKekRow,
)
from keycustody.storage.repository import copy_rows
from keycustody.streams import SEGMENT_LEN, SUITE_SEGMENTED, segment_count
from keycustody.types import KeyId, WrappedKey

if TYPE_CHECKING:
    from keycustody.vault import Vault

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each batch of a long job."""

DEFAULT_BATCH = 5000
_LINEAGE = cast(Table, LineageEventRow.__table__)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class JobReport:
    """What a rewrap or re-encryption did (or, with ``dry_run``, would do)."""

    scope: str
    active_version: int
    records_by_version: dict[int, int]
    records_done: int = 0
    child_keys_done: int = 0
    versions_destroyed: list[int] = field(default_factory=list)
    dry_run: bool = False


def fresh(session: Session, scope_id: bytes) -> ScopeRef:
    """The current row of a scope."""
    row = session.get(ScopeRow, scope_id)
    if row is None:
        raise NotFoundError("the scope no longer exists")
    return ScopeRef.of(row)


def lineage_values(
    scope_id: bytes,
    event: str,
    *,
    record_id: bytes | None = None,
    from_version: int | None = None,
    to_version: int | None = None,
    count: int = 1,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """The columns of one lineage event, for :func:`lineage_event` or :func:`lineage_events`."""
    return {
        "scope_id": scope_id,
        "record_id": record_id,
        "at": at or _now(),
        "event": event,
        "from_version": from_version,
        "to_version": to_version,
        "count": count,
        "details": json.dumps(details or {}, sort_keys=True, separators=(",", ":")),
    }


def lineage_event(session: Session, scope_id: bytes, event: str, **columns: Any) -> None:
    """Adds a lineage event in the caller's transaction (``columns`` as in
    :func:`lineage_values`)."""
    session.add(LineageEventRow(**lineage_values(scope_id, event, **columns)))


def lineage_events(session: Session, events: list[dict[str, Any]]) -> None:
    """Adds many lineage events (from :func:`lineage_values`) in one Core executemany, on
    PostgreSQL in one COPY: per-record events of a batch job would otherwise cost one ORM
    object each (or one INSERT each)."""
    if not events:
        return
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        columns = tuple(events[0])
        copy_rows(conn, _LINEAGE, columns, [tuple(e[c] for c in columns) for e in events])
    else:
        conn.execute(insert(_LINEAGE), events)


def _set_key_state(session: Session, scope_id: bytes, version: int, new: str) -> None:
    row = session.get(ScopeKeyRow, (scope_id, version))
    if row is None:
        raise NotFoundError(f"no key version {version}")
    check_key_transition(row.state, new)
    now = _now()
    row.state = new
    row.state_changed_at = now
    if new == DEACTIVATED:
        row.deactivated_at = now
    elif new == COMPROMISED:
        row.compromised_at = now
    elif new == DESTROYED:
        row.destroyed_at = now
        row.wrapped = None  # the key material goes; the metadata stays as evidence
        # ... and so do its wraps by the tenant's other KEKs (rows of key material only).
        session.execute(
            delete(ScopeKeyWrapRow).where(
                ScopeKeyWrapRow.scope_id == scope_id, ScopeKeyWrapRow.version == version
            )
        )


# -- rotation -----------------------------------------------------------------------------


def rotate_key(vault: Vault, scope: ScopeRef) -> int:
    """Makes a new ACTIVE scope key version; returns it.

    Raises:
        ConcurrentRotationError: another process rotated this scope at the same time.
    """
    hierarchy = vault._keys
    with vault._read() as s:
        ref = fresh(s, scope.id)
        current = hierarchy.key(s, ref, ref.active_version)
        new_key = current.rotated()
        new_version = ref.active_version + 1
        parent = fresh(s, ref.parent_id) if ref.parent_id else None
        keks = tenant_keks(s, ref.id, ref.kek_id) if parent is None else []
        # The KMS wraps (tenants: one per KEK) happen outside the write transaction.
        wrapped = hierarchy.wrap_version(
            s, ref.id, parent, keks, new_version, new_key, path=ref.path
        )
    columns = wrapped.columns
    now = _now()
    with vault._write() as s, s.begin():
        swapped = s.execute(
            update(ScopeRow)
            .where(
                ScopeRow.id == ref.id,
                ScopeRow.active_version == ref.active_version,
                ScopeRow.state != SHREDDED,  # a shred that committed meanwhile
            )
            .values(active_version=new_version, state_changed_at=now)
        )
        if swapped.rowcount != 1:  # type: ignore[attr-defined]
            raise ConcurrentRotationError(
                f"scope {ref.path!r} was rotated or shredded concurrently; retry"
            )
        if parent is None and tenant_keks(s, ref.id, fresh(s, ref.id).kek_id) != keks:
            raise ConcurrentRotationError(
                f"the KEKs of {ref.path!r} changed during the rotation; retry"
            )
        _set_key_state(s, ref.id, ref.active_version, DEACTIVATED)
        s.add(
            ScopeKeyRow(
                scope_id=ref.id,
                version=new_version,
                state=ACTIVE,
                created_at=now,
                state_changed_at=now,
                **columns,
            )
        )
        s.flush()
        s.add_all(wrapped.rows(ref.id, new_version, now))
        lineage_event(
            s,
            ref.id,
            "key_rotated",
            from_version=ref.active_version,
            to_version=new_version,
            count=0,
            at=now,
        )
        vault._audit_change(
            s,
            "key.rotate",
            ref.path,
            version=new_version,
            kek_id=columns.get("kek_id"),
            kek_version=columns.get("kek_version"),
            details={"keks": wrapped.keks} if len(wrapped.keks) > 1 else None,
        )
    hierarchy.cache.put(ref.id, new_version, new_key)
    return new_version


def _live_versions(s: Session, scope_id: bytes) -> list[ScopeKeyRow]:
    """The key versions of a scope that still have key material (not DESTROYED)."""
    return list(
        s.scalars(
            select(ScopeKeyRow)
            .where(ScopeKeyRow.scope_id == scope_id, ScopeKeyRow.wrapped.is_not(None))
            .order_by(ScopeKeyRow.version)
        ).all()
    )


def _tenant_wraps(s: Session, ref: ScopeRef, row: ScopeKeyRow) -> list[WrappedKey]:
    """Every KEK wrap of a tenant key version, primary first."""
    primary = WrappedKey(KeyId(row.kek_id or ""), row.kek_version or "", row.wrapped or b"")
    return [primary, *extra_wraps(s, ref.id, row.version)]


def _check_unchanged(
    s: Session, ref: ScopeRef, keks: list[str], versions: set[int], what: str
) -> ScopeRef:
    """Inside the write transaction: the tenant still has these KEKs and live key versions
    (a rotation or KEK change committed meanwhile would leave a version half-wrapped)."""
    current = fresh(s, ref.id)
    live = {r.version for r in _live_versions(s, ref.id)}
    if tenant_keks(s, ref.id, current.kek_id) != keks or live != versions:
        raise ConcurrentRotationError(f"the keys of {ref.path!r} changed during {what}; retry")
    return current


@contextlib.contextmanager
def _reading_keks(
    vault: Vault, tenant: ScopeRef, new_kek: str | None = None
) -> Iterator[tuple[Session, ScopeRef, list[str]]]:
    """A read session over a tenant about to change KEKs (``new_kek``: one it gets, whose
    provider must be configured): its row read afresh and checked usable, and its KEKs, the
    primary first."""
    if tenant.parent_id is not None:
        raise ConfigError(f"{tenant.path!r} is not a tenant: only top-level scopes have a KEK")
    if new_kek is not None:
        vault._registry.provider(new_kek)
    with vault._read() as s:
        ref = fresh(s, tenant.id)
        vault._keys.check_usable(s, ref)
        yield s, ref, tenant_keks(s, ref.id, ref.kek_id)


def rotate_kek(vault: Vault, tenant: ScopeRef, new_kek: str, *, old: str | None = None) -> int:
    """Rewraps every live scope key version of a tenant under ``new_kek`` in place of the
    tenant's KEK ``old`` (default: the primary); returns how many versions.

    Records and child scopes are untouched. ``new_kek`` may equal ``old``: that rewraps under
    the KEK's current (primary) version after a rotation in the KMS. Each version is unwrapped
    through any of the tenant's KEKs (so a KEK that is down can be replaced).
    """
    hierarchy = vault._keys
    with _reading_keks(vault, tenant, new_kek) as (s, ref, keks):
        replaced = keks[0] if old is None else old
        if replaced not in keks:
            raise ConfigError(f"{replaced!r} is not a KEK of tenant {ref.path!r} ({keks!r})")
        if new_kek != replaced and new_kek in keks:
            raise ConfigError(
                f"{new_kek!r} already protects tenant {ref.path!r}; remove_kek({replaced!r}) "
                "instead"
            )
        primary = replaced == keks[0]
        rewrapped: list[tuple[int, WrappedKey | None, WrappedKey]] = []
        for row in _live_versions(s, ref.id):
            wraps = _tenant_wraps(s, ref, row)
            handle, _ = hierarchy.unwrap_tenant(ref, row.version, wraps)
            ctx = hierarchy.context(ref.id, row.version)
            before = next((w for w in wraps if w.key_id == replaced), None)
            rewrapped.append(
                (row.version, before, vault._registry.wrap(KeyId(new_kek), handle, ctx))
            )
            hierarchy.kms_usage.add(ref.path)
    now = _now()
    with vault._write() as s, s.begin():
        _check_unchanged(s, ref, keks, {v for v, _, _ in rewrapped}, "KEK rotation")
        for version, before, new in rewrapped:
            if primary:
                moved = s.execute(
                    update(ScopeKeyRow)
                    .where(
                        ScopeKeyRow.scope_id == ref.id,
                        ScopeKeyRow.version == version,
                        ScopeKeyRow.kek_id == (before.key_id if before else None),
                        ScopeKeyRow.kek_version == (before.key_version if before else None),
                    )
                    .values(wrapped=new.ciphertext, kek_id=new.key_id, kek_version=new.key_version)
                ).rowcount  # type: ignore[attr-defined]
            else:
                moved = s.execute(
                    delete(ScopeKeyWrapRow).where(
                        ScopeKeyWrapRow.scope_id == ref.id,
                        ScopeKeyWrapRow.version == version,
                        ScopeKeyWrapRow.kek_id == replaced,
                    )
                ).rowcount  # type: ignore[attr-defined]
                s.execute(insert(ScopeKeyWrapRow).values(**_wrap_row(ref.id, version, new, now)))
            if moved != 1:
                raise ConcurrentRotationError(
                    f"the keys of {ref.path!r} changed during KEK rotation; retry"
                )
        if primary:
            s.execute(update(ScopeRow).where(ScopeRow.id == ref.id).values(kek_id=new_kek))
        elif new_kek != replaced:
            s.execute(
                update(TenantKekRow)
                .where(TenantKekRow.scope_id == ref.id, TenantKekRow.kek_id == replaced)
                .values(kek_id=new_kek)
            )
        previous = sorted({f"{b.key_id}#{b.key_version}" for _, b, _ in rewrapped if b})
        new_ref = f"{new_kek}#{rewrapped[0][2].key_version}" if rewrapped else new_kek
        others = {} if len(keks) == 1 else {"replaced": replaced, "primary": primary}
        lineage_event(
            s,
            ref.id,
            "kek_rotated",
            count=len(rewrapped),
            at=now,
            details={"from": previous, "to": new_ref} | others,
        )
        vault._audit_change(
            s,
            "kek.rotate",
            ref.path,
            kek_id=new_kek,
            kek_version=rewrapped[0][2].key_version if rewrapped else None,
            details={"from": previous, "key_versions": len(rewrapped)} | others,
        )
    return len(rewrapped)


def _wrap_row(scope_id: bytes, version: int, wrap: WrappedKey, at: datetime) -> dict[str, Any]:
    return {
        "scope_id": scope_id,
        "version": version,
        "kek_id": wrap.key_id,
        "kek_version": wrap.key_version,
        "wrapped": wrap.ciphertext,
        "created_at": at,
    }


def add_kek(vault: Vault, tenant: ScopeRef, kek: str) -> int:
    """Wraps every live key version of a tenant under one more KEK and adds it to the end of
    the tenant's KEK list; returns how many versions. See :meth:`keycustody.Vault.add_kek`."""
    hierarchy = vault._keys
    with _reading_keks(vault, tenant, kek) as (s, ref, keks):
        if kek in keks:
            raise ConfigError(f"{kek!r} already protects tenant {ref.path!r}")
        wraps: list[tuple[int, WrappedKey]] = []
        for row in _live_versions(s, ref.id):
            handle = hierarchy.key(s, ref, row.version, compromised_ok=True)
            ctx = hierarchy.context(ref.id, row.version)
            wraps.append((row.version, vault._registry.wrap(KeyId(kek), handle, ctx)))
            hierarchy.kms_usage.add(ref.path)
    now = _now()
    with vault._write() as s, s.begin():
        _check_unchanged(s, ref, keks, {v for v, _ in wraps}, "add_kek")
        position = (
            s.scalar(
                select(func.max(TenantKekRow.position)).where(TenantKekRow.scope_id == ref.id)
            )
            or 0
        ) + 1
        s.add(TenantKekRow(scope_id=ref.id, kek_id=kek, position=position, added_at=now))
        if wraps:
            s.execute(insert(ScopeKeyWrapRow), [_wrap_row(ref.id, v, w, now) for v, w in wraps])
        kek_version = wraps[-1][1].key_version if wraps else None
        details = {"key_versions": len(wraps), "keks": [*keks, kek]}
        lineage_event(s, ref.id, "kek_added", count=len(wraps), at=now, details=details)
        vault._audit_change(
            s, "kek.add", ref.path, kek_id=kek, kek_version=kek_version, details=details
        )
    return len(wraps)


def remove_kek(vault: Vault, tenant: ScopeRef, kek: str) -> int:
    """Drops one KEK of a tenant and its wraps; returns how many wraps were deleted. See
    :meth:`keycustody.Vault.remove_kek`."""
    hierarchy = vault._keys
    with _reading_keks(vault, tenant) as (s, ref, keks):
        if kek not in keks:
            raise ConfigError(f"{kek!r} is not a KEK of tenant {ref.path!r} ({keks!r})")
        if len(keks) == 1:
            raise ConfigError(
                f"{kek!r} is the only KEK of tenant {ref.path!r}: add another first "
                "(add_kek), or move the tenant with rotate_kek"
            )
        remaining = [k for k in keks if k != kek]
        versions = set()
        for row in _live_versions(s, ref.id):
            wraps = _tenant_wraps(s, ref, row)
            kept = sorted(
                (w for w in wraps if w.key_id in remaining),
                key=lambda w: remaining.index(w.key_id),
            )
            if not kept:
                raise ConfigError(
                    f"key version {row.version} of tenant {ref.path!r} has no wrap under the "
                    f"remaining KEKs {remaining!r}; nothing was changed"
                )
            # Proof that the tenant stays readable without the KEK (one KMS call).
            hierarchy.unwrap_tenant(ref, row.version, kept)
            versions.add(row.version)
    now = _now()
    with vault._write() as s, s.begin():
        _check_unchanged(s, ref, keks, versions, "remove_kek")
        if kek == keks[0]:
            # The next KEK becomes the primary: its wraps move into scope_keys.
            promoted = remaining[0]
            moving = s.scalars(
                select(ScopeKeyWrapRow).where(
                    ScopeKeyWrapRow.scope_id == ref.id, ScopeKeyWrapRow.kek_id == promoted
                )
            ).all()
            if {w.version for w in moving} != versions:
                # Every live version has a wrap under every KEK of the list, by construction.
                raise ConcurrentRotationError(
                    f"the wraps of {ref.path!r} under {promoted!r} changed during "
                    "remove_kek; retry"
                )
            for wrap in moving:
                s.execute(
                    update(ScopeKeyRow)
                    .where(ScopeKeyRow.scope_id == ref.id, ScopeKeyRow.version == wrap.version)
                    .values(wrapped=wrap.wrapped, kek_id=wrap.kek_id, kek_version=wrap.kek_version)
                )
            deleted = len(versions)
            s.execute(
                delete(ScopeKeyWrapRow).where(
                    ScopeKeyWrapRow.scope_id == ref.id, ScopeKeyWrapRow.kek_id == promoted
                )
            )
            s.execute(
                delete(TenantKekRow).where(
                    TenantKekRow.scope_id == ref.id, TenantKekRow.kek_id == promoted
                )
            )
            s.execute(update(ScopeRow).where(ScopeRow.id == ref.id).values(kek_id=promoted))
        else:
            deleted = s.execute(
                delete(ScopeKeyWrapRow).where(
                    ScopeKeyWrapRow.scope_id == ref.id, ScopeKeyWrapRow.kek_id == kek
                )
            ).rowcount  # type: ignore[attr-defined]
            s.execute(
                delete(TenantKekRow).where(
                    TenantKekRow.scope_id == ref.id, TenantKekRow.kek_id == kek
                )
            )
        details = {"wraps_deleted": deleted, "keks": remaining, "primary": remaining[0]}
        lineage_event(s, ref.id, "kek_removed", count=deleted, at=now, details=details)
        vault._audit_change(s, "kek.remove", ref.path, kek_id=kek, details=details)
    return int(deleted)


# -- rewrap and re-encryption -------------------------------------------------------------


def _versions(s: Session, scope_id: bytes) -> dict[int, str]:
    rows = s.execute(
        select(ScopeKeyRow.version, ScopeKeyRow.state).where(ScopeKeyRow.scope_id == scope_id)
    ).all()
    return {r.version: r.state for r in rows}


def _count_by_version(s: Session, scope_id: bytes, versions: Sequence[int]) -> dict[int, int]:
    rows = s.execute(
        select(RecordRow.key_version, func.count())
        .where(RecordRow.scope_id == scope_id, RecordRow.key_version.in_(list(versions)))
        .group_by(RecordRow.key_version)
    ).all()
    return {int(v): int(n) for v, n in rows if v is not None}


def _rewrap_children(vault: Vault, ref: ScopeRef, old: set[int]) -> int:
    """Moves child scope key versions wrapped under ``old`` parent versions to the active one."""
    hierarchy = vault._keys
    with vault._read() as s:
        rows = s.execute(
            select(ScopeKeyRow, ScopeRow.path)
            .join(ScopeRow, ScopeRow.id == ScopeKeyRow.scope_id)
            .where(
                ScopeRow.parent_id == ref.id,
                ScopeKeyRow.parent_version.in_(list(old)),
                ScopeKeyRow.wrapped.is_not(None),
            )
        ).all()
        if not rows:
            return 0
        active = hierarchy.key(s, ref, ref.active_version)
        updates = []
        for row, _path in rows:
            old_version, wrapped = row.parent_version, row.wrapped
            if old_version is None or wrapped is None:
                continue  # excluded by the query; keeps the types honest
            parent_key = hierarchy.key(s, ref, old_version, compromised_ok=True)
            aad = child_aad(vault.id, row.scope_id, row.version, ref.id, old_version)
            child = parent_key.unwrap(wrapped, aad)
            new_aad = child_aad(vault.id, row.scope_id, row.version, ref.id, ref.active_version)
            updates.append(
                (row.scope_id, row.version, row.parent_version, active.wrap(child, new_aad))
            )
    # One statement, run for every child (an ORM update built per child took 1 ms each).
    swap = (
        update(cast(Table, ScopeKeyRow.__table__))
        .where(
            ScopeKeyRow.scope_id == bindparam("child"),
            ScopeKeyRow.version == bindparam("child_version"),
            ScopeKeyRow.parent_version == bindparam("old_parent_version"),
        )
        .values(wrapped=bindparam("new_wrapped"), parent_version=ref.active_version)
    )
    params = [
        {"child": c, "child_version": v, "old_parent_version": p, "new_wrapped": w}
        for c, v, p, w in updates
    ]
    with vault._write() as s, s.begin():
        if params:
            s.connection().execute(swap, params)
        lineage_event(
            s, ref.id, "child_keys_rewrapped", to_version=ref.active_version, count=len(updates)
        )
    return len(updates)


def _destroy_emptied(vault: Vault, ref: ScopeRef, candidates: set[int]) -> list[int]:
    """Destroys candidate versions that no record and no child key depends on any more."""
    destroyed: list[int] = []
    with vault._write() as s, s.begin():
        states = _versions(s, ref.id)
        current = fresh(s, ref.id)
        for version in sorted(candidates):
            if version == current.active_version or states.get(version) == DESTROYED:
                continue
            records = s.scalar(
                select(func.count()).where(
                    RecordRow.scope_id == ref.id, RecordRow.key_version == version
                )
            )
            children = s.scalar(
                select(func.count())
                .select_from(ScopeKeyRow)
                .join(ScopeRow, ScopeRow.id == ScopeKeyRow.scope_id)
                .where(
                    ScopeRow.parent_id == ref.id,
                    ScopeKeyRow.parent_version == version,
                    ScopeKeyRow.wrapped.is_not(None),
                )
            )
            if records or children:
                continue
            _set_key_state(s, ref.id, version, DESTROYED)
            destroyed.append(version)
        if destroyed:
            lineage_event(
                s, ref.id, "keys_destroyed", count=len(destroyed), details={"versions": destroyed}
            )
            vault._audit_change(s, "key.destroy", ref.path, details={"versions": destroyed})
            epoch = bump_epoch(s)
    if destroyed:
        vault._keys.changed(epoch)
    return destroyed


def _finish_job(
    vault: Vault,
    ref: ScopeRef,
    versions: set[int],
    action: str,
    counts: dict[int, int],
    done: int,
) -> JobReport:
    """The common end of rewrap and re-encryption: child keys follow the scope to its active
    version, the emptied versions are destroyed, and one audit event sums it up."""
    children = _rewrap_children(vault, ref, versions)
    destroyed = _destroy_emptied(vault, ref, versions)
    with vault._write() as s, s.begin():
        vault._audit_change(
            s,
            action,
            ref.path,
            version=ref.active_version,
            details={"records": done, "child_keys": children, "destroyed": destroyed},
        )
    return JobReport(ref.path, ref.active_version, counts, done, children, destroyed)


def rewrap(
    vault: Vault,
    scope: ScopeRef,
    *,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    dry_run: bool = False,
) -> JobReport:
    """Moves every record's DEK to the active scope key version, then destroys the old ones.

    COMPROMISED versions are left to :func:`reencrypt` (their DEKs may be exposed).
    """
    if batch_size < 1:
        raise InvalidInputError("batch_size must be positive")
    hierarchy = vault._keys
    with vault._read() as s:
        ref = fresh(s, scope.id)
        hierarchy.check_usable(s, ref)
        old = {v for v, st in _versions(s, ref.id).items() if st == DEACTIVATED}
        counts = _count_by_version(s, ref.id, sorted(old))
    total = sum(counts.values())
    if dry_run:
        return JobReport(ref.path, ref.active_version, counts, dry_run=True)
    done = 0
    while True:
        # A batch is claimed, rewrapped and written in one record transaction: on PostgreSQL
        # the rows are locked, and other workers running the same job skip them.
        with vault._write_records() as s, s.begin():
            ref = fresh(s, scope.id)
            rows = s.execute(
                select(RecordRow.record_id, RecordRow.header, RecordRow.key_version)
                .where(RecordRow.scope_id == ref.id, RecordRow.key_version.in_(sorted(old)))
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                break
            keys = hierarchy.keys(s, ref, {r.key_version for r in rows})
            new_key = hierarchy.key(s, ref, ref.active_version)
            headers = _core.rewrap_headers(
                ref.id, keys, new_key, ref.active_version, [r.header for r in rows]
            )
            # Compare-and-swap on the old header (SQLite, where rows are not locked: a record
            # replaced or deleted meanwhile is left alone).
            moved = vault._records.swap_headers(
                s.connection(),
                ref.active_version,
                [(r.record_id, r.header, h) for r, h in zip(rows, headers, strict=True)],
            )
            by_version: dict[int, int] = {}
            for r in rows:
                by_version[r.key_version] = by_version.get(r.key_version, 0) + 1
            now = _now()
            for version, n in sorted(by_version.items()):
                lineage_event(
                    s,
                    ref.id,
                    "rewrapped",
                    from_version=version,
                    to_version=ref.active_version,
                    count=n,
                    at=now,
                )
        done += moved
        if progress is not None:
            progress(done, total)
    return _finish_job(vault, ref, old, "key.rewrap", counts, done)


def mark_compromised(vault: Vault, scope: ScopeRef, version: int | None, reason: str) -> int:
    """Marks a key version COMPROMISED (rotating first if it is the active one); returns it.

    Its records stop decrypting until :func:`reencrypt` gives them new DEKs. The compromise
    cascades: a child scope key version wrapped under the compromised version was exposed with
    it, so it is marked COMPROMISED too (after the child is rotated), down the tree.
    """
    with vault._read() as s:
        ref = fresh(s, scope.id)
    target = ref.active_version if version is None else version
    if target == ref.active_version:
        rotate_key(vault, ref)
    with vault._write() as s, s.begin():
        _set_key_state(s, ref.id, target, COMPROMISED)
        lineage_event(
            s, ref.id, "key_compromised", from_version=target, count=0, details={"reason": reason}
        )
        vault._audit_change(
            s, "key.compromise", ref.path, version=target, details={"reason": reason}
        )
        epoch = bump_epoch(s)
    vault._keys.changed(epoch)
    with vault._read() as s:
        exposed = s.execute(
            select(ScopeKeyRow.scope_id, ScopeKeyRow.version)
            .join(ScopeRow, ScopeRow.id == ScopeKeyRow.scope_id)
            .where(
                ScopeRow.parent_id == ref.id,
                ScopeKeyRow.parent_version == target,
                ScopeKeyRow.state.not_in([COMPROMISED, DESTROYED]),
            )
        ).all()
        children = [(fresh(s, scope_id), version) for scope_id, version in exposed]
    for child, child_version in children:
        mark_compromised(vault, child, child_version, f"{reason} (parent {ref.path} v{target})")
    return target


def reencrypt(
    vault: Vault,
    scope: ScopeRef,
    *,
    batch_size: int = 1000,
    progress: Progress | None = None,
    dry_run: bool = False,
) -> JobReport:
    """Gives every record under a COMPROMISED version a new DEK and fresh ciphertext under the
    active version, then destroys the compromised versions; then does the same for every
    descendant scope (a compromise cascades down the tree). Resumable: rerun after a crash."""
    scopes = [scope]
    with vault._read() as s:
        walked = 0
        while walked < len(scopes):  # the whole subtree, parents first
            parent_id = scopes[walked].id
            walked += 1
            children = s.scalars(
                select(ScopeRow).where(ScopeRow.parent_id == parent_id, ScopeRow.state != SHREDDED)
            )
            scopes += [ScopeRef.of(r) for r in children]
        totals = [
            sum(
                _count_by_version(
                    s,
                    sc.id,
                    [v for v, st in _versions(s, sc.id).items() if st == COMPROMISED],
                ).values()
            )
            for sc in scopes
        ]
    grand, before = sum(totals), 0
    reports = []
    for sc in scopes:

        def overall(done: int, _total: int, base: int = before) -> None:
            if progress is not None:
                progress(base + done, grand)

        reports.append(
            _reencrypt_scope(vault, sc, batch_size=batch_size, progress=overall, dry_run=dry_run)
        )
        before += reports[-1].records_done
    return reports[0]


def _reencrypt_scope(
    vault: Vault,
    scope: ScopeRef,
    *,
    batch_size: int,
    progress: Progress | None,
    dry_run: bool,
) -> JobReport:
    if batch_size < 1:
        raise InvalidInputError("batch_size must be positive")
    hierarchy = vault._keys
    writer = vault._records
    with vault._read() as s:
        ref = fresh(s, scope.id)
        hierarchy.check_usable(s, ref)
        targets = {v for v, st in _versions(s, ref.id).items() if st == COMPROMISED}
        counts = _count_by_version(s, ref.id, sorted(targets))
    total = sum(counts.values())
    if dry_run or not targets:
        return JobReport(ref.path, ref.active_version, counts, dry_run=dry_run)
    done = 0
    while True:
        with vault._read() as s:
            ref = fresh(s, scope.id)
            rows = s.execute(
                select(
                    RecordRow.record_id,
                    RecordRow.header,
                    RecordRow.name_ct,
                    RecordRow.body,
                    RecordRow.key_version,
                    RecordRow.size,
                    RecordRow.blob_key,
                )
                .where(RecordRow.scope_id == ref.id, RecordRow.key_version.in_(sorted(targets)))
                .limit(batch_size)
            ).all()
            if not rows:
                break
            rows = bounded(rows, lambda r: int(r.size))  # large records: fewer at once
            keys = hierarchy.keys(s, ref, {r.key_version for r in rows}, compromised_ok=True)
            active = hierarchy.key(s, ref, ref.active_version)
            headers = [r.header for r in rows]
            names = _core.open_names(ref.id, keys, headers, [r.name_ct for r in rows])
            whole = [i for i, r in enumerate(rows) if r.header[3] != SUITE_SEGMENTED]
            streamed = [i for i, r in enumerate(rows) if r.header[3] == SUITE_SEGMENTED]
            plain = _core.open_records(
                ref.id,
                keys,
                [names[i] for i in whole],
                [headers[i] for i in whole],
                vault._payloads.bodies(ref.id, [rows[i] for i in whole]),
            )
            openers = {
                i: _core.open_stream(ref.id, keys, names[i], rows[i].header) for i in streamed
            }
        new_headers, new_names, new_bodies = _core.seal_records(
            active, ref.id, ref.active_version, [names[i] for i in whole], plain
        )
        now = _now()
        ts = writer.timestamp(now)
        with vault._write() as s, s.begin():
            gone = writer.delete_unchanged(
                s.connection(), [rows[i].record_id for i in whole], [headers[i] for i in whole]
            )
            if gone != len(whole):
                raise ConcurrentRotationError("records changed during re-encryption; rerun it")
            vault._payloads.drop(s, [rows[i].blob_key for i in whole])
            new_rows = [
                (
                    h[24:40],
                    ref.id,
                    h[40:72],
                    ref.active_version,
                    h,
                    n,
                    b,
                    len(d),
                    ts,
                    ref.active_version,
                    None,
                    None,
                )
                for h, n, b, d in zip(new_headers, new_names, new_bodies, plain, strict=True)
            ]
            writer.replace(s.connection(), ref.id, vault._payloads.place(s, new_rows))
            derived.rederive(
                writer,
                vault._payloads,
                s,
                ref.id,
                (keys, {ref.active_version: active}),
                [(headers[i], h, names[i]) for i, h in zip(whole, new_headers, strict=True)],
            )
            lineage_events(
                s,
                [
                    lineage_values(
                        ref.id,
                        "reencrypted",
                        record_id=h[24:40],
                        from_version=rows[i].key_version,
                        to_version=ref.active_version,
                        at=now,
                        details={"previous_record_id": rows[i].record_id.hex()},
                    )
                    for i, h in zip(whole, new_headers, strict=True)
                ],
            )
            for i in streamed:
                _reencrypt_stream(vault, s, ref, active, names[i], rows[i], openers[i], now, keys)
        done += len(rows)
        if progress is not None:
            progress(done, total)
    return _finish_job(vault, ref, targets, "key.reencrypt", counts, done)


def _reencrypt_stream(
    vault: Vault,
    s: Session,
    ref: ScopeRef,
    active: _core.KeyHandle,
    name: bytes,
    row: Any,
    opener: _core.StreamOpener,
    now: datetime,
    old_keys: dict[int, _core.KeyHandle],
) -> None:
    """Re-seals a stream record segment by segment (constant memory), in the caller's
    transaction: the old record steps aside (its name index is replaced by a random one) so the
    new one can take its name, its segments are read, re-sealed, and then it is deleted."""
    writer = vault._records
    conn = s.connection()
    stepped = s.execute(
        update(RecordRow)
        .where(RecordRow.record_id == row.record_id, RecordRow.header == row.header)
        .values(name_index=secrets.token_bytes(32))
    )
    if stepped.rowcount != 1:  # type: ignore[attr-defined]
        raise ConcurrentRotationError("a record changed during re-encryption; rerun it")
    header, name_ct, sealer = _core.begin_stream(active, ref.id, ref.active_version, name)
    record_id = header[24:40]
    writer.replace(
        conn,
        ref.id,
        [
            (
                record_id,
                ref.id,
                header[40:72],
                ref.active_version,
                header,
                name_ct,
                b"",
                0,
                writer.timestamp(now),
                ref.active_version,
                None,
                None,
            )
        ],
    )
    count = segment_count(row.size)
    size = 0
    payloads = vault._payloads
    # One segment at a time in the transaction: nothing to fetch ahead.
    source = payloads.segment_reader(
        ref.id, row, functools.partial(writer.read_segments, s.connection()), prefetch=None
    )
    plain = bytearray(min(SEGMENT_LEN, row.size))
    with payloads.segments(s, writer, ref.id, record_id, row.size) as sink:
        for seq in range(count):
            last = seq == count - 1
            out = memoryview(plain)[: min(SEGMENT_LEN, row.size - seq * SEGMENT_LEN)]
            source.open_into(opener, seq, last, [out])
            sink.add(seq, sealer.seal_segment(out, last))
            size += len(out)
    s.execute(
        update(RecordRow)
        .where(RecordRow.record_id == record_id)
        .values(size=size, blob_key=sink.blob_key)
    )
    derived.rederive(
        writer,
        payloads,
        s,
        ref.id,
        (old_keys, {ref.active_version: active}),
        [(row.header, header, name)],
    )
    payloads.delete_records(s, RecordRow.record_id == row.record_id)
    lineage_event(
        s,
        ref.id,
        "reencrypted",
        record_id=record_id,
        from_version=row.key_version,
        to_version=ref.active_version,
        at=now,
        details={"previous_record_id": row.record_id.hex()},
    )


# -- revocation ---------------------------------------------------------------------------


def set_scope_state(vault: Vault, scope: ScopeRef, new: str, reason: str | None) -> None:
    """Suspends or resumes a scope (and so its subtree); takes effect in every process within
    the revalidation bound, and here at once."""
    with vault._write() as s, s.begin():
        ref = fresh(s, scope.id)
        check_scope_transition(ref.state, new)
        now = _now()
        s.execute(
            update(ScopeRow).where(ScopeRow.id == ref.id).values(state=new, state_changed_at=now)
        )
        lineage_event(
            s,
            ref.id,
            f"scope_{new.lower()}",
            count=0,
            at=now,
            details={"reason": reason} if reason else {},
        )
        action = "scope.suspend" if new != ACTIVE else "scope.resume"
        vault._audit_change(s, action, ref.path, details={"reason": reason} if reason else {})
        epoch = bump_epoch(s)
    vault._keys.changed(epoch)
