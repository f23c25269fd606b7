"""Several KEKs per tenant (issue #6: multi-cloud, disaster recovery).

A tenant's scope key versions are wrapped under every KEK of its list; any one unwraps them,
the primary first. Here with two LocalKMS folders (``local:`` and ``dr:``, a second LocalKMS
under its own prefix, as a second KMS would be); tests/kms/test_multikek_providers.py does the
same across LocalKMS, PKCS#11 (SoftHSM2) and AWS KMS (moto).

Decisions the tests pin down:

- Failover: a KEK that fails for any reason (KMS error or outage, disabled, destroyed, no
  provider configured in this process, or a wrap that does not authenticate) is passed over
  for the next KEK; the read succeeds and a ``kek.failover`` audit event names the KEK passed
  over and why. Only when every KEK fails does the read fail, with the primary's error type.
- Tampering: a tampered wrap fails over too (the other wrap is authenticated by its own KMS,
  so the key it yields is genuine), but never silently: the ``kek.failover`` event has outcome
  ``failed`` and ``tampered_wrap: true``, and the custody report turns red. If the event cannot
  be written the read raises AuditError and the key leaves the cache (fail closed).
- Disabling one KEK does not revoke a tenant that has another: revoke with ``suspend`` or by
  disabling every KEK.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from multikek_helpers import DrKMS, failovers, versions
from sqlalchemy import text

import keycustody as kc
from forensics import checkpoint, database_files, hits
from keycustody.errors import (
    AuditError,
    ConfigError,
    IntegrityError,
    KeyRevokedError,
    ShreddedError,
)
from keycustody.storage import schema
from keycustody.storage.engine import WRITE, make_engine
from vaults import vault_opener


@pytest.fixture
def dr(tmp_path: Path) -> DrKMS:
    return DrKMS(tmp_path / "dr-keys")


@pytest.fixture
def open_vault(db_url: str, kms: kc.LocalKMS, dr: DrKMS) -> Iterator[Any]:
    """Opens vaults on the test database with both KMSs; closes them after the test."""
    with vault_opener(db_url, kms, dr) as open_:
        yield open_


@pytest.fixture
def keks(kms: kc.LocalKMS, dr: DrKMS) -> tuple[str, str]:
    return kms.create_key("acme-kek"), dr.create_key("acme-dr")


DATA = {f"src/{i:03d}.py": b"print(%d)\n" % i for i in range(50)}


def wrap_values(vault: kc.Vault) -> list[bytes]:
    with vault._engine.connect() as conn:
        return [bytes(r[0]) for r in conn.execute(text("SELECT wrapped FROM scope_key_wraps"))]


def tamper(vault: kc.Vault, table: str, where: str) -> None:
    """Flips one byte of stored wrapped keys, as someone with write access to the database."""
    with vault._engine.connect().execution_options(**WRITE) as conn, conn.begin():
        rows = conn.execute(text(f"SELECT scope_id, version, wrapped FROM {table} WHERE {where}"))
        for scope_id, version, wrapped in rows.all():
            bad = bytearray(wrapped)
            bad[-1] ^= 0x01
            conn.execute(
                text(
                    f"UPDATE {table} SET wrapped = :w WHERE scope_id = :s AND version = :v "
                    f"AND {where}"
                ),
                {"w": bytes(bad), "s": scope_id, "v": version},
            )


# -- the KEK list -----------------------------------------------------------------------------


def test_every_key_version_is_wrapped_under_every_kek(
    open_vault: Any, keks: tuple[str, str]
) -> None:
    vault = open_vault()
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put_many(DATA.items())
    assert vault.keks("acme") == list(keks)
    [v1] = versions(acme)
    assert v1.wrapped_by == f"kek:{keks[0]}#1"
    assert v1.also_wrapped_by == (f"kek:{keks[1]}#1",)
    assert v1.to_dict()["also_wrapped_by"] == [f"kek:{keks[1]}#1"]

    assert acme.rotate_key() == 2
    v2 = versions(acme)[1]
    assert (v2.wrapped_by, v2.also_wrapped_by) == (f"kek:{keks[0]}#1", (f"kek:{keks[1]}#1",))
    created = next(e for e in vault.audit.events() if e.action == "scope.create")
    assert created.details_dict()["keks"] == [f"{keks[0]}#1", f"{keks[1]}#1"]
    rotated = next(e for e in vault.audit.events() if e.action == "key.rotate")
    assert rotated.details_dict()["keks"] == [f"{keks[0]}#1", f"{keks[1]}#1"]

    # Children hang below the tenant key: one wrap each, whatever the number of KEKs.
    child = vault.scope("acme/repos/api", create=True)
    assert child.keys()[0].also_wrapped_by == ()

    lineage = acme.lineage("src/001.py")
    assert lineage.keks == [f"{keks[0]}#1", f"{keks[1]}#1"]
    assert (lineage.kek_id, lineage.kek_version) == (keks[0], "1")
    assert lineage.chain[-1].also_wrapped_by == (f"kek:{keks[1]}#1",)
    # Both KEKs protect every record, each on its own.
    assert vault.protected_by(keks[0]).records == len(DATA)
    assert vault.protected_by(keks[1]).records == len(DATA)


def test_scope_kek_argument(open_vault: Any, keks: tuple[str, str], kms: kc.LocalKMS) -> None:
    vault = open_vault()
    vault.scope("acme", kek=list(keks), create=True)
    assert vault.scope("acme", kek=keks[0]).path == "acme"  # a string names the primary
    assert vault.scope("acme", kek=list(keks)).path == "acme"
    with pytest.raises(ConfigError, match="protected by"):
        vault.scope("acme", kek=[keks[0]])
    with pytest.raises(ConfigError, match="protected by"):
        vault.scope("acme", kek=list(reversed(keks)))
    with pytest.raises(ConfigError, match="twice"):
        vault.scope("globex", kek=[keks[0], keks[0]], create=True)
    with pytest.raises(ConfigError, match="non-empty"):
        vault.scope("globex", kek=[], create=True)
    with pytest.raises(ConfigError, match="top-level"):
        vault.scope("acme/x", kek=list(keks), create=True)
    with pytest.raises(kc.UnsupportedKeyIdError):
        vault.scope("globex", kek=[keks[0], "aws:alias/nope"], create=True)
    assert vault.scopes() == ["acme"]
    with pytest.raises(ConfigError, match="not a tenant"):
        vault.scope("acme/y", create=True)
        vault.keks("acme/y")


# -- failover -----------------------------------------------------------------------------


def test_reads_fail_over_when_the_primary_is_disabled_and_every_failover_is_audited(
    open_vault: Any, keks: tuple[str, str], kms: kc.LocalKMS
) -> None:
    ttl = 0.3
    vault = open_vault(cache_ttl=ttl)
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put_many(DATA.items())
    child = vault.scope("acme/subjects/alice", create=True)
    child.put("note", b"hello")
    kms.disable_key(keks[0])
    assert acme.get("src/007.py") == b"print(7)\n"  # cached
    assert failovers(vault) == []
    time.sleep(ttl + 0.1)

    assert acme.get_many(list(DATA)) == DATA
    assert child.get("note") == b"hello"
    [event] = failovers(vault)
    assert (event.subject, event.outcome) == ("acme#1", "ok")
    assert (event.kms_key_id, event.kms_key_version) == (keks[1], "1")
    details = event.details_dict()
    assert details["passed_over"] == [
        {"kek": keks[0], "kek_version": "1", "reason": "KeyRevokedError"}
    ]
    assert details["tampered_wrap"] is False

    # Another process, cold: the same, recorded again; the trail still verifies.
    cold = open_vault(cache_ttl=0)
    assert cold.scope("acme").get("src/001.py") == b"print(1)\n"
    seen = len(failovers(vault))
    assert seen >= 2
    assert vault.audit.verify().ok

    # While the primary is held back (it failed lately) it is tried last: no KMS call to it.
    calls = cold.kms_calls
    assert cold.scope("acme").get("src/002.py") == b"print(2)\n"
    unwraps = len(failovers(vault)) - seen
    assert unwraps >= 1
    assert cold.kms_calls == calls + unwraps  # one call each, to the DR KEK
    held = failovers(cold)[-1].details_dict()["passed_over"][0]
    assert held["kek"] == keks[0] and "tried last" in held["reason"]

    kms.enable_key(keks[0])


def test_every_kek_down_is_the_primary_error(
    open_vault: Any, keks: tuple[str, str], kms: kc.LocalKMS, dr: DrKMS
) -> None:
    vault = open_vault(cache_ttl=0)
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put("a", b"alpha")
    kms.disable_key(keks[0])
    dr.disable_key(keks[1])
    with pytest.raises(KeyRevokedError, match="no KEK of tenant 'acme'") as caught:
        acme.get("a")
    assert keks[0] in str(caught.value) and keks[1] in str(caught.value)
    assert failovers(vault) == []
    denied = [e for e in vault.audit.events() if e.action == "access.denied"]
    assert len(denied) == 1
    dr.enable_key(keks[1])
    assert acme.get("a") == b"alpha"
    kms.destroy_key(keks[0])  # the primary is gone for good: the DR KEK still reads
    assert open_vault(cache_ttl=0).scope("acme").get("a") == b"alpha"
    assert (
        failovers(vault)[-1].details_dict()["passed_over"][0]["reason"].startswith("ShreddedError")
    )


def test_a_tampered_wrap_fails_over_but_is_recorded_as_a_failure(
    open_vault: Any, keks: tuple[str, str]
) -> None:
    vault = open_vault()
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put("a", b"alpha")
    tamper(vault, "scope_keys", "kek_id IS NOT NULL")

    vault._keys.cache.purge()
    assert acme.get("a") == b"alpha"
    [event] = failovers(vault)
    assert event.outcome == "failed"
    details = event.details_dict()
    assert details["tampered_wrap"] is True
    assert details["passed_over"][0]["reason"] == "IntegrityError"
    assert details["used"] == f"{keks[1]}#1"

    # A bad wrap is not a KEK outage: the primary stays first for the next unwrap.
    vault._keys.cache.purge()
    assert acme.get("a") == b"alpha"
    assert len(failovers(vault)) == 2
    assert "tried last" not in failovers(vault)[-1].details_dict()["passed_over"][0]["reason"]

    # Both wraps tampered: nothing unwraps, IntegrityError (recorded as such).
    tamper(vault, "scope_key_wraps", "1 = 1")
    vault._keys.cache.purge()
    with pytest.raises(IntegrityError):
        acme.get("a")
    assert any(e.action == "integrity.failure" for e in vault.audit.events())


def test_a_failover_that_cannot_be_recorded_fails_closed(
    open_vault: Any, keks: tuple[str, str], kms: kc.LocalKMS, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = open_vault(cache_ttl=300)
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put("a", b"alpha")
    vault._keys.cache.purge()
    kms.disable_key(keks[0])

    real = vault.audit.append

    def refuse(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("action") == "kek.failover":
            raise AuditError("the audit trail is unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(vault.audit, "append", refuse)
    with pytest.raises(AuditError, match="KEK failover"):
        acme.get("a")
    # The key unwrapped through the unrecorded failover was not kept.
    assert vault._keys.cache.get(acme._ref.id, 1) is None
    monkeypatch.setattr(vault.audit, "append", real)
    assert acme.get("a") == b"alpha"
    assert len(failovers(vault)) == 2  # the one left pending, and this one
    kms.enable_key(keks[0])


# -- add, remove, rotate -------------------------------------------------------------------


def test_add_kek_then_the_new_kek_alone_reads_everything(
    open_vault: Any, kms: kc.LocalKMS, dr: DrKMS
) -> None:
    primary = kms.create_key("acme-kek")
    vault = open_vault()
    acme = vault.scope("acme", kek=primary, create=True)
    acme.put_many(list(DATA.items())[:25])
    acme.rotate_key()
    acme.put_many(list(DATA.items())[25:])
    alice = vault.scope("acme/subjects/alice", create=True)
    alice.put("note", b"hello")

    new = dr.create_key("acme-dr")
    calls = vault.kms_calls
    assert vault.add_kek("acme", new) == 2
    assert vault.kms_calls - calls <= 4  # O(key versions): (un)wrap per version at most
    assert vault.keks("acme") == [primary, new]
    with pytest.raises(ConfigError, match="already protects"):
        vault.add_kek("acme", new)
    with pytest.raises(ConfigError, match="not a tenant"):
        vault.add_kek("acme/subjects/alice", new)
    added = next(e for e in vault.audit.events() if e.action == "kek.add")
    assert (added.subject, added.kms_key_id) == ("acme", new)
    assert added.details_dict() == {"key_versions": 2, "keks": [primary, new]}
    # New versions are wrapped under both.
    acme.rotate_key()
    assert versions(acme)[-1].also_wrapped_by == (f"kek:{new}#1",)

    kms.disable_key(primary)
    cold = open_vault(cache_ttl=0)
    assert cold.scope("acme").get_many(list(DATA)) == DATA
    assert cold.scope("acme/subjects/alice").get("note") == b"hello"
    assert {e.details_dict()["used"] for e in failovers(cold)} == {f"{new}#1"}

    # Remove the old primary: the DR KEK becomes the primary (checked to unwrap first).
    kms.enable_key(primary)
    assert vault.remove_kek("acme", primary) == 3
    assert vault.keks("acme") == [new]
    assert [v.wrapped_by for v in versions(acme)] == [f"kek:{new}#1"] * 3
    assert all(v.also_wrapped_by == () for v in versions(acme))
    assert wrap_values(vault) == []
    kms.disable_key(primary)
    before = len(failovers(vault))
    cold = open_vault(cache_ttl=0)
    assert cold.scope("acme").get_many(list(DATA)) == DATA
    assert len(failovers(vault)) == before  # no failover: the only KEK is the primary
    removed = next(e for e in vault.audit.events() if e.action == "kek.remove")
    assert removed.details_dict() == {"wraps_deleted": 3, "keks": [new], "primary": new}
    assert vault.protected_by(primary).records == 0
    assert vault.protected_by(new).records == len(DATA) + 1


def test_remove_kek_refuses_what_would_strand_the_tenant(
    open_vault: Any, keks: tuple[str, str], dr: DrKMS
) -> None:
    vault = open_vault()
    vault.scope("acme", kek=keks[0], create=True).put("a", b"alpha")
    with pytest.raises(ConfigError, match="only KEK"):
        vault.remove_kek("acme", keks[0])
    with pytest.raises(ConfigError, match="is not a KEK"):
        vault.remove_kek("acme", keks[1])
    vault.add_kek("acme", keks[1])
    dr.disable_key(keks[1])  # the one that would remain cannot unwrap
    with pytest.raises(KeyRevokedError):
        vault.remove_kek("acme", keks[0])
    assert vault.keks("acme") == list(keks)
    assert len(wrap_values(vault)) == 1
    dr.enable_key(keks[1])
    assert vault.remove_kek("acme", keks[1]) == 1
    assert vault.keks("acme") == [keks[0]]


def test_rotate_kek_replaces_one_kek_of_the_list(
    open_vault: Any, keks: tuple[str, str], kms: kc.LocalKMS, dr: DrKMS
) -> None:
    vault = open_vault()
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put_many(DATA.items())
    acme.rotate_key()

    dr2 = dr.create_key("acme-dr-2")
    assert vault.rotate_kek("acme", dr2, old=keks[1]) == 2
    assert vault.keks("acme") == [keks[0], dr2]
    assert [v.also_wrapped_by for v in versions(acme)] == [(f"kek:{dr2}#1",)] * 2
    event = next(e for e in vault.audit.events() if e.action == "kek.rotate")
    assert event.details_dict()["replaced"] == keks[1]

    with pytest.raises(ConfigError, match="already protects"):
        vault.rotate_kek("acme", dr2)
    with pytest.raises(ConfigError, match="is not a KEK"):
        vault.rotate_kek("acme", dr.create_key("x"), old=keks[1])

    # The default replaces the primary, and works while the primary is down.
    kms.disable_key(keks[0])
    vault._keys.cache.purge()
    new_primary = kms.create_key("acme-kek-2")
    assert vault.rotate_kek("acme", new_primary) == 2
    assert vault.keks("acme") == [new_primary, dr2]
    assert [v.wrapped_by for v in versions(acme)] == [f"kek:{new_primary}#1"] * 2

    # The old KEKs protect nothing any more; each of the new ones reads everything alone.
    dr.disable_key(keks[1])
    dr.disable_key(dr2)
    assert open_vault(cache_ttl=0).scope("acme").get_many(list(DATA)) == DATA
    dr.enable_key(dr2)
    kms.disable_key(new_primary)
    assert open_vault(cache_ttl=0).scope("acme").get_many(list(DATA)) == DATA


def test_rotate_key_wraps_under_every_kek(open_vault: Any, keks: tuple[str, str]) -> None:
    vault = open_vault()
    acme = vault.scope("acme", kek=list(keks), create=True)
    calls = vault.kms_calls
    assert acme.rotate_key() == 2
    assert vault.kms_calls - calls == 2  # one wrap per KEK (the active key was cached)
    assert len(wrap_values(vault)) == 2


# -- KMS calls ----------------------------------------------------------------------------


def test_put_many_of_10000_records_with_a_warm_cache_makes_no_kms_call(
    open_vault: Any, keks: tuple[str, str]
) -> None:
    vault = open_vault()
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put("warm", b"x")
    calls = vault.kms_calls
    records = [(f"f/{i:05d}", b"%d" % i) for i in range(10_000)]
    acme.put_many(records)
    assert len(acme.get_many([n for n, _ in records[:2000]])) == 2000
    assert vault.kms_calls == calls
    cold = open_vault()
    calls = cold.kms_calls  # the audit key's unwrap
    assert cold.scope("acme").get("f/00042") == b"42"
    assert cold.kms_calls == calls + 1  # the primary unwraps; the other KEK is not asked


# -- shredding -----------------------------------------------------------------------------


def test_shred_destroys_the_additional_wraps_and_the_scan_looks_for_them(
    db_path: Path, open_vault: Any, keks: tuple[str, str]
) -> None:
    vault = open_vault()
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put_many(DATA.items())
    acme.rotate_key()
    vault.scope("acme/subjects/alice", create=True).put("note", b"hello")
    extra = wrap_values(vault)
    assert len(extra) == 2

    cert = vault.shred("acme", reason="contract ended #9")

    assert wrap_values(vault) == []
    doc = cert.document
    assert doc["what"]["keks"] == [
        {"id": keks[0], "provider": "local"},
        {"id": keks[1], "provider": "dr"},
    ]
    tenant_versions = [k for k in doc["what"]["key_versions_destroyed"] if k["scope"] == "acme"]
    assert [k["also_wrapped_by"] for k in tenant_versions] == [[f"kek:{keks[1]}#1"]] * 2
    scan = doc["verification"]["forensic_scan"]
    # The primary's and the DR KEK's wraps of 2 versions, and the keys of 2 child scopes.
    assert scan["values_searched"] == 2 + 2 + 2
    assert scan["hits"] == 0
    checkpoint(db_path)
    assert hits(database_files(db_path), extra) == []
    with pytest.raises(ShreddedError):
        open_vault().scope("acme").get("src/001.py")


def test_phase2_retires_every_kek_of_the_tenant(
    open_vault: Any, keks: tuple[str, str], kms: kc.LocalKMS, dr: DrKMS
) -> None:
    vault = open_vault()
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put_many(DATA.items())
    alice = vault.scope("acme/subjects/alice", create=True)
    alice.put("note", b"hello")
    bob = vault.scope("acme/subjects/bob", create=True)
    bob.put("note", b"bob")

    vault.shred("acme/subjects/alice", reason="GDPR Art.17 #1")
    [cert] = vault.complete_erasures()

    assert cert.phase2_status == "confirmed"
    events = cert.document["when"]["phase2"]["events"]
    assert f"{keks[0]} version 1 destroyed" in events
    assert f"{keks[1]} version 1 destroyed" in events
    assert kms.describe_key(keks[0])["versions"]["1"]["state"] == "destroyed"
    assert dr.describe_key(keks[1])["versions"]["1"]["state"] == "destroyed"
    # The survivors were rewrapped under each KEK's new version, and each alone reads them.
    assert [(v.wrapped_by, v.also_wrapped_by) for v in versions(acme) if v.state == "ACTIVE"] == [
        (f"kek:{keks[0]}#2", (f"kek:{keks[1]}#2",))
    ]
    kms.disable_key(keks[0])
    cold = open_vault(cache_ttl=0)
    assert cold.scope("acme").get_many(list(DATA)) == DATA
    assert cold.scope("acme/subjects/bob").get("note") == b"bob"
    kms.enable_key(keks[0])
    dr.disable_key(keks[1])
    assert open_vault(cache_ttl=0).scope("acme/subjects/bob").get("note") == b"bob"
    ok, why = vault.verify_certificate(json.loads(cert.to_json()))
    assert ok, why


def test_destroy_kek_destroys_every_kek_of_the_tenant(
    open_vault: Any, keks: tuple[str, str], kms: kc.LocalKMS, dr: DrKMS
) -> None:
    vault = open_vault()
    vault.scope("acme", kek=list(keks), create=True).put("a", b"alpha")
    cert = vault.shred("acme", reason="offboarding #2", destroy_kek=True)
    result = cert.document["how"]["kek_destruction"]
    assert result["destroyed"] is True
    assert [(r["kek"], r["destroyed"]) for r in result["keks"]] == [
        (keks[0], True),
        (keks[1], True),
    ]
    assert cert.phase2_status == "confirmed"
    assert kms.describe_key(keks[0])["state"] == "destroyed"
    assert dr.describe_key(keks[1])["state"] == "destroyed"


def test_destroy_kek_keeps_a_kek_another_tenant_uses(
    open_vault: Any, keks: tuple[str, str], kms: kc.LocalKMS, dr: DrKMS
) -> None:
    vault = open_vault()
    vault.scope("acme", kek=list(keks), create=True).put("a", b"alpha")
    globex = vault.scope("globex", kek=kms.create_key("globex-kek"), create=True)
    vault.add_kek("globex", keks[1])  # a shared DR key
    globex.put("g", b"gamma")
    cert = vault.shred("acme", reason="offboarding #3", destroy_kek=True)
    result = cert.document["how"]["kek_destruction"]
    assert result["destroyed"] is False
    assert result["keks"][1] == {
        "kek": keks[1],
        "destroyed": False,
        "why": "shared with 1 other tenant(s)",
    }
    assert cert.phase2_status == "pending"
    [done] = vault.complete_erasures()
    assert done.phase2_status == "confirmed"
    # The shared DR KEK got a new version; globex reads through it alone.
    kms.disable_key("local:globex-kek")
    assert open_vault(cache_ttl=0).scope("globex").get("g") == b"gamma"


# -- report, migration ---------------------------------------------------------------------


def test_report_lists_every_kek_and_flags_tampered_failovers(
    open_vault: Any, keks: tuple[str, str], tmp_path: Path
) -> None:
    from keycustody.report.facts import gather

    vault = open_vault(cache_ttl=0)
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put("a", b"alpha")
    facts = gather(vault)
    [tenant] = facts["tenants"]
    assert [k["id"] for k in tenant["keks"]] == list(keks)
    assert tenant["kek"] is not None and tenant["kek"]["id"] == keks[0]
    assert [k["versions_in_use"] for k in tenant["keks"]] == [["1"], ["1"]]
    assert "2 customer-held KEKs" in facts["summary"]["points"][0]["text"]

    tamper(vault, "scope_keys", "kek_id IS NOT NULL")
    assert acme.get("a") == b"alpha"
    facts = gather(vault)
    assert facts["summary"]["status"] == "red"
    assert any("did NOT authenticate" in p["text"] for p in facts["summary"]["points"])
    assert any(e["kind"] == "kek_failover" for e in facts["timeline"])


@pytest.mark.sqlite_only
def test_a_database_made_at_revision_0008_keeps_reading(
    db_path: Path, kms: kc.LocalKMS, dr: DrKMS
) -> None:
    url = f"sqlite:///{db_path}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS))
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        config.attributes["connection"] = conn
        command.upgrade(config, "0008")
    engine.dispose()
    # At 0008 the database has none of the multi-KEK tables.
    raw = sqlite3.connect(db_path)
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "scope_key_wraps" not in tables and "tenant_keks" not in tables
    raw.close()

    kek = kms.create_key("acme-kek")
    with kc.Vault.open(url, kms=[kms, dr]) as vault:
        vault.scope("acme", kek=kek, create=True).put_many(DATA.items())
    # Back to 0008 (the new tables go, the data stays), as a database of that release.
    engine = make_engine(url)
    with engine.connect().execution_options(**WRITE) as c, c.begin():
        config.attributes["connection"] = c
        command.downgrade(config, "0008")
    engine.dispose()

    with kc.Vault.open(url, kms=[kms, dr], cache_ttl=0) as vault:
        acme = vault.scope("acme")
        assert acme.get_many(list(DATA)) == DATA
        assert vault.keks("acme") == [kek]
        assert vault.add_kek("acme", dr.create_key("acme-dr")) == 1
        kms.disable_key(kek)
        assert acme.get("src/003.py") == b"print(3)\n"
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0010",)]
    raw.close()
