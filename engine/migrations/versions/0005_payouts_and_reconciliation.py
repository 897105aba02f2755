"""Payouts (seller money sent to the bank through the provider) and reconciliation
(runs over settlement reports, the rows they matched, the exceptions they found).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 21:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "payouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("seller_id", sa.String(length=255), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("provider_payout_id", sa.String(length=255), nullable=True),
        sa.Column("provider_idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("idempotency_id", sa.String(length=64), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("lookups", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_lookup_at", TS, nullable=True),
        sa.Column("needs_review", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("arrived_at", TS, nullable=True),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payouts_amount_positive")),
        sa.CheckConstraint(
            "status IN ('pending', 'unknown', 'in_transit', 'paid', 'failed')",
            name=op.f("ck_payouts_status_valid"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
        sa.UniqueConstraint(
            "provider_idempotency_key", name=op.f("uq_payouts_provider_idempotency_key")
        ),
        sa.UniqueConstraint("provider_payout_id", name=op.f("uq_payouts_provider_payout_id")),
    )
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.create_index("ix_payouts_seller", ["seller_id", "currency"], unique=False)
        batch_op.create_index("ix_payouts_status", ["status"], unique=False)

    op.create_table(
        "recon_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("window_start_at", TS, nullable=False),
        sa.Column("window_end_at", TS, nullable=False),
        sa.Column("rows_count", sa.Integer(), nullable=False),
        sa.Column("matched_count", sa.Integer(), nullable=False),
        sa.Column("exceptions_count", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_runs")),
    )
    op.create_table(
        "settlement_rows",
        sa.Column("balance_transaction_id", sa.String(length=255), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("provider_ref", sa.String(length=255), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("gross_minor", sa.BigInteger(), nullable=False),
        sa.Column("fee_minor", sa.BigInteger(), nullable=False),
        sa.Column("net_minor", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["recon_runs.id"], name=op.f("fk_settlement_rows_run_id_recon_runs")
        ),
        sa.PrimaryKeyConstraint("balance_transaction_id", name=op.f("pk_settlement_rows")),
    )
    with op.batch_alter_table("settlement_rows", schema=None) as batch_op:
        batch_op.create_index("ix_settlement_rows_provider_ref", ["provider_ref"], unique=False)

    op.create_table(
        "recon_exceptions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("dedupe_key", sa.String(length=600), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("party", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=True),
        sa.Column("provider_ref", sa.String(length=255), nullable=True),
        sa.Column("payment_id", sa.String(length=64), nullable=True),
        sa.Column("balance_transaction_id", sa.String(length=255), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("expected_minor", sa.BigInteger(), nullable=True),
        sa.Column("reported_minor", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("resolution_reason", sa.String(length=500), nullable=True),
        sa.Column("journal_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("resolved_at", TS, nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'resolved')", name=op.f("ck_recon_exceptions_status_valid")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["recon_runs.id"], name=op.f("fk_recon_exceptions_run_id_recon_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recon_exceptions")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_recon_exceptions_dedupe_key")),
    )
    with op.batch_alter_table("recon_exceptions", schema=None) as batch_op:
        batch_op.create_index("ix_recon_exceptions_status", ["status", "category"], unique=False)


def downgrade() -> None:
    for table in ("recon_exceptions", "settlement_rows", "recon_runs", "payouts"):
        op.drop_table(table)
