"""LocalKMS and ProviderRegistry against real key files in a temporary directory."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import pytest

from keycustody._core import KeyHandle
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    InvalidInputError,
    KeyCustodyError,
    KeyRevokedError,
    KmsError,
    NotFoundError,
    ShreddedError,
    UnsupportedKeyIdError,
)
from keycustody.kms.base import KmsProvider
from keycustody.kms.local import LocalKMS
from keycustody.kms.registry import ProviderRegistry
from keycustody.types import EncryptionContext, KeyId, WrappedKey

CTX = EncryptionContext({"vault": "v-1", "scope": "acme", "version": "1"})


@pytest.fixture(autouse=True)
def _no_umask() -> Iterator[None]:
    """Modes must come from LocalKMS itself, not from a friendly umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def kms_dir(tmp_path: Path) -> Path:
    return tmp_path / "kek"


@pytest.fixture
def kms(kms_dir: Path) -> LocalKMS:
    return LocalKMS(kms_dir)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _key_file(kms_dir: Path, key_id: str, version: str = "1") -> Path:
    return kms_dir / key_id.removeprefix("local:") / f"v{version}.key"


def _needles(material: bytes) -> list[bytes]:
    """The key bytes, each 16-byte half, and their hex/base64 spellings."""
    raw = [material, material[:16], material[16:]]
    spelled = [material.hex().encode(), material.hex().upper().encode()]
    spelled.append(base64.b64encode(material))
    return raw + spelled


def _hits(root: Path, material: bytes) -> list[str]:
    """Every (file, needle) where key material still shows up under ``root``."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n[:8]!r}" for n in _needles(material) if n in data]
    return found


def _same_key(a: KeyHandle, b: KeyHandle) -> bool:
    return a.export_secret() == b.export_secret()


# -- files and permissions ---------------------------------------------------------------


def test_directory_is_0700_and_files_0600(kms: LocalKMS, kms_dir: Path) -> None:
    key_id = kms.create_key("acme")
    kms.rotate_key(key_id)

    assert _mode(kms_dir) == 0o700
    assert _mode(kms_dir / "acme") == 0o700
    files = sorted(p.name for p in (kms_dir / "acme").iterdir())
    assert files == ["meta.json", "v1.key", "v2.key"]  # no temp files left behind
    for name in files:
        assert _mode(kms_dir / "acme" / name) == 0o600, name


def test_nested_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "kek"
    LocalKMS(path).create_key("k")
    assert _mode(path) == 0o700


def test_path_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "not-a-dir"
    path.write_bytes(b"x")
    with pytest.raises(ConfigError):
        LocalKMS(path)


def test_key_file_holds_32_random_bytes(kms: LocalKMS, kms_dir: Path) -> None:
    a = _key_file(kms_dir, kms.create_key("a")).read_bytes()
    b = _key_file(kms_dir, kms.create_key("b")).read_bytes()
    assert len(a) == len(b) == 32
    assert a != b
    assert a != bytes(32)


# -- create ------------------------------------------------------------------------------


def test_create_returns_prefixed_id(kms: LocalKMS) -> None:
    assert kms.create_key("acme-kek") == "local:acme-kek"
    assert kms.list_keys() == ["local:acme-kek"]
    assert kms.describe_key("local:acme-kek")["state"] == "enabled"


def test_duplicate_create_is_a_config_error(kms: LocalKMS, kms_dir: Path) -> None:
    key_id = kms.create_key("acme")
    before = _key_file(kms_dir, key_id).read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        kms.create_key("acme")
    assert _key_file(kms_dir, key_id).read_bytes() == before


def test_create_exist_ok_keeps_the_key(kms: LocalKMS, kms_dir: Path) -> None:
    key_id = kms.create_key("acme")
    before = _key_file(kms_dir, key_id).read_bytes()
    created_at = kms.describe_key(key_id)["created_at"]

    assert kms.create_key("acme", exist_ok=True) == key_id
    assert _key_file(kms_dir, key_id).read_bytes() == before
    assert kms.describe_key(key_id)["created_at"] == created_at
    assert kms.create_key("fresh", exist_ok=True) == "local:fresh"


@pytest.mark.parametrize(
    "name",
    ["../x", "", "a/b", "..", ".", ".hidden", "-x", "a b", "a\x00b", "a\n", "a:b", "é", "a" * 129],
)
def test_invalid_names_are_rejected(kms: LocalKMS, kms_dir: Path, name: str) -> None:
    with pytest.raises(InvalidInputError):
        kms.create_key(name)
    assert list(kms_dir.iterdir()) == []
    assert sorted(p.name for p in kms_dir.parent.iterdir()) == ["kek"]


@pytest.mark.parametrize("key_id", ["local:../x", "local:a/b", "local:", "local:../../etc"])
def test_invalid_key_ids_are_rejected_everywhere(kms: LocalKMS, key_id: str) -> None:
    with pytest.raises(InvalidInputError):
        kms.describe_key(key_id)
    with pytest.raises(InvalidInputError):
        kms.wrap(KeyId(key_id), KeyHandle.generate(), CTX)
    with pytest.raises(InvalidInputError):
        kms.destroy_key(key_id)


@pytest.mark.parametrize("name", ["a", "A.b_c-1", "0", "x" * 128])
def test_valid_names(kms: LocalKMS, name: str) -> None:
    assert kms.create_key(name) == f"local:{name}"


def test_invalid_input_is_a_keycustody_value_error() -> None:
    assert issubclass(InvalidInputError, KeyCustodyError)
    assert issubclass(InvalidInputError, ValueError)


# -- wrap / unwrap -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_wrap_unwrap_round_trip(kms: LocalKMS, size: int) -> None:
    key_id = kms.create_key("acme")
    scope_key = KeyHandle.generate(size)

    wrapped = kms.wrap(key_id, scope_key, CTX)

    assert wrapped.key_id == key_id
    assert wrapped.key_version == "1"
    assert bytes(scope_key.export_secret()) not in wrapped.ciphertext
    unwrapped = kms.unwrap(wrapped, CTX)
    assert unwrapped.size == size
    assert _same_key(unwrapped, scope_key)


def test_wrapping_is_randomized(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    scope_key = KeyHandle.generate()
    a = kms.wrap(key_id, scope_key, CTX)
    b = kms.wrap(key_id, scope_key, CTX)
    assert a.ciphertext != b.ciphertext
    assert _same_key(kms.unwrap(a, CTX), kms.unwrap(b, CTX))


def test_wrapped_key_repr_hides_ciphertext(kms: LocalKMS) -> None:
    wrapped = kms.wrap(kms.create_key("acme"), KeyHandle.generate(), CTX)
    assert wrapped.ciphertext.hex() not in repr(wrapped)
    assert repr(wrapped.ciphertext) not in repr(wrapped)


def test_wrapped_key_for_another_key_id_fails(kms: LocalKMS) -> None:
    a = kms.create_key("a")
    b = kms.create_key("b")
    wrapped = kms.wrap(a, KeyHandle.generate(), CTX)
    with pytest.raises(IntegrityError):
        kms.unwrap(WrappedKey(b, wrapped.key_version, wrapped.ciphertext), CTX)


def test_key_id_is_bound_even_with_equal_key_bytes(kms: LocalKMS, kms_dir: Path) -> None:
    """The key id is part of the associated data, not only a pointer to a key file."""
    a = kms.create_key("a")
    b = kms.create_key("b")
    wrapped = kms.wrap(a, KeyHandle.generate(), CTX)
    _key_file(kms_dir, b).write_bytes(_key_file(kms_dir, a).read_bytes())
    with pytest.raises(IntegrityError):
        kms.unwrap(WrappedKey(b, wrapped.key_version, wrapped.ciphertext), CTX)


def test_wrapped_key_relabelled_to_another_version_fails(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    wrapped = kms.wrap(key_id, KeyHandle.generate(), CTX)
    kms.rotate_key(key_id)
    with pytest.raises(IntegrityError):
        kms.unwrap(WrappedKey(key_id, "2", wrapped.ciphertext), CTX)
    with pytest.raises(IntegrityError):
        kms.unwrap(WrappedKey(key_id, "99", wrapped.ciphertext), CTX)


def test_version_is_bound_even_with_equal_key_bytes(kms: LocalKMS, kms_dir: Path) -> None:
    """The version is part of the associated data, not only a pointer to a key file."""
    key_id = kms.create_key("acme")
    wrapped = kms.wrap(key_id, KeyHandle.generate(), CTX)
    kms.rotate_key(key_id)
    v2 = _key_file(kms_dir, key_id, "2")
    v2.write_bytes(_key_file(kms_dir, key_id, "1").read_bytes())
    with pytest.raises(IntegrityError):
        kms.unwrap(WrappedKey(key_id, "2", wrapped.ciphertext), CTX)


def test_tampered_wrapped_key_fails(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    wrapped = kms.wrap(key_id, KeyHandle.generate(), CTX)
    ct = wrapped.ciphertext
    for i in (0, len(ct) // 2, len(ct) - 1):
        flipped = ct[:i] + bytes([ct[i] ^ 0x01]) + ct[i + 1 :]
        with pytest.raises(IntegrityError):
            kms.unwrap(WrappedKey(key_id, "1", flipped), CTX)
    for bad in (ct[:-1], ct[:12], b"", ct + b"\x00"):
        with pytest.raises(IntegrityError):
            kms.unwrap(WrappedKey(key_id, "1", bad), CTX)


def test_a_recreated_key_cannot_unwrap_old_wraps(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    wrapped = kms.wrap(key_id, KeyHandle.generate(), CTX)
    kms.destroy_key(key_id)
    fresh = LocalKMS(kms.path.parent / "other")
    fresh.create_key("acme")
    with pytest.raises(IntegrityError):
        fresh.unwrap(wrapped, CTX)


def test_missing_key_file_is_a_kms_error(kms: LocalKMS, kms_dir: Path) -> None:
    key_id = kms.create_key("acme")
    wrapped = kms.wrap(key_id, KeyHandle.generate(), CTX)
    _key_file(kms_dir, key_id).unlink()
    with pytest.raises(KmsError):
        kms.unwrap(wrapped, CTX)


@pytest.mark.parametrize("content", [b"", b"short", bytes(33)])
def test_corrupt_key_file_is_a_kms_error(kms: LocalKMS, kms_dir: Path, content: bytes) -> None:
    key_id = kms.create_key("acme")
    _key_file(kms_dir, key_id).write_bytes(content)
    with pytest.raises(KmsError):
        kms.wrap(key_id, KeyHandle.generate(), CTX)


# -- disable / enable ----------------------------------------------------------------------


def test_disable_blocks_wrap_and_unwrap(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    scope_key = KeyHandle.generate()
    wrapped = kms.wrap(key_id, scope_key, CTX)

    kms.disable_key(key_id)

    with pytest.raises(KeyRevokedError):
        kms.wrap(key_id, scope_key, CTX)
    with pytest.raises(KeyRevokedError):
        kms.unwrap(wrapped, CTX)
    with pytest.raises(KeyRevokedError):
        kms.rotate_key(key_id)
    meta = kms.describe_key(key_id)
    assert meta["state"] == "disabled"
    assert datetime.fromisoformat(meta["disabled_at"]).tzinfo is not None


def test_enable_restores(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    scope_key = KeyHandle.generate()
    wrapped = kms.wrap(key_id, scope_key, CTX)
    kms.disable_key(key_id)

    kms.enable_key(key_id)

    assert _same_key(kms.unwrap(wrapped, CTX), scope_key)
    assert _same_key(kms.unwrap(kms.wrap(key_id, scope_key, CTX), CTX), scope_key)
    assert kms.describe_key(key_id)["state"] == "enabled"


def test_disable_is_seen_by_another_instance(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    wrapped = kms.wrap(key_id, KeyHandle.generate(), CTX)
    LocalKMS(kms.path).disable_key(key_id)
    with pytest.raises(KeyRevokedError):
        kms.unwrap(wrapped, CTX)


# -- rotate --------------------------------------------------------------------------------


def test_rotate_new_wraps_use_new_version(kms: LocalKMS, kms_dir: Path) -> None:
    key_id = kms.create_key("acme")
    old_key = KeyHandle.generate()
    old = kms.wrap(key_id, old_key, CTX)
    v1 = _key_file(kms_dir, key_id, "1").read_bytes()

    assert kms.rotate_key(key_id) == "2"

    new_key = KeyHandle.generate()
    new = kms.wrap(key_id, new_key, CTX)
    assert new.key_version == "2"
    assert _key_file(kms_dir, key_id, "2").read_bytes() != v1
    assert _key_file(kms_dir, key_id, "1").read_bytes() == v1
    assert _same_key(kms.unwrap(old, CTX), old_key)
    assert _same_key(kms.unwrap(new, CTX), new_key)
    meta = kms.describe_key(key_id)
    assert meta["primary"] == 2
    assert set(meta["versions"]) == {"1", "2"}
    assert kms.rotate_key(key_id) == "3"
    assert kms.wrap(key_id, new_key, CTX).key_version == "3"


# -- destroy -------------------------------------------------------------------------------


def test_destroy_one_version(kms: LocalKMS, kms_dir: Path) -> None:
    key_id = kms.create_key("acme")
    k1, k2 = KeyHandle.generate(), KeyHandle.generate()
    w1 = kms.wrap(key_id, k1, CTX)
    kms.rotate_key(key_id)
    w2 = kms.wrap(key_id, k2, CTX)
    v1 = _key_file(kms_dir, key_id, "1").read_bytes()

    kms.destroy_key(key_id, "1")

    with pytest.raises(ShreddedError):
        kms.unwrap(w1, CTX)
    assert _same_key(kms.unwrap(w2, CTX), k2)
    assert kms.wrap(key_id, k1, CTX).key_version == "2"
    assert not _key_file(kms_dir, key_id, "1").exists()
    assert _hits(kms_dir, v1) == []
    meta = kms.describe_key(key_id)
    assert meta["state"] == "enabled"
    assert meta["versions"]["1"]["state"] == "destroyed"
    assert meta["versions"]["2"]["state"] == "enabled"


def test_destroy_unknown_version_is_not_found(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    with pytest.raises(NotFoundError, match="no version 7"):
        kms.destroy_key(key_id, "7")
    assert kms.describe_key(key_id)["state"] == "enabled"


def test_destroy_all_shreds_every_byte(kms: LocalKMS, kms_dir: Path) -> None:
    key_id = kms.create_key("acme")
    other = kms.create_key("other")
    w1 = kms.wrap(key_id, KeyHandle.generate(), CTX)
    kms.rotate_key(key_id)
    w2 = kms.wrap(key_id, KeyHandle.generate(), CTX)
    materials = [_key_file(kms_dir, key_id, v).read_bytes() for v in ("1", "2")]
    other_material = _key_file(kms_dir, other).read_bytes()
    for material in materials:
        assert _hits(kms_dir, material)  # the scan does find live key bytes

    kms.destroy_key(key_id)

    for wrapped in (w1, w2):
        with pytest.raises(ShreddedError):
            kms.unwrap(wrapped, CTX)
    with pytest.raises(ShreddedError):
        kms.wrap(key_id, KeyHandle.generate(), CTX)
    for material in materials:
        assert _hits(kms_dir, material) == []
    assert sorted(p.name for p in (kms_dir / "acme").iterdir()) == ["meta.json"]
    assert _key_file(kms_dir, other).read_bytes() == other_material


def test_destroy_overwrites_the_file_in_place(kms: LocalKMS, kms_dir: Path) -> None:
    """Unlinking alone would leave the bytes readable through any other link to the inode."""
    key_id = kms.create_key("acme")
    key_file = _key_file(kms_dir, key_id)
    material = key_file.read_bytes()
    link = kms_dir.parent / "hardlink-to-v1.key"
    os.link(key_file, link)

    kms.destroy_key(key_id)

    assert link.read_bytes() == bytes(len(material))


def test_destroyed_key_stays_destroyed(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    kms.destroy_key(key_id)
    with pytest.raises(ShreddedError):
        kms.enable_key(key_id)
    with pytest.raises(ShreddedError):
        kms.disable_key(key_id)
    with pytest.raises(ShreddedError):
        kms.rotate_key(key_id)
    with pytest.raises(ConfigError):
        kms.create_key("acme")
    assert kms.describe_key(key_id)["state"] == "destroyed"
    assert LocalKMS(kms.path).describe_key(key_id)["state"] == "destroyed"


def test_destroy_keeps_metadata_and_timestamps(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    kms.rotate_key(key_id)
    before = kms.describe_key(key_id)

    kms.destroy_key(key_id)

    meta = kms.describe_key(key_id)
    assert meta["key_id"] == key_id
    assert meta["name"] == "acme"
    assert meta["state"] == "destroyed"
    assert meta["created_at"] == before["created_at"]
    assert meta["primary"] == 2
    destroyed_at = datetime.fromisoformat(meta["destroyed_at"])
    assert destroyed_at >= datetime.fromisoformat(meta["created_at"])
    assert destroyed_at.tzinfo is not None
    assert set(meta["versions"]) == {"1", "2"}
    for version, entry in meta["versions"].items():
        assert entry["state"] == "destroyed"
        assert entry["created_at"] == before["versions"][version]["created_at"]
        assert datetime.fromisoformat(entry["destroyed_at"]) >= datetime.fromisoformat(
            entry["created_at"]
        )
    assert key_id in kms.list_keys()


def test_destroy_all_keeps_earlier_version_destruction_time(kms: LocalKMS) -> None:
    key_id = kms.create_key("acme")
    kms.rotate_key(key_id)
    kms.destroy_key(key_id, "1")
    first = kms.describe_key(key_id)["versions"]["1"]["destroyed_at"]

    kms.destroy_key(key_id)

    assert kms.describe_key(key_id)["versions"]["1"]["destroyed_at"] == first


def test_primary_version_is_destroyed_only_with_the_whole_key(
    kms: LocalKMS, kms_dir: Path
) -> None:
    key_id = kms.create_key("acme")
    v1 = _key_file(kms_dir, key_id, "1").read_bytes()
    kms.rotate_key(key_id)

    with pytest.raises(InvalidInputError, match="rotate the key first"):
        kms.destroy_key(key_id, "2")
    assert kms.describe_key(key_id)["state"] == "enabled"

    kms.destroy_key(key_id)
    meta = kms.describe_key(key_id)
    assert meta["state"] == "destroyed"
    assert _hits(kms_dir, v1) == []
    assert all(e["state"] == "destroyed" for e in meta["versions"].values())


# -- lookup errors -------------------------------------------------------------------------


def test_unknown_key_is_not_found_with_a_helpful_message(kms: LocalKMS) -> None:
    with pytest.raises(NotFoundError) as info:
        kms.describe_key("local:nope")
    message = str(info.value)
    assert "local:nope" in message
    assert str(kms.path) in message
    assert "create_key('nope')" in message


def test_unknown_key_everywhere(kms: LocalKMS) -> None:
    missing = KeyId("local:nope")
    wrapped = WrappedKey(missing, "1", bytes(60))
    with pytest.raises(NotFoundError):
        kms.wrap(missing, KeyHandle.generate(), CTX)
    with pytest.raises(NotFoundError):
        kms.unwrap(wrapped, CTX)
    with pytest.raises(NotFoundError):
        kms.rotate_key(missing)
    with pytest.raises(NotFoundError):
        kms.disable_key(missing)
    with pytest.raises(NotFoundError):
        kms.enable_key(missing)
    with pytest.raises(NotFoundError):
        kms.destroy_key(missing)
    assert kms.list_keys() == []


# -- default key, instances, secrecy -------------------------------------------------------


def test_default_key_is_created_once(kms: LocalKMS, kms_dir: Path) -> None:
    assert kms.list_keys() == []
    key_id = kms.default_key_id()
    assert key_id == "local:default"
    material = _key_file(kms_dir, key_id).read_bytes()
    created_at = kms.describe_key(key_id)["created_at"]

    assert kms.default_key_id() == key_id
    assert LocalKMS(kms_dir).default_key_id() == key_id

    assert kms.list_keys() == ["local:default"]
    assert _key_file(kms_dir, key_id).read_bytes() == material
    assert kms.describe_key(key_id)["created_at"] == created_at
    assert kms.describe_key(key_id)["versions"].keys() == {"1"}


def test_second_instance_sees_keys(kms: LocalKMS, kms_dir: Path) -> None:
    a = kms.create_key("a")
    b = kms.create_key("b")
    scope_key = KeyHandle.generate()
    wrapped = kms.wrap(a, scope_key, CTX)
    kms.rotate_key(b)

    second = LocalKMS(kms_dir)

    assert second.list_keys() == [a, b]
    assert second.describe_key(b)["primary"] == 2
    assert _same_key(second.unwrap(wrapped, CTX), scope_key)
    assert _same_key(kms.unwrap(second.wrap(a, scope_key, CTX), CTX), scope_key)
    with pytest.raises(ConfigError):
        second.create_key("a")


def test_list_keys_ignores_stray_entries(kms: LocalKMS, kms_dir: Path) -> None:
    kms.create_key("b")
    kms.create_key("a")
    (kms_dir / "stray-file").write_bytes(b"x")
    (kms_dir / "empty-dir").mkdir()
    assert kms.list_keys() == ["local:a", "local:b"]


def test_no_key_bytes_in_repr_or_metadata(kms: LocalKMS, kms_dir: Path) -> None:
    key_id = kms.create_key("acme")
    kms.rotate_key(key_id)
    kms.wrap(key_id, KeyHandle.generate(), CTX)
    meta_json = (kms_dir / "acme" / "meta.json").read_bytes()
    json.loads(meta_json)
    described = repr(kms.describe_key(key_id)).encode()

    for version in ("1", "2"):
        material = _key_file(kms_dir, key_id, version).read_bytes()
        for needle in _needles(material):
            assert needle not in repr(kms).encode()
            assert needle not in meta_json
            assert needle not in described
    assert str(kms_dir) in repr(kms)


# -- ProviderRegistry ----------------------------------------------------------------------


class AltKMS(LocalKMS):
    """A second, real provider with its own prefix."""

    prefix: ClassVar[str] = "alt"


def test_local_kms_is_a_provider(kms: LocalKMS) -> None:
    assert isinstance(kms, KmsProvider)


def test_registry_routes_by_prefix(tmp_path: Path) -> None:
    local = LocalKMS(tmp_path / "local")
    alt = AltKMS(tmp_path / "alt")
    local_id = local.create_key("k")
    alt_id = alt.create_key("k")
    assert alt_id == "alt:k"
    registry = ProviderRegistry([local, alt])
    scope_key = KeyHandle.generate()

    assert registry.provider(local_id) is local
    assert registry.provider(alt_id) is alt
    w_local = registry.wrap(local_id, scope_key, CTX)
    w_alt = registry.wrap(alt_id, scope_key, CTX)
    assert (w_local.key_id, w_alt.key_id) == (local_id, alt_id)
    assert _same_key(alt.unwrap(w_alt, CTX), scope_key)  # really wrapped by the alt provider
    assert _same_key(registry.unwrap(w_local, CTX), scope_key)
    assert _same_key(registry.unwrap(w_alt, CTX), scope_key)
    # Each provider only knows its own directory.
    alt.disable_key(alt_id)
    with pytest.raises(KeyRevokedError):
        registry.unwrap(w_alt, CTX)
    assert _same_key(registry.unwrap(w_local, CTX), scope_key)


def test_registry_accepts_a_single_provider(kms: LocalKMS) -> None:
    registry = ProviderRegistry(kms)
    assert registry.provider("local:x") is kms
    assert registry.default_key_id() == "local:default"
    assert kms.list_keys() == ["local:default"]


def test_registry_default_is_the_first_provider(tmp_path: Path) -> None:
    registry = ProviderRegistry([AltKMS(tmp_path / "alt"), LocalKMS(tmp_path / "local")])
    assert registry.default_key_id() == "alt:default"


def test_unknown_prefix_names_configured_prefixes(tmp_path: Path) -> None:
    registry = ProviderRegistry([LocalKMS(tmp_path / "local"), AltKMS(tmp_path / "alt")])
    with pytest.raises(UnsupportedKeyIdError) as info:
        registry.wrap(KeyId("aws:alias/acme"), KeyHandle.generate(), CTX)
    message = str(info.value)
    assert "'aws'" in message
    assert "alt" in message
    assert "local" in message
    assert isinstance(info.value, KmsError)
    assert isinstance(info.value, ConfigError)
    with pytest.raises(UnsupportedKeyIdError, match="local"):
        registry.unwrap(WrappedKey(KeyId("azure:https://v/k"), "1", b"x"), CTX)


@pytest.mark.parametrize("key_id", ["acme-kek", "", ":acme", "local:", "local"])
def test_key_id_without_prefix_is_unsupported(kms: LocalKMS, key_id: str) -> None:
    registry = ProviderRegistry(kms)
    with pytest.raises(UnsupportedKeyIdError):
        registry.provider(key_id)
    with pytest.raises(UnsupportedKeyIdError):
        registry.wrap(KeyId(key_id), KeyHandle.generate(), CTX)
    assert registry.calls == 0


def test_two_providers_with_one_prefix_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'local'"):
        ProviderRegistry([LocalKMS(tmp_path / "a"), LocalKMS(tmp_path / "b")])


def test_registry_rejects_empty_and_non_providers(kms: LocalKMS) -> None:
    with pytest.raises(ConfigError):
        ProviderRegistry([])
    with pytest.raises(ConfigError):
        ProviderRegistry([kms, object()])  # type: ignore[list-item]


def test_registry_counts_calls(kms: LocalKMS) -> None:
    registry = ProviderRegistry(kms)
    key_id = kms.create_key("acme")
    assert registry.calls == 0

    wrapped = [registry.wrap(key_id, KeyHandle.generate(), CTX) for _ in range(3)]
    assert registry.calls == 3
    for w in wrapped:
        registry.unwrap(w, CTX)
    assert registry.calls == 6
    kms.wrap(key_id, KeyHandle.generate(), CTX)  # bypassing the registry is not counted
    assert registry.calls == 6
    with pytest.raises(UnsupportedKeyIdError):
        registry.wrap(KeyId("aws:alias/x"), KeyHandle.generate(), CTX)
    assert registry.calls == 6
    assert ProviderRegistry(kms).calls == 0
