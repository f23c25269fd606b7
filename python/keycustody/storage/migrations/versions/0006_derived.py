"""Derived records: a record may name its source record, whose DEK wraps its own DEK.

A derived record has no scope key version of its own (``key_version`` NULL); its key path is
its source record's.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.alter_column("key_version", existing_type=sa.Integer, nullable=True)
        batch.add_column(sa.Column("source_id", sa.LargeBinary(16), nullable=True))
        batch.create_index("ix_records_source_id", ["source_id"])


def downgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.drop_index("ix_records_source_id")
        batch.drop_column("source_id")
        batch.alter_column("key_version", existing_type=sa.Integer, nullable=False)
