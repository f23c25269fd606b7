"""Database schema (SQLAlchemy 2.0 typed models). Alembic migrations mirror it.

No plaintext names, payloads or keys are stored: names are encrypted and found through a
keyed blind index, payloads are AES-256-GCM ciphertext, scope keys are stored wrapped, in a
table of their own so that scrubbing destroyed key material is cheap.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a naming convention and our column type map."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        bytes: LargeBinary,
    }


class VaultMeta(Base):
    """Facts about the vault itself (its id, schema notes)."""

    __tablename__ = "vault_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


class ScopeRow(Base):
    """A node of the scope tree; a top-level scope is a tenant and names its KEK."""

    __tablename__ = "scopes"

    id: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    path: Mapped[str] = mapped_column(String(512), unique=True)
    parent_id: Mapped[bytes | None] = mapped_column(ForeignKey("scopes.id"), index=True)
    kek_id: Mapped[str | None] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(16))
    active_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    state_changed_at: Mapped[datetime]
    erasure_certificate: Mapped[str | None] = mapped_column(String(64))


class ScopeKeyRow(Base):
    """One version of a scope key, wrapped by the KEK (tenants) or the parent's scope key."""

    __tablename__ = "scope_keys"

    scope_id: Mapped[bytes] = mapped_column(ForeignKey("scopes.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    wrapped: Mapped[bytes | None]
    kek_id: Mapped[str | None] = mapped_column(String(1024))
    kek_version: Mapped[str | None] = mapped_column(String(256))
    parent_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    state_changed_at: Mapped[datetime]
    deactivated_at: Mapped[datetime | None]
    compromised_at: Mapped[datetime | None]
    destroyed_at: Mapped[datetime | None]


class ScopeKeyWrapRow(Base):
    """An additional wrap of a tenant's scope key version, by one of the tenant's other KEKs.

    The wrap by the tenant's primary KEK (``scopes.kek_id``) stays in ``scope_keys``; each KEK
    added with ``vault.add_kek`` gets a row here per live key version. Any one wrap unwraps the
    version. Rows are deleted (never kept empty) when the version is destroyed, so a live row
    is always key material, in this small table next to ``scope_keys`` for the same scrub.
    """

    __tablename__ = "scope_key_wraps"
    __table_args__ = (
        ForeignKeyConstraint(
            ["scope_id", "version"], ["scope_keys.scope_id", "scope_keys.version"]
        ),
    )

    scope_id: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(1024), primary_key=True)
    kek_version: Mapped[str] = mapped_column(String(256))
    wrapped: Mapped[bytes]
    created_at: Mapped[datetime]


class TenantKekRow(Base):
    """One of a tenant's additional KEKs (the primary is ``scopes.kek_id``), in failover order.

    Unwrapping tries the primary first, then these by ``position``; new key versions are
    wrapped under all of them.
    """

    __tablename__ = "tenant_keks"

    scope_id: Mapped[bytes] = mapped_column(ForeignKey("scopes.id"), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(1024), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    added_at: Mapped[datetime]


class RecordRow(Base):
    """A stored record: v1 header, encrypted name and payload ciphertext."""

    __tablename__ = "records"
    __table_args__ = (
        UniqueConstraint("scope_id", "name_index"),
        ForeignKeyConstraint(
            ["scope_id", "key_version"], ["scope_keys.scope_id", "scope_keys.version"]
        ),
        # Led by key_version: led by scope_id it would compete with the unique index for
        # lookups by name (migration 0008 says what that cost on PostgreSQL).
        Index("ix_records_version_scope", "key_version", "scope_id"),
        # Derived records only: the NULLs of all others are never looked up (migration 0010).
        Index(
            "ix_records_source_id",
            "source_id",
            sqlite_where=text("source_id IS NOT NULL"),
            postgresql_where=text("source_id IS NOT NULL"),
        ),
    )

    record_id: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    scope_id: Mapped[bytes] = mapped_column(LargeBinary(16))
    name_index: Mapped[bytes] = mapped_column(LargeBinary(32))
    key_version: Mapped[int | None] = mapped_column(Integer)
    """The scope key version wrapping the DEK; NULL for a derived record (see source_id)."""
    header: Mapped[bytes]
    name_ct: Mapped[bytes]
    body: Mapped[bytes]
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    sealed_version: Mapped[int] = mapped_column(Integer, server_default="1")
    source_id: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    """For a derived record: the record whose DEK wraps this record's DEK."""
    blob_key: Mapped[str | None] = mapped_column(String(128))
    """Where the ciphertext is when it is in the blob store (``body`` is then empty):
    ``<scope id hex>/<record id hex>``; NULL when it is inline (see :mod:`keycustody.payloads`)."""


class SegmentRow(Base):
    """One sealed segment of a stream record (suite 2); deleted with its record."""

    __tablename__ = "segments"

    record_id: Mapped[bytes] = mapped_column(
        ForeignKey("records.record_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[bytes]


class LineageEventRow(Base):
    """A key event in a record's history: per record (sealed, re-encrypted) or per scope and
    version range (a rewrap batch or a KEK move covers every record under that version)."""

    __tablename__ = "lineage_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope_id: Mapped[bytes] = mapped_column(ForeignKey("scopes.id"), index=True)
    record_id: Mapped[bytes | None] = mapped_column(LargeBinary(16), index=True)
    at: Mapped[datetime]
    event: Mapped[str] = mapped_column(String(32))
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int | None] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    details: Mapped[str] = mapped_column(Text)


class AuditEventRow(Base):
    """One event of the hash-chained, MAC-sealed audit trail (see :mod:`keycustody.audit`).

    ``hash`` is SHA-256 over the length-prefixed encoding of every other column but ``mac``
    (``prev_hash`` included), ``mac`` is HMAC-SHA-256 of ``hash`` under the audit key.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(1024))
    kms_key_id: Mapped[str | None] = mapped_column(String(1024))
    kms_key_version: Mapped[str | None] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(16))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    mac: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditKeyRow(Base):
    """The audit MAC key, wrapped by the audit KEK through the KMS (never stored in clear)."""

    __tablename__ = "audit_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kek_id: Mapped[str] = mapped_column(String(1024))
    kek_version: Mapped[str] = mapped_column(String(256))
    wrapped: Mapped[bytes]
    created_at: Mapped[datetime]


class ErasureCertificateRow(Base):
    """An erasure certificate (JSON), bound into the audit trail by its SHA-256."""

    __tablename__ = "erasure_certificates"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope_path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime]
    phase2_status: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
