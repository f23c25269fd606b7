"""keycustody.report on a real vault with several tenants, rotations, a suspension and two
shreds: every fact matches the database, nothing secret is written, the files are written
atomically, and a broken audit trail turns the report red."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from custody_vault import (
    CONFIRMED_SHRED,
    NAME_MARK,
    PENDING_SHRED,
    SUSPENDED,
    Custody,
    build,
    encodings,
    stored_secrets,
)
from sqlalchemy import event, update

import keycustody as kc
from keycustody.errors import OutputError
from keycustody.report import JSON_NAME, REPORT_FORMAT, ReportPaths, gather, write_report
from keycustody.report.facts import TIMELINE_KINDS, TimelineEvent, storage_settings
from keycustody.report.html import _LANE_H, KIND_STYLES, render, timeline_svg
from keycustody.storage.models import ScopeRow

TENANTS = ["acme", "globex", "initech"]
KINDS_MADE = {
    "created",
    "rotated",
    "rewrapped",
    "destroyed",
    "kek_rotated",
    "suspended",
    "shredded",
    "certified",
    "phase2",
}


@pytest.fixture
def custody(vault: kc.Vault, kms: kc.LocalKMS) -> Custody:
    return build(vault, kms)


@pytest.fixture
def written(vault: kc.Vault, custody: Custody, tmp_path: Path) -> ReportPaths:
    return write_report(vault, tmp_path / "out")


def load(paths: ReportPaths) -> dict[str, Any]:
    facts: dict[str, Any] = json.loads(paths.json.read_bytes())
    return facts


def by_path(facts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["path"]: s for s in facts["scopes"]}


# -- the facts are the database's -----------------------------------------------------------


def test_scopes_keys_and_records_match_the_vault(
    vault: kc.Vault, custody: Custody, written: ReportPaths
) -> None:
    facts = load(written)
    assert facts["format"] == REPORT_FORMAT
    assert facts["vault_id"] == vault.id
    assert facts["scope"] is None and facts["include_names"] is False
    assert datetime.fromisoformat(facts["generated_at"]).tzinfo is not None
    scopes = by_path(facts)
    assert list(scopes) == vault.scopes()
    for path, n in custody.records.items():
        assert scopes[path]["records"] == n, path
    for path, s in scopes.items():
        infos = vault.scope(path).keys()
        expected = [{k: v for k, v in i.to_dict().items() if k != "scope"} for i in infos]
        assert s["key_versions"] == expected, path
        assert sum(v["records"] for v in s["key_versions"]) + s["records_derived"] == s["records"]
    assert scopes[SUSPENDED]["state"] == "SUSPENDED"
    for path in (CONFIRMED_SHRED, PENDING_SHRED):
        assert scopes[path]["state"] == "SHREDDED"
        assert {v["state"] for v in scopes[path]["key_versions"]} == {"DESTROYED"}
        assert scopes[path]["erasure_certificate"]
    acme_versions = {v["state"]: v["records"] for v in scopes["acme"]["key_versions"]}
    assert acme_versions["DEACTIVATED"] == custody.records["acme"]
    assert scopes["acme/subjects/alice"]["parent"] == "acme/subjects"
    assert scopes["acme/subjects/alice"]["tenant"] == "acme"
    assert scopes["acme/subjects/alice"]["depth"] == 2


def test_tenants_name_their_kek_where_it_lives_and_its_versions(
    vault: kc.Vault, kms: kc.LocalKMS, custody: Custody, written: ReportPaths
) -> None:
    tenants = {t["tenant"]: t for t in load(written)["tenants"]}
    assert list(tenants) == TENANTS
    assert tenants["acme"]["kek"]["id"] == "local:acme-kek"
    assert tenants["globex"]["kek"]["id"] == "local:globex-kek-2"  # after rotate_kek
    assert tenants[SUSPENDED]["state"] == "SUSPENDED"
    for t in tenants.values():
        kek = t["kek"]
        assert kek["provider"] == "local"
        assert str(kms.path.resolve()) in kek["location"]
        assert kek["versions_in_use"], t
        assert kek["kms_state"]["state"] == "enabled"
    # Phase 2 of acme's erasure gave its KEK a new version and destroyed the old one.
    assert tenants["acme"]["kek"]["versions_in_use"] == ["2"]
    assert tenants["acme"]["kek"]["kms_state"]["versions"] == {"1": "destroyed", "2": "enabled"}


def test_timeline_is_the_audit_trails_key_events(
    vault: kc.Vault, custody: Custody, written: ReportPaths
) -> None:
    timeline = load(written)["timeline"]
    assert {e["kind"] for e in timeline} >= KINDS_MADE
    audit = {e.seq: e for e in vault.audit.events()}
    seqs = [e["seq"] for e in timeline]
    assert seqs == sorted(seqs)
    for ev in timeline:
        stored = audit[ev["seq"]]
        assert (ev["action"], ev["outcome"], ev["actor"]) == (
            stored.action,
            stored.outcome,
            stored.actor,
        )
        assert TIMELINE_KINDS[ev["action"]] == ev["kind"]
        assert datetime.fromisoformat(ev["at"]) == stored.at
    key_events = [e for e in audit.values() if e.action in TIMELINE_KINDS]
    assert len(timeline) == len(key_events)
    suspended = [e for e in timeline if e["kind"] == "suspended"]
    assert [(e["scope"], e["details"]) for e in suspended] == [
        (SUSPENDED, {"reason": "tenant offboarding review"})
    ]
    kek = next(e for e in timeline if e["kind"] == "kek_rotated" and e["scope"] == "globex")
    assert kek["kms_key_id"] == "local:globex-kek-2"
    assert kek["details"]["from"] == ["local:globex-kek#1"]


def test_certificates_audit_usage_config_and_summary(
    vault: kc.Vault, custody: Custody, written: ReportPaths
) -> None:
    facts = load(written)
    trail = vault.audit.verify()
    assert facts["audit"] == {
        "ok": True,
        "events_checked": trail.events_checked,
        "head_seq": trail.head_seq,
        "head_hash": trail.head_hash,
        "first_break": None,
    }
    assert written.audit_head == f"{trail.head_seq}:{trail.head_hash}"

    certificates = {c["scope"]: c for c in facts["certificates"]}
    stored = {c.document["what"]["scope"]: c for c in vault.certificates()}
    assert set(certificates) == set(stored) == {CONFIRMED_SHRED, PENDING_SHRED}
    for path, c in certificates.items():
        assert c["certificate_id"] == stored[path].id
        assert c["sha256"] == stored[path].sha256
        assert c["records_unreadable"] == custody.records[path]
        assert c["verified"] is True, c["verification"]
        assert c["forensic_scan"]["hits"] == 0
        assert c["read_check"]["result"] == "pass"
        assert c["audit_seq"] == stored[path].document["integrity"]["audit_seq"]
    assert certificates[CONFIRMED_SHRED]["phase2"]["status"] == "confirmed"
    assert certificates[CONFIRMED_SHRED]["phase2"]["confirmed_at"]
    assert certificates[PENDING_SHRED]["phase2"]["status"] == "pending"
    assert certificates[PENDING_SHRED]["reason"] == "GDPR Art.17 request #124"

    assert facts["usage"] == [dataclasses.asdict(u) for u in vault.usage()]

    config = facts["config"]
    assert config["cache_ttl_s"] == 300.0 and config["revalidate_s"] == 1.0
    assert config["audit_kek"] == "local:keycustody-audit"
    assert config["kms_providers"] == {"local": "LocalKMS"}
    storage = config["storage"]
    if storage["backend"] == "sqlite":
        assert storage["secure_delete"] == "ON"
        assert (storage["journal_mode"], storage["synchronous"]) == ("WAL", "FULL")
        assert storage["last_scrub"]["checkpoint"] == "wal_checkpoint(TRUNCATE)"
    else:
        assert storage["backend"] == "postgresql"
        assert storage["server_version"].split(".")[0].isdigit()
        assert storage["fsync"] in ("on", "off") and storage["wal_level"] != "unavailable"
        assert storage["last_scrub"]["command"] == "VACUUM FULL scope_keys, scope_key_wraps"

    summary = facts["summary"]
    shredded = custody.records[CONFIRMED_SHRED] + custody.records[PENDING_SHRED]
    live = sum(custody.records.values()) - shredded
    assert summary["status"] == "amber"  # a suspension and an erasure awaiting phase 2
    assert summary["headline"] == (
        f"All {live} live records are protected by customer-held keys; "
        "1 erasure completed, 1 awaiting phase 2 (backups can still unwrap)"
    )
    assert (summary["records"], summary["records_protected"]) == (live + shredded, live)
    assert summary["records_shredded"] == shredded
    assert summary["erasures"] == {"confirmed": 1, "pending": 1}
    assert (summary["tenants"], summary["scopes"]) == (3, len(vault.scopes()))
    assert any("suspended (initech)" in p["text"] for p in summary["points"])
    assert written.status == "amber"


def test_record_counts_are_sql_aggregates_and_no_key_material_is_read(
    vault: kc.Vault, custody: Custody, tmp_path: Path
) -> None:
    """The report reads no record row and no wrapped key: it only counts, so its cost does
    not grow with the size of the payloads and it cannot leak what it never loaded."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(vault._engine, "before_cursor_execute", seen)
    try:
        write_report(vault, tmp_path / "out")
    finally:
        event.remove(vault._engine, "before_cursor_execute", seen)
    forbidden = re.compile(
        r"records\.(body|header|name_ct|name_index|record_id)|scope_keys\.wrapped|"
        r"audit_keys\.wrapped|segments\."
    )
    assert statements
    assert not [s for s in statements if forbidden.search(s)]
    counts = [s for s in statements if "FROM records" in s]
    assert counts and all("count(" in s.lower() for s in counts)


# -- the HTML page --------------------------------------------------------------------------


def test_html_carries_the_json_digest_and_the_audit_head(
    vault: kc.Vault, custody: Custody, written: ReportPaths
) -> None:
    data = written.json.read_bytes()
    assert hashlib.sha256(data).hexdigest() == written.json_sha256
    page = written.html.read_text(encoding="utf-8")
    facts = load(written)
    assert page.count(written.json_sha256) >= 2
    assert facts["audit"]["head_hash"] in page
    assert f"--expect-head {written.audit_head}" in page
    assert page.startswith("<!DOCTYPE html>")
    for certificate in facts["certificates"]:
        assert certificate["certificate_id"] in page
    for tenant in facts["tenants"]:
        assert tenant["kek"]["id"] in page
    assert 'class="summary status-amber"' in page
    assert facts["summary"]["headline"] in page
    assert page.count('<g class="ev ') == len(facts["timeline"])


def test_html_is_self_contained(custody: Custody, written: ReportPaths) -> None:
    page = written.html.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "<link" not in page.lower() and "@import" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    # The only url(...) reference is the SVG's own hatch pattern.
    assert set(re.findall(r"url\(([^)]*)\)", page)) == {"#hatch"}
    assert "default-src 'none'" in page  # and the CSP forbids fetching anything


def test_html_escapes_what_users_wrote(vault: kc.Vault, kms: kc.LocalKMS, tmp_path: Path) -> None:
    vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
    child = vault.scope("acme/x", create=True)
    child.put("a", b"a")
    evil = "<script>alert('x')</script> & \"quoted\""
    vault.scope("acme/x").suspend(reason=evil)
    vault.scope("acme/x").resume()
    vault.shred("acme/x", reason=evil)
    paths = write_report(vault, tmp_path / "out")
    page = paths.html.read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert json.loads(paths.json.read_bytes())["certificates"][0]["reason"] == evil


def test_every_event_kind_has_a_marker() -> None:
    assert set(KIND_STYLES) == set(TIMELINE_KINDS.values())


def _event(seq: int, scope: str, kind: str, at: datetime) -> TimelineEvent:
    action = next(a for a, k in TIMELINE_KINDS.items() if k == kind)
    return {
        "seq": seq,
        "at": at.isoformat(),
        "action": action,
        "kind": kind,
        "scope": scope,
        "key_version": None,
        "kms_key_id": None,
        "kms_key_version": None,
        "outcome": "ok",
        "actor": "t@h",
        "details": {},
    }


def test_timeline_lanes_per_tenant_when_there_are_many_scopes() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [_event(i, f"t{i % 3}/s{i}", "created", start + timedelta(days=i)) for i in range(60)]
    svg = timeline_svg(events, [])
    assert svg.count('class="lane-label"') == 3  # t0, t1, t2
    assert svg.count('<g class="ev ev-created"') == 60
    few = timeline_svg(events[:5], [])
    assert few.count('class="lane-label"') == 5
    assert "2026-01-0" in few  # a months-long span is labelled with dates
    assert timeline_svg([], []).startswith('<p class="empty">')


@pytest.mark.parametrize("children", [0, 50], ids=["lane per scope", "lane per tenant"])
def test_timeline_shades_each_lanes_own_suspensions_and_shreds(children: int) -> None:
    """t0 suspended then resumed, t1 shredded, t2 suspended to the end; a child scope's
    suspension shades nothing in a tenant's lane (its tenant was not suspended)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    kinds = [("t0", "suspended"), ("t1", "created"), ("t0", "resumed"), ("t1", "shredded")]
    kinds += [("t2", "suspended")] + [(f"t0/c{i}", "created") for i in range(children)]
    if children:
        kinds.append(("t0/c0", "suspended"))
    events = [_event(i, s, k, start + timedelta(hours=i)) for i, (s, k) in enumerate(kinds)]
    svg = timeline_svg(events, [])
    bands = re.findall(r'<rect class="(band-\w+)" x="[\d.]+" y="([\d.]+)"', svg)
    lanes = re.findall(r'class="lane-label" x="[\d.]+" y="([\d.]+)"[^>]*><title>([^<]*)<', svg)
    lane_at = {round(float(y) - _LANE_H / 2 - 4): name for y, name in lanes}
    shaded = sorted((lane_at[round(float(y) - 4)], cls) for cls, y in bands)
    expected = [("t0", "band-suspended"), ("t1", "band-shredded"), ("t2", "band-suspended")]
    assert shaded == expected


# -- filtering, names and secrets -----------------------------------------------------------


def test_scope_filter_restricts_to_the_subtree_but_verifies_the_whole_trail(
    vault: kc.Vault, custody: Custody, tmp_path: Path
) -> None:
    whole = vault.audit.verify()
    acme = load(write_report(vault, tmp_path / "acme", scope="acme"))
    assert acme["scope"] == "acme"
    assert all(s["path"] == "acme" or s["path"].startswith("acme/") for s in acme["scopes"])
    assert [t["tenant"] for t in acme["tenants"]] == ["acme"]
    assert len(acme["certificates"]) == 2
    assert {u["scope"] for u in acme["usage"]} == {s["path"] for s in acme["scopes"]}
    assert {e["scope"].split("/")[0] for e in acme["timeline"]} == {"acme"}
    assert acme["audit"]["events_checked"] == whole.events_checked

    globex = load(write_report(vault, tmp_path / "globex", scope="globex"))
    assert [s["path"] for s in globex["scopes"]] == ["globex"]
    assert globex["certificates"] == []
    assert globex["summary"]["status"] == "green"
    assert globex["summary"]["records_protected"] == custody.records["globex"]

    subjects = load(write_report(vault, tmp_path / "subjects", scope="acme/subjects"))
    assert [s["path"] for s in subjects["scopes"]] == [
        "acme/subjects",
        CONFIRMED_SHRED,
        PENDING_SHRED,
    ]
    assert [t["tenant"] for t in subjects["tenants"]] == ["acme"]  # the KEK above it

    with pytest.raises(kc.NotFoundError):
        write_report(vault, tmp_path / "nope", scope="nope")
    assert not (tmp_path / "nope").exists()


def test_nothing_secret_in_the_report(
    vault: kc.Vault, custody: Custody, written: ReportPaths, db_path: Path
) -> None:
    audit_key = vault.audit._cached()
    assert audit_key is not None
    secrets = (
        custody.scope_keys
        | custody.kek_files
        | stored_secrets(db_path)
        | {bytes(audit_key.export_secret())}
    )
    assert len(custody.scope_keys) >= 10 and len(secrets) > 200
    forms = encodings(secrets)
    for path in (written.json, written.html):
        content = path.read_bytes()
        assert not [f for f in forms if f in content], path.name
        assert NAME_MARK.encode() not in content, path.name
    # Positive control: the scan finds key material when it is there.
    some_key = next(iter(custody.scope_keys))
    assert any(f in some_key.hex().encode() for f in forms)


def test_include_names_lists_the_names_of_readable_scopes(
    vault: kc.Vault, custody: Custody, tmp_path: Path, db_path: Path
) -> None:
    forms = encodings(custody.scope_keys | stored_secrets(db_path))
    head = vault.audit.verify().head_seq
    paths = write_report(vault, tmp_path / "named", include_names=True)
    assert vault.audit.verify().head_seq == head  # no refused listing was recorded
    facts = load(paths)
    scopes = by_path(facts)
    listed = {n["name"] for s in scopes.values() for n in s["names"] or []}
    readable = {n for n in custody.names if not any(p in n for p in ("alice", "bob", "initech"))}
    assert listed == readable
    assert scopes[SUSPENDED]["names"] is None
    assert "SUSPENDED" in scopes[SUSPENDED]["names_note"]
    child = scopes[f"{SUSPENDED}/repos/legacy"]
    assert (child["state"], child["names"]) == ("ACTIVE", None)
    assert child["names_note"] == f"names not listed: scope {SUSPENDED} is SUSPENDED"
    assert scopes[CONFIRMED_SHRED]["names"] is None
    page = paths.html.read_text(encoding="utf-8")
    assert all(name in page for name in readable)
    assert "handle it as confidential" in page
    for path in (paths.json, paths.html):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        content = path.read_bytes()
        assert not [f for f in forms if f in content]


# -- writing the files ----------------------------------------------------------------------


def test_files_are_replaced_atomically_and_failures_are_clear(
    vault: kc.Vault, custody: Custody, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    first = write_report(vault, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"report.html", "report.json"}
    assert stat.S_IMODE(first.json.stat().st_mode) == 0o644

    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("keycustody.report.os.replace", broken)
    with pytest.raises(OutputError, match="No space left on device") as caught:
        write_report(vault, out)
    assert isinstance(caught.value, kc.StorageError)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp file left
    monkeypatch.undo()

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write the report"):
        write_report(vault, blocker / "out")
    second = write_report(vault, out)
    assert second.json.read_bytes() != before[JSON_NAME]  # generated_at moved on
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_a_failing_database_is_a_storage_error(
    vault: kc.Vault, custody: Custody, db_path: Path, tmp_path: Path
) -> None:
    """The report reads some tables directly: their failures are StorageErrors with the
    driver's message too, not SQLAlchemy's text with the statement's parameters."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("ALTER TABLE scopes RENAME TO scopes_away")
    try:
        with pytest.raises(
            kc.StorageError,
            match="gathering the report failed in the database: no such table: scopes",
        ) as caught:
            write_report(vault, tmp_path / "out")
    finally:
        conn.execute("ALTER TABLE scopes_away RENAME TO scopes")
        conn.close()
    assert "[SQL" not in str(caught.value) and "[parameters" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_broken_audit_trail_turns_the_report_red(
    vault: kc.Vault, custody: Custody, db_path: Path, tmp_path: Path
) -> None:
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("UPDATE audit_events SET actor = 'mallory@evil' WHERE seq = 5")
        conn.commit()
    finally:
        conn.close()
    paths = write_report(vault, tmp_path / "out")
    facts = load(paths)
    assert facts["audit"]["ok"] is False and paths.audit_ok is False
    assert facts["audit"]["first_break"]["seq"] == 5
    assert facts["audit"]["events_checked"] == 4
    assert facts["summary"]["status"] == "red"
    assert "the audit trail does NOT verify" in facts["summary"]["headline"]
    assert all(not c["verified"] for c in facts["certificates"])
    page = paths.html.read_text(encoding="utf-8")
    assert 'class="summary status-red"' in page and "broken at event 5" in page


# -- other backends -------------------------------------------------------------------------


def test_storage_settings_read_what_applies_to_the_backend() -> None:
    answers = {
        "SHOW server_version": "16.4",
        "SHOW wal_level": "replica",
        "SHOW archive_mode": "on",
        "SHOW full_page_writes": "on",
    }

    def postgres(sql: str) -> object:
        if sql not in answers:
            from sqlalchemy.exc import OperationalError

            raise OperationalError(sql, {}, Exception("permission denied"))
        return answers[sql]

    pg = storage_settings("postgresql", postgres)
    assert pg["backend"] == "postgresql"
    assert (pg["server_version"], pg["wal_level"], pg["archive_mode"]) == ("16.4", "replica", "on")
    assert pg["fsync"] == "unavailable"
    assert "VACUUM FULL scope_keys" in pg["scrub_on_shred"]
    assert "secure_delete" not in pg

    sqlite_answers: dict[str, object] = {
        "PRAGMA secure_delete": 0,
        "PRAGMA synchronous": 1,
        "PRAGMA journal_mode": "delete",
    }
    lite = storage_settings("sqlite", sqlite_answers.__getitem__)
    assert (lite["secure_delete"], lite["synchronous"], lite["journal_mode"]) == (
        "OFF",
        "NORMAL",
        "DELETE",
    )
    assert storage_settings("mysql", lambda sql: None)["backend"] == "mysql"


@pytest.mark.sqlite_only
def test_secure_delete_off_is_red(vault: kc.Vault, kms: kc.LocalKMS, tmp_path: Path) -> None:
    vault.scope("acme", kek=kms.create_key("acme-kek"), create=True).put("a", b"a")
    assert gather(vault)["summary"]["status"] == "green"

    @event.listens_for(vault._engine, "connect")
    def _off(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA secure_delete=OFF")

    vault._engine.dispose()  # new connections get the listener
    try:
        off = gather(vault)
    finally:
        event.remove(vault._engine, "connect", _off)
        vault._engine.dispose()
    assert off["config"]["storage"]["secure_delete"] == "OFF"
    assert off["summary"]["status"] == "red"
    assert any("secure_delete is OFF" in p["text"] for p in off["summary"]["points"])
    render(off, json_sha256="0" * 64)  # renders whatever the status


def test_records_without_a_tenant_kek_are_red(vault: kc.Vault, kms: kc.LocalKMS) -> None:
    """A tenant whose KEK was removed from the database (only an edit of the database can do
    it) turns the report red, with its records counted in the right number."""
    acme = vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
    acme.put("a", b"a")
    with vault._engine.begin() as conn:
        conn.execute(update(ScopeRow).where(ScopeRow.path == "acme").values(kek_id=None))
    summary = gather(vault)["summary"]
    assert summary["status"] == "red"
    assert "1 record has no tenant KEK" in [p["text"] for p in summary["points"]]
    acme.put("b", b"b")
    points = [p["text"] for p in gather(vault)["summary"]["points"]]
    assert "2 records have no tenant KEK" in points


def test_write_report_needs_no_cli(vault: kc.Vault, kms: kc.LocalKMS, tmp_path: Path) -> None:
    """An empty vault reports cleanly (no tenants, no events but the audit key's)."""
    paths = write_report(vault, os.fspath(tmp_path / "empty"))
    facts = load(paths)
    assert facts["scopes"] == [] and facts["tenants"] == [] and facts["timeline"] == []
    assert facts["summary"]["status"] == "green"
    assert "No key events" in paths.html.read_text(encoding="utf-8")
