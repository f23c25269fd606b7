"""``keycustody bench``: it runs, its JSON has every part, and its helpers behave.

No assertion here is about speed: timings depend on the machine and its load. Only shapes,
signs and the pass/fail logic are checked.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from keycustody import bench as kb
from keycustody.cli import app
from keycustody.cli.bench import parse_sizes, render
from keycustody.errors import ConfigError

pytest.importorskip("cryptography", reason="keycustody bench needs pyca/cryptography")

MEASUREMENT_KEYS = {
    "op",
    "case",
    "group",
    "size",
    "label",
    "records",
    "batch_bytes",
    "median_s",
    "records_per_s",
    "bytes_per_s",
    "seconds",
    "minor_faults_per_record",
    "peak_rss_delta_bytes",
    "ratios",
}
PHASE_KEYS = {
    "name",
    "seconds",
    "bytes",
    "items",
    "bytes_per_s",
    "items_per_s",
    "peak_rss_bytes",
    "base_rss_bytes",
    "kms_calls",
    "baseline",
    "baseline_seconds",
    "baseline_bytes",
    "baseline_bytes_per_s",
    "ratio",
    "extra",
}
TARGET_KEYS = {"key", "what", "goal", "value", "shown", "passed", "bound", "note"}
TARGETS = {
    "seal_many_4KiB",
    "open_many_4KiB",
    "seal_many_1MiB",
    "open_many_1MiB",
    "put_many_4KiB",
    "get_many_4KiB",
    "put_stream_rss",
    "put_stream_speed",
    "open_stream_rss",
    "open_stream_speed",
    "put_stream-local-blobs_rss",
    "put_stream-local-blobs_speed",
    "open_stream-local-blobs_rss",
    "open_stream-local-blobs_speed",
    "ingest_seconds",
    "ingest_rss",
    "kms_calls",
}


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``keycustody bench --quick --json``, once for the module (about 20 s)."""
    work = tmp_path_factory.mktemp("bench")
    saved = tmp_path_factory.mktemp("saved") / "bench.json"
    args = ["bench", "--quick", "--json", "--dir", str(work), "--save", str(saved)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    assert not any(work.iterdir()), "the bench left files behind"
    assert json.loads(saved.read_text()) == doc
    return doc


@pytest.mark.slow
def test_quick_json_has_every_part(quick_json: dict[str, Any]) -> None:
    assert set(quick_json) == {
        "started",
        "seconds",
        "machine",
        "config",
        "peak_rss_bytes",
        "measurements",
        "phases",
        "bounds",
        "kms",
        "targets",
    }
    assert _positive(quick_json["seconds"])
    assert _positive(quick_json["peak_rss_bytes"])
    machine = quick_json["machine"]
    assert {"cpu", "cores", "python", "sqlite", "cryptography", "platform"} <= set(machine)
    assert quick_json["config"]["sizes"] == ["4KiB", "1MiB"]


@pytest.mark.slow
def test_quick_json_measurements(quick_json: dict[str, Any]) -> None:
    rows = quick_json["measurements"]
    assert all(set(r) == MEASUREMENT_KEYS for r in rows)
    groups = {r["group"] for r in rows}
    assert {"seal-4KiB", "open-4KiB", "seal-1MiB", "open-1MiB", "put-4KiB", "get-4KiB"} <= groups
    assert {"seal-stdlib", "open-stdlib", "put-stdlib", "get-stdlib"} <= groups
    cases = {(r["group"], r["case"]) for r in rows}
    for group in ("seal-4KiB", "open-1MiB", "seal-stdlib"):
        for case in (kb.KEYCUSTODY, kb.VAULT, kb.PYCA_LOOP, kb.PYCA_RAW):
            assert (group, case) in cases
    for group in ("put-4KiB", "get-4KiB", "put-stdlib"):
        for case in (kb.VAULT, kb.PYCA_SQLITE, kb.SQLITE_PLAIN, kb.SQLITE_VAULT_ROWS):
            assert (group, case) in cases
    for r in rows:
        assert _positive(r["median_s"]) and _positive(r["bytes_per_s"]), r
        assert _positive(r["records"]) and len(r["seconds"]) == 3
        assert all(_positive(v) for v in r["ratios"].values()), r
    vault_seal = next(r for r in rows if (r["group"], r["case"]) == ("seal-4KiB", kb.VAULT))
    assert set(vault_seal["ratios"]) == {kb.PYCA_LOOP, kb.PYCA_RAW}


@pytest.mark.slow
def test_quick_json_phases_bounds_targets(quick_json: dict[str, Any]) -> None:
    phases = {p["name"]: p for p in quick_json["phases"]}
    assert set(phases) == {
        "put_stream",
        "open_stream",
        "put_stream-sqlite3-plain",
        "open_stream-sqlite3-plain",
        "put_stream-local-blobs",
        "open_stream-local-blobs",
        "ingest",
        "ingest-sqlite3-plain",
        "ingest-sqlite3-vault-rows",
    }
    for p in phases.values():
        assert set(p) == PHASE_KEYS
        assert _positive(p["seconds"]) and _positive(p["bytes"]) and _positive(p["items"])
        assert _positive(p["peak_rss_bytes"]) and _positive(p["base_rss_bytes"])
        assert p["peak_rss_bytes"] >= p["base_rss_bytes"]
    assert phases["put_stream"]["bytes"] == 32 * kb.MiB
    assert _positive(phases["open_stream"]["ratio"])
    # sqlite3 alone read the same segments beside the vault's reads: the read's bound.
    assert _positive(phases["open_stream"]["extra"]["floor_seconds"])
    assert "floor_seconds" not in phases["open_stream-local-blobs"]["extra"]
    assert phases["ingest"]["items"] == 10_000
    assert phases["ingest-sqlite3-vault-rows"]["items"] == 10_000
    assert phases["ingest-sqlite3-vault-rows"]["bytes"] == phases["ingest"]["bytes"]
    # KMS: one unwrap of the one scope key version, whatever the record count.
    assert phases["ingest"]["kms_calls"] == 1
    assert quick_json["kms"]["calls_after_scope_setup"] == 0

    bounds = quick_json["bounds"]
    for key in (kb.DISK_FSYNC, kb.FIXED_SEAL, kb.FIXED_OPEN):
        assert _positive(bounds[key])

    targets = {t["key"]: t for t in quick_json["targets"]}
    assert set(targets) == TARGETS
    for t in targets.values():
        assert set(t) == TARGET_KEYS
        assert isinstance(t["passed"], bool), t
        assert _positive(t["value"]), t
    assert targets["kms_calls"]["passed"] is True


def test_parse_sizes() -> None:
    assert parse_sizes("1KiB,4KiB,64KiB,1MiB,16MiB") == tuple(kb.SIZES.values())
    assert parse_sizes("512B, 2k ,1M,4KiB,4096") == (512, 2048, 2**20, 4096)
    for bad in ("", "4XB", "0B", "1024MiB", "-1KiB"):
        with pytest.raises(typer.BadParameter):
            parse_sizes(bad)


def test_bad_sizes_exit_2() -> None:
    result = CliRunner().invoke(app, ["bench", "--sizes", "4 parsecs"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_missing_pyca_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ConfigError("keycustody bench needs pyca/cryptography")

    monkeypatch.setattr(kb, "load_aesgcm", missing)
    result = CliRunner().invoke(app, ["bench", "--quick"])
    assert result.exit_code == 2
    assert "pyca/cryptography" in result.stderr
    assert "Traceback" not in result.output


def test_synthetic_files_are_seeded_and_sized_like_the_stdlib() -> None:
    sizes = kb.stdlib_py_sizes()
    assert len(sizes) > 100
    first = list(kb.synthetic_files(300, seed=7, sizes=sizes, pool=kb.random_pool(2 * kb.MiB)))
    again = list(kb.synthetic_files(300, seed=7, sizes=sizes, pool=kb.random_pool(2 * kb.MiB)))
    assert [n for n, _ in first] == [n for n, _ in again]
    assert [len(d) for _, d in first] == [len(d) for _, d in again]
    assert first[0][0] == "repo/pkg_0/mod_0.py" and first[123][0] == "repo/pkg_1/mod_23.py"
    assert {len(d) for _, d in first} <= set(sizes)


def test_tree_payload_respects_its_limit() -> None:
    payload = kb.tree_payload(limit_bytes=kb.MiB)
    assert 0 < payload.nbytes <= kb.MiB
    assert payload.label == "stdlib"
    assert all(not n.startswith("/") and "__pycache__" not in n for n in payload.names)
    renamed = payload.renamed("x/")
    assert renamed.names[0] == "x/" + payload.names[0]
    assert renamed.datas is payload.datas


def test_pattern_reader_yields_exactly_its_size() -> None:
    reader = kb.PatternReader(3 * kb.MiB + 5, kb.random_pool(kb.MiB + 1))
    chunks = iter(lambda: reader.read(kb.MiB), b"")
    assert [len(c) for c in chunks] == [kb.MiB, kb.MiB, kb.MiB, 5]
    assert reader.read(10) == b""


def _report() -> kb.Report:
    """A hand-made report: vault 4 KiB seal 10x the loop, 1 MiB open at the raw speed."""
    m = kb.Measurement
    report = kb.Report(
        measurements=[
            m("seal", kb.VAULT, 4096, 100, (0.001,)),
            m("seal", kb.PYCA_LOOP, 4096, 100, (0.010,)),
            m("open", kb.VAULT, 4096, 100, (0.005,)),
            m("open", kb.PYCA_LOOP, 4096, 100, (0.010,)),
            m("open", kb.VAULT, kb.MiB, 8, (0.004,)),
            m("open", kb.PYCA_RAW, kb.MiB, 8, (0.004,)),
            m("put", kb.VAULT, 4096, 100, (0.010,)),
            m("put", kb.PYCA_SQLITE, 4096, 100, (0.020,)),
            m("put", kb.SQLITE_PLAIN, 4096, 100, (0.004,)),
            m("put", kb.SQLITE_VAULT_ROWS, 4096, 100, (0.005,)),
        ],
        bounds={kb.FIXED_SEAL: 1e-6, kb.FIXED_OPEN: 1e-6, kb.MEMCPY_ALL: 4e9},
        phases=[
            kb.Phase(
                "put_stream",
                2.0,
                2**30,
                1024,
                90 * kb.MiB,
                60 * kb.MiB,
                1,
                kb.PYCA_RAW,
                0.5,
                2**30,
            ),
            kb.Phase(
                "open_stream",
                1.0,
                2**30,
                1024,
                80 * kb.MiB,
                60 * kb.MiB,
                1,
                kb.PYCA_RAW,
                0.5,
                2**30,
                {"floor_seconds": 0.5},
            ),
            kb.Phase("ingest", 30.0, 7 * 10**9, 400_000, 2**31, 60 * kb.MiB, 1),
        ],
    )
    report.targets = kb.evaluate_targets(report)
    return report


def test_the_page_faults_of_a_bound_are_charged_as_if_every_core_took_its_own() -> None:
    """A bound is optimistic: page faults cost the one-thread fresh-page rate on each core,
    even where the all-core rate measured no higher (seen on an AMD EPYC VM, where the vault
    then beat a bound charged at the all-core rate twice over)."""
    m = kb.Measurement
    cores = os.cpu_count() or 1
    report = kb.Report(
        measurements=[
            m("open", kb.VAULT, kb.MiB, 8, (0.004,), faults=(8 * 256,)),
            m("open", kb.PYCA_RAW, kb.MiB, 8, (0.004,)),
        ],
        bounds={
            kb.FIXED_OPEN: 1e-6,
            kb.AES_WARM: 4e9,
            kb.FRESH_1: 1e9,
            kb.FRESH_ALL: 1e9,  # no faster on every core than on one
        },
    )
    found = kb.envelope_bound(report, "open", kb.MiB, kb.PYCA_RAW)
    assert found is not None
    bound, note = found
    faults = 256 * mmap.PAGESIZE / (1e9 * cores)
    assert bound == pytest.approx(0.004 / 8 / (1e-6 + kb.MiB / (4e9 * cores) + faults))
    assert "256.0 page faults" in note
    report.bounds[kb.FRESH_ALL] = 4e9 * cores  # all cores measured faster still: that rate
    bound, _ = kb.envelope_bound(report, "open", kb.MiB, kb.PYCA_RAW) or (0.0, "")
    faults = 256 * mmap.PAGESIZE / (4e9 * cores)
    assert bound == pytest.approx(0.004 / 8 / (1e-6 + kb.MiB / (4e9 * cores) + faults))


def test_targets_pass_fail_and_bounds() -> None:
    targets = {t.key: t for t in _report().targets}
    assert targets["seal_many_4KiB"].passed is True and targets["seal_many_4KiB"].value == 10
    assert targets["open_many_4KiB"].passed is False
    assert targets["open_many_1MiB"].passed is False
    # fixed 1 us + AES at the stream baseline's 2 GiB/s on every core; no page faults counted
    aes = 2**30 / 0.5 * (os.cpu_count() or 1)
    assert targets["open_many_1MiB"].bound == pytest.approx(0.004 / 8 / (1e-6 + kb.MiB / aes))
    assert "page faults" not in targets["open_many_1MiB"].note
    put = targets["put_many_4KiB"]
    assert put.passed is True and put.bound == pytest.approx(4.0)
    assert targets["get_many_4KiB"].passed is None
    assert targets["put_stream_rss"].passed is True
    assert targets["put_stream_speed"].passed is False  # a quarter of the raw speed
    assert targets["open_stream_rss"].passed is True
    opened = targets["open_stream_speed"]  # half the raw speed; sqlite3 alone, all of it
    assert opened.passed is True and opened.value == pytest.approx(0.5)
    assert opened.bound == pytest.approx(1.0) and "the same blobs" in opened.note
    assert targets["ingest_seconds"].passed is True
    assert targets["ingest_rss"].passed is False  # 2 GiB
    assert targets["kms_calls"].passed is True


def test_render_tables_and_plain_text() -> None:
    report = _report()
    console = Console(record=True, width=200)
    render(report, console)
    text = console.export_text()
    for needle in ("seal-4KiB", "10.00x", "PASS", "FAIL", "put_stream", "ingest", "machine:"):
        assert needle in text
    plain = report.format_table()
    assert "seal-4KiB" in plain and "FAIL" in plain
    assert json.loads(report.to_json())["targets"][0]["key"] == "seal_many_4KiB"


@pytest.fixture
def no_children(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(task: str, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError(f"bench child {task!r} failed with exit code 1")

    monkeypatch.setattr(kb, "run_child", refuse)
    yield


def test_failed_child_is_one_error_line(no_children: None, tmp_path: Path) -> None:
    args = ["bench", "--quick", "--sizes", "1KiB", "--no-stdlib", "--ingest-files", "0"]
    result = CliRunner().invoke(app, [*args, "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "bench child 'stream' failed" in result.stderr
    assert "Traceback" not in result.output
