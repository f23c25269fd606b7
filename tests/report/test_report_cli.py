"""``keycustody report`` on a real vault file and LocalKMS folder: writes the pack, filters by
scope, maps errors to exit codes without a traceback, and exits 4 on a broken audit trail."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from custody_vault import CONFIRMED_SHRED, NAME_MARK, build
from typer.testing import CliRunner, Result

import keycustody as kc
from keycustody.cli import app

Run = Callable[..., Result]


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, Path]:
    """The vault database and LocalKMS folder the commands use, with a custody history."""
    (tmp_path / "db").mkdir()
    db, keys = tmp_path / "db" / "vault.db", tmp_path / "keys"
    kms = kc.LocalKMS(keys)
    with kc.Vault.open(f"sqlite:///{db}", kms=kms) as vault:
        build(vault, kms)
    return db, keys


@pytest.fixture
def run(home: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    env = {
        "KEYCUSTODY_DB": f"sqlite:///{home[0]}",
        "KEYCUSTODY_KMS_DIR": str(home[1]),
        "KEYCUSTODY_ACTOR": "tests@keycustody",
        "COLUMNS": "250",
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, list(args), env=env)

    return invoke


def _clean(result: Result, code: int = 0) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output


def test_report_writes_the_pack_and_prints_how_to_check_it(run: Run, tmp_path: Path) -> None:
    result = run("report", "-o", "evidence")
    _clean(result)
    out = tmp_path / "work" / "evidence"
    data = (out / "report.json").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    facts = json.loads(data)
    head = f"{facts['audit']['head_seq']}:{facts['audit']['head_hash']}"
    assert digest in result.stdout and head in result.stdout
    assert "AMBER" in result.stdout
    assert digest in (out / "report.html").read_text(encoding="utf-8")
    assert NAME_MARK not in data.decode()
    # The head the report names is one `audit verify --expect-head` accepts.
    _clean(run("audit", "verify", "--expect-head", head))


def test_report_scope_filter_and_names(run: Run, tmp_path: Path) -> None:
    _clean(run("report", "--scope", "acme/subjects", "-o", "subjects"))
    facts = json.loads((tmp_path / "work" / "subjects" / "report.json").read_bytes())
    assert facts["scope"] == "acme/subjects"
    assert CONFIRMED_SHRED in {s["path"] for s in facts["scopes"]}
    assert {s["path"].split("/")[0] for s in facts["scopes"]} == {"acme"}

    _clean(run("report", "-s", "globex", "-o", "named", "--include-names"))
    named = tmp_path / "work" / "named"
    assert NAME_MARK in (named / "report.html").read_text(encoding="utf-8")
    assert stat.S_IMODE((named / "report.json").stat().st_mode) == 0o600


def test_report_errors_are_one_line_with_their_exit_code(run: Run, tmp_path: Path) -> None:
    missing = run("report", "--scope", "nope", "-o", "x")
    _clean(missing, 3)
    assert "NotFoundError" in missing.output
    (tmp_path / "work" / "a-file").write_text("in the way")
    blocked = run("report", "-o", "a-file/out")
    _clean(blocked, 8)
    assert "OutputError: cannot write the report" in blocked.output
    assert len(blocked.output.strip().splitlines()) == 1


def test_report_needs_an_existing_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        ["report"],
        env={
            "KEYCUSTODY_DB": f"sqlite:///{tmp_path / 'none.db'}",
            "KEYCUSTODY_KMS_DIR": str(tmp_path / "k"),
        },
    )
    _clean(result, 3)
    assert not (tmp_path / "keycustody-report").exists()


def test_report_exits_4_on_a_broken_audit_trail(
    run: Run, home: tuple[Path, Path], tmp_path: Path
) -> None:
    conn = sqlite3.connect(home[0])
    try:
        conn.execute("UPDATE audit_events SET details = '{}' WHERE seq = 3")
        conn.commit()
    finally:
        conn.close()
    result = run("report", "-o", "broken")
    _clean(result, 4)
    assert "does NOT verify" in result.output
    facts = json.loads((tmp_path / "work" / "broken" / "report.json").read_bytes())
    assert facts["summary"]["status"] == "red"
    assert facts["audit"]["first_break"]["seq"] == 3


def test_report_help_has_an_example(run: Run) -> None:
    result = run("report", "--help")
    _clean(result)
    assert "Example" in result.stdout and "--include-names" in result.stdout
    top = run("--help")
    assert "report" in top.stdout
