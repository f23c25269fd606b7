"""KMS providers: where customer-held KEKs live."""

from keycustody.kms.base import KmsProvider
from keycustody.kms.local import LocalKMS
from keycustody.kms.pkcs11 import Pkcs11KMS
from keycustody.kms.registry import ProviderRegistry

__all__ = ["KmsProvider", "LocalKMS", "Pkcs11KMS", "ProviderRegistry"]
