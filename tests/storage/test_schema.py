"""schema.upgrade on real SQLite files: the migration must build exactly the models' schema."""

from __future__ import annotations

from collections.abc import Iterator
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

from keycustody.storage import schema
from keycustody.storage.engine import WRITE, make_engine
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
HEAD = "0009"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'vault.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def migrated(engine: Engine) -> Engine:
    schema.upgrade(engine)
    return engine


@pytest.fixture
def from_models(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'models.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def _describe(engine: Engine, table: str) -> dict[str, Any]:
    """Everything reflection tells about a table, in a comparable form."""
    insp = inspect(engine)
    return {
        "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
        "pk": insp.get_pk_constraint(table),
        "unique": sorted(
            (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
        ),
        "indexes": sorted(
            (i["name"], tuple(i["column_names"]), bool(i["unique"]))
            for i in insp.get_indexes(table)
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


def test_upgrade_creates_the_tables(migrated: Engine) -> None:
    assert set(inspect(migrated).get_table_names()) == TABLES | {"alembic_version"}
    assert set(Base.metadata.tables) == TABLES


def test_alembic_version_is_head(migrated: Engine) -> None:
    assert _version(migrated) == [HEAD]


def test_migrations_have_a_single_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    assert script.get_heads() == [HEAD]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_columns_match_the_models(migrated: Engine, table: str) -> None:
    model = Base.metadata.tables[table]
    reflected = {c["name"]: c for c in inspect(migrated).get_columns(table)}

    assert list(reflected) == [c.name for c in model.columns]
    for column in model.columns:
        got = reflected[column.name]
        assert got["nullable"] == column.nullable, column.name
        assert str(got["type"]) == str(column.type.compile(migrated.dialect)), column.name


@pytest.mark.parametrize("table", sorted(TABLES))
def test_keys_constraints_and_indexes_match_the_models(migrated: Engine, table: str) -> None:
    model = Base.metadata.tables[table]
    got = _describe(migrated, table)

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


def test_unique_constraints(migrated: Engine) -> None:
    assert _describe(migrated, "scopes")["unique"] == [("uq_scopes_path", ("path",))]
    assert _describe(migrated, "records")["unique"] == [
        ("uq_records_scope_id", ("scope_id", "name_index"))
    ]
    assert _describe(migrated, "scope_keys")["unique"] == []
    assert _describe(migrated, "vault_meta")["unique"] == []


@pytest.mark.parametrize("table", sorted(TABLES))
def test_migration_equals_create_all(migrated: Engine, from_models: Engine, table: str) -> None:
    assert _describe(migrated, table) == _describe(from_models, table)


def test_autogenerate_finds_no_drift(migrated: Engine) -> None:
    with migrated.connect() as conn:
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


def test_upgrade_survives_a_new_engine(engine: Engine, tmp_path: Path) -> None:
    schema.upgrade(engine)
    engine.dispose()
    again = make_engine(f"sqlite:///{tmp_path / 'vault.db'}")
    try:
        schema.upgrade(again)
        assert _version(again) == [HEAD]
        assert set(inspect(again).get_table_names()) == TABLES | {"alembic_version"}
    finally:
        again.dispose()


def test_upgrade_runs_in_one_write_transaction(engine: Engine) -> None:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(*args: Any) -> None:
        seen.append(args[2])

    schema.upgrade(engine)

    begins = [s for s in seen if s.startswith("BEGIN")]
    assert begins == ["BEGIN IMMEDIATE"]
    assert seen[0] == "BEGIN IMMEDIATE"


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
        pytest.raises(IntegrityError, match="FOREIGN KEY"),
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
    with pytest.raises(IntegrityError, match="UNIQUE"), migrated.begin() as conn:
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
