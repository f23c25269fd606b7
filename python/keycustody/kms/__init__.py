"""KMS providers: where customer-held KEKs live."""

from keycustody.kms.aws import AwsKMS
from keycustody.kms.azure import AzureKeyVault
from keycustody.kms.base import Destruction, KeyDestroyer, KmsProvider
from keycustody.kms.local import LocalKMS
from keycustody.kms.pkcs11 import Pkcs11KMS
from keycustody.kms.registry import ProviderRegistry
from keycustody.kms.retry import KmsKeyNotFoundError, RetryPolicy

__all__ = [
    "AwsKMS",
    "AzureKeyVault",
    "Destruction",
    "KeyDestroyer",
    "KmsKeyNotFoundError",
    "KmsProvider",
    "LocalKMS",
    "Pkcs11KMS",
    "ProviderRegistry",
    "RetryPolicy",
]
