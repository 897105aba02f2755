"""payments.fee_pending: a capture learned without its provider fee (by a webhook),
whose fee the recovery worker asks the provider for.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: SQLite supports it, and no table copy touches the triggers.
    op.add_column(
        "payments",
        sa.Column("fee_pending", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("fee_pending")
