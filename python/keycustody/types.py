"""Value types shared across keycustody: key ids, wrapped keys, record descriptions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NewType


def utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive time (SQLite stores no zone) is taken as UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


KeyId = NewType("KeyId", str)
"""A KEK id with its provider prefix: ``local:NAME``, ``aws:ARN``, ``azure:URL``, ``pkcs11:L``."""


@dataclass(frozen=True, slots=True)
class EncryptionContext:
    """Non-secret facts a wrapped key is bound to (vault, scope, version): the KMS's AAD."""

    items: Mapping[str, str]

    def to_aad(self) -> bytes:
        """Canonical bytes of the context (sorted JSON), used as associated data."""
        return json.dumps(dict(self.items), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A scope key wrapped by a KEK: which KEK, which of its versions, and the ciphertext."""

    key_id: KeyId
    key_version: str
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """What a stored record is, without its contents."""

    name: str
    record_id: str
    size: int
    key_version: int
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyVersionInfo:
    """One version of a scope key: its state, what wraps it, and how many records it protects."""

    scope: str
    version: int
    state: str
    wrapped_by: str
    """``kek:<key id>#<kek version>`` for tenants, ``scope:<parent path>#v<n>`` for children."""
    records: int
    created_at: datetime
    deactivated_at: datetime | None = None
    compromised_at: datetime | None = None
    destroyed_at: datetime | None = None
    also_wrapped_by: tuple[str, ...] = ()
    """A tenant key version's wraps by the tenant's other KEKs (``kek:<id>#<version>``, in
    failover order); empty for a tenant with one KEK and for child scopes."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (times ISO-8601 UTC, None when the state was never reached)."""

        def when(ts: datetime | None) -> str | None:
            return ts.isoformat() if ts is not None else None

        return {
            "scope": self.scope,
            "version": self.version,
            "state": self.state,
            "wrapped_by": self.wrapped_by,
            "records": self.records,
            "created_at": when(self.created_at),
            "deactivated_at": when(self.deactivated_at),
            "compromised_at": when(self.compromised_at),
            "destroyed_at": when(self.destroyed_at),
            "also_wrapped_by": list(self.also_wrapped_by),
        }
