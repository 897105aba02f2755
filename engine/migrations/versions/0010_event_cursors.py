"""How far the provider's event feed was read: the event catch-up's cursor.

The engine lists the provider's events (``engine.workers.events``) to take the ones
whose webhooks never came. ``event_cursors`` keeps, per feed, the time before which
every event was listed and taken, so that a restarted worker goes on from there
instead of reading the provider's whole retention again or skipping a span.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "event_cursors",
        sa.Column("feed", sa.String(length=64), nullable=False),
        sa.Column("read_to_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("feed", name=op.f("pk_event_cursors")),
    )


def downgrade() -> None:
    op.drop_table("event_cursors")
