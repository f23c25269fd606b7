"""Wycheproof AES-GCM vectors through the raw AES-256-GCM of ``keycustody._core``."""

from __future__ import annotations

import enum
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypedDict, cast

import pytest

from keycustody import _core
from keycustody.errors import IntegrityError, InvalidInputError

VECTORS = Path(__file__).parent / "vectors" / "wycheproof"

# Pinned in tests/vectors/README.md (from the upstream snapshot named there).
SHA256 = {
    "aes_gcm_test.json": "985e5ecc172e181eaf49e89508b9470dcf478002eb7e8559c707eb42dc97dfe7",
    "hkdf_sha256_test.json": "bb2b462a38b251cb52a2aede706d6d4b62b26864f4e80c95497507ddb07c5f1e",
    "hmac_sha256_test.json": "2d201cfa61d1bf95e6f5d07d96634b4a348b31e8eaa277ad7c8d09677b7a743f",
}

Result = Literal["valid", "invalid", "acceptable"]


class AeadTestJson(TypedDict):
    tcId: int
    comment: str
    flags: list[str]
    key: str
    iv: str
    aad: str
    msg: str
    ct: str
    tag: str
    result: Result


class AeadGroupJson(TypedDict):
    type: str
    keySize: int
    ivSize: int
    tagSize: int
    tests: list[AeadTestJson]


class AeadFileJson(TypedDict):
    algorithm: str
    schema: str
    numberOfTests: int
    testGroups: list[AeadGroupJson]


class Category(enum.Enum):
    """How a case is exercised: through the real path, or as parameters the API must reject."""

    REAL = "AES-256, 96-bit IV, 128-bit tag"
    KEY_SIZE = "key size other than 256 bits"
    IV_SIZE = "IV size other than 96 bits"
    TAG_SIZE = "tag size other than 128 bits"


@dataclass(frozen=True)
class AeadCase:
    tc_id: int
    key_size: int
    iv_size: int
    tag_size: int
    key: bytes
    iv: bytes
    aad: bytes
    msg: bytes
    ct: bytes
    tag: bytes
    result: Result
    flags: tuple[str, ...]

    @property
    def category(self) -> Category:
        # Checked in the order the API validates: key, then nonce, then tag.
        if self.key_size != 256:
            return Category.KEY_SIZE
        if self.iv_size != 96:
            return Category.IV_SIZE
        if self.tag_size != 128:
            return Category.TAG_SIZE
        return Category.REAL


def load_aes_gcm() -> tuple[AeadFileJson, list[AeadCase]]:
    raw = cast(AeadFileJson, json.loads((VECTORS / "aes_gcm_test.json").read_text("utf-8")))
    cases = [
        AeadCase(
            tc_id=t["tcId"],
            key_size=g["keySize"],
            iv_size=g["ivSize"],
            tag_size=g["tagSize"],
            key=bytes.fromhex(t["key"]),
            iv=bytes.fromhex(t["iv"]),
            aad=bytes.fromhex(t["aad"]),
            msg=bytes.fromhex(t["msg"]),
            ct=bytes.fromhex(t["ct"]),
            tag=bytes.fromhex(t["tag"]),
            result=t["result"],
            flags=tuple(t["flags"]),
        )
        for g in raw["testGroups"]
        for t in g["tests"]
    ]
    return raw, cases


AES_GCM_FILE, AES_GCM_CASES = load_aes_gcm()


def check_case(case: AeadCase) -> None:
    """Runs one AEAD case according to the harness rules in tests/vectors/README.md."""
    sealed = case.ct + case.tag
    category = case.category
    if category is Category.REAL:
        if case.result == "valid":
            assert _core.aes256gcm_seal(case.key, case.iv, case.aad, case.msg) == sealed
            assert _core.aes256gcm_open(case.key, case.iv, case.aad, sealed) == case.msg
        else:
            # "acceptable" does not occur in this file; treating it as invalid is the strict way.
            with pytest.raises(IntegrityError):
                _core.aes256gcm_open(case.key, case.iv, case.aad, sealed)
    elif category is Category.TAG_SIZE:
        # Only 128-bit tags are produced; a shorter tag must never authenticate.
        full = _core.aes256gcm_seal(case.key, case.iv, case.aad, case.msg)
        if case.result == "valid":
            assert full[: len(case.ct)] == case.ct
            assert full[len(case.ct) :].startswith(case.tag)
        with pytest.raises((IntegrityError, InvalidInputError)):
            _core.aes256gcm_open(case.key, case.iv, case.aad, sealed)
    else:
        with pytest.raises(InvalidInputError):
            _core.aes256gcm_seal(case.key, case.iv, case.aad, case.msg)
        with pytest.raises(InvalidInputError):
            _core.aes256gcm_open(case.key, case.iv, case.aad, sealed)


@pytest.mark.parametrize("case", [pytest.param(c, id=f"tc{c.tc_id}") for c in AES_GCM_CASES])
def test_aes_gcm(case: AeadCase) -> None:
    check_case(case)


def test_aes_gcm_case_counts() -> None:
    """Every case of the file is run and lands in exactly one category; none is skipped."""
    assert AES_GCM_FILE["algorithm"] == "AES-GCM"
    assert all(g["type"] == "AeadTest" for g in AES_GCM_FILE["testGroups"])
    assert len(AES_GCM_CASES) == AES_GCM_FILE["numberOfTests"] == 316
    assert len({c.tc_id for c in AES_GCM_CASES}) == 316
    by_category = Counter(c.category for c in AES_GCM_CASES)
    assert by_category == {
        Category.REAL: 66,
        Category.KEY_SIZE: 211,  # AES-128 and AES-192 groups
        Category.IV_SIZE: 39,  # AES-256 with IVs of 0..2056 bits other than 96
    }
    real = Counter(c.result for c in AES_GCM_CASES if c.category is Category.REAL)
    assert real == {"valid": 39, "invalid": 27}
    rejected_iv = Counter(c.result for c in AES_GCM_CASES if c.category is Category.IV_SIZE)
    assert rejected_iv == {"valid": 37, "invalid": 2}
    assert not any(c.result == "acceptable" for c in AES_GCM_CASES)


def test_truncated_tags_never_authenticate() -> None:
    """The TAG_SIZE branch (no such group in the file) on tags cut from the real-path cases."""
    real_valid = [c for c in AES_GCM_CASES if c.category is Category.REAL and c.result == "valid"]
    assert len(real_valid) == 39
    for case in real_valid:
        for tag_bytes in (0, 4, 8, 12, 15):
            short = replace(case, tag_size=8 * tag_bytes, tag=case.tag[:tag_bytes])
            assert short.category is Category.TAG_SIZE
            check_case(short)


@pytest.mark.parametrize("name", sorted(SHA256))
def test_vector_files_are_pinned(name: str) -> None:
    """The vector files in the repository are byte-identical to the upstream snapshot."""
    assert hashlib.sha256((VECTORS / name).read_bytes()).hexdigest() == SHA256[name]


def test_licence_is_shipped() -> None:
    assert "Apache License" in (VECTORS / "LICENSE").read_text("utf-8")
