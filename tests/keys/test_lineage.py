"""Lineage: for a record, its DEK, the key chain up to the KEK and every key event since it was
sealed; for a key, the records it protects (child scopes included)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import keycustody as kc
from keycustody.keys.lineage import KeyLink, LineageEvent, RecordLineage
from keycustody.keys.states import ACTIVE, DEACTIVATED, DESTROYED
from keycustody.types import KeyVersionInfo


def versions_of(scope: kc.Scope) -> list[KeyVersionInfo]:
    """``scope.keys()``: every version of the scope's key (a list, not a dict's keys)."""
    return scope.keys()


def _events(lineage: RecordLineage) -> list[tuple[str, int | None, int | None]]:
    return [(e.event, e.from_version, e.to_version) for e in lineage]


def test_lineage_after_two_rotations_a_rewrap_and_a_kek_rotation(
    vault: kc.Vault, acme: kc.Scope, kms: kc.LocalKMS
) -> None:
    started = datetime.now(UTC)
    info = acme.put("src/app.py", b"print('v1')")
    acme.rotate_key()
    acme.put("src/v2.py", b"v2")
    acme.rotate_key()
    acme.put("src/v3.py", b"v3")
    acme.rewrap()

    lineage = acme.lineage("src/app.py")
    assert isinstance(lineage, RecordLineage)
    assert (lineage.name, lineage.scope) == ("src/app.py", "acme")
    assert lineage.dek_id == info.record_id  # one DEK per record, named by the record id
    assert (lineage.sealed_version, lineage.key_version) == (1, 3)
    assert (lineage.kek_id, lineage.kek_version) == ("local:acme-kek", "1")
    assert lineage.chain == [KeyLink("acme", 3, ACTIVE, "kek:local:acme-kek#1")]
    assert _events(lineage) == [("sealed", None, 1), ("rewrapped", 1, 3)]
    # It is a sequence of events, oldest first, with aware UTC times.
    assert len(lineage) == 2
    assert isinstance(lineage[0], LineageEvent)
    assert list(lineage[0:1]) == [lineage[0]]
    assert all(e.scope == "acme" for e in lineage)
    assert started <= lineage[0].at <= lineage[1].at <= datetime.now(UTC)
    assert all(e.at.tzinfo is not None for e in lineage)

    assert _events(acme.lineage("src/v2.py")) == [("sealed", None, 2), ("rewrapped", 2, 3)]
    assert _events(acme.lineage("src/v3.py")) == [("sealed", None, 3)]

    kek2 = kms.create_key("acme-kek-2")
    assert vault.rotate_kek("acme", kek2) == 1  # versions 1 and 2 were destroyed by rewrap
    lineage = acme.lineage("src/app.py")
    assert _events(lineage) == [
        ("sealed", None, 1),
        ("rewrapped", 1, 3),
        ("kek_rotated", None, None),
    ]
    moved = lineage[-1]
    assert moved.scope == "acme"
    assert moved.details == {"from": ["local:acme-kek#1"], "to": "local:acme-kek-2#1"}
    assert (lineage.kek_id, lineage.kek_version) == ("local:acme-kek-2", "1")
    assert lineage.chain == [KeyLink("acme", 3, ACTIVE, "kek:local:acme-kek-2#1")]

    # A rotation inside the KMS, then rotate_kek to the same id: the KEK version moves.
    kms.rotate_key(kek2)
    vault.rotate_kek("acme", kek2)
    lineage = acme.lineage("src/app.py")
    assert (lineage.kek_id, lineage.kek_version) == ("local:acme-kek-2", "2")
    assert [e.event for e in lineage].count("kek_rotated") == 2
    assert lineage[-1].details["to"] == "local:acme-kek-2#2"


def test_record_written_after_a_kek_rotation_has_no_earlier_events(
    vault: kc.Vault, acme: kc.Scope, kms: kc.LocalKMS
) -> None:
    acme.put("old.py", b"old")
    vault.rotate_kek("acme", kms.create_key("acme-kek-2"))
    acme.put("new.py", b"new")
    assert _events(acme.lineage("new.py")) == [("sealed", None, 1)]
    assert [e.event for e in acme.lineage("old.py")] == ["sealed", "kek_rotated"]


def test_lineage_of_a_child_record_walks_up_to_the_kek(
    vault: kc.Vault, acme: kc.Scope, kms: kc.LocalKMS
) -> None:
    repo = vault.scope("acme/repos/api", create=True)
    acme.rotate_key()  # acme/repos stays wrapped by acme v1 until a rewrap
    info = repo.put("main.py", b"main")

    lineage = repo.lineage("main.py")
    assert lineage.dek_id == info.record_id
    assert lineage.chain == [
        KeyLink("acme/repos/api", 1, ACTIVE, "scope:acme/repos#v1"),
        KeyLink("acme/repos", 1, ACTIVE, "scope:acme#v1"),
        KeyLink("acme", 1, DEACTIVATED, "kek:local:acme-kek#1"),
    ]
    assert (lineage.kek_id, lineage.kek_version) == ("local:acme-kek", "1")
    assert _events(lineage) == [("sealed", None, 1)]

    acme.rewrap()  # the child key moves below acme v2; acme v1 is destroyed
    vault.rotate_kek("acme", kms.create_key("acme-kek-2"))
    lineage = repo.lineage("main.py")
    assert lineage.chain == [
        KeyLink("acme/repos/api", 1, ACTIVE, "scope:acme/repos#v1"),
        KeyLink("acme/repos", 1, ACTIVE, "scope:acme#v2"),
        KeyLink("acme", 2, ACTIVE, "kek:local:acme-kek-2#1"),
    ]
    assert lineage.kek_id == "local:acme-kek-2"
    assert [(e.event, e.scope) for e in lineage][-1] == ("kek_rotated", "acme")
    assert [k.state for k in versions_of(acme)] == [DESTROYED, ACTIVE]


def test_lineage_of_a_reencrypted_record(acme: kc.Scope) -> None:
    first = acme.put("a.py", b"alpha")
    acme.mark_compromised(reason="test")
    acme.reencrypt()
    lineage = acme.lineage("a.py")
    assert lineage.dek_id != first.record_id  # a new DEK
    assert (lineage.sealed_version, lineage.key_version) == (2, 2)
    reencrypted = [e for e in lineage if e.event == "reencrypted"]
    assert [(e.from_version, e.to_version) for e in reencrypted] == [(1, 2)]
    assert reencrypted[0].details == {"previous_record_id": first.record_id}


def test_lineage_errors(vault: kc.Vault, acme: kc.Scope) -> None:
    with pytest.raises(kc.NotFoundError):
        acme.lineage("missing.py")
    with pytest.raises(kc.InvalidInputError):
        acme.lineage("")


# -- protected_by ------------------------------------------------------------------------


def test_protected_by_a_kek_or_a_key_version_counts_child_scopes(
    vault: kc.Vault, acme: kc.Scope, kms: kc.LocalKMS
) -> None:
    repo = vault.scope("acme/repos/api", create=True)
    globex = vault.scope("globex", kek=kms.create_key("globex-kek"), create=True)
    acme.put_many((f"a{i}", b"x") for i in range(10))
    repo.put_many((f"r{i}", b"y") for i in range(5))
    acme.rotate_key()
    acme.put_many((f"b{i}", b"z") for i in range(3))
    globex.put_many((f"g{i}", b"w") for i in range(7))

    by_kek = vault.protected_by("local:acme-kek")
    assert by_kek.key == "local:acme-kek"
    assert by_kek.records == 18
    assert by_kek.by_scope == {"acme": 13, "acme/repos": 0, "acme/repos/api": 5}
    assert by_kek.key_versions == ["acme#1", "acme#2", "acme/repos#1", "acme/repos/api#1"]

    v1 = vault.protected_by("acme#1")
    assert (v1.records, v1.by_scope) == (15, {"acme": 10, "acme/repos": 0, "acme/repos/api": 5})
    v2 = vault.protected_by("acme#v2")
    assert (v2.records, v2.by_scope) == (3, {"acme": 3})
    assert vault.protected_by("acme").records == 18
    assert vault.protected_by("acme/repos").records == 5
    assert vault.protected_by("local:globex-kek").by_scope == {"globex": 7}

    acme.rewrap()  # everything moves below acme v2, the child key included
    assert vault.protected_by("acme#1").records == 0
    v2 = vault.protected_by("acme#2")
    assert (v2.records, v2.by_scope["acme/repos/api"]) == (18, 5)
    kek2 = kms.create_key("acme-kek-2")
    vault.rotate_kek("acme", kek2)
    assert vault.protected_by(kek2).records == 18
    assert vault.protected_by("local:acme-kek").records == 0


def test_protected_by_errors(vault: kc.Vault, acme: kc.Scope) -> None:
    with pytest.raises(kc.InvalidInputError):
        vault.protected_by("acme#x")
    with pytest.raises(kc.NotFoundError):
        vault.protected_by("nope")
    assert vault.protected_by("local:unknown").records == 0


def test_protected_by_counts_every_key_version_of_a_child(vault: kc.Vault, acme: kc.Scope) -> None:
    child = vault.scope("acme/api", create=True)
    child.put("one.py", b"1")
    child.rotate_key()  # child v2 is wrapped by acme v1 as well
    child.put("two.py", b"2")
    protection = vault.protected_by("local:acme-kek")
    assert protection.by_scope == {"acme": 0, "acme/api": 2}
    assert protection.key_versions == ["acme#1", "acme/api#1", "acme/api#2"]
    assert vault.protected_by("acme#1").records == 2


def test_vault_key_versions_are_every_scopes_keys(
    vault: kc.Vault, acme: kc.Scope, kms: kc.LocalKMS
) -> None:
    """``vault.key_versions()`` (three queries) lists what each scope's ``keys()`` does, in
    scope path order: states, wrappers (several KEKs too), record counts, parents."""
    acme.put_many([("a.py", b"a"), ("b.py", b"b")])
    acme.rotate_key()
    acme.put("c.py", b"c")
    vault.add_kek("acme", kms.create_key("acme-dr"))
    child = vault.scope("acme/api", create=True)
    child.put("one.py", b"1")
    child.rotate_key()
    vault.scope("globex", kek=kms.create_key("globex-kek"), create=True).mark_compromised(
        reason="test"
    )
    found = vault.key_versions()
    assert list(found) == vault.scopes() == ["acme", "acme/api", "globex"]
    assert found == {path: vault.scope(path).keys() for path in vault.scopes()}
    assert [v.records for v in found["acme"]] == [2, 1]
    assert found["acme"][0].also_wrapped_by


def test_child_record_lineage_shows_the_parent_rewrapping_its_key(vault: kc.Vault) -> None:
    """A child record's key path changes when an ancestor is rotated and rewrapped: the
    record's lineage says so, naming the ancestor, and its chain shows the new versions."""
    vault.scope("acme", create=True)
    child = vault.scope("acme/repos/api", create=True)
    child.put("a.py", b"a")
    vault.scope("acme").rotate_key()
    vault.scope("acme").rewrap()
    vault.scope("acme/repos").rotate_key()
    vault.scope("acme/repos").rewrap()
    lineage = child.lineage("a.py")
    moved = [(e.scope, e.to_version) for e in lineage if e.event == "child_keys_rewrapped"]
    assert moved == [("acme", 2), ("acme/repos", 2)]
    assert lineage[0].event == "sealed"
    chain = [(link.scope, link.version) for link in lineage.chain]
    assert chain == [("acme/repos/api", 1), ("acme/repos", 2), ("acme", 2)]
