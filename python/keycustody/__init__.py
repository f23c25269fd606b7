"""keycustody: envelope-encryption storage for agent context under customer-held keys.

Every record gets a fresh data key (made and wiped in Rust), wrapped by a scope key, wrapped by
the customer's KEK in their KMS.
"""

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
from keycustody.keys.shredding import ErasureCertificate
from keycustody.kms import AwsKMS, AzureKeyVault, KmsProvider, LocalKMS, Pkcs11KMS, RetryPolicy
from keycustody.scope import Scope
from keycustody.storage.blobs import BlobStore, LocalBlobStore, S3BlobStore
from keycustody.types import EncryptionContext, KeyId, RecordInfo, WrappedKey
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
