"""The key lifecycle commands (keycustody.cli.keys) on a real vault file and LocalKMS folder:
keys, rotate, rewrap, reencrypt, compromise, suspend, resume and lineage."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

import keycustody as kc
from keycustody.cli import keys as keys_cli
from keycustody.cli.commands import app as main_app

Run = Callable[..., Result]
DATA = {f"src/{i:03d}.py": f"print({i})\n".encode() * (i % 5 + 1) for i in range(40)}


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """The main app with the key lifecycle commands registered (undone after the test)."""
    monkeypatch.setattr(main_app, "registered_commands", list(main_app.registered_commands))
    keys_cli.register(main_app)
    return main_app


@pytest.fixture
def paths(tmp_path: Path) -> tuple[str, Path]:
    """The vault URL and LocalKMS folder the commands use."""
    (tmp_path / "db").mkdir()
    return f"sqlite:///{tmp_path / 'db' / 'vault.db'}", tmp_path / "keys"


@pytest.fixture
def run(
    app: typer.Typer, paths: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Run:
    """Invokes the CLI in an empty working directory on the test's vault."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    db, kms_dir = paths
    env = {
        "KEYCUSTODY_DB": db,
        "KEYCUSTODY_KMS_DIR": str(kms_dir),
        "KEYCUSTODY_ACTOR": "tests@keycustody",
        "COLUMNS": "200",  # rich wraps at 80 columns otherwise
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, list(args), env=env)

    return invoke


@pytest.fixture
def vault(paths: tuple[str, Path]) -> Iterator[kc.Vault]:
    """The same vault through the Python API, to set up and check what the commands did."""
    db, kms_dir = paths
    with kc.Vault.open(db, kms=kc.LocalKMS(kms_dir)) as v:
        yield v


def _clean(result: Result, code: int = 0) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def _json(result: Result) -> Any:
    _clean(result)
    return json.loads(result.stdout)


@pytest.fixture
def tenant(vault: kc.Vault, paths: tuple[str, Path]) -> kc.Scope:
    """Tenant ``acme`` under KEK local:acme-kek with 40 records, and ``acme/repos/api``."""
    kek = kc.LocalKMS(paths[1]).create_key("acme-kek")
    acme = vault.scope("acme", kek=kek, create=True)
    acme.put_many(DATA.items())
    vault.scope("acme/repos/api", create=True).put("main.py", b"main")
    return acme


# -- registration and help ---------------------------------------------------------------


def test_register_adds_every_command_once(app: typer.Typer, run: Run) -> None:
    keys_cli.register(app)  # a second registration adds nothing
    names = [info.name for info in app.registered_commands]
    for name, _ in keys_cli.COMMANDS:
        assert names.count(name) == 1
    top = run("--help")
    _clean(top)
    assert "Key lifecycle" in top.stdout
    for name, _ in keys_cli.COMMANDS:
        assert name in top.stdout
        helped = run(name, "--help")
        _clean(helped)
        assert "Example" in helped.stdout, name


def test_commands_need_an_existing_vault(run: Run) -> None:
    result = run("keys")
    _clean(result, 3)
    assert "no vault database" in result.stderr


# -- keys --------------------------------------------------------------------------------


def test_keys_table_and_json(run: Run, tenant: kc.Scope) -> None:
    tenant.rotate_key()
    rows = _json(run("keys", "--json"))
    assert [(r["scope"], r["version"], r["state"], r["records"]) for r in rows] == [
        ("acme", 1, "DEACTIVATED", 40),
        ("acme", 2, "ACTIVE", 0),
        ("acme/repos", 1, "ACTIVE", 0),
        ("acme/repos/api", 1, "ACTIVE", 1),
    ]
    assert rows[0]["wrapped_by"] == "kek:local:acme-kek#1"
    assert rows[0]["deactivated_at"] is not None
    assert rows[3]["wrapped_by"] == "scope:acme/repos#v1"

    only = _json(run("keys", "--scope", "acme/repos/api", "--json"))
    assert [(r["scope"], r["version"]) for r in only] == [("acme/repos/api", 1)]

    table = run("keys", "--scope", "acme")
    _clean(table)
    for text in ("DEACTIVATED", "ACTIVE", "kek:local:acme-kek#1", "1 scope, 2 key versions"):
        assert text in table.stdout

    missing = run("keys", "--scope", "nope")
    _clean(missing, 3)
    assert "NotFoundError" in missing.stderr


def test_keys_prints_one_line_per_version_in_plain_columns(run: Run, tenant: kc.Scope) -> None:
    """Plain columns (a rich table took 12 s for 10,000 scopes) with the same facts as
    --json, KEK last, no colour codes when the output is not a terminal, and a summary that
    counts what was listed."""
    tenant.rotate_key()
    expected = _json(run("keys", "--json"))
    result = run("keys")
    _clean(result)
    assert "\x1b" not in result.stdout
    header, *lines, summary = result.stdout.splitlines()
    assert header.split() == [
        "scope",
        "version",
        "state",
        "records",
        "since",
        "(UTC)",
        "wrapped",
        "by",
    ]
    assert [(*line.split()[:4], line.split()[-1]) for line in lines] == [
        (r["scope"], str(r["version"]), r["state"], f"{r['records']:,}", r["wrapped_by"])
        for r in expected
    ]
    assert {line.rindex(" ") + 1 for line in lines} == {header.index("wrapped by")}
    assert summary == "3 scopes, 4 key versions, 41 records"


def test_usage_prints_counts_per_scope(run: Run, tenant: kc.Scope) -> None:
    """The same counts as --json, right-aligned under their headings, and their totals."""
    expected = _json(run("usage", "--json"))
    result = run("usage")
    _clean(result)
    header, *lines, summary = result.stdout.splitlines()
    assert header.split() == [
        "scope",
        "records",
        "bytes",
        "writes",
        "key",
        "ops",
        "KMS",
        "calls",
        "denied",
    ]
    counts = ("records", "bytes", "writes", "key_operations", "kms_calls", "denied")
    assert [line.split() for line in lines] == [
        [u["scope"], *(f"{u[c]:,}" for c in counts)] for u in expected
    ]
    assert {len(line) for line in lines} == {len(header)}
    assert summary == (
        f"{len(expected)} scopes, {sum(u['records'] for u in expected)} records, "
        f"{sum(u['bytes'] for u in expected):,} bytes"
    )


# -- rotate ------------------------------------------------------------------------------


def test_rotate_and_rotate_kek(run: Run, tenant: kc.Scope, paths: tuple[str, Path]) -> None:
    result = run("rotate", "--scope", "acme")
    _clean(result)
    assert "key version 2 is ACTIVE" in result.stdout
    assert tenant.put("new.py", b"new").key_version == 2

    kc.LocalKMS(paths[1]).create_key("acme-kek-2")
    moved = run("rotate", "--scope", "acme", "--kek", "local:acme-kek-2")
    _clean(moved)
    assert "2 key versions rewrapped" in moved.stdout
    rows = _json(run("keys", "--scope", "acme", "--json"))
    assert {r["wrapped_by"] for r in rows} == {"kek:local:acme-kek-2#1"}
    assert tenant.get_many(DATA) == DATA

    child = run("rotate", "--scope", "acme/repos", "--kek", "local:acme-kek-2")
    _clean(child, 2)
    assert "not a tenant" in child.stderr
    _clean(run("rotate", "--scope", "acme", "--kek", "local:nope"), 3)
    _clean(run("rotate", "--scope", "acme", "--kek", "gcp:x"), 2)
    _clean(run("rotate", "--scope", "nope"), 3)


# -- rewrap ------------------------------------------------------------------------------


def test_rewrap_dry_run_progress_and_json(run: Run, tenant: kc.Scope) -> None:
    tenant.rotate_key()
    tenant.put("v2.py", b"two")
    tenant.rotate_key()

    dry = _json(run("rewrap", "--scope", "acme", "--dry-run", "--json"))
    assert dry == {
        "scope": "acme",
        "active_version": 3,
        "dry_run": True,
        "records_by_version": {"1": 40, "2": 1},
        "records_done": 0,
        "child_keys_done": 0,
        "versions_destroyed": [],
    }
    table = run("rewrap", "--scope", "acme", "--dry-run")
    _clean(table)
    assert "would move 41 records" in table.stdout
    assert "v1: 40, v2: 1" in table.stdout
    versions = tenant.keys()
    assert [k.records for k in versions] == [40, 1, 0]  # nothing moved

    done = run("rewrap", "--scope", "acme", "--batch-size", "7")
    _clean(done)
    assert "41/41" in done.stderr  # the progress bar, driven by the progress callback
    for text in ("rewrap done", "records done", "41", "versions destroyed", "v1, v2"):
        assert text in done.stdout
    versions = tenant.keys()
    assert [(k.state, k.records) for k in versions] == [
        ("DESTROYED", 0),
        ("DESTROYED", 0),
        ("ACTIVE", 41),
    ]
    assert tenant.get_many(DATA) == DATA

    again = _json(run("rewrap", "--scope", "acme", "--json"))
    assert (again["records_done"], again["versions_destroyed"]) == (0, [])
    _clean(run("rewrap", "--scope", "acme", "--batch-size", "0"), 2)


# -- compromise + reencrypt --------------------------------------------------------------


def test_compromise_then_reencrypt(run: Run, tenant: kc.Scope) -> None:
    before = {i.name: i.record_id for i in tenant.list()}
    result = run("compromise", "--scope", "acme", "--reason", "key found in a core dump")
    _clean(result)
    assert "key version 1" in result.stdout
    assert "COMPROMISED" in result.stdout
    denied = run("get", "src/001.py", "--scope", "acme")
    _clean(denied, 5)
    assert "compromised" in denied.stderr

    dry = _json(run("reencrypt", "--scope", "acme", "--dry-run", "--json"))
    assert (dry["dry_run"], dry["records_by_version"]) == (True, {"1": 40})
    _clean(run("get", "src/001.py", "--scope", "acme"), 5)  # the dry run changed nothing

    done = run("reencrypt", "--scope", "acme", "--batch-size", "16", "--json")
    report = _json(done)
    assert (report["records_done"], report["versions_destroyed"]) == (40, [1])
    assert "41/41" in done.stderr  # acme's 40 records + the cascaded child scope's 1
    got = run("get", "src/001.py", "--scope", "acme")
    _clean(got)
    assert got.stdout_bytes == DATA["src/001.py"]
    after = {i.name: i.record_id for i in tenant.list()}
    assert all(after[n] != before[n] for n in before)  # new DEKs

    _clean(run("compromise", "--scope", "acme", "--version", "1", "--reason", "again"), 2)
    _clean(run("compromise", "--scope", "acme"), 2)  # --reason is required


# -- suspend / resume --------------------------------------------------------------------


def test_suspend_and_resume(run: Run, tenant: kc.Scope) -> None:
    result = run("suspend", "--scope", "acme", "--reason", "incident 4711")
    _clean(result)
    assert "SUSPENDED" in result.stdout
    for args in (
        ("get", "src/001.py", "--scope", "acme"),
        ("get", "main.py", "--scope", "acme/repos/api"),
        ("ls", "--scope", "acme"),
        ("rotate", "--scope", "acme"),
        ("rewrap", "--scope", "acme"),
        ("lineage", "main.py", "--scope", "acme/repos/api"),
    ):
        denied = run(*args)
        _clean(denied, 5)
        assert "KeyRevokedError" in denied.stderr
        assert "suspended" in denied.stderr
    _clean(run("suspend", "--scope", "acme"), 2)  # already suspended

    resumed = run("resume", "--scope", "acme")
    _clean(resumed)
    assert "ACTIVE again" in resumed.stdout
    got = run("get", "main.py", "--scope", "acme/repos/api")
    _clean(got)
    assert got.stdout_bytes == b"main"
    assert tenant.get_many(DATA) == DATA
    _clean(run("resume", "--scope", "acme"), 2)  # not suspended


# -- lineage -----------------------------------------------------------------------------


def test_lineage_tree_and_json(
    run: Run, vault: kc.Vault, tenant: kc.Scope, paths: tuple[str, Path]
) -> None:
    record_id = next(i.record_id for i in tenant.list() if i.name == "src/001.py")
    tenant.rotate_key()
    tenant.rewrap()
    kc.LocalKMS(paths[1]).create_key("acme-kek-2")
    vault.rotate_kek("acme", "local:acme-kek-2")

    tree = run("lineage", "src/001.py", "--scope", "acme")
    _clean(tree)
    out = tree.stdout
    for text in (
        "record src/001.py",
        f"DEK {record_id}",
        "sealed under v1, wrapped by v2",
        "scope key acme v2",
        "KEK local:acme-kek-2 version 1",
        "history (3 events",
        "sealed  v1",
        "rewrapped  v1 → v2",
        "kek_rotated",
        "to: local:acme-kek-2#1",
    ):
        assert text in out, text
    # The chain comes before the KEK, the KEK before the history.
    assert out.index("scope key acme v2") < out.index("KEK local") < out.index("history")

    data = _json(run("lineage", "src/001.py", "--scope", "acme", "--json"))
    assert data["dek_id"] == record_id
    assert (data["sealed_version"], data["key_version"]) == (1, 2)
    assert data["kek"] == {"id": "local:acme-kek-2", "version": "1"}
    assert data["chain"] == [
        {"scope": "acme", "version": 2, "state": "ACTIVE", "wrapped_by": "kek:local:acme-kek-2#1"}
    ]
    assert [(e["event"], e["from_version"], e["to_version"]) for e in data["events"]] == [
        ("sealed", None, 1),
        ("rewrapped", 1, 2),
        ("kek_rotated", None, None),
    ]

    child = _json(run("lineage", "main.py", "--scope", "acme/repos/api", "--json"))
    assert [link["scope"] for link in child["chain"]] == ["acme/repos/api", "acme/repos", "acme"]
    child_tree = run("lineage", "main.py", "--scope", "acme/repos/api")
    _clean(child_tree)
    text = child_tree.stdout
    assert (
        text.index("scope key acme/repos/api v1")
        < text.index("scope key acme/repos v1")
        < text.index("scope key acme v2")
        < text.index("KEK local:acme-kek-2")
    )

    _clean(run("lineage", "missing.py", "--scope", "acme"), 3)


def test_ls_prints_one_line_per_record_with_names_escaped(run: Run, tenant: kc.Scope) -> None:
    """Plain columns, name last: a name with control characters is shown escaped, markup in
    it is shown as it is, and the summary counts what was listed."""
    evil = "evil\x1b[2J\x07name[bold].py"
    info = tenant.put(evil, b"xyz")
    result = run("ls", "--scope", "acme", "--prefix", "evil")
    _clean(result)
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    header, line, summary = result.stdout.splitlines()
    assert header.split() == ["size", "version", "record", "id", "name"]
    assert line.split() == ["3", "1", info.record_id, "evil\\x1b[2J\\x07name[bold].py"]
    assert summary == "1 record, 0.0 MB in scope acme"
    everything = run("ls", "--scope", "acme").stdout.splitlines()
    assert len(everything) == len(tenant.list()) + 2


def test_lineage_escapes_terminal_control_characters(run: Run, tenant: kc.Scope) -> None:
    evil = "evil\x1b[2J\x07name[bold].py"
    tenant.put(evil, b"x")
    result = run("lineage", evil, "--scope", "acme")
    _clean(result)
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout
    assert "evil\\x1b[2J\\x07name[bold].py" in result.stdout
