"""Revocation: suspend/resume of a scope and its subtree, a KEK disabled in the KMS (bounded by
the key cache TTL), and suspension seen across processes within ``revalidate_s``."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

import keycustody as kc
from dbadmin import raw_db
from keycustody.keys.states import ACTIVE, SUSPENDED

Op = Callable[[], object]


def stored(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The records and key rows as a raw connection sees them."""
    with raw_db(db_url) as conn:
        return {
            "records": conn.rows("SELECT * FROM records ORDER BY record_id"),
            "segments": conn.rows("SELECT * FROM segments ORDER BY record_id, seq"),
            "scope_keys": conn.rows("SELECT * FROM scope_keys ORDER BY scope_id, version"),
        }


def scope_state(db_url: str, path: str) -> str:
    with raw_db(db_url) as conn:
        got = conn.one("SELECT state FROM scopes WHERE path = ?", (path,))
    assert got is not None
    return str(got[0])


def operations(scope: kc.Scope, blob: bytes) -> dict[str, Op]:
    """Every way to encrypt or decrypt under a scope, by name."""
    return {
        "put": lambda: scope.put("new.py", b"new"),
        "put_many": lambda: scope.put_many([("n1", b"1"), ("n2", b"2")]),
        "put_stream": lambda: scope.put_stream("s.bin", io.BytesIO(b"stream")),
        "get": lambda: scope.get("a.py"),
        "get_many": lambda: scope.get_many(["a.py", "b.py"]),
        "get_missing": lambda: scope.get("missing.py"),
        "open_stream": lambda: scope.open_stream("big.bin"),
        "list": scope.list,
        "seal": lambda: scope.seal("x.py", b"x"),
        "seal_many": lambda: scope.seal_many([("x.py", b"x")]),
        "open": lambda: scope.open("x.py", blob),
        "open_many": lambda: scope.open_many([("x.py", blob)]),
        "delete": lambda: scope.delete("a.py"),
        "lineage": lambda: scope.lineage("a.py"),
        "rotate_key": scope.rotate_key,
        "rewrap": scope.rewrap,
        "reencrypt": scope.reencrypt,
    }


def _fill(scope: kc.Scope) -> tuple[dict[str, bytes], bytes]:
    data = {"a.py": b"alpha " + scope.path.encode(), "b.py": b"bravo"}
    scope.put_many(data.items())
    scope.put_stream("big.bin", io.BytesIO(b"s" * 70_000))
    data["big.bin"] = b"s" * 70_000
    return data, scope.seal("x.py", b"sealed in " + scope.path.encode())


def _assert_readable(scope: kc.Scope, data: dict[str, bytes], blob: bytes) -> None:
    assert scope.get_many(data) == data
    assert scope.open("x.py", blob) == b"sealed in " + scope.path.encode()
    assert sorted(i.name for i in scope.list()) == sorted(data)


# -- suspend / resume --------------------------------------------------------------------


def test_suspend_revokes_scope_and_subtree_resume_restores_everything(
    vault: kc.Vault, acme: kc.Scope, db_url: str, kms: kc.LocalKMS
) -> None:
    child = vault.scope("acme/repos/api", create=True)
    other = vault.scope("globex", create=True)
    filled = {s.path: _fill(s) for s in (acme, child, other)}
    before = stored(db_url)

    acme.suspend(reason="incident 4711: tenant under investigation")
    assert scope_state(db_url, "acme") == SUSPENDED
    assert scope_state(db_url, "acme/repos/api") == ACTIVE  # revoked through its ancestor

    for scope in (acme, child):
        for name, op in operations(scope, filled[scope.path][1]).items():
            with pytest.raises(kc.KeyRevokedError, match="suspended"):
                op()
                pytest.fail(f"{name} of {scope.path} worked while suspended")
    with pytest.raises(kc.KeyRevokedError):
        vault.rotate_kek("acme", kms.create_key("acme-kek-2"))
    # Another vault (a cold cache, as in another process) is refused too.
    with kc.Vault.open(db_url, kms=kms) as cold:
        with pytest.raises(kc.KeyRevokedError):
            cold.scope("acme/repos/api").get("a.py")
        with pytest.raises(kc.KeyRevokedError):
            cold.scope("acme").put("a.py", b"overwrite")
    # Other tenants are not affected.
    _assert_readable(other, *filled["globex"])
    with pytest.raises(kc.InvalidInputError):
        acme.suspend()  # already suspended
    assert stored(db_url) == before  # nothing was written or lost while suspended

    acme.resume()
    assert scope_state(db_url, "acme") == ACTIVE
    assert stored(db_url) == before
    for scope in (acme, child, other):
        _assert_readable(scope, *filled[scope.path])
    assert acme.put("after.py", b"after").key_version == 1
    with pytest.raises(kc.InvalidInputError):
        acme.resume()  # not suspended


def test_suspending_a_child_leaves_the_parent_usable(vault: kc.Vault, acme: kc.Scope) -> None:
    child = vault.scope("acme/subjects/alice", create=True)
    grandchild = vault.scope("acme/subjects/alice/notes", create=True)
    acme_data, acme_blob = _fill(acme)
    _fill(child)
    grandchild.put("n.txt", b"note")
    child.suspend()
    _assert_readable(acme, acme_data, acme_blob)
    with pytest.raises(kc.KeyRevokedError, match="through 'acme/subjects/alice'"):
        grandchild.get("n.txt")
    with pytest.raises(kc.KeyRevokedError):
        child.get("a.py")
    child.resume()
    assert grandchild.get("n.txt") == b"note"


def test_list_of_an_empty_suspended_scope_is_refused(vault: kc.Vault, acme: kc.Scope) -> None:
    empty = vault.scope("acme/empty", create=True)
    acme.suspend()
    with pytest.raises(kc.KeyRevokedError):
        empty.list()


# -- KEK disabled in the KMS -------------------------------------------------------------


def test_disabled_kek_stops_working_once_the_cache_ttl_expires(
    db_url: str, kms: kc.LocalKMS
) -> None:
    kek = kms.create_key("acme-kek")
    ttl = 0.3
    with kc.Vault.open(db_url, kms=kms, cache_ttl=ttl) as vault:
        acme = vault.scope("acme", kek=kek, create=True)
        child = vault.scope("acme/repos/api", create=True)
        acme.put("a.py", b"alpha")
        child.put("c.py", b"child")
        assert acme.get("a.py") == b"alpha"  # warm the cache right before disabling
        assert child.get("c.py") == b"child"

        kms.disable_key(kek)
        # Documented bound (DESIGN §2): unwrapped scope keys stay cached for up to cache_ttl
        # seconds, so reads keep working until the TTL expires; then the KMS is asked again.
        assert acme.get("a.py") == b"alpha"
        assert child.get("c.py") == b"child"

        time.sleep(ttl + 0.1)
        with pytest.raises(kc.KeyRevokedError, match="disabled"):
            acme.get("a.py")
        with pytest.raises(kc.KeyRevokedError, match="disabled"):
            child.get("c.py")
        with pytest.raises(kc.KeyRevokedError):
            acme.put("b.py", b"bravo")
        with kc.Vault.open(db_url, kms=kms) as cold, pytest.raises(kc.KeyRevokedError):
            cold.scope("acme").get("a.py")  # a cold cache is refused at once

        kms.enable_key(kek)
        assert acme.get("a.py") == b"alpha"
        assert child.get("c.py") == b"child"
        acme.put("b.py", b"bravo")
        assert acme.get_many(["a.py", "b.py"]) == {"a.py": b"alpha", "b.py": b"bravo"}


# -- across processes --------------------------------------------------------------------

STATE_CHANGER = """
import sys, keycustody as kc
vault = kc.Vault.open(sys.argv[1], kms=kc.LocalKMS(sys.argv[2]))
scope = vault.scope(sys.argv[3])
if sys.argv[4] == "mark_compromised":
    scope.mark_compromised(reason="found in a core dump")
else:
    getattr(scope, sys.argv[4])()
vault.close()
"""


def _in_other_process(db_url: str, kms: kc.LocalKMS, path: str, action: str) -> None:
    subprocess.run(
        [sys.executable, "-c", STATE_CHANGER, db_url, str(kms.path), path, action],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _seconds_until(check: Callable[[], bool], limit: float) -> float:
    """Polls ``check`` until it is true; returns how long that took (fails after ``limit``)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < limit, f"not within {limit} s"
        time.sleep(0.01)
    return time.monotonic() - started


def test_suspend_and_resume_by_another_process_within_revalidate_s(
    db_url: str, kms: kc.LocalKMS
) -> None:
    revalidate_s, margin = 0.3, 0.2
    with kc.Vault.open(db_url, kms=kms, revalidate_s=revalidate_s) as vault:
        acme = vault.scope("acme", create=True)
        child = vault.scope("acme/repos/api", create=True)
        acme.put("a.py", b"alpha")
        child.put("c.py", b"child")

        def revoked(scope: kc.Scope, name: str) -> bool:
            try:
                scope.get(name)
            except kc.KeyRevokedError:
                return True
            return False

        assert not revoked(acme, "a.py")  # warm: cached key and scope state
        _in_other_process(db_url, kms, "acme", "suspend")
        took = _seconds_until(lambda: revoked(acme, "a.py"), 5)
        assert took <= revalidate_s + margin
        assert revoked(child, "c.py")  # the subtree goes with it
        with pytest.raises(kc.KeyRevokedError):
            child.put("d.py", b"delta")

        _in_other_process(db_url, kms, "acme", "resume")
        took = _seconds_until(lambda: not revoked(acme, "a.py"), 5)
        assert took <= revalidate_s + margin
        assert child.get("c.py") == b"child"
        assert acme.get("a.py") == b"alpha"


def test_seal_and_open_from_the_cache_follow_another_process(
    db_url: str, kms: kc.LocalKMS
) -> None:
    """seal and open take their keys from the cache without a session, but read the scope's
    row on every call: another process's rotation is used at once, its suspend within
    revalidate_s."""
    revalidate_s = 0.3
    with kc.Vault.open(db_url, kms=kms, revalidate_s=revalidate_s) as vault:
        acme = vault.scope("acme", create=True)
        blob = acme.seal("x.py", b"x")
        assert acme.open("x.py", blob) == b"x"  # warm: cached key and scope state
        _in_other_process(db_url, kms, "acme", "rotate_key")
        rotated = acme.seal("y.py", b"y")
        assert int.from_bytes(rotated[20:24]) == 2  # the header's key version
        assert acme.open_many([("x.py", blob), ("y.py", rotated)]) == [b"x", b"y"]

        _in_other_process(db_url, kms, "acme", "suspend")

        def revoked() -> bool:
            try:
                acme.open("x.py", blob)
            except kc.KeyRevokedError:
                return True
            return False

        assert _seconds_until(revoked, 5) <= revalidate_s + 0.2
        with pytest.raises(kc.KeyRevokedError):
            acme.seal("z.py", b"z")


def test_suspend_of_a_child_scope_by_another_process(db_url: str, kms: kc.LocalKMS) -> None:
    revalidate_s = 0.3
    with kc.Vault.open(db_url, kms=kms, revalidate_s=revalidate_s) as vault:
        acme = vault.scope("acme", create=True)
        child = vault.scope("acme/repos", create=True)
        acme.put("a.py", b"alpha")
        child.put("c.py", b"child")
        assert child.get("c.py") == b"child"
        _in_other_process(db_url, kms, "acme/repos", "suspend")

        def child_revoked() -> bool:
            try:
                child.get("c.py")
            except kc.KeyRevokedError:
                return True
            return False

        assert _seconds_until(child_revoked, 5) <= revalidate_s + 0.2
        assert acme.get("a.py") == b"alpha"


def test_compromise_by_another_process_within_revalidate_s(db_url: str, kms: kc.LocalKMS) -> None:
    """A key marked compromised elsewhere is no longer served from this process's cache."""
    revalidate_s = 0.3
    with kc.Vault.open(db_url, kms=kms, revalidate_s=revalidate_s) as vault:
        acme = vault.scope("acme", create=True)
        acme.put("a.py", b"alpha")
        assert acme.get("a.py") == b"alpha"  # version 1 is cached here
        _in_other_process(db_url, kms, "acme", "mark_compromised")

        def refused() -> bool:
            try:
                acme.get("a.py")
            except kc.KeyRevokedError:
                return True
            return False

        assert _seconds_until(refused, 5) <= revalidate_s + 0.2
        assert acme.put("b.py", b"bravo").key_version == 2
        acme.reencrypt()
        assert acme.get_many(["a.py", "b.py"]) == {"a.py": b"alpha", "b.py": b"bravo"}
