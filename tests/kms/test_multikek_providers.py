"""A tenant with KEKs in two different KMSs (issue #6: multi-cloud, disaster recovery):
LocalKMS with PKCS#11 (a real SoftHSM2 token) and AWS KMS (moto behind the AWS-faithful proxy)
with LocalKMS. One KMS failing leaves the tenant readable through the other (audited); phase 2
retires the KEKs of both (see tests/keys/test_multikek.py for the rest of the contract)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from softhsm import PIN, SoftHsm, require, softhsm

import keycustody as kc
from keycustody.errors import ConfigError
from keycustody.kms.aws import AwsKMS
from keycustody.kms.pkcs11 import Pkcs11KMS
from keycustody.types import KeyId

TOKEN = "kc-multikek"
DATA = {f"src/{i:02d}.py": b"print(%d)\n" % i for i in range(30)}


class KmsProxy(Protocol):
    """tests/kms/conftest.py's proxy (conftest modules are not importable by name)."""

    calls: Any

    def fail_next(self, n: int, kind: str = ...) -> None: ...
    def reset(self) -> None: ...


@pytest.fixture
def hsm(tmp_path: Path) -> Iterator[SoftHsm]:
    require()
    with softhsm(tmp_path / "softhsm") as h:
        h.init_token(TOKEN)
        yield h


@pytest.fixture
def p11(hsm: SoftHsm) -> Pkcs11KMS:
    return Pkcs11KMS(hsm.lib, TOKEN, PIN)


@pytest.fixture
def local(tmp_path: Path) -> kc.LocalKMS:
    return kc.LocalKMS(tmp_path / "local-keys")


@pytest.fixture
def vault_with(tmp_path: Path) -> Iterator[Callable[..., kc.Vault]]:
    opened: list[kc.Vault] = []

    def open_(providers: list[Any], **kwargs: Any) -> kc.Vault:
        vault = kc.Vault.open(f"sqlite:///{tmp_path / 'ctx.db'}", kms=providers, **kwargs)
        opened.append(vault)
        return vault

    yield open_
    for vault in opened:
        vault.close()


def failovers(vault: kc.Vault) -> list[dict[str, Any]]:
    return [e.details_dict() for e in vault.audit.events() if e.action == "kek.failover"]


def test_local_and_pkcs11_fail_over_and_phase2_retires_both(
    vault_with: Callable[..., kc.Vault], local: kc.LocalKMS, p11: Pkcs11KMS
) -> None:
    primary, dr = local.create_key("acme-kek"), p11.create_key("acme-dr")
    vault = vault_with([local, p11])
    acme = vault.scope("acme", kek=[primary, dr], create=True)
    acme.put_many(DATA.items())
    vault.scope("acme/subjects/alice", create=True).put("note", b"alice")
    vault.scope("acme/subjects/bob", create=True).put("note", b"bob")

    local.disable_key(primary)  # the LocalKMS is "down": the HSM serves
    cold = vault_with([local, p11], cache_ttl=0)
    assert cold.scope("acme").get_many(list(DATA)) == DATA
    assert cold.scope("acme/subjects/bob").get("note") == b"bob"
    first = failovers(vault)[0]
    assert first["used"] == f"{dr}#1"
    assert first["passed_over"][0]["reason"] == "KeyRevokedError"
    local.enable_key(primary)

    vault.shred("acme/subjects/alice", reason="GDPR Art.17 #7")
    [cert] = vault.complete_erasures()
    assert cert.phase2_status == "confirmed"
    events = cert.document["when"]["phase2"]["events"]
    assert f"{primary} version 1 destroyed" in events and f"{dr} version 1 destroyed" in events
    assert local.describe_key(primary)["versions"]["1"]["state"] == "destroyed"
    assert p11.describe_key(dr)["versions"]["1"]["state"] == "destroyed"
    assert p11.describe_key(dr)["versions"]["1"]["objects_on_token"] == 0

    # Each KMS alone still reads the survivors, under the KEKs' new versions.
    p11.disable_key(dr)
    assert (
        vault_with([local, p11], cache_ttl=0).scope("acme").get("src/01.py") == DATA["src/01.py"]
    )
    p11.enable_key(dr)
    local.disable_key(primary)
    again = vault_with([local, p11], cache_ttl=0)
    assert again.scope("acme/subjects/bob").get("note") == b"bob"
    assert vault.audit.verify().ok


def test_an_aws_outage_fails_over_to_the_local_dr_key(
    vault_with: Callable[..., kc.Vault],
    aws_kms: AwsKMS,
    new_aws_key: Callable[..., KeyId],
    kms_proxy: KmsProxy,
    local: kc.LocalKMS,
) -> None:
    primary, dr = new_aws_key(), local.create_key("acme-dr")
    vault = vault_with([aws_kms, local], cache_ttl=0)
    acme = vault.scope("acme", kek=[primary, dr], create=True)
    acme.put_many(DATA.items())

    kms_proxy.fail_next(1000, "unavailable")
    assert acme.get_many(list(DATA)) == DATA
    [event, *_] = failovers(vault)
    assert event["passed_over"][0]["kek"] == primary
    assert event["passed_over"][0]["reason"] == "KmsUnavailableError"
    assert event["used"] == f"{dr}#1"
    # Held back after the outage: the next unwraps go to the DR key without asking AWS.
    asked = sum(kms_proxy.calls.values())
    assert acme.get("src/05.py") == DATA["src/05.py"]
    assert sum(kms_proxy.calls.values()) == asked
    kms_proxy.reset()


def test_aws_phase2_moves_the_aws_kek_by_its_id_and_retires_the_local_one(
    vault_with: Callable[..., kc.Vault],
    aws_kms: AwsKMS,
    new_aws_key: Callable[..., KeyId],
    local: kc.LocalKMS,
) -> None:
    old, new, dr = new_aws_key(), new_aws_key(), local.create_key("acme-dr")
    vault = vault_with([aws_kms, local])
    acme = vault.scope("acme", kek=[old, dr], create=True)
    acme.put_many(DATA.items())
    vault.scope("acme/subjects/alice", create=True).put("note", b"alice")
    vault.shred("acme/subjects/alice", reason="GDPR Art.17 #8")

    with pytest.raises(ConfigError, match="new_keks") as info:
        vault.complete_erasures()
    assert "acme" in str(info.value)
    with pytest.raises(ConfigError, match="already protects"):
        vault.complete_erasures(new_keks={old: dr})
    assert vault.keks("acme") == [old, dr]

    [cert] = vault.complete_erasures(new_keks={old: new})
    phase2 = cert.document["when"]["phase2"]
    assert cert.phase2_status == "scheduled"
    assert phase2["tenants_moved"] == {"acme": new}
    [entry] = phase2["destructions"]
    assert (entry["key"], entry["state"]) == (old, "destroy_scheduled")
    assert f"{dr} version 1 destroyed" in phase2["events"]
    assert vault.keks("acme") == [new, dr]
    assert local.describe_key(dr)["versions"]["1"]["state"] == "destroyed"
    cold = vault_with([aws_kms, local], cache_ttl=0)
    assert cold.scope("acme").get_many(list(DATA)) == DATA
    assert failovers(cold) == []  # the new AWS key is the primary and works
