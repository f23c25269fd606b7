"""One end-to-end command-line session on each backend (``--db sqlite:///…`` and
``--db postgresql+psycopg://…``): kek create, ingest, ls, get, rotate, rewrap, keys, shred,
cert verify, erasures, purge, audit verify (and its tamper evidence), audit export.

The other CLI tests check each command in depth on SQLite; this one checks that every command
opens the vault its ``--db`` names, whichever the backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from dbadmin import RawDB
from keycustody.cli import app

Run = Callable[..., Result]

FILES: dict[str, bytes] = {
    "README.md": b"# tree\n",
    "src/app.py": b"print('hello')\n" * 20,
    "data/blob.bin": bytes(range(256)) * 8,
    "people/alice/notes.txt": b"alice's notes\n",
    "people/bob/notes.txt": b"bob's notes\n",
}
SHRED = "acme/subjects/alice"


@pytest.fixture
def run(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Invokes ``keycustody --db URL …`` on the test's database, in an empty directory."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    env = {
        "KEYCUSTODY_KMS_DIR": str(tmp_path / "keys"),
        "KEYCUSTODY_ACTOR": "tests@keycustody",
        "COLUMNS": "250",
    }

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(app, ["--db", db_url, *args], env=env, input=input)

    return invoke


def _clean(result: Result, code: int = 0) -> Result:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    return result


def _json(result: Result) -> Any:
    return json.loads(_clean(result).stdout)


def _tree(root: Path) -> Path:
    for name, data in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_a_whole_session_on_each_backend(run: Run, raw: RawDB, tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    assert _clean(run("kek", "create", "acme-kek")).stdout.strip() == "local:acme-kek"
    _clean(run("ingest", str(tree), "--scope", "acme", "--kek", "local:acme-kek"))
    _clean(run("ingest", str(tree / "people" / "alice"), "--scope", SHRED))
    _clean(run("ingest", str(tree / "people" / "bob"), "--scope", "acme/subjects/bob"))

    rows = _json(run("ls", "--scope", "acme", "--json"))
    assert {r["name"]: r["size"] for r in rows} == {n: len(d) for n, d in FILES.items()}
    for name, data in FILES.items():
        assert _clean(run("get", name, "--scope", "acme")).stdout_bytes == data

    # Key lifecycle: rotate, rewrap onto the new version, move to another KEK.
    assert "key version 2 is ACTIVE" in _clean(run("rotate", "--scope", "acme")).stdout
    _clean(run("rewrap", "--scope", "acme"))
    _clean(run("kek", "create", "acme-kek-2"))
    _clean(run("rotate", "--scope", "acme", "--kek", "local:acme-kek-2"))
    keys = _json(run("keys", "--scope", "acme", "--json"))
    assert {(k["version"], k["state"]) for k in keys} >= {(2, "ACTIVE")}
    assert {k["wrapped_by"] for k in keys if k["state"] == "ACTIVE"} == {"kek:local:acme-kek-2#1"}
    assert _clean(run("get", "src/app.py", "--scope", "acme")).stdout_bytes == FILES["src/app.py"]

    # Shred alice, verify the certificate, complete phase 2, purge.
    _clean(run("shred", "--scope", SHRED, "--reason", "GDPR #1", "--yes", "-o", "cert.json"))
    assert "certificate verified" in _clean(run("cert", "verify", "cert.json")).stdout
    _clean(run("get", "notes.txt", "--scope", SHRED), 6)
    assert (
        _clean(run("get", "notes.txt", "--scope", "acme/subjects/bob")).stdout_bytes
        == (FILES["people/bob/notes.txt"])
    )
    _clean(run("erasures", "complete"))
    _clean(run("purge", "--yes"))

    # The audit trail: verifies, exports, and shows an edit made behind the library's back.
    report = _json(run("audit", "verify", "--json"))
    assert report["ok"] and report["events_checked"] > 10
    _clean(run("audit", "export", "audit.jsonl"))
    exported = (tmp_path / "work" / "audit.jsonl").read_text().splitlines()
    assert len(exported) == report["head_seq"]
    raw.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?", (3,))
    broken = _clean(run("audit", "verify"), 4)
    assert "broken at event 3" in broken.stderr


def test_a_broken_database_is_a_storage_error_exit(run: Run, raw: RawDB, tmp_path: Path) -> None:
    """A database failure is one line naming StorageError (exit 8): the driver's message,
    never SQLAlchemy's statement and parameters, nor an internal error."""
    _clean(run("ingest", str(_tree(tmp_path / "tree")), "--scope", "acme"))
    raw.execute("ALTER TABLE records RENAME TO records_away")
    try:
        for args in (["get", "src/app.py"], ["ls"]):
            failed = _clean(run(*args, "--scope", "acme"), 8)
            assert "StorageError:" in failed.stderr and "records" in failed.stderr
            for dump in ("[SQL", "[parameters", "SELECT", "internal error"):
                assert dump not in failed.stderr
    finally:
        raw.execute("ALTER TABLE records_away RENAME TO records")
    _clean(run("get", "src/app.py", "--scope", "acme"))
