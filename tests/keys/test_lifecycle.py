"""Scope key lifecycle on a real database (SQLite and PostgreSQL) and a real LocalKMS:
rotate_key, rotate_kek, rewrap, mark_compromised + reencrypt, automatic rotation, concurrent
rotations, and the key state machine (NIST SP 800-57)."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event

import keycustody as kc
from dbadmin import raw_db
from keycustody import _core
from keycustody.errors import ConcurrentRotationError
from keycustody.keys.states import (
    ACTIVE,
    COMPROMISED,
    DEACTIVATED,
    DESTROYED,
    KEY_TRANSITIONS,
    PRE_ACTIVE,
    SHREDDED,
    SUSPENDED,
    check_key_transition,
)
from keycustody.kms.local import LocalKMS
from keycustody.types import EncryptionContext, KeyId, KeyVersionInfo, WrappedKey

MIB = 1024 * 1024
Snapshot = dict[str, list[tuple[Any, ...]]]


class CountingKMS(LocalKMS):
    """A real LocalKMS that counts the wraps and unwraps it serves."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.wraps = 0
        self.unwraps = 0

    def reset(self) -> None:
        self.wraps = self.unwraps = 0

    def wrap(self, key_id: KeyId, key: _core.KeyHandle, context: EncryptionContext) -> WrappedKey:
        self.wraps += 1
        return super().wrap(key_id, key, context)

    def unwrap(self, wrapped: WrappedKey, context: EncryptionContext) -> _core.KeyHandle:
        self.unwraps += 1
        return super().unwrap(wrapped, context)


def versions_of(scope: kc.Scope) -> list[KeyVersionInfo]:
    """``scope.keys()``: every version of the scope's key (a list, not a dict's keys)."""
    return scope.keys()


def snapshot(db_url: str) -> Snapshot:
    """Every stored byte that carries records and keys, read with a raw connection."""
    with raw_db(db_url) as conn:
        return {
            "records": conn.rows(
                "SELECT record_id, scope_id, name_index, key_version, header, name_ct, body, "
                "size, sealed_version FROM records ORDER BY record_id"
            ),
            "segments": conn.rows(
                "SELECT record_id, seq, body FROM segments ORDER BY record_id, seq"
            ),
            "scope_keys": conn.rows(
                "SELECT scope_id, version, state, wrapped, kek_id, kek_version, parent_version "
                "FROM scope_keys ORDER BY scope_id, version"
            ),
            "scopes": conn.rows(
                "SELECT id, path, kek_id, state, active_version FROM scopes ORDER BY path"
            ),
        }


def key_rows(db_url: str, scope: kc.Scope) -> list[tuple[Any, ...]]:
    """``(version, state, wrapped)`` of every stored version of a scope's key."""
    with raw_db(db_url) as conn:
        return conn.rows(
            "SELECT version, state, wrapped FROM scope_keys WHERE scope_id = ? ORDER BY version",
            (bytes.fromhex(scope.id),),
        )


def items(prefix: str, n: int, size: int = 40) -> dict[str, bytes]:
    return {f"{prefix}/{i:04d}.py": os.urandom(size + i % 7) for i in range(n)}


# -- rotate_key --------------------------------------------------------------------------


def test_rotate_key_makes_new_active_version_and_keeps_old_readable(
    vault: kc.Vault, acme: kc.Scope, db_url: str, kms: kc.LocalKMS
) -> None:
    one = items("v1", 20)
    assert {i.key_version for i in acme.put_many(one.items())} == {1}
    started = datetime.now(UTC)

    assert acme.rotate_key() == 2

    keys = acme.keys()
    assert [(k.version, k.state) for k in keys] == [(1, DEACTIVATED), (2, ACTIVE)]
    assert keys[0].deactivated_at is not None
    assert started <= keys[0].deactivated_at <= datetime.now(UTC)
    assert keys[1].deactivated_at is None
    assert keys[0].created_at <= keys[1].created_at
    assert all(k.wrapped_by == "kek:local:acme-kek#1" for k in keys)
    # Old records still read; new writes use the new version.
    assert acme.get_many(one) == one
    assert acme.put("v2/new.py", b"two").key_version == 2
    assert {i.key_version for i in acme.put_many([("v2/a", b"a"), ("v2/b", b"b")])} == {2}
    # Names stay findable across versions: replacing a v1 record by name keeps one record.
    assert acme.put("v1/0000.py", b"replaced").key_version == 2
    assert acme.get("v1/0000.py") == b"replaced"
    listing = {i.name: i.key_version for i in acme.list()}
    assert len(listing) == 23
    assert listing["v1/0000.py"] == 2
    assert listing["v1/0001.py"] == 1
    acme.delete("v1/0001.py")  # a v1 record deleted by name after the rotation
    assert [(k.version, k.records) for k in versions_of(acme)] == [(1, 18), (2, 4)]

    assert acme.rotate_key() == 3
    assert acme.put("v3.py", b"three").key_version == 3
    assert [(k.version, k.state, k.records) for k in versions_of(acme)] == [
        (1, DEACTIVATED, 18),
        (2, DEACTIVATED, 4),
        (3, ACTIVE, 1),
    ]
    assert [(v, st) for v, st, _ in key_rows(db_url, acme)] == [
        (1, DEACTIVATED),
        (2, DEACTIVATED),
        (3, ACTIVE),
    ]
    # A cold cache unwraps every version through the KMS and reads all of them.
    expected = {n: d for n, d in one.items() if n not in ("v1/0000.py", "v1/0001.py")}
    with kc.Vault.open(db_url, kms=kms) as cold:
        scope = cold.scope("acme")
        assert scope.get_many(expected) == expected
        assert scope.get("v1/0000.py") == b"replaced"
        assert scope.get("v3.py") == b"three"


def test_rotate_key_of_a_child_scope(vault: kc.Vault, acme: kc.Scope) -> None:
    child = vault.scope("acme/repos/api", create=True)
    child.put("a.py", b"alpha")
    acme.rotate_key()
    assert child.rotate_key() == 2
    # The parent is untouched; the new child version hangs below the parent's active version.
    assert [k.state for k in versions_of(acme)] == [DEACTIVATED, ACTIVE]
    assert [(k.version, k.state, k.wrapped_by, k.records) for k in versions_of(child)] == [
        (1, DEACTIVATED, "scope:acme/repos#v1", 1),
        (2, ACTIVE, "scope:acme/repos#v1", 0),
    ]
    assert child.put("b.py", b"bravo").key_version == 2
    assert child.get_many(["a.py", "b.py"]) == {"a.py": b"alpha", "b.py": b"bravo"}


# -- rotate_kek --------------------------------------------------------------------------


def _raw_records(db_url: str) -> list[tuple[Any, ...]]:
    with raw_db(db_url) as conn:
        return conn.rows("SELECT record_id, header, name_ct, body FROM records ORDER BY record_id")


@pytest.mark.slow
def test_rotate_kek_is_per_key_version_and_leaves_records_untouched(
    db_url: str, backend: str, tmp_path: Path
) -> None:
    kms = CountingKMS(tmp_path / "counting-keys")
    old_kek = kms.create_key("acme-kek")
    new_kek = kms.create_key("acme-kek-2")
    # The KMS calls do not depend on the record count: 50,000 on SQLite, 5,000 on PostgreSQL
    # (the same SQL; every row is read twice over the network to compare).
    scale = 1 if backend == "sqlite" else 10
    per_version = {1: 20_000 // scale, 2: 15_000 // scale, 3: 15_000 // scale}
    names = [f"r/{i:05d}" for i in range(sum(per_version.values()))]
    with kc.Vault.open(db_url, kms=kms) as vault:
        acme = vault.scope("acme", kek=old_kek, create=True)
        child = vault.scope("acme/repos/api", create=True)
        # A control tenant that stays on the old KEK: it must stop reading once that is disabled.
        globex = vault.scope("globex", kek=old_kek, create=True)
        globex.put("g.py", b"globex")
        start = 0
        for version, count in per_version.items():
            if version > 1:
                assert acme.rotate_key() == version
            written = acme.put_many(
                (names[i], i.to_bytes(4, "big")) for i in range(start, start + count)
            )
            assert {i.key_version for i in written} == {version}
            start += count
        child.put_many((f"c/{i}", i.to_bytes(4, "big")) for i in range(100))
        assert [(k.version, k.records) for k in versions_of(acme)] == list(per_version.items())
        child_keys = [k.wrapped_by for k in versions_of(child)]
        before = _raw_records(db_url)
        assert len(before) == 50_000 // scale + 100 + 1

        kms.reset()
        assert vault.rotate_kek("acme", new_kek) == 3
        # Two KMS calls per live key version (unwrap under the old KEK, wrap under the new),
        # whatever the number of records.
        assert (kms.unwraps, kms.wraps) == (3, 3)
        assert kms.unwraps + kms.wraps <= 2 * len(per_version)
        assert _raw_records(db_url) == before
        assert [k.wrapped_by for k in versions_of(acme)] == ["kek:local:acme-kek-2#1"] * 3
        assert [k.wrapped_by for k in versions_of(child)] == child_keys
        assert [k.wrapped_by for k in versions_of(globex)] == ["kek:local:acme-kek#1"]

    kms.disable_key(old_kek)
    expected = {n: i.to_bytes(4, "big") for i, n in enumerate(names)}
    with kc.Vault.open(db_url, kms=kms) as cold:
        kms.reset()  # opening a vault unwraps the audit trail's key: not counted here
        acme = cold.scope("acme")
        assert acme.get_many(names) == expected
        assert cold.scope("acme/repos/api").get("c/42") == (42).to_bytes(4, "big")
        assert (kms.unwraps, kms.wraps) == (3, 0)  # one unwrap per version; children in Rust
        with pytest.raises(kc.KeyRevokedError):
            cold.scope("globex").get("g.py")


def test_rotate_kek_after_a_kms_rotation_uses_the_new_kek_version(
    vault: kc.Vault, acme: kc.Scope, kms: kc.LocalKMS, db_url: str
) -> None:
    acme.put("a.py", b"alpha")
    assert kms.rotate_key("local:acme-kek") == "2"
    assert vault.rotate_kek("acme", "local:acme-kek") == 1
    assert [k.wrapped_by for k in versions_of(acme)] == ["kek:local:acme-kek#2"]
    kms.destroy_key("local:acme-kek", "1")
    with kc.Vault.open(db_url, kms=kms) as cold:
        assert cold.scope("acme").get("a.py") == b"alpha"


def test_rotate_kek_rejects_child_scopes_and_unknown_keks(vault: kc.Vault, acme: kc.Scope) -> None:
    vault.scope("acme/repos", create=True)
    with pytest.raises(kc.ConfigError, match="not a tenant"):
        vault.rotate_kek("acme/repos", "local:acme-kek")
    with pytest.raises(kc.UnsupportedKeyIdError):
        vault.rotate_kek("acme", "gcp:projects/x")
    with pytest.raises(kc.NotFoundError):
        vault.rotate_kek("nope", "local:acme-kek")


# -- rewrap ------------------------------------------------------------------------------


def test_rewrap_moves_every_record_to_the_active_version(
    vault: kc.Vault, acme: kc.Scope, db_url: str, kms: kc.LocalKMS
) -> None:
    child = vault.scope("acme/api", create=True)
    grandchild = vault.scope("acme/api/sub", create=True)
    grandchild.put("g.py", b"grandchild")
    one = items("v1", 300)
    acme.put_many(one.items())
    big = os.urandom(2 * MIB + 3)
    acme.put_stream("v1/big.bin", io.BytesIO(big))
    child.put("c1.py", b"child one")
    acme.rotate_key()
    child.rotate_key()  # child v2 is wrapped by acme v2, child v1 by acme v1
    two = items("v2", 200)
    acme.put_many(two.items())
    child.put("c2.py", b"child two")
    acme.rotate_key()
    three = items("v3", 10)
    acme.put_many(three.items())
    everything = one | two | three
    assert [(k.version, k.state, k.records) for k in versions_of(acme)] == [
        (1, DEACTIVATED, 301),
        (2, DEACTIVATED, 200),
        (3, ACTIVE, 10),
    ]
    assert [k.wrapped_by for k in versions_of(child)] == ["scope:acme#v1", "scope:acme#v2"]
    assert [k.wrapped_by for k in versions_of(grandchild)] == ["scope:acme/api#v1"]

    # dry_run counts and changes nothing.
    before = snapshot(db_url)
    dry = acme.rewrap(dry_run=True)
    assert dry.dry_run
    assert dry.active_version == 3
    assert dry.records_by_version == {1: 301, 2: 200}
    assert (dry.records_done, dry.child_keys_done, dry.versions_destroyed) == (0, 0, [])
    assert snapshot(db_url) == before

    calls: list[tuple[int, int]] = []
    report = acme.rewrap(batch_size=64, progress=lambda done, total: calls.append((done, total)))
    assert not report.dry_run
    assert report.records_by_version == {1: 301, 2: 200}
    assert report.records_done == 501
    assert report.child_keys_done == 2
    assert report.versions_destroyed == [1, 2]
    # progress: increasing done, always the same total, ending at the total.
    assert len(calls) == math.ceil(501 / 64)
    dones = [d for d, _ in calls]
    assert dones == sorted(set(dones))
    assert {t for _, t in calls} == {501}
    assert calls[-1] == (501, 501)

    after = snapshot(db_url)
    acme_id = bytes.fromhex(acme.id)
    old_rows = {r[0]: r for r in before["records"]}
    for row in after["records"]:
        old = old_rows[row[0]]
        header, old_header = row[4], old[4]
        if row[1] != acme_id:
            assert row == old  # other scopes' records are untouched
            continue
        assert row[3] == 3
        assert _core.header_key_versions([header]) == {3}
        assert row[5:] == old[5:]  # name_ct, body, size, sealed_version unchanged
        if old[3] == 3:
            assert header == old_header
        else:  # only the key version and the wrapped DEK (60 bytes) of the header change
            assert header[:20] == old_header[:20]
            assert header[24:72] == old_header[24:72]
            assert header[132:] == old_header[132:]
            assert header[72:132] != old_header[72:132]
    assert after["segments"] == before["segments"]
    assert [(v, st, w is None) for v, st, w in key_rows(db_url, acme)] == [
        (1, DESTROYED, True),
        (2, DESTROYED, True),
        (3, ACTIVE, False),
    ]
    keys = acme.keys()
    assert [(k.version, k.state, k.records) for k in keys] == [
        (1, DESTROYED, 0),
        (2, DESTROYED, 0),
        (3, ACTIVE, 511),
    ]
    assert all(k.destroyed_at is not None for k in keys[:2])
    # Child scope keys follow: both versions of the child now hang below acme v3; the
    # grandchild's key (wrapped by the child's) is untouched.
    assert [k.wrapped_by for k in versions_of(child)] == ["scope:acme#v3", "scope:acme#v3"]
    assert [k.wrapped_by for k in versions_of(grandchild)] == ["scope:acme/api#v1"]

    assert acme.get_many(everything) == everything
    assert acme.get("v1/big.bin") == big
    # A cold cache proves the stored (re)wrapped keys, not just the cached ones.
    with kc.Vault.open(db_url, kms=kms) as cold:
        scope = cold.scope("acme")
        assert scope.get_many(everything) == everything
        assert scope.open_stream("v1/big.bin").read() == big
        assert cold.scope("acme/api").get_many(["c1.py", "c2.py"]) == {
            "c1.py": b"child one",
            "c2.py": b"child two",
        }
        assert cold.scope("acme/api/sub").get("g.py") == b"grandchild"

    # Rerunning is a no-op.
    again = acme.rewrap(progress=lambda done, total: calls.append((done, total)))
    assert (again.records_by_version, again.records_done, again.versions_destroyed) == ({}, 0, [])
    assert again.child_keys_done == 0
    assert snapshot(db_url) == after


def test_rewrap_with_nothing_to_do(acme: kc.Scope, db_url: str) -> None:
    acme.put("a.py", b"alpha")
    before = snapshot(db_url)
    report = acme.rewrap()
    assert (report.records_by_version, report.records_done, report.versions_destroyed) == (
        {},
        0,
        [],
    )
    assert snapshot(db_url) == before
    with pytest.raises(kc.InvalidInputError):
        acme.rewrap(batch_size=0)


def test_rewrap_is_not_slower_than_sealing_the_records_afresh(acme: kc.Scope) -> None:
    """Rewrap re-seals 60 bytes per record and updates its row in place; sealing afresh derives,
    encrypts and inserts. A per-record UPDATE statement made it 12-20x slower than put_many
    (34 s for 50,000 records); batched, it costs about as much."""
    n = 5000
    payloads = [(f"r/{i}", i.to_bytes(4, "big")) for i in range(n)]
    started = time.perf_counter()
    acme.put_many(payloads)
    put_s = time.perf_counter() - started
    acme.rotate_key()
    started = time.perf_counter()
    assert acme.rewrap().records_done == n
    rewrap_s = time.perf_counter() - started
    assert rewrap_s <= 4 * put_s, f"rewrap {rewrap_s:.2f} s vs put_many {put_s:.2f} s"


# -- mark_compromised + reencrypt --------------------------------------------------------


def test_mark_compromised_then_reencrypt(
    vault: kc.Vault, acme: kc.Scope, db_url: str, kms: kc.LocalKMS
) -> None:
    child = vault.scope("acme/subjects/alice", create=True)
    data = items("src", 120, size=300)
    acme.put_many(data.items())
    big = os.urandom(3 * MIB + 12_345)
    acme.put_stream("big.bin", io.BytesIO(big))
    exact = os.urandom(3 * MIB)  # a stream that ends exactly on a segment boundary
    acme.put_stream("exact.bin", io.BytesIO(exact))
    child.put("alice.txt", b"alice")
    ids_before = {i.name: i.record_id for i in acme.list()}
    started = datetime.now(UTC)

    assert acme.mark_compromised(reason="key material found in a core dump") == 1

    keys = acme.keys()
    assert [(k.version, k.state, k.records) for k in keys] == [
        (1, COMPROMISED, 122),
        (2, ACTIVE, 0),
    ]
    assert keys[0].compromised_at is not None
    assert started <= keys[0].compromised_at <= datetime.now(UTC)
    reads: list[Callable[[], object]] = [
        lambda: acme.get("src/0001.py"),
        lambda: acme.get_many(list(data)[:3]),
        lambda: acme.get("big.bin"),
        lambda: acme.open_stream("big.bin"),
        acme.list,
    ]
    for read in reads:
        with pytest.raises(kc.KeyRevokedError, match="compromised"):
            read()
    with kc.Vault.open(db_url, kms=kms) as other, pytest.raises(kc.KeyRevokedError):
        other.scope("acme").get("src/0001.py")
    # New writes go to the fresh version at once.
    assert acme.put("after.py", b"after").key_version == 2
    assert acme.get("after.py") == b"after"

    before = snapshot(db_url)
    dry = acme.reencrypt(dry_run=True)
    assert dry.dry_run
    assert dry.records_by_version == {1: 122}
    assert snapshot(db_url) == before

    calls: list[tuple[int, int]] = []
    report = acme.reencrypt(batch_size=50, progress=lambda d, t: calls.append((d, t)))
    assert report.records_done == 122
    assert report.versions_destroyed == [1]
    assert report.child_keys_done == 1
    # acme's 122 records, then (the compromise cascades) the child scope's one: one progress.
    assert calls == [(50, 123), (100, 123), (122, 123), (123, 123)]

    assert [(k.version, k.state, k.records) for k in versions_of(acme)] == [
        (1, DESTROYED, 0),
        (2, ACTIVE, 123),
    ]
    assert [(v, st, w is None) for v, st, w in key_rows(db_url, acme)] == [
        (1, DESTROYED, True),
        (2, ACTIVE, False),
    ]
    # Byte for byte, including 3 MiB+ streams.
    assert acme.get_many(data) == data
    assert acme.get("big.bin") == big
    assert acme.get("exact.bin") == exact
    stream = acme.open_stream("big.bin")
    stream.seek(2 * MIB + 7)
    assert stream.read(100) == big[2 * MIB + 7 : 2 * MIB + 107]
    # New DEKs: every re-encrypted record has a new record id; the old rows are gone.
    ids_after = {i.name: i.record_id for i in acme.list()}
    assert set(ids_after) == set(ids_before) | {"after.py"}
    assert all(ids_after[n] != ids_before[n] for n in ids_before)
    after = snapshot(db_url)
    stored_ids = {r[0].hex() for r in after["records"]}
    assert not stored_ids & set(ids_before.values())
    assert all(r[3] == 2 for r in after["records"] if r[1] == bytes.fromhex(acme.id))
    assert {r[0].hex() for r in after["segments"]} == {
        ids_after["big.bin"],
        ids_after["exact.bin"],
    }
    assert len(after["segments"]) == 4 + 3
    # The child's key was exposed with the parent's: the compromise cascaded, so it was
    # rotated (a fresh version under acme v2) and its exposed version destroyed.
    subjects = versions_of(vault.scope("acme/subjects"))
    assert [(k.state, k.wrapped_by) for k in subjects] == [
        (DESTROYED, "scope:acme#v2"),
        (ACTIVE, "scope:acme#v2"),
    ]
    assert child.get("alice.txt") == b"alice"
    with kc.Vault.open(db_url, kms=kms) as cold:
        assert cold.scope("acme").get_many(data) == data
        assert cold.scope("acme").get("big.bin") == big
        assert cold.scope("acme/subjects/alice").get("alice.txt") == b"alice"
    # Rerunning is a no-op.
    again = acme.reencrypt()
    assert (again.records_by_version, again.records_done) == ({}, 0)
    assert snapshot(db_url) == after


def _reencrypt_statements(vault: kc.Vault, kms: kc.LocalKMS, path: str, records: int) -> int:
    """Re-encrypts a scope of ``records`` records (one batch, one of them with a derivative);
    returns how many SQL statements that ran."""
    scope = vault.scope(path, kek=kms.create_key(f"{path}-kek"), create=True)
    scope.put_many((f"r{i}", b"x" * 64) for i in range(records))
    scope.put("r0#emb", b"vector", derived_from="r0")
    scope.mark_compromised(reason="test")
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(vault._engine, "before_cursor_execute", count)
    try:
        assert scope.reencrypt(batch_size=500).records_done == records
    finally:
        event.remove(vault._engine, "before_cursor_execute", count)
    assert scope.get("r0#emb") == b"vector"
    return statements


def test_a_reencrypt_batch_runs_as_many_statements_for_10_records_as_for_500(
    vault: kc.Vault, kms: kc.LocalKMS
) -> None:
    """Re-encryption writes a batch with a fixed number of statements. One derivative lookup
    and one lineage row per record made it 12x slower than put_many (6.6 s for 10,000
    records)."""
    small = _reencrypt_statements(vault, kms, "small", 10)
    assert _reencrypt_statements(vault, kms, "large", 500) == small


def test_reencrypt_stops_when_a_record_changes_under_it(
    acme: kc.Scope, db_url: str, kms: kc.LocalKMS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is read, re-sealed, then written in a transaction of its own; a record that
    another writer replaced in between is not deleted blindly: the job stops with
    ConcurrentRotationError, writes nothing of that batch, and a rerun finishes."""
    acme.put_many([("a.py", b"a"), ("b.py", b"b")])
    acme.mark_compromised(reason="test")
    seal = _core.seal_records
    replaced: list[bool] = []

    def seal_then_replace(*args: Any) -> Any:
        sealed = seal(*args)
        if not replaced:  # the job's batch is sealed: another process replaces a.py now
            replaced.append(True)
            with kc.Vault.open(db_url, kms=kms) as other:
                other.scope("acme").put("a.py", b"new a")
        return sealed

    monkeypatch.setattr(_core, "seal_records", seal_then_replace)
    with pytest.raises(ConcurrentRotationError, match="changed during re-encryption"):
        acme.reencrypt()
    monkeypatch.undo()
    assert [(k.version, k.records) for k in versions_of(acme)] == [(1, 1), (2, 1)]
    assert acme.reencrypt().records_done == 1
    assert acme.get_many(["a.py", "b.py"]) == {"a.py": b"new a", "b.py": b"b"}


def test_mark_compromised_of_an_older_version(acme: kc.Scope) -> None:
    acme.put("old.py", b"old")
    acme.rotate_key()
    acme.put("new.py", b"new")
    assert acme.mark_compromised(1, reason="backup tape lost") == 1
    # No extra rotation: version 2 stays active and readable.
    assert [(k.version, k.state) for k in versions_of(acme)] == [(1, COMPROMISED), (2, ACTIVE)]
    assert acme.get("new.py") == b"new"
    with pytest.raises(kc.KeyRevokedError):
        acme.get("old.py")
    # rewrap leaves compromised versions to reencrypt.
    assert acme.rewrap().records_done == 0
    assert acme.reencrypt().records_done == 1
    assert acme.get_many(["old.py", "new.py"]) == {"old.py": b"old", "new.py": b"new"}
    with pytest.raises(kc.InvalidInputError, match="DESTROYED"):
        acme.mark_compromised(1, reason="again")
    with pytest.raises(kc.NotFoundError):
        acme.mark_compromised(9, reason="no such version")


# -- automatic rotation ------------------------------------------------------------------


def test_rotation_period_rotates_on_the_next_write(db_url: str, kms: kc.LocalKMS) -> None:
    with kc.Vault.open(db_url, kms=kms, rotation_period=timedelta(seconds=0.2)) as vault:
        scope = vault.scope("acme", create=True)
        first = scope.put_many([("a.py", b"alpha")])[0].key_version
        time.sleep(0.3)
        second = scope.put_many([("b.py", b"bravo")])[0].key_version
        assert second == first + 1
        states = {k.version: k.state for k in versions_of(scope)}
        assert states[first] == DEACTIVATED
        assert states[second] == ACTIVE
        assert scope.get_many(["a.py", "b.py"]) == {"a.py": b"alpha", "b.py": b"bravo"}
    # A long period never rotates on its own.
    with kc.Vault.open(db_url, kms=kms, rotation_period=timedelta(hours=1)) as vault:
        scope = vault.scope("acme")
        assert {i.key_version for i in scope.put_many([("c", b"c"), ("d", b"d")])} == {second}
        assert scope.put("e", b"e").key_version == second
    with pytest.raises(kc.ConfigError):
        kc.Vault.open(db_url, kms=kms, rotation_period=timedelta(0))


# -- concurrent rotations ----------------------------------------------------------------


def _check_versions(db_url: str, scope: kc.Scope, last: int) -> None:
    """Versions 1..last, exactly one ACTIVE (the last), all wrapped, the scope agreeing."""
    rows = key_rows(db_url, scope)
    assert [v for v, _, _ in rows] == list(range(1, last + 1))
    assert [st for _, st, _ in rows] == [DEACTIVATED] * (last - 1) + [ACTIVE]
    assert all(w is not None for _, _, w in rows)
    with raw_db(db_url) as conn:
        got = conn.one(
            "SELECT active_version FROM scopes WHERE id = ?", (bytes.fromhex(scope.id),)
        )
    assert got == (last,)


def _rotate_at_once(vault: kc.Vault, threads_n: int) -> list[int | BaseException]:
    """``threads_n`` threads call rotate_key together; returns each one's version or error."""
    barrier = threading.Barrier(threads_n)
    results: list[int | BaseException] = []
    lock = threading.Lock()

    def rotate() -> None:
        scope = vault.scope("acme")
        barrier.wait()
        try:
            outcome: int | BaseException = scope.rotate_key()
        except BaseException as exc:  # checked by the caller
            outcome = exc
        with lock:
            results.append(outcome)

    workers = [threading.Thread(target=rotate) for _ in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def test_concurrent_rotations_in_threads(
    vault: kc.Vault, acme: kc.Scope, db_url: str, kms: kc.LocalKMS
) -> None:
    threads_n, rounds = 8, 4
    last = 1
    acme.put("v1.py", b"1")
    for _ in range(rounds):
        results = _rotate_at_once(vault, threads_n)
        wins = sorted(r for r in results if isinstance(r, int))
        errors = [r for r in results if not isinstance(r, int)]
        assert all(isinstance(e, ConcurrentRotationError) for e in errors), errors
        assert wins
        assert len(wins) + len(errors) == threads_n
        assert wins == list(range(last + 1, last + 1 + len(wins)))  # no duplicates, no gaps
        last = wins[-1]
        _check_versions(db_url, acme, last)
        assert acme.put(f"v{last}.py", str(last).encode()).key_version == last
        if errors:  # a loser retries, and that is safe
            last = acme.rotate_key()
            _check_versions(db_url, acme, last)
    with kc.Vault.open(db_url, kms=kms) as cold:
        scope = cold.scope("acme")
        for info in scope.list():
            assert scope.get(info.name) == info.name[1:-3].encode()


ROTATOR = """
import sys, keycustody as kc
from keycustody.errors import ConcurrentRotationError
vault = kc.Vault.open(sys.argv[1], kms=kc.LocalKMS(sys.argv[2]))
scope = vault.scope("acme")
print("READY", flush=True)
for line in sys.stdin:
    try:
        print(f"WON {scope.rotate_key()}", flush=True)
    except ConcurrentRotationError:
        print("LOST", flush=True)
"""


def test_concurrent_rotations_in_processes(acme: kc.Scope, db_url: str, kms: kc.LocalKMS) -> None:
    procs_n, rounds = 4, 3
    acme.put("v1.py", b"1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ROTATOR, db_url, str(kms.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs_n)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "READY"
        last = 1
        for _ in range(rounds):
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            answers = []
            for p in procs:
                assert p.stdout is not None
                answers.append(p.stdout.readline().strip())
            wins = sorted(int(a.split()[1]) for a in answers if a.startswith("WON "))
            assert all(a == "LOST" or a.startswith("WON ") for a in answers), answers
            assert wins == list(range(last + 1, last + 1 + len(wins))), answers
            assert wins
            last = wins[-1]
            _check_versions(db_url, acme, last)
            assert acme.put(f"v{last}.py", str(last).encode()).key_version == last
    finally:
        outcomes = [p.communicate(timeout=60) for p in procs]  # EOF on stdin ends them
    for p, (_, err) in zip(procs, outcomes, strict=True):
        assert p.returncode == 0, err
    for info in acme.list():
        assert acme.get(info.name) == info.name[1:-3].encode()


# -- the key state machine ---------------------------------------------------------------

KEY_STATES = list(KEY_TRANSITIONS)
PROPOSALS = [*KEY_STATES, SHREDDED, "", "active", "REVOKED"]


def test_key_transition_table_shape() -> None:
    assert set(KEY_STATES) == {PRE_ACTIVE, ACTIVE, SUSPENDED, DEACTIVATED, COMPROMISED, DESTROYED}
    assert KEY_TRANSITIONS[DESTROYED] == frozenset()
    assert KEY_TRANSITIONS[COMPROMISED] == frozenset({DESTROYED})
    for state, targets in KEY_TRANSITIONS.items():
        assert state not in targets  # no self loops
        assert targets <= set(KEY_STATES)
        if state != DESTROYED:  # every live state can be destroyed and compromised
            assert DESTROYED in targets
            assert state == COMPROMISED or COMPROMISED in targets


@given(old=st.sampled_from(PROPOSALS), new=st.sampled_from(PROPOSALS))
def test_every_edge_outside_the_table_is_rejected(old: str, new: str) -> None:
    if new in KEY_TRANSITIONS.get(old, frozenset()):
        check_key_transition(old, new)
    else:
        with pytest.raises(kc.InvalidInputError, match="cannot go"):
            check_key_transition(old, new)


@given(start=st.sampled_from(KEY_STATES), walk=st.lists(st.sampled_from(PROPOSALS)))
def test_random_walks_follow_the_table_and_destroyed_is_terminal(
    start: str, walk: list[str]
) -> None:
    state = start
    for new in walk:
        try:
            check_key_transition(state, new)
        except kc.InvalidInputError:
            assert new not in KEY_TRANSITIONS[state]
            continue
        assert state != DESTROYED
        assert new in KEY_TRANSITIONS[state]
        state = new
    if state == DESTROYED:
        for new in PROPOSALS:
            with pytest.raises(kc.InvalidInputError):
                check_key_transition(state, new)
