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
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Engine, event, select
from sqlalchemy.exc import IntegrityError as DbIntegrityError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from keycustody import _core, usage
from keycustody.audit import AuditLog
from keycustody.errors import (
    AuditError,
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
from keycustody.keys.hierarchy import (
    Failover,
    KeyHierarchy,
    ScopeRef,
    load_scope,
    records_failovers,
    tenant_keks,
)
from keycustody.keys.lineage import Protection
from keycustody.keys.shredding import ErasureCertificate
from keycustody.keys.states import ACTIVE
from keycustody.kms.base import KmsProvider
from keycustody.kms.local import LocalKMS
from keycustody.kms.registry import ProviderRegistry
from keycustody.payloads import DEFAULT_THRESHOLD, BlobSweep, Payloads
from keycustody.scope import Scope
from keycustody.storage import schema
from keycustody.storage.blobs import DEFAULT_ORPHAN_GRACE, BlobStore, open_blob_store
from keycustody.storage.engine import (
    RECORD_WRITE,
    WRITE,
    db_message,
    make_engine,
    public_methods_raise_storage_errors,
    shares_one_connection,
)
from keycustody.storage.models import ScopeKeyRow, ScopeRow, TenantKekRow, VaultMeta
from keycustody.storage.repository import RecordStatements
from keycustody.types import KeyVersionInfo
from keycustody.usage import ScopeUsage
from keycustody.validation import MAX_RECORD_BYTES, check_path

AUDIT_KEK_NAME = "keycustody-audit"
_FAILOVERS = "keycustody.failovers"
"""``Session.info`` key: the failovers appended in the session's transaction, until it ends."""


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


@public_methods_raise_storage_errors
class Vault:
    """An envelope-encrypted store of records under customer-held keys.

    Open it with :meth:`Vault.open`; use it as a context manager or call :meth:`close`.
    Every method that touches the database raises :class:`~keycustody.errors.StorageError`
    when it fails, with the driver's message only (never the statement's parameters), chained
    to the SQLAlchemy error; the audit trail's own methods raise AuditError.
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
        blob_store: BlobStore | None = None,
        blob_threshold: int = DEFAULT_THRESHOLD,
    ) -> None:
        self._engine = engine
        self._closed = False
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._payloads = Payloads(blob_store, blob_threshold)
        self._payloads.attach(self._sessions)
        self._registry = registry
        self.actor = actor
        self.max_record_bytes = max_record_bytes
        self.id = self._vault_id()
        self._records = RecordStatements(engine.dialect)
        # Stream reads fetch their next window on these threads while they decrypt, and
        # get_many opens a group of records while it reads the next; not where every
        # checkout is one shared connection (an in-memory database).
        self._prefetch: ThreadPoolExecutor | None = None
        if not shares_one_connection(engine):
            self._prefetch = ThreadPoolExecutor(4, thread_name_prefix="keycustody-prefetch")
        self._keys = KeyHierarchy(
            self.id, registry, KeyCache(cache_ttl, max_key_uses), revalidate_s
        )
        # Through a weak reference: SQLAlchemy keeps a sessionmaker's listeners in a table
        # keyed weakly by its Session class, and a bound method of the vault (which holds the
        # sessionmaker, so the class) would keep its own key, and so an unclosed vault, its
        # engine and its connections, alive for good. Payloads' listeners hold no such path.
        this = weakref.ref(self)

        def before_commit(session: Session) -> None:
            if (vault := this()) is not None:
                vault._failovers_before_commit(session)

        def after_end(session: Session, transaction: SessionTransaction) -> None:
            if (vault := this()) is not None:
                vault._failovers_after_end(session, transaction)

        def refuse_when_closed(*_: Any) -> None:
            # Without it, a closed vault's engine would quietly connect again (and an
            # in-memory database come back empty).
            if (vault := this()) is not None:
                vault._check_open()

        event.listen(self._sessions, "before_commit", before_commit)
        event.listen(self._sessions, "after_commit", self._failovers_after_commit)
        event.listen(self._sessions, "after_transaction_end", after_end)
        event.listen(engine, "do_connect", refuse_when_closed)
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
        blob_store: BlobStore | str | None = None,
        blob_threshold: int = DEFAULT_THRESHOLD,
    ) -> Vault:
        """Opens (creating if needed) the vault stored at ``url``.

        Args:
            url: SQLAlchemy URL, e.g. ``sqlite:///ctx.db``. ``sqlite://`` is an in-memory
                database on one connection, which every thread shares: use it from one thread
                at a time (tests, demos); a file or PostgreSQL for threads.
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
            blob_store: Where the ciphertext of payloads larger than ``blob_threshold``
                goes: a :class:`~keycustody.storage.blobs.BlobStore`
                (:class:`~keycustody.storage.blobs.LocalBlobStore`,
                :class:`~keycustody.storage.blobs.S3BlobStore`) or its URL
                (``file:///PATH``, ``s3://BUCKET/PREFIX``). Headers and wrapped DEKs stay in
                the database. None: every payload is stored inline.
            blob_threshold: Payloads larger than this many bytes (default 4 MiB) go to the
                blob store; stream records too, by total size.

        Raises:
            ConfigError: bad URL, backend or providers.
            StorageError: the database cannot be opened or migrated.
        """
        registry = ProviderRegistry(kms)
        audit_kek = audit_kek or _default_audit_kek(registry)
        store = open_blob_store(blob_store) if isinstance(blob_store, str) else blob_store
        Payloads(store, blob_threshold)  # checks the settings before anything is opened
        engine = make_engine(url)
        try:
            schema.upgrade(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StorageError(f"cannot open or migrate the database: {db_message(exc)}") from exc
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
                blob_store=store,
                blob_threshold=blob_threshold,
            )
            # One KMS call for the audit key, outside any transaction (not under a write lock).
            vault.audit.ensure_key()
        except BaseException:
            engine.dispose()  # a refused open leaves no connection behind
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

    def _check_open(self) -> None:
        """Raises InvalidInputError once the vault is closed."""
        if self._closed:
            raise InvalidInputError("this vault is closed: open it again with Vault.open")

    def close(self) -> None:
        """Writes this process's KMS usage counts to the audit trail, drops cached keys and
        closes database connections. Anything that needs the database afterwards raises
        InvalidInputError; closing again does nothing."""
        if self._closed:
            return
        with contextlib.suppress(KeyCustodyError, SQLAlchemyError):
            self._flush_failovers(every_thread=True)
        with contextlib.suppress(KeyCustodyError, SQLAlchemyError):
            usage.flush_kms_usage(self)
        self._keys.cache.purge()
        if self._prefetch is not None:  # before the connections go: fetches may hold some
            self._prefetch.shutdown(wait=True, cancel_futures=True)
        self._closed = True
        self._engine.dispose()

    @property
    def blob_store(self) -> BlobStore | None:
        """The blob store for large payloads, or None (everything inline)."""
        return self._payloads.store

    @property
    def blob_threshold(self) -> int:
        """Payloads larger than this many bytes go to the blob store (when there is one)."""
        return self._payloads.threshold

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
            raise StorageError(f"cannot read the vault id: {db_message(exc)}") from exc

    # -- scopes -------------------------------------------------------------------------

    @records_failovers
    def scope(
        self, path: str, *, kek: str | Sequence[str] | None = None, create: bool = False
    ) -> Scope:
        """The scope at ``path`` (``acme``, ``acme/subjects/alice``).

        Args:
            path: '/'-separated scope path; the first segment is the tenant.
            kek: For a new tenant, the KEK id that protects it, or a list of KEK ids (e.g.
                ``["aws:alias/acme", "pkcs11:acme-dr"]`` for multi-cloud or disaster
                recovery): every key version is wrapped under each, any one of them
                unwraps, the first is the primary (tried first). Default: the first
                provider's default key. Only top-level scopes name a KEK. For an existing
                tenant it must name its primary KEK (a string) or its whole list.
            create: Create the scope (and missing ancestors) if it does not exist.

        Raises:
            NotFoundError: the scope does not exist and ``create`` is false.
            ConfigError: ``kek`` given for a child scope, lists a KEK twice, or differs from
                the tenant's KEKs.
        """
        path = check_path(path)
        keks = self._kek_list(kek)
        if keks is not None and "/" in path:
            raise ConfigError("only top-level scopes (tenants) name a KEK; omit kek=")
        try:
            with self._read() as s:
                ref = load_scope(s, path)
        except NotFoundError:
            if not create:
                raise
            ref = self._create_path(path, keks)
        if keks is not None:
            with self._read() as s:
                current = tenant_keks(s, ref.id, ref.kek_id)
            if keks != (current[:1] if isinstance(kek, str) else current):
                raise ConfigError(
                    f"tenant {path!r} is protected by {current!r}, not {keks!r}; "
                    "use vault.rotate_kek, add_kek or remove_kek to change its KEKs"
                )
        return Scope(self, ref)

    def _kek_list(self, kek: str | Sequence[str] | None) -> list[str] | None:
        """``kek=`` as a list of KEK ids, each checked against the configured providers."""
        if kek is None:
            return None
        keks = [kek] if isinstance(kek, str) else list(kek)
        if not keks or not all(isinstance(k, str) and k for k in keks):
            raise ConfigError("kek must be a KEK id or a non-empty list of KEK ids")
        if len(set(keks)) != len(keks):
            raise ConfigError(f"kek lists a KEK twice: {keks!r}")
        for k in keks:
            self._registry.provider(k)
        return keks

    def _create_path(self, path: str, kek: list[str] | None) -> ScopeRef:
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

    def _create_scope(self, path: str, parent: ScopeRef | None, kek: list[str] | None) -> ScopeRef:
        scope_id = secrets.token_bytes(_core.SCOPE_ID_LEN)
        keks = (kek or [self._registry.default_key_id()]) if parent is None else []
        kek_id = keks[0] if keks else None
        key = _core.KeyHandle.generate()
        now = _now()
        try:
            # The KMS wrap happens before the write transaction: no lock held across a KMS call.
            with self._read() as s:
                wrapped = self._keys.wrap_version(s, scope_id, parent, keks, 1, key, path=path)
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
                        **wrapped.columns,
                    )
                )
                s.flush()
                s.add_all(wrapped.rows(scope_id, 1, now))
                s.add_all(
                    TenantKekRow(scope_id=scope_id, kek_id=k, position=i, added_at=now)
                    for i, k in enumerate(keks[1:], start=1)
                )
                self._audit_change(
                    s,
                    "scope.create",
                    path,
                    version=1,
                    kek_id=wrapped.columns["kek_id"],
                    kek_version=wrapped.columns["kek_version"],
                    details={"parent": parent.path if parent else None}
                    | ({"keks": wrapped.keks} if len(keks) > 1 else {}),
                )
        except DbIntegrityError:
            # Another process created it first: use theirs.
            with self._read() as s:
                return load_scope(s, path)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot create scope {path!r}: {db_message(exc)}") from exc
        self._keys.cache.put(scope_id, 1, key)
        return ScopeRef(scope_id, path, parent.id if parent else None, kek_id, ACTIVE, 1)

    def scopes(self) -> list[str]:
        """Paths of every scope, sorted."""
        with self._read() as s:
            return sorted(s.scalars(select(ScopeRow.path)))

    def key_versions(self) -> dict[str, list[KeyVersionInfo]]:
        """Every scope's key versions (as :meth:`Scope.keys` lists them), by scope path in
        sorted order; three queries whatever the number of scopes and records."""
        found = lineage.all_key_versions(self)
        return {path: found[path] for path in sorted(found)}

    # -- key lifecycle ------------------------------------------------------------------

    @records_failovers
    def rotate_kek(self, tenant: str, new_kek: str, *, old: str | None = None) -> int:
        """Replaces one KEK of a tenant: every live scope key version is wrapped by ``new_kek``
        instead (one unwrap, through any of the tenant's KEKs, and one wrap per version);
        records are untouched. ``new_kek`` takes the replaced KEK's place in the list.

        Passing the current KEK id rewraps under its current version (after a KMS rotation).

        Args:
            tenant: The tenant's path.
            new_kek: The KEK id to wrap under.
            old: The KEK of the tenant's list to replace (default: the primary).

        Returns:
            The number of scope key versions rewrapped.

        Raises:
            ConfigError: ``old`` is not one of the tenant's KEKs, or ``new_kek`` already is.
        """
        return rotation.rotate_kek(self, self.scope(tenant)._ref, new_kek, old=old)

    @records_failovers
    def add_kek(self, tenant: str, kek: str) -> int:
        """Adds a KEK to a tenant (e.g. a disaster-recovery key in another KMS): every live
        scope key version is wrapped under it too (one unwrap and one wrap per version;
        records untouched, audited), and every new version from now on. It goes last in the
        failover order.

        Returns:
            The number of scope key versions wrapped under ``kek``.

        Raises:
            ConfigError: ``kek`` already protects the tenant, or no provider serves it.
            ConcurrentRotationError: the tenant's keys changed meanwhile; retry.
        """
        return rotation.add_kek(self, self.scope(tenant)._ref, kek)

    @records_failovers
    def remove_kek(self, tenant: str, kek: str) -> int:
        """Removes a KEK from a tenant: its wraps of the tenant's key versions are deleted.
        Removing the primary makes the next KEK in order the primary. First checks that the
        remaining KEKs unwrap every live key version (one KMS call per version), so removing
        a KEK never strands the tenant. No KMS call touches the removed KEK: copies of the
        database made before still hold its wraps until it is destroyed in its KMS.

        Returns:
            The number of wraps deleted.

        Raises:
            ConfigError: ``kek`` does not protect the tenant, or it is the only one.
            KeyCustodyError: the remaining KEKs cannot unwrap some key version (nothing was
                changed).
        """
        return rotation.remove_kek(self, self.scope(tenant)._ref, kek)

    def keks(self, tenant: str) -> list[str]:
        """A tenant's KEK ids in failover order (the primary first)."""
        ref = self.scope(tenant)._ref
        if ref.parent_id is not None:
            raise ConfigError(f"{tenant!r} is not a tenant: only top-level scopes have KEKs")
        with self._read() as s:
            return tenant_keks(s, ref.id, ref.kek_id)

    def protected_by(self, key: str) -> Protection:
        """Which records a key protects: a KEK id (``local:acme-kek``) or a scope key version
        (``acme#2``; ``acme`` alone means every version of that scope).

        Counts include child scopes whose keys hang below the key.
        """
        return lineage.protected_by(self, key)

    # -- crypto-shredding ----------------------------------------------------------------

    @records_failovers
    def shred(
        self,
        path: str,
        *,
        reason: str,
        destroy_kek: bool = False,
        durable: bool = False,
        new_keks: Mapping[str, str] | None = None,
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
                as far as the provider allows: at once (LocalKMS, PKCS#11), or scheduled
                after the KMS's waiting period (AWS KMS, Azure Key Vault; the certificate's
                phase 2 is then ``scheduled`` until :meth:`complete_erasures` confirms it).
            durable: Also run phase 2 now (:meth:`complete_erasures`).
            new_keks: With ``durable``: passed to :meth:`complete_erasures`.

        Returns:
            The erasure certificate (also stored, and bound into the audit trail).
        """
        certificate = shredding.shred(self, path, reason, destroy_kek=destroy_kek)
        if durable:
            updated = {c.id: c for c in shredding.complete_erasures(self, dict(new_keks or {}))}
            certificate = updated.get(certificate.id, certificate)
        elif new_keks:
            raise InvalidInputError("new_keks applies to phase 2: pass durable=True")
        return certificate

    @records_failovers
    def complete_erasures(
        self, new_keks: Mapping[str, str] | None = None, *, include_cancelled: bool = False
    ) -> list[ErasureCertificate]:
        """Phase 2 for every pending erasure, so that no copy of the database (backups
        included) can unwrap the shredded keys: re-keys the scopes above each shredded scope
        up to the KEK, then retires the KEK that wrapped them. Many erasures share one pass.

        - LocalKMS, PKCS#11: the KEK gets a new version, every tenant on it is rewrapped under
          that version, and the old versions are destroyed at once (``confirmed``).
        - AWS KMS, Azure Key Vault destroy whole keys only, after a waiting period: every
          surviving tenant of the old key moves to a key the customer made (``new_keks``;
          keycustody never creates keys in the customer's KMS), nothing in the vault may
          still be wrapped by the old key, and its destruction is scheduled (``scheduled``,
          with the KMS's date in ``not_before_purge``; the KMS refuses the key at once).

        Each call also asks the KMS about scheduled destructions: final ones become
        ``confirmed``; one cancelled in the KMS (AWS CancelKeyDeletion, Azure recover)
        becomes ``cancelled`` and is left alone unless ``include_cancelled``. Every schedule,
        confirmation and cancellation is an audit event, and every updated certificate is
        bound into the audit trail again.

        Args:
            new_keks: Where the surviving tenants of an AWS or Azure KEK move, by tenant path
                or by the KEK id they use now, e.g. ``{"acme": "aws:arn:aws:kms:eu-west-1:
                111122223333:key/NEW"}``. Not needed for an AWS alias already pointed at a new
                key (UpdateAlias), nor when no tenant survives on the old key.
            include_cancelled: Also schedule the cancelled destructions again.

        Returns:
            The certificates whose phase 2 changed.

        Raises:
            ConfigError: a surviving tenant of an AWS/Azure KEK has no new KEK, or a KMS
                cannot destroy keys; nothing was changed.
            InvalidInputError: ``new_keks`` names something no erasure needs, or an ancestor
                key version is still compromised (run ``reencrypt`` first).
        """
        return shredding.complete_erasures(
            self, dict(new_keks or {}), include_cancelled=include_cancelled
        )

    def cancel_erasure(self, certificate_id: str, *, reason: str) -> list[ErasureCertificate]:
        """Cancels a scheduled phase 2 (e.g. for a legal hold) while the KMS still allows it:
        AWS CancelKeyDeletion (the key comes back disabled), Azure recover. Backups made
        before phase 2 become readable again with that key; the records shredded in phase 1
        stay unreadable through this vault. Audited; every certificate waiting on the same
        key becomes ``cancelled`` (``complete_erasures(include_cancelled=True)`` resumes).

        Returns:
            The certificates that changed.

        Raises:
            NotFoundError: no such certificate.
            InvalidInputError: its phase 2 is not ``scheduled``, or no reason was given.
            KmsError: the destruction is already final, or the KMS refused.
        """
        return shredding.cancel_erasure(self, certificate_id, reason)

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

    def purge(
        self,
        *,
        orphan_grace: timedelta | None = DEFAULT_ORPHAN_GRACE,
        progress: rotation.Progress | None = None,
    ) -> int:
        """Deletes the record rows of shredded scopes (already unreadable) and of derived
        records whose source is gone, with their blob store objects; then, with a blob store,
        sweeps it for orphaned objects (:meth:`sweep_blobs`).

        Args:
            orphan_grace: Passed to :meth:`sweep_blobs` as ``grace``; None skips the sweep.
            progress: Called as ``progress(done, total)`` after each batch of records deleted
                (a tenant of 400,000 records takes about a minute on a small VM).

        Returns:
            How many records were deleted.
        """
        removed = shredding.purge(self, progress=progress)
        if orphan_grace is not None and self._payloads.store is not None:
            self.sweep_blobs(grace=orphan_grace)
        return removed

    def sweep_blobs(self, *, grace: timedelta = DEFAULT_ORPHAN_GRACE) -> BlobSweep:
        """Deletes blob store objects that no record references (left by a crash between
        writing an object and committing its row, or by a failed delete) and the leftovers of
        interrupted writes, once they are older than ``grace``.

        Args:
            grace: Objects younger than this are kept: they may belong to a write whose
                transaction has not committed yet. It must exceed the longest write
                transaction (default 24 hours); 0 is safe only when nothing writes.

        Raises:
            ConfigError: the vault has no blob store.
        """
        sweep = self._payloads.sweep(self._read, grace)
        with self._write() as s, s.begin():
            self._audit_change(
                s,
                "blobs.sweep",
                "blob store",
                details={
                    "orphans_removed": sweep.orphans_removed,
                    "incomplete_removed": sweep.incomplete_removed,
                    "recent_kept": sweep.recent_kept,
                    "grace_s": grace.total_seconds(),
                },
            )
        return sweep

    # -- KEK failovers in the audit trail -----------------------------------------------

    def _append_failovers(self, session: Session, failovers: list[Failover]) -> None:
        """Appends one ``kek.failover`` event per failover in the caller's transaction.

        Raises:
            AuditError: an event could not be appended (the cause is chained).
        """
        try:
            for f in failovers:
                self.audit.append(
                    session,
                    action="kek.failover",
                    subject=f"{f.scope}#{f.version}",
                    outcome="failed" if f.tampered else "ok",
                    kms_key_id=f.used_kek,
                    kms_key_version=f.used_kek_version,
                    details={
                        "used": f"{f.used_kek}#{f.used_kek_version}",
                        "passed_over": [
                            {"kek": k, "kek_version": v, "reason": why} for k, v, why in f.failed
                        ],
                        "tampered_wrap": f.tampered,
                    },
                )
        except (KeyCustodyError, SQLAlchemyError) as exc:
            why = db_message(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
            raise AuditError(
                f"cannot record {len(failovers)} KEK failover(s) in the audit trail: {why}"
            ) from exc

    def _failovers_before_commit(self, session: Session) -> None:
        """Session event: a write transaction (``_write``, ``_write_records``, the audit
        trail's own) records the KEK failovers its thread queued, just before it commits, so
        that a failover is durable no later than the data written with the key it yielded,
        and rolls back with it. Fails closed: if an event cannot be appended the commit fails
        (AuditError), the transaction rolls back, the failovers are queued again and the keys
        unwrapped through them leave the cache.

        Only the thread's own failovers: those of a read in another thread are recorded by
        that read before it returns, never by a transaction that may commit after it (or roll
        back). Inside the write transaction already open, never a second one (SQLite has one
        writer). On PostgreSQL the append takes the audit head lock after the transaction's
        write lock, as every audited change does; the transaction's own writes are flushed
        first, so that lock is held for the append and the commit only.
        """
        if session.in_nested_transaction() or not self._keys.has_failovers():
            return
        bind = session.bind
        if bind is None or not bind.get_execution_options().get("keycustody_write"):
            return  # a read session: no write lock to append under
        session.flush()
        failovers = self._keys.take_failovers()
        if not failovers:
            return
        session.info.setdefault(_FAILOVERS, []).extend(failovers)
        self._append_failovers(session, failovers)

    @staticmethod
    def _failovers_after_commit(session: Session) -> None:
        """Session event: the failovers appended in the transaction are durable."""
        session.info.pop(_FAILOVERS, None)

    def _failovers_after_end(self, session: Session, transaction: SessionTransaction) -> None:
        """Session event: a transaction that did not commit the failovers appended in it
        (rolled back, or its commit failed) queues them again and purges their keys."""
        if transaction.parent is None:
            failovers = session.info.pop(_FAILOVERS, None)
            if failovers:
                self._keys.requeue_failovers(failovers)

    def _flush_failovers(self, *, every_thread: bool = False) -> None:
        """Records the KEK failovers the calling thread queued (or every thread's), one audit
        event each, in one transaction of its own: what no write transaction recorded. Call
        it outside any transaction. Fails closed: when they cannot be recorded they stay
        queued, the keys unwrapped through them leave the cache, and AuditError is raised."""
        failovers = self._keys.take_failovers(every_thread=every_thread)
        if not failovers:
            return
        try:
            with self._write() as s, s.begin():
                self._append_failovers(s, failovers)
        except (KeyCustodyError, SQLAlchemyError) as exc:
            self._keys.requeue_failovers(failovers)
            if isinstance(exc, AuditError):
                raise
            why = db_message(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
            raise AuditError(
                f"cannot record {len(failovers)} KEK failover(s) in the audit trail: {why}"
            ) from exc

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
