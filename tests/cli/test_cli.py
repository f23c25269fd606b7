"""The ``keycustody`` command line: ingest, ls, get, demo, error mapping and the tree walk."""

from __future__ import annotations

import inspect
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from keycustody.cli import EXIT_CODES, app
from keycustody.cli.commands import exit_code, looks_binary, printable
from keycustody.cli.walk import SkipLog, read_batches, walk
from keycustody.errors import (
    ConfigError,
    IntegrityError,
    InvalidInputError,
    KeyCustodyError,
    KeyRevokedError,
    KmsError,
    KmsUnavailableError,
    NotFoundError,
    ShreddedError,
    StorageError,
    UnsupportedKeyIdError,
)

Run = Callable[..., Result]

FILES: dict[str, bytes] = {
    "README.md": b"# demo tree\n",
    "src/app.py": b"print('hello from app')\n" * 20,
    "src/pkg/util.py": b"def util() -> int:\n    return 42\n",
    "data/blob.bin": bytes(range(256)) * 8,
    "data/empty.txt": b"",
    "docs/ünïcödé name.txt": "naïve café\n".encode(),
}


def _make_tree(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small source tree with text, binary, empty and non-ASCII-named files."""
    return _make_tree(tmp_path / "tree")


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Invokes the CLI in an empty working directory with its own vault and KEK folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    env = {
        "KEYCUSTODY_DB": f"sqlite:///{tmp_path / 'db' / 'vault.db'}",
        "KEYCUSTODY_KMS_DIR": str(tmp_path / "keys"),
        "KEYCUSTODY_ACTOR": "tests@keycustody",
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, list(args), env=env)

    return invoke


def _clean_exit(result: Result, code: int) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_ingest_ls_get_roundtrip(run: Run, tree: Path, tmp_path: Path) -> None:
    result = run("ingest", str(tree), "--scope", "acme")
    _clean_exit(result, 0)
    assert "files" in result.stdout
    assert "KMS calls" in result.stdout

    listing = run("ls", "--scope", "acme", "--json")
    _clean_exit(listing, 0)
    rows = json.loads(listing.stdout)
    assert {r["name"]: r["size"] for r in rows} == {n: len(d) for n, d in FILES.items()}
    assert all(r["key_version"] == 1 and len(r["record_id"]) == 32 for r in rows)

    for name, data in FILES.items():
        got = run("get", name, "--scope", "acme")
        _clean_exit(got, 0)
        assert got.stdout_bytes == data

    out = tmp_path / "out.bin"
    got = run("get", "data/blob.bin", "--scope", "acme", "-o", str(out))
    _clean_exit(got, 0)
    assert out.read_bytes() == FILES["data/blob.bin"]
    assert out.stat().st_mode & 0o077 == 0


def test_ls_table_and_prefix(run: Run, tree: Path) -> None:
    _clean_exit(run("ingest", str(tree), "--scope", "acme", "--prefix", "repo"), 0)
    table = run("ls", "--scope", "acme", "--prefix", "repo/src/")
    _clean_exit(table, 0)
    assert "repo/src/app.py" in table.stdout
    assert "repo/src/pkg/util.py" in table.stdout
    assert "README.md" not in table.stdout
    assert "2 records" in table.stdout
    assert "1 record," in run("ls", "--scope", "acme", "--prefix", "repo/src/app").stdout


def test_small_batches_store_everything(run: Run, tree: Path) -> None:
    _clean_exit(run("ingest", str(tree), "--scope", "acme", "--batch-size", "2"), 0)
    rows = json.loads(run("ls", "--scope", "acme", "--json").stdout)
    assert sorted(r["name"] for r in rows) == sorted(FILES)


def test_get_missing_record_exits_3_without_traceback(run: Run, tree: Path) -> None:
    _clean_exit(run("ingest", str(tree), "--scope", "acme"), 0)
    result = run("get", "no/such/file.py", "--scope", "acme")
    _clean_exit(result, 3)
    assert result.stdout_bytes == b""
    assert "error: NotFoundError" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_scope_and_missing_vault_exit_3(run: Run, tree: Path) -> None:
    no_vault = run("ls", "--scope", "acme")
    _clean_exit(no_vault, 3)
    assert "no vault database" in no_vault.stderr
    _clean_exit(run("ingest", str(tree), "--scope", "acme"), 0)
    _clean_exit(run("get", "README.md", "--scope", "globex"), 3)
    _clean_exit(run("ingest", str(tree), "--scope", "globex", "--no-create"), 3)


def test_invalid_scope_path_exits_2(run: Run, tree: Path) -> None:
    result = run("ingest", str(tree), "--scope", "bad scope!")
    _clean_exit(result, 2)
    assert "InvalidInputError" in result.stderr


def test_unknown_kek_is_a_clean_error(run: Run, tree: Path) -> None:
    result = run("ingest", str(tree), "--scope", "acme", "--kek", "local:nope")
    assert result.exit_code in {code for _, code in EXIT_CODES}
    _clean_exit(result, result.exit_code)
    assert result.stderr.startswith("error:")


def test_kek_create_then_ingest_under_it(run: Run, tree: Path) -> None:
    created = run("kek", "create", "acme-kek")
    _clean_exit(created, 0)
    assert created.stdout.strip() == "local:acme-kek"
    _clean_exit(run("kek", "create", "acme-kek"), 2)  # exists: ConfigError
    _clean_exit(run("ingest", str(tree), "--scope", "acme", "--kek", "local:acme-kek"), 0)
    listing = run("kek", "ls")
    _clean_exit(listing, 0)
    assert "local:acme-kek" in listing.stdout
    # the tenant is bound to its KEK: naming another one is a configuration error
    _clean_exit(run("ingest", str(tree), "--scope", "acme", "--kek", "local:default"), 2)


def test_tampered_record_exits_4(run: Run, tree: Path, tmp_path: Path) -> None:
    _clean_exit(run("ingest", str(tree), "--scope", "acme"), 0)
    rows = json.loads(run("ls", "--scope", "acme", "--json").stdout)
    record_id = bytes.fromhex(next(r["record_id"] for r in rows if r["name"] == "src/app.py"))
    con = sqlite3.connect(tmp_path / "db" / "vault.db")
    with con:
        (body,) = con.execute(
            "SELECT body FROM records WHERE record_id = ?", (record_id,)
        ).fetchone()
        flipped = bytes([body[0] ^ 1]) + bytes(body[1:])
        con.execute("UPDATE records SET body = ? WHERE record_id = ?", (flipped, record_id))
    con.close()
    result = run("get", "src/app.py", "--scope", "acme")
    _clean_exit(result, 4)
    assert "IntegrityError" in result.stderr
    assert result.stdout_bytes == b""


def test_symlinks_and_special_files_are_reported_not_stored(run: Run, tree: Path) -> None:
    (tree / "src" / "link.py").symlink_to("app.py")
    (tree / "linkdir").symlink_to("src", target_is_directory=True)
    os.mkfifo(tree / "pipe")
    result = run("ingest", str(tree), "--scope", "acme", "--exclude", "docs")
    _clean_exit(result, 0)
    assert "symbolic link" in result.stderr
    assert "link.py" in result.stderr
    assert "not a regular file" in result.stderr
    assert "excluded 1" in result.stderr
    rows = json.loads(run("ls", "--scope", "acme", "--json").stdout)
    assert sorted(r["name"] for r in rows) == sorted(n for n in FILES if not n.startswith("docs/"))
    strict = run("ingest", str(tree), "--scope", "acme", "--strict")
    _clean_exit(strict, 1)


def test_ingest_never_stores_the_vault_itself(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree)  # default vault ./.keycustody/ inside the tree being ingested
    monkeypatch.delenv("KEYCUSTODY_DB", raising=False)
    monkeypatch.delenv("KEYCUSTODY_KMS_DIR", raising=False)
    runner = CliRunner()
    _clean_exit(runner.invoke(app, ["ingest", ".", "--scope", "acme"]), 0)
    second = runner.invoke(app, ["ingest", ".", "--scope", "acme"])
    _clean_exit(second, 0)
    assert "never ingested" in second.stderr
    listing = runner.invoke(app, ["ls", "--scope", "acme", "--json"])
    names = {r["name"] for r in json.loads(listing.stdout)}
    assert names == set(FILES)


def test_demo_on_a_small_source(run: Run, tree: Path, tmp_path: Path) -> None:
    _make_tree(
        tree,
        {f"lib/mod{i}.py": f"value_{i} = {i!r} * 7  # {i:04d}\n".encode() * 12 for i in range(30)},
    )
    result = run("demo", "--source", str(tree), "--batch-size", "7")
    _clean_exit(result, 0)
    assert "byte-identical" in result.stdout
    assert "IntegrityError" in result.stdout  # the tamper check
    assert "0 hits" in result.stdout
    assert "KMS calls" in result.stdout
    assert list(Path.cwd().iterdir()) == []  # nothing left behind without --keep


def test_demo_keep_leaves_the_vault(run: Run, tree: Path) -> None:
    result = run("demo", "--source", str(tree), "--keep")
    _clean_exit(result, 0)
    (kept,) = (Path.cwd() / ".keycustody-demo").iterdir()
    assert (kept / "vault.db").is_file()
    assert (kept / "keys" / "acme-kek").is_dir()


def test_demo_bad_source_exits_2(run: Run, tmp_path: Path) -> None:
    result = run("demo", "--source", str(tmp_path / "missing"))
    _clean_exit(result, 2)


def test_help_texts_have_examples(run: Run) -> None:
    for command in ("ingest", "get", "ls", "demo"):
        result = run(command, "--help")
        _clean_exit(result, 0)
        assert "Example" in result.stdout


def test_console_script_reports_errors_on_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KEYCUSTODY_DB": f"sqlite:///{tmp_path / 'vault.db'}",
        "KEYCUSTODY_KMS_DIR": str(tmp_path / "keys"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from keycustody.cli import main; main()", "get", "x", "-s", "a"],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3
    assert b"Traceback" not in proc.stderr
    assert proc.stderr.decode().startswith("error: NotFoundError")


_HELP_THEN_LIST_MODULES = """
import sys
from keycustody.cli import main
try:
    main()
except SystemExit as exit:
    assert exit.code in (0, 2), exit.code
print(*sorted(sys.modules), sep="\\n", file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["keys", "--help"], ["erasures", "ls", "--help"], ["rewrap"]]
)
def test_help_and_usage_errors_do_not_load_the_storage_layer(argv: list[str]) -> None:
    """--help (and a missing option) print without importing SQLAlchemy or the vault, which
    take a second or more to import: the CLI imports them where a command opens a vault."""
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_THEN_LIST_MODULES, *argv],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert b"Usage: " in proc.stdout + proc.stderr
    loaded = proc.stderr.decode().splitlines()
    assert "keycustody.cli.commands" in loaded
    heavy = ("sqlalchemy", "alembic", "keycustody.vault", "keycustody.keys.shredding")
    assert [m for m in loaded if m.startswith(heavy)] == []


def test_rewrap_defaults_to_the_library_batch_size() -> None:
    from keycustody.cli import keys
    from keycustody.keys import rotation

    default = inspect.signature(keys.rewrap).parameters["batch_size"].default
    assert default == rotation.DEFAULT_BATCH


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFoundError("x"), 3),
        (IntegrityError("x"), 4),
        (KeyRevokedError("x"), 5),
        (ShreddedError("x"), 6),
        (KmsError("x"), 7),
        (KmsUnavailableError("x"), 7),
        (UnsupportedKeyIdError("x"), 2),
        (ConfigError("x"), 2),
        (InvalidInputError("x"), 2),
        (StorageError("x"), 8),
        (KeyCustodyError("x"), 1),
    ],
)
def test_exit_codes(exc: KeyCustodyError, code: int) -> None:
    assert exit_code(exc) == code


def test_looks_binary() -> None:
    assert not looks_binary(b"plain text\n\ttabbed\r\n")
    assert not looks_binary("ünïcödé\n".encode())
    assert looks_binary(b"\x00\x01\x02")
    assert looks_binary(b"\xff\xfe not utf-8")
    assert looks_binary(b"text with an \x1b[31m escape")


def test_printable_neutralises_terminal_escapes_and_markup() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system=None, width=200)
    for name, shown in [
        ("src/app.py", "src/app.py"),
        ("a\x1b[2Jb\nc", "a\\x1b[2Jb\\x0ac"),
        ("[bold]x[/bold]", "[bold]x[/bold]"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ]:
        console.print(printable(name), soft_wrap=True)
        output = buffer.getvalue()
        assert output.splitlines()[-1] == shown
        assert "\x1b" not in output


def test_no_create_on_a_missing_vault_creates_nothing(
    run: Run, tree: Path, tmp_path: Path
) -> None:
    _clean_exit(run("ingest", str(tree), "--scope", "acme", "--no-create"), 3)
    assert not (tmp_path / "db" / "vault.db").exists()


def test_walk_yields_relative_posix_names(tree: Path) -> None:
    log = SkipLog()
    names = [e.name for e in walk(tree, log, prefix="/p/")]
    assert names == [e.name for e in walk(tree, SkipLog(), prefix="p")]  # repeatable order
    assert sorted(names) == sorted(f"p/{n}" for n in FILES)
    assert not log.skipped


def test_walk_reports_undecodable_file_names(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    try:
        (root / os.fsdecode(b"bad\xff.txt")).write_bytes(b"x")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem does not accept non-UTF-8 file names")
    log = SkipLog()
    assert list(walk(root, log)) == []
    assert [s.reason for s in log.skipped] == ["file name is not valid UTF-8"]


def test_unreadable_files_are_reported(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "t", {"a.txt": b"a", "b.txt": b"b"})
    log = SkipLog()
    entries = list(walk(root, log))
    (root / "b.txt").unlink()  # vanished between the walk and the read
    batches = list(read_batches(entries, log))
    assert batches == [[("a.txt", b"a")]]
    assert log.skipped[0].reason.startswith("unreadable")


def test_batches_are_bounded_by_files_and_bytes(tmp_path: Path) -> None:
    files = {f"f{i}": bytes(100) for i in range(10)}
    root = _make_tree(tmp_path / "t", files)
    log = SkipLog()
    by_count = list(read_batches(walk(root, log), log, batch_files=4))
    assert [len(b) for b in by_count] == [4, 4, 2]
    by_bytes = list(read_batches(walk(root, log), log, batch_bytes=250))
    assert [len(b) for b in by_bytes] == [2, 2, 2, 2, 2]


def test_files_above_the_record_limit_are_reported_not_read(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "t", {"small": b"x" * 10, "big": b"x" * 11})
    log = SkipLog()
    batches = list(read_batches(walk(root, log), log, max_file_bytes=10))
    assert batches == [[("small", b"x" * 10)]]
    assert log.skipped[0].path.endswith("big")
    assert "per-record limit" in log.skipped[0].reason
