"""The contract every KMS provider implements (LocalKMS, AWS KMS, Azure Key Vault, PKCS#11)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Final, Protocol, runtime_checkable

from keycustody._core import KeyHandle
from keycustody.types import EncryptionContext, KeyId, WrappedKey


@runtime_checkable
class KmsProvider(Protocol):
    """Wraps and unwraps scope keys under a customer-held KEK.

    Providers receive key material only as :class:`KeyHandle` objects; one that must hand raw
    bytes to an SDK exports them into a ``bytearray`` and wipes it right after the call.
    """

    prefix: ClassVar[str]
    """Key id prefix this provider serves, e.g. ``"local"`` for ``local:NAME``."""

    def wrap(self, key_id: KeyId, key: KeyHandle, context: EncryptionContext) -> WrappedKey:
        """Wraps ``key`` under the current version of KEK ``key_id``, bound to ``context``.

        Raises:
            KeyRevokedError: the KEK is disabled.
            ShreddedError: the KEK was destroyed.
            KmsError: any other provider failure.
        """
        ...

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> KeyHandle:
        """Unwraps a key made by :meth:`wrap` with the same context.

        Raises:
            IntegrityError: the wrapped key or context does not match.
            KeyRevokedError: the KEK is disabled.
            ShreddedError: the KEK (version) was destroyed.
            KmsError: any other provider failure.
        """
        ...

    def default_key_id(self) -> KeyId:
        """The KEK used for tenants created without ``kek=`` (created on first use)."""
        ...


DESTROYED: Final = "destroyed"
"""The key is gone from the KMS for good: nothing it wrapped can be unwrapped again."""
DESTROY_SCHEDULED: Final = "destroy_scheduled"
"""The KMS refuses to use the key now and destroys it at ``not_before_purge``; until then the
destruction can be cancelled (AWS CancelKeyDeletion, Azure recover)."""
NOT_SCHEDULED: Final = "not_scheduled"
"""The key exists and no destruction is scheduled (never scheduled, or cancelled)."""


@dataclass(frozen=True, slots=True)
class Destruction:
    """Where the destruction of one whole KMS key stands (no key material)."""

    key_id: str
    """The whole key, e.g. ``aws:arn:aws:kms:REGION:ACCOUNT:key/ID`` or
    ``azure:https://HOST/keys/NAME`` (every version of it)."""
    state: str
    """:data:`DESTROYED`, :data:`DESTROY_SCHEDULED` or :data:`NOT_SCHEDULED`."""
    not_before_purge: datetime | None
    """When the provider makes a scheduled destruction final (UTC); None otherwise."""
    event: str
    """What the provider answered, in words, for the certificate and the audit trail."""


@runtime_checkable
class KeyDestroyer(Protocol):
    """A provider that destroys whole keys, possibly after a waiting period (AWS KMS, Azure
    Key Vault): optional, used by erasure phase 2 and ``shred(..., destroy_kek=True)``.

    Such a KMS cannot destroy one version of a key, so phase 2 moves the surviving tenants to
    another key first (``vault.complete_erasures(new_keks=...)``) and then schedules the old
    key's destruction; a later call confirms it with :meth:`destruction_status`.
    """

    def key_of(self, key_id: str, version: str) -> KeyId:
        """The whole KMS key that a wrap by KEK ``key_id`` (at ``version``, as recorded in
        :attr:`WrappedKey.key_version`; empty: the key the id names now) lives and dies with."""
        ...

    def schedule_destruction(self, key_id: str) -> Destruction:
        """Destroys the whole key ``key_id`` (a :meth:`key_of` id) as far as the provider
        allows: at once, or scheduled with a date. Idempotent: a key already scheduled or
        destroyed reports that.

        Raises:
            KmsError: the provider refused or failed (nothing was scheduled).
        """
        ...

    def destruction_status(self, key_id: str) -> Destruction:
        """Whether a scheduled destruction is final yet (or was cancelled)."""
        ...

    def cancel_destruction(self, key_id: str) -> Destruction:
        """Cancels a scheduled destruction (AWS CancelKeyDeletion, Azure recover); the key
        comes back (AWS: disabled). Raises KmsError when it is already final."""
        ...
