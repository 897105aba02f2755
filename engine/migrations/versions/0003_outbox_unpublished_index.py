"""A partial index on the outbox's unpublished events.

The relay asks for ``published_at IS NULL ORDER BY id`` every few seconds.
Without an index that read scanned every event ever published (80 ms at 1.6
million rows, a day of one simulated shard at a million payments a day); the
partial index holds only the unpublished ones, so the read costs what the
batch does.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UNPUBLISHED = sa.text("published_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_unpublished",
            ["id"],
            unique=False,
            sqlite_where=UNPUBLISHED,
            postgresql_where=UNPUBLISHED,
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_unpublished")
