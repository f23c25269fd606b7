"""Pkcs11KMS against a real SoftHSM2 token (a private one per test), and through a real Vault.

Skipped only when SoftHSM2 itself is not installed (a failure instead when
KEYCUSTODY_REQUIRE_SOFTHSM=1); CI installs it with .ci/softhsm-setup.sh.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypedDict

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e
from softhsm import PIN, SAFE_KEY, SO_PIN, SoftHsm, import_key, require, softhsm

import keycustody as kc
from keycustody._core import KeyHandle
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    InvalidInputError,
    KeyRevokedError,
    KmsError,
    NotFoundError,
    ShreddedError,
)
from keycustody.keys.shredding import KeyVersionDestroyer
from keycustody.kms.base import KmsProvider
from keycustody.kms.pkcs11 import Pkcs11KMS
from keycustody.types import EncryptionContext, KeyId, WrappedKey

TOKEN = "kc-test"
CTX = EncryptionContext({"vault": "v-1", "scope": "acme", "version": "1"})
VECTORS = Path(__file__).parent.parent / "vectors" / "wycheproof"


@pytest.fixture
def hsm(tmp_path: Path) -> Iterator[SoftHsm]:
    """A private SoftHSM2 configuration with one fresh token, ``kc-test``."""
    require()
    with softhsm(tmp_path / "softhsm") as h:
        h.init_token(TOKEN)
        yield h


@pytest.fixture
def p11(hsm: SoftHsm) -> Pkcs11KMS:
    return Pkcs11KMS(hsm.lib, TOKEN, PIN)


@pytest.fixture
def session(hsm: SoftHsm) -> Iterator[pkcs11.Session]:
    """A separate logged-in session, playing the HSM administrator (pkcs11-tool)."""
    s = hsm.session(TOKEN)
    try:
        yield s
    finally:
        s.close()


def _keys(s: pkcs11.Session, label: str, version: int | None = None) -> list[Any]:
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.LABEL: label,
    }
    if version is not None:
        template[Attribute.ID] = b"v%d" % version
    return list(s.get_objects(template))


def _same_key(a: KeyHandle, b: KeyHandle) -> bool:
    return a.export_secret() == b.export_secret()


# -- configuration -------------------------------------------------------------------------


def test_missing_python_pkcs11_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pkcs11", None)
    with pytest.raises(ConfigError, match=r"pip install 'keycustody\[pkcs11\]'"):
        Pkcs11KMS("/usr/lib/softhsm/libsofthsm2.so", TOKEN, PIN)


def test_missing_library_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Pkcs11KMS(str(tmp_path / "nope.so"), TOKEN, PIN)
    not_a_module = tmp_path / "junk.so"
    not_a_module.write_bytes(b"not an ELF file")
    with pytest.raises(ConfigError, match="cannot load the PKCS#11 library"):
        Pkcs11KMS(str(not_a_module), TOKEN, PIN)


@pytest.mark.parametrize("args", [("", TOKEN, PIN), ("x.so", "", PIN), ("x.so", TOKEN, "")])
def test_empty_arguments_are_config_errors(args: tuple[str, str, str]) -> None:
    with pytest.raises(ConfigError):
        Pkcs11KMS(*args)


def test_unknown_token_names_the_tokens_present(hsm: SoftHsm) -> None:
    with pytest.raises(ConfigError) as info:
        Pkcs11KMS(hsm.lib, "no-such-token", PIN)
    assert "'no-such-token'" in str(info.value)
    assert f"'{TOKEN}'" in str(info.value)


def test_wrong_pin_is_a_config_error(hsm: SoftHsm) -> None:
    with pytest.raises(ConfigError, match="refused the PIN") as info:
        Pkcs11KMS(hsm.lib, TOKEN, "0000")
    assert "0000" not in str(info.value)
    assert PIN not in str(info.value)


def test_repr_hides_the_pin(p11: Pkcs11KMS, hsm: SoftHsm) -> None:
    assert PIN not in repr(p11)
    assert hsm.lib in repr(p11)
    assert TOKEN in repr(p11)


def test_is_a_provider_that_destroys_versions(p11: Pkcs11KMS) -> None:
    assert isinstance(p11, KmsProvider)
    assert isinstance(p11, KeyVersionDestroyer)
    assert Pkcs11KMS.prefix == "pkcs11"


# -- keys on the token -----------------------------------------------------------------------


def test_create_generates_a_non_extractable_key_on_the_token(
    p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    assert p11.create_key("acme") == "pkcs11:acme"

    [key] = _keys(session, "acme")
    attrs = key.get_attributes(
        [
            Attribute.ID,
            Attribute.KEY_TYPE,
            Attribute.VALUE_LEN,
            Attribute.TOKEN,
            Attribute.PRIVATE,
            Attribute.SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.ALWAYS_SENSITIVE,
            Attribute.NEVER_EXTRACTABLE,
            Attribute.LOCAL,
            Attribute.ENCRYPT,
            Attribute.DECRYPT,
            Attribute.WRAP,
            Attribute.UNWRAP,
            Attribute.SIGN,
            Attribute.DERIVE,
        ]
    )
    assert attrs[Attribute.ID] == b"v1"
    assert attrs[Attribute.KEY_TYPE] == KeyType.AES
    assert attrs[Attribute.VALUE_LEN] == 32
    for flag in (Attribute.TOKEN, Attribute.PRIVATE, Attribute.SENSITIVE, Attribute.LOCAL):
        assert attrs[flag] is True, flag
    assert attrs[Attribute.ALWAYS_SENSITIVE] is True
    assert attrs[Attribute.NEVER_EXTRACTABLE] is True
    assert attrs[Attribute.EXTRACTABLE] is False
    assert (attrs[Attribute.ENCRYPT], attrs[Attribute.DECRYPT]) == (True, True)
    for flag in (Attribute.WRAP, Attribute.UNWRAP, Attribute.SIGN, Attribute.DERIVE):
        assert attrs[flag] is False, flag


def test_key_bytes_cannot_be_read_or_exported(p11: Pkcs11KMS, session: pkcs11.Session) -> None:
    p11.create_key("acme")
    [key] = _keys(session, "acme")
    with pytest.raises(p11e.AttributeSensitive):
        key[Attribute.VALUE]
    with pytest.raises(p11e.AttributeReadOnly):
        key[Attribute.EXTRACTABLE] = True
    with pytest.raises(p11e.AttributeReadOnly):
        key[Attribute.SENSITIVE] = False
    wrapper = session.generate_key(
        KeyType.AES, 256, label="wrapper", template={Attribute.WRAP: True}
    )
    assert isinstance(wrapper, pkcs11.WrapMixin)
    with pytest.raises(p11e.KeyUnextractable):
        wrapper.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP_PAD)


def test_describe_and_list(p11: Pkcs11KMS) -> None:
    key_id = p11.create_key("acme")
    p11.create_key("pkcs11:beta")
    p11.rotate_key(key_id)

    assert p11.list_keys() == ["pkcs11:acme", "pkcs11:beta"]
    info = p11.describe_key(key_id)
    assert info["key_id"] == key_id
    assert info["label"] == "acme"
    assert info["token"] == TOKEN
    assert info["mechanism"] == "CKM_AES_GCM"
    assert info["state"] == "enabled"
    assert info["primary"] == 2
    assert info["created_at"] == info["versions"]["1"]["created_at"]
    assert set(info["versions"]) == {"1", "2"}
    for entry in info["versions"].values():
        assert entry["state"] == "enabled"
        assert entry["objects_on_token"] == 1
        assert entry["sensitive"] is True
        assert entry["extractable"] is False
        assert entry["never_extractable"] is True
        assert entry["generated_on_token"] is True
        assert entry["created_at"] is not None
    assert PIN not in json.dumps(info)


def test_duplicate_create_is_a_config_error(p11: Pkcs11KMS, session: pkcs11.Session) -> None:
    key_id = p11.create_key("acme")
    with pytest.raises(ConfigError, match="already exists"):
        p11.create_key("acme")
    assert p11.create_key("acme", exist_ok=True) == key_id
    assert len(_keys(session, "acme")) == 1


@pytest.mark.parametrize(
    "label", ["", "a/b", "..", ".x", "-x", "a b", "a:b", "a|b", "é", "a" * 129]
)
def test_invalid_labels_are_rejected(p11: Pkcs11KMS, label: str) -> None:
    with pytest.raises(InvalidInputError):
        p11.create_key(label)
    with pytest.raises(InvalidInputError):
        p11.wrap(KeyId(f"pkcs11:{label}"), KeyHandle.generate(), CTX)
    assert p11.list_keys() == []


def test_unknown_key_everywhere(p11: Pkcs11KMS) -> None:
    missing_id = KeyId("pkcs11:nope")
    with pytest.raises(NotFoundError) as info:
        p11.wrap(missing_id, KeyHandle.generate(), CTX)
    assert "create_key('nope')" in str(info.value)
    assert TOKEN in str(info.value)
    with pytest.raises(NotFoundError):
        p11.unwrap(WrappedKey(missing_id, "1", bytes(1 + 12 + 64 + 16)), CTX)
    for call in (p11.rotate_key, p11.disable_key, p11.enable_key, p11.destroy_key):
        with pytest.raises(NotFoundError):
            call(missing_id)
    with pytest.raises(NotFoundError):
        p11.describe_key(missing_id)


def test_default_key_is_created_once(
    hsm: SoftHsm, p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    assert p11.default_key_id() == "pkcs11:keycustody-default"
    assert p11.default_key_id() == "pkcs11:keycustody-default"
    assert len(_keys(session, "keycustody-default")) == 1
    other = Pkcs11KMS(hsm.lib, TOKEN, PIN, default_label="tenant-kek")
    assert other.default_key_id() == "pkcs11:tenant-kek"
    assert p11.list_keys() == ["pkcs11:keycustody-default", "pkcs11:tenant-kek"]


# -- wrap / unwrap ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_wrap_unwrap_round_trip(p11: Pkcs11KMS, size: int) -> None:
    key_id = p11.create_key("acme")
    scope_key = KeyHandle.generate(size)

    wrapped = p11.wrap(key_id, scope_key, CTX)

    assert wrapped.key_id == key_id
    assert wrapped.key_version == "1"
    assert len(wrapped.ciphertext) == 1 + 12 + size + 16
    assert wrapped.ciphertext[0] == 1
    assert bytes(scope_key.export_secret()) not in wrapped.ciphertext
    unwrapped = p11.unwrap(wrapped, CTX)
    assert unwrapped.size == size
    assert _same_key(unwrapped, scope_key)


def test_wrapping_is_randomized(p11: Pkcs11KMS) -> None:
    key_id = p11.create_key("acme")
    scope_key = KeyHandle.generate()
    a, b = p11.wrap(key_id, scope_key, CTX), p11.wrap(key_id, scope_key, CTX)
    assert a.ciphertext != b.ciphertext
    assert a.ciphertext[1:13] != b.ciphertext[1:13]
    assert _same_key(p11.unwrap(a, CTX), p11.unwrap(b, CTX))


def test_unprefixed_key_id_works_too(p11: Pkcs11KMS) -> None:
    p11.create_key("acme")
    wrapped = p11.wrap(KeyId("acme"), KeyHandle.generate(), CTX)
    assert wrapped.key_id == "pkcs11:acme"


def test_tampered_wrapped_key_fails(p11: Pkcs11KMS) -> None:
    key_id = p11.create_key("acme")
    ct = p11.wrap(key_id, KeyHandle.generate(), CTX).ciphertext
    for i in range(len(ct)):
        flipped = ct[:i] + bytes([ct[i] ^ 0x01]) + ct[i + 1 :]
        with pytest.raises(IntegrityError):
            p11.unwrap(WrappedKey(key_id, "1", flipped), CTX)
    for bad in (ct[:-1], ct[:13], ct[:1], b"", ct + b"\x00", bytes([2]) + ct[1:]):
        with pytest.raises(IntegrityError):
            p11.unwrap(WrappedKey(key_id, "1", bad), CTX)


def test_wrapped_key_for_another_key_id_fails(p11: Pkcs11KMS) -> None:
    a, b = p11.create_key("a"), p11.create_key("b")
    wrapped = p11.wrap(a, KeyHandle.generate(), CTX)
    with pytest.raises(IntegrityError):
        p11.unwrap(WrappedKey(b, wrapped.key_version, wrapped.ciphertext), CTX)


def test_key_id_and_version_are_bound_even_with_equal_key_bytes(
    p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    """Key id and version are in the associated data, not only pointers to token objects."""
    value = os.urandom(32)
    import_key(session, "a", 1, value)
    import_key(session, "b", 1, value)
    import_key(session, "b", 2, value)
    scope_key = KeyHandle.generate()
    wrapped = p11.wrap(KeyId("pkcs11:a"), scope_key, CTX)
    assert _same_key(p11.unwrap(wrapped, CTX), scope_key)
    with pytest.raises(IntegrityError):
        p11.unwrap(WrappedKey(KeyId("pkcs11:b"), "1", wrapped.ciphertext), CTX)
    by_b2 = p11.wrap(KeyId("pkcs11:b"), scope_key, CTX)
    assert by_b2.key_version == "2"
    with pytest.raises(IntegrityError):
        p11.unwrap(WrappedKey(by_b2.key_id, "1", by_b2.ciphertext), CTX)


def test_wrapped_key_relabelled_to_another_version_fails(p11: Pkcs11KMS) -> None:
    key_id = p11.create_key("acme")
    wrapped = p11.wrap(key_id, KeyHandle.generate(), CTX)
    p11.rotate_key(key_id)
    for version in ("2", "99", "0", "-1", "01", "v1", ""):
        with pytest.raises(IntegrityError):
            p11.unwrap(WrappedKey(key_id, version, wrapped.ciphertext), CTX)


def test_a_recreated_token_cannot_unwrap_old_wraps(tmp_path: Path, hsm: SoftHsm) -> None:
    first = Pkcs11KMS(hsm.lib, TOKEN, PIN)
    wrapped = first.wrap(first.create_key("acme"), KeyHandle.generate(), CTX)
    with softhsm(tmp_path / "other") as other_hsm:
        other_hsm.init_token(TOKEN)
        fresh = Pkcs11KMS(other_hsm.lib, TOKEN, PIN)
        fresh.create_key("acme")
        with pytest.raises(IntegrityError):
            fresh.unwrap(wrapped, CTX)


def test_second_instance_sees_keys(hsm: SoftHsm, p11: Pkcs11KMS) -> None:
    key_id = p11.create_key("acme")
    scope_key = KeyHandle.generate()
    wrapped = p11.wrap(key_id, scope_key, CTX)
    second = Pkcs11KMS(hsm.lib, TOKEN, PIN)
    assert _same_key(second.unwrap(wrapped, CTX), scope_key)
    assert second.rotate_key(key_id) == "2"
    assert p11.wrap(key_id, scope_key, CTX).key_version == "2"


def test_threads_share_the_library(p11: Pkcs11KMS) -> None:
    key_id = p11.create_key("acme")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                scope_key = KeyHandle.generate()
                assert _same_key(p11.unwrap(p11.wrap(key_id, scope_key, CTX), CTX), scope_key)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_forked_child_reinitializes_and_unwraps(p11: Pkcs11KMS) -> None:
    key_id = p11.create_key("acme")
    scope_key = KeyHandle.generate()
    wrapped = p11.wrap(key_id, scope_key, CTX)
    expected = bytes(scope_key.export_secret())
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            code = 0 if bytes(p11.unwrap(wrapped, CTX).export_secret()) == expected else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _same_key(p11.unwrap(wrapped, CTX), scope_key)  # the parent still works


# -- rotate ----------------------------------------------------------------------------------


def test_rotate_adds_a_version_old_wraps_still_unwrap(
    p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    key_id = p11.create_key("acme")
    old_key = KeyHandle.generate()
    old = p11.wrap(key_id, old_key, CTX)

    assert p11.rotate_key(key_id) == "2"

    new_key = KeyHandle.generate()
    new = p11.wrap(key_id, new_key, CTX)
    assert new.key_version == "2"
    assert _same_key(p11.unwrap(old, CTX), old_key)
    assert _same_key(p11.unwrap(new, CTX), new_key)
    assert sorted(k[Attribute.ID] for k in _keys(session, "acme")) == [b"v1", b"v2"]
    assert p11.rotate_key(key_id) == "3"
    assert p11.wrap(key_id, new_key, CTX).key_version == "3"


def test_duplicate_objects_for_one_version_are_tolerated(
    p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    """Two processes rotating at once may both create version N: both objects stay usable."""
    key_id = p11.create_key("acme")
    scope_key = KeyHandle.generate()
    before = p11.wrap(key_id, scope_key, CTX)
    import_key(session, "acme", 1, os.urandom(32))

    assert _same_key(p11.unwrap(before, CTX), scope_key)
    after = p11.wrap(key_id, scope_key, CTX)
    assert _same_key(p11.unwrap(after, CTX), scope_key)
    assert p11.describe_key(key_id)["versions"]["1"]["objects_on_token"] == 2
    p11.rotate_key(key_id)
    p11.destroy_key(key_id, "1")
    assert _keys(session, "acme", 1) == []


# -- disable / enable / revocation -----------------------------------------------------------


def test_disable_blocks_wrap_unwrap_and_rotate(p11: Pkcs11KMS, session: pkcs11.Session) -> None:
    key_id = p11.create_key("acme")
    p11.rotate_key(key_id)
    scope_key = KeyHandle.generate()
    wrapped = p11.wrap(key_id, scope_key, CTX)

    p11.disable_key(key_id)

    for key in _keys(session, "acme"):
        assert (key[Attribute.ENCRYPT], key[Attribute.DECRYPT]) == (False, False)
    with pytest.raises(KeyRevokedError):
        p11.wrap(key_id, scope_key, CTX)
    with pytest.raises(KeyRevokedError):
        p11.unwrap(wrapped, CTX)
    with pytest.raises(KeyRevokedError):
        p11.rotate_key(key_id)
    info = p11.describe_key(key_id)
    assert info["state"] == "disabled"
    assert {v["state"] for v in info["versions"].values()} == {"disabled"}

    p11.enable_key(key_id)

    assert _same_key(p11.unwrap(wrapped, CTX), scope_key)
    assert p11.describe_key(key_id)["state"] == "enabled"


def test_the_token_enforces_a_disable_made_outside_keycustody(
    p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    key_id = p11.create_key("acme")
    wrapped = p11.wrap(key_id, KeyHandle.generate(), CTX)
    [key] = _keys(session, "acme")
    key[Attribute.DECRYPT] = False
    with pytest.raises(KeyRevokedError):
        p11.unwrap(wrapped, CTX)


def test_disable_needs_a_modifiable_key(p11: Pkcs11KMS, session: pkcs11.Session) -> None:
    import_key(session, "frozen", 1, os.urandom(32), modifiable=False)
    with pytest.raises(KmsError, match="no standard disabled state") as info:
        p11.disable_key("pkcs11:frozen")
    assert "user PIN" in str(info.value)
    assert p11.describe_key("pkcs11:frozen")["state"] == "enabled"


def test_pin_change_revokes_access(hsm: SoftHsm, p11: Pkcs11KMS) -> None:
    """The HSM administrator's lever: a new PIN stops keycustody at its next KMS call."""
    key_id = p11.create_key("acme")
    wrapped = p11.wrap(key_id, KeyHandle.generate(), CTX)
    with hsm.session(TOKEN) as admin:
        admin.set_pin(PIN, "new-pin-7")

    with pytest.raises(KeyRevokedError, match="no longer accepts the PIN") as info:
        p11.unwrap(wrapped, CTX)
    assert PIN not in str(info.value)
    with pytest.raises(KeyRevokedError):
        p11.wrap(key_id, KeyHandle.generate(), CTX)
    with pytest.raises(ConfigError):
        Pkcs11KMS(hsm.lib, TOKEN, PIN)
    assert Pkcs11KMS(hsm.lib, TOKEN, "new-pin-7").unwrap(wrapped, CTX).size == 64


def test_so_can_reset_the_user_pin(hsm: SoftHsm, p11: Pkcs11KMS) -> None:
    key_id = p11.create_key("acme")
    token = pkcs11.lib(hsm.lib).get_token(token_label=TOKEN)
    with token.open(rw=True, so_pin=SO_PIN) as so:
        so.init_pin("reset-by-so")
    with pytest.raises(KeyRevokedError):
        p11.rotate_key(key_id)


# -- destroy ---------------------------------------------------------------------------------


def test_destroy_one_version(p11: Pkcs11KMS, session: pkcs11.Session) -> None:
    key_id = p11.create_key("acme")
    k1, k2 = KeyHandle.generate(), KeyHandle.generate()
    w1 = p11.wrap(key_id, k1, CTX)
    p11.rotate_key(key_id)
    w2 = p11.wrap(key_id, k2, CTX)

    p11.destroy_key(key_id, "1")

    assert _keys(session, "acme", 1) == []  # C_FindObjects no longer finds it
    assert len(_keys(session, "acme", 2)) == 1
    with pytest.raises(ShreddedError, match="version 1"):
        p11.unwrap(w1, CTX)
    assert _same_key(p11.unwrap(w2, CTX), k2)
    assert p11.wrap(key_id, k1, CTX).key_version == "2"
    info = p11.describe_key(key_id)
    assert info["state"] == "enabled"
    assert info["versions"]["1"]["state"] == "destroyed"
    assert info["versions"]["1"]["objects_on_token"] == 0
    assert info["versions"]["1"]["destroyed_at"] >= info["versions"]["1"]["created_at"]
    assert info["versions"]["2"]["state"] == "enabled"
    p11.destroy_key(key_id, "1")  # idempotent
    assert p11.rotate_key(key_id) == "3"  # numbers are never reused


def test_destroy_unknown_or_primary_version(p11: Pkcs11KMS) -> None:
    key_id = p11.create_key("acme")
    with pytest.raises(NotFoundError, match="no version 7"):
        p11.destroy_key(key_id, "7")
    with pytest.raises(NotFoundError):
        p11.destroy_key(key_id, "x")
    with pytest.raises(InvalidInputError, match="rotate the key first"):
        p11.destroy_key(key_id, "1")
    assert p11.describe_key(key_id)["state"] == "enabled"


def test_destroy_all(p11: Pkcs11KMS, session: pkcs11.Session) -> None:
    key_id = p11.create_key("acme")
    other = p11.create_key("other")
    w1 = p11.wrap(key_id, KeyHandle.generate(), CTX)
    p11.rotate_key(key_id)
    w2 = p11.wrap(key_id, KeyHandle.generate(), CTX)
    kept = KeyHandle.generate()
    w_other = p11.wrap(other, kept, CTX)

    p11.destroy_key(key_id)

    assert _keys(session, "acme") == []
    for w in (w1, w2):
        with pytest.raises(ShreddedError):
            p11.unwrap(w, CTX)
    with pytest.raises(ShreddedError):
        p11.wrap(key_id, KeyHandle.generate(), CTX)
    for call in (p11.rotate_key, p11.enable_key, p11.disable_key):
        with pytest.raises(ShreddedError):
            call(key_id)
    with pytest.raises(ConfigError, match="not reused"):
        p11.create_key("acme")
    info = p11.describe_key(key_id)
    assert info["state"] == "destroyed"
    assert info["primary"] is None
    assert {v["state"] for v in info["versions"].values()} == {"destroyed"}
    assert key_id in p11.list_keys()
    assert _same_key(p11.unwrap(w_other, CTX), kept)
    p11.destroy_key(key_id)  # idempotent


def test_version_removed_outside_keycustody_is_shredded(
    p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    key_id = p11.create_key("acme")
    w1 = p11.wrap(key_id, KeyHandle.generate(), CTX)
    p11.rotate_key(key_id)
    for key in _keys(session, "acme", 1):
        key.destroy()
    with pytest.raises(ShreddedError, match="no longer on the token"):
        p11.unwrap(w1, CTX)
    for key in _keys(session, "acme"):
        key.destroy()
    with pytest.raises(ShreddedError):
        p11.wrap(key_id, KeyHandle.generate(), CTX)


# -- keys made by the HSM administrator ------------------------------------------------------


def test_an_administrator_generated_key_is_used(p11: Pkcs11KMS, session: pkcs11.Session) -> None:
    session.generate_key(
        KeyType.AES,
        256,
        label="ceremony",
        id=b"v1",
        store=True,
        capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
        template=SAFE_KEY,
    )
    scope_key = KeyHandle.generate()
    wrapped = p11.wrap(KeyId("pkcs11:ceremony"), scope_key, CTX)
    assert _same_key(p11.unwrap(wrapped, CTX), scope_key)
    info = p11.describe_key("pkcs11:ceremony")
    assert info["versions"]["1"]["created_at"] is None
    assert info["versions"]["1"]["generated_on_token"] is True
    assert "pkcs11:ceremony" in p11.list_keys()


def test_an_extractable_key_is_refused(p11: Pkcs11KMS, session: pkcs11.Session) -> None:
    import_key(session, "leaky", 1, os.urandom(32), extractable=True)
    import_key(session, "readable", 1, os.urandom(32), sensitive=False)
    for label in ("leaky", "readable"):
        with pytest.raises(ConfigError, match="CKA_EXTRACTABLE=false"):
            p11.wrap(KeyId(f"pkcs11:{label}"), KeyHandle.generate(), CTX)


def test_objects_without_a_version_id_are_not_keks(
    p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    import_key(session, "stranger", 1, os.urandom(32))
    [key] = _keys(session, "stranger")
    key[Attribute.ID] = b"\x01"
    with pytest.raises(NotFoundError, match="no keycustody version id"):
        p11.wrap(KeyId("pkcs11:stranger"), KeyHandle.generate(), CTX)
    assert p11.list_keys() == []


# -- through a real Vault --------------------------------------------------------------------


def _open(db: Path, p11: Pkcs11KMS, tmp_path: Path) -> kc.Vault:
    return kc.Vault.open(f"sqlite:///{db}", kms=[p11, kc.LocalKMS(tmp_path / "local")])


def test_vault_round_trip(tmp_path: Path, p11: Pkcs11KMS) -> None:
    db = tmp_path / "ctx.db"
    kek = p11.create_key("acme")
    with _open(db, p11, tmp_path) as vault:
        acme = vault.scope("acme", kek=kek, create=True)
        api = vault.scope("acme/repos/api", create=True)
        acme.put("README.md", b"# acme")
        api.put_many([(f"src/{i}.py", b"x = %d\n" % i) for i in range(50)])
        assert vault.audit_kek == "local:keycustody-audit"
    with _open(db, p11, tmp_path) as cold:
        assert cold.scope("acme").get("README.md") == b"# acme"
        assert cold.scope("acme/repos/api").get("src/7.py") == b"x = 7\n"
        assert cold.kms_calls >= 1
        assert cold.scope("acme")._ref.kek_id == "pkcs11:acme"


def test_vault_default_tenant_kek_is_on_the_token(tmp_path: Path, p11: Pkcs11KMS) -> None:
    with _open(tmp_path / "ctx.db", p11, tmp_path) as vault:
        vault.scope("beta", create=True).put("a", b"1")
        assert vault.scope("beta")._ref.kek_id == "pkcs11:keycustody-default"
    assert p11.list_keys() == ["pkcs11:keycustody-default"]


def test_vault_sees_a_kek_disabled_on_the_token(tmp_path: Path, p11: Pkcs11KMS) -> None:
    kek = p11.create_key("acme")
    db = tmp_path / "ctx.db"
    with _open(db, p11, tmp_path) as vault:
        vault.scope("acme", kek=kek, create=True).put("a", b"1")
    p11.disable_key(kek)
    with _open(db, p11, tmp_path) as cold, pytest.raises(KeyRevokedError):
        cold.scope("acme").get("a")
    p11.enable_key(kek)
    with _open(db, p11, tmp_path) as cold:
        assert cold.scope("acme").get("a") == b"1"


def test_shred_phase2_destroys_the_old_kek_version_on_the_token(
    tmp_path: Path, p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    db = tmp_path / "ctx.db"
    kek = p11.create_key("acme")
    with _open(db, p11, tmp_path) as vault:
        acme = vault.scope("acme", kek=kek, create=True)
        alice = vault.scope("acme/subjects/alice", create=True)
        bob = vault.scope("acme/subjects/bob", create=True)
        acme.put("tenant.txt", b"stays")
        alice.put("chat.txt", b"erase me")
        bob.put("chat.txt", b"bob stays")

        cert = vault.shred("acme/subjects/alice", reason="GDPR Art.17 request #123", durable=True)

        assert cert.phase2_status == "confirmed"
        assert "pkcs11:acme version 1 destroyed" in cert.document["when"]["phase2"]["events"]
        assert cert.document["what"]["kek"] == {"id": "pkcs11:acme", "provider": "pkcs11"}
        with pytest.raises(ShreddedError):
            alice.get("chat.txt")
        assert acme.get("tenant.txt") == b"stays"
        assert bob.get("chat.txt") == b"bob stays"
        assert vault.verify_certificate(cert.document)[0]

    assert _keys(session, "acme", 1) == []  # the old KEK version is gone from the token
    assert len(_keys(session, "acme", 2)) == 1
    info = p11.describe_key(kek)
    assert info["primary"] == 2
    assert info["versions"]["1"]["state"] == "destroyed"
    with _open(db, p11, tmp_path) as cold:  # cold cache: every key comes through the token
        assert cold.scope("acme").get("tenant.txt") == b"stays"
        assert cold.scope("acme/subjects/bob").get("chat.txt") == b"bob stays"
        with pytest.raises(ShreddedError):
            cold.scope("acme/subjects/alice").get("chat.txt")


def test_shred_tenant_with_destroy_kek(
    tmp_path: Path, p11: Pkcs11KMS, session: pkcs11.Session
) -> None:
    kek = p11.create_key("acme")
    with _open(tmp_path / "ctx.db", p11, tmp_path) as vault:
        vault.scope("acme", kek=kek, create=True).put("a", b"1")
        cert = vault.shred("acme", reason="contract ended #9", destroy_kek=True)
    assert cert.document["how"]["kek_destruction"]["destroyed"] is True
    assert cert.phase2_status == "confirmed"
    assert _keys(session, "acme") == []
    assert p11.describe_key(kek)["state"] == "destroyed"


# -- the token's AES-GCM against Wycheproof (the mechanism every wrap uses) ------------------


class _GcmCase(TypedDict):
    tcId: int
    key: str
    iv: str
    aad: str
    msg: str
    ct: str
    tag: str
    result: Literal["valid", "invalid", "acceptable"]


def _gcm_cases() -> list[_GcmCase]:
    data = json.loads((VECTORS / "aes_gcm_test.json").read_text())
    return [
        case
        for group in data["testGroups"]
        if (group["keySize"], group["ivSize"], group["tagSize"]) == (256, 96, 128)
        for case in group["tests"]
    ]


GCM_CASES = _gcm_cases()


def test_gcm_vector_subset_is_complete() -> None:
    """The parameters Pkcs11KMS uses: AES-256, 96-bit IV, 128-bit tag (tests/vectors/README)."""
    results = [c["result"] for c in GCM_CASES]
    assert (len(results), results.count("valid"), results.count("invalid")) == (66, 39, 27)


@pytest.fixture(scope="module")
def vector_hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    require()
    with softhsm(tmp_path_factory.mktemp("softhsm-vectors")) as h:
        h.init_token("vectors")
        yield h


@pytest.fixture
def vector_session(vector_hsm: SoftHsm) -> Iterator[pkcs11.Session]:
    """A test-only token: known KEK bytes can only be tested by importing them."""
    vector_hsm.reload()
    s = vector_hsm.session("vectors")
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("case", GCM_CASES, ids=[f"tc{c['tcId']}" for c in GCM_CASES])
def test_token_aes_gcm_wycheproof(vector_session: pkcs11.Session, case: _GcmCase) -> None:
    key = vector_session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.TOKEN: False,
            Attribute.VALUE: bytes.fromhex(case["key"]),
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
        }
    )
    assert isinstance(key, pkcs11.EncryptMixin)
    assert isinstance(key, pkcs11.DecryptMixin)
    iv, aad = bytes.fromhex(case["iv"]), bytes.fromhex(case["aad"])
    msg = bytes.fromhex(case["msg"])
    sealed = bytes.fromhex(case["ct"]) + bytes.fromhex(case["tag"])
    params = pkcs11.GCMParams(iv, aad, 128)
    if case["result"] == "valid":
        assert key.encrypt(msg, mechanism=Mechanism.AES_GCM, mechanism_param=params) == sealed
        assert key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params) == msg
    else:
        assert case["result"] == "invalid"
        with pytest.raises(p11e.PKCS11Error):
            key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params)
