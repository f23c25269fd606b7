"""Erasure certificates, and on each shredded scope the certificate that erased it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "erasure_certificates",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("scope_path", sa.String(512), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("phase2_status", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_erasure_certificates"),
    )
    with op.batch_alter_table("scopes") as batch:
        batch.add_column(sa.Column("erasure_certificate", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scopes") as batch:
        batch.drop_column("erasure_certificate")
    op.drop_table("erasure_certificates")
