"""Store path on PostgreSQL at 4 KiB records: Vault put_many/get_many against the pyca loop
writing the same rows with plain psycopg (the baseline a user would write).

Groups ``pg-put-4KiB`` and ``pg-get-4KiB``. ``pyca-loop-psycopg`` seals with the pure-Python
pyca loop and inserts ``(name, blob)`` rows with one ``executemany`` per batch in one
transaction (psycopg 3 pipelines executemany); reads select the names with ``= ANY(%s)`` and
open them. Both write to their own fresh database on the server named by
``KEYCUSTODY_PG_URL`` (skipped without one). Every timed put writes fresh names.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import keycustody as kc
from benches.harness import BenchRunner
from keycustody.bench import (
    PYCA_PSYCOPG,
    VAULT,
    BenchKeys,
    KiB,
    check_plaintexts,
    make_payload,
    pyca_envelope_open,
    pyca_envelope_seal,
)

SIZE = 4 * KiB
RECORDS = 4096
CASES = (VAULT, PYCA_PSYCOPG)
PG_URL = os.environ.get("KEYCUSTODY_PG_URL")

pytestmark = pytest.mark.skipif(not PG_URL, reason="KEYCUSTODY_PG_URL names no server")


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh database on the bench server (SQLAlchemy URL), dropped afterwards."""
    assert PG_URL is not None
    name = f"kc_bench_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="module")
def pg_vault_scope(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    kms = kc.LocalKMS(Path(tmp_path_factory.mktemp("pg-keys")))
    with kc.Vault.open(pg_database, kms=kms) as vault:
        yield vault.scope("bench", kek=kms.create_key("bench-kek"), create=True)


@pytest.fixture(scope="module")
def psycopg_conn(pg_database: str) -> Iterator[Any]:
    psycopg = pytest.importorskip("psycopg")
    dsn = make_url(pg_database).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE baseline (name text PRIMARY KEY, blob bytea NOT NULL)")
        conn.commit()
        yield conn


def psycopg_put(conn: Any, keys: BenchKeys, items: list[tuple[str, bytes]]) -> None:
    """The user's baseline: the pyca loop, then one executemany in one transaction."""
    blobs = pyca_envelope_seal(keys.kek, [(n.encode(), d) for n, d in items])
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO baseline (name, blob) VALUES (%s, %s)",
            [(n, b) for (n, _), b in zip(items, blobs, strict=True)],
        )


def psycopg_get(conn: Any, keys: BenchKeys, names: list[str]) -> dict[str, bytes]:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT name, blob FROM baseline WHERE name = ANY(%s)", (names,))
        rows = cur.fetchall()
    datas = pyca_envelope_open(keys.kek, [(n.encode(), b) for n, b in rows])
    return {n: d for (n, _), d in zip(rows, datas, strict=True)}


def _store(
    case: str, request: pytest.FixtureRequest, keys: BenchKeys
) -> tuple[Callable[[list[tuple[str, bytes]]], object], Callable[[list[str]], dict[str, bytes]]]:
    if case == VAULT:
        scope = request.getfixturevalue("pg_vault_scope")
        return scope.put_many, lambda names: dict(scope.get_many(names))
    conn = request.getfixturevalue("psycopg_conn")
    return (lambda items: psycopg_put(conn, keys, items), lambda n: psycopg_get(conn, keys, n))


@pytest.mark.parametrize("case", CASES)
def test_pg_put(
    case: str, pool: bytes, keys: BenchKeys, run_bench: BenchRunner, request: pytest.FixtureRequest
) -> None:
    put, _ = _store(case, request, keys)
    counter = itertools.count()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        prefix = f"{case}/r{next(counter)}/"
        return (list(make_payload(SIZE, RECORDS, pool=pool, prefix=prefix).items()),), {}

    run_bench("pg-put", case, SIZE, RECORDS, put, setup=setup)


@pytest.mark.parametrize("case", CASES)
def test_pg_get(
    case: str, pool: bytes, keys: BenchKeys, run_bench: BenchRunner, request: pytest.FixtureRequest
) -> None:
    put, get = _store(case, request, keys)
    payload = make_payload(SIZE, RECORDS, pool=pool, prefix="get/")
    put(list(payload.items()))
    names = list(payload.names)
    found = run_bench("pg-get", case, SIZE, RECORDS, lambda: get(names))
    check_plaintexts(case, [found[n] for n in names], payload.datas)
