"""keycustody: envelope-encryption storage for agent context under customer-held keys.

Every record gets a fresh data key (made and wiped in Rust), wrapped by a scope key, wrapped by
the customer's KEK in their KMS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from keycustody.errors import (
    AuditError,
    BlobMissingError,
    ConcurrentRotationError,
    ConfigError,
    IntegrityError,
    InvalidInputError,
    KeyCustodyError,
    KeyRevokedError,
    KmsError,
    KmsUnavailableError,
    NotFoundError,
    ShreddedError,
    StorageError,
    UnsupportedKeyIdError,
)
from keycustody.types import EncryptionContext, KeyId, RecordInfo, WrappedKey

if TYPE_CHECKING:
    from keycustody.keys.shredding import ErasureCertificate
    from keycustody.kms import (
        AwsKMS,
        AzureKeyVault,
        KmsProvider,
        LocalKMS,
        Pkcs11KMS,
        RetryPolicy,
    )
    from keycustody.scope import Scope
    from keycustody.storage.blobs import BlobStore, LocalBlobStore, S3BlobStore
    from keycustody.vault import Vault

__version__ = "0.1.0"

__all__ = [
    "AuditError",
    "AwsKMS",
    "AzureKeyVault",
    "BlobMissingError",
    "BlobStore",
    "ConcurrentRotationError",
    "ConfigError",
    "EncryptionContext",
    "ErasureCertificate",
    "IntegrityError",
    "InvalidInputError",
    "KeyCustodyError",
    "KeyId",
    "KeyRevokedError",
    "KmsError",
    "KmsProvider",
    "KmsUnavailableError",
    "LocalBlobStore",
    "LocalKMS",
    "NotFoundError",
    "Pkcs11KMS",
    "RecordInfo",
    "RetryPolicy",
    "S3BlobStore",
    "Scope",
    "ShreddedError",
    "StorageError",
    "UnsupportedKeyIdError",
    "Vault",
    "WrappedKey",
    "__version__",
]


# These import SQLAlchemy or a KMS SDK: they load on first use, so that what needs only the
# errors, or the CLI's --help, does not wait a second for them.
_LAZY = {
    "AwsKMS": "keycustody.kms",
    "AzureKeyVault": "keycustody.kms",
    "BlobStore": "keycustody.storage.blobs",
    "ErasureCertificate": "keycustody.keys.shredding",
    "KmsProvider": "keycustody.kms",
    "LocalBlobStore": "keycustody.storage.blobs",
    "LocalKMS": "keycustody.kms",
    "Pkcs11KMS": "keycustody.kms",
    "RetryPolicy": "keycustody.kms",
    "S3BlobStore": "keycustody.storage.blobs",
    "Scope": "keycustody.scope",
    "Vault": "keycustody.vault",
}


def __getattr__(name: str) -> object:
    """``keycustody.Vault`` and the other classes of ``_LAZY``, imported on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
