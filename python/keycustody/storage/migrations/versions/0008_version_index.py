"""The records index for key-version queries leads with ``key_version``.

Led by ``scope_id``, it competed with the unique ``(scope_id, name_index)`` index for lookups
by name: measured on PostgreSQL 15, before the first ANALYZE of a freshly filled table the
planner picked it for ``DELETE ... WHERE scope_id = $1 AND name_index = $2`` and scanned the
whole scope per record (put_many of 4,096 records into a 20,000-record scope: 23 s instead of
0.4 s). Led by ``key_version``, it serves only the key-version queries (rewrap, counts).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.drop_index("ix_records_scope_version")
        batch.create_index("ix_records_version_scope", ["key_version", "scope_id"])


def downgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.drop_index("ix_records_version_scope")
        batch.create_index("ix_records_scope_version", ["scope_id", "key_version"])
