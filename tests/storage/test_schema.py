"""schema.upgrade on a real SQLite file and a real PostgreSQL database: the migrations must
build exactly the models' schema on each backend (whose types differ: bytea, timestamptz,
varchar lengths), in one write transaction, and down again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.exc import IntegrityError

from dbadmin import pg_create, pg_drop
from keycustody.storage import schema
from keycustody.storage.engine import PG_WRITE_LOCK, WRITE, make_engine
from keycustody.storage.models import Base

TABLES = {
    "vault_meta",
    "scopes",
    "scope_keys",
    "records",
    "segments",
    "lineage_events",
    "audit_events",
    "audit_keys",
    "erasure_certificates",
    "scope_key_wraps",
    "tenant_keks",
}
HEAD = "0010"


@pytest.fixture
def new_database(backend: str, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Makes empty databases (no schema) on the test's backend: name -> URL."""
    made: list[str] = []

    def make(name: str) -> str:
        if backend == "postgresql":
            made.append(pg_create(prefix=f"kc_{name}"))
            return made[-1]
        return f"sqlite:///{tmp_path / name}.db"

    yield make
    for url in made:
        pg_drop(url)


@pytest.fixture
def empty_url(new_database: Callable[[str], str]) -> str:
    return new_database("vault")


@pytest.fixture
def engine(empty_url: str) -> Iterator[Engine]:
    engine = make_engine(empty_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrated(engine: Engine) -> Engine:
    schema.upgrade(engine)
    return engine


class Shared:
    """Per backend, one migrated database and one built by ``create_all``, made on first use
    and shared by the module's tests that only reflect them (a PostgreSQL database costs a
    CREATE DATABASE and a migration)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.engines: dict[tuple[str, str], Engine] = {}
        self.databases: list[str] = []

    def get(self, backend: str, kind: str) -> Engine:
        if (backend, kind) not in self.engines:
            if backend == "postgresql":
                url = pg_create(prefix=f"kc_{kind}")
                self.databases.append(url)
            else:
                url = f"sqlite:///{self.root / kind}.db"
            engine = make_engine(url)
            if kind == "migrated":
                schema.upgrade(engine)
            else:
                Base.metadata.create_all(engine)
            self.engines[backend, kind] = engine
        return self.engines[backend, kind]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()
        for url in self.databases:
            pg_drop(url)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    made = Shared(tmp_path_factory.mktemp("schema"))
    yield made
    made.close()


@pytest.fixture
def reflected(shared: Shared, backend: str) -> Engine:
    """A migrated database that tests only read (shared, see :class:`Shared`)."""
    return shared.get(backend, "migrated")


@pytest.fixture
def reflected_models(shared: Shared, backend: str) -> Engine:
    """A database made by ``create_all`` that tests only read (shared)."""
    return shared.get(backend, "models")


def _version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def _describe(engine: Engine, table: str) -> dict[str, Any]:
    """Everything reflection tells about a table, in a comparable form."""
    insp = inspect(engine)
    return {
        "columns": [
            (c["name"], c["type"].compile(engine.dialect), c["nullable"])
            for c in insp.get_columns(table)
        ],
        "pk": insp.get_pk_constraint(table),
        "unique": sorted(
            (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
        ),
        "indexes": sorted(
            (i["name"], tuple(i["column_names"]), bool(i["unique"]))
            for i in insp.get_indexes(table)
            # PostgreSQL also lists the index behind each unique constraint ("unique" above).
            if "duplicates_constraint" not in i
        ),
        "fks": sorted(
            (
                f["name"],
                tuple(f["constrained_columns"]),
                f["referred_table"],
                tuple(f["referred_columns"]),
            )
            for f in insp.get_foreign_keys(table)
        ),
    }


def test_upgrade_creates_the_tables(reflected: Engine) -> None:
    assert set(inspect(reflected).get_table_names()) == TABLES | {"alembic_version"}
    assert set(Base.metadata.tables) == TABLES


def test_alembic_version_is_head(reflected: Engine) -> None:
    assert _version(reflected) == [HEAD]


def test_migrations_have_a_single_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    assert script.get_heads() == [HEAD]
    assert schema.HEAD == HEAD  # what Vault.open compares a database's version with


_OPEN = """
import sys, keycustody as kc
kc.Vault.open(sys.argv[1], kms=kc.LocalKMS(sys.argv[2])).close()
print("alembic loaded" if "alembic" in sys.modules else "alembic not loaded")
"""


def test_a_database_at_head_opens_without_loading_alembic(tmp_path: Path) -> None:
    """Alembic and the migration scripts load only where a migration may be due: in a new
    process, the first open of a database migrates it, the next open of it does not."""
    url, kms = f"sqlite:///{tmp_path / 'vault.db'}", str(tmp_path / "keys")

    def open_in_a_new_process() -> str:
        args = [sys.executable, "-c", _OPEN, url, kms]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()

    assert open_in_a_new_process() == "alembic loaded"
    assert open_in_a_new_process() == "alembic not loaded"


@pytest.mark.parametrize("table", sorted(TABLES))
def test_columns_match_the_models(reflected: Engine, table: str) -> None:
    model = Base.metadata.tables[table]
    columns = {c["name"]: c for c in inspect(reflected).get_columns(table)}

    assert list(columns) == [c.name for c in model.columns]
    for column in model.columns:
        got = columns[column.name]
        assert got["nullable"] == column.nullable, column.name
        # Both as the backend spells them (e.g. TIMESTAMP WITH TIME ZONE, BYTEA, VARCHAR(64)).
        expected = column.type.compile(reflected.dialect)
        assert got["type"].compile(reflected.dialect) == expected, column.name


@pytest.mark.parametrize("table", sorted(TABLES))
def test_keys_constraints_and_indexes_match_the_models(reflected: Engine, table: str) -> None:
    model = Base.metadata.tables[table]
    got = _describe(reflected, table)

    assert got["pk"]["constrained_columns"] == [c.name for c in model.primary_key.columns]
    assert got["pk"]["name"] == model.primary_key.name
    assert got["indexes"] == sorted(
        (i.name, tuple(c.name for c in i.columns), bool(i.unique)) for i in model.indexes
    )
    assert got["fks"] == sorted(
        (
            fk.name,
            tuple(c.name for c in fk.columns),
            fk.referred_table.name,
            tuple(e.column.name for e in fk.elements),
        )
        for fk in model.foreign_key_constraints
    )


def test_unique_constraints(reflected: Engine) -> None:
    assert _describe(reflected, "scopes")["unique"] == [("uq_scopes_path", ("path",))]
    assert _describe(reflected, "records")["unique"] == [
        ("uq_records_scope_id", ("scope_id", "name_index"))
    ]
    assert _describe(reflected, "scope_keys")["unique"] == []
    assert _describe(reflected, "vault_meta")["unique"] == []


@pytest.mark.parametrize("table", sorted(TABLES))
def test_migration_equals_create_all(
    reflected: Engine, reflected_models: Engine, table: str
) -> None:
    assert _describe(reflected, table) == _describe(reflected_models, table)


def test_autogenerate_finds_no_drift(reflected: Engine) -> None:
    with reflected.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_is_idempotent(migrated: Engine) -> None:
    now = datetime.now(UTC)
    with migrated.begin() as conn:
        conn.execute(text("INSERT INTO vault_meta VALUES ('vault_id', 'v-1')"))
        conn.execute(
            text(
                "INSERT INTO scopes (id, path, parent_id, kek_id, state, active_version, "
                "created_at, state_changed_at) "
                "VALUES (:id, 'acme', NULL, 'local:k', 'active', 1, :t, :t)"
            ),
            {"id": bytes(16), "t": now},
        )
    before = {t: _describe(migrated, t) for t in TABLES}

    schema.upgrade(migrated)
    schema.upgrade(migrated)

    assert _version(migrated) == [HEAD]
    assert {t: _describe(migrated, t) for t in TABLES} == before
    with migrated.connect() as conn:
        assert conn.execute(text("SELECT value FROM vault_meta")).scalars().all() == ["v-1"]
        assert conn.execute(text("SELECT path FROM scopes")).scalars().all() == ["acme"]


def test_upgrade_survives_a_new_engine(engine: Engine, empty_url: str) -> None:
    schema.upgrade(engine)
    engine.dispose()
    again = make_engine(empty_url)
    try:
        schema.upgrade(again)
        assert _version(again) == [HEAD]
        assert set(inspect(again).get_table_names()) == TABLES | {"alembic_version"}
    finally:
        again.dispose()


def test_upgrade_runs_in_one_write_transaction(engine: Engine, backend: str) -> None:
    seen: list[str] = []
    ends: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "begin", lambda _conn: ends.append("begin"))
    event.listen(engine, "commit", lambda _conn: ends.append("commit"))
    event.listen(engine, "rollback", lambda _conn: ends.append("rollback"))

    schema.upgrade(engine)

    # First a read (a database at HEAD already is left alone; this one is empty), then the
    # migration in one write transaction: PostgreSQL's DDL is transactional, all or nothing.
    assert ends == ["begin", "rollback", "begin", "commit"]
    migration = seen[seen.index("SELECT version_num FROM alembic_version") + 1 :]
    begins = [s for s in migration if s.startswith("BEGIN")]
    if backend == "sqlite":
        assert begins == ["BEGIN IMMEDIATE"]
        assert migration[0] == "BEGIN IMMEDIATE"
    else:  # the vault's write lock, exclusive: no writer runs beside a migration
        assert begins == []
        assert migration[0] == f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})"


def test_upgrade_on_memory_engine() -> None:
    engine = make_engine("sqlite://")
    try:
        schema.upgrade(engine)
        assert _version(engine) == [HEAD]
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_foreign_keys_are_enforced_after_upgrade(migrated: Engine) -> None:
    now = datetime.now(UTC)
    with (
        pytest.raises(IntegrityError, match=r"(?i)foreign key"),
        migrated.connect().execution_options(**WRITE) as conn,
        conn.begin(),
    ):
        conn.execute(
            text(
                "INSERT INTO scope_keys (scope_id, version, state, created_at, state_changed_at)"
                " VALUES (:id, 1, 'active', :t, :t)"
            ),
            {"id": bytes(16), "t": now},
        )


def test_unique_path_is_enforced_after_upgrade(migrated: Engine) -> None:
    now = datetime.now(UTC)
    insert = text(
        "INSERT INTO scopes (id, path, parent_id, kek_id, state, active_version, created_at, "
        "state_changed_at) VALUES (:id, 'acme', NULL, NULL, 'active', 1, :t, :t)"
    )
    with migrated.begin() as conn:
        conn.execute(insert, {"id": bytes(16), "t": now})
    with pytest.raises(IntegrityError, match=r"(?i)unique"), migrated.begin() as conn:
        conn.execute(insert, {"id": b"\x01" * 16, "t": now})


def test_downgrade_removes_the_tables(migrated: Engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS))
    with migrated.connect().execution_options(**WRITE) as conn, conn.begin():
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert set(inspect(migrated).get_table_names()) <= {"alembic_version"}
    schema.upgrade(migrated)
    assert _version(migrated) == [HEAD]
