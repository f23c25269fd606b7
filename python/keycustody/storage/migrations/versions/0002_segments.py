"""Segments of stream records (suite 2), deleted with their record.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("record_id", sa.LargeBinary(16), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("record_id", "seq", name="pk_segments"),
        sa.ForeignKeyConstraint(
            ["record_id"],
            ["records.record_id"],
            name="fk_segments_record_id_records",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("segments")
