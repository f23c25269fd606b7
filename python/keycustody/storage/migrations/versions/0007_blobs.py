"""Blob store: a record's ciphertext may live in a blob store, named by ``blob_key``.

The row keeps header (with the wrapped DEK), encrypted name and size; ``body`` is then empty.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("blob_key", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.drop_column("blob_key")
