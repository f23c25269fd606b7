"""The KMS provider contract (T36): the same behaviour asserted for every provider.

Providers come from the harness fixtures in tests/kms/conftest.py (local, aws on moto behind the
AWS-faithful proxy, azure on the HTTPS stand-in, pkcs11 on a SoftHSM2 token); adding one is one
``@harness`` fixture.

Decisions the contract fixes for every provider:

- A ciphertext of key A relabelled as key B (B's id and B's version) is an IntegrityError for
  every provider: the KMS refuses it (AWS ``IncorrectKeyException``, a failed RSA-OAEP or
  AES-GCM open). With A's version label kept, a provider that checks the label itself says
  IntegrityError (AWS: the version is A's ARN; local, PKCS#11), while one that addresses the
  KMS by the stored (key, version) pair may instead get "no such version" from the KMS and
  raise KmsKeyNotFoundError, a KmsError (Azure: 404, key B has no version of key A). Either
  way nothing is decrypted by another key than the one named.
- A disabled KEK is a KeyRevokedError for wrap and unwrap; enabling it again restores both.
- Key material of the wrong size from the KMS is an IntegrityError or KmsError, never a
  generic exception and never a silently accepted key.
- Errors carry no key bytes (raw, hex or base64) in their message or repr, and no SDK
  exception as cause or context.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import pytest

import keycustody as kc
from keycustody._core import KeyHandle
from keycustody.errors import (
    IntegrityError,
    KeyCustodyError,
    KeyRevokedError,
    KmsError,
    KmsUnavailableError,
)
from keycustody.kms.base import KmsProvider
from keycustody.types import EncryptionContext, KeyId, WrappedKey
from vaults import vault_opener

CTX = EncryptionContext(
    {"keycustody": "scope-key/v1", "vault": "v-1", "scope": "ab", "version": "1"}
)
OTHER_CTXS = [
    EncryptionContext({**CTX.items, "version": "2"}),
    EncryptionContext({**CTX.items, "scope": "cd"}),
    EncryptionContext({k: v for k, v in CTX.items.items() if k != "vault"}),
    EncryptionContext({**CTX.items, "extra": "x"}),
    EncryptionContext({**CTX.items, "extra": ""}),
    EncryptionContext({**CTX.items, "scope": "AB"}),
    EncryptionContext({}),
]


class Harness(Protocol):
    """tests/kms/conftest.py's Harness (conftest modules are not importable by name)."""

    name: str
    provider: KmsProvider
    new_key: Callable[[], KeyId]
    disable: Callable[[KeyId], None]
    enable: Callable[[KeyId], None]
    bad_material: Callable[[KeyId, bytes], None]
    outage: Callable[[], AbstractContextManager[None]] | None
    timeout: float | None
    audit_kms: list[KmsProvider]


@pytest.fixture
def h(provider_harness: Harness) -> Harness:
    return provider_harness


@pytest.fixture
def vault_for(h: Harness, tmp_path: Path) -> Iterator[Callable[..., kc.Vault]]:
    """Opens vaults on one SQLite file with the harness's provider first."""
    db_url = f"sqlite:///{tmp_path / 'contract.db'}"
    with vault_opener(db_url, h.provider, *h.audit_kms) as open_vault:
        yield open_vault


def same(a: KeyHandle, b: KeyHandle) -> bool:
    return a.export_secret() == b.export_secret()


# -- wrap / unwrap ---------------------------------------------------------------------------


def test_is_a_provider_with_its_prefix(h: Harness) -> None:
    assert isinstance(h.provider, KmsProvider)
    key_id = h.new_key()
    assert key_id.startswith(f"{h.provider.prefix}:")


@pytest.mark.parametrize("size", [64, 32])
def test_round_trip(h: Harness, size: int) -> None:
    key_id = h.new_key()
    key = KeyHandle.generate(size)
    wrapped = h.provider.wrap(key_id, key, CTX)
    assert wrapped.key_id == key_id
    assert isinstance(wrapped.key_version, str)
    assert key.export_secret() not in wrapped.ciphertext
    assert same(h.provider.unwrap(wrapped, CTX), key)


def test_wraps_are_randomized(h: Harness) -> None:
    key_id = h.new_key()
    key = KeyHandle.generate()
    a, b = h.provider.wrap(key_id, key, CTX), h.provider.wrap(key_id, key, CTX)
    assert a.ciphertext != b.ciphertext


@pytest.mark.parametrize(
    "other",
    OTHER_CTXS,
    ids=["version", "scope", "missing", "extra", "extra-empty", "case", "empty"],
)
def test_wrong_context_is_an_integrity_error(h: Harness, other: EncryptionContext) -> None:
    wrapped = h.provider.wrap(h.new_key(), KeyHandle.generate(), CTX)
    with pytest.raises(IntegrityError):
        h.provider.unwrap(wrapped, other)


def test_context_order_does_not_matter(h: Harness) -> None:
    key_id = h.new_key()
    key = KeyHandle.generate()
    wrapped = h.provider.wrap(key_id, key, EncryptionContext({"a": "1", "b": "2"}))
    assert same(h.provider.unwrap(wrapped, EncryptionContext({"b": "2", "a": "1"})), key)


def test_ciphertext_of_another_key_is_an_integrity_error(h: Harness) -> None:
    a, b = h.new_key(), h.new_key()
    wrapped_a = h.provider.wrap(a, KeyHandle.generate(), CTX)
    wrapped_b = h.provider.wrap(b, KeyHandle.generate(), CTX)
    with pytest.raises((IntegrityError, KmsError)):  # A's version label kept
        h.provider.unwrap(WrappedKey(b, wrapped_a.key_version, wrapped_a.ciphertext), CTX)
    with pytest.raises(IntegrityError):  # relabelled as B's
        h.provider.unwrap(WrappedKey(b, wrapped_b.key_version, wrapped_a.ciphertext), CTX)


def test_tampered_ciphertext_is_an_integrity_error(h: Harness) -> None:
    wrapped = h.provider.wrap(h.new_key(), KeyHandle.generate(), CTX)
    for i in (len(wrapped.ciphertext) // 2, len(wrapped.ciphertext) - 1):
        flipped = bytearray(wrapped.ciphertext)
        flipped[i] ^= 0x01
        with pytest.raises(IntegrityError):
            h.provider.unwrap(WrappedKey(wrapped.key_id, wrapped.key_version, bytes(flipped)), CTX)


def test_disabled_key_is_revoked_and_enabling_restores(h: Harness) -> None:
    key_id = h.new_key()
    key = KeyHandle.generate()
    wrapped = h.provider.wrap(key_id, key, CTX)
    h.disable(key_id)
    with pytest.raises(KeyRevokedError):
        h.provider.unwrap(wrapped, CTX)
    with pytest.raises(KeyRevokedError):
        h.provider.wrap(key_id, key, CTX)
    h.enable(key_id)
    assert same(h.provider.unwrap(wrapped, CTX), key)
    assert same(h.provider.unwrap(h.provider.wrap(key_id, key, CTX), CTX), key)


@pytest.mark.parametrize("size", [0, 7, 31, 33, 65, 200])
def test_bad_material_from_the_kms_is_a_typed_error(h: Harness, size: int) -> None:
    key_id = h.new_key()
    wrapped = h.provider.wrap(key_id, KeyHandle.generate(), CTX)
    h.bad_material(key_id, b"\x5a" * size)
    with pytest.raises((IntegrityError, KmsError)):
        h.provider.unwrap(wrapped, CTX)


def test_errors_carry_no_key_bytes(h: Harness) -> None:
    key_id = h.new_key()
    key = KeyHandle.generate()
    secret = bytes(key.export_secret())
    wrapped = h.provider.wrap(key_id, key, CTX)
    raised: list[KeyCustodyError] = []

    def capture(fn: Callable[[], object]) -> None:
        with pytest.raises(KeyCustodyError) as info:
            fn()
        raised.append(info.value)

    capture(lambda: h.provider.unwrap(wrapped, OTHER_CTXS[0]))
    flipped = bytes([wrapped.ciphertext[0] ^ 1]) + wrapped.ciphertext[1:]
    capture(lambda: h.provider.unwrap(WrappedKey(key_id, wrapped.key_version, flipped), CTX))
    h.bad_material(key_id, secret[:40])
    capture(lambda: h.provider.unwrap(wrapped, CTX))
    h.disable(key_id)
    capture(lambda: h.provider.wrap(key_id, key, CTX))
    capture(lambda: h.provider.unwrap(wrapped, CTX))
    h.enable(key_id)

    needles = [
        secret,
        secret[:16],
        secret[-16:],
        secret.hex().encode(),
        secret.hex().upper().encode(),
    ]
    needles += [base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]
    for exc in raised:
        text = f"{exc}{exc!r}".encode()
        assert not any(n in text for n in needles), type(exc).__name__
        chained = [c for c in (exc.__cause__, exc.__context__) if c is not None]
        assert all(isinstance(c, KeyCustodyError) for c in chained), chained
    for shown in (repr(h.provider), repr(wrapped), repr(key)):
        assert not any(n in shown.encode() for n in needles)


# -- through a real Vault (T17-style round trips, T34 outage) ---------------------------------


def test_vault_round_trip_cold_and_kek_rotation(
    h: Harness, vault_for: Callable[..., kc.Vault]
) -> None:
    old, new = h.new_key(), h.new_key()
    vault = vault_for()
    acme = vault.scope("acme", kek=old, create=True)
    acme.put_many([(f"src/{i}.py", b"print(%d)\n" % i) for i in range(20)])
    alice = vault.scope("acme/subjects/alice", create=True)
    alice.put("note", b"hello")

    cold = vault_for(cache_ttl=0)
    assert cold.scope("acme").get("src/3.py") == b"print(3)\n"
    assert cold.scope("acme/subjects/alice").get("note") == b"hello"

    assert vault.rotate_kek("acme", new) == 1
    h.disable(old)  # nothing depends on the old KEK any more
    cold = vault_for(cache_ttl=0)
    assert cold.scope("acme").get("src/19.py") == b"print(19)\n"
    assert cold.scope("acme/subjects/alice").get("note") == b"hello"
    h.enable(old)


def test_vault_tenant_with_two_keks_fails_over_to_the_second(
    h: Harness, vault_for: Callable[..., kc.Vault]
) -> None:
    first, second = h.new_key(), h.new_key()
    vault = vault_for(cache_ttl=0)
    acme = vault.scope("acme", kek=[first, second], create=True)
    acme.put("a", b"alpha")
    h.disable(first)
    try:
        assert vault_for(cache_ttl=0).scope("acme").get("a") == b"alpha"
    finally:
        h.enable(first)
    used = [e for e in vault.audit.events() if e.action == "kek.failover"]
    assert used and all(e.kms_key_id == second for e in used)
    assert used[0].details_dict()["passed_over"][0]["reason"] == "KeyRevokedError"


def test_vault_disabled_kek_is_refused_after_the_cache_ttl(
    h: Harness, vault_for: Callable[..., kc.Vault]
) -> None:
    key_id = h.new_key()
    ttl = 0.4
    vault = vault_for(cache_ttl=ttl)
    acme = vault.scope("acme", kek=key_id, create=True)
    acme.put("a", b"alpha")
    h.disable(key_id)
    assert acme.get("a") == b"alpha"  # cached
    time.sleep(ttl + 0.1)
    with pytest.raises(KeyRevokedError):
        acme.get("a")
    h.enable(key_id)
    assert acme.get("a") == b"alpha"


def test_vault_kms_outage_leaves_nothing_half_written(
    h: Harness, vault_for: Callable[..., kc.Vault]
) -> None:
    if h.outage is None or h.timeout is None:
        pytest.skip(f"{h.name} is embedded: it cannot be unreachable")
    key_id = h.new_key()
    vault = vault_for(cache_ttl=0)
    vault.scope("acme", kek=key_id, create=True).put("a", b"alpha")
    with h.outage():
        start = time.monotonic()
        with pytest.raises(KmsUnavailableError):
            vault.scope("newco", kek=key_id, create=True)
        assert time.monotonic() - start <= 2 * h.timeout
        with pytest.raises(KmsUnavailableError):
            vault.scope("acme").get("a")
    assert vault.scopes() == ["acme"]
    assert vault.scope("acme").get("a") == b"alpha"
