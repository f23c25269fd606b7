"""Vault: opens a store, routes KEKs, creates scopes, owns sessions and the key cache.

Every stored byte is encrypted under a key chain that ends in the customer's KEK:
KEK (KMS) -> scope key version (wrapped in ``scope_keys``) -> per-record DEK (made, used and
wiped in Rust; stored wrapped in the record header). See :mod:`keycustody.scope` for records.
"""

from __future__ import annotations

import contextlib
import getpass
import secrets
import socket
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from keycustody import _core, usage
from keycustody.audit import AuditLog
from keycustody.errors import (
    ConfigError,
    InvalidInputError,
    KeyCustodyError,
    KeyRevokedError,
    NotFoundError,
    ShreddedError,
    StorageError,
)
from keycustody.keys import lineage, rotation, shredding
from keycustody.keys.cache import KeyCache
from keycustody.keys.hierarchy import KeyHierarchy, ScopeRef, load_scope
from keycustody.keys.lineage import Protection
from keycustody.keys.shredding import ErasureCertificate
from keycustody.keys.states import ACTIVE
from keycustody.kms.base import KmsProvider
from keycustody.kms.local import LocalKMS
from keycustody.kms.registry import ProviderRegistry
from keycustody.scope import Scope
from keycustody.storage import schema
from keycustody.storage.engine import RECORD_WRITE, WRITE, make_engine
from keycustody.storage.models import ScopeKeyRow, ScopeRow, VaultMeta
from keycustody.storage.repository import RecordWriter
from keycustody.usage import ScopeUsage
from keycustody.validation import MAX_RECORD_BYTES, check_path

AUDIT_KEK_NAME = "keycustody-audit"


def _now() -> datetime:
    return datetime.now(UTC)


def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _default_audit_kek(registry: ProviderRegistry) -> str:
    try:
        local = registry.provider("local:x")
    except KeyCustodyError:
        raise ConfigError(
            "pass audit_kek= (a KEK id for the audit trail's key) when LocalKMS is not used"
        ) from None
    if not isinstance(local, LocalKMS):
        raise ConfigError("pass audit_kek= (a KEK id for the audit trail's key)")
    return local.create_key(AUDIT_KEK_NAME, exist_ok=True)


class Vault:
    """An envelope-encrypted store of records under customer-held keys.

    Open it with :meth:`Vault.open`; use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        engine: Engine,
        registry: ProviderRegistry,
        *,
        cache_ttl: float,
        max_key_uses: int,
        revalidate_s: float,
        rotation_period: timedelta | None,
        actor: str,
        max_record_bytes: int,
        audit_kek: str,
    ) -> None:
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._registry = registry
        self.actor = actor
        self.max_record_bytes = max_record_bytes
        self.id = self._vault_id()
        self._records = RecordWriter(engine.dialect)
        self._keys = KeyHierarchy(
            self.id, registry, KeyCache(cache_ttl, max_key_uses), revalidate_s
        )
        if rotation_period is not None and rotation_period <= timedelta(0):
            raise ConfigError("rotation_period must be positive")
        self.rotation_period = rotation_period
        self.audit_kek = audit_kek
        self.audit = AuditLog(
            self.id, actor, self._write, registry, audit_kek, read_sessions=self._read
        )
        """The tamper-evident audit trail of this vault (verify, export, tail)."""

    @classmethod
    def open(
        cls,
        url: str,
        *,
        kms: KmsProvider | Iterable[KmsProvider],
        cache_ttl: float = 300.0,
        max_key_uses: int = 1_000_000,
        revalidate_s: float = 1.0,
        rotation_period: timedelta | None = None,
        actor: str | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
        audit_kek: str | None = None,
    ) -> Vault:
        """Opens (creating if needed) the vault stored at ``url``.

        Args:
            url: SQLAlchemy URL, e.g. ``sqlite:///ctx.db``.
            kms: One KMS provider or several; key ids route to them by prefix.
            cache_ttl: Seconds an unwrapped scope key stays cached (0: no cache).
            max_key_uses: Lookups a cached key serves before it is unwrapped again.
            revalidate_s: Bound, in seconds, on how long this process may take to notice a
                suspend, shred or key destruction made by another process.
            rotation_period: Rotate a scope's key automatically, on its next write, once the
                active version is older than this.
            actor: Who acts, for the audit trail (default ``user@host``).
            max_record_bytes: Largest payload accepted per record.
            audit_kek: KEK that wraps the audit trail's HMAC key. Default with LocalKMS: its
                own key ``local:keycustody-audit`` (never a tenant's KEK, so no shred can
                destroy the evidence); required with other providers.

        Raises:
            ConfigError: bad URL, backend or providers.
            StorageError: the database cannot be opened or migrated.
        """
        registry = ProviderRegistry(kms)
        audit_kek = audit_kek or _default_audit_kek(registry)
        engine = make_engine(url)
        try:
            schema.upgrade(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StorageError(f"cannot open or migrate the database: {exc}") from exc
        try:
            vault = cls(
                engine,
                registry,
                cache_ttl=cache_ttl,
                max_key_uses=max_key_uses,
                revalidate_s=revalidate_s,
                rotation_period=rotation_period,
                actor=actor or _default_actor(),
                max_record_bytes=max_record_bytes,
                audit_kek=audit_kek,
            )
            # One KMS call for the audit key, outside any transaction (not under a write lock).
            vault.audit.ensure_key()
        except BaseException:
            # A bad setting or an unavailable audit key: close the connections migrate opened.
            engine.dispose()
            raise
        return vault

    def __repr__(self) -> str:
        return f"<Vault {self.id} {self._engine.url.render_as_string(hide_password=True)}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Writes this process's KMS usage counts to the audit trail, drops cached keys and
        closes database connections."""
        with contextlib.suppress(KeyCustodyError, SQLAlchemyError):
            usage.flush_kms_usage(self)
        self._keys.cache.purge()
        self._engine.dispose()

    @property
    def kms_calls(self) -> int:
        """KMS wrap/unwrap calls this vault has made so far."""
        return self._registry.calls

    # -- sessions -----------------------------------------------------------------------

    def _read(self) -> Session:
        return self._sessions()

    def _write(self) -> Session:
        """A session for transactions that change keys (one at a time)."""
        return self._sessions(bind=self._engine.execution_options(**WRITE))

    def _write_records(self) -> Session:
        """A session for transactions that write records under key versions they leave
        alone (several at once on PostgreSQL, never during a key change)."""
        return self._sessions(bind=self._engine.execution_options(**RECORD_WRITE))

    def _vault_id(self) -> str:
        try:
            with self._write() as s, s.begin():
                row = s.get(VaultMeta, "vault_id")
                if row is None:
                    row = VaultMeta(key="vault_id", value=secrets.token_hex(16))
                    s.add(row)
                return row.value
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read the vault id: {exc}") from exc

    # -- scopes -------------------------------------------------------------------------

    def scope(self, path: str, *, kek: str | None = None, create: bool = False) -> Scope:
        """The scope at ``path`` (``acme``, ``acme/subjects/alice``).

        Args:
            path: '/'-separated scope path; the first segment is the tenant.
            kek: For a new tenant, the KEK id that protects it (default: the first provider's
                default key). Only top-level scopes name a KEK.
            create: Create the scope (and missing ancestors) if it does not exist.

        Raises:
            NotFoundError: the scope does not exist and ``create`` is false.
            ConfigError: ``kek`` given for a child scope or differs from the tenant's KEK.
        """
        path = check_path(path)
        if kek is not None:
            if "/" in path:
                raise ConfigError("only top-level scopes (tenants) name a KEK; omit kek=")
            self._registry.provider(kek)
        try:
            with self._read() as s:
                ref = load_scope(s, path)
        except NotFoundError:
            if not create:
                raise
            ref = self._create_path(path, kek)
        if kek is not None and ref.kek_id != kek:
            raise ConfigError(
                f"tenant {path!r} is protected by {ref.kek_id!r}, not {kek!r}; "
                "use vault.rotate_kek to move it"
            )
        return Scope(self, ref)

    def _create_path(self, path: str, kek: str | None) -> ScopeRef:
        segments = path.split("/")
        parent: ScopeRef | None = None
        for depth in range(1, len(segments) + 1):
            prefix = "/".join(segments[:depth])
            try:
                with self._read() as s:
                    parent = load_scope(s, prefix)
                continue
            except NotFoundError:
                pass
            parent = self._create_scope(prefix, parent, kek if depth == 1 else None)
        if parent is None:
            raise InvalidInputError("empty scope path")
        return parent

    def _create_scope(self, path: str, parent: ScopeRef | None, kek: str | None) -> ScopeRef:
        scope_id = secrets.token_bytes(_core.SCOPE_ID_LEN)
        kek_id = (kek or self._registry.default_key_id()) if parent is None else None
        key = _core.KeyHandle.generate()
        now = _now()
        try:
            # The KMS wrap happens before the write transaction: no lock held across a KMS call.
            with self._read() as s:
                wrapped = self._keys.wrap_version(s, scope_id, parent, kek_id, 1, key, path=path)
            with self._write() as s, s.begin():
                s.add(
                    ScopeRow(
                        id=scope_id,
                        path=path,
                        parent_id=parent.id if parent else None,
                        kek_id=kek_id,
                        state=ACTIVE,
                        active_version=1,
                        created_at=now,
                        state_changed_at=now,
                    )
                )
                s.flush()
                s.add(
                    ScopeKeyRow(
                        scope_id=scope_id,
                        version=1,
                        state=ACTIVE,
                        created_at=now,
                        state_changed_at=now,
                        **wrapped,
                    )
                )
                self._audit_change(
                    s,
                    "scope.create",
                    path,
                    version=1,
                    kek_id=wrapped["kek_id"],
                    kek_version=wrapped["kek_version"],
                    details={"parent": parent.path if parent else None},
                )
        except DbIntegrityError:
            # Another process created it first: use theirs.
            with self._read() as s:
                return load_scope(s, path)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot create scope {path!r}: {exc}") from exc
        self._keys.cache.put(scope_id, 1, key)
        return ScopeRef(scope_id, path, parent.id if parent else None, kek_id, ACTIVE, 1)

    def scopes(self) -> list[str]:
        """Paths of every scope, sorted."""
        with self._read() as s:
            return sorted(s.scalars(select(ScopeRow.path)))

    # -- key lifecycle ------------------------------------------------------------------

    def rotate_kek(self, tenant: str, new_kek: str) -> int:
        """Moves a tenant to a new KEK: every live scope key version is unwrapped by the old KEK
        and wrapped by ``new_kek`` (two KMS calls per version); records are untouched.

        Passing the current KEK id rewraps under its current version (after a KMS rotation).

        Returns:
            The number of scope key versions rewrapped.
        """
        return rotation.rotate_kek(self, self.scope(tenant)._ref, new_kek)

    def protected_by(self, key: str) -> Protection:
        """Which records a key protects: a KEK id (``local:acme-kek``) or a scope key version
        (``acme#2``; ``acme`` alone means every version of that scope).

        Counts include child scopes whose keys hang below the key.
        """
        return lineage.protected_by(self, key)

    # -- crypto-shredding ----------------------------------------------------------------

    def shred(
        self, path: str, *, reason: str, destroy_kek: bool = False, durable: bool = False
    ) -> ErasureCertificate:
        """Crypto-shreds a scope and its subtree: destroys every key version, purges key
        caches in every process, scrubs the database files and issues a certificate.

        Cost depends on the number of keys, not records. Reads of the scope's records then
        raise ShreddedError naming the certificate. Idempotent and crash-safe (one
        transaction; a rerun completes the scrub and certificate).

        Args:
            path: The scope to erase (a tenant or any child, e.g. ``acme/subjects/7f3a``).
            reason: The request reference (e.g. ``GDPR Art.17 request #123``).
            destroy_kek: For a tenant with a KEK of its own, also destroy the KEK in the KMS
                (as far as the provider allows).
            durable: Also run phase 2 now (:meth:`complete_erasures`).

        Returns:
            The erasure certificate (also stored, and bound into the audit trail).
        """
        certificate = shredding.shred(self, path, reason, destroy_kek=destroy_kek)
        if durable:
            updated = {c.id: c for c in shredding.complete_erasures(self)}
            certificate = updated.get(certificate.id, certificate)
        return certificate

    def complete_erasures(self) -> list[ErasureCertificate]:
        """Phase 2 for every pending erasure: re-keys the scopes above each shredded scope up
        to the KEK, gives the KEK a new version, rewraps every tenant under it and destroys
        the old KEK versions in the KMS, so no copy of the database (backups included) can
        unwrap the shredded keys. Returns the updated certificates."""
        return shredding.complete_erasures(self)

    def certificates(self) -> list[ErasureCertificate]:
        """Every erasure certificate, oldest first."""
        return shredding.certificates(self)

    def verify_certificate(self, document: dict[str, object]) -> tuple[bool, str]:
        """Checks a certificate (as parsed JSON) against the audit trail: ``(ok, why)``."""
        return shredding.verify_certificate(self, document)

    def usage(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[ScopeUsage]:
        """Usage per scope for chargeback: records and bytes stored now; writes, key
        operations, KMS calls and denied accesses in ``[since, until)`` (from the audit trail,
        plus this process's KMS calls not yet written to it)."""
        return usage.usage(self, since=since, until=until)

    def purge(self) -> int:
        """Deletes the record rows of shredded scopes (already unreadable); returns how many."""
        return shredding.purge(self)

    def _audit_change(
        self,
        session: Session,
        action: str,
        subject: str,
        *,
        version: int | None = None,
        kek_id: object = None,
        kek_version: object = None,
        details: dict[str, object] | None = None,
    ) -> None:
        """Records a key lifecycle event in the caller's transaction (fail closed)."""
        self.audit.append(
            session,
            action=action,
            subject=subject if version is None else f"{subject}#{version}",
            kms_key_id=None if kek_id is None else str(kek_id),
            kms_key_version=None if kek_version is None else str(kek_version),
            details=details,
        )

    def _audit_failure(self, action: str, subject: str, error: KeyCustodyError) -> None:
        """Records a denied or failed operation in a transaction of its own (the operation's
        own transaction has rolled back). A failure to record is not allowed to hide the
        original error."""
        outcome = "denied" if isinstance(error, KeyRevokedError | ShreddedError) else "failed"
        with contextlib.suppress(KeyCustodyError, SQLAlchemyError):
            self.audit.record(
                action, subject, outcome=outcome, details={"error": type(error).__name__}
            )
