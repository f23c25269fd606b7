"""Several KEKs per tenant: the tenant's additional KEKs and their wraps of its key versions.

The primary KEK stays ``scopes.kek_id`` and its wraps stay in ``scope_keys``, so a database
made before this revision needs no data change: every tenant has one KEK and no row here.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scope_key_wraps",
        sa.Column("scope_id", sa.LargeBinary(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kek_id", sa.String(1024), nullable=False),
        sa.Column("kek_version", sa.String(256), nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("scope_id", "version", "kek_id", name="pk_scope_key_wraps"),
        sa.ForeignKeyConstraint(
            ["scope_id", "version"],
            ["scope_keys.scope_id", "scope_keys.version"],
            name="fk_scope_key_wraps_scope_id_scope_keys",
        ),
    )
    op.create_table(
        "tenant_keks",
        sa.Column("scope_id", sa.LargeBinary(16), nullable=False),
        sa.Column("kek_id", sa.String(1024), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("added_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("scope_id", "kek_id", name="pk_tenant_keks"),
        sa.ForeignKeyConstraint(
            ["scope_id"], ["scopes.id"], name="fk_tenant_keks_scope_id_scopes"
        ),
    )


def downgrade() -> None:
    op.drop_table("tenant_keks")
    op.drop_table("scope_key_wraps")
