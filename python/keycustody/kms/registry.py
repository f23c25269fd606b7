"""Routes a key id to its provider by prefix, and counts KMS calls."""

from __future__ import annotations

from collections.abc import Iterable

from keycustody._core import KeyHandle
from keycustody.errors import ConfigError, UnsupportedKeyIdError
from keycustody.kms.base import KmsProvider
from keycustody.types import EncryptionContext, KeyId, WrappedKey


def key_prefix(key_id: str) -> str:
    """The provider prefix of a key id (``local`` of ``local:acme``)."""
    prefix, sep, rest = key_id.partition(":")
    if not sep or not prefix or not rest:
        raise UnsupportedKeyIdError(
            f"key id {key_id!r} has no provider prefix; expected e.g. 'local:NAME', "
            "'aws:alias/NAME', 'azure:https://…', 'pkcs11:LABEL'"
        )
    return prefix


class ProviderRegistry:
    """The providers of one vault, by prefix; every wrap/unwrap goes through here."""

    def __init__(self, providers: KmsProvider | Iterable[KmsProvider]) -> None:
        items = [providers] if isinstance(providers, KmsProvider) else list(providers)
        if not items:
            raise ConfigError("a vault needs at least one KMS provider (e.g. kc.LocalKMS(dir))")
        self._providers: dict[str, KmsProvider] = {}
        for provider in items:
            if not isinstance(provider, KmsProvider):
                raise ConfigError(f"{type(provider).__name__} is not a KMS provider")
            if provider.prefix in self._providers:
                raise ConfigError(f"two KMS providers claim the prefix {provider.prefix!r}")
            self._providers[provider.prefix] = provider
        self._default = items[0]
        self.calls = 0
        """KMS calls made through this registry (wraps and unwraps)."""

    def provider(self, key_id: str) -> KmsProvider:
        """The provider serving ``key_id``."""
        prefix = key_prefix(key_id)
        try:
            return self._providers[prefix]
        except KeyError:
            known = ", ".join(sorted(self._providers)) or "none"
            raise UnsupportedKeyIdError(
                f"no KMS provider configured for {prefix!r} key ids (configured: {known})"
            ) from None

    def providers(self) -> dict[str, KmsProvider]:
        """The configured providers by prefix."""
        return dict(self._providers)

    def default_key_id(self) -> KeyId:
        """The first provider's default KEK."""
        return self._default.default_key_id()

    def wrap(self, key_id: KeyId, key: KeyHandle, context: EncryptionContext) -> WrappedKey:
        """Wraps ``key`` under KEK ``key_id``."""
        provider = self.provider(key_id)
        self.calls += 1
        return provider.wrap(key_id, key, context)

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> KeyHandle:
        """Unwraps ``wrapped`` with the provider that made it."""
        provider = self.provider(wrapped.key_id)
        self.calls += 1
        return provider.unwrap(wrapped, context)
