"""The tenant KEK commands (``kek add``, ``kek remove``, ``kek ls --tenant``) and the other
commands' view of a tenant with several KEKs, on a real vault file and LocalKMS folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import keycustody as kc
from keycustody.cli.commands import app

Run = Callable[..., Result]
DATA = {f"src/{i:02d}.py": b"print(%d)\n" % i for i in range(20)}


@pytest.fixture
def paths(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "db").mkdir()
    return f"sqlite:///{tmp_path / 'db' / 'vault.db'}", tmp_path / "keys"


@pytest.fixture
def run(paths: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    db, kms_dir = paths
    env = {
        "KEYCUSTODY_DB": db,
        "KEYCUSTODY_KMS_DIR": str(kms_dir),
        "KEYCUSTODY_ACTOR": "tests@keycustody",
        "COLUMNS": "200",
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, list(args), env=env)

    return invoke


@pytest.fixture
def kms(paths: tuple[str, Path]) -> kc.LocalKMS:
    return kc.LocalKMS(paths[1])


@pytest.fixture
def vault(paths: tuple[str, Path], kms: kc.LocalKMS) -> Iterator[kc.Vault]:
    with kc.Vault.open(paths[0], kms=kms) as v:
        yield v


@pytest.fixture
def tenant(vault: kc.Vault, kms: kc.LocalKMS) -> kc.Scope:
    acme = vault.scope("acme", kek=kms.create_key("acme-kek"), create=True)
    acme.put_many(DATA.items())
    acme.rotate_key()
    vault.scope("acme/repos/api", create=True).put("main.py", b"main")
    return acme


def _clean(result: Result, code: int = 0) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def _json(result: Result) -> Any:
    _clean(result)
    return json.loads(result.stdout)


def test_kek_add_ls_remove(run: Run, tenant: kc.Scope, kms: kc.LocalKMS) -> None:
    kms.create_key("acme-dr")
    added = run("kek", "add", "--tenant", "acme", "local:acme-dr")
    _clean(added)
    assert "added KEK local:acme-dr to tenant acme" in added.stdout
    assert " ".join(added.stdout.split()).count("key versions wrapped 2") == 1
    assert "local:acme-kek, local:acme-dr" in added.stdout

    assert _json(run("kek", "ls", "--tenant", "acme", "--json")) == [
        {"tenant": "acme", "keks": ["local:acme-kek", "local:acme-dr"]}
    ]
    assert _json(run("kek", "ls", "--all-tenants", "--json")) == [
        {"tenant": "acme", "keks": ["local:acme-kek", "local:acme-dr"]}
    ]
    table = run("kek", "ls", "--tenant", "acme")
    _clean(table)
    for text in ("primary", "failover", "local:acme-dr"):
        assert text in table.stdout
    local = run("kek", "ls")  # without --tenant: the LocalKMS key files, as before
    _clean(local)
    assert "local:acme-dr" in local.stdout and "primary version" in local.stdout

    rows = _json(run("keys", "--scope", "acme", "--json"))
    assert [r["also_wrapped_by"] for r in rows] == [["kek:local:acme-dr#1"]] * 2
    assert "kek:local:acme-dr#1" in run("keys", "--scope", "acme").stdout
    lineage = _json(run("lineage", "src/01.py", "--scope", "acme", "--json"))
    assert lineage["keks"] == [
        {"id": "local:acme-kek", "version": "1"},
        {"id": "local:acme-dr", "version": "1"},
    ]
    tree = run("lineage", "src/01.py", "--scope", "acme")
    _clean(tree)
    assert "or, failing that" in tree.stdout

    kms.disable_key("local:acme-kek")  # the DR KEK alone reads, after a failover
    got = run("get", "src/03.py", "--scope", "acme")
    _clean(got)
    assert got.stdout_bytes == DATA["src/03.py"]
    kms.enable_key("local:acme-kek")

    removed = run("kek", "remove", "--tenant", "acme", "local:acme-kek")
    _clean(removed)
    assert "wraps deleted 2" in " ".join(removed.stdout.split())
    assert _json(run("kek", "ls", "--tenant", "acme", "--json"))[0]["keks"] == ["local:acme-dr"]
    kms.disable_key("local:acme-kek")
    assert run("get", "src/03.py", "--scope", "acme").stdout_bytes == DATA["src/03.py"]


def test_rotate_replace_one_kek(run: Run, tenant: kc.Scope, kms: kc.LocalKMS) -> None:
    kms.create_key("acme-dr")
    kms.create_key("acme-dr-2")
    _clean(run("kek", "add", "--tenant", "acme", "local:acme-dr"))
    moved = run(
        "rotate", "--scope", "acme", "--kek", "local:acme-dr-2", "--replace", "local:acme-dr"
    )
    _clean(moved)
    assert "moved KEK local:acme-dr of tenant acme to KEK local:acme-dr-2" in moved.stdout
    assert _json(run("kek", "ls", "--tenant", "acme", "--json"))[0]["keks"] == [
        "local:acme-kek",
        "local:acme-dr-2",
    ]
    alone = run("rotate", "--scope", "acme", "--replace", "local:acme-dr-2")
    _clean(alone, 2)
    assert "give --kek too" in alone.stderr


def test_ingest_with_several_keks(run: Run, tmp_path: Path, kms: kc.LocalKMS) -> None:
    kms.create_key("globex-kek")
    kms.create_key("globex-dr")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_bytes(b"alpha")
    result = run(
        "ingest", str(src), "--scope", "globex", "--kek", "local:globex-kek",
        "--kek", "local:globex-dr",
    )  # fmt: skip
    _clean(result)
    assert _json(run("kek", "ls", "--tenant", "globex", "--json"))[0]["keks"] == [
        "local:globex-kek",
        "local:globex-dr",
    ]
    # Naming the primary alone still opens the tenant, as before.
    _clean(run("ingest", str(src), "--scope", "globex", "--kek", "local:globex-kek"))
    wrong = run("ingest", str(src), "--scope", "globex", "--kek", "local:globex-dr")
    _clean(wrong, 2)
    assert "protected by" in wrong.stderr


def test_errors_are_one_line_with_their_exit_code(
    run: Run, tenant: kc.Scope, kms: kc.LocalKMS
) -> None:
    last = run("kek", "remove", "--tenant", "acme", "local:acme-kek")
    _clean(last, 2)
    assert "only KEK" in last.stderr
    unknown = run("kek", "add", "--tenant", "nope", "local:acme-kek")
    _clean(unknown, 3)
    twice = run("kek", "add", "--tenant", "acme", "local:acme-kek")
    _clean(twice, 2)
    assert "already protects" in twice.stderr
    no_provider = run("kek", "add", "--tenant", "acme", "aws:alias/acme")
    _clean(no_provider, 2)
    child = run("kek", "ls", "--tenant", "acme/repos/api")
    _clean(child, 2)
    assert "not a tenant" in child.stderr
    json_alone = run("kek", "ls", "--json")
    _clean(json_alone, 2)
    kms.disable_key("local:acme-kek")
    kms.create_key("acme-dr")
    down = run("kek", "add", "--tenant", "acme", "local:acme-dr")
    _clean(down, 5)  # the only KEK is disabled: nothing to wrap from
    assert "KeyRevokedError" in down.stderr


def test_lineage_json_names_the_other_keks_of_the_chain(
    run: Run, tenant: kc.Scope, kms: kc.LocalKMS
) -> None:
    kms.create_key("acme-dr")
    _clean(run("kek", "add", "--tenant", "acme", "local:acme-dr"))
    found = _json(run("lineage", "main.py", "--scope", "acme/repos/api", "--json"))
    assert found["chain"][-1] == {
        "scope": "acme",
        "version": 2,
        "state": "ACTIVE",
        "wrapped_by": "kek:local:acme-kek#1",
        "also_wrapped_by": ["kek:local:acme-dr#1"],
    }
    assert "also_wrapped_by" not in found["chain"][0]
