"""The erasure and evidence commands (keycustody.cli.evidence) on a real vault file and LocalKMS
folder: shred, erasures ls/complete, purge, cert verify and audit verify/export/tail."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

import keycustody as kc
from keycustody.cli import evidence
from keycustody.cli.commands import app as main_app

Run = Callable[..., Result]
SHRED = "acme/subjects/alice"
ALICE = {f"notes/{i}.txt": f"alice {i}\n".encode() for i in range(12)}
BOB = {"b.txt": b"bob\n"}


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """The main app with the evidence commands registered (undone after the test)."""
    monkeypatch.setattr(main_app, "registered_commands", list(main_app.registered_commands))
    monkeypatch.setattr(main_app, "registered_groups", list(main_app.registered_groups))
    evidence.register(main_app)
    return main_app


@pytest.fixture
def paths(tmp_path: Path) -> tuple[str, Path]:
    """The vault URL and LocalKMS folder the commands use."""
    (tmp_path / "db").mkdir()
    return f"sqlite:///{tmp_path / 'db' / 'vault.db'}", tmp_path / "keys"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory for the commands."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def run(app: typer.Typer, paths: tuple[str, Path], work: Path) -> Run:
    """Invokes the CLI on the test's vault; ``input`` feeds the confirmation prompts."""
    db, kms_dir = paths
    env = {
        "KEYCUSTODY_DB": db,
        "KEYCUSTODY_KMS_DIR": str(kms_dir),
        "KEYCUSTODY_ACTOR": "tests@keycustody",
        "COLUMNS": "250",  # rich wraps at 80 columns otherwise
    }

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env=env, input=input)

    return invoke


@pytest.fixture
def vault(paths: tuple[str, Path]) -> Iterator[kc.Vault]:
    """The same vault through the Python API, to set up and check what the commands did."""
    db, kms_dir = paths
    with kc.Vault.open(db, kms=kc.LocalKMS(kms_dir)) as v:
        yield v


@contextmanager
def reopened(paths: tuple[str, Path]) -> Iterator[kc.Vault]:
    """A new Vault on the same files: a process that starts after the command ran (the
    fixture's vault may serve its cached keys for up to ``revalidate_s``, by design)."""
    with kc.Vault.open(paths[0], kms=kc.LocalKMS(paths[1])) as v:
        yield v


@pytest.fixture
def tenant(vault: kc.Vault, paths: tuple[str, Path]) -> kc.Scope:
    """acme under local:acme-kek, with alice (12 records) and bob below acme/subjects."""
    acme = vault.scope("acme", kek=kc.LocalKMS(paths[1]).create_key("acme-kek"), create=True)
    acme.put("a.py", b"a")
    vault.scope(SHRED, create=True).put_many(ALICE.items())
    vault.scope("acme/subjects/bob", create=True).put_many(BOB.items())
    return acme


def _clean(result: Result, code: int = 0) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def _json(result: Result) -> Any:
    _clean(result)
    return json.loads(result.stdout)


def _shred(run: Run, *extra: str) -> Result:
    return run("shred", "--scope", SHRED, "--reason", "GDPR Art.17 #123", "--yes", *extra)


# -- registration and help ---------------------------------------------------------------


def test_register_adds_every_command_once(app: typer.Typer, run: Run) -> None:
    evidence.register(app)  # a second registration adds nothing
    names = [info.name for info in app.registered_commands]
    groups = [info.name for info in app.registered_groups]
    for name, _ in evidence.COMMANDS:
        assert names.count(name) == 1
    for name, _ in evidence.GROUPS:
        assert groups.count(name) == 1
    top = run("--help")
    _clean(top)
    assert evidence.PANEL in top.stdout
    for command in (
        ["shred"],
        ["purge"],
        ["erasures", "ls"],
        ["erasures", "complete"],
        ["cert", "verify"],
        ["audit", "verify"],
        ["audit", "export"],
        ["audit", "tail"],
    ):
        helped = run(*command, "--help")
        _clean(helped)
        assert "Example" in helped.stdout, command


def test_commands_need_an_existing_vault(run: Run) -> None:
    for command in (["audit", "verify"], ["erasures", "ls"], ["purge", "--yes"]):
        result = run(*command)
        _clean(result, 3)
        assert "no vault database" in result.stderr


# -- shred -------------------------------------------------------------------------------


def test_shred_asks_first_and_changes_nothing_when_refused(
    run: Run, vault: kc.Vault, tenant: kc.Scope, paths: tuple[str, Path]
) -> None:
    refused = run("shred", "--scope", SHRED, "--reason", "GDPR #1", input="n\n")
    assert refused.exit_code == 1
    assert "12 records" in refused.output and "Shred scope" in refused.output
    assert vault.scope(SHRED).get_many(ALICE) == ALICE
    assert vault.certificates() == []

    accepted = run("shred", "--scope", SHRED, "--reason", "GDPR #1", input="y\n")
    _clean(accepted)
    with reopened(paths) as later, pytest.raises(kc.ShreddedError):
        later.scope(SHRED).get("notes/1.txt")


def test_shred_prints_the_certificate_and_writes_it(
    run: Run, vault: kc.Vault, tenant: kc.Scope, work: Path, paths: tuple[str, Path]
) -> None:
    result = _shred(run, "-o", "cert.json")
    _clean(result)
    (certificate,) = vault.certificates()
    out = result.stdout
    for text in (
        f"erasure certificate {certificate.id}",
        SHRED,
        "GDPR Art.17 #123",
        "records unreadable",
        "12",
        "0 hits",
        "wal_checkpoint(TRUNCATE) complete",
        "pass: 1 of 1 scopes refused",
        "pending",
        "residual risk",
        "backups",
        "certificate written to cert.json",
    ):
        assert text in out, text
    written = json.loads((work / "cert.json").read_text())
    assert written == certificate.document
    assert vault.verify_certificate(written)[0]
    with reopened(paths) as later:
        with pytest.raises(kc.ShreddedError, match=certificate.id):
            later.scope(SHRED).get("notes/1.txt")
        assert later.scope("acme/subjects/bob").get_many(BOB) == BOB
    # Idempotent: a rerun prints the same certificate.
    again = _shred(run)
    _clean(again)
    assert certificate.id in again.stdout
    # The existing `get` command now exits with the shredded code.
    got = run("get", "notes/1.txt", "--scope", SHRED)
    _clean(got, 6)
    assert certificate.id in got.stderr


def test_shred_durable_and_destroy_kek(
    run: Run, vault: kc.Vault, tenant: kc.Scope, paths: tuple[str, Path]
) -> None:
    durable = _shred(run, "--durable")
    _clean(durable)
    assert "confirmed" in durable.stdout
    assert "local:acme-kek version 1 destroyed" in durable.stdout
    vault.scope("other", kek=kc.LocalKMS(paths[1]).create_key("other-kek"), create=True)
    whole = run("shred", "--scope", "other", "--reason", "offboarding", "--destroy-kek", "-y")
    _clean(whole)
    assert "local:other-kek destroyed" in whole.stdout
    assert kc.LocalKMS(paths[1]).describe_key("local:other-kek")["state"] == "destroyed"
    assert vault.scope("acme/subjects/bob").get_many(BOB) == BOB


def test_shred_refuses_bad_requests(
    run: Run, vault: kc.Vault, tenant: kc.Scope, paths: tuple[str, Path]
) -> None:
    missing = run("shred", "--scope", "acme/nobody", "--reason", "x", "--yes")
    _clean(missing, 3)
    assert "NotFoundError" in missing.stderr
    blank = run("shred", "--scope", SHRED, "--reason", "  ", "--yes")
    _clean(blank, 2)
    assert "reason" in blank.stderr
    no_reason = run("shred", "--scope", SHRED, "--yes")
    assert no_reason.exit_code == 2
    child_kek = run("shred", "--scope", SHRED, "--reason", "x", "--destroy-kek", "--yes")
    _clean(child_kek, 2)
    assert "whole tenant" in child_kek.stderr
    assert vault.certificates() == []
    with reopened(paths) as later:
        assert later.scope(SHRED).get_many(ALICE) == ALICE


# -- erasures and purge ------------------------------------------------------------------


def test_erasures_ls_and_complete(run: Run, vault: kc.Vault, tenant: kc.Scope) -> None:
    empty = run("erasures", "ls", "--json")
    assert _json(empty) == []
    nothing = run("erasures", "complete")
    _clean(nothing)
    assert "no erasure awaits phase 2" in nothing.stdout

    _clean(_shred(run))
    (listed,) = _json(run("erasures", "ls", "--json"))
    (certificate,) = vault.certificates()
    assert listed["certificate_id"] == certificate.id
    assert (listed["scope"], listed["tenant"]) == (SHRED, "acme")
    assert (listed["records_unreadable"], listed["phase2"]) == (12, "pending")
    table = run("erasures", "ls")
    _clean(table)
    _, header, line, summary = table.stdout.splitlines()  # plain columns, scope last
    assert header.split()[:4] == ["certificate", "requested", "records", "phase"]
    row = line.split()
    assert (row[0], row[2], row[3], row[-1]) == (certificate.id, "12", "pending", SHRED)
    assert summary == "1 certificate, 1 awaiting phase 2" and "\x1b" not in table.stdout

    done = run("erasures", "complete")
    _clean(done)
    assert "phase 2 completed for 1 erasure" in done.stdout and "erasures" not in done.stdout
    assert "local:acme-kek version 1 destroyed" in done.stdout
    (listed,) = _json(run("erasures", "ls", "--json"))
    assert listed["phase2"] == "confirmed" and listed["phase2_confirmed_at"]
    (updated,) = vault.certificates()
    assert vault.verify_certificate(updated.document)[0]
    assert vault.scope("acme/subjects/bob").get_many(BOB) == BOB


def _record_count(paths: tuple[str, Path]) -> int:
    conn = sqlite3.connect(paths[0].removeprefix("sqlite:///"))
    try:
        return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
    finally:
        conn.close()


def test_purge_asks_first(
    run: Run, vault: kc.Vault, tenant: kc.Scope, paths: tuple[str, Path]
) -> None:
    _clean(_shred(run))
    before = _record_count(paths)
    refused = run("purge", input="n\n")
    assert refused.exit_code == 1
    assert _record_count(paths) == before
    purged = run("purge", "--yes")
    _clean(purged)
    assert "purged 12 records of shredded scopes" in purged.stdout
    assert _record_count(paths) == before - 12
    assert vault.scope("acme/subjects/bob").get_many(BOB) == BOB
    (last,) = vault.audit.tail(1)
    assert (last.action, last.actor) == ("records.purge", "tests@keycustody")


# -- cert verify -------------------------------------------------------------------------


def test_cert_verify(run: Run, vault: kc.Vault, tenant: kc.Scope, work: Path) -> None:
    _clean(_shred(run, "-o", "cert.json"))
    ok = run("cert", "verify", "cert.json")
    _clean(ok)
    assert "certificate verified" in ok.stdout

    document = json.loads((work / "cert.json").read_text())
    document["what"]["records_unreadable"] = 0
    (work / "forged.json").write_text(json.dumps(document))
    forged = run("cert", "verify", "forged.json")
    _clean(forged, 4)
    assert "NOT verified" in forged.stderr and "SHA-256" in forged.stderr

    for name, text in (
        ("garbage.json", "{not json"),
        ("list.json", "[1, 2]"),
        ("malformed.json", json.dumps({"integrity": "x"})),
    ):
        (work / name).write_text(text)
        result = run("cert", "verify", name)
        _clean(result, 4)
        assert "NOT verified" in result.stderr or "not verified" in result.stderr, name

    missing = run("cert", "verify", "nope.json")
    assert missing.exit_code == 2


# -- audit -------------------------------------------------------------------------------


def _tamper_event(paths: tuple[str, Path], seq: int) -> None:
    conn = sqlite3.connect(paths[0].removeprefix("sqlite:///"), isolation_level=None)
    try:
        conn.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?", (seq,))
    finally:
        conn.close()


def test_audit_verify(
    run: Run, vault: kc.Vault, tenant: kc.Scope, paths: tuple[str, Path]
) -> None:
    ok = run("audit", "verify")
    _clean(ok)
    report = vault.audit.verify()
    head = f"{report.head_seq}:{report.head_hash}"
    assert f"{report.events_checked} events" in ok.stdout and head in ok.stdout
    as_json = _json(run("audit", "verify", "--json"))
    assert as_json == report.to_dict()
    _clean(run("audit", "verify", "--expect-head", head))
    bad_anchor = run("audit", "verify", "--expect-head", "12")
    _clean(bad_anchor, 2)

    _tamper_event(paths, 2)
    broken = run("audit", "verify")
    _clean(broken, 4)
    assert "broken at event 2" in broken.stderr
    broken_json = run("audit", "verify", "--json")
    assert broken_json.exit_code == 4
    assert json.loads(broken_json.stdout)["first_bad_seq"] == 2


def test_audit_verify_detects_a_truncated_tail(
    run: Run, vault: kc.Vault, tenant: kc.Scope, paths: tuple[str, Path]
) -> None:
    report = vault.audit.verify()
    conn = sqlite3.connect(paths[0].removeprefix("sqlite:///"), isolation_level=None)
    try:
        conn.execute("DELETE FROM audit_events WHERE seq = ?", (report.head_seq,))
    finally:
        conn.close()
    _clean(run("audit", "verify"))  # internally consistent: only the anchor shows it
    anchored = run("audit", "verify", "--expect-head", f"{report.head_seq}:{report.head_hash}")
    _clean(anchored, 4)
    assert "truncated" in anchored.stderr


def test_audit_export_and_tail(run: Run, vault: kc.Vault, tenant: kc.Scope, work: Path) -> None:
    _clean(_shred(run))
    total = vault.audit.verify().head_seq
    exported = run("audit", "export", "audit.jsonl")
    _clean(exported)
    assert f"exported {total} audit events" in exported.stdout
    lines = [json.loads(x) for x in (work / "audit.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, total + 1))
    assert lines[-1]["action"] == "erasure.certificate"
    since = run("audit", "export", "later.jsonl", "--since", str(total - 3))
    _clean(since)
    assert len((work / "later.jsonl").read_text().splitlines()) == 3

    tail = _json(run("audit", "tail", "-n", "4", "--json"))
    assert [e["seq"] for e in tail] == list(range(total - 3, total + 1))
    assert tail[-1]["details"]["certificate"] == vault.certificates()[0].id
    table = run("audit", "tail", "-n", "3")
    _clean(table)
    assert "erasure.certificate" in table.stdout and "tests@keycustody" in table.stdout
