"""A KEK failover is durable no later than the data written with the key it yielded.

A write that unwraps a tenant key through a failover (its primary KEK disabled) records the
``kek.failover`` event in its own transaction: a process killed right after the write's
commit leaves both in the database, and a write whose event cannot be appended rolls back.
Reads record theirs before returning any data (tests/keys/test_multikek.py). The failovers a
thread queued are recorded by that thread's transactions only, so a write in one thread never
takes a read's failover into a transaction that commits after the read returned.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from multikek_helpers import DrKMS, failovers, versions
from sqlalchemy import text

import keycustody as kc
from keycustody.errors import AuditError, NotFoundError
from keycustody.keys.hierarchy import extra_wraps
from keycustody.storage.engine import WRITE
from keycustody.storage.models import ScopeKeyRow
from keycustody.types import KeyId, WrappedKey
from vaults import vault_opener


@pytest.fixture
def dr(tmp_path: Path) -> DrKMS:
    return DrKMS(tmp_path / "dr-keys")


@pytest.fixture
def keks(kms: kc.LocalKMS, dr: DrKMS) -> tuple[str, str]:
    return kms.create_key("acme-kek"), dr.create_key("acme-dr")


@pytest.fixture
def open_vault(db_url: str, kms: kc.LocalKMS, dr: DrKMS) -> Iterator[Callable[..., kc.Vault]]:
    with vault_opener(db_url, kms, dr) as open_:
        yield open_


def tamper_primary_wraps(vault: kc.Vault) -> None:
    """Flips a byte of every primary KEK wrap, as someone with write access to the database
    would: unwraps fail over (recorded as failed), and the primary KEK still wraps."""
    with vault._engine.connect().execution_options(**WRITE) as conn, conn.begin():
        rows = conn.execute(text("SELECT scope_id, version, wrapped FROM scope_keys")).all()
        for scope_id, version, wrapped in rows:
            bad = bytes(wrapped[:-1]) + bytes([wrapped[-1] ^ 1])
            conn.execute(
                text("UPDATE scope_keys SET wrapped = :w WHERE scope_id = :s AND version = :v"),
                {"w": bad, "s": scope_id, "v": version},
            )


# -- kill -9 right after the write's commit ----------------------------------------------------

CHILD = """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.orm import Session
import keycustody as kc

class DrKMS(kc.LocalKMS):
    prefix = "dr"

url, keys, dr, op, kind = sys.argv[1:6]
vault = kc.Vault.open(url, kms=[kc.LocalKMS(keys), DrKMS(dr)], cache_ttl=0)
acme = vault.scope("acme")

@event.listens_for(Session, "after_commit")
def crash(session):
    # The write's COMMIT has returned: die before anything else of the operation runs.
    if session.bind.get_execution_options().get("keycustody_write") == kind:
        os.kill(os.getpid(), signal.SIGKILL)

if op == "put":
    acme.put("b", b"beta")
elif op == "put_many":
    acme.put_many([("b", b"beta"), ("c", b"gamma")], commit_every=1)
elif op == "delete":
    acme.delete("a")
elif op == "rotate_key":
    acme.rotate_key()
elif op == "rewrap":
    acme.rewrap()
elif op == "rotate_kek":
    vault.rotate_kek("acme", "dr:acme-dr-2", old="dr:acme-dr")
print("SURVIVED", flush=True)
"""

# op -> (the kind of write transaction killed after its commit, the failed-over versions,
# the audit action of the write itself or None when that transaction has none)
CRASHES = {
    "put": ("records", {"acme#1"}, "record.put"),
    "put_many": ("records", {"acme#1"}, "record.put"),
    "delete": ("records", {"acme#1"}, "record.delete"),
    "rotate_key": ("keys", {"acme#1"}, "key.rotate"),
    "rewrap": ("records", {"acme#1", "acme#2"}, None),
    "rotate_kek": ("keys", {"acme#1", "acme#2"}, "kek.rotate"),
}


@pytest.mark.parametrize("op", sorted(CRASHES))
def test_a_failover_survives_kill_9_right_after_the_write_that_used_it(
    op: str,
    db_url: str,
    kms: kc.LocalKMS,
    dr: DrKMS,
    keks: tuple[str, str],
    open_vault: Callable[..., kc.Vault],
) -> None:
    kind, subjects, action = CRASHES[op]
    with kc.Vault.open(db_url, kms=[kms, dr]) as vault:
        acme = vault.scope("acme", kek=list(keks), create=True)
        acme.put("a", b"alpha")
        if op == "rewrap":
            acme.rotate_key()  # "a" stays on version 1, for the rewrap to move
        if op == "rotate_kek":
            acme.rotate_key()
        events_before = len(list(vault.audit.events()))
        if op == "rotate_key":  # which wraps under every KEK: the primary must work
            tamper_primary_wraps(vault)
    dr.create_key("acme-dr-2")
    if op != "rotate_key":
        kms.disable_key(keks[0])
    # Every unwrap in the child fails over to the DR KEK.

    child = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, str(kms.path), str(dr.path), op, kind],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "SURVIVED" not in child.stdout

    vault = open_vault(cache_ttl=0)
    new = list(vault.audit.events())[events_before:]  # before any read here fails over again
    assert vault.audit.verify().ok
    if action is not None:  # the write committed ...
        assert action in [e.action for e in new]
    # ... and so did every failover it depended on, in the same transaction.
    recorded = [e for e in new if e.action == "kek.failover"]
    assert {e.subject for e in recorded} == subjects
    assert all(e.details_dict()["used"] == f"{keks[1]}#1" for e in recorded)
    assert all(e.details_dict()["passed_over"][0]["kek"] == keks[0] for e in recorded)

    kms.enable_key(keks[0])
    acme = vault.scope("acme")
    if op in ("put", "put_many"):
        assert acme.get("b") == b"beta"
    elif op == "delete":
        with pytest.raises(NotFoundError):
            acme.get("a")
    elif op == "rotate_key":
        assert [k.version for k in versions(acme)] == [1, 2]
    elif op == "rewrap":
        assert {k.version: k.records for k in versions(acme)} == {1: 0, 2: 1}
    elif op == "rotate_kek":
        assert vault.keks("acme") == [keks[0], "dr:acme-dr-2"]


# -- fail closed: no event, no write ------------------------------------------------------------


def refuse_failovers(vault: kc.Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    real = vault.audit.append

    def refuse(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("action") == "kek.failover":
            raise AuditError("the audit trail is unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(vault.audit, "append", refuse)


def test_a_write_whose_failover_cannot_be_recorded_rolls_back(
    open_vault: Callable[..., kc.Vault],
    keks: tuple[str, str],
    kms: kc.LocalKMS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vault = open_vault()
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put("a", b"alpha")
    tamper_primary_wraps(vault)  # every unwrap fails over; the primary KEK still wraps
    vault._keys.cache.purge()
    before = [e.action for e in vault.audit.events()]

    with monkeypatch.context() as patch:
        refuse_failovers(vault, patch)
        with pytest.raises(AuditError, match="KEK failover"):
            acme.put("b", b"beta")
        # The key unwrapped through the unrecorded failover was not kept ...
        assert vault._keys.cache.get(acme._ref.id, 1) is None
        with pytest.raises(AuditError, match="KEK failover"):
            acme.rotate_key()
        with pytest.raises(AuditError, match="KEK failover"):
            acme.delete("a")
    # ... and nothing was written: no record, no key version, no event.
    assert [e.action for e in vault.audit.events()] == before
    assert [k.version for k in versions(acme)] == [1]
    with pytest.raises(NotFoundError):
        acme.get("b")
    assert acme.get("a") == b"alpha"
    # The three failovers stayed queued, and were recorded at the end of the next operation
    # of this thread (with its own).
    assert [e.subject for e in failovers(vault)] == ["acme#1"] * 4
    assert vault.audit.verify().ok


def test_the_failover_is_in_the_write_transaction(
    open_vault: Callable[..., kc.Vault], keks: tuple[str, str], kms: kc.LocalKMS
) -> None:
    vault = open_vault(cache_ttl=0)
    acme = vault.scope("acme", kek=list(keks), create=True)
    kms.disable_key(keks[0])
    flushed: list[int] = []
    real = vault._flush_failovers

    def flush(*args: Any, **kwargs: Any) -> None:
        flushed.append(len(vault._keys._failovers))
        real(*args, **kwargs)

    vault._flush_failovers = flush  # type: ignore[method-assign]
    acme.put("a", b"alpha")
    # Nothing was left for the end of the operation: the write's transaction took it.
    assert flushed and not any(flushed)
    [event] = failovers(vault)
    put = next(e for e in vault.audit.events() if e.action == "record.put")
    assert event.seq == put.seq + 1  # appended just before the commit, after the change
    kms.enable_key(keks[0])


# -- threads ------------------------------------------------------------------------------------


def test_a_write_never_takes_another_threads_failover(
    open_vault: Callable[..., kc.Vault], keks: tuple[str, str], kms: kc.LocalKMS
) -> None:
    vault = open_vault(cache_ttl=0)
    acme = vault.scope("acme", kek=list(keks), create=True)
    acme.put("a", b"alpha")
    globex = vault.scope("globex", kek=kms.create_key("globex-kek"), create=True)
    kms.disable_key(keks[0])
    with vault._read() as s:
        ref = acme._ref
        row = s.get(ScopeKeyRow, (ref.id, 1))
        assert row is not None and row.wrapped is not None
        primary = WrappedKey(KeyId(row.kek_id or ""), row.kek_version or "", row.wrapped)
        wraps = [primary, *extra_wraps(s, ref.id, 1)]
    queued = threading.Event()
    proceed = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        # A read in another thread fails over, and has not recorded it yet.
        try:
            vault._keys.unwrap_tenant(ref, 1, wraps)
            queued.set()
            proceed.wait(30)
            vault._flush_failovers()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)
            queued.set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert queued.wait(30)
        globex.put("b", b"beta")  # a write here: its transaction leaves that failover alone
        assert failovers(vault) == []
        assert vault._keys.take_failovers() == []
    finally:
        proceed.set()
        thread.join(30)
    assert errors == []
    [event] = failovers(vault)  # recorded by the thread that queued it
    assert event.subject == "acme#1"


def test_concurrent_writers_each_record_their_own_failovers(
    open_vault: Callable[..., kc.Vault], keks: tuple[str, str], kms: kc.LocalKMS
) -> None:
    # Record writers side by side (PostgreSQL: shared write lock), each failing over inside
    # its transaction: every one appends its event under the audit head lock before its
    # commit; none waits on another's (no deadlock), and the chain stays whole.
    vault = open_vault(cache_ttl=0)
    acme = vault.scope("acme", kek=list(keks), create=True)
    kms.disable_key(keks[0])
    threads, puts = 4, 5
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def writer(n: int) -> None:
        try:
            start.wait(30)
            for i in range(puts):
                acme.put(f"t{n}/{i}", b"x" * i)
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert errors == []
    assert len(failovers(vault)) == threads * puts  # one unwrap per put (no cache)
    assert vault._keys.take_failovers(every_thread=True) == []
    assert vault.audit.verify().ok
    kms.enable_key(keks[0])
    assert len(acme.list()) == threads * puts
