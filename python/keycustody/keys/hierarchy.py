"""Creating and unwrapping scope keys along the tree up to the customer's KEK.

A tenant's scope key versions are wrapped by its KEK through the KMS (one call per version);
a child scope's versions are wrapped by a version of its parent's scope key, in Rust, with
associated data naming both ends of the edge, so a wrapped key cannot be moved in the tree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sqlalchemy import select
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
from keycustody.kms.registry import ProviderRegistry
from keycustody.storage.models import ScopeKeyRow, ScopeRow
from keycustody.types import EncryptionContext, KeyId, WrappedKey

ACTIVE = "ACTIVE"
SUSPENDED = "SUSPENDED"
DESTROYED = "DESTROYED"


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


class KeyHierarchy:
    """Unwraps scope keys (cache first) and wraps new ones, for one vault."""

    def __init__(self, vault_id: str, registry: ProviderRegistry, cache: KeyCache) -> None:
        self.vault_id = vault_id
        self.registry = registry
        self.cache = cache

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

    def wrap_new(
        self,
        session: Session,
        scope_id: bytes,
        parent: ScopeRef | None,
        kek_id: str | None,
        version: int,
        key: KeyHandle,
    ) -> dict[str, object]:
        """Wraps a new scope key version; returns the ``scope_keys`` column values to store."""
        if parent is None:
            if kek_id is None:
                raise ConfigError("a tenant scope needs a KEK")
            wrapped = self.registry.wrap(KeyId(kek_id), key, self.context(scope_id, version))
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

    def key(self, session: Session, scope: ScopeRef, version: int) -> KeyHandle:
        """The unwrapped key of ``scope`` at ``version``, from cache or unwrapped up the tree.

        Raises:
            KeyRevokedError: the scope is suspended.
            ShreddedError: the key version was destroyed.
            IntegrityError: the stored key does not authenticate or does not exist.
        """
        if scope.state == SUSPENDED:
            raise KeyRevokedError(f"scope {scope.path!r} is suspended")
        cached = self.cache.get(scope.id, version)
        if cached is not None:
            return cached
        row = session.get(ScopeKeyRow, (scope.id, version))
        if row is None:
            raise IntegrityError(f"scope {scope.path!r} has no key version {version}")
        if row.state == DESTROYED or row.wrapped is None:
            raise ShreddedError(f"key version {version} of scope {scope.path!r} was destroyed")
        if scope.parent_id is None:
            wrapped = WrappedKey(KeyId(row.kek_id or ""), row.kek_version or "", row.wrapped)
            handle = self.registry.unwrap(wrapped, self.context(scope.id, version))
        else:
            parent_row = session.get(ScopeRow, scope.parent_id)
            if parent_row is None or row.parent_version is None:
                raise IntegrityError(f"scope {scope.path!r} lost its parent key")
            parent = ScopeRef.of(parent_row)
            parent_key = self.key(session, parent, row.parent_version)
            aad = child_aad(self.vault_id, scope.id, version, parent.id, row.parent_version)
            handle = parent_key.unwrap(row.wrapped, aad)
        self.cache.put(scope.id, version, handle)
        return handle

    def keys(self, session: Session, scope: ScopeRef, versions: set[int]) -> dict[int, KeyHandle]:
        """Handles for every version in ``versions``."""
        return {v: self.key(session, scope, v) for v in versions}


def load_scope(session: Session, path: str) -> ScopeRef:
    """The scope at ``path``.

    Raises:
        NotFoundError: no such scope.
    """
    row = session.scalars(select(ScopeRow).where(ScopeRow.path == path)).one_or_none()
    if row is None:
        raise NotFoundError(f"scope {path!r} does not exist (open it with create=True)")
    return ScopeRef.of(row)
