"""Room for every outcome of a provider event.

``provider_events.outcome`` was 16 characters, and ``applied_no_change`` (an
event applied without moving the payment, such as a lost dispute) is 17.
SQLite does not enforce a ``VARCHAR`` length, so simulations never saw it; on
PostgreSQL the webhook failed with ``StringDataRightTruncation`` on every try
and went to the dead-letter queue.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("provider_events", schema=None) as batch_op:
        batch_op.alter_column(
            "outcome", existing_type=sa.String(16), type_=sa.String(32), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("provider_events", schema=None) as batch_op:
        batch_op.alter_column(
            "outcome", existing_type=sa.String(32), type_=sa.String(16), existing_nullable=False
        )
