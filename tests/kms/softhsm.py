"""A private SoftHSM2 token per test: its own SOFTHSM2_CONF and token directory under a tmp path.

SoftHSM2 reads ``SOFTHSM2_CONF`` in ``C_Initialize``, so after pointing the variable at a new
configuration the already loaded library is re-initialized (``C_Finalize`` + ``C_Initialize``);
that also makes it see the token ``softhsm2-util`` just created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

LIBRARY_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
PIN = "4242-user"
SO_PIN = "9999-security-officer"
SAFE_KEY = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.ENCRYPT: True,
    Attribute.DECRYPT: True,
}
"""Attributes of a KEK as keycustody creates one: on the token, never extractable."""


def find_library() -> str | None:
    """The SoftHSM2 PKCS#11 module: ``$SOFTHSM2_LIB`` or a usual install path."""
    candidates = [os.environ.get("SOFTHSM2_LIB", ""), *LIBRARY_CANDIDATES]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def missing() -> str | None:
    """Why SoftHSM2 tests cannot run here, or None."""
    if find_library() is None:
        return (
            "SoftHSM2 is not installed (no libsofthsm2.so; apt-get install softhsm2, "
            "or set SOFTHSM2_LIB)"
        )
    if shutil.which("softhsm2-util") is None:
        return "SoftHSM2 is not installed (softhsm2-util is not on PATH)"
    return None


def require() -> None:
    """Skips the test without SoftHSM2, unless CI demands it (KEYCUSTODY_REQUIRE_SOFTHSM=1)."""
    reason = missing()
    if reason is None:
        return
    if os.environ.get("KEYCUSTODY_REQUIRE_SOFTHSM") == "1":
        pytest.fail(f"{reason}; KEYCUSTODY_REQUIRE_SOFTHSM=1 demands it (.ci/softhsm-setup.sh)")
    pytest.skip(reason)


@dataclass(frozen=True)
class SoftHsm:
    """One private SoftHSM2 configuration with its token directory."""

    lib: str
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    def init_token(self, label: str, pin: str = PIN, so_pin: str = SO_PIN) -> None:
        """Initializes a fresh token in the first free slot and reloads the library."""
        util = shutil.which("softhsm2-util")
        if util is None:
            raise RuntimeError(missing())
        subprocess.run(
            [
                util,
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                so_pin,
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
        )
        self.reload()

    def reload(self) -> None:
        """Re-initializes the library so it reads this configuration and sees new tokens."""
        os.environ["SOFTHSM2_CONF"] = str(self.conf)
        library = pkcs11.lib(self.lib)
        library.reinitialize()

    def session(self, label: str, pin: str = PIN) -> pkcs11.Session:
        """A logged-in read/write session on token ``label`` (close it after use)."""
        token = pkcs11.lib(self.lib).get_token(token_label=label)
        return token.open(rw=True, user_pin=pin)

    def token_files(self) -> list[Path]:
        """Every file of every token (objects are one file each)."""
        return sorted(p for p in (self.root / "tokens").rglob("*") if p.is_file())


@contextlib.contextmanager
def softhsm(root: Path) -> Iterator[SoftHsm]:
    """A private SoftHSM2 configuration under ``root``; restores SOFTHSM2_CONF afterwards."""
    lib = find_library()
    if lib is None:
        raise RuntimeError(missing())
    tokens = root / "tokens"
    tokens.mkdir(parents=True, mode=0o700)
    hsm = SoftHsm(lib, root)
    hsm.conf.write_text(
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    before = os.environ.get("SOFTHSM2_CONF")
    try:
        yield hsm
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before


def import_key(s: pkcs11.Session, label: str, version: int, value: bytes, **extra: object) -> None:
    """An administrator-imported AES key with known bytes under keycustody's label and version
    id (test-only: real KEKs are generated on the token). ``extra`` overrides attributes by
    name, e.g. ``extractable=True``."""
    s.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.LABEL: label,
            Attribute.ID: b"v%d" % version,
            Attribute.VALUE: value,
            **SAFE_KEY,
            **{getattr(Attribute, k.upper()): v for k, v in extra.items()},
        }
    )
