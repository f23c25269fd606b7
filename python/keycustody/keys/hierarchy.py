"""Creating and unwrapping scope keys along the tree up to the customer's KEK.

A tenant's scope key versions are wrapped by its KEK through the KMS (one call per version);
a child scope's versions are wrapped by a version of its parent's scope key, in Rust, with
associated data naming both ends of the edge, so a wrapped key cannot be moved in the tree.

Revocation across processes: every change of a scope's or key's state bumps a ``key_epoch``
value in ``vault_meta`` in the same transaction. Each process re-reads the epoch at most every
``revalidate_s`` seconds (default 1 s) and, when it changed, drops its cached keys and scope
states. So a suspend, shred or key destruction made by one process stops every other process
within ``revalidate_s`` (and at once in the process that made it).

Several KEKs per tenant: a tenant's scope key versions are wrapped by its primary KEK
(``scopes.kek_id``, wrap in ``scope_keys``) and by each additional KEK (``tenant_keks``, wraps
in ``scope_key_wraps``). Unwrapping tries the primary first, then the others in order; a KEK
that fails (outage, disabled, destroyed, no provider here, or a wrap that does not
authenticate) is passed over for the next one, and every such failover is queued here, by
the thread that unwrapped (:meth:`KeyHierarchy.take_failovers`), for the audit trail: a
tampered wrap never fails over unrecorded. The vault records the failovers a thread queued as
``kek.failover`` events in that thread's next write transaction, just before it commits (a
``before_commit`` session event), so they are durable with the data written with the key, or
roll back with it; what is left when an operation ends (reads, or a write that failed) is
recorded then, in a transaction of its own, before the operation returns
(:func:`records_failovers`). A KEK that failed for availability reasons is tried last for
:data:`FAILOVER_HOLD_S` seconds, so an outage does not cost a timeout per unwrap.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from keycustody._core import KeyHandle
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    KeyCustodyError,
    KeyRevokedError,
    NotFoundError,
    ShreddedError,
)
from keycustody.keys.cache import KeyCache
from keycustody.keys.states import COMPROMISED, DESTROYED, SHREDDED, SUSPENDED
from keycustody.kms.registry import ProviderRegistry
from keycustody.storage.engine import driver_connection, driver_rows
from keycustody.storage.models import (
    ScopeKeyRow,
    ScopeKeyWrapRow,
    ScopeRow,
    TenantKekRow,
    VaultMeta,
)
from keycustody.storage.repository import in_chunks
from keycustody.types import EncryptionContext, KeyId, WrappedKey
from keycustody.usage import KmsUsage

EPOCH_KEY = "key_epoch"

MAX_KEY_VERSION = 2**31 - 1
"""Key versions are stored as 32-bit signed integers (PostgreSQL ``integer``)."""

FAILOVER_HOLD_S = 30.0
"""Seconds a KEK that failed for availability reasons (KMS error, disabled, destroyed, no
provider) is tried after the tenant's other KEKs rather than first."""


@dataclass(frozen=True, slots=True)
class ScopeRef:
    """The facts about a scope that key handling needs."""

    id: bytes
    path: str
    parent_id: bytes | None
    kek_id: str | None
    state: str
    active_version: int

    @classmethod
    def of(cls, row: ScopeRow) -> ScopeRef:
        """From a database row."""
        return cls(row.id, row.path, row.parent_id, row.kek_id, row.state, row.active_version)


@dataclass(frozen=True, slots=True)
class Failover:
    """A tenant key version unwrapped by another KEK than the first one in order, and why
    the KEKs before it were passed over (for the audit trail; no key material)."""

    scope_id: bytes
    scope: str
    version: int
    used_kek: str
    used_kek_version: str
    failed: tuple[tuple[str, str, str], ...]
    """``(KEK id, KEK version, reason)`` of every KEK passed over, in the order tried."""

    @property
    def tampered(self) -> bool:
        """A passed-over wrap did not authenticate (IntegrityError): tampered or corrupt."""
        return any(reason.startswith("IntegrityError") for _, _, reason in self.failed)


@dataclass(frozen=True, slots=True)
class VersionWrap:
    """A new scope key version, wrapped: the ``scope_keys`` columns (primary KEK or parent
    key) and the wraps by the tenant's additional KEKs (``scope_key_wraps`` rows)."""

    columns: dict[str, object]
    extra: list[WrappedKey] = field(default_factory=list)

    @property
    def keks(self) -> list[str]:
        """``KEK id#version`` of every KEK wrap (primary first); empty for a child scope."""
        first = self.columns.get("kek_id")
        if first is None:
            return []
        return [f"{first}#{self.columns.get('kek_version')}"] + [
            f"{w.key_id}#{w.key_version}" for w in self.extra
        ]

    def rows(self, scope_id: bytes, version: int, at: datetime) -> list[ScopeKeyWrapRow]:
        """The ``scope_key_wraps`` rows of the additional wraps."""
        return [
            ScopeKeyWrapRow(
                scope_id=scope_id,
                version=version,
                kek_id=w.key_id,
                kek_version=w.key_version,
                wrapped=w.ciphertext,
                created_at=at,
            )
            for w in self.extra
        ]


def tenant_keks(session: Session, scope_id: bytes, primary: str | None) -> list[str]:
    """A tenant's KEK ids in failover order: the primary, then the additional ones."""
    return kek_lists(session, [(scope_id, primary)])[scope_id]


def kek_lists(
    session: Session, tenants: Sequence[tuple[bytes, str | None]]
) -> dict[bytes, list[str]]:
    """:func:`tenant_keks` of each ``(tenant id, primary KEK id)``, a chunk of tenants a
    statement."""
    others: dict[bytes, list[str]] = {}
    for ids in in_chunks(scope_id for scope_id, _ in tenants):
        for scope_id, kek_id in session.execute(
            select(TenantKekRow.scope_id, TenantKekRow.kek_id)
            .where(TenantKekRow.scope_id.in_(ids))
            .order_by(TenantKekRow.scope_id, TenantKekRow.position)
        ):
            others.setdefault(scope_id, []).append(kek_id)
    return {
        scope_id: ([primary] if primary else [])
        + [k for k in others.get(scope_id, []) if k != primary]
        for scope_id, primary in tenants
    }


def extra_wraps(session: Session, scope_id: bytes, version: int) -> list[WrappedKey]:
    """The wraps of a tenant key version by its additional KEKs, in the tenant's KEK order
    (wraps by a KEK no longer in the list, which should not exist, come last)."""
    rows = session.execute(
        select(
            ScopeKeyWrapRow.kek_id,
            ScopeKeyWrapRow.kek_version,
            ScopeKeyWrapRow.wrapped,
            TenantKekRow.position,
        )
        .outerjoin(
            TenantKekRow,
            (TenantKekRow.scope_id == ScopeKeyWrapRow.scope_id)
            & (TenantKekRow.kek_id == ScopeKeyWrapRow.kek_id),
        )
        .where(ScopeKeyWrapRow.scope_id == scope_id, ScopeKeyWrapRow.version == version)
    ).all()
    ordered = sorted(rows, key=lambda r: (r.position is None, r.position or 0, r.kek_id))
    return [WrappedKey(KeyId(r.kek_id), r.kek_version, r.wrapped) for r in ordered]


def child_aad(
    vault_id: str, child: bytes, version: int, parent: bytes, parent_version: int
) -> bytes:
    """Associated data binding a child scope key to its place in the tree."""
    return b"keycustody/scope-key/v1|%s|%s%s%s%s" % (
        vault_id.encode(),
        child,
        struct.pack(">I", version),
        parent,
        struct.pack(">I", parent_version),
    )


def bump_epoch(session: Session) -> str:
    """Marks a key or scope state change, in the caller's transaction; returns the new epoch."""
    epoch = secrets.token_hex(8)
    result = session.execute(
        update(VaultMeta).where(VaultMeta.key == EPOCH_KEY).values(value=epoch)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        session.add(VaultMeta(key=EPOCH_KEY, value=epoch))
    return epoch


class KeyHierarchy:
    """Unwraps scope keys (cache first) and wraps new ones, for one vault."""

    def __init__(
        self,
        vault_id: str,
        registry: ProviderRegistry,
        cache: KeyCache,
        revalidate_s: float = 1.0,
    ) -> None:
        if revalidate_s < 0:
            raise ConfigError("revalidate_s must be >= 0")
        self.vault_id = vault_id
        self.registry = registry
        self.cache = cache
        self.revalidate_s = revalidate_s
        self._lock = threading.Lock()
        self._epoch: str | None = None
        self._checked_at = float("-inf")
        self._states: dict[bytes, tuple[str, bytes | None, str, str | None]] = {}
        self.kms_usage = KmsUsage()
        """KMS calls made for each scope's keys by this process (see keycustody.usage)."""
        self._failovers: list[tuple[int, Failover]] = []  # (thread that queued it, failover)
        self._held: dict[str, tuple[float, str]] = {}  # KEK id -> (tried last until, why)

    # -- revocation -----------------------------------------------------------------------

    def revalidate(self, session: Session, *, force: bool = False) -> None:
        """Drops cached keys and states if another process changed key state (epoch moved)."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.revalidate_s:
            return
        epoch = session.scalar(select(VaultMeta.value).where(VaultMeta.key == EPOCH_KEY))
        with self._lock:
            if epoch != self._epoch:
                self.cache.purge()
                self._states.clear()
                self._epoch = epoch
            self._checked_at = now

    def changed(self, epoch: str) -> None:
        """Forgets everything after this process changed key state (committed as ``epoch``)."""
        with self._lock:
            self.cache.purge()
            self._states.clear()
            self._epoch = epoch
            self._checked_at = time.monotonic()

    def _state(
        self, session: Session, scope_id: bytes
    ) -> tuple[str, bytes | None, str, str | None]:
        cached = self._states.get(scope_id)
        if cached is not None:
            return cached
        row = session.execute(
            select(
                ScopeRow.state, ScopeRow.parent_id, ScopeRow.path, ScopeRow.erasure_certificate
            ).where(ScopeRow.id == scope_id)
        ).one_or_none()
        if row is None:
            raise NotFoundError("a scope of this key chain no longer exists")
        state = (row.state, row.parent_id, row.path, row.erasure_certificate)
        with self._lock:
            self._states[scope_id] = state
        return state

    def check_usable(self, session: Session, scope: ScopeRef) -> None:
        """Raises unless ``scope`` and every ancestor are usable (neither suspended nor shredded).

        Raises:
            KeyRevokedError: the scope or an ancestor is suspended.
            ShreddedError: the scope or an ancestor was shredded.
        """
        self.revalidate(session)
        scope_id: bytes | None = scope.id
        while scope_id is not None:
            state, parent_id, path, certificate = self._state(session, scope_id)
            if state == SUSPENDED:
                where = "" if scope_id == scope.id else f" (through {path!r})"
                raise KeyRevokedError(f"scope {scope.path!r} is suspended{where}")
            if state == SHREDDED:
                raise ShreddedError(
                    f"scope {path!r} was shredded (erasure certificate {certificate}); "
                    "its keys are destroyed and its data can never be read again"
                )
            scope_id = parent_id

    def cached_key(self, scope: ScopeRef, version: int) -> KeyHandle | None:
        """The handle :meth:`key` would return, when it needs no database: the epoch was
        checked within ``revalidate_s``, the states of ``scope`` and its ancestors are
        cached and usable, and the key is cached. None otherwise (then call :meth:`key`)."""
        if time.monotonic() - self._checked_at >= self.revalidate_s:
            return None
        scope_id: bytes | None = scope.id
        while scope_id is not None:
            state = self._states.get(scope_id)
            if state is None or state[0] in (SUSPENDED, SHREDDED):
                return None
            scope_id = state[1]
        return self.cache.get(scope.id, version)

    def cached_keys(self, scope: ScopeRef, versions: set[int]) -> dict[int, KeyHandle] | None:
        """:meth:`keys` when :meth:`cached_key` serves every version, else None."""
        keys = {}
        for version in versions:
            key = self.cached_key(scope, version)
            if key is None:
                return None
            keys[version] = key
        return keys

    # -- keys -----------------------------------------------------------------------------

    def context(self, scope_id: bytes, version: int) -> EncryptionContext:
        """KMS encryption context of a tenant's scope key version."""
        return EncryptionContext(
            {
                "keycustody": "scope-key/v1",
                "vault": self.vault_id,
                "scope": scope_id.hex(),
                "version": str(version),
            }
        )

    def wrap_version(
        self,
        session: Session,
        scope_id: bytes,
        parent: ScopeRef | None,
        keks: Sequence[str],
        version: int,
        key: KeyHandle,
        *,
        path: str,
    ) -> VersionWrap:
        """Wraps a scope key version under every KEK of a tenant (``keks``, primary first: one
        KMS call each) or under the parent's active key (child scopes; ``keks`` is ignored).
        ``path`` is for usage counts."""
        if parent is None:
            if not keks:
                raise ConfigError("a tenant scope needs a KEK")
            context = self.context(scope_id, version)
            wraps = []
            for kek_id in keks:
                wraps.append(self.registry.wrap(KeyId(kek_id), key, context))
                self.kms_usage.add(path)
            first = wraps[0]
            return VersionWrap(
                {
                    "wrapped": first.ciphertext,
                    "kek_id": first.key_id,
                    "kek_version": first.key_version,
                    "parent_version": None,
                },
                wraps[1:],
            )
        parent_key = self.key(session, parent, parent.active_version)
        aad = child_aad(self.vault_id, scope_id, version, parent.id, parent.active_version)
        return VersionWrap(
            {
                "wrapped": parent_key.wrap(key, aad),
                "kek_id": None,
                "kek_version": None,
                "parent_version": parent.active_version,
            }
        )

    # -- unwrapping under one of several KEKs -----------------------------------------------

    def unwrap_tenant(
        self, scope: ScopeRef, version: int, wraps: Sequence[WrappedKey]
    ) -> tuple[KeyHandle, WrappedKey]:
        """Unwraps a tenant key version with the first of its KEK wraps that works (primary
        first; KEKs that failed lately for availability reasons last); returns the handle
        and the wrap used. Every unwrap that passed a KEK over is queued as a
        :class:`Failover` for the audit trail.

        Raises:
            KeyCustodyError: every KEK failed: the primary's error (its type), naming each
                KEK's failure.
        """
        if len(wraps) == 1:  # one KEK: its error as it is
            handle = self.registry.unwrap(wraps[0], self.context(scope.id, version))
            self.kms_usage.add(scope.path)
            return handle, wraps[0]
        now = time.monotonic()
        with self._lock:
            held = {k: v for k, v in self._held.items() if v[0] > now}
        order = [w for w in wraps if w.key_id not in held] + [w for w in wraps if w.key_id in held]
        failed: list[tuple[str, str, str]] = [
            (w.key_id, w.key_version, f"{held[w.key_id][1]} (failed lately; tried last)")
            for w in wraps
            if w.key_id in held
        ]
        errors: dict[str, KeyCustodyError] = {}
        context = self.context(scope.id, version)
        for wrapped in order:
            try:
                handle = self.registry.unwrap(wrapped, context)
            except KeyCustodyError as exc:
                self.kms_usage.add(scope.path)
                errors[wrapped.key_id] = exc
                reason = type(exc).__name__
                failed = [f for f in failed if f[0] != wrapped.key_id]
                failed.append((wrapped.key_id, wrapped.key_version, reason))
                if not isinstance(exc, IntegrityError):  # a bad wrap is not a KEK outage
                    with self._lock:
                        self._held[wrapped.key_id] = (time.monotonic() + FAILOVER_HOLD_S, reason)
                continue
            self.kms_usage.add(scope.path)
            with self._lock:
                self._held.pop(wrapped.key_id, None)
            if wrapped is not wraps[0] or failed:
                passed = tuple(f for f in failed if f[0] != wrapped.key_id)
                failover = Failover(
                    scope.id, scope.path, version, wrapped.key_id, wrapped.key_version, passed
                )
                with self._lock:
                    self._failovers.append((threading.get_ident(), failover))
            return handle, wrapped
        primary = errors.get(wraps[0].key_id) or next(iter(errors.values()))
        summary = "; ".join(f"{k}: {type(e).__name__}: {e}" for k, e in errors.items())
        raise type(primary)(
            f"no KEK of tenant {scope.path!r} could unwrap key version {version} ({summary})"
        ) from primary

    def has_failovers(self) -> bool:
        """Whether the calling thread has queued failovers that are not taken yet."""
        me = threading.get_ident()
        with self._lock:
            return any(thread == me for thread, _ in self._failovers)

    def take_failovers(self, *, every_thread: bool = False) -> list[Failover]:
        """The failovers the calling thread queued since it last took them (the vault records
        them), or those of every thread.

        Only the thread that queued a failover takes it (but for ``every_thread``, when the
        vault closes): another thread's transaction could commit after that thread's read
        returned its data, or roll back."""
        me = threading.get_ident()
        with self._lock:
            taken = [f for thread, f in self._failovers if every_thread or thread == me]
            if taken:
                self._failovers = [
                    (thread, f)
                    for thread, f in self._failovers
                    if not (every_thread or thread == me)
                ]
        return taken

    def requeue_failovers(self, failovers: list[Failover]) -> None:
        """Puts back failovers that could not be recorded (queued by the calling thread), and
        drops the keys they unwrapped from the cache, so that nothing keeps serving through
        an unrecorded failover."""
        me = threading.get_ident()
        with self._lock:
            self._failovers[:0] = [(me, f) for f in failovers]
        self.cache.purge({f.scope_id for f in failovers})

    def key(
        self, session: Session, scope: ScopeRef, version: int, *, compromised_ok: bool = False
    ) -> KeyHandle:
        """The unwrapped key of ``scope`` at ``version``, from cache or unwrapped up the tree.

        Args:
            compromised_ok: Allow a COMPROMISED version (only re-encryption does).

        Raises:
            KeyRevokedError: the scope or an ancestor is suspended, or its KEK is disabled.
            ShreddedError: the key version was destroyed.
            IntegrityError: the stored key does not authenticate or does not exist.
        """
        self.check_usable(session, scope)
        cached = self.cache.get(scope.id, version)
        if cached is not None:
            return cached  # compromised versions are never cached
        if not 0 < version <= MAX_KEY_VERSION:
            # A tampered header can carry any u32; no database column needs to see it.
            raise IntegrityError(f"scope {scope.path!r} has no key version {version}")
        row = session.get(ScopeKeyRow, (scope.id, version))
        if row is None:
            raise IntegrityError(f"scope {scope.path!r} has no key version {version}")
        if row.state == DESTROYED or row.wrapped is None:
            raise ShreddedError(f"key version {version} of scope {scope.path!r} was destroyed")
        if row.state == COMPROMISED and not compromised_ok:
            raise KeyRevokedError(
                f"key version {version} of scope {scope.path!r} is marked compromised; "
                "re-encrypt the scope (scope.reencrypt()) to read its records again"
            )
        if scope.parent_id is None:
            wrapped = WrappedKey(KeyId(row.kek_id or ""), row.kek_version or "", row.wrapped)
            wraps = [wrapped, *extra_wraps(session, scope.id, version)]
            handle, _ = self.unwrap_tenant(scope, version, wraps)
        else:
            parent_row = session.get(ScopeRow, scope.parent_id)
            if parent_row is None or row.parent_version is None:
                raise IntegrityError(f"scope {scope.path!r} lost its parent key")
            parent = ScopeRef.of(parent_row)
            parent_key = self.key(session, parent, row.parent_version, compromised_ok=True)
            aad = child_aad(self.vault_id, scope.id, version, parent.id, row.parent_version)
            handle = parent_key.unwrap(row.wrapped, aad)
        if row.state != COMPROMISED:
            self.cache.put(scope.id, version, handle)
        return handle

    def keys(
        self,
        session: Session,
        scope: ScopeRef,
        versions: set[int],
        *,
        compromised_ok: bool = False,
    ) -> dict[int, KeyHandle]:
        """Handles for every version in ``versions``."""
        return {v: self.key(session, scope, v, compromised_ok=compromised_ok) for v in versions}


_F = TypeVar("_F", bound=Callable[..., Any])


def records_failovers(method: _F) -> _F:
    """Makes a Vault or Scope method write the KEK failovers its thread queued while it ran,
    and that no write transaction of it recorded (``Vault._failovers_before_commit``), to the
    audit trail when it ends, before it returns, after its own transactions
    (``Vault._flush_failovers``; fail closed): for reads, and for writes that failed. Nested
    decorated calls flush early, which is harmless."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        vault = getattr(self, "_vault", self)
        try:
            result = method(self, *args, **kwargs)
        except BaseException:
            with contextlib.suppress(KeyCustodyError):
                vault._flush_failovers()  # the operation's own error matters more
            raise
        vault._flush_failovers()
        return result

    return cast(_F, wrapper)


_SCOPE_REF_COLUMNS = ", ".join(f.name for f in fields(ScopeRef))


def _scope_statement(paramstyle: str, scope_id: bytes) -> tuple[str, Any]:
    qmark = paramstyle == "qmark"  # SQLite; psycopg takes %(name)s
    sql = (
        f"SELECT {_SCOPE_REF_COLUMNS} FROM {ScopeRow.__tablename__} "  # noqa: S608
        f"WHERE id = {'?' if qmark else '%(id)s'}"
    )
    return sql, (scope_id,) if qmark else {"id": scope_id}


def read_scope(session: Session, scope_id: bytes) -> ScopeRef | None:
    """The current facts of scope ``scope_id`` (None if it is gone), with one driver
    statement: every write reads them first, and an ORM get costs several times what the
    query does (0.6-1 ms against 0.1-0.3 ms per call)."""
    conn = session.connection()
    sql, params = _scope_statement(conn.dialect.paramstyle, scope_id)
    row = conn.exec_driver_sql(sql, params).one_or_none()
    return None if row is None else ScopeRef(*row)


def peek_scope(engine: Engine, scope_id: bytes) -> ScopeRef | None:
    """:func:`read_scope` on a pooled driver connection, outside any session: for seal and
    open, whose keys come from the cache nearly always. A session's setup and teardown cost
    0.2 ms, and 0.5 ms more right after a 32 MiB batch has flushed the CPU caches: a third of
    what sealing 32 MiB takes on the other core. Database errors raise as SQLAlchemy's
    (parameters hidden), as they would through a session.
    """
    sql, params = _scope_statement(engine.dialect.paramstyle, scope_id)
    with driver_connection(engine) as conn:
        rows = driver_rows(conn, engine.dialect, sql, params)
    return ScopeRef(*rows[0]) if rows else None


def load_scope(session: Session, path: str) -> ScopeRef:
    """The scope at ``path``.

    Raises:
        NotFoundError: no such scope.
    """
    row = session.scalars(select(ScopeRow).where(ScopeRow.path == path)).one_or_none()
    if row is None:
        raise NotFoundError(
            f"scope {path!r} does not exist (created by vault.scope(path, create=True), or "
            "by keycustody ingest DIR --scope PATH)"
        )
    return ScopeRef.of(row)
