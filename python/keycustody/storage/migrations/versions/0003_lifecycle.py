"""Key lifecycle: state transition times on key versions, the version each record was sealed
under, and lineage events (scope-level for rewraps and KEK moves, record-level otherwise).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("scope_keys") as batch:
        batch.add_column(sa.Column("deactivated_at", _TS, nullable=True))
        batch.add_column(sa.Column("compromised_at", _TS, nullable=True))
        batch.add_column(sa.Column("destroyed_at", _TS, nullable=True))
    with op.batch_alter_table("records") as batch:
        batch.add_column(
            sa.Column("sealed_version", sa.Integer, nullable=False, server_default="1")
        )
    op.create_table(
        "lineage_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scope_id", sa.LargeBinary(16), nullable=False),
        sa.Column("record_id", sa.LargeBinary(16), nullable=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=True),
        sa.Column("to_version", sa.Integer, nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lineage_events"),
        sa.ForeignKeyConstraint(
            ["scope_id"], ["scopes.id"], name="fk_lineage_events_scope_id_scopes"
        ),
    )
    op.create_index("ix_lineage_events_scope_id", "lineage_events", ["scope_id"])
    op.create_index("ix_lineage_events_record_id", "lineage_events", ["record_id"])


def downgrade() -> None:
    op.drop_index("ix_lineage_events_record_id", table_name="lineage_events")
    op.drop_index("ix_lineage_events_scope_id", table_name="lineage_events")
    op.drop_table("lineage_events")
    with op.batch_alter_table("records") as batch:
        batch.drop_column("sealed_version")
    with op.batch_alter_table("scope_keys") as batch:
        batch.drop_column("destroyed_at")
        batch.drop_column("compromised_at")
        batch.drop_column("deactivated_at")
