"""AzureKeyVault with the real azure-keyvault-keys SDK, on two paths that need no Azure.

There is no Azure subscription (nor internet) on the test machines, so:

(a) the SDK's local path: ``CryptographyClient.from_jwk`` wraps and unwraps with a JSON Web
    Key made here with pyca/cryptography, with no service at all;
(b) the SDK's service path over HTTPS against tests/kms/azure_standin.py, a documented stand-in
    for the Key Vault keys REST API (challenge auth, api-version, Azure's error bodies and
    status codes). Azure AD is not reachable either, so a fake credential hands the SDK the
    token the stand-in expects.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from azure.keyvault.keys import JsonWebKey
from azure.keyvault.keys.crypto import CryptographyClient
from azure_standin import TENANT, AzureKeyVaultStandIn, FakeCredential
from cryptography.hazmat.primitives.asymmetric import rsa
from vault_helpers import backup_url, fill_tenant

import keycustody as kc
from keycustody._core import KeyHandle
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    KeyCustodyError,
    KeyRevokedError,
    KmsError,
    KmsUnavailableError,
    NotFoundError,
)
from keycustody.kms.azure import AzureKeyVault
from keycustody.kms.base import KmsProvider
from keycustody.kms.local import LocalKMS
from keycustody.kms.retry import KmsKeyNotFoundError, RetryPolicy
from keycustody.types import EncryptionContext, KeyId, WrappedKey
from vaults import vault_opener

CTX = EncryptionContext(
    {"keycustody": "scope-key/v1", "vault": "v-1", "scope": "ab", "version": "1"}
)
OTHER_CTX = EncryptionContext({**CTX.items, "version": "2"})
FAST = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05, total_timeout=10.0)
LOCAL_VAULT = "https://keycustody-test.vault.azure.net"


def options(standin: AzureKeyVaultStandIn) -> dict[str, Any]:
    return {"connection_verify": str(standin.cert_path), "verify_challenge_resource": False}


def kid_name(url: str) -> str:
    return url.rpartition("/keys/")[2].partition("/")[0]


def same(a: KeyHandle, b: KeyHandle) -> bool:
    return a.export_secret() == b.export_secret()


# -- (a) the SDK's local path: CryptographyClient.from_jwk -------------------------------------


def rsa_jwk(name: str, version: str, size: int = 2048) -> JsonWebKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=size)
    nums = private.private_numbers()

    def b(n: int) -> bytes:
        return n.to_bytes((n.bit_length() + 7) // 8, "big")

    return JsonWebKey(
        kid=f"{LOCAL_VAULT}/keys/{name}/{version}",
        kty="RSA",
        key_ops=["wrapKey", "unwrapKey"],
        n=b(nums.public_numbers.n),
        e=b(nums.public_numbers.e),
        d=b(nums.d),
        p=b(nums.p),
        q=b(nums.q),
        dp=b(nums.dmp1),
        dq=b(nums.dmq1),
        qi=b(nums.iqmp),
    )


def oct_jwk(name: str, version: str) -> JsonWebKey:
    return JsonWebKey(
        kid=f"{LOCAL_VAULT}/keys/{name}/{version}",
        kty="oct",
        key_ops=["wrapKey", "unwrapKey"],
        k=KeyHandle.generate(32).export_secret(),
    )


class Recorder:
    """Wraps a CryptographyClient and records what keycustody hands to wrap_key."""

    def __init__(self, client: CryptographyClient) -> None:
        self.client = client
        self.wrapped_inputs: list[bytes] = []

    def wrap_key(self, algorithm: Any, key: bytes) -> Any:
        self.wrapped_inputs.append(bytes(key))
        return self.client.wrap_key(algorithm, key)

    def unwrap_key(self, algorithm: Any, encrypted_key: bytes) -> Any:
        return self.client.unwrap_key(algorithm, encrypted_key)


@pytest.fixture
def jwk_clients() -> dict[str, CryptographyClient]:
    """Local-only clients by key URL (unversioned and versioned)."""
    clients: dict[str, CryptographyClient] = {}
    for name, jwk in {"rsa-a": rsa_jwk("rsa-a", "v1"), "rsa-b": rsa_jwk("rsa-b", "v1")}.items():
        client = CryptographyClient.from_jwk(jwk)
        clients[f"{LOCAL_VAULT}/keys/{name}"] = client
        clients[f"{LOCAL_VAULT}/keys/{name}/v1"] = client
    jwk = oct_jwk("oct-a", "v7")
    client = CryptographyClient.from_jwk(jwk)
    clients[f"{LOCAL_VAULT}/keys/oct-a"] = client
    clients[f"{LOCAL_VAULT}/keys/oct-a/v7"] = client
    return clients


def test_local_jwk_rsa_round_trip_binds_the_context(
    jwk_clients: dict[str, CryptographyClient],
) -> None:
    recorder = Recorder(jwk_clients[f"{LOCAL_VAULT}/keys/rsa-a"])
    kms = AzureKeyVault(client_factory=lambda url: recorder)
    key_id = KeyId(f"azure:{LOCAL_VAULT}/keys/rsa-a")
    key = KeyHandle.generate()

    wrapped = kms.wrap(key_id, key, CTX)
    assert (wrapped.key_id, wrapped.key_version) == (key_id, "v1")
    assert wrapped.ciphertext[:2] == b"\x01\x01"  # format 1, RSA-OAEP-256
    assert len(wrapped.ciphertext) == 2 + 256  # one RSA-2048 block
    # What went to the SDK: SHA-256 of the canonical context, then the 64-byte key.
    (sent,) = recorder.wrapped_inputs
    assert len(sent) == 96
    assert sent[:32] == hashlib.sha256(b"keycustody/azure-kv/v1\x00" + CTX.to_aad()).digest()
    assert sent[32:] == key.export_secret()

    assert same(kms.unwrap(wrapped, CTX), key)
    with pytest.raises(IntegrityError, match="another encryption context"):
        kms.unwrap(wrapped, OTHER_CTX)


def test_local_jwk_a256kw_round_trip(jwk_clients: dict[str, CryptographyClient]) -> None:
    kms = AzureKeyVault(client_factory=jwk_clients.__getitem__, algorithm="A256KW")
    key_id = KeyId(f"azure:{LOCAL_VAULT}/keys/oct-a")
    key = KeyHandle.generate()
    wrapped = kms.wrap(key_id, key, CTX)
    assert wrapped.key_version == "v7"
    assert wrapped.ciphertext[:2] == b"\x01\x02"
    assert len(wrapped.ciphertext) == 2 + 96 + 8  # RFC 3394 adds one 8-byte block
    assert same(kms.unwrap(wrapped, CTX), key)
    with pytest.raises(IntegrityError):
        kms.unwrap(wrapped, OTHER_CTX)


def test_local_jwk_ciphertext_of_another_key(jwk_clients: dict[str, CryptographyClient]) -> None:
    kms = AzureKeyVault(client_factory=jwk_clients.__getitem__)
    a = KeyId(f"azure:{LOCAL_VAULT}/keys/rsa-a")
    b = KeyId(f"azure:{LOCAL_VAULT}/keys/rsa-b")
    wrapped = kms.wrap(a, KeyHandle.generate(), CTX)
    with pytest.raises(IntegrityError):
        kms.unwrap(WrappedKey(b, wrapped.key_version, wrapped.ciphertext), CTX)


def test_local_jwk_result_of_another_key_is_refused(
    jwk_clients: dict[str, CryptographyClient],
) -> None:
    """A client that answers with another key's kid is not trusted, wrap or unwrap."""
    other = jwk_clients[f"{LOCAL_VAULT}/keys/rsa-b"]
    kms = AzureKeyVault(client_factory=lambda url: other)
    with pytest.raises(KmsError, match="another key"):
        kms.wrap(KeyId(f"azure:{LOCAL_VAULT}/keys/rsa-a"), KeyHandle.generate(), CTX)
    good = AzureKeyVault(client_factory=jwk_clients.__getitem__)
    wrapped = good.wrap(KeyId(f"azure:{LOCAL_VAULT}/keys/rsa-b"), KeyHandle.generate(), CTX)
    with pytest.raises(IntegrityError, match="another key"):
        kms.unwrap(
            WrappedKey(KeyId(f"azure:{LOCAL_VAULT}/keys/rsa-a"), "", wrapped.ciphertext), CTX
        )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda ct: b"",
        lambda ct: ct[:2],
        lambda ct: b"\x02" + ct[1:],  # unknown format
        lambda ct: ct[:1] + b"\x09" + ct[2:],  # unknown algorithm
        lambda ct: ct[:1] + b"\x02" + ct[2:],  # claims A256KW
        lambda ct: ct[:-1] + bytes([ct[-1] ^ 1]),
        lambda ct: ct[:-8],
    ],
)
def test_local_jwk_tampered_ciphertext(
    jwk_clients: dict[str, CryptographyClient], mangle: Callable[[bytes], bytes]
) -> None:
    kms = AzureKeyVault(client_factory=jwk_clients.__getitem__)
    wrapped = kms.wrap(KeyId(f"azure:{LOCAL_VAULT}/keys/rsa-a"), KeyHandle.generate(), CTX)
    with pytest.raises(IntegrityError):
        kms.unwrap(
            WrappedKey(wrapped.key_id, wrapped.key_version, mangle(wrapped.ciphertext)), CTX
        )


def test_version_mismatch_with_a_pinned_id(jwk_clients: dict[str, CryptographyClient]) -> None:
    kms = AzureKeyVault(client_factory=jwk_clients.__getitem__)
    pinned = KeyId(f"azure:{LOCAL_VAULT}/keys/rsa-a/v1")
    wrapped = kms.wrap(pinned, KeyHandle.generate(), CTX)
    assert wrapped.key_version == "v1"
    with pytest.raises(IntegrityError, match="another version"):
        kms.unwrap(WrappedKey(pinned, "v2", wrapped.ciphertext), CTX)
    with pytest.raises(IntegrityError, match="invalid version"):
        kms.unwrap(WrappedKey(pinned, "v/../x", wrapped.ciphertext), CTX)


# -- configuration -----------------------------------------------------------------------------


def test_is_a_kms_provider() -> None:
    assert isinstance(AzureKeyVault(FakeCredential()), KmsProvider)
    assert AzureKeyVault.prefix == "azure"


@pytest.mark.parametrize(
    "bad",
    [
        "azure:",
        "azure:http://v.vault.azure.net/keys/k",
        "azure:https://v.vault.azure.net/secrets/k",
        "azure:https://v.vault.azure.net/keys/",
        "azure:https://v.vault.azure.net/keys/k_1",
        "azure:https://v.vault.azure.net/keys/k/v/extra",
        "azure:https://v.vault.azure.net/keys/k?x=1",
    ],
)
def test_invalid_key_ids_are_config_errors(bad: str) -> None:
    kms = AzureKeyVault(FakeCredential())
    with pytest.raises(ConfigError, match="invalid Azure Key Vault key id"):
        kms.wrap(KeyId(bad), KeyHandle.generate(), CTX)


def test_algorithm_is_checked() -> None:
    with pytest.raises(ConfigError, match="RSA1_5"):
        AzureKeyVault(FakeCredential(), algorithm="RSA1_5")
    assert AzureKeyVault(FakeCredential()).algorithm == "RSA-OAEP-256"


def test_default_key_id() -> None:
    with pytest.raises(ConfigError, match="default_key"):
        AzureKeyVault(FakeCredential()).default_key_id()
    url = f"{LOCAL_VAULT}/keys/tenants"
    assert AzureKeyVault(FakeCredential(), default_key=url).default_key_id() == f"azure:{url}"


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.keyvault.keys.crypto", None)
    with pytest.raises(ConfigError, match=r"pip install 'keycustody\[azure\]'"):
        AzureKeyVault(FakeCredential())


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        AzureKeyVault(FakeCredential(), timeout=0)


# -- (b) the SDK's service path against the HTTPS stand-in --------------------------------------


@pytest.fixture
def standin(azure_standin: AzureKeyVaultStandIn) -> AzureKeyVaultStandIn:
    return azure_standin


@pytest.fixture
def kms(standin: AzureKeyVaultStandIn) -> AzureKeyVault:
    return AzureKeyVault(
        FakeCredential(), client_options=options(standin), retries=FAST, timeout=2
    )


def new_rsa(standin: AzureKeyVaultStandIn) -> KeyId:
    return KeyId(f"azure:{standin.create_rsa_key(f'rsa-{time.monotonic_ns()}')}")


def test_service_round_trip_with_challenge_auth(standin: AzureKeyVaultStandIn) -> None:
    credential = FakeCredential()
    kms = AzureKeyVault(credential, client_options=options(standin))
    key_id = new_rsa(standin)
    key = KeyHandle.generate()
    wrapped = kms.wrap(key_id, key, CTX)
    assert wrapped.key_version == standin.versions(kid_name(key_id))[-1]
    assert same(kms.unwrap(wrapped, CTX), key)
    with pytest.raises(IntegrityError):
        kms.unwrap(wrapped, OTHER_CTX)
    assert credential.requests
    assert all(s == ("https://vault.azure.net/.default",) for s, _ in credential.requests)
    assert {t for _, t in credential.requests} == {TENANT}


def test_rotation_in_azure_keeps_old_wraps_readable(
    kms: AzureKeyVault, standin: AzureKeyVaultStandIn
) -> None:
    key_id = new_rsa(standin)
    name = kid_name(key_id)
    key = KeyHandle.generate()
    old = kms.wrap(key_id, key, CTX)
    new_version = standin.rotate_key(name)
    new = kms.wrap(key_id, key, CTX)
    assert new.key_version == new_version != old.key_version
    assert same(kms.unwrap(old, CTX), key)
    assert same(kms.unwrap(new, CTX), key)
    # Another version's ciphertext under this version's label: RSA-OAEP fails in the vault.
    with pytest.raises(IntegrityError, match="BadParameter"):
        kms.unwrap(WrappedKey(key_id, new.key_version, old.ciphertext), CTX)


def test_pinned_version_is_used_after_rotation(
    kms: AzureKeyVault, standin: AzureKeyVaultStandIn
) -> None:
    key_id = new_rsa(standin)
    first = standin.versions(kid_name(key_id))[0]
    standin.rotate_key(kid_name(key_id))
    wrapped = kms.wrap(KeyId(f"{key_id}/{first}"), KeyHandle.generate(), CTX)
    assert wrapped.key_version == first


def test_disabled_key_is_revoked_and_enable_restores(
    kms: AzureKeyVault, standin: AzureKeyVaultStandIn
) -> None:
    key_id = new_rsa(standin)
    key = KeyHandle.generate()
    wrapped = kms.wrap(key_id, key, CTX)
    standin.set_enabled(kid_name(key_id), False)
    with pytest.raises(KeyRevokedError, match="KeyDisabled"):
        kms.unwrap(wrapped, CTX)
    with pytest.raises(KeyRevokedError, match="disabled"):
        kms.wrap(key_id, key, CTX)
    standin.set_enabled(kid_name(key_id), True)
    assert same(kms.unwrap(wrapped, CTX), key)


def test_missing_key_is_not_found(kms: AzureKeyVault, standin: AzureKeyVaultStandIn) -> None:
    with pytest.raises(KmsKeyNotFoundError, match="KeyNotFound") as info:
        kms.wrap(KeyId(f"azure:{standin.url}/keys/nope"), KeyHandle.generate(), CTX)
    assert isinstance(info.value, NotFoundError)
    key_id = new_rsa(standin)
    wrapped = kms.wrap(key_id, KeyHandle.generate(), CTX)
    standin.delete_key(kid_name(key_id))
    with pytest.raises(KmsKeyNotFoundError):
        kms.unwrap(wrapped, CTX)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried(
    kms: AzureKeyVault, standin: AzureKeyVaultStandIn, status: int
) -> None:
    key_id = new_rsa(standin)
    standin.fail_next([status] * 3)
    key = KeyHandle.generate()
    wrapped = kms.wrap(key_id, key, CTX)
    standin.fail_next([status] * 2)
    assert same(kms.unwrap(wrapped, CTX), key)


def test_persistent_throttling_gives_up_after_five_attempts(
    kms: AzureKeyVault, standin: AzureKeyVaultStandIn
) -> None:
    key_id = new_rsa(standin)
    standin.reset()
    standin.fail_next([429] * 100)
    with pytest.raises(KmsUnavailableError, match=r"after 5 attempt\(s\).*429 Throttled"):
        kms.wrap(key_id, KeyHandle.generate(), CTX)
    assert standin.calls["get"] == 5  # each attempt starts with the SDK's GET of the key


def test_hanging_vault_fails_within_twice_the_timeout(standin: AzureKeyVaultStandIn) -> None:
    key_id = new_rsa(standin)
    timeout = 0.5
    kms = AzureKeyVault(FakeCredential(), client_options=options(standin), timeout=timeout)
    kms.wrap(key_id, KeyHandle.generate(), CTX)  # auth challenge done, like a warm process
    standin.hang()
    start = time.monotonic()
    with pytest.raises(KmsUnavailableError, match="ServiceResponse"):
        kms.wrap(key_id, KeyHandle.generate(), CTX)
    assert time.monotonic() - start <= 2 * timeout


def test_refused_connection_is_unavailable(dead_endpoint: str) -> None:
    url = dead_endpoint.replace("http://", "https://")
    kms = AzureKeyVault(FakeCredential(), retries=FAST, timeout=1.0)
    with pytest.raises(KmsUnavailableError, match=r"after 5 attempt\(s\)"):
        kms.wrap(KeyId(f"azure:{url}/keys/k"), KeyHandle.generate(), CTX)


@pytest.mark.parametrize("size", [0, 32, 63, 95, 97, 128])
def test_wrong_size_material_from_the_vault(
    kms: AzureKeyVault, standin: AzureKeyVaultStandIn, size: int
) -> None:
    wrapped = kms.wrap(new_rsa(standin), KeyHandle.generate(), CTX)
    standin.tamper_next_unwrap(b"\x42" * size)
    with pytest.raises(IntegrityError, match=f"returned {size} bytes"):
        kms.unwrap(wrapped, CTX)


def test_material_for_another_context_from_the_vault(
    kms: AzureKeyVault, standin: AzureKeyVaultStandIn
) -> None:
    wrapped = kms.wrap(new_rsa(standin), KeyHandle.generate(), CTX)
    standin.tamper_next_unwrap(b"\x00" * 96)
    with pytest.raises(IntegrityError, match="another encryption context"):
        kms.unwrap(wrapped, CTX)


def test_oct_hsm_sdk_local_wrap_is_caught(standin: AzureKeyVaultStandIn) -> None:
    """azure-keyvault-keys gives an oct-HSM key fetched without 'k' a random local key and
    wraps with it; keycustody's check refuses such a wrap instead of storing it."""
    name = f"hsm-{time.monotonic_ns()}"
    key_id = KeyId(f"azure:{standin.create_oct_key(name)}")
    kms = AzureKeyVault(
        FakeCredential(), algorithm="A256KW", client_options=options(standin), retries=FAST
    )
    with pytest.raises(KmsError, match="made-up key material"):
        kms.wrap(key_id, KeyHandle.generate(), CTX)


def test_oct_hsm_without_keys_get_wraps_in_the_vault(standin: AzureKeyVaultStandIn) -> None:
    name = f"hsm-{time.monotonic_ns()}"
    key_id = KeyId(f"azure:{standin.create_oct_key(name)}")
    standin.forbid_get(name)
    kms = AzureKeyVault(
        FakeCredential(), algorithm="A256KW", client_options=options(standin), retries=FAST
    )
    key = KeyHandle.generate()
    wrapped = kms.wrap(key_id, key, CTX)
    assert wrapped.key_version == ""  # the SDK names no version without keys/get
    assert same(kms.unwrap(wrapped, CTX), key)
    pinned = KeyId(f"{key_id}/{standin.versions(name)[0]}")
    assert kms.wrap(pinned, key, CTX).key_version == standin.versions(name)[0]
    with pytest.raises(IntegrityError):
        kms.unwrap(wrapped, OTHER_CTX)


# -- through a real Vault ------------------------------------------------------------------------


@pytest.fixture
def vault_at(tmp_path: Path, kms: AzureKeyVault) -> Iterator[Callable[..., kc.Vault]]:
    local = LocalKMS(tmp_path / "local-keys")
    with vault_opener(f"sqlite:///{tmp_path / 'ctx.db'}", kms, local) as open_vault:
        yield open_vault


def test_vault_round_trip_rotation_and_revocation(
    vault_at: Callable[..., kc.Vault], standin: AzureKeyVaultStandIn
) -> None:
    old, new = new_rsa(standin), new_rsa(standin)
    ttl = 0.5
    vault = vault_at(cache_ttl=ttl)
    acme = vault.scope("acme", kek=old, create=True)
    acme.put_many([("a.py", b"alpha"), ("b.py", b"beta")])
    assert vault_at(cache_ttl=0).scope("acme").get("a.py") == b"alpha"

    assert vault.rotate_kek("acme", new) == 1
    standin.set_enabled(kid_name(old), False)  # the old KEK is no longer needed
    assert vault_at(cache_ttl=0).scope("acme").get("b.py") == b"beta"

    standin.set_enabled(kid_name(new), False)
    time.sleep(ttl + 0.1)
    with pytest.raises(KeyRevokedError):
        acme.get("a.py")
    standin.set_enabled(kid_name(new), True)
    assert acme.get("a.py") == b"alpha"


def test_vault_outage_leaves_no_scope(
    vault_at: Callable[..., kc.Vault], standin: AzureKeyVaultStandIn
) -> None:
    key_id = new_rsa(standin)
    vault = vault_at()
    vault.scope("acme", kek=key_id, create=True)
    standin.fail_next([503] * 100)
    with pytest.raises(KmsUnavailableError):
        vault.scope("newco", kek=key_id, create=True)
    standin.reset()
    assert vault.scopes() == ["acme"]


# -- error hygiene -------------------------------------------------------------------------------


def test_errors_carry_no_key_bytes_and_no_sdk_exception(
    kms: AzureKeyVault, standin: AzureKeyVaultStandIn
) -> None:
    key_id = new_rsa(standin)
    key = KeyHandle.generate()
    secret = bytes(key.export_secret())
    wrapped = kms.wrap(key_id, key, CTX)
    errors: list[KeyCustodyError] = []

    def capture(fn: Callable[[], object]) -> None:
        try:
            fn()
        except KeyCustodyError as exc:
            errors.append(exc)
        else:
            pytest.fail("expected an error")

    capture(lambda: kms.unwrap(wrapped, OTHER_CTX))
    standin.tamper_next_unwrap(secret[:50])
    capture(lambda: kms.unwrap(wrapped, CTX))
    standin.fail_next([429] * 10)  # each attempt is a GET and a wrapkey
    capture(lambda: kms.wrap(key_id, key, CTX))
    standin.set_enabled(kid_name(key_id), False)
    capture(lambda: kms.wrap(key_id, key, CTX))
    capture(lambda: kms.unwrap(wrapped, CTX))
    standin.set_enabled(kid_name(key_id), True)

    assert len(errors) == 5
    spellings = [secret, secret[:16], secret[-16:], secret.hex().encode()]
    spellings.append(base64.b64encode(secret))
    spellings.append(base64.urlsafe_b64encode(secret).rstrip(b"="))
    for exc in errors:
        text = (str(exc) + repr(exc)).encode()
        assert not any(needle in text for needle in spellings)
        assert exc.__cause__ is None
        assert exc.__context__ is None


def test_payload_is_wiped_after_the_call(jwk_clients: dict[str, CryptographyClient]) -> None:
    seen: list[bytearray] = []

    class Keep:
        def wrap_key(self, algorithm: Any, key: bytearray) -> Any:
            seen.append(key)
            raise RuntimeError("refused")

    exported: list[bytearray] = []

    class Spy:
        def export_secret(self) -> bytearray:
            exported.append(KeyHandle.generate().export_secret())
            return exported[-1]

    class RemoteKeep(Keep):
        vault_url = LOCAL_VAULT  # a service client: it gets our bytearray itself

    kms = AzureKeyVault(client_factory=lambda url: RemoteKeep())
    with pytest.raises(KmsError):
        kms.wrap(KeyId(f"azure:{LOCAL_VAULT}/keys/k"), cast(KeyHandle, Spy()), CTX)
    assert seen and all(buf == bytearray(len(buf)) for buf in seen)
    assert exported == [bytearray(64)]


def test_rejected_token_is_a_kms_error_not_retried(standin: AzureKeyVaultStandIn) -> None:
    class WrongToken(FakeCredential):
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            token = super().get_token(*scopes, **kwargs)
            return type(token)("not-the-token", token.expires_on)

    key_id = new_rsa(standin)
    standin.reset()
    kms = AzureKeyVault(WrongToken(), client_options=options(standin), retries=FAST)
    with pytest.raises(KmsError, match="HTTP 401") as info:
        kms.wrap(key_id, KeyHandle.generate(), CTX)
    assert not isinstance(info.value, KmsUnavailableError)


def test_untrusted_tls_certificate_fails_closed(standin: AzureKeyVaultStandIn) -> None:
    """Without the stand-in's certificate the SDK refuses the connection (no plain fallback)."""
    kms = AzureKeyVault(
        FakeCredential(), client_options={"verify_challenge_resource": False}, retries=FAST
    )
    key_id = new_rsa(standin)
    standin.reset()
    with pytest.raises(KmsError, match=r"TLS.*CERTIFICATE_VERIFY_FAILED") as info:
        kms.wrap(key_id, KeyHandle.generate(), CTX)
    assert not isinstance(info.value, KmsUnavailableError)  # not transient: not retried
    assert sum(standin.calls.values()) == 0


# -- erasure phase 2: soft delete, purge protection, recover (T29) ------------------------------


def test_phase_2_with_purge_protection_is_scheduled_for_90_days_then_confirmed(
    vault_at: Callable[..., kc.Vault],
    kms: AzureKeyVault,
    standin: AzureKeyVaultStandIn,
    tmp_path: Path,
) -> None:
    """T29 on Azure: purge protection with a 90-day retention. Key Vault deletes whole keys
    only, so the tenant moves to a new key; the old key is soft-deleted (refused at once),
    the purge is refused until scheduledPurgeDate, and the vault purges it itself after."""
    standin.purge_protection, standin.retention_days = True, 90
    old, new = new_rsa(standin), new_rsa(standin)
    vault = vault_at()
    data = fill_tenant(vault, old)
    backup = backup_url(tmp_path / "ctx.db", tmp_path / "backup")
    vault.shred("acme/subjects/alice", reason="GDPR #29")
    with pytest.raises(ConfigError, match="Azure"):
        vault.complete_erasures()

    (scheduled,) = vault.complete_erasures(new_keks={"acme": new})
    phase2 = scheduled.document["when"]["phase2"]
    assert scheduled.phase2_status == "scheduled" and phase2["confirmed_at"] is None
    (entry,) = phase2["destructions"]
    assert entry["key"] == kms.key_of(old, "") and entry["state"] == "destroy_scheduled"
    purge = datetime.fromisoformat(str(scheduled.not_before_purge))
    expected = datetime.now(UTC) + timedelta(days=90)
    assert abs((purge - expected).total_seconds()) < 300
    assert "purge refused" in phase2["events"][0] and "purge protection" in phase2["events"][0]
    assert standin.is_deleted(kid_name(old))
    assert vault.verify_certificate(scheduled.document)[0]
    assert [e.kms_key_id for e in vault.audit.events() if e.action == "kek.destroy_schedule"] == [
        entry["key"]
    ]
    # Decrypt under the old key fails at once, for a backup too; the live vault reads on.
    alice = list(data["acme/subjects/alice"])
    with (
        kc.Vault.open(backup, kms=[kms, LocalKMS(tmp_path / "local-keys")]) as old_copy,
        pytest.raises(kc.ShreddedError, match="deleted"),
    ):
        old_copy.scope("acme/subjects/alice").get_many(alice)
    bob = data["acme/subjects/bob"]
    assert vault_at(cache_ttl=0).scope("acme/subjects/bob").get_many(list(bob)) == bob

    assert vault.complete_erasures() == []  # still within the retention period
    standin.advance(91 * 86400)
    (confirmed,) = vault.complete_erasures()
    assert confirmed.phase2_status == "confirmed"
    assert confirmed.document["when"]["phase2"]["confirmed_at"]
    assert vault.verify_certificate(confirmed.document)[0]
    assert "kek.destroy_confirm" in [e.action for e in vault.audit.events()]


def test_phase_2_without_purge_protection_purges_at_once(
    vault_at: Callable[..., kc.Vault], kms: AzureKeyVault, standin: AzureKeyVaultStandIn
) -> None:
    old = new_rsa(standin)
    vault = vault_at()
    fill_tenant(vault, old)
    vault.shred("acme/subjects/alice", reason="GDPR #33")
    (certificate,) = vault.complete_erasures(new_keks={old: new_rsa(standin)})
    assert certificate.phase2_status == "confirmed"
    assert certificate.document["when"]["phase2"]["events"][0].endswith("purged")
    assert not standin.is_deleted(kid_name(old))
    assert kms.destruction_status(old).state == "destroyed"
    assert "kek.destroy" in [e.action for e in vault.audit.events()]


def test_recover_cancels_and_is_audited(
    vault_at: Callable[..., kc.Vault], standin: AzureKeyVaultStandIn
) -> None:
    standin.purge_protection = True
    old = new_rsa(standin)
    vault = vault_at()
    fill_tenant(vault, old)
    vault.shred("acme/subjects/alice", reason="GDPR #34")
    (scheduled,) = vault.complete_erasures(new_keks={"acme": new_rsa(standin)})
    (cancelled,) = vault.cancel_erasure(scheduled.id, reason="legal hold LH-8")
    assert cancelled.phase2_status == "cancelled"
    assert not standin.is_deleted(kid_name(old))
    assert standin.versions(kid_name(old))  # recovered with its versions
    (event,) = [e for e in vault.audit.events() if e.action == "kek.destroy_cancel"]
    assert "recovered" in event.details_dict()["provider"]
    assert vault.verify_certificate(cancelled.document)[0]


def test_tenant_shred_with_destroy_kek_deletes_the_key(
    vault_at: Callable[..., kc.Vault], standin: AzureKeyVaultStandIn
) -> None:
    standin.purge_protection = True
    kek = new_rsa(standin)
    vault = vault_at()
    fill_tenant(vault, kek)
    certificate = vault.shred("acme", reason="offboarding acme", destroy_kek=True)
    assert certificate.phase2_status == "scheduled"
    assert standin.is_deleted(kid_name(kek))
    assert vault.verify_certificate(certificate.document)[0]
