"""LocalKMS: the embedded default KMS, KEKs as files in a directory of their own.

Layout (directory 0700, files 0600, every write atomic: temp file, fsync, rename, fsync dir)::

    KEK_DIR/NAME/meta.json   state (enabled/disabled/destroyed), primary version, version states
    KEK_DIR/NAME/v1.key      32 random bytes, one file per version

Each version lives in its own file so that destroying it overwrites exactly those bytes with
zeros, fsyncs and unlinks them. Keep KEK_DIR outside the database's directory and its backups:
crypto-shredding relies on the KEK being somewhere the database never was.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from keycustody._core import KeyHandle
from keycustody.durable import fsync_dir
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    InvalidInputError,
    KeyRevokedError,
    KmsError,
    NotFoundError,
    ShreddedError,
)
from keycustody.types import EncryptionContext, KeyId, WrappedKey

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KEY_LEN = 32
_DEFAULT_NAME = "default"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def _shred_file(path: Path) -> None:
    """Overwrites a key file with zeros, fsyncs it, then unlinks it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        os.pwrite(fd, bytes(size), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    fsync_dir(path.parent)


class LocalKMS:
    """KEKs in a local directory: ids ``local:NAME``, versions, enable/disable/destroy.

    It behaves like a cloud KMS on a laptop: the KEK bytes never leave this object except
    into Rust key handles, and wrapping binds each scope key to its encryption context.

    Args:
        path: Directory holding the keys; created with mode 0700 if missing.
    """

    prefix: ClassVar[str] = "local"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the LocalKMS directory {self.path}: {exc}") from exc
        if not self.path.is_dir():
            raise ConfigError(f"LocalKMS path {self.path} is not a directory")

    def __repr__(self) -> str:
        return f"LocalKMS({str(self.path)!r})"

    # -- key management -------------------------------------------------------------------

    def _name(self, key_id: str) -> str:
        name = key_id.removeprefix(f"{self.prefix}:")
        if not _NAME.fullmatch(name):
            raise InvalidInputError(
                f"invalid LocalKMS key name {name!r}: use 1-128 of A-Z a-z 0-9 . _ - "
                "(starting with a letter or digit)"
            )
        return name

    def _key_dir(self, key_id: str) -> Path:
        return self.path / self._name(key_id)

    def _meta(self, key_id: str) -> dict[str, Any]:
        try:
            raw = (self._key_dir(key_id) / "meta.json").read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"KEK {key_id!r} does not exist in {self.path}; "
                f"create it with LocalKMS.create_key({self._name(key_id)!r})"
            ) from None
        meta: dict[str, Any] = json.loads(raw)
        return meta

    def _save_meta(self, key_id: str, meta: dict[str, Any]) -> None:
        _write_atomic(self._key_dir(key_id) / "meta.json", json.dumps(meta, indent=1).encode())

    def _write_version(self, key_dir: Path, version: int) -> None:
        material = bytearray(secrets.token_bytes(_KEY_LEN))
        try:
            _write_atomic(key_dir / f"v{version}.key", bytes(material))
        finally:
            material[:] = bytes(len(material))

    def create_key(self, name: str, *, exist_ok: bool = False) -> KeyId:
        """Creates KEK ``name`` (version 1) and returns its id ``local:NAME``.

        Raises:
            ConfigError: the key exists and ``exist_ok`` is false.
        """
        key_id = KeyId(f"{self.prefix}:{self._name(name)}")
        key_dir = self._key_dir(key_id)
        try:
            key_dir.mkdir(mode=0o700)
        except FileExistsError:
            if exist_ok and (key_dir / "meta.json").exists():
                return key_id
            raise ConfigError(f"KEK {key_id!r} already exists in {self.path}") from None
        self._write_version(key_dir, 1)
        now = _now()
        self._save_meta(
            key_id,
            {
                "name": name,
                "state": "enabled",
                "primary": 1,
                "created_at": now,
                "versions": {"1": {"state": "enabled", "created_at": now}},
            },
        )
        fsync_dir(self.path)
        return key_id

    @contextlib.contextmanager
    def _locked(self, key_id: str) -> Iterator[dict[str, Any]]:
        """Holds the key directory's lock (across processes) around a metadata update."""
        self._meta(key_id)  # NotFoundError for a missing key, before touching anything
        fd = os.open(self._key_dir(key_id), os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._meta(key_id)
        finally:
            os.close(fd)

    def rotate_key(self, key_id: str) -> str:
        """Adds a new version and makes it primary; older versions still unwrap.

        Returns:
            The new version, as a string.
        """
        with self._locked(key_id) as meta:
            self._check_state(key_id, meta)
            version = max(int(v) for v in meta["versions"]) + 1
            self._write_version(self._key_dir(key_id), version)
            meta["versions"][str(version)] = {"state": "enabled", "created_at": _now()}
            meta["primary"] = version
            self._save_meta(key_id, meta)
        return str(version)

    def disable_key(self, key_id: str) -> None:
        """Disables the KEK: every wrap and unwrap fails with KeyRevokedError until enabled."""
        self._set_state(key_id, "disabled")

    def enable_key(self, key_id: str) -> None:
        """Re-enables a disabled KEK."""
        self._set_state(key_id, "enabled")

    def _set_state(self, key_id: str, state: str) -> None:
        with self._locked(key_id) as meta:
            if meta["state"] == "destroyed":
                raise ShreddedError(f"KEK {key_id!r} was destroyed; it cannot be {state}")
            meta["state"] = state
            meta[f"{state}_at"] = _now()
            self._save_meta(key_id, meta)

    def destroy_key(self, key_id: str, version: str | None = None) -> None:
        """Destroys one version, or every version of the KEK: overwrite, fsync, unlink.

        Destroyed versions can never unwrap again; the metadata stays as evidence, with the
        time each version was first destroyed. The primary version goes only with the whole
        key (rotate first to retire it alone).

        Raises:
            InvalidInputError: ``version`` is the primary version of a live key.
            NotFoundError: no such key or version.
        """
        with self._locked(key_id) as meta:
            if version is not None:
                if version not in meta["versions"]:
                    raise NotFoundError(f"KEK {key_id!r} has no version {version}")
                if str(meta["primary"]) == version and meta["state"] != "destroyed":
                    raise InvalidInputError(
                        f"version {version} is the primary version of {key_id!r}: rotate the "
                        "key first, or destroy the whole key"
                    )
            versions = [version] if version is not None else list(meta["versions"])
            key_dir = self._key_dir(key_id)
            for v in versions:
                entry = meta["versions"][v]
                _shred_file(key_dir / f"v{v}.key")
                if entry["state"] != "destroyed":
                    entry.update(state="destroyed", destroyed_at=_now())
            if version is None and meta["state"] != "destroyed":
                meta["state"] = "destroyed"
                meta["destroyed_at"] = _now()
            self._save_meta(key_id, meta)

    def describe_key(self, key_id: str) -> dict[str, Any]:
        """State, primary version and version states of a KEK (no key material)."""
        meta = self._meta(key_id)
        return {"key_id": key_id, **meta}

    def list_keys(self) -> list[KeyId]:
        """Ids of every KEK in the directory."""
        return sorted(
            KeyId(f"{self.prefix}:{p.name}")
            for p in self.path.iterdir()
            if (p / "meta.json").exists()
        )

    def default_key_id(self) -> KeyId:
        """``local:default``, created on first use."""
        return self.create_key(_DEFAULT_NAME, exist_ok=True)

    # -- wrap / unwrap ------------------------------------------------------------------

    @staticmethod
    def _check_state(key_id: str, meta: dict[str, Any]) -> None:
        if meta["state"] == "disabled":
            raise KeyRevokedError(f"KEK {key_id!r} is disabled in the KMS")
        if meta["state"] == "destroyed":
            raise ShreddedError(f"KEK {key_id!r} was destroyed")

    def _load(self, key_id: str, version: str, meta: dict[str, Any]) -> KeyHandle:
        entry = meta["versions"].get(version)
        if entry is None:
            raise IntegrityError(f"KEK {key_id!r} has no version {version}")
        if entry["state"] == "destroyed":
            raise ShreddedError(f"version {version} of KEK {key_id!r} was destroyed")
        path = self._key_dir(key_id) / f"v{version}.key"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise KmsError(f"key file of {key_id!r} version {version} is missing") from None
        material = bytearray(_KEY_LEN + 1)
        try:
            with os.fdopen(fd, "rb") as f:
                n = f.readinto(material)
            if n != _KEY_LEN:
                raise KmsError(f"key file of {key_id!r} version {version} is corrupt")
            return KeyHandle.from_secret(memoryview(material)[:_KEY_LEN])
        finally:
            material[:] = bytes(len(material))

    def _aad(self, key_id: str, version: str, context: EncryptionContext) -> bytes:
        return b"keycustody/local-kms/v1|%s|%s|%s" % (
            key_id.encode(),
            version.encode(),
            context.to_aad(),
        )

    def wrap(self, key_id: KeyId, key: KeyHandle, context: EncryptionContext) -> WrappedKey:
        """Wraps ``key`` under the primary version of ``key_id`` (AES-256-GCM)."""
        meta = self._meta(key_id)
        self._check_state(key_id, meta)
        version = str(meta["primary"])
        kek = self._load(key_id, version, meta)
        return WrappedKey(key_id, version, kek.wrap(key, self._aad(key_id, version, context)))

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> KeyHandle:
        """Unwraps with the KEK version that wrapped it."""
        meta = self._meta(wrapped.key_id)
        self._check_state(wrapped.key_id, meta)
        kek = self._load(wrapped.key_id, wrapped.key_version, meta)
        aad = self._aad(wrapped.key_id, wrapped.key_version, context)
        return kek.unwrap(wrapped.ciphertext, aad)
