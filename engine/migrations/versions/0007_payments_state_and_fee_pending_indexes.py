"""Indexes for the recovery worker's two reads of payments.

Every pass (each minute in a simulation, each tick of ``serve worker``) the
recovery worker asks for the payments awaiting 3-D Secure
(``state = 'requires_action'``, a subquery of its unresolved-attempts read)
and for the captures whose fee is still to learn (``fee_pending``). Without
an index both read every payment ever made: at half a million payments (one
simulated shard's day at a million a day) each pass scanned the table twice,
and the passes together cost more than the payments. ``ix_payments_state``
serves the first read (and the simulation's count of payments by state);
the partial ``ix_payments_fee_pending`` holds only the captures waiting for a
fee, so the second read costs what its batch does.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The engine's read says ``fee_pending = 1`` on SQLite, ``= true`` on PostgreSQL:
# a partial index is used when its predicate is the query's own term.
FEE_PENDING_SQLITE = sa.text("fee_pending = 1")
FEE_PENDING_POSTGRESQL = sa.text("fee_pending")


def upgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index("ix_payments_state", ["state"], unique=False)
        batch_op.create_index(
            "ix_payments_fee_pending",
            ["id"],
            unique=False,
            sqlite_where=FEE_PENDING_SQLITE,
            postgresql_where=FEE_PENDING_POSTGRESQL,
        )


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_fee_pending")
        batch_op.drop_index("ix_payments_state")
