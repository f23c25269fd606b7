"""The contract every KMS provider implements (LocalKMS, AWS KMS, Azure Key Vault, PKCS#11)."""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

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
