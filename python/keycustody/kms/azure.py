"""Azure Key Vault and Managed HSM as a KEK provider (azure-keyvault-keys).

Key ids: ``azure:https://NAME.vault.azure.net/keys/KEY``, or ``.../keys/KEY/VERSION`` to pin
one version (Managed HSM: ``https://NAME.managedhsm.azure.net/keys/KEY``).

Wrapping: ``CryptographyClient.wrap_key`` with RSA-OAEP-256 (RSA and RSA-HSM keys, the default)
or A256KW (oct-HSM keys in a Managed HSM: ``AzureKeyVault(algorithm="A256KW")``).

Context binding: Azure's wrapKey takes no associated data, so keycustody binds the encryption
context itself. The wrapped plaintext is ``SHA-256("keycustody/azure-kv/v1" || 0x00 ||
canonical context) || key``: 96 bytes for a 64-byte scope key (RSA-OAEP-256 with a 2048-bit
key takes up to 190 bytes; AES key wrap any multiple of 8). Both algorithms authenticate the
whole plaintext, so a digest that differs on unwrap (compared in constant time) means another
context: IntegrityError.

Stored format of :attr:`WrappedKey.ciphertext <keycustody.types.WrappedKey>`::

    byte 0    format version: 1
    byte 1    algorithm: 1 = RSA-OAEP-256, 2 = A256KW
    byte 2..  the wrapKey result

:attr:`~keycustody.types.WrappedKey.key_version` is the Key Vault version that wrapped (from
the result's ``kid``); unwrap addresses that version, so rotating the key in Azure (a new
version) leaves older wraps readable until ``vault.rotate_kek`` moves them. When the result
names no version (the SDK wrapped in the service without ``keys/get``, and the id pins none),
``key_version`` is empty and unwrap uses the current version: pin the version in the id, or
grant ``keys/get``.

Clients: each operation gets a fresh ``CryptographyClient`` (closed afterwards), because the
SDK caches the key it fetched (``keys/get``) and would go on wrapping locally with a cached
public key after the key was disabled; so an operation is two requests, the SDK's GET and the
operation. The SDK tries RSA wraps locally first; pyca/cryptography refuses the ``bytearray``
keycustody passes, the SDK logs a WARNING ("Local wrap operation failed") and calls the
vault's wrapKey, which is what keycustody wants: the vault checks that the key is enabled and
names the version. Unwrap always runs in the vault. (Wraps are rare: one per scope key
version, never per record.)

SDK guard: azure-keyvault-keys (4.11 here) gives an oct-HSM key that the service returns
without its material (Managed HSM never exports it) a local AES key of random bytes and
"wraps" with that, which nothing can ever unwrap. So every A256KW wrap made through the service
is unwrapped again at once with a fresh client and compared; a mismatch fails the wrap
(KmsError) instead of storing an unreadable key. A principal with wrapKey/unwrapKey but
without ``keys/get`` makes the SDK use the service.

Key material: the 96-byte plaintext is a ``bytearray`` handed to the SDK and wiped after the
call; the SDK's unwrap result (``bytes``) goes straight into a
:class:`~keycustody._core.KeyHandle`. Copies made inside azure-core and requests (JSON body,
base64 text, HTTP buffers) are out of keycustody's reach: freed, never wiped. Errors are raised
outside the SDK's exception context, and messages never carry key bytes.

Retries: clients made here switch the SDK's retry policy off (``retry_total=0``);
:func:`~keycustody.kms.retry.call_translated` retries 429, 5xx, connection errors and
timeouts with full-jitter backoff, each attempt with ``timeout`` seconds to connect and to
read, and no attempt starting after ``min(retries.total_timeout, timeout)`` seconds.

Errors: 403 (a disabled key: ``Forbidden`` with inner code ``KeyDisabled``; or access denied by
an access policy or RBAC) raises KeyRevokedError; 404 raises KmsKeyNotFoundError (Azure answers
404 for a soft-deleted key too, recoverable until its retention period ends, which keycustody
cannot tell apart); a failed unwrap (400 from the service, or a local unwrap failure) raises
IntegrityError; retries exhausted raise KmsUnavailableError; anything else raises KmsError
naming Azure's error code.

Destruction: Key Vault deletes whole keys, every version at once; it cannot delete one
version (a disabled version can be enabled again by anyone with keys/update, so disabling is
not destruction). So this provider has no ``rotate_key``/``destroy_key``, and erasure phase 2
moves the surviving tenants to another key of the customer's (``vault.complete_erasures(
new_keks=...)``) and then destroys the old key (the :class:`~keycustody.kms.base.KeyDestroyer`
contract): ``DELETE /keys/{name}`` soft-deletes it (Azure refuses every operation on it from
that moment; its DeletedKeyBundle names ``scheduledPurgeDate``), then a purge
(``DELETE /deletedkeys/{name}``) makes it final at once where the vault allows that. With purge
protection on, Azure refuses the purge (403) until the retention period (7-90 days) has passed
and then purges the key itself; until then ``recover`` brings it back. The destruction is
confirmed when neither the deleted key (``GET /deletedkeys/{name}``) nor the key exists. These
calls need ``keys/delete``, ``keys/get``, ``keys/purge`` (optional) and ``keys/recover``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, ClassVar, TypeVar

from keycustody._core import KeyHandle
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    KeyCustodyError,
    KeyRevokedError,
    KmsError,
    KmsUnavailableError,
    ShreddedError,
)
from keycustody.kms.base import DESTROY_SCHEDULED, DESTROYED, NOT_SCHEDULED, Destruction
from keycustody.kms.retry import KmsKeyNotFoundError, RetryPolicy, call_translated, clip
from keycustody.types import EncryptionContext, KeyId, WrappedKey

T = TypeVar("T")

ClientFactory = Callable[[str], Any]
"""Makes a ``CryptographyClient`` (or an object with its ``wrap_key``/``unwrap_key``) for a
key URL, versioned or not."""

_URL = re.compile(
    r"(https://[A-Za-z0-9.-]+(?::\d{1,5})?/keys/[A-Za-z0-9-]{1,127})(?:/([A-Za-z0-9]{1,64}))?/?"
)
_FORMAT = 1
_ALGORITHMS = {"RSA-OAEP-256": 1, "A256KW": 2}
_ALGORITHM_NAMES = {v: k for k, v in _ALGORITHMS.items()}
_DIGEST_LABEL = b"keycustody/azure-kv/v1\x00"
_DIGEST_LEN = 32
_KEY_SIZES = (32, 64)


def _sdk() -> SimpleNamespace:
    """azure-keyvault-keys and azure-core, imported on first use."""
    try:
        from azure.core import exceptions
        from azure.keyvault.keys import KeyClient
        from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
    except ImportError:
        raise ConfigError(
            "AzureKeyVault needs azure-keyvault-keys, which is not installed: "
            "pip install 'keycustody[azure]'"
        ) from None
    return SimpleNamespace(
        exc=exceptions,
        CryptographyClient=CryptographyClient,
        KeyClient=KeyClient,
        KeyWrapAlgorithm=KeyWrapAlgorithm,
    )


@dataclass(frozen=True, slots=True)
class _Ref:
    """A parsed ``azure:`` key id."""

    key_id: KeyId
    base: str
    """``https://HOST/keys/NAME``."""
    version: str | None

    def url(self, version: str | None) -> str:
        return f"{self.base}/{version}" if version else self.base

    @property
    def vault_url(self) -> str:
        return self.base.rpartition("/keys/")[0]

    @property
    def name(self) -> str:
        return self.base.rpartition("/keys/")[2]


def _parse_url(url: str) -> tuple[str, str | None] | None:
    m = _URL.fullmatch(url)
    return (m.group(1), m.group(2)) if m else None


def _parse(key_id: str) -> _Ref:
    url = key_id.removeprefix(f"{AzureKeyVault.prefix}:")
    parsed = _parse_url(url)
    if parsed is None:
        raise ConfigError(
            f"invalid Azure Key Vault key id {key_id!r}: use "
            "'azure:https://NAME.vault.azure.net/keys/KEY' (optionally '/VERSION')"
        )
    return _Ref(KeyId(f"{AzureKeyVault.prefix}:{url}"), parsed[0], parsed[1])


def _same_key(a: str, b: str) -> bool:
    """Key Vault host names and key names are case-insensitive."""
    return a.lower() == b.lower()


def _digest(context: EncryptionContext) -> bytes:
    return hashlib.sha256(_DIGEST_LABEL + context.to_aad()).digest()


def _is_tls_failure(exc: BaseException) -> bool:
    """A certificate or TLS failure (not transient: a wrong trust store, or an interceptor)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError) or type(seen).__name__ == "SSLError":
            return True
        inner = getattr(seen, "inner_exception", None)
        seen = inner if isinstance(inner, BaseException) else (seen.__cause__ or seen.__context__)
    return False


def _is_service_client(client: Any) -> bool:
    """Whether ``client`` calls a vault (``from_jwk`` clients work locally only; their
    ``vault_url`` is None or, in azure-keyvault-keys 4.11, the placeholder "vault_url")."""
    vault_url = getattr(client, "vault_url", None)
    return isinstance(vault_url, str) and vault_url.startswith("https://")


def _error_fields(exc: Any) -> tuple[str, str, str]:
    """Azure's ``{"error": {"code", "message", "innererror": {"code"}}}`` of a failed call."""
    body: Any = None
    with contextlib.suppress(Exception):  # no response, or not JSON: use the exception
        body = json.loads(exc.response.text())
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return str(getattr(exc, "reason", "") or "Error"), "", clip(getattr(exc, "reason", ""))
    inner = error.get("innererror")
    inner_code = inner.get("code", "") if isinstance(inner, dict) else ""
    return str(error.get("code") or "Error"), str(inner_code or ""), clip(error.get("message"))


class AzureKeyVault:
    """KEKs in Azure Key Vault or Managed HSM: ids ``azure:https://HOST/keys/KEY[/VERSION]``.

    Args:
        credential: An azure-identity credential (default: ``DefaultAzureCredential()``,
            created on first use).
        client_factory: Makes the client for a key URL instead of ``CryptographyClient(url,
            credential)``; its clients are not closed here, and their own retry settings
            apply. Tests use it for ``CryptographyClient.from_jwk``.
        algorithm: ``"RSA-OAEP-256"`` (default; RSA keys) or ``"A256KW"`` (oct-HSM keys).
        retries: Backoff on 429, 5xx, timeouts and connection errors.
        timeout: Seconds to connect and to read, per request.
        default_key: KEK for tenants created without ``kek=`` (a key URL).
        client_options: Extra keyword arguments for ``CryptographyClient`` (e.g.
            ``api_version``, ``transport``, ``connection_verify``).

    Raises:
        ConfigError: azure-keyvault-keys is missing, or an argument is invalid.
    """

    prefix: ClassVar[str] = "azure"

    def __init__(
        self,
        credential: Any = None,
        *,
        client_factory: ClientFactory | None = None,
        algorithm: str | None = None,
        retries: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        timeout: float = 10.0,
        default_key: str | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not timeout > 0:
            raise ConfigError("AzureKeyVault timeout must be > 0 seconds")
        algorithm = algorithm or "RSA-OAEP-256"
        if algorithm not in _ALGORITHMS:
            raise ConfigError(
                f"AzureKeyVault algorithm {algorithm!r} is not supported: use 'RSA-OAEP-256' "
                "(RSA keys) or 'A256KW' (oct-HSM keys)"
            )
        self._sdk = _sdk()
        self._credential = credential
        self._factory = client_factory
        self.algorithm = algorithm
        self.timeout = float(timeout)
        self.retries = retries
        self._policy = replace(retries, total_timeout=min(retries.total_timeout, self.timeout))
        self._default = _parse(default_key).key_id if default_key is not None else None
        self._options = dict(client_options or {})
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AzureKeyVault(algorithm={self.algorithm!r})"

    # -- clients --------------------------------------------------------------------------

    def _get_credential(self) -> Any:
        with self._lock:
            if self._credential is None:
                try:
                    from azure.identity import DefaultAzureCredential
                except ImportError:
                    raise ConfigError(
                        "AzureKeyVault needs a credential, or azure-identity for the default "
                        "one: pip install 'keycustody[azure]'"
                    ) from None
                self._credential = DefaultAzureCredential()
            return self._credential

    @contextlib.contextmanager
    def _client(self, url: str) -> Iterator[Any]:
        if self._factory is not None:
            yield self._factory(url)
            return
        options: dict[str, Any] = {
            "retry_total": 0,
            "connection_timeout": self.timeout,
            "read_timeout": self.timeout,
        }
        options.update(self._options)
        client = self._sdk.CryptographyClient(url, self._get_credential(), **options)
        try:
            yield client
        finally:
            client.close()

    @contextlib.contextmanager
    def _key_client(self, vault_url: str) -> Iterator[Any]:
        """A ``KeyClient`` for key management (delete, purge, recover); closed afterwards."""
        options: dict[str, Any] = {
            "retry_total": 0,
            "connection_timeout": self.timeout,
            "read_timeout": self.timeout,
        }
        options.update(self._options)
        client = self._sdk.KeyClient(vault_url, self._get_credential(), **options)
        try:
            yield client
        finally:
            client.close()

    # -- calls and errors -------------------------------------------------------------------

    def _is_retryable(self, exc: Exception) -> bool:
        errors = self._sdk.exc
        if isinstance(exc, errors.ServiceRequestError | errors.ServiceResponseError):
            return not _is_tls_failure(exc)
        if isinstance(exc, errors.HttpResponseError) and not isinstance(
            exc, errors.ClientAuthenticationError
        ):
            status = exc.status_code or 0
            return status == 429 or status >= 500
        return False

    def _call(self, op: str, ref: _Ref, fn: Callable[[], T]) -> T:
        """Runs one Key Vault operation with retries; every failure leaves as our error."""
        return call_translated(
            fn,
            is_retryable=self._is_retryable,
            policy=self._policy,
            translate=lambda exc, attempts, elapsed: self._translate(
                exc, op, ref, attempts, elapsed
            ),
        )

    def _translate(
        self, exc: Exception, op: str, ref: _Ref, attempts: int, elapsed: float
    ) -> KeyCustodyError:
        errors = self._sdk.exc
        where = f"Azure Key Vault {op} with KEK {ref.key_id!r}"
        if self._is_retryable(exc):
            if isinstance(exc, errors.HttpResponseError):
                code, _, _ = _error_fields(exc)
                what = f"HTTP {exc.status_code} {code}"
            else:
                what = f"{type(exc).__name__}: {clip(exc)}"
            return KmsUnavailableError(
                f"{where} failed after {attempts} attempt(s) in {elapsed:.1f} s: {what}; "
                "the vault is throttling or unreachable, retry later"
            )
        if isinstance(exc, errors.ClientAuthenticationError) and exc.status_code is None:
            return ConfigError(f"{where}: no usable Azure credential ({type(exc).__name__})")
        if isinstance(exc, errors.HttpResponseError):
            status = exc.status_code
            code, inner, message = _error_fields(exc)
            codes = f"{code}/{inner}" if inner else code
            detail = f"HTTP {status} {codes}: {message}" if message else f"HTTP {status} {codes}"
            if status == 403:
                why = (
                    "the key is disabled"
                    if "disabled" in (inner + message).lower()
                    else ("access to the key was denied or revoked")
                )
                return KeyRevokedError(f"{where} was refused ({detail}): {why}")
            if status == 404 and op in ("wrapKey", "unwrapKey"):
                deleted = self._deleted(ref)
                if deleted is not None:
                    return ShreddedError(
                        f"{where} was refused: the key was deleted ({deleted}); data it "
                        "protects is unreadable unless the key is recovered before its purge"
                    )
            if status == 404:
                return KmsKeyNotFoundError(
                    f"{where}: the key does not exist ({detail}); check the URL, or recover it "
                    "if it was deleted recently"
                )
            if status == 400 and op == "unwrapKey":
                return IntegrityError(
                    f"{where} failed ({codes}): the wrapped key was made by another key or "
                    "version, or was tampered with"
                )
            return KmsError(f"{where} failed: {detail}")
        if _is_tls_failure(exc):
            return KmsError(f"{where} failed: TLS: {clip(exc)}")
        if isinstance(exc, errors.AzureError):
            return KmsError(f"{where} failed: {type(exc).__name__}: {clip(exc)}")
        if op == "unwrapKey":  # a local unwrap (from_jwk clients) that does not authenticate
            return IntegrityError(f"{where} failed ({type(exc).__name__}): wrong key or tampered")
        return KmsError(f"{where} failed ({type(exc).__name__})")

    # -- the provider contract --------------------------------------------------------------

    def default_key_id(self) -> KeyId:
        """The ``default_key`` given to the constructor.

        Raises:
            ConfigError: no default key was configured.
        """
        if self._default is None:
            raise ConfigError(
                "AzureKeyVault has no default KEK: pass kek='azure:https://...' when creating "
                "a tenant, or AzureKeyVault(default_key='https://...')"
            )
        return self._default

    def _wrap_raw(self, ref: _Ref, url: str, algorithm: str, payload: bytearray) -> Any:
        alg = self._sdk.KeyWrapAlgorithm(algorithm)

        def wrap() -> Any:
            with self._client(url) as client:
                remote = _is_service_client(client)
                # A local-only client (from_jwk) wraps with pyca/cryptography, whose RSA takes
                # bytes only: that copy cannot be wiped. Service clients get the bytearray (the
                # SDK's local RSA attempt refuses it, logs a warning and calls the vault).
                result = client.wrap_key(alg, payload if remote else bytes(payload))
                return SimpleNamespace(
                    key_id=result.key_id, encrypted_key=result.encrypted_key, remote=remote
                )

        return self._call("wrapKey", ref, wrap)

    def _unwrap_raw(self, ref: _Ref, url: str, algorithm: str, blob: bytes) -> tuple[Any, bytes]:
        alg = self._sdk.KeyWrapAlgorithm(algorithm)

        def unwrap() -> tuple[Any, bytes]:
            with self._client(url) as client:
                result = client.unwrap_key(alg, blob)
                return result.key_id, result.key

        return self._call("unwrapKey", ref, unwrap)

    def wrap(self, key_id: KeyId, key: KeyHandle, context: EncryptionContext) -> WrappedKey:
        """Wraps ``digest(context) || key`` under Key Vault key ``key_id``.

        Raises:
            KeyRevokedError: the key is disabled, or access is denied.
            KmsUnavailableError: throttled or unreachable after retries.
            KmsError: any other failure (KmsKeyNotFoundError: no such key).
        """
        ref = _parse(key_id)
        algorithm = self.algorithm
        secret = key.export_secret()
        payload = bytearray(_DIGEST_LEN + len(secret))
        try:
            payload[:_DIGEST_LEN] = _digest(context)
            payload[_DIGEST_LEN:] = secret
            secret[:] = bytes(len(secret))
            result = self._wrap_raw(ref, ref.url(ref.version), algorithm, payload)
            version = self._version_of(ref, result.key_id)
            blob = result.encrypted_key
            if not isinstance(blob, bytes | bytearray) or not blob:
                raise KmsError(f"Azure Key Vault wrapKey with KEK {ref.key_id!r} returned nothing")
            blob = bytes(blob)
            if algorithm == "A256KW" and result.remote:
                self._verify(ref, ref.url(version), algorithm, blob, payload)
        finally:
            secret[:] = bytes(len(secret))
            payload[:] = bytes(len(payload))
        header = bytes((_FORMAT, _ALGORITHMS[algorithm]))
        return WrappedKey(ref.key_id, version or "", header + blob)

    def _version_of(self, ref: _Ref, result_kid: Any) -> str | None:
        """The key version a wrap result names, checked against the key id."""
        if result_kid is None:
            return ref.version
        parsed = _parse_url(str(result_kid))
        if parsed is None or not _same_key(parsed[0], ref.base):
            raise KmsError(f"Azure Key Vault wrapped with another key than {ref.key_id!r}")
        version = parsed[1]
        if ref.version is not None and version is not None and version != ref.version:
            raise KmsError(f"Azure Key Vault wrapped with another version than {ref.key_id!r}")
        return version or ref.version

    def _verify(
        self, ref: _Ref, url: str, algorithm: str, blob: bytes, payload: bytearray
    ) -> None:
        """Unwraps a fresh A256KW wrap with a fresh client (the SDK guard, see the module)."""
        try:
            _, back = self._unwrap_raw(ref, url, algorithm, blob)
        except (IntegrityError, KmsError) as exc:
            raise KmsError(
                f"Azure Key Vault wrapKey with KEK {ref.key_id!r} made a wrap the vault cannot "
                f"unwrap ({type(exc).__name__}); azure-keyvault-keys wrapped oct-HSM keys "
                "locally with made-up key material: use a principal without keys/get"
            ) from None
        if not hmac.compare_digest(back, payload):
            raise KmsError(
                f"Azure Key Vault wrapKey with KEK {ref.key_id!r} does not unwrap to what was "
                "wrapped; nothing was stored"
            )

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> KeyHandle:
        """Unwraps a key made by :meth:`wrap` with the Key Vault version that wrapped it.

        Raises:
            IntegrityError: another key's or version's wrap, tampering, a different context,
                or key material of the wrong size.
            KeyRevokedError: the key is disabled, or access is denied.
            KmsUnavailableError: throttled or unreachable after retries.
            KmsError: any other failure (KmsKeyNotFoundError: no such key).
        """
        ref = _parse(wrapped.key_id)
        version = wrapped.key_version or None
        if version is not None and not re.fullmatch(r"[A-Za-z0-9]{1,64}", version):
            raise IntegrityError(f"the wrapped key of KEK {ref.key_id!r} has an invalid version")
        if ref.version is not None and version is not None and version != ref.version:
            raise IntegrityError(f"the wrapped key was made by another version of {ref.key_id!r}")
        version = version or ref.version
        blob = wrapped.ciphertext
        if len(blob) < 3 or blob[0] != _FORMAT or blob[1] not in _ALGORITHM_NAMES:
            raise IntegrityError(
                f"the wrapped key of KEK {ref.key_id!r} is not in keycustody's Azure format"
            )
        result_kid, payload = self._unwrap_raw(
            ref, ref.url(version), _ALGORITHM_NAMES[blob[1]], bytes(blob[2:])
        )
        if result_kid is not None:
            parsed = _parse_url(str(result_kid))
            if (
                parsed is None
                or not _same_key(parsed[0], ref.base)
                or (version is not None and parsed[1] is not None and parsed[1] != version)
            ):
                raise IntegrityError(
                    f"Azure Key Vault unwrapped with another key than {ref.key_id!r}"
                )
        if not isinstance(payload, bytes | bytearray) or (
            len(payload) - _DIGEST_LEN not in _KEY_SIZES
        ):
            size = len(payload) if isinstance(payload, bytes | bytearray) else 0
            raise IntegrityError(
                f"Azure Key Vault returned {size} bytes for KEK {ref.key_id!r}; expected "
                f"{_DIGEST_LEN} + 64 (or + 32)"
            )
        if not hmac.compare_digest(payload[:_DIGEST_LEN], _digest(context)):
            raise IntegrityError(
                f"the wrapped key of KEK {ref.key_id!r} belongs to another encryption context"
            )
        return KeyHandle.from_secret(memoryview(payload)[_DIGEST_LEN:])

    # -- erasure phase 2: the KeyDestroyer contract -----------------------------------------

    def _deleted(self, ref: _Ref) -> str | None:
        """The deleted key's purge date in words, if ``ref`` is a soft-deleted key (one
        attempt, no retries: it refines a 404). Not for ``client_factory`` clients: their
        keys may not live in a vault at all."""
        if self._factory is not None:
            return None
        with contextlib.suppress(Exception):
            with self._key_client(ref.vault_url) as client:
                deleted = client.get_deleted_key(ref.name)
            return f"scheduled purge {_iso(deleted.scheduled_purge_date)}"
        return None

    def key_of(self, key_id: str, version: str) -> KeyId:
        """``azure:https://HOST/keys/NAME``: Key Vault deletes every version of a key together,
        so a wrap lives and dies with the whole key, whatever its ``version``."""
        ref = _parse(key_id)
        return KeyId(f"{self.prefix}:{ref.base.lower()}")

    def _management(self, op: str, ref: _Ref, fn: Callable[[Any], T]) -> T:
        def call() -> T:
            with self._key_client(ref.vault_url) as client:
                return fn(client)

        return self._call(op, ref, call)

    def destruction_status(self, key_id: str) -> Destruction:
        """``GET /deletedkeys/{name}``: present, the key awaits its purge; absent while the key
        itself is absent too, it was purged (destroyed); the key back, it was recovered."""
        ref = _parse(key_id)
        try:
            deleted = self._management("getDeletedKey", ref, lambda c: c.get_deleted_key(ref.name))
        except KmsKeyNotFoundError:
            pass
        else:
            date = _utc(deleted.scheduled_purge_date)
            return Destruction(
                ref.key_id,
                DESTROY_SCHEDULED,
                date,
                f"deleted {_iso(_utc(deleted.deleted_date))}, scheduledPurgeDate {_iso(date)}",
            )
        try:
            self._management("getKey", ref, lambda c: c.get_key(ref.name))
        except KmsKeyNotFoundError:
            return Destruction(
                ref.key_id,
                DESTROYED,
                None,
                "purged: GET /deletedkeys and GET /keys both answer 404 KeyNotFound",
            )
        return Destruction(ref.key_id, NOT_SCHEDULED, None, "the key exists (not deleted)")

    def schedule_destruction(self, key_id: str) -> Destruction:
        """Deletes the whole key (soft delete), then purges it where the vault allows: at once
        without purge protection (and with ``keys/purge``), else Azure purges it itself at
        ``scheduledPurgeDate``. A key already deleted or purged reports that."""
        ref = _parse(key_id)
        status = self.destruction_status(key_id)
        if status.state == NOT_SCHEDULED:
            deleted = self._management(
                "deleteKey", ref, lambda c: c.begin_delete_key(ref.name).result()
            )
            if deleted.recovery_id is None:  # a vault without soft delete (retired by Azure)
                return Destruction(ref.key_id, DESTROYED, None, "deleted (no soft delete)")
            status = Destruction(
                ref.key_id,
                DESTROY_SCHEDULED,
                _utc(deleted.scheduled_purge_date),
                f"DELETE /keys/{ref.name}: deleted {_iso(_utc(deleted.deleted_date))}, "
                f"scheduledPurgeDate {_iso(_utc(deleted.scheduled_purge_date))}",
            )
        if status.state != DESTROY_SCHEDULED:
            return status
        try:
            self._management("purgeDeletedKey", ref, lambda c: c.purge_deleted_key(ref.name))
        except KeyRevokedError as exc:  # 403: purge protection, or no keys/purge
            return replace(status, event=f"{status.event}; purge refused ({clip(exc)})")
        return Destruction(ref.key_id, DESTROYED, None, f"{status.event}; purged")

    def cancel_destruction(self, key_id: str) -> Destruction:
        """Recovers the deleted key (``POST /deletedkeys/{name}/recover``) with every version."""
        ref = _parse(key_id)
        status = self.destruction_status(key_id)
        if status.state == DESTROYED:
            raise KmsError(f"the Key Vault key {ref.key_id!r} was purged; nothing to recover")
        if status.state == DESTROY_SCHEDULED:
            self._management(
                "recoverDeletedKey",
                ref,
                lambda c: c.begin_recover_deleted_key(ref.name).result(),
            )
        return Destruction(ref.key_id, NOT_SCHEDULED, None, "recovered: the key is back")


def _utc(ts: datetime | None) -> datetime | None:
    return None if ts is None else ts.astimezone(UTC)


def _iso(ts: datetime | None) -> str:
    return "-" if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
