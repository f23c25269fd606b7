"""Pkcs11KMS: KEKs held in an HSM (or SoftHSM2) through PKCS#11; ids ``pkcs11:LABEL``.

Every KEK version is an AES-256 secret key object generated on the token (``C_GenerateKey``
with ``CKM_AES_KEY_GEN``) as ``CKA_TOKEN``, ``CKA_PRIVATE``, ``CKA_SENSITIVE=true``,
``CKA_EXTRACTABLE=false``, allowed only ``CKA_ENCRYPT``/``CKA_DECRYPT``; its bytes never leave
the token. Token layout, per KEK label::

    CKO_SECRET_KEY  CKA_LABEL=LABEL  CKA_ID=b"v1"      version 1 (CKA_ID is ASCII "v<N>")
    CKO_SECRET_KEY  CKA_LABEL=LABEL  CKA_ID=b"v2"      version 2: the primary (highest live)
    CKO_DATA        CKA_LABEL=LABEL  CKA_APPLICATION="keycustody-pkcs11-kms"
                    CKA_VALUE={"event": "created"|"rotated"|"destroyed", "version", "at"}

Versions share the label and differ by ``CKA_ID`` (not ``LABEL#vN`` labels): one
``C_FindObjects`` on the label finds every version, and HSM tools list them as one key. The
``CKO_DATA`` objects are an append-only event log on the token (SoftHSM2 makes ``CKA_VALUE`` of
data objects read-only, so nothing is updated in place). They tell a destroyed version (a
tombstone, which :meth:`unwrap` reports as :class:`ShreddedError`) from a key that never
existed on this token (:class:`NotFoundError`), keep version numbers from being reused, and
date each version. No key material is in them.

Wrapping (measured on SoftHSM 2.6.1, which offers ``CKM_AES_GCM`` through ``C_Encrypt`` but
``CKM_AES_KEY_WRAP_PAD`` only through ``C_WrapKey``): the scope key is encrypted on the token
with ``CKM_AES_GCM`` (96-bit random IV from the OS CSPRNG, 128-bit tag), one call each way.
GCM binds the associated data natively and authenticates; RFC 5649 key wrap would need the
scope key imported as an extractable token object and read back through ``CKA_VALUE``, plus a
hand-made ``SHA-256(context)`` prefix for binding. Stored ciphertext::

    0x01 (format: AES-256-GCM on the token) || IV (12) || ciphertext (32 or 64) || tag (16)
    AAD = b"keycustody/pkcs11-kms/v1|" + key id + b"|" + version + b"|" + context.to_aad()

A random 96-bit IV allows 2^32 wraps per KEK version (NIST SP 800-38D §8.3); keycustody makes
one wrap per scope key version, far below that. HSMs whose FIPS mode insists on generating the
GCM IV themselves are not supported yet.

Disable: PKCS#11 has no standard "disabled" state. :meth:`disable_key` clears ``CKA_ENCRYPT`` and
``CKA_DECRYPT`` on every version (``C_SetAttributeValue``; SoftHSM2 allows it on modifiable
keys), so the token itself refuses to use the key until :meth:`enable_key`. Whoever holds the
user PIN can flip it back: it is an operational switch. The HSM administrator's own levers
are changing the user PIN (every later call fails with :class:`KeyRevokedError`, because each
operation logs in afresh) and destroying the key objects.

Sessions: each operation opens a session, logs in, works and closes it (about 4 ms on
SoftHSM2); KMS calls are O(scope key versions) and cached above this layer. Calls into one
PKCS#11 library are serialized by a per-library lock (python-pkcs11 initializes the library
without ``CKF_OS_LOCKING_OK``), and a forked child re-initializes the library before use.
Rotations of one KEK from several processes at once may create two objects for one version;
that is harmless: unwrap tries each object of the version (GCM authenticates the right one)
and destroy removes them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from keycustody._core import KeyHandle
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    InvalidInputError,
    KeyCustodyError,
    KeyRevokedError,
    KmsError,
    KmsUnavailableError,
    NotFoundError,
    ShreddedError,
)
from keycustody.types import EncryptionContext, KeyId, WrappedKey

if TYPE_CHECKING:
    from pkcs11 import Object, Session, Token

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
_VERSION_ID = re.compile(rb"v([1-9][0-9]{0,8})")
_APPLICATION = "keycustody-pkcs11-kms"
_EVENT_FORMAT = "keycustody-pkcs11-kms-event/v1"
_DEFAULT_LABEL = "keycustody-default"
_FORMAT_GCM = 1
_IV_LEN = 12
_TAG_LEN = 16
_KEY_BITS = 256
_AAD_PREFIX = b"keycustody/pkcs11-kms/v1|"
_INSTALL_HINT = "pip install 'keycustody[pkcs11]'"

# CKR_ codes python-pkcs11 does not map to a class of its own.
_CKR_KEY_FUNCTION_NOT_PERMITTED = "0x68"
_CKR_AEAD_DECRYPT_FAILED = "0x35"
_CKR_ACTION_PROHIBITED = "0x1b"

_registry_lock = threading.Lock()
_library_locks: dict[str, threading.RLock] = {}
_library_pids: dict[str, int] = {}


def _after_fork_in_child() -> None:
    """A lock held by another thread at fork time would never be released in the child."""
    global _registry_lock
    _registry_lock = threading.Lock()
    for path in _library_locks:
        _library_locks[path] = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _require_pkcs11() -> None:
    try:
        import pkcs11  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"Pkcs11KMS needs the python-pkcs11 package: {_INSTALL_HINT}") from exc


def _library_lock(path: str) -> threading.RLock:
    with _registry_lock:
        lock = _library_locks.get(path)
        if lock is None:
            lock = _library_locks[path] = threading.RLock()
        return lock


@dataclass
class _Version:
    """One key object on the token (normally one per version)."""

    number: int
    obj: Object
    attrs: dict[str, Any]

    @property
    def enabled(self) -> bool:
        return bool(self.attrs["encrypt"]) and bool(self.attrs["decrypt"])

    @property
    def safe(self) -> bool:
        """An AES-256 key that is sensitive and not extractable."""
        return (
            self.attrs["aes"]
            and self.attrs["value_len"] == _KEY_BITS // 8
            and self.attrs["sensitive"] is True
            and self.attrs["extractable"] is False
        )


@dataclass
class _KeyState:
    """What the token holds for one KEK label: key objects and the event log."""

    label: str
    objects: dict[int, list[_Version]] = field(default_factory=dict)
    created: dict[int, str] = field(default_factory=dict)
    destroyed: dict[int, str] = field(default_factory=dict)
    destroyed_at: str | None = None
    foreign: int = 0
    """Objects with this label whose CKA_ID is not a keycustody version."""

    @property
    def exists(self) -> bool:
        return bool(self.objects or self.created or self.destroyed or self.destroyed_at)

    @property
    def known(self) -> set[int]:
        return set(self.objects) | set(self.created) | set(self.destroyed)

    def live(self) -> list[int]:
        if self.destroyed_at is not None:
            return []
        return sorted(v for v in self.objects if v not in self.destroyed)

    @property
    def primary(self) -> int | None:
        live = self.live()
        return live[-1] if live else None

    @property
    def disabled(self) -> bool:
        return any(not o.enabled for v in self.live() for o in self.objects[v])


class Pkcs11KMS:
    """KEKs on a PKCS#11 token (an HSM, or SoftHSM2): ids ``pkcs11:LABEL``, versions,
    enable/disable/destroy, like :class:`~keycustody.LocalKMS`.

    Key material: the scope key is exported from its Rust handle into a ``bytearray`` only
    for the ``C_Encrypt`` call and wiped right after; an unwrapped key goes into a
    :class:`KeyHandle` at once. Copies that python-pkcs11 and the PKCS#11 library make
    internally (call buffers, the ``bytes`` that ``C_Decrypt`` returns) are out of reach.

    Args:
        lib: Path of the PKCS#11 module, e.g. ``/usr/lib/softhsm/libsofthsm2.so``.
        token_label: Label of the token that holds the KEKs.
        pin: The token's user PIN.
        default_label: Label of the KEK for tenants created without ``kek=`` (created on
            first use); default ``keycustody-default``.

    Raises:
        ConfigError: python-pkcs11 is missing, the library cannot be loaded, the token is not
            there, it refuses the PIN, or it lacks ``CKM_AES_GCM``/``CKM_AES_KEY_GEN``.
    """

    prefix: ClassVar[str] = "pkcs11"

    def __init__(
        self, lib: str, token_label: str, pin: str, *, default_label: str | None = None
    ) -> None:
        _require_pkcs11()
        if not isinstance(lib, str) or not lib:
            raise ConfigError("Pkcs11KMS needs the path of a PKCS#11 library (lib=)")
        if not isinstance(token_label, str) or not token_label:
            raise ConfigError("Pkcs11KMS needs the label of a token (token_label=)")
        if not isinstance(pin, str) or not pin:
            raise ConfigError("Pkcs11KMS needs the token's user PIN (pin=)")
        self.lib_path = lib
        self.token_label = token_label
        self._pin = pin
        self.default_label = self._label(default_label or _DEFAULT_LABEL)
        self._pin_accepted = False
        if not os.path.exists(lib):
            raise ConfigError(f"PKCS#11 library {lib!r} does not exist")
        with self._session("open the token") as session:
            self._check_mechanisms(session.token)
        self._pin_accepted = True

    def __repr__(self) -> str:
        return f"Pkcs11KMS(lib={self.lib_path!r}, token_label={self.token_label!r})"

    # -- the PKCS#11 edge ------------------------------------------------------------------

    def _library(self) -> Any:
        import pkcs11
        from pkcs11.exceptions import PKCS11Error

        path = self.lib_path
        with _registry_lock:
            try:
                library = pkcs11.lib(path)
            except PKCS11Error as exc:
                raise ConfigError(f"cannot load the PKCS#11 library {path!r}: {exc}") from exc
            pid = os.getpid()
            if _library_pids.setdefault(path, pid) != pid:
                # PKCS#11 §5.4: a forked child must initialize the library anew.
                library.reinitialize()
                _library_pids[path] = pid
        return library

    def _token(self) -> Token:
        from pkcs11.exceptions import MultipleTokensReturned, NoSuchToken

        library = self._library()
        try:
            token: Token = library.get_token(token_label=self.token_label)
        except NoSuchToken:
            labels = sorted(t.label for t in library.get_tokens() if t.label)
            message = (
                f"no PKCS#11 token labelled {self.token_label!r} in {self.lib_path!r} "
                f"(tokens present: {', '.join(map(repr, labels)) or 'none'})"
            )
            if self._pin_accepted:
                raise KmsUnavailableError(message) from None
            raise ConfigError(message) from None
        except MultipleTokensReturned:
            raise ConfigError(
                f"several PKCS#11 tokens are labelled {self.token_label!r}; give each a "
                "unique label"
            ) from None
        return token

    @contextlib.contextmanager
    def _session(self, action: str) -> Iterator[Session]:
        """A logged-in read/write session for one operation; every PKCS#11 error is
        translated to a keycustody error here."""
        from pkcs11.exceptions import PKCS11Error, UserAlreadyLoggedIn

        with _library_lock(self.lib_path):
            try:
                token = self._token()
                try:
                    # When C_Login fails, python-pkcs11 (0.10) leaves the session it opened
                    # unclosed; that costs a session handle per refused call, nothing more.
                    session = token.open(rw=True, user_pin=self._pin)
                except UserAlreadyLoggedIn:
                    # The application holds another logged-in session on this token: the
                    # login state is shared, so a plain session is already authorized.
                    session = token.open(rw=True)
                with session:
                    yield session
            except KeyCustodyError:
                raise
            except PKCS11Error as exc:
                raise self._translate(exc, action) from exc

    def _translate(self, exc: Exception, action: str) -> KeyCustodyError:
        from pkcs11 import exceptions as e

        token = f"PKCS#11 token {self.token_label!r}"
        if isinstance(exc, e.PinIncorrect | e.PinInvalid | e.PinLenRange):
            if self._pin_accepted:
                return KeyRevokedError(
                    f"{token} no longer accepts the PIN keycustody was given (changed by its "
                    "administrator?); every KEK on it is unusable until the PIN is updated"
                )
            return ConfigError(f"{token} refused the PIN")
        if isinstance(exc, e.PinLocked | e.PinExpired | e.UserPinNotInitialized):
            problem = {
                e.PinLocked: "the user PIN is locked",
                e.PinExpired: "the user PIN has expired",
                e.UserPinNotInitialized: "the user PIN is not initialized",
            }[type(exc)]
            if self._pin_accepted:
                return KeyRevokedError(f"{token}: {problem}")
            return ConfigError(f"{token}: {problem}")
        if isinstance(
            exc,
            e.TokenNotPresent
            | e.TokenNotRecognised
            | e.DeviceRemoved
            | e.DeviceError
            | e.DeviceMemory
            | e.HostMemory
            | e.SessionCount
            | e.SessionClosed
            | e.SessionHandleInvalid,
        ):
            return KmsUnavailableError(f"{token} is unavailable ({action}): {type(exc).__name__}")
        if str(exc).endswith(_CKR_KEY_FUNCTION_NOT_PERMITTED):
            return KeyRevokedError(f"{token} refused to use the key ({action}): it is disabled")
        detail = str(exc) or type(exc).__name__
        return KmsError(f"{token}: cannot {action}: {detail}")

    @staticmethod
    def _check_mechanisms(token: Token) -> None:
        from pkcs11 import Mechanism

        # Mechanisms only: SoftHSM 2.6 reports garbage flags in CKM_AES_GCM's mechanism info.
        mechanisms = token.slot.get_mechanisms()
        missing = [
            m.name for m in (Mechanism.AES_KEY_GEN, Mechanism.AES_GCM) if m not in mechanisms
        ]
        if missing:
            raise ConfigError(
                f"PKCS#11 token {token.label!r} lacks {', '.join('CKM_' + m for m in missing)}, "
                "which Pkcs11KMS needs"
            )

    # -- reading the token -------------------------------------------------------------------

    def _label(self, key_id: str) -> str:
        label = key_id.removeprefix(f"{self.prefix}:")
        if not _LABEL.fullmatch(label):
            raise InvalidInputError(
                f"invalid PKCS#11 key label {label!r}: use 1-128 of A-Z a-z 0-9 . _ - "
                "(starting with a letter or digit)"
            )
        return label

    def _key_id(self, label: str) -> KeyId:
        return KeyId(f"{self.prefix}:{label}")

    def _state(self, session: Session, label: str) -> _KeyState:
        from pkcs11 import Attribute, KeyType, ObjectClass

        state = _KeyState(label)
        keys = list(
            session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})
        )
        for obj in keys:
            raw = obj.get_attributes(
                [
                    Attribute.ID,
                    Attribute.KEY_TYPE,
                    Attribute.VALUE_LEN,
                    Attribute.SENSITIVE,
                    Attribute.EXTRACTABLE,
                    Attribute.ENCRYPT,
                    Attribute.DECRYPT,
                    Attribute.LOCAL,
                    Attribute.ALWAYS_SENSITIVE,
                    Attribute.NEVER_EXTRACTABLE,
                ]
            )
            match = _VERSION_ID.fullmatch(bytes(raw.get(Attribute.ID) or b""))
            if match is None:
                state.foreign += 1
                continue
            number = int(match.group(1))
            attrs = {
                "aes": raw.get(Attribute.KEY_TYPE) == KeyType.AES,
                "value_len": raw.get(Attribute.VALUE_LEN),
                "sensitive": raw.get(Attribute.SENSITIVE),
                "extractable": raw.get(Attribute.EXTRACTABLE),
                "encrypt": raw.get(Attribute.ENCRYPT),
                "decrypt": raw.get(Attribute.DECRYPT),
                "generated_on_token": raw.get(Attribute.LOCAL),
                "always_sensitive": raw.get(Attribute.ALWAYS_SENSITIVE),
                "never_extractable": raw.get(Attribute.NEVER_EXTRACTABLE),
            }
            state.objects.setdefault(number, []).append(_Version(number, obj, attrs))
        events = list(
            session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.LABEL: label,
                    Attribute.APPLICATION: _APPLICATION,
                }
            )
        )
        for obj in events:
            try:
                event = json.loads(bytes(obj[Attribute.VALUE]))
                kind, version, at = event["event"], event["version"], str(event["at"])
            except (ValueError, KeyError, TypeError):
                continue  # not ours, or damaged: the key objects still tell the versions
            if kind in ("created", "rotated") and isinstance(version, int):
                state.created.setdefault(version, at)
            elif kind == "destroyed" and isinstance(version, int):
                state.destroyed[version] = min(at, state.destroyed.get(version, at))
            elif kind == "destroyed" and version is None:
                state.destroyed_at = min(at, state.destroyed_at or at)
        return state

    def _existing(self, session: Session, key_id: str) -> _KeyState:
        label = self._label(key_id)
        state = self._state(session, label)
        if not state.exists:
            hint = (
                f"; {state.foreign} object(s) with this label have no keycustody version id "
                "(CKA_ID 'v<N>')"
                if state.foreign
                else ""
            )
            raise NotFoundError(
                f"KEK {self._key_id(label)!r} does not exist on PKCS#11 token "
                f"{self.token_label!r}; create it with Pkcs11KMS.create_key({label!r}){hint}"
            )
        return state

    def _usable(self, key_id: str, state: _KeyState) -> None:
        """Raises unless the KEK may be used at all (destroyed, disabled)."""
        if state.destroyed_at is not None:
            raise ShreddedError(f"KEK {key_id!r} was destroyed on the token")
        if state.disabled:
            raise KeyRevokedError(
                f"KEK {key_id!r} is disabled on the token (CKA_ENCRYPT/CKA_DECRYPT cleared)"
            )

    def _check_safe(self, key_id: str, version: _Version) -> None:
        if not version.safe:
            raise ConfigError(
                f"version {version.number} of KEK {key_id!r} is not an AES-256 key with "
                "CKA_SENSITIVE=true and CKA_EXTRACTABLE=false; keycustody will not use it"
            )

    # -- writing the token -------------------------------------------------------------------

    def _generate(self, session: Session, label: str, number: int) -> None:
        from pkcs11 import Attribute, KeyType, MechanismFlag

        session.generate_key(
            KeyType.AES,
            _KEY_BITS,
            label=label,
            id=b"v%d" % number,
            store=True,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.MODIFIABLE: True,  # for disable/enable (CKA_ENCRYPT/CKA_DECRYPT)
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.SIGN: False,
                Attribute.VERIFY: False,
                Attribute.DERIVE: False,
            },
        )

    def _log(self, session: Session, label: str, event: str, version: int | None) -> str:
        from pkcs11 import Attribute, ObjectClass

        at = _now()
        body = {"format": _EVENT_FORMAT, "event": event, "version": version, "at": at}
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.MODIFIABLE: False,
                Attribute.LABEL: label,
                Attribute.APPLICATION: _APPLICATION,
                Attribute.VALUE: json.dumps(body, sort_keys=True).encode(),
            }
        )
        return at

    # -- key management ----------------------------------------------------------------------

    def create_key(self, label: str, *, exist_ok: bool = False) -> KeyId:
        """Generates KEK ``label`` (version 1) on the token and returns ``pkcs11:LABEL``.

        Raises:
            ConfigError: the key exists (or existed: labels of destroyed KEKs are not reused)
                and ``exist_ok`` is false.
        """
        label = self._label(label)
        key_id = self._key_id(label)
        with self._session("create a key") as session:
            state = self._state(session, label)
            if state.exists:
                if exist_ok:
                    return key_id
                if state.destroyed_at is not None:
                    raise ConfigError(
                        f"KEK {key_id!r} was destroyed on the token; its label is not reused"
                    )
                raise ConfigError(f"KEK {key_id!r} already exists on the token")
            self._generate(session, label, 1)
            self._log(session, label, "created", 1)
        return key_id

    def rotate_key(self, key_id: str) -> str:
        """Generates a new version on the token and makes it primary; older versions still
        unwrap. Version numbers are never reused, not even those of destroyed versions.

        Returns:
            The new version, as a string.
        """
        with self._session("rotate a key") as session:
            state = self._existing(session, key_id)
            self._usable(key_id, state)
            number = max(state.known, default=0) + 1
            self._generate(session, state.label, number)
            self._log(session, state.label, "rotated", number)
        return str(number)

    def disable_key(self, key_id: str) -> None:
        """Disables the KEK: clears ``CKA_ENCRYPT``/``CKA_DECRYPT`` on every version, so the
        token refuses to use it (KeyRevokedError) until :meth:`enable_key`.

        Raises:
            KmsError: the token does not allow changing those attributes.
        """
        self._set_enabled(key_id, False)

    def enable_key(self, key_id: str) -> None:
        """Re-enables a disabled KEK."""
        self._set_enabled(key_id, True)

    def _set_enabled(self, key_id: str, enabled: bool) -> None:
        from pkcs11 import Attribute
        from pkcs11 import exceptions as e

        verb = "enable" if enabled else "disable"
        with self._session(f"{verb} a key") as session:
            state = self._existing(session, key_id)
            if state.destroyed_at is not None:
                raise ShreddedError(f"KEK {key_id!r} was destroyed; it cannot be {verb}d")
            for number in state.live():
                for version in state.objects[number]:
                    try:
                        version.obj[Attribute.ENCRYPT] = enabled
                        version.obj[Attribute.DECRYPT] = enabled
                    except e.PKCS11Error as exc:
                        refused = isinstance(
                            exc, e.AttributeReadOnly | e.AttributeValueInvalid
                        ) or str(exc).endswith(_CKR_ACTION_PROHIBITED)
                        if not refused:
                            raise
                        raise KmsError(
                            f"PKCS#11 token {self.token_label!r} does not let keycustody change "
                            f"CKA_ENCRYPT/CKA_DECRYPT of {key_id!r} version {number} (is "
                            f"CKA_MODIFIABLE false?), so it cannot be {verb}d here. PKCS#11 "
                            "has no standard disabled state: the HSM administrator can revoke "
                            "access by changing the user PIN, or destroy the key"
                        ) from exc

    def destroy_key(self, key_id: str, version: str | None = None) -> None:
        """Destroys one version, or every version of the KEK, with ``C_DestroyObject``.

        A tombstone (a ``CKO_DATA`` event object) is written first, so an interrupted destroy
        already refuses the version, and a rerun removes what is left. Destroyed versions can
        never unwrap again; the events stay on the token as evidence. The primary version goes
        only with the whole key (rotate first to retire it alone).

        Raises:
            InvalidInputError: ``version`` is the primary version of a live key.
            NotFoundError: no such key or version.
        """
        with self._session("destroy a key") as session:
            state = self._existing(session, key_id)
            if version is None:
                numbers = sorted(state.objects)
                if state.destroyed_at is None:
                    self._log(session, state.label, "destroyed", None)
            else:
                number = int(version) if _VERSION.fullmatch(version) else None
                if number is None or number not in state.known:
                    raise NotFoundError(f"KEK {key_id!r} has no version {version}")
                if number == state.primary:
                    raise InvalidInputError(
                        f"version {version} is the primary version of {key_id!r}: rotate the "
                        "key first, or destroy the whole key"
                    )
                numbers = [number] if number in state.objects else []
                if number not in state.destroyed and state.destroyed_at is None:
                    self._log(session, state.label, "destroyed", number)
            for number in numbers:
                for obj in state.objects[number]:
                    obj.obj.destroy()

    def describe_key(self, key_id: str) -> dict[str, Any]:
        """State, primary version and per-version facts of a KEK as the token shows them (no
        key material): ``state`` enabled/disabled/destroyed, ``primary``, and per version its
        state, times, how many objects it still has on the token, and its security attributes."""
        with self._session("describe a key") as session:
            state = self._existing(session, key_id)
        versions: dict[str, dict[str, Any]] = {}
        for number in sorted(state.known):
            objects = state.objects.get(number, [])
            destroyed_at = state.destroyed.get(number) or state.destroyed_at
            if destroyed_at is not None or not objects:
                version_state = "destroyed"
            else:
                version_state = "enabled" if all(o.enabled for o in objects) else "disabled"
            entry: dict[str, Any] = {
                "state": version_state,
                "created_at": state.created.get(number),
                "destroyed_at": destroyed_at,
                "objects_on_token": len(objects),
            }
            if objects:
                attrs = objects[0].attrs
                entry.update(
                    sensitive=attrs["sensitive"],
                    extractable=attrs["extractable"],
                    always_sensitive=attrs["always_sensitive"],
                    never_extractable=attrs["never_extractable"],
                    generated_on_token=attrs["generated_on_token"],
                )
            versions[str(number)] = entry
        if state.destroyed_at is not None:
            overall = "destroyed"
        else:
            overall = "disabled" if state.disabled else "enabled"
        return {
            "key_id": self._key_id(state.label),
            "label": state.label,
            "token": self.token_label,
            "mechanism": "CKM_AES_GCM",
            "state": overall,
            "primary": state.primary,
            "created_at": min(state.created.values(), default=None),
            "destroyed_at": state.destroyed_at,
            "versions": versions,
        }

    def list_keys(self) -> list[KeyId]:
        """Ids of every KEK on the token that keycustody made or can use (version ids)."""
        from pkcs11 import Attribute, ObjectClass

        labels: set[str] = set()
        with self._session("list keys") as session:
            for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})):
                found = obj.get_attributes([Attribute.LABEL, Attribute.ID])
                if _VERSION_ID.fullmatch(bytes(found.get(Attribute.ID) or b"")):
                    labels.add(str(found.get(Attribute.LABEL) or ""))
            events = {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: _APPLICATION}
            for obj in list(session.get_objects(events)):
                labels.add(str(obj[Attribute.LABEL] or ""))
        return sorted(self._key_id(label) for label in labels if _LABEL.fullmatch(label))

    def default_key_id(self) -> KeyId:
        """``pkcs11:<default_label>``, generated on the token on first use."""
        return self.create_key(self.default_label, exist_ok=True)

    # -- wrap / unwrap -----------------------------------------------------------------------

    @staticmethod
    def _aad(key_id: str, version: str, context: EncryptionContext) -> bytes:
        # Labels are [A-Za-z0-9._-] and versions digits, so "|" separates unambiguously.
        return b"%s%s|%s|%s" % (_AAD_PREFIX, key_id.encode(), version.encode(), context.to_aad())

    def wrap(self, key_id: KeyId, key: KeyHandle, context: EncryptionContext) -> WrappedKey:
        """Encrypts ``key`` on the token under the primary version of ``key_id``
        (``CKM_AES_GCM``), bound to ``context``, the key id and the version.

        Raises:
            NotFoundError: no such KEK on the token.
            KeyRevokedError: the KEK is disabled, or the token no longer accepts the PIN.
            ShreddedError: the KEK was destroyed.
        """
        from pkcs11 import EncryptMixin, GCMParams, Mechanism

        key_id = self._key_id(self._label(key_id))
        with self._session("wrap a key") as session:
            state = self._existing(session, key_id)
            self._usable(key_id, state)
            number = state.primary
            if number is None:
                raise ShreddedError(f"KEK {key_id!r} has no version left on the token")
            target = state.objects[number][0]
            self._check_safe(key_id, target)
            if not isinstance(target.obj, EncryptMixin):
                raise KeyRevokedError(f"KEK {key_id!r} may not encrypt on the token (disabled)")
            version = str(number)
            iv = secrets.token_bytes(_IV_LEN)
            params = GCMParams(iv, self._aad(key_id, version, context), _TAG_LEN * 8)
            secret = key.export_secret()
            # The one-shot C_Encrypt path takes the bytearray as it is (its stub says bytes);
            # the public encrypt() wants immutable bytes, a copy of the key we could not wipe.
            encrypt_once: Callable[..., bytes] = target.obj._encrypt
            try:
                sealed = encrypt_once(secret, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            finally:
                secret[:] = bytes(len(secret))
        if not isinstance(sealed, bytes) or len(sealed) != key.size + _TAG_LEN:
            raise KmsError(f"PKCS#11 token {self.token_label!r} returned a malformed ciphertext")
        return WrappedKey(key_id, version, bytes([_FORMAT_GCM]) + iv + sealed)

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> KeyHandle:
        """Decrypts on the token with the KEK version that wrapped it.

        Raises:
            IntegrityError: the wrapped key, key id, version or context does not match.
            KeyRevokedError: the KEK is disabled, or the token no longer accepts the PIN.
            ShreddedError: the KEK or this version of it was destroyed.
            NotFoundError: no such KEK on the token.
        """
        from pkcs11 import DecryptMixin, GCMParams, Mechanism
        from pkcs11 import exceptions as e

        key_id = self._key_id(self._label(wrapped.key_id))
        data = wrapped.ciphertext
        body = len(data) - 1 - _IV_LEN - _TAG_LEN
        version = wrapped.key_version
        number = int(version) if _VERSION.fullmatch(version) else None
        iv, sealed = data[1 : 1 + _IV_LEN], data[1 + _IV_LEN :]
        with self._session("unwrap a key") as session:
            state = self._existing(session, key_id)
            self._usable(key_id, state)
            if not isinstance(data, bytes) or body not in (32, 64) or data[0] != _FORMAT_GCM:
                raise IntegrityError(f"not a wrapped key made by Pkcs11KMS for {key_id!r}")
            if number is None or number > max(state.known, default=0):
                raise IntegrityError(f"KEK {key_id!r} has no version {version}")
            if number in state.destroyed:
                raise ShreddedError(f"version {version} of KEK {key_id!r} was destroyed")
            candidates = state.objects.get(number, [])
            if not candidates:
                raise ShreddedError(
                    f"version {version} of KEK {key_id!r} is no longer on the token "
                    "(destroyed outside keycustody?)"
                )
            params = GCMParams(iv, self._aad(key_id, version, context), _TAG_LEN * 8)
            for candidate in candidates:
                self._check_safe(key_id, candidate)
                if not isinstance(candidate.obj, DecryptMixin):
                    raise KeyRevokedError(
                        f"KEK {key_id!r} may not decrypt on the token (disabled)"
                    )
                try:
                    plain = candidate.obj.decrypt(
                        sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params
                    )
                except (
                    e.GeneralError,  # SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR
                    e.FunctionFailed,
                    e.EncryptedDataInvalid,
                    e.EncryptedDataLenRange,
                    e.DataLenRange,
                ):
                    continue
                except e.PKCS11Error as exc:
                    if str(exc).endswith(_CKR_AEAD_DECRYPT_FAILED):
                        continue
                    raise
                if not isinstance(plain, bytes) or len(plain) != body:
                    raise KmsError(
                        f"PKCS#11 token {self.token_label!r} returned a malformed plaintext"
                    )
                return KeyHandle.from_secret(plain)
        raise IntegrityError(f"the wrapped key does not authenticate under {key_id!r}")
