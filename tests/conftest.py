"""Shared fixtures: a real LocalKMS directory and a real vault per test, on every backend.

Tests that take ``db_url`` (directly or through ``vault``) run once on a file-backed SQLite
database and once on a fresh database of a real PostgreSQL server when ``KEYCUSTODY_PG_URL``
names one (``.ci/run`` starts it; ``KEYCUSTODY_REQUIRE_POSTGRES=1`` makes its absence an
error). Tests that also take ``db_path`` look at SQLite's files and run on SQLite only; a test,
or one parameter set of a test (``pytest.param(..., marks=pytest.mark.sqlite_only)``), marked
``sqlite_only`` is not collected on PostgreSQL (what it checks does not exist there, e.g. a value
PostgreSQL's column types refuse, or the full matrix of a slow test whose PostgreSQL run covers a
subset). Raw row access for both backends: :mod:`dbadmin`.
"""

from __future__ import annotations

import gc
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import keycustody as kc
from dbadmin import RawDB
from keycustody.storage import schema
from keycustody.storage.engine import make_engine

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")

PG_URL = os.environ.get("KEYCUSTODY_PG_URL")
"""A PostgreSQL server's URL (any database on it); the tests create their own databases."""
PG_TEMPLATE = f"kc_template_{os.getpid()}"  # one per process: each xdist worker has its own


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: run this test (or parameter set) on the SQLite backend only"
    )
    if os.environ.get("KEYCUSTODY_REQUIRE_POSTGRES") == "1" and not PG_URL:
        raise pytest.UsageError("KEYCUSTODY_REQUIRE_POSTGRES=1 but KEYCUSTODY_PG_URL is not set")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    backends = ["sqlite"]
    sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") is not None
    if PG_URL and not sqlite_only and "db_path" not in metafunc.fixturenames:
        backends.append("postgresql")
    metafunc.parametrize("backend", backends)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_pg = callspec is not None and callspec.params.get("backend") == "postgresql"
        (dropped if on_pg and item.get_closest_marker("sqlite_only") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _admin_url(database: str) -> str:
    assert PG_URL is not None
    return make_url(PG_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to the current schema, copied for each test (fast: no migrations)."""
    admin = create_engine(_admin_url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {PG_TEMPLATE} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {PG_TEMPLATE}"))
    engine = make_engine(_admin_url(PG_TEMPLATE))
    schema.upgrade(engine)
    engine.dispose()
    yield PG_TEMPLATE
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {PG_TEMPLATE} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh database on the test PostgreSQL server, dropped after the test."""
    if not PG_URL:
        pytest.skip("no PostgreSQL server: set KEYCUSTODY_PG_URL (see .ci/postgres-setup.sh)")
    template = request.getfixturevalue("pg_template")
    name = f"kc_{secrets.token_hex(6)}"
    admin = create_engine(_admin_url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # FILE_COPY: several times faster than PostgreSQL 15's default for a small template.
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY"))
    yield _admin_url(name)
    # A connection the test left open is reported here (ResourceWarning, an error under
    # filterwarnings=error), against this test, rather than at some later test's GC. What
    # survives is frozen, so that the next test's collection walks only what that test made:
    # walking the whole session's heap cost about 0.4 s per test.
    gc.collect()
    gc.freeze()
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def kms(tmp_path: Path) -> kc.LocalKMS:
    """A LocalKMS in its own directory, outside the database's folder."""
    return kc.LocalKMS(tmp_path / "keys")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's SQLite database lives."""
    folder = tmp_path / "db"
    folder.mkdir(exist_ok=True)
    return folder / "ctx.db"


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of the test database (SQLite file or a fresh PostgreSQL database)."""
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{request.getfixturevalue('db_path')}"


@pytest.fixture
def raw(db_url: str) -> Iterator[RawDB]:
    """A raw connection to the test database (sqlite3 or psycopg, autocommit), as its
    administrator or an attacker would use, closed after the test."""
    conn = RawDB(db_url)
    yield conn
    conn.close()


@pytest.fixture
def vault(db_url: str, kms: kc.LocalKMS) -> Iterator[kc.Vault]:
    """An open vault, closed after the test."""
    with kc.Vault.open(db_url, kms=kms) as v:
        yield v


@pytest.fixture
def acme(vault: kc.Vault, kms: kc.LocalKMS) -> kc.Scope:
    """Tenant ``acme`` with a KEK of its own."""
    kek = kms.create_key("acme-kek")
    return vault.scope("acme", kek=kek, create=True)


# -- AWS: moto's server over real HTTP (KMS tests in tests/kms, S3 blob store tests) --------

AWS_REGION = "eu-west-1"
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": AWS_REGION,
    "AWS_DEFAULT_REGION": AWS_REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    """Dummy credentials and no config files: boto3 can never reach a real AWS account."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _AWS_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        yield


@pytest.fixture(scope="session")
def moto_url(aws_env: None) -> Iterator[str]:
    """moto's server (``moto[server]``) on 127.0.0.1, a free port, for the whole session;
    boto3 and moto are imported only by the tests that use it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
