"""A real source tree: the Python standard library, sealed, opened, stored and read back.

Groups ``seal-stdlib`` / ``open-stdlib`` (the envelope cases of ``bench_envelope.py``) and
``put-stdlib`` / ``get-stdlib`` (``vault`` put_many/get_many against ``pyca-loop-sqlite3`` and
the unencrypted floor ``sqlite3-plain``, as in ``bench_store.py``). The tree is every regular
file under the standard library except ``site-packages`` and ``__pycache__`` (about 2,500
files and 100 MB on CPython 3.11, sizes from a few bytes to a 40 MB static library), read into
memory once.
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
    CASES,
    PYCA_SQLITE,
    SQLITE_PLAIN,
    VAULT,
    BenchKeys,
    Payload,
    SealingScope,
    check_plaintexts,
    open_case,
    open_sqlite_baseline,
    pyca_sqlite_get,
    pyca_sqlite_put,
    seal_case,
    sqlite_plain_get,
    sqlite_plain_put,
    tree_payload,
)

STORE_CASES = (VAULT, PYCA_SQLITE, SQLITE_PLAIN)


@pytest.fixture(scope="session")
def stdlib() -> Payload:
    """Every file of the standard library (no site-packages, no bytecode), in memory."""
    return tree_payload()


def _scope(case: str, request: pytest.FixtureRequest) -> SealingScope | None:
    if case != VAULT:
        return None
    scope: SealingScope = request.getfixturevalue("vault_scope")
    return scope


def _run(run_bench: BenchRunner, op: str, case: str, payload: Payload, fn: Any, **kw: Any) -> Any:
    return run_bench(
        op,
        case,
        payload.size,
        payload.count,
        fn,
        label=payload.label,
        nbytes=payload.nbytes,
        **kw,
    )


@pytest.mark.parametrize("case", CASES)
def test_seal_stdlib(
    case: str,
    stdlib: Payload,
    keys: BenchKeys,
    run_bench: BenchRunner,
    request: pytest.FixtureRequest,
) -> None:
    blobs = _run(
        run_bench, "seal", case, stdlib, seal_case(case, stdlib, keys, _scope(case, request))
    )
    assert len(blobs) == stdlib.count


@pytest.mark.parametrize("case", CASES)
def test_open_stdlib(
    case: str,
    stdlib: Payload,
    keys: BenchKeys,
    run_bench: BenchRunner,
    request: pytest.FixtureRequest,
) -> None:
    datas = _run(
        run_bench, "open", case, stdlib, open_case(case, stdlib, keys, _scope(case, request))
    )
    check_plaintexts(case, datas, stdlib.datas)


@pytest.fixture(scope="module")
def connections(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, sqlite3.Connection]]:
    root = Path(tmp_path_factory.mktemp("stdlib-sqlite"))
    conns = {
        PYCA_SQLITE: open_sqlite_baseline(root / "pyca.db"),
        SQLITE_PLAIN: open_sqlite_baseline(root / "plain.db"),
    }
    yield conns
    for conn in conns.values():
        conn.close()


def _store(
    case: str, request: pytest.FixtureRequest, keys: BenchKeys
) -> tuple[Callable[[list[tuple[str, bytes]]], object], Callable[[list[str]], dict[str, bytes]]]:
    if case == VAULT:
        scope: SealingScope = request.getfixturevalue("vault_scope")
        return scope.put_many, lambda names: dict(scope.get_many(names))
    conn: sqlite3.Connection = request.getfixturevalue("connections")[case]
    if case == PYCA_SQLITE:
        return (
            lambda items: pyca_sqlite_put(conn, keys.kek, items),
            lambda names: pyca_sqlite_get(conn, keys.kek, names),
        )
    return (
        lambda items: sqlite_plain_put(conn, items),
        lambda names: sqlite_plain_get(conn, names),
    )


@pytest.mark.parametrize("case", STORE_CASES)
def test_put_stdlib(
    case: str,
    stdlib: Payload,
    keys: BenchKeys,
    run_bench: BenchRunner,
    request: pytest.FixtureRequest,
) -> None:
    put, _ = _store(case, request, keys)
    counter = itertools.count()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (stdlib.renamed(f"stdlib/{case}/r{next(counter)}/").items(),), {}

    _run(run_bench, "put", case, stdlib, put, setup=setup)


@pytest.mark.parametrize("case", STORE_CASES)
def test_get_stdlib(
    case: str,
    stdlib: Payload,
    keys: BenchKeys,
    run_bench: BenchRunner,
    request: pytest.FixtureRequest,
) -> None:
    put, get = _store(case, request, keys)
    stored = stdlib.renamed(f"stdlib/{case}/get/")
    put(stored.items())
    names = stored.names
    found = _run(run_bench, "get", case, stdlib, lambda: get(names))
    check_plaintexts(case, [found[n] for n in names], stored.datas)
