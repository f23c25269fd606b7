"""Fixtures of the benches: payloads per record size, keys, a vault when there is one.

Run: ``pytest benches --benchmark-enable --benchmark-only`` (addopts disable benchmarks, so a
plain ``pytest benches`` runs each case once as a smoke test). Rounds per case:
``KEYCUSTODY_BENCH_ROUNDS`` (default 10, after one warm-up round).

Besides pytest-benchmark's own time table, a throughput table (records/s, MB/s and ratios
against the pyca baselines, per group) is printed at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from benches.harness import MEASUREMENTS, BenchRunner
from keycustody.bench import (
    BASELINES,
    BATCH_BYTES,
    SIZES,
    BenchKeys,
    Payload,
    SealingScope,
    format_cost_model,
    format_table,
    make_payload,
    open_bench_vault,
    random_pool,
)

#: Ratio columns of the summary: the envelope baselines, then thread scaling against 1 thread.
SUMMARY_BASELINES = (*BASELINES, "keycustody-1thread", "pyca-raw-1thread")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[MEASUREMENTS] = []


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    measurements = config.stash.get(MEASUREMENTS, [])
    if not measurements:
        return
    families = {
        "envelope": ("seal", "open"),
        "store": ("put", "get"),
        "postgresql": ("pg-put", "pg-get"),
        "streams": ("put_stream", "open_stream"),
    }
    for title, ops in (*families.items(), ("threads", ("threads-seal", "threads-open"))):
        rows = [m for m in measurements if m.op in ops]
        if rows:
            rows.sort(key=lambda m: (ops.index(m.op), m.size))  # stable: case order kept
            terminalreporter.write_sep("-", f"{title}: median round; ratio = baseline / case time")
            terminalreporter.write(format_table(rows, SUMMARY_BASELINES) + "\n")
            if title == "envelope":
                terminalreporter.write(format_cost_model(rows) + "\n")


@pytest.fixture(scope="session")
def pool() -> bytes:
    """Random bytes for every payload, from os.urandom once per session."""
    return random_pool(BATCH_BYTES)


@pytest.fixture(scope="session", params=list(SIZES), ids=list(SIZES))
def payload(request: pytest.FixtureRequest, pool: bytes) -> Payload:
    """A batch of records of one size (1 KiB ... 16 MiB); ~32 MiB or 8192 records per round."""
    return make_payload(SIZES[request.param], pool=pool)


@pytest.fixture(scope="session")
def keys() -> BenchKeys:
    """A keycustody scope key plus the pyca baselines' KEK and raw key."""
    pytest.importorskip("cryptography", reason="the baselines need pyca/cryptography")
    return BenchKeys.generate()


@pytest.fixture(scope="session")
def vault_scope(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SealingScope]:
    """A tenant scope of a LocalKMS + SQLite vault; skips while keycustody.Vault is missing."""
    opened = open_bench_vault(tmp_path_factory.mktemp("vault"))
    if opened is None:
        pytest.skip("keycustody.Vault is not implemented yet")
    vault, scope = opened
    yield scope
    close = getattr(vault, "close", None)
    if callable(close):
        close()


@pytest.fixture
def run_bench(benchmark: Any, request: pytest.FixtureRequest) -> BenchRunner:
    """``run_bench(op, case, size, records, fn)``: a fixed-rounds ``benchmark.pedantic``."""
    return BenchRunner(benchmark, request.config.stash[MEASUREMENTS])
