"""Creating and unwrapping scope keys along the tree up to the customer's KEK.

A tenant's scope key versions are wrapped by its KEK through the KMS (one call per version);
a child scope's versions are wrapped by a version of its parent's scope key, in Rust, with
associated data naming both ends of the edge, so a wrapped key cannot be moved in the tree.

Revocation across processes: every change of a scope's or key's state bumps a ``key_epoch``
value in ``vault_meta`` in the same transaction. Each process re-reads the epoch at most every
``revalidate_s`` seconds (default 1 s) and, when it changed, drops its cached keys and scope
states. So a suspend, shred or key destruction made by one process stops every other process
within ``revalidate_s`` (and at once in the process that made it).
"""

from __future__ import annotations

import secrets
import struct
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from keycustody._core import KeyHandle
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    KeyRevokedError,
    NotFoundError,
    ShreddedError,
)
from keycustody.keys.cache import KeyCache
from keycustody.keys.states import COMPROMISED, DESTROYED, SHREDDED, SUSPENDED
from keycustody.kms.registry import ProviderRegistry
from keycustody.storage.models import ScopeKeyRow, ScopeRow, VaultMeta
from keycustody.types import EncryptionContext, KeyId, WrappedKey
from keycustody.usage import KmsUsage

EPOCH_KEY = "key_epoch"

MAX_KEY_VERSION = 2**31 - 1
"""Key versions are stored as 32-bit signed integers (PostgreSQL ``integer``)."""


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
        kek_id: str | None,
        version: int,
        key: KeyHandle,
        *,
        path: str,
    ) -> dict[str, object]:
        """Wraps a scope key version under the KEK (tenants) or the parent's active key;
        returns the ``scope_keys`` column values to store (``path`` is for usage counts)."""
        if parent is None:
            if kek_id is None:
                raise ConfigError("a tenant scope needs a KEK")
            wrapped = self.registry.wrap(KeyId(kek_id), key, self.context(scope_id, version))
            self.kms_usage.add(path)
            return {
                "wrapped": wrapped.ciphertext,
                "kek_id": wrapped.key_id,
                "kek_version": wrapped.key_version,
                "parent_version": None,
            }
        parent_key = self.key(session, parent, parent.active_version)
        aad = child_aad(self.vault_id, scope_id, version, parent.id, parent.active_version)
        return {
            "wrapped": parent_key.wrap(key, aad),
            "kek_id": None,
            "kek_version": None,
            "parent_version": parent.active_version,
        }

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
            handle = self.registry.unwrap(wrapped, self.context(scope.id, version))
            self.kms_usage.add(scope.path)
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


def load_scope(session: Session, path: str) -> ScopeRef:
    """The scope at ``path``.

    Raises:
        NotFoundError: no such scope.
    """
    row = session.scalars(select(ScopeRow).where(ScopeRow.path == path)).one_or_none()
    if row is None:
        raise NotFoundError(f"scope {path!r} does not exist (open it with create=True)")
    return ScopeRef.of(row)
