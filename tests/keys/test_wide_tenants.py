"""A tenant with more scopes than one statement takes parameters (a scope per data subject):
SQLite takes 32,766 (999 before 3.32), PostgreSQL 65,535. Here SQLite's limit is lowered on
each connection and the IN-list chunk with it, so that forty scopes stand for 100,000."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import keycustody as kc
from keycustody.report import gather
from keycustody.storage import repository

pytestmark = pytest.mark.sqlite_only

LIMIT = 30
"""Parameters per statement: more than any one row's columns, fewer than the scopes."""
CHILDREN = 40
TENANTS = 34


@pytest.fixture
def wide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[kc.Vault]:
    """Tenants t0..t33 and ``wide`` with CHILDREN child scopes, a record in each scope."""
    monkeypatch.setattr(repository, "IN_LIST_CHUNK", 4)
    kms = kc.LocalKMS(tmp_path / "kms")
    with kc.Vault.open(f"sqlite:///{tmp_path / 'vault.db'}", kms=kms) as vault:

        @event.listens_for(vault._engine, "connect")
        def _limit(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, LIMIT)

        vault._engine.dispose()  # new connections get the limit
        kek = kms.create_key("kek")
        for i in range(TENANTS):
            vault.scope(f"t{i}", kek=kek, create=True).put("a", b"a")
        vault.scope("wide", kek=kek, create=True).put("a", b"a")
        for i in range(CHILDREN):
            vault.scope(f"wide/u{i:02d}", create=True).put("b", b"bb")
        yield vault


def test_listings_and_the_report_cover_every_scope(wide: kc.Vault) -> None:
    scopes = 1 + TENANTS + CHILDREN
    assert len(wide.key_versions()) == scopes
    assert len(wide.usage()) == scopes
    protection = wide.protected_by("wide")
    assert (len(protection.by_scope), protection.records) == (1 + CHILDREN, 1 + CHILDREN)
    facts = gather(wide)
    assert len(facts["tenants"]) == TENANTS + 1
    assert all(t["kek"] is not None for t in facts["tenants"])
    assert facts["summary"]["status"] == "green"


def test_shred_and_purge_of_a_tenant_with_many_scopes(wide: kc.Vault) -> None:
    certificate = wide.shred("wide", reason="GDPR #30")
    what = certificate.document["what"]
    assert len(what["key_versions_destroyed"]) == 1 + CHILDREN
    assert sum(what["records_by_scope"].values()) == 1 + CHILDREN
    assert wide.verify_certificate(certificate.document)[0]
    with pytest.raises(kc.ShreddedError):
        wide.scope("wide/u39").get("b")
    assert wide.purge() == 1 + CHILDREN
    assert wide.scope("t33").get("a") == b"a"


def test_reencrypt_of_a_batch_larger_than_a_statement_takes(wide: kc.Vault) -> None:
    """A re-encryption batch deletes its old records by id and header: 2 x 40 values here,
    more than the 30 parameters a statement takes."""
    scope = wide.scope("t0")
    data = {f"r{i:02d}": bytes([i]) * i for i in range(40)}
    scope.put_many(data.items())
    scope.mark_compromised(reason="test")
    assert scope.reencrypt().records_done == 1 + len(data)
    assert scope.get_many(list(data)) == data
