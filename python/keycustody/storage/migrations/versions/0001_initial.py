"""Initial schema: vault_meta, scopes, scope_keys, records.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "vault_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_vault_meta"),
    )
    op.create_table(
        "scopes",
        sa.Column("id", sa.LargeBinary(16), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("parent_id", sa.LargeBinary(16), nullable=True),
        sa.Column("kek_id", sa.String(1024), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("active_version", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("state_changed_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scopes"),
        sa.ForeignKeyConstraint(["parent_id"], ["scopes.id"], name="fk_scopes_parent_id_scopes"),
        sa.UniqueConstraint("path", name="uq_scopes_path"),
    )
    op.create_index("ix_scopes_parent_id", "scopes", ["parent_id"])
    op.create_table(
        "scope_keys",
        sa.Column("scope_id", sa.LargeBinary(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=True),
        sa.Column("kek_id", sa.String(1024), nullable=True),
        sa.Column("kek_version", sa.String(256), nullable=True),
        sa.Column("parent_version", sa.Integer, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("state_changed_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("scope_id", "version", name="pk_scope_keys"),
        sa.ForeignKeyConstraint(["scope_id"], ["scopes.id"], name="fk_scope_keys_scope_id_scopes"),
    )
    op.create_table(
        "records",
        sa.Column("record_id", sa.LargeBinary(16), nullable=False),
        sa.Column("scope_id", sa.LargeBinary(16), nullable=False),
        sa.Column("name_index", sa.LargeBinary(32), nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("header", sa.LargeBinary, nullable=False),
        sa.Column("name_ct", sa.LargeBinary, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("record_id", name="pk_records"),
        sa.UniqueConstraint("scope_id", "name_index", name="uq_records_scope_id"),
        sa.ForeignKeyConstraint(
            ["scope_id", "key_version"],
            ["scope_keys.scope_id", "scope_keys.version"],
            name="fk_records_scope_id_scope_keys",
        ),
    )
    op.create_index("ix_records_scope_version", "records", ["scope_id", "key_version"])


def downgrade() -> None:
    op.drop_index("ix_records_scope_version", table_name="records")
    op.drop_table("records")
    op.drop_table("scope_keys")
    op.drop_index("ix_scopes_parent_id", table_name="scopes")
    op.drop_table("scopes")
    op.drop_table("vault_meta")
