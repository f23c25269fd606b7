"""Store path at 4 KiB records: Vault put_many/get_many against the pyca loop + sqlite3.

Groups ``put-4KiB`` and ``get-4KiB``. ``pyca-loop-sqlite3`` seals with the pure-Python pyca loop
and writes the rows with one sqlite3 ``executemany`` transaction into a file-backed WAL database
(reads select them back and open them). The ``vault`` cases skip until ``keycustody.Vault``
exists. Every timed put writes fresh names, so rounds never collide.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benches.harness import BenchRunner
from keycustody.bench import (
    PYCA_SQLITE,
    VAULT,
    BenchKeys,
    KiB,
    SealingScope,
    check_plaintexts,
    make_payload,
    open_sqlite_baseline,
    pyca_sqlite_get,
    pyca_sqlite_put,
)

SIZE = 4 * KiB
RECORDS = 4096
CASES = (VAULT, PYCA_SQLITE)


@pytest.fixture(scope="module")
def sqlite_conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    conn = open_sqlite_baseline(Path(tmp_path_factory.mktemp("sqlite")) / "baseline.db")
    yield conn
    conn.close()


def _store(
    case: str, request: pytest.FixtureRequest, keys: BenchKeys
) -> tuple[Callable[[list[tuple[str, bytes]]], object], Callable[[list[str]], dict[str, bytes]]]:
    """``(put, get)`` for the case; the vault fixture is requested only by the vault case."""
    if case == VAULT:
        scope: SealingScope = request.getfixturevalue("vault_scope")
        return scope.put_many, lambda names: dict(scope.get_many(names))
    conn: sqlite3.Connection = request.getfixturevalue("sqlite_conn")
    return (
        lambda items: pyca_sqlite_put(conn, keys.kek, items),
        lambda names: pyca_sqlite_get(conn, keys.kek, names),
    )


@pytest.mark.parametrize("case", CASES)
def test_put(
    case: str,
    pool: bytes,
    keys: BenchKeys,
    run_bench: BenchRunner,
    request: pytest.FixtureRequest,
) -> None:
    put, _ = _store(case, request, keys)
    counter = itertools.count()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        prefix = f"{case}/r{next(counter)}/"
        return (make_payload(SIZE, RECORDS, pool=pool, prefix=prefix).items(),), {}

    run_bench("put", case, SIZE, RECORDS, put, setup=setup)


@pytest.mark.parametrize("case", CASES)
def test_get(
    case: str,
    pool: bytes,
    keys: BenchKeys,
    run_bench: BenchRunner,
    request: pytest.FixtureRequest,
) -> None:
    put, get = _store(case, request, keys)
    payload = make_payload(SIZE, RECORDS, pool=pool, prefix="get/")
    put(payload.items())
    names = payload.names
    found = run_bench("get", case, SIZE, RECORDS, lambda: get(names))
    check_plaintexts(case, [found[n] for n in names], payload.datas)
