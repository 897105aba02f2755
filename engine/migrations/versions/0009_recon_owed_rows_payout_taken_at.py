"""The report's row kept with the exception that found it missing in the ledger, and
when the provider took a payout.

A row an earlier run found ``missing_in_ledger`` is paired with its movement by
the run of the window holding the booking, however late the ledger learned of
it (``engine.domain.reconciliation``, rule 7). That run's report no longer holds
the row, so the exception keeps it (``reported_row``, JSON). Exceptions raised
before this revision have none: they are closed by hand, as before.

A payout's movement at the provider is timed by when the engine learned the
provider took it (``payouts.taken_at``), not by when the engine created it: a
payout resent after a timeout reaches the provider minutes after its creation.
Payouts from before this revision have none and are timed by their creation.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recon_exceptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reported_row", sa.JSON, nullable=True))
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_column("taken_at")
    with op.batch_alter_table("recon_exceptions", schema=None) as batch_op:
        batch_op.drop_column("reported_row")
