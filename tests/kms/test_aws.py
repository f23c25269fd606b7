"""AwsKMS over real HTTP: boto3 -> the AWS-faithful test proxy -> moto's KMS server.

No real AWS here: moto's server stands in for the KMS API, with dummy credentials from the
environment, and the proxy (tests/kms/conftest.py) answers as AWS documents where moto does
not (disabled keys, keys pending deletion, IncorrectKeyException), injects throttling, 5xx
and hangs, and counts the attempts that reach it.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

import boto3
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
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
    ShreddedError,
)
from keycustody.kms.aws import AwsKMS
from keycustody.kms.base import KmsProvider
from keycustody.kms.local import LocalKMS
from keycustody.kms.retry import KmsKeyNotFoundError, RetryPolicy
from keycustody.storage.models import RecordRow, ScopeKeyRow, ScopeRow
from keycustody.types import EncryptionContext, KeyId, WrappedKey
from vaults import vault_opener

REGION = "eu-west-1"  # the conftest's moto region (fixture aws_region)
FAST_RETRIES = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05, total_timeout=10.0)
CTX = EncryptionContext(
    {"keycustody": "scope-key/v1", "vault": "v-1", "scope": "ab", "version": "1"}
)
OTHER_CTX = EncryptionContext({**CTX.items, "version": "2"})
NewKey = Callable[..., KeyId]


class KmsProxy(Protocol):
    """The conftest's proxy in front of moto (conftest modules are not importable by name)."""

    calls: Counter[str]

    @property
    def url(self) -> str: ...
    def fail_next(self, n: int, kind: str = ...) -> None: ...
    def hang(self) -> None: ...
    def reset(self) -> None: ...
    def tamper_next_decrypt(self, plaintext: bytes) -> None: ...


@pytest.fixture(autouse=True)
def _region_matches(aws_region: str) -> None:
    assert aws_region == REGION


def arn_of(key_id: str) -> str:
    return key_id.removeprefix("aws:")


@pytest.fixture
def vault_at(tmp_path: Path, aws_kms: AwsKMS) -> Iterator[Callable[..., kc.Vault]]:
    """Opens vaults on one SQLite file with AwsKMS, or the AwsKMS given (and LocalKMS for the
    audit key)."""
    local = LocalKMS(tmp_path / "local-keys")
    with vault_opener(f"sqlite:///{tmp_path / 'ctx.db'}", aws_kms, local) as open_vault:
        yield open_vault


def row_counts(db: Path) -> dict[str, int]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with Session(engine) as s:
            return {
                model.__tablename__: s.scalar(select(func.count()).select_from(model)) or 0
                for model in (ScopeRow, ScopeKeyRow, RecordRow)
            }
    finally:
        engine.dispose()


# -- wrap / unwrap ---------------------------------------------------------------------------


def test_is_a_kms_provider(aws_kms: AwsKMS) -> None:
    assert isinstance(aws_kms, KmsProvider)
    assert AwsKMS.prefix == "aws"


def test_round_trip_records_the_key_arn(aws_kms: AwsKMS, new_aws_key: NewKey) -> None:
    key_id = new_aws_key()
    key = KeyHandle.generate()
    wrapped = aws_kms.wrap(key_id, key, CTX)
    assert wrapped.key_id == key_id
    assert wrapped.key_version == arn_of(key_id)
    assert key.export_secret() not in wrapped.ciphertext
    assert aws_kms.unwrap(wrapped, CTX).export_secret() == key.export_secret()


def test_alias_wraps_record_the_target_arn(
    aws_kms: AwsKMS, new_aws_key: NewKey, aws_admin: Any
) -> None:
    alias = f"kc-{time.monotonic_ns()}"
    key_id = new_aws_key(alias)
    assert key_id == f"aws:alias/{alias}"
    target = aws_admin.describe_key(KeyId=f"alias/{alias}")["KeyMetadata"]["Arn"]
    key = KeyHandle.generate()
    wrapped = aws_kms.wrap(key_id, key, CTX)
    assert (wrapped.key_id, wrapped.key_version) == (key_id, target)
    assert aws_kms.unwrap(wrapped, CTX).export_secret() == key.export_secret()


def test_repointed_alias_keeps_old_wraps_readable(
    aws_kms: AwsKMS, new_aws_key: NewKey, aws_admin: Any
) -> None:
    """AWS's manual rotation points the alias at a new key; old wraps name their own key."""
    alias = f"kc-{time.monotonic_ns()}"
    key_id = new_aws_key(alias)
    old = aws_kms.wrap(key_id, KeyHandle.generate(), CTX)
    new_arn = arn_of(new_aws_key())
    aws_admin.update_alias(AliasName=f"alias/{alias}", TargetKeyId=new_arn)

    aws_kms.unwrap(old, CTX)
    assert aws_kms.wrap(key_id, KeyHandle.generate(), CTX).key_version == new_arn


def test_encryption_context_is_bound(aws_kms: AwsKMS, new_aws_key: NewKey) -> None:
    wrapped = aws_kms.wrap(new_aws_key(), KeyHandle.generate(), CTX)
    with pytest.raises(IntegrityError, match="encryption context"):
        aws_kms.unwrap(wrapped, OTHER_CTX)
    with pytest.raises(IntegrityError):
        aws_kms.unwrap(wrapped, EncryptionContext({}))


def test_ciphertext_of_another_key_is_refused(aws_kms: AwsKMS, new_aws_key: NewKey) -> None:
    a, b = new_aws_key(), new_aws_key()
    wrapped = aws_kms.wrap(a, KeyHandle.generate(), CTX)
    # The stored version still names key A: refused before any call.
    with pytest.raises(IntegrityError, match="another KMS key"):
        aws_kms.unwrap(WrappedKey(b, wrapped.key_version, wrapped.ciphertext), CTX)
    # Relabelled as key B throughout: Decrypt names B, AWS answers IncorrectKeyException.
    with pytest.raises(IntegrityError, match="IncorrectKeyException"):
        aws_kms.unwrap(WrappedKey(b, arn_of(b), wrapped.ciphertext), CTX)


@pytest.mark.parametrize(
    "version",
    ["", "1", "alias/x", "arn:aws:kms:us-east-1:123456789012:key/0000"],
)
def test_bad_stored_version_is_an_integrity_error(
    aws_kms: AwsKMS, new_aws_key: NewKey, kms_proxy: KmsProxy, version: str
) -> None:
    key_id = new_aws_key()
    wrapped = aws_kms.wrap(key_id, KeyHandle.generate(), CTX)
    kms_proxy.reset()
    with pytest.raises(IntegrityError):
        aws_kms.unwrap(WrappedKey(key_id, version, wrapped.ciphertext), CTX)
    assert kms_proxy.calls["Decrypt"] == 0


def test_tampered_ciphertext_is_an_integrity_error(aws_kms: AwsKMS, new_aws_key: NewKey) -> None:
    wrapped = aws_kms.wrap(new_aws_key(), KeyHandle.generate(), CTX)
    flipped = bytearray(wrapped.ciphertext)
    flipped[-1] ^= 1
    with pytest.raises(IntegrityError):
        aws_kms.unwrap(WrappedKey(wrapped.key_id, wrapped.key_version, bytes(flipped)), CTX)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 63, 65, 128])
def test_wrong_size_plaintext_from_kms_is_rejected(
    aws_kms: AwsKMS, new_aws_key: NewKey, kms_proxy: KmsProxy, size: int
) -> None:
    wrapped = aws_kms.wrap(new_aws_key(), KeyHandle.generate(), CTX)
    kms_proxy.tamper_next_decrypt(b"\x42" * size)
    with pytest.raises(IntegrityError, match=f"returned {size} bytes"):
        aws_kms.unwrap(wrapped, CTX)


def test_unknown_key_is_not_found(aws_kms: AwsKMS) -> None:
    missing = KeyId(
        f"aws:arn:aws:kms:{REGION}:123456789012:key/{'0' * 8}-0000-0000-0000-{'0' * 12}"
    )
    with pytest.raises(KmsKeyNotFoundError) as info:
        aws_kms.wrap(missing, KeyHandle.generate(), CTX)
    assert isinstance(info.value, KmsError)
    assert isinstance(info.value, NotFoundError)
    assert "NotFoundException" in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        "aws:",
        "aws:1234abcd-12ab-34cd-56ef-1234567890ab",
        "aws:arn:aws:s3:::bucket",
        "aws:arn:aws:kms:eu-west-1:123:key/x",
        "aws:alias/",
        "aws:alias/a b",
    ],
)
def test_invalid_key_ids_are_config_errors(aws_kms: AwsKMS, bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid AWS KMS key id"):
        aws_kms.wrap(KeyId(bad), KeyHandle.generate(), CTX)


def test_secret_export_is_wiped_after_success_and_failure(
    aws_kms: AwsKMS, new_aws_key: NewKey, kms_proxy: KmsProxy
) -> None:
    exported: list[bytearray] = []

    class Spy:
        def export_secret(self) -> bytearray:
            exported.append(KeyHandle.generate().export_secret())
            return exported[-1]

    key_id = new_aws_key()
    aws_kms.wrap(key_id, cast(KeyHandle, Spy()), CTX)
    kms_proxy.fail_next(1, "denied")
    with pytest.raises(KeyRevokedError):
        aws_kms.wrap(key_id, cast(KeyHandle, Spy()), CTX)
    assert len(exported) == 2
    assert all(buf == bytearray(64) for buf in exported)


# -- credentials, sessions, clients ------------------------------------------------------------


def test_session_from_sts_assume_role(
    moto_url: str, kms_proxy: KmsProxy, new_aws_key: NewKey
) -> None:
    """The usual cross-account setup: assume a role in the customer's account."""
    sts = boto3.client("sts", region_name=REGION, endpoint_url=moto_url)
    creds = sts.assume_role(
        RoleArn="arn:aws:iam::123456789012:role/keycustody", RoleSessionName="kc-test"
    )["Credentials"]
    session = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=REGION,
    )
    kms = AwsKMS(endpoint_url=kms_proxy.url, session=session)
    key = KeyHandle.generate()
    assert kms.unwrap(kms.wrap(new_aws_key(), key, CTX), CTX).export_secret() == (
        key.export_secret()
    )


def test_injected_client(kms_proxy: KmsProxy, new_aws_key: NewKey) -> None:
    client = boto3.client("kms", region_name=REGION, endpoint_url=kms_proxy.url)
    kms = AwsKMS(client=client)
    key = KeyHandle.generate()
    assert kms.unwrap(kms.wrap(new_aws_key(), key, CTX), CTX).export_secret() == (
        key.export_secret()
    )
    other_region = KeyId("aws:arn:aws:kms:us-east-2:123456789012:key/abcd")
    with pytest.raises(ConfigError, match="us-east-2"):
        kms.wrap(other_region, key, CTX)


def test_no_region_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError, match="no AWS region"):
        AwsKMS().wrap(KeyId("aws:alias/x"), KeyHandle.generate(), CTX)


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError, match=r"pip install 'keycustody\[aws\]'"):
        AwsKMS(REGION)


def test_default_key_id() -> None:
    with pytest.raises(ConfigError, match="default_key"):
        AwsKMS(REGION).default_key_id()
    assert AwsKMS(REGION, default_key="alias/kc").default_key_id() == "aws:alias/kc"
    assert AwsKMS(REGION, default_key="aws:alias/kc").default_key_id() == "aws:alias/kc"
    with pytest.raises(ConfigError):
        AwsKMS(REGION, default_key="kc")


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        AwsKMS(REGION, timeout=0)


def test_repr_names_no_secrets(aws_kms: AwsKMS) -> None:
    assert "testing" not in repr(aws_kms)
    assert repr(aws_kms).startswith("AwsKMS(region='eu-west-1'")


# -- retries, throttling, outages (T33, T34) ---------------------------------------------------


@pytest.mark.parametrize("kind", ["throttle", "internal", "dependency", "unavailable"])
def test_transient_errors_are_retried(
    aws_kms: AwsKMS, new_aws_key: NewKey, kms_proxy: KmsProxy, kind: str
) -> None:
    key_id = new_aws_key()
    kms_proxy.fail_next(3, kind)
    wrapped = aws_kms.wrap(key_id, KeyHandle.generate(), CTX)
    assert kms_proxy.calls["Encrypt"] == 4
    kms_proxy.fail_next(2, kind)
    aws_kms.unwrap(wrapped, CTX)
    assert kms_proxy.calls["Decrypt"] == 3


def test_persistent_throttling_gives_up_after_five_attempts(
    aws_kms: AwsKMS, new_aws_key: NewKey, kms_proxy: KmsProxy
) -> None:
    key_id = new_aws_key()
    kms_proxy.fail_next(100, "throttle")
    with pytest.raises(KmsUnavailableError, match=r"after 5 attempt\(s\).*ThrottlingException"):
        aws_kms.wrap(key_id, KeyHandle.generate(), CTX)
    assert kms_proxy.calls["Encrypt"] == 5


def test_access_denied_is_not_retried(
    aws_kms: AwsKMS, new_aws_key: NewKey, kms_proxy: KmsProxy
) -> None:
    key_id = new_aws_key()
    kms_proxy.fail_next(1, "denied")
    with pytest.raises(KeyRevokedError, match="AccessDeniedException"):
        aws_kms.wrap(key_id, KeyHandle.generate(), CTX)
    assert kms_proxy.calls["Encrypt"] == 1


def test_hanging_kms_fails_within_twice_the_timeout(
    kms_proxy: KmsProxy, new_aws_key: NewKey
) -> None:
    key_id = new_aws_key()
    timeout = 0.5
    kms = AwsKMS(REGION, endpoint_url=kms_proxy.url, timeout=timeout)
    for attempt in range(5):  # a warm process: boto3's client is built, moto has answered
        try:
            kms.wrap(key_id, KeyHandle.generate(), CTX)
            break
        except KmsUnavailableError:  # a busy machine: moto took longer than the timeout
            if attempt == 4:
                raise
    kms_proxy.hang()
    start = time.monotonic()
    with pytest.raises(KmsUnavailableError, match="ReadTimeout"):
        kms.wrap(key_id, KeyHandle.generate(), CTX)
    assert time.monotonic() - start <= 2 * timeout


def test_refused_connection_is_retried_then_unavailable(dead_endpoint: str) -> None:
    kms = AwsKMS(REGION, endpoint_url=dead_endpoint, retries=FAST_RETRIES, timeout=1.0)
    kms._client_for(REGION)  # build boto3's client first: only the calls are timed
    start = time.monotonic()
    with pytest.raises(KmsUnavailableError, match=r"after 5 attempt\(s\).*Could not connect"):
        kms.wrap(KeyId(f"aws:alias/nothing-{time.monotonic_ns()}"), KeyHandle.generate(), CTX)
    assert time.monotonic() - start <= 2 * 1.0


def test_default_policy_budget_is_capped_by_the_timeout() -> None:
    kms = AwsKMS(REGION, timeout=3.0, retries=RetryPolicy(total_timeout=10.0))
    assert kms._policy.total_timeout == 3.0
    assert kms._policy.max_attempts == 5


# -- through a real Vault ------------------------------------------------------------------------


def test_vault_round_trip_and_cold_read(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, kms_proxy: KmsProxy
) -> None:
    key_id = new_aws_key()
    vault = vault_at()
    acme = vault.scope("acme", kek=key_id, create=True)
    acme.put_many([(f"f{i}.py", b"x = %d\n" % i) for i in range(50)])
    assert kms_proxy.calls["Encrypt"] == 1  # one scope key version, one KMS wrap

    cold = vault_at()  # another process: empty cache
    assert cold.scope("acme").get("f7.py") == b"x = 7\n"
    assert cold.scope("acme").get_many(["f1.py", "f2.py"]) == {
        "f1.py": b"x = 1\n",
        "f2.py": b"x = 2\n",
    }
    assert kms_proxy.calls["Decrypt"] == 1  # one unwrap, then cached


def test_default_key_is_used_for_new_tenants(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, kms_proxy: KmsProxy, aws_admin: Any
) -> None:
    alias = f"kc-default-{time.monotonic_ns()}"
    new_aws_key(alias)
    kms = AwsKMS(REGION, endpoint_url=kms_proxy.url, default_key=f"alias/{alias}")
    vault = vault_at(kms)
    vault.scope("beta", create=True).put("a", b"1")
    assert vault.scope("beta").get("a") == b"1"


def test_vault_rotate_kek_between_aws_keys(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, aws_kms: AwsKMS
) -> None:
    old, new = new_aws_key(), new_aws_key()
    vault = vault_at()
    acme = vault.scope("acme", kek=old, create=True)
    acme.put("a.py", b"alpha")
    acme.rotate_key()
    acme.put("b.py", b"beta")

    assert vault.rotate_kek("acme", new) == 2
    aws_kms.disable_key(old)  # nothing depends on the old key any more
    cold = vault_at(cache_ttl=0)
    assert cold.scope("acme").get("a.py") == b"alpha"
    assert cold.scope("acme").get("b.py") == b"beta"
    versions = cold.scope("acme").keys()
    assert {v.wrapped_by for v in versions} == {f"kek:{new}#{arn_of(new)}"}


def test_disabled_key_is_refused_after_the_cache_ttl(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, aws_kms: AwsKMS
) -> None:
    key_id = new_aws_key()
    ttl = 0.5
    vault = vault_at(cache_ttl=ttl)
    acme = vault.scope("acme", kek=key_id, create=True)
    acme.put("a.py", b"alpha")
    aws_kms.disable_key(key_id)
    assert aws_kms.describe_key(key_id)["state"] == "disabled"
    assert acme.get("a.py") == b"alpha"  # still cached

    time.sleep(ttl + 0.1)
    with pytest.raises(KeyRevokedError, match="DisabledException"):
        acme.get("a.py")
    with pytest.raises(KeyRevokedError):
        vault.scope("other", kek=key_id, create=True)

    aws_kms.enable_key(key_id)
    assert acme.get("a.py") == b"alpha"


def test_outage_leaves_nothing_half_written(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, kms_proxy: KmsProxy, tmp_path: Path
) -> None:
    key_id = new_aws_key()
    timeout = 0.5
    kms = AwsKMS(REGION, endpoint_url=kms_proxy.url, timeout=timeout, retries=FAST_RETRIES)
    vault = vault_at(kms, cache_ttl=0)
    vault.scope("acme", kek=key_id, create=True).put("a.py", b"alpha")
    before = row_counts(tmp_path / "ctx.db")

    kms_proxy.hang()
    for action in (
        lambda: vault.scope("newco", kek=key_id, create=True),
        lambda: vault.scope("acme").put("b.py", b"beta"),
        lambda: vault.scope("acme").get("a.py"),
    ):
        start = time.monotonic()
        with pytest.raises(KmsUnavailableError):
            action()
        # The documented bound (2 x timeout), plus slack for a busy machine's scheduling.
        assert time.monotonic() - start <= 2 * timeout + 0.25
    kms_proxy.reset()

    assert "newco" not in vault.scopes()
    assert row_counts(tmp_path / "ctx.db") == before
    assert vault.scope("acme").get("a.py") == b"alpha"


def test_throttled_kms_changes_no_rows(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, kms_proxy: KmsProxy, tmp_path: Path
) -> None:
    """T33: throttling some calls is absorbed; throttling all of them changes nothing."""
    key_id = new_aws_key()
    vault = vault_at(cache_ttl=0)
    kms_proxy.fail_next(2, "throttle")
    acme = vault.scope("acme", kek=key_id, create=True)
    for i in range(5):
        kms_proxy.fail_next(i % 3, "throttle")
        acme.put(f"f{i}", b"data")
    before = row_counts(tmp_path / "ctx.db")

    kms_proxy.fail_next(1000, "throttle")
    with pytest.raises(KmsUnavailableError):
        vault.scope("newco", kek=key_id, create=True)
    with pytest.raises(KmsUnavailableError):
        acme.put("late", b"x")
    kms_proxy.reset()
    assert row_counts(tmp_path / "ctx.db") == before


# -- deletion (T29) ------------------------------------------------------------------------------


def test_schedule_key_deletion_shreds_at_once_and_cancel_restores(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, aws_kms: AwsKMS
) -> None:
    key_id = new_aws_key()
    vault = vault_at(cache_ttl=0)
    vault.scope("acme", kek=key_id, create=True).put("a.py", b"alpha")

    before = datetime.now(UTC)
    deletion = aws_kms.schedule_key_deletion(key_id, pending_days=7)
    assert deletion.tzinfo is not None
    assert before + timedelta(days=7) - timedelta(minutes=5) <= deletion
    assert deletion <= datetime.now(UTC) + timedelta(days=7, minutes=5)
    described = aws_kms.describe_key(key_id)
    assert described["state"] == "destroy_scheduled"
    assert described["aws_state"] == "PendingDeletion"
    assert described["deletion_date"] == deletion
    assert described["enabled"] is False

    with pytest.raises(ShreddedError, match="scheduled for deletion"):
        vault.scope("acme").get("a.py")
    with pytest.raises(ShreddedError):
        aws_kms.wrap(key_id, KeyHandle.generate(), CTX)

    aws_kms.cancel_key_deletion(key_id)
    assert aws_kms.describe_key(key_id)["state"] == "enabled"
    assert vault.scope("acme").get("a.py") == b"alpha"


def test_cancel_without_enable_leaves_the_key_disabled(
    aws_kms: AwsKMS, new_aws_key: NewKey
) -> None:
    key_id = new_aws_key()
    wrapped = aws_kms.wrap(key_id, KeyHandle.generate(), CTX)
    aws_kms.schedule_key_deletion(key_id, pending_days=30)
    aws_kms.cancel_key_deletion(key_id, enable=False)
    assert aws_kms.describe_key(key_id)["state"] == "disabled"
    with pytest.raises(KeyRevokedError):
        aws_kms.unwrap(wrapped, CTX)


@pytest.mark.parametrize("days", [0, 6, 31])
def test_deletion_window_is_checked(aws_kms: AwsKMS, days: int) -> None:
    with pytest.raises(kc.InvalidInputError):
        aws_kms.schedule_key_deletion("aws:alias/x", pending_days=days)


def test_describe_key_by_alias(aws_kms: AwsKMS, new_aws_key: NewKey, aws_admin: Any) -> None:
    alias = f"kc-{time.monotonic_ns()}"
    key_id = new_aws_key(alias)
    described = aws_kms.describe_key(key_id)
    assert described["key_id"] == key_id
    assert described["arn"] == aws_admin.describe_key(KeyId=f"alias/{alias}")["KeyMetadata"]["Arn"]
    assert described["state"] == "enabled"
    assert described["deletion_date"] is None


def test_no_rotate_or_destroy_of_single_versions(aws_kms: AwsKMS) -> None:
    """AWS cannot destroy one version of a key: phase 2 schedules deletion of a whole key."""
    assert not hasattr(aws_kms, "destroy_key")
    assert not hasattr(aws_kms, "rotate_key")


# -- error hygiene -------------------------------------------------------------------------------


def _spellings(secret: bytes) -> list[bytes]:
    return [secret, secret[:16], secret[-16:], secret.hex().encode(), base64.b64encode(secret)]


def test_errors_carry_no_key_bytes_and_no_sdk_exception(
    aws_kms: AwsKMS, new_aws_key: NewKey, kms_proxy: KmsProxy
) -> None:
    key_id = new_aws_key()
    key = KeyHandle.generate()
    secret = bytes(key.export_secret())
    wrapped = aws_kms.wrap(key_id, key, CTX)
    errors: list[KeyCustodyError] = []

    def capture(fn: Callable[[], object]) -> None:
        try:
            fn()
        except KeyCustodyError as exc:
            errors.append(exc)
        else:
            pytest.fail("expected an error")

    capture(lambda: aws_kms.unwrap(wrapped, OTHER_CTX))
    kms_proxy.tamper_next_decrypt(secret[:40])
    capture(lambda: aws_kms.unwrap(wrapped, CTX))
    kms_proxy.fail_next(5, "throttle")
    capture(lambda: aws_kms.wrap(key_id, key, CTX))
    aws_kms.disable_key(key_id)
    capture(lambda: aws_kms.wrap(key_id, key, CTX))
    capture(lambda: aws_kms.unwrap(wrapped, CTX))
    aws_kms.enable_key(key_id)

    assert len(errors) == 5
    for exc in errors:
        text = (str(exc) + repr(exc)).encode()
        for needle in _spellings(secret):
            assert needle not in text
        assert exc.__cause__ is None
        assert exc.__context__ is None
    assert "ciphertext" not in repr(wrapped)


def test_no_sdk_exception_escapes_an_unexpected_failure(
    aws_kms: AwsKMS, new_aws_key: NewKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id = new_aws_key()
    client = aws_kms._client_for(REGION)

    def boom(**kwargs: object) -> None:
        raise RuntimeError("something inside boto3")

    monkeypatch.setattr(client, "encrypt", boom)
    with pytest.raises(KmsError, match="unexpectedly") as info:
        aws_kms.wrap(key_id, KeyHandle.generate(), CTX)
    assert info.value.__context__ is None


def test_alias_arn_of_another_account_is_refused(aws_kms: AwsKMS, new_aws_key: NewKey) -> None:
    wrapped = aws_kms.wrap(new_aws_key(), KeyHandle.generate(), CTX)
    elsewhere = KeyId(f"aws:arn:aws:kms:{REGION}:999999999999:alias/kc")
    with pytest.raises(IntegrityError, match="region or account"):
        aws_kms.unwrap(WrappedKey(elsewhere, wrapped.key_version, wrapped.ciphertext), CTX)


# -- erasure phase 2 with AWS's waiting period (T29) -------------------------------------------


class ClockProxy(KmsProxy, Protocol):
    def advance(self, delta: timedelta) -> None: ...


@pytest.fixture
def aws7(kms_proxy: KmsProxy) -> AwsKMS:
    """AwsKMS that schedules deletions with the shortest waiting period AWS allows."""
    return AwsKMS(
        REGION,
        endpoint_url=kms_proxy.url,
        retries=FAST_RETRIES,
        timeout=2.0,
        deletion_window_days=7,
    )


def test_phase_2_without_a_new_kek_says_what_is_needed_and_changes_nothing(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, aws7: AwsKMS, tmp_path: Path
) -> None:
    old = new_aws_key()
    vault = vault_at(aws7)
    fill_tenant(vault, old)
    certificate = vault.shred("acme/subjects/alice", reason="GDPR #29")
    before = row_counts(tmp_path / "ctx.db")
    with pytest.raises(ConfigError, match="new_keks") as info:
        vault.complete_erasures()
    assert "acme" in str(info.value) and "--new-kek" in str(info.value)
    assert "Nothing was changed" in str(info.value)
    with pytest.raises(ConfigError, match="is the KMS key that phase 2 must destroy"):
        vault.complete_erasures(new_keks={"acme": old})
    with pytest.raises(kc.InvalidInputError, match="nope"):
        vault.complete_erasures(new_keks={"acme": new_aws_key(), "nope": new_aws_key()})
    assert row_counts(tmp_path / "ctx.db") == before
    assert [c.phase2_status for c in vault.certificates()] == ["pending"]
    assert aws7.describe_key(old)["state"] == "enabled"
    assert vault.verify_certificate(certificate.document)[0]


def test_phase_2_schedules_deletion_of_the_old_key_and_confirms_after_the_date(
    vault_at: Callable[..., kc.Vault],
    new_aws_key: NewKey,
    aws7: AwsKMS,
    kms_proxy: ClockProxy,
    tmp_path: Path,
) -> None:
    """T29 on AWS: moto's server schedules the deletion (7 days); moto never deletes a key
    and its clock cannot move, so the confirmation after the date goes through the proxy's
    clock, which answers NotFoundException for the key as AWS does once it is deleted."""
    old, new = new_aws_key(), new_aws_key()
    vault = vault_at(aws7)
    data = fill_tenant(vault, old)
    backup = backup_url(tmp_path / "ctx.db", tmp_path / "backup")
    shredded = vault.shred("acme/subjects/alice", reason="GDPR #29")
    start = list(vault.audit.events())[-1].seq

    before = datetime.now(UTC)
    (scheduled,) = vault.complete_erasures(new_keks={"acme": new})
    phase2 = scheduled.document["when"]["phase2"]
    assert scheduled.id == shredded.id
    assert scheduled.phase2_status == phase2["status"] == "scheduled"
    assert phase2["confirmed_at"] is None and phase2["scheduled_at"]
    assert phase2["ancestors_rekeyed"] == ["acme/subjects", "acme"]
    assert phase2["tenants_moved"] == {"acme": new}
    (entry,) = phase2["destructions"]
    assert (entry["key"], entry["provider"], entry["state"]) == (old, "aws", "destroy_scheduled")
    described = aws7.describe_key(old)
    assert described["state"] == "destroy_scheduled"
    date = described["deletion_date"]
    assert before + timedelta(days=7, minutes=-5) <= date <= before + timedelta(days=7, minutes=5)
    iso = date.isoformat().replace("+00:00", "Z")
    assert entry["not_before_purge"] == phase2["not_before_purge"] == iso
    assert scheduled.not_before_purge == iso
    risk = " ".join(scheduled.document["residual_risk"])
    assert "scheduled, not confirmed" in risk and "CancelKeyDeletion" in risk
    assert vault.verify_certificate(scheduled.document)[0]
    assert vault.verify_certificate(shredded.document)[0]  # the phase-1 file still verifies
    events = list(vault.audit.events(since=start))
    (event,) = [e for e in events if e.action == "kek.destroy_schedule"]
    assert event.kms_key_id == old and iso in json.dumps(event.details_dict())
    assert "erasure.phase2" in [e.action for e in events]

    # The live vault reads every survivor under the new key, also from a cold start.
    cold = vault_at(aws7, cache_ttl=0)
    for path in ("acme", "acme/subjects/bob"):
        assert cold.scope(path).get_many(list(data[path])) == data[path]
    versions = cold.scope("acme").keys()
    assert {v.wrapped_by for v in versions if v.state != "DESTROYED"} == {
        f"kek:{new}#{arn_of(new)}"
    }
    # A backup from before the shred decrypts nothing at once: AWS refuses the old key.
    with kc.Vault.open(backup, kms=[aws7, LocalKMS(tmp_path / "local-keys")]) as old_copy:
        for path in data:
            with pytest.raises(ShreddedError, match="scheduled for deletion"):
                old_copy.scope(path).get_many(list(data[path]))

    # Before the date nothing changes; after it AWS has deleted the key: confirmed.
    assert vault.complete_erasures() == []
    kms_proxy.advance(timedelta(days=7, minutes=10))
    (confirmed,) = vault.complete_erasures()
    phase2 = confirmed.document["when"]["phase2"]
    assert confirmed.phase2_status == "confirmed"
    assert phase2["confirmed_at"] > phase2["scheduled_at"]
    assert phase2["destructions"][0]["state"] == "destroyed"
    assert "NotFoundException" in phase2["events"][-1]
    assert "Phase 2 confirmed" in " ".join(confirmed.document["residual_risk"])
    assert vault.verify_certificate(confirmed.document)[0]
    assert [e.kms_key_id for e in vault.audit.events() if e.action == "kek.destroy_confirm"] == [
        old
    ]
    assert vault.complete_erasures() == []
    assert vault.audit.verify().ok


def test_an_alias_pointed_at_a_new_key_needs_no_new_keks(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, aws7: AwsKMS, aws_admin: Any
) -> None:
    alias = f"kc-phase2-{time.monotonic_ns()}"
    kek = new_aws_key(alias)
    old_arn = aws7.describe_key(kek)["arn"]
    vault = vault_at(aws7)
    data = fill_tenant(vault, kek)
    vault.shred("acme/subjects/alice", reason="GDPR #30")
    new_arn = aws_admin.create_key(Description="acme KEK 2")["KeyMetadata"]["Arn"]
    aws_admin.update_alias(AliasName=f"alias/{alias}", TargetKeyId=new_arn)

    (certificate,) = vault.complete_erasures()
    assert certificate.phase2_status == "scheduled"
    assert [d["key"] for d in certificate.document["when"]["phase2"]["destructions"]] == [
        f"aws:{old_arn}"
    ]
    assert aws7.describe_key(f"aws:{old_arn}")["state"] == "destroy_scheduled"
    assert aws7.describe_key(kek)["state"] == "enabled"  # the alias's new target
    cold = vault_at(aws7, cache_ttl=0)
    assert (
        cold.scope("acme/subjects/bob").get_many(list(data["acme/subjects/bob"]))
        == (data["acme/subjects/bob"])
    )
    versions = cold.scope("acme").keys()
    assert {v.wrapped_by for v in versions if v.state != "DESTROYED"} == {f"kek:{kek}#{new_arn}"}


def test_cancel_is_audited_and_left_alone_until_resumed(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, aws7: AwsKMS
) -> None:
    old = new_aws_key()
    vault = vault_at(aws7)
    fill_tenant(vault, old)
    vault.shred("acme/subjects/alice", reason="GDPR #31")
    (scheduled,) = vault.complete_erasures(new_keks={old: new_aws_key()})

    (cancelled,) = vault.cancel_erasure(scheduled.id, reason="legal hold LH-7")
    assert cancelled.phase2_status == "cancelled"
    entry = cancelled.document["when"]["phase2"]["destructions"][0]
    assert entry["state"] == "cancelled" and entry["cancelled_at"]
    assert aws7.describe_key(old)["state"] == "disabled"  # AWS leaves it disabled
    assert "Phase 2 was cancelled" in " ".join(cancelled.document["residual_risk"])
    (event,) = [e for e in vault.audit.events() if e.action == "kek.destroy_cancel"]
    assert event.kms_key_id == old and event.details_dict()["reason"] == "legal hold LH-7"
    assert vault.verify_certificate(cancelled.document)[0]
    with pytest.raises(kc.InvalidInputError, match="only a scheduled phase 2"):
        vault.cancel_erasure(scheduled.id, reason="again")

    assert vault.complete_erasures() == []  # a cancellation is the customer's call
    (again,) = vault.complete_erasures(include_cancelled=True)
    assert again.phase2_status == "scheduled"
    assert aws7.describe_key(old)["state"] == "destroy_scheduled"


def test_a_cancellation_outside_keycustody_is_recorded(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, aws7: AwsKMS
) -> None:
    old = new_aws_key()
    vault = vault_at(aws7)
    fill_tenant(vault, old)
    vault.shred("acme/subjects/alice", reason="GDPR #32")
    vault.complete_erasures(new_keks={"acme": new_aws_key()})
    aws7.cancel_key_deletion(old)  # the customer, in the AWS console

    (certificate,) = vault.complete_erasures()
    assert certificate.phase2_status == "cancelled"
    (event,) = [e for e in vault.audit.events() if e.action == "kek.destroy_cancelled"]
    assert event.kms_key_id == old
    assert "outside keycustody" in event.details_dict()["observed"]
    assert vault.verify_certificate(certificate.document)[0]


def test_tenant_shred_with_destroy_kek_schedules_the_deletion(
    vault_at: Callable[..., kc.Vault], new_aws_key: NewKey, aws7: AwsKMS, kms_proxy: ClockProxy
) -> None:
    kek, other = new_aws_key(), new_aws_key()
    vault = vault_at(aws7)
    fill_tenant(vault, kek)
    vault.scope("beta", kek=other, create=True).put("b", b"beta")
    certificate = vault.shred("acme", reason="offboarding acme", destroy_kek=True)
    result = certificate.document["how"]["kek_destruction"]
    assert result["destroyed"] is False and result["destructions"][0]["key"] == kek
    assert certificate.phase2_status == "scheduled" and certificate.not_before_purge
    assert aws7.describe_key(kek)["state"] == "destroy_scheduled"
    assert aws7.describe_key(other)["state"] == "enabled"
    assert vault.verify_certificate(certificate.document)[0]
    assert vault.scope("beta").get("b") == b"beta"
    kms_proxy.advance(timedelta(days=8))
    (confirmed,) = vault.complete_erasures()
    assert confirmed.phase2_status == "confirmed"


def test_cli_erasures_complete_with_new_kek_shows_the_schedule_and_certificates_verify(
    new_aws_key: NewKey, kms_proxy: ClockProxy, tmp_path: Path, aws_env: None
) -> None:
    from typer.testing import CliRunner

    from keycustody.cli import app

    db, keys = f"sqlite:///{tmp_path / 'ctx.db'}", tmp_path / "local-keys"
    old, new = new_aws_key(), new_aws_key()
    provider = AwsKMS(REGION, endpoint_url=kms_proxy.url, retries=FAST_RETRIES)
    with kc.Vault.open(db, kms=[LocalKMS(keys), provider]) as vault:
        fill_tenant(vault, old)
        vault.shred("acme/subjects/alice", reason="GDPR #35").save(tmp_path / "phase1.json")
    env = {
        "KEYCUSTODY_DB": db,
        "KEYCUSTODY_KMS_DIR": str(keys),
        "KEYCUSTODY_KMS": "local,aws",
        "KEYCUSTODY_AWS_ENDPOINT": kms_proxy.url,
        "KEYCUSTODY_AWS_DELETION_DAYS": "7",
        "COLUMNS": "250",
    }

    def run(*args: str) -> Any:
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result

    missing = CliRunner().invoke(app, ["erasures", "complete"], env=env)
    assert missing.exit_code == 2 and "--new-kek acme=" in missing.output
    done = run("erasures", "complete", "--new-kek", f"acme={new}")
    assert "1 scheduled" in done.stdout and "ScheduleKeyDeletion" in done.stdout
    date = provider.describe_key(old)["deletion_date"].date().isoformat()
    assert date in done.stdout
    waiting = run("erasures", "complete")
    assert "still waiting for the KMS's waiting period" in waiting.stdout
    with kc.Vault.open(db, kms=[LocalKMS(keys), provider]) as vault:
        (certificate,) = vault.certificates()
    certificate.save(tmp_path / "phase2.json")
    for name in ("phase1.json", "phase2.json"):
        assert "certificate verified" in run("cert", "verify", str(tmp_path / name)).stdout
    kms_proxy.advance(timedelta(days=8))
    assert "phase 2 completed for 1 erasure" in run("erasures", "complete").stdout


def test_a_rerun_after_a_failed_schedule_needs_no_new_kek_again(
    vault_at: Callable[..., kc.Vault],
    new_aws_key: NewKey,
    aws7: AwsKMS,
    kms_proxy: KmsProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = new_aws_key(), new_aws_key()
    vault = vault_at(aws7)
    data = fill_tenant(vault, old)
    vault.shred("acme/subjects/alice", reason="GDPR #36")

    def outage(key_id: str) -> Any:
        raise KmsUnavailableError("injected: the KMS went away after the tenant moved")

    with monkeypatch.context() as patch:
        patch.setattr(aws7, "schedule_destruction", outage)
        with pytest.raises(KmsUnavailableError):
            vault.complete_erasures(new_keks={"acme": new})
    assert [c.phase2_status for c in vault.certificates()] == ["pending"]
    assert aws7.describe_key(old)["state"] == "enabled"
    assert not [e for e in vault.audit.events() if e.action.startswith("kek.destroy")]

    (certificate,) = vault.complete_erasures()  # the tenant is on the new key already
    assert certificate.phase2_status == "scheduled"
    assert [d["key"] for d in certificate.document["when"]["phase2"]["destructions"]] == [old]
    bob = data["acme/subjects/bob"]
    assert vault_at(aws7, cache_ttl=0).scope("acme/subjects/bob").get_many(list(bob)) == bob
