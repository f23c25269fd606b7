"""Rewrap throughput (records/s) at 100,000 records, against re-sealing them afresh.

Group ``rewrap-100k``: ``rewrap`` moves every record's DEK to a new scope key version (60 bytes
of key material per record, in Rust batches; payloads untouched); ``reseal-put_many`` is what a
rewrap saves: storing the same records again with new DEKs. Each round rotates the scope key
first (setup, untimed) so there is a full version to move.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keycustody as kc

RECORDS = 100_000
SIZE = 64
ROUNDS = 3


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[kc.Scope, list[Any]]]:
    base = Path(tmp_path_factory.mktemp("rewrap"))
    pool = os.urandom(SIZE * 1024)
    items = [
        (f"repo/f{i}.py", pool[(i % 1024) * SIZE : (i % 1024 + 1) * SIZE]) for i in range(RECORDS)
    ]
    with kc.Vault.open(f"sqlite:///{base}/v.db", kms=kc.LocalKMS(base / "keys")) as vault:
        scope = vault.scope("bench", create=True)
        scope.put_many(items)
        yield scope, items


def test_rewrap(benchmark: Any, filled: tuple[kc.Scope, list[Any]]) -> None:
    scope, _ = filled
    benchmark.group = "rewrap-100k"
    benchmark.extra_info.update(records=RECORDS)

    def rotate() -> tuple[tuple[Any, ...], dict[str, Any]]:
        scope.rotate_key()
        return (), {}

    report = benchmark.pedantic(
        lambda: scope.rewrap(batch_size=10_000), setup=rotate, rounds=ROUNDS, iterations=1
    )
    assert report.records_done == RECORDS


def test_reseal_put_many(benchmark: Any, filled: tuple[kc.Scope, list[Any]]) -> None:
    scope, items = filled
    benchmark.group = "rewrap-100k"
    benchmark.extra_info.update(records=RECORDS)
    benchmark.pedantic(lambda: scope.put_many(items), rounds=ROUNDS, iterations=1)
