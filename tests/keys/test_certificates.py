"""Erasure certificates (TESTPLAN §3.2, T30): the NIST SP 800-88 field set, sealed by its
SHA-256 and anchored in the audit trail, so that any edit of the certificate, of the event that
records it, or of the trail around it fails verification."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import keycustody as kc
from dbadmin import AUDIT_COLUMNS, raw_db
from keycustody.keys.shredding import CERTIFICATE_FORMAT, ErasureCertificate

SHRED = "acme/subjects/alice"
REASON = "GDPR Art.17 request #123"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

LeafPath = tuple[str | int, ...]


@pytest.fixture
def shredded(vault: kc.Vault, kms: kc.LocalKMS) -> kc.ErasureCertificate:
    """acme (own KEK) with a repo, alice (and alice/chats) and bob; alice shredded."""
    vault.scope("acme", kek=kms.create_key("acme-kek"), create=True).put("a.py", b"a")
    vault.scope("acme/repos/api", create=True).put("main.py", b"main")
    vault.scope(SHRED, create=True).put_many([(f"n{i}", b"x" * i) for i in range(25)])
    vault.scope(f"{SHRED}/chats", create=True).put_many([(f"c{i}", b"c") for i in range(5)])
    vault.scope("acme/subjects/bob", create=True).put("b", b"b")
    vault.scope(SHRED).rotate_key()
    return vault.shred(SHRED, reason=REASON)


def leaves(node: Any, path: LeafPath = ()) -> Iterator[tuple[LeafPath, Any]]:
    """Every leaf (scalar or empty container) of a JSON document with its path."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list) and node:
        for i, value in enumerate(node):
            yield from leaves(value, (*path, i))
    else:
        yield path, node


def changed(value: Any) -> Any:
    """A different value of the kind a forger would try."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1") if value else "x"
    if value is None:
        return "forged"
    if isinstance(value, list):
        return ["forged"]
    return {"forged": True}


def with_leaf(document: dict[str, Any], path: LeafPath, value: Any) -> dict[str, Any]:
    forged = copy.deepcopy(document)
    node: Any = forged
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return forged


# -- content -----------------------------------------------------------------------------


def test_certificate_holds_the_sp800_88_record(
    vault: kc.Vault, shredded: kc.ErasureCertificate
) -> None:
    doc = shredded.document
    assert doc["format"] == CERTIFICATE_FORMAT
    assert re.fullmatch(r"ec-[0-9a-f]{16}", shredded.id)
    # Who.
    assert doc["who"]["operator"] == vault.actor
    assert doc["who"]["role"]
    # What: the tenant, scope and subtree, every destroyed key version, the records.
    what = doc["what"]
    assert (what["vault_id"], what["tenant"], what["scope"]) == (vault.id, "acme", SHRED)
    assert what["reason"] == REASON
    assert set(what["subtree"]) == {SHRED, f"{SHRED}/chats"}
    destroyed = {(k["scope"], k["version"]) for k in what["key_versions_destroyed"]}
    assert destroyed == {(SHRED, 1), (SHRED, 2), (f"{SHRED}/chats", 1)}
    assert {k["state_before"] for k in what["key_versions_destroyed"]} == {
        "ACTIVE",
        "DEACTIVATED",
    }
    assert all(k["wrapped_by"].startswith("parent scope key v") for k in destroyed_rows(doc))
    assert what["kek"] == {"id": "local:acme-kek", "provider": "local"}
    assert what["records_by_scope"] == {SHRED: 25, f"{SHRED}/chats": 5}
    assert what["records_unreadable"] == shredded.records_unreadable == 30
    assert "backup" in what["backups"]
    # How.
    how = doc["how"]
    assert how["method_type"] == "Purge"
    assert how["technique"] == "Cryptographic Erase by key destruction"
    assert how["tool"] == f"keycustody {kc.__version__}"
    assert how["key_strength"] == "AES-256"
    assert "encrypted" in how["precondition"]
    scrub = how["storage_scrub"]
    if scrub["backend"] == "sqlite":
        assert scrub["secure_delete"] == "ON" and scrub["checkpoint_complete"] is True
    else:
        assert (
            scrub["command"] == "VACUUM FULL scope_keys, scope_key_wraps"
            and scrub["performed"] is True
        )
    assert how["kek_destruction"] is None
    # When.
    when = doc["when"]
    assert ISO.match(when["requested"]) and ISO.match(when["phase1_completed"])
    assert when["requested"] <= when["phase1_completed"]
    assert when["phase2"]["status"] == shredded.phase2_status == "pending"
    assert when["phase2"]["confirmed_at"] is None
    # Verification: sampled reads refused, forensic scan of the files.
    sample = doc["verification"]["sample"]
    assert (sample["tried"], sample["refused_with_shredded_error"], sample["result"]) == (
        2,
        2,
        "pass",
    )
    scan = doc["verification"]["forensic_scan"]
    if scrub["backend"] == "sqlite":
        assert scan["hits"] == 0 and scan["values_searched"] == 3
    else:  # the server's files are out of a client's reach (tests/storage/test_postgres.py)
        assert scan["performed"] is False and "server" in scan["why"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) for f in scan["files"])
    # Residual risk, stated plainly.
    risk = " ".join(doc["residual_risk"]).lower()
    assert "backups" in risk and "wal" in risk and "purge" in risk
    # Integrity: sealed and anchored in the audit trail.
    integrity = doc["integrity"]
    assert integrity["sha256"] == shredded.sha256
    event = next(e for e in vault.audit.events() if e.seq == integrity["audit_seq"])
    assert event.action == "erasure.certificate"
    assert event.subject == SHRED
    assert event.hash.hex() == integrity["audit_event_hash"]
    assert event.details_dict() == {"certificate": shredded.id, "sha256": shredded.sha256}
    assert [c.document for c in vault.certificates()] == [doc]


def destroyed_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = doc["what"]["key_versions_destroyed"]
    return rows


def test_certificate_verifies_as_issued_as_stored_and_as_a_file(
    vault: kc.Vault, shredded: kc.ErasureCertificate, tmp_path: Path
) -> None:
    ok, why = vault.verify_certificate(shredded.document)
    assert ok, why
    assert f"audit event {shredded.document['integrity']['audit_seq']}" in why
    (stored,) = vault.certificates()
    assert vault.verify_certificate(stored.document)[0]
    shredded.save(tmp_path / "cert.json")
    assert vault.verify_certificate(json.loads((tmp_path / "cert.json").read_text()))[0]


# -- any edit fails ----------------------------------------------------------------------


def test_changing_any_field_of_the_certificate_fails(
    vault: kc.Vault, shredded: kc.ErasureCertificate
) -> None:
    """Every leaf of the document, the integrity section included, changed in turn."""
    document = json.loads(shredded.to_json())
    found = list(leaves(document))
    assert len(found) > 40
    assert any(p[0] == "integrity" for p, _ in found)
    for path, value in found:
        forged = with_leaf(document, path, changed(value))
        assert forged != document
        ok, why = vault.verify_certificate(forged)
        assert not ok, f"a change of {'.'.join(map(str, path))} went unnoticed"
        assert why
    assert vault.verify_certificate(document)[0]


def test_adding_or_removing_a_field_fails(
    vault: kc.Vault, shredded: kc.ErasureCertificate
) -> None:
    document = json.loads(shredded.to_json())
    extra = copy.deepcopy(document)
    extra["what"]["approved_by"] = "someone"
    assert not vault.verify_certificate(extra)[0]
    for section in [k for k in document if k != "integrity"]:
        fewer = copy.deepcopy(document)
        del fewer[section]
        assert not vault.verify_certificate(fewer)[0], section
    fewer = copy.deepcopy(document)
    fewer["residual_risk"].pop()
    assert not vault.verify_certificate(fewer)[0]
    unsealed = copy.deepcopy(document)
    del unsealed["integrity"]
    assert not vault.verify_certificate(unsealed)[0]


def test_a_forger_who_reseals_the_certificate_still_fails(
    vault: kc.Vault, shredded: kc.ErasureCertificate
) -> None:
    """Recomputing the SHA-256 after an edit does not help: the audit trail recorded the
    original digest under the audit key's MAC."""
    forged = json.loads(shredded.to_json())
    forged["what"]["records_unreadable"] = 1_000_000
    forged["integrity"]["sha256"] = ErasureCertificate(forged).sha256
    ok, why = vault.verify_certificate(forged)
    assert not ok
    assert "does not record this certificate" in why


def _event_row(db_url: str, seq: int) -> dict[str, Any]:
    conn = raw_db(db_url)
    try:
        return conn.dicts("SELECT * FROM audit_events WHERE seq = ?", (seq,))[0]
    finally:
        conn.close()


def _set_column(db_url: str, seq: int, column: str, value: Any) -> None:
    conn = raw_db(db_url)
    try:
        conn.execute(f"UPDATE audit_events SET {column} = ? WHERE seq = ?", (value, seq))
    finally:
        conn.close()


def _forge(column: str, value: Any) -> Any:
    if column == "seq":
        return value + 1000
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if column == "details":
        details = json.loads(value)
        details["sha256"] = "0" * 64
        return json.dumps(details, sort_keys=True, separators=(",", ":"))
    if isinstance(value, datetime):  # PostgreSQL
        return value + timedelta(microseconds=1)
    if column == "at":
        return value[:-1] + ("1" if value[-1] != "1" else "2")
    if value is None:
        return "forged"
    return changed(value)


@pytest.mark.parametrize("column", AUDIT_COLUMNS)
def test_a_tampered_anchoring_audit_event_fails(
    vault: kc.Vault, shredded: kc.ErasureCertificate, db_url: str, column: str
) -> None:
    seq = shredded.document["integrity"]["audit_seq"]
    original = _event_row(db_url, seq)[column]
    forged = _forge(column, original)
    _set_column(db_url, seq, column, forged)
    ok, why = vault.verify_certificate(shredded.document)
    assert not ok, column
    assert str(seq) in why
    _set_column(db_url, forged if column == "seq" else seq, column, original)
    assert vault.verify_certificate(shredded.document)[0]


def test_a_broken_audit_trail_anywhere_fails_the_certificate(
    vault: kc.Vault, shredded: kc.ErasureCertificate, db_url: str
) -> None:
    row = _event_row(db_url, 2)
    _set_column(db_url, 2, "actor", "mallory@elsewhere")
    ok, why = vault.verify_certificate(shredded.document)
    assert not ok
    assert "broken at event 2" in why
    _set_column(db_url, 2, "actor", row["actor"])
    conn = raw_db(db_url)
    try:
        conn.execute("DELETE FROM audit_events WHERE seq = ?", (3,))
    finally:
        conn.close()
    assert not vault.verify_certificate(shredded.document)[0]


def test_a_tampered_stored_certificate_fails(
    vault: kc.Vault, shredded: kc.ErasureCertificate, db_url: str
) -> None:
    conn = raw_db(db_url)
    try:
        body = json.loads(
            conn.execute(
                "SELECT body FROM erasure_certificates WHERE id = ?", (shredded.id,)
            ).fetchone()[0]
        )
        body["what"]["records_by_scope"][SHRED] = 0
        conn.execute(
            "UPDATE erasure_certificates SET body = ? WHERE id = ?",
            (json.dumps(body), shredded.id),
        )
    finally:
        conn.close()
    (stored,) = vault.certificates()
    ok, why = vault.verify_certificate(stored.document)
    assert not ok
    assert "SHA-256" in why


def test_a_certificate_of_another_vault_fails(
    shredded: kc.ErasureCertificate, tmp_path: Path, kms: kc.LocalKMS
) -> None:
    (tmp_path / "other").mkdir()
    with kc.Vault.open(f"sqlite:///{tmp_path / 'other' / 'o.db'}", kms=kms) as other:
        other.scope("x", create=True).put("a", b"a")
        ok, why = other.verify_certificate(shredded.document)
    assert not ok
    assert why


# -- phase 2 -----------------------------------------------------------------------------


def test_the_phase_2_certificate_verifies_and_shows_confirmation(
    vault: kc.Vault, kms: kc.LocalKMS, shredded: kc.ErasureCertificate
) -> None:
    (updated,) = vault.complete_erasures()
    assert updated.id == shredded.id
    ok, why = vault.verify_certificate(updated.document)
    assert ok, why
    phase2 = updated.document["when"]["phase2"]
    assert phase2["status"] == updated.phase2_status == "confirmed"
    assert ISO.match(phase2["confirmed_at"]) and ISO.match(phase2["scheduled_at"])
    assert phase2["confirmed_at"] >= updated.document["when"]["phase1_completed"]
    assert phase2["events"] == ["local:acme-kek version 1 destroyed"]
    assert kms.describe_key("local:acme-kek")["versions"]["1"]["state"] == "destroyed"
    assert phase2["ancestors_rekeyed"] == ["acme/subjects", "acme"]
    # Everything but phase 2, the residual risk and the seal is what phase 1 certified.
    for section in ("format", "certificate_id", "who", "what", "how", "verification"):
        assert updated.document[section] == shredded.document[section], section
    assert updated.document["when"]["requested"] == shredded.document["when"]["requested"]
    integrity = updated.document["integrity"]
    assert integrity["audit_seq"] > shredded.document["integrity"]["audit_seq"]
    event = next(e for e in vault.audit.events() if e.seq == integrity["audit_seq"])
    assert (event.action, event.subject) == ("erasure.phase2", SHRED)
    assert event.details_dict() == {"certificate": updated.id, "sha256": updated.sha256}
    # The stored certificate is the confirmed one; the phase 1 document still verifies as the
    # record of phase 1 (its own audit event is unchanged).
    (stored,) = vault.certificates()
    assert stored.document == updated.document
    assert vault.verify_certificate(shredded.document)[0]
    # And an edit of the confirmation fails like any other.
    forged = copy.deepcopy(updated.document)
    forged["when"]["phase2"]["events"] = []
    assert not vault.verify_certificate(forged)[0]


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda d: {"integrity": "x"}, id="integrity-not-an-object"),
        pytest.param(
            lambda d: {**d, "integrity": {**d["integrity"], "audit_seq": "9"}}, id="seq-text"
        ),
        pytest.param(
            lambda d: {**d, "integrity": {**d["integrity"], "audit_seq": 10**30}}, id="seq-huge"
        ),
        pytest.param(
            lambda d: {
                "what": 1,
                "integrity": {"sha256": ErasureCertificate({"what": 1}).sha256, "audit_seq": 1},
            },
            id="sealed-but-no-id",
        ),
    ],
)
def test_a_malformed_certificate_is_reported_not_raised(
    vault: kc.Vault, shredded: kc.ErasureCertificate, mangle: Any
) -> None:
    document = mangle(json.loads(shredded.to_json()))
    ok, why = vault.verify_certificate(document)
    assert not ok
    assert why
