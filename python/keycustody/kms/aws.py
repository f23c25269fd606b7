"""AWS KMS as a KEK provider (boto3): the customer's KMS key wraps each tenant's scope keys.

Key ids: ``aws:arn:aws:kms:REGION:ACCOUNT:key/KEY-ID`` (preferred: it pins account and
region), ``aws:arn:aws:kms:REGION:ACCOUNT:alias/NAME`` or ``aws:alias/NAME`` (in the
provider's region). A key ARN's region picks the client, so one provider serves keys in
several regions.

Wrapping is ``Encrypt`` of the 64-byte scope key with ``EncryptionContext`` = the keycustody
context items (AWS binds them as associated data and logs them in CloudTrail; they hold no
secrets). :attr:`~keycustody.types.WrappedKey.key_version` records the ARN of the KMS key that
encrypted (Encrypt's ``KeyId``). ``Decrypt`` names that ARN as ``KeyId`` and checks the ARN in
the answer, so a ciphertext of another key is refused (``IncorrectKeyException``) instead of
being decrypted by whichever key made it. An alias may be pointed at a new key (AWS's manual
rotation): existing wraps keep unwrapping with the key that made them, new wraps use the new
target, and ``vault.rotate_kek(tenant, same_id)`` moves the old ones over.

Key material: the scope key is exported from its Rust handle into a ``bytearray`` that is
handed to boto3 as is and wiped right after the call; Decrypt's plaintext goes straight into a
:class:`~keycustody._core.KeyHandle`. The copies boto3 and botocore make on the way (the
base64 request body, HTTP buffers, the parsed response's ``bytes``) are out of keycustody's
reach: Python frees them but cannot wipe them. Errors are raised outside the SDK's exception
context, so no traceback keeps those frames alive, and messages never carry key bytes.

Retries: botocore's own retries are switched off (``total_max_attempts=1``) and
:func:`~keycustody.kms.retry.call_translated` retries ``ThrottlingException``,
``KMSInternalException``, ``DependencyTimeoutException``, ``KeyUnavailableException``, any
5xx, connection errors and timeouts with full-jitter backoff. Each attempt has ``timeout``
seconds to connect and to read; no attempt starts after ``min(retries.total_timeout,
timeout)`` seconds, so a call that cannot reach AWS fails with KmsUnavailableError within
2 x ``timeout``. (A ``client=`` you inject keeps its own botocore retry and timeout settings.)

Errors: ``DisabledException``, ``AccessDeniedException`` and invalid key states raise
KeyRevokedError; a key pending deletion raises ShreddedError; ``InvalidCiphertextException``
and ``IncorrectKeyException`` raise IntegrityError; ``NotFoundException`` raises
KmsKeyNotFoundError (a KmsError and a NotFoundError: a wrong id, another account or region, or
a key deleted after its waiting period, which AWS does not tell apart); retries exhausted raise
KmsUnavailableError; anything else raises KmsError naming AWS's error code.

Destruction: AWS KMS cannot destroy one version of a key. Automatic and on-demand rotation
keep every earlier key material inside the same key for as long as the key exists, so this
provider has no ``rotate_key``/``destroy_key``. Durable erasure (phase 2) on AWS moves the
surviving tenants to another KMS key (the customer's: keycustody never calls CreateKey; either
``vault.complete_erasures(new_keks=...)`` names it, or the tenant's alias was pointed at it with
UpdateAlias) and then schedules deletion of the old key (:meth:`AwsKMS.schedule_destruction`,
the :class:`~keycustody.kms.base.KeyDestroyer` contract): AWS refuses to decrypt with it from
that moment (ShreddedError here), deletes it after the waiting period
(``deletion_window_days``, 7-30) and the deletion can be cancelled until then. After the date
AWS answers ``NotFoundException`` for the key, which :meth:`AwsKMS.destruction_status` takes
as the confirmation (the ARN came from AWS's own Encrypt answer, so the key did exist).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from keycustody import awssdk
from keycustody._core import KeyHandle
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    InvalidInputError,
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

_PARTITION = r"arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12})"
_KEY_ARN = re.compile(_PARTITION + r":key/([A-Za-z0-9-]{1,128})")
_ALIAS_ARN = re.compile(_PARTITION + r":alias/([A-Za-z0-9/_-]{1,250})")
_ALIAS = re.compile(r"alias/[A-Za-z0-9/_-]{1,250}")

_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
    }
)
_REVOKED_CODES = frozenset({"DisabledException", "AccessDeniedException"})
_INTEGRITY_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
_PENDING_DELETION = frozenset({"PendingDeletion", "PendingReplicaDeletion"})
_STATES = {
    "Enabled": "enabled",
    "Disabled": "disabled",
    "PendingDeletion": "destroy_scheduled",
    "PendingReplicaDeletion": "destroy_scheduled",
    "PendingImport": "pending_import",
    "Unavailable": "unavailable",
    "Creating": "creating",
    "Updating": "updating",
}
_KEY_SIZES = (32, 64)


@dataclass(frozen=True, slots=True)
class _Ref:
    """A parsed ``aws:`` key id."""

    key_id: KeyId
    target: str
    """What AWS's ``KeyId`` parameter gets: a key ARN, an alias ARN or ``alias/NAME``."""
    region: str | None
    account: str | None
    key_arn: str | None

    def owns(self, arn_match: re.Match[str]) -> bool:
        """Whether a key ARN is in this id's region and account (when the id names them)."""
        region, account = arn_match.group(1), arn_match.group(2)
        return self.region in (None, region) and self.account in (None, account)


def _parse(key_id: str) -> _Ref:
    target = key_id.removeprefix(f"{AwsKMS.prefix}:")
    full = KeyId(f"{AwsKMS.prefix}:{target}")
    if m := _KEY_ARN.fullmatch(target):
        return _Ref(full, target, m.group(1), m.group(2), target)
    if m := _ALIAS_ARN.fullmatch(target):
        return _Ref(full, target, m.group(1), m.group(2), None)
    if _ALIAS.fullmatch(target):
        return _Ref(full, target, None, None, None)
    raise ConfigError(
        f"invalid AWS KMS key id {key_id!r}: use 'aws:arn:aws:kms:REGION:ACCOUNT:key/KEY-ID', "
        "'aws:arn:aws:kms:REGION:ACCOUNT:alias/NAME' or 'aws:alias/NAME'"
    )


class AwsKMS:
    """KEKs in AWS KMS: ids ``aws:<key ARN>``, ``aws:<alias ARN>`` or ``aws:alias/NAME``.

    Args:
        region: Region of ``alias/NAME`` ids and of ARNs' clients when not told by the ARN
            (default: the session's region, e.g. ``AWS_REGION``).
        endpoint_url: Another endpoint (a VPC endpoint, FIPS endpoint, or a test server).
        session: A ``boto3.Session`` with the credentials to use, e.g. from STS AssumeRole
            into the customer's account (default: a new session, boto3's credential chain).
        client: A ready boto3 KMS client, used for every call: its own botocore retry and
            timeout settings apply, ``session`` and ``endpoint_url`` are ignored, and
            ``timeout`` only bounds the retry budget.
        retries: Backoff on throttling, 5xx, timeouts and connection errors.
        timeout: Seconds to connect and to read, per attempt; a call gives up within
            2 x ``timeout`` when AWS cannot be reached.
        default_key: KEK for tenants created without ``kek=``, e.g. ``"alias/keycustody"``.
        deletion_window_days: Waiting period (7-30 days) of the deletions that erasure
            phase 2 schedules (AWS's own default is 30).

    Raises:
        ConfigError: boto3 is missing, or an argument is invalid.
    """

    prefix: ClassVar[str] = "aws"

    def __init__(
        self,
        region: str | None = None,
        *,
        endpoint_url: str | None = None,
        session: Any = None,
        client: Any = None,
        retries: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        timeout: float = 10.0,
        default_key: str | None = None,
        deletion_window_days: int = 30,
    ) -> None:
        if not timeout > 0:
            raise ConfigError("AwsKMS timeout must be > 0 seconds")
        if not 7 <= deletion_window_days <= 30:
            raise ConfigError("AwsKMS deletion_window_days must be 7 to 30 (AWS's limits)")
        self.deletion_window_days = deletion_window_days
        self._sdk = awssdk.load("AwsKMS")
        self._region = region
        self._endpoint_url = endpoint_url
        self._session = session
        self._client = client
        self.timeout = float(timeout)
        self.retries = retries
        self._policy = replace(retries, total_timeout=min(retries.total_timeout, self.timeout))
        self._default = _parse(default_key).key_id if default_key is not None else None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = f", endpoint_url={self._endpoint_url!r}" if self._endpoint_url else ""
        return f"AwsKMS(region={self._region!r}{where})"

    # -- clients --------------------------------------------------------------------------

    def _default_region(self) -> str | None:
        if self._region is None and self._client is None:
            with self._lock:
                if self._session is None:
                    self._session = self._sdk.boto3.session.Session()
                region: str | None = self._session.region_name
            return region
        return self._region

    def _client_for(self, region: str | None) -> Any:
        if self._client is not None:
            client_region = getattr(getattr(self._client, "meta", None), "region_name", None)
            if region and client_region and region != client_region:
                raise ConfigError(
                    f"the KEK is in {region} but the boto3 client given to AwsKMS talks to "
                    f"{client_region}; pass AwsKMS(region=...) without client= to serve both"
                )
            return self._client
        region = region or self._default_region()
        if not region:
            raise ConfigError(
                "no AWS region: pass AwsKMS(region=...), set AWS_REGION, or use key ARNs"
            )
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                if self._session is None:
                    self._session = self._sdk.boto3.session.Session()
                config = self._sdk.Config(
                    connect_timeout=self.timeout,
                    read_timeout=self.timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    user_agent_extra="keycustody",
                )
                try:
                    client = self._session.client(
                        "kms", region_name=region, endpoint_url=self._endpoint_url, config=config
                    )
                except Exception as exc:  # botocore: bad region, endpoint or profile
                    raise ConfigError(
                        f"cannot create an AWS KMS client for {region}: {type(exc).__name__}: "
                        f"{clip(exc)}"
                    ) from None
                self._clients[region] = client
        return client

    # -- calls and errors -------------------------------------------------------------------

    def _is_retryable(self, exc: Exception) -> bool:
        errors = self._sdk.exc
        if isinstance(exc, errors.ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return code in _RETRYABLE_CODES or int(status) >= 500
        return isinstance(
            exc,
            (
                errors.EndpointConnectionError,
                errors.ConnectTimeoutError,
                errors.ReadTimeoutError,
                errors.ConnectionClosedError,
            ),
        )

    def _call(self, op: str, ref: _Ref, fn: Callable[[], T]) -> T:
        """Runs one KMS API call with retries; every failure leaves as a keycustody error."""
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
        where = f"AWS KMS {op} with KEK {ref.key_id!r}"
        if self._is_retryable(exc):
            what = (
                self._code(exc)
                if isinstance(exc, errors.ClientError)
                else f"{type(exc).__name__}: {clip(exc)}"
            )
            return KmsUnavailableError(
                f"{where} failed after {attempts} attempt(s) in {elapsed:.1f} s: {what}; "
                "the KMS is throttling or unreachable, retry later"
            )
        if isinstance(exc, errors.ClientError):
            code = self._code(exc)
            message = clip(exc.response.get("Error", {}).get("Message", ""))
            detail = f"{code}: {message}" if message else code
            if code in _REVOKED_CODES:
                return KeyRevokedError(
                    f"{where} was refused ({detail}): the KEK is disabled "
                    "or keycustody's access to it was revoked"
                )
            if code == "KMSInvalidStateException":
                return self._invalid_state(ref, where, detail)
            if code in _INTEGRITY_CODES:
                return IntegrityError(
                    f"{where} failed ({code}): the wrapped key was made by another KMS key, "
                    "was tampered with, or its encryption context does not match"
                )
            if code == "NotFoundException":
                return KmsKeyNotFoundError(
                    f"{where}: the key does not exist ({detail}); check the id, account and "
                    "region; a key deleted after its waiting period is gone for good"
                )
            return KmsError(f"{where} failed: {detail}")
        if isinstance(
            exc,
            (
                errors.NoCredentialsError,
                errors.PartialCredentialsError,
                errors.CredentialRetrievalError,
                errors.NoRegionError,
            ),
        ):
            return ConfigError(f"{where}: {type(exc).__name__}: {clip(exc)}")
        if isinstance(exc, errors.ValidationError | errors.ParamValidationError):
            # botocore's validation messages may quote parameter values: name the class only.
            return KmsError(f"{where}: boto3 rejected the request ({type(exc).__name__})")
        if isinstance(exc, errors.BotoCoreError):
            return KmsError(f"{where} failed: {type(exc).__name__}: {clip(exc)}")
        return KmsError(f"{where} failed unexpectedly ({type(exc).__name__})")

    @staticmethod
    def _code(exc: Any) -> str:
        return str(exc.response.get("Error", {}).get("Code") or "UnknownError")

    def _invalid_state(self, ref: _Ref, where: str, detail: str) -> KeyCustodyError:
        state = None
        with contextlib.suppress(Exception):  # one attempt, no retries: it refines the error
            client = self._client_for(ref.region)
            state = client.describe_key(KeyId=ref.target)["KeyMetadata"]["KeyState"]
        if state in _PENDING_DELETION or (state is None and "pending deletion" in detail.lower()):
            return ShreddedError(
                f"{where} was refused: the KMS key is scheduled for deletion ({detail}); "
                "data it protects is unreadable unless the deletion is cancelled in time"
            )
        return KeyRevokedError(
            f"{where} was refused: the KMS key is in state {state or 'unknown'} ({detail})"
        )

    # -- the provider contract --------------------------------------------------------------

    def default_key_id(self) -> KeyId:
        """The ``default_key`` given to the constructor.

        Raises:
            ConfigError: no default key was configured.
        """
        if self._default is None:
            raise ConfigError(
                "AwsKMS has no default KEK: pass kek='aws:...' when creating a tenant, or "
                "AwsKMS(default_key='alias/NAME')"
            )
        return self._default

    @staticmethod
    def _context(context: EncryptionContext) -> dict[str, str]:
        items = dict(context.items)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in items.items()):
            raise InvalidInputError("AWS KMS encryption context keys and values must be strings")
        return items

    def wrap(self, key_id: KeyId, key: KeyHandle, context: EncryptionContext) -> WrappedKey:
        """Encrypts ``key`` under KMS key ``key_id`` with ``context`` as encryption context.

        Raises:
            KeyRevokedError: the key is disabled, or access is denied.
            ShreddedError: the key is scheduled for deletion.
            KmsUnavailableError: throttled or unreachable after retries.
            KmsError: any other failure (KmsKeyNotFoundError: no such key).
        """
        ref = _parse(key_id)
        client = self._client_for(ref.region)
        encryption_context = self._context(context)
        secret = key.export_secret()
        try:
            response = self._call(
                "Encrypt",
                ref,
                lambda: client.encrypt(
                    KeyId=ref.target, Plaintext=secret, EncryptionContext=encryption_context
                ),
            )
        finally:
            secret[:] = bytes(len(secret))
        arn = response.get("KeyId")
        blob = response.get("CiphertextBlob")
        m = _KEY_ARN.fullmatch(arn) if isinstance(arn, str) else None
        if not isinstance(arn, str) or m is None:
            raise KmsError(f"AWS KMS Encrypt with KEK {ref.key_id!r} named no key ARN")
        if (ref.key_arn is not None and arn != ref.key_arn) or not ref.owns(m):
            raise KmsError(f"AWS KMS encrypted with {arn!r}, not with KEK {ref.key_id!r}")
        if not isinstance(blob, bytes | bytearray) or not blob:
            raise KmsError(f"AWS KMS Encrypt with KEK {ref.key_id!r} returned no ciphertext")
        return WrappedKey(ref.key_id, arn, bytes(blob))

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> KeyHandle:
        """Decrypts a key made by :meth:`wrap`, naming the KMS key that made it.

        Raises:
            IntegrityError: another key's ciphertext, tampering, a different context, or
                key material of the wrong size.
            KeyRevokedError: the key is disabled, or access is denied.
            ShreddedError: the key is scheduled for deletion.
            KmsUnavailableError: throttled or unreachable after retries.
            KmsError: any other failure (KmsKeyNotFoundError: no such key).
        """
        ref = _parse(wrapped.key_id)
        arn = wrapped.key_version
        m = _KEY_ARN.fullmatch(arn)
        if m is None:
            raise IntegrityError(
                f"the wrapped key of KEK {ref.key_id!r} names no AWS KMS key ARN as its version"
            )
        if ref.key_arn is not None and arn != ref.key_arn:
            raise IntegrityError(
                f"the wrapped key was made by another KMS key than {ref.key_id!r}"
            )
        if not ref.owns(m):
            raise IntegrityError(
                f"the wrapped key was made in another region or account than {ref.key_id!r}"
            )
        client = self._client_for(m.group(1))
        encryption_context = self._context(context)
        response: Mapping[str, Any] = self._call(
            "Decrypt",
            ref,
            lambda: client.decrypt(
                CiphertextBlob=wrapped.ciphertext,
                KeyId=arn,
                EncryptionContext=encryption_context,
            ),
        )
        if response.get("KeyId") != arn:
            raise IntegrityError(f"AWS KMS decrypted with another key than {arn!r}")
        plaintext = response.get("Plaintext")
        del response
        if not isinstance(plaintext, bytes | bytearray) or len(plaintext) not in _KEY_SIZES:
            size = len(plaintext) if isinstance(plaintext, bytes | bytearray) else 0
            raise IntegrityError(
                f"AWS KMS returned {size} bytes of key material for KEK {ref.key_id!r}; "
                "expected 64 (or 32)"
            )
        return KeyHandle.from_secret(plaintext)

    # -- key management (the customer's levers, and erasure phase 2) -----------------------

    def describe_key(self, key_id: str) -> dict[str, Any]:
        """State and deletion date of a KMS key (no key material).

        Returns:
            ``key_id``, ``arn``, ``aws_key_id``, ``state`` (enabled, disabled,
            destroy_scheduled, pending_import, unavailable, ...), ``aws_state`` (AWS's
            ``KeyState``), ``enabled``, ``deletion_date`` (UTC, or None),
            ``pending_window_days``, ``created_at``, ``key_spec``, ``key_manager``.
        """
        ref = _parse(key_id)
        client = self._client_for(ref.region)
        meta = self._call("DescribeKey", ref, lambda: client.describe_key(KeyId=ref.target))[
            "KeyMetadata"
        ]
        deletion = meta.get("DeletionDate")
        created = meta.get("CreationDate")
        return {
            "key_id": ref.key_id,
            "arn": meta.get("Arn"),
            "aws_key_id": meta.get("KeyId"),
            "state": _STATES.get(meta.get("KeyState", ""), str(meta.get("KeyState")).lower()),
            "aws_state": meta.get("KeyState"),
            "enabled": bool(meta.get("Enabled")),
            "deletion_date": deletion.astimezone(UTC) if isinstance(deletion, datetime) else None,
            "pending_window_days": meta.get("PendingDeletionWindowInDays"),
            "created_at": created.astimezone(UTC) if isinstance(created, datetime) else None,
            "key_spec": meta.get("KeySpec"),
            "key_manager": meta.get("KeyManager"),
        }

    def _aws_key_id(self, ref: _Ref) -> str:
        """The bare key id that key-management calls take (not an alias)."""
        return str(self.describe_key(ref.key_id)["aws_key_id"])

    def disable_key(self, key_id: str) -> None:
        """Disables the KMS key: wraps and unwraps fail with KeyRevokedError until enabled."""
        ref = _parse(key_id)
        client, target = self._client_for(ref.region), self._aws_key_id(ref)
        self._call("DisableKey", ref, lambda: client.disable_key(KeyId=target))

    def enable_key(self, key_id: str) -> None:
        """Enables a disabled KMS key."""
        ref = _parse(key_id)
        client, target = self._client_for(ref.region), self._aws_key_id(ref)
        self._call("EnableKey", ref, lambda: client.enable_key(KeyId=target))

    def schedule_key_deletion(self, key_id: str, pending_days: int = 7) -> datetime:
        """Schedules deletion of the whole KMS key, every key material it ever had.

        AWS refuses to decrypt with the key at once and deletes it after ``pending_days``
        (7-30); until then :meth:`cancel_key_deletion` can undo it. Move every tenant off the
        key first (``vault.rotate_kek``): this is irreversible after the deletion date.

        Returns:
            The deletion date (UTC).
        """
        if not 7 <= pending_days <= 30:
            raise InvalidInputError("AWS KMS deletion waiting periods are 7 to 30 days")
        ref = _parse(key_id)
        client, target = self._client_for(ref.region), self._aws_key_id(ref)
        response = self._call(
            "ScheduleKeyDeletion",
            ref,
            lambda: client.schedule_key_deletion(KeyId=target, PendingWindowInDays=pending_days),
        )
        deletion = response.get("DeletionDate")
        if not isinstance(deletion, datetime):
            raise KmsError(f"AWS KMS ScheduleKeyDeletion of {ref.key_id!r} named no date")
        return deletion.astimezone(UTC)

    def cancel_key_deletion(self, key_id: str, *, enable: bool = True) -> None:
        """Cancels a scheduled deletion. AWS leaves the key disabled; ``enable`` re-enables it."""
        ref = _parse(key_id)
        client, target = self._client_for(ref.region), self._aws_key_id(ref)
        self._call("CancelKeyDeletion", ref, lambda: client.cancel_key_deletion(KeyId=target))
        if enable:
            self._call("EnableKey", ref, lambda: client.enable_key(KeyId=target))

    # -- erasure phase 2: the KeyDestroyer contract -----------------------------------------

    def key_of(self, key_id: str, version: str) -> KeyId:
        """``aws:<key ARN>`` of the KMS key that made a wrap (its recorded ``version`` is that
        ARN); with no version, of the key ``key_id`` names now (an alias: its target)."""
        ref = _parse(key_id)
        if version:
            m = _KEY_ARN.fullmatch(version)
            if m is None or not ref.owns(m):
                raise IntegrityError(f"the wrap of KEK {ref.key_id!r} names no key ARN of it")
            return KeyId(f"{self.prefix}:{version}")
        if ref.key_arn is not None:
            return ref.key_id
        return KeyId(f"{self.prefix}:{self.describe_key(key_id)['arn']}")

    def destruction_status(self, key_id: str) -> Destruction:
        """DescribeKey: ``PendingDeletion`` is scheduled (with AWS's DeletionDate);
        ``NotFoundException`` for a key ARN is deleted; any other state is not scheduled."""
        try:
            described = self.describe_key(key_id)
        except KmsKeyNotFoundError:
            return Destruction(
                key_id, DESTROYED, None, "DescribeKey: NotFoundException (the key was deleted)"
            )
        if described["state"] == "destroy_scheduled":
            date = described["deletion_date"]
            return Destruction(
                key_id,
                DESTROY_SCHEDULED,
                date,
                f"KeyState {described['aws_state']}, DeletionDate {_iso(date)}",
            )
        return Destruction(key_id, NOT_SCHEDULED, None, f"KeyState {described['aws_state']}")

    def schedule_destruction(self, key_id: str) -> Destruction:
        """ScheduleKeyDeletion with ``deletion_window_days`` (the key must be a key ARN, as
        :meth:`key_of` returns). A key already pending deletion or deleted reports that."""
        if _parse(key_id).key_arn is None:
            raise InvalidInputError("schedule the deletion of a key ARN, not of an alias")
        status = self.destruction_status(key_id)
        if status.state != NOT_SCHEDULED:
            return status
        date = self.schedule_key_deletion(key_id, self.deletion_window_days)
        return Destruction(
            key_id,
            DESTROY_SCHEDULED,
            date,
            f"ScheduleKeyDeletion(PendingWindowInDays={self.deletion_window_days}): "
            f"DeletionDate {_iso(date)}",
        )

    def cancel_destruction(self, key_id: str) -> Destruction:
        """CancelKeyDeletion; AWS leaves the key disabled (enable it to read a backup)."""
        status = self.destruction_status(key_id)
        if status.state == DESTROYED:
            raise KmsError(f"the KMS key {key_id!r} is already deleted; nothing to cancel")
        if status.state == DESTROY_SCHEDULED:
            self.cancel_key_deletion(key_id, enable=False)
        return Destruction(
            key_id, NOT_SCHEDULED, None, "CancelKeyDeletion: the key is back, disabled"
        )


def _iso(ts: datetime | None) -> str:
    return "-" if ts is None else ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
