"""Marketplace: payment lines (one per seller of a split payment), sellers' fee
plans, and wallets (materialised seller balances, audited against the ledger).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 21:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: SQLite supports it, and no table copy touches the triggers.
    op.add_column(
        "payments",
        sa.Column("lines_count", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_table(
        "payment_lines",
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("seller_id", sa.String(length=255), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("fee_bps", sa.Integer(), nullable=False),
        sa.Column("fee_fixed_minor", sa.BigInteger(), nullable=False),
        sa.Column("captured_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("fee_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("fee_reversed_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("disputed_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("bucket", sa.String(length=16), server_default="pending", nullable=False),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payment_lines_amount_positive")),
        sa.CheckConstraint(
            "captured_minor >= 0 AND captured_minor <= amount_minor",
            name=op.f("ck_payment_lines_captured_le_amount"),
        ),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND refunded_minor <= captured_minor",
            name=op.f("ck_payment_lines_refunded_le_captured"),
        ),
        sa.CheckConstraint(
            "fee_minor >= 0 AND fee_minor <= captured_minor"
            " AND fee_reversed_minor >= 0 AND fee_reversed_minor <= fee_minor",
            name=op.f("ck_payment_lines_fee_in_range"),
        ),
        sa.CheckConstraint(
            "disputed_minor >= 0", name=op.f("ck_payment_lines_disputed_non_negative")
        ),
        sa.CheckConstraint(
            "bucket IN ('pending', 'available')", name=op.f("ck_payment_lines_bucket_valid")
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_payment_lines_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("payment_id", "line_no", name=op.f("pk_payment_lines")),
    )
    with op.batch_alter_table("payment_lines", schema=None) as batch_op:
        batch_op.create_index("ix_payment_lines_seller", ["seller_id"], unique=False)

    op.create_table(
        "fee_plans",
        sa.Column("seller_id", sa.String(length=255), nullable=False),
        sa.Column("percent_bps", sa.Integer(), nullable=False),
        sa.Column("fixed_minor", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "percent_bps >= 0 AND percent_bps <= 10000", name=op.f("ck_fee_plans_bps_in_range")
        ),
        sa.CheckConstraint("fixed_minor >= 0", name=op.f("ck_fee_plans_fixed_non_negative")),
        sa.PrimaryKeyConstraint("seller_id", name=op.f("pk_fee_plans")),
    )

    op.create_table(
        "wallets",
        sa.Column("owner_id", sa.String(length=255), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("pending_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("available_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", "currency", name=op.f("pk_wallets")),
    )


def downgrade() -> None:
    op.drop_table("wallets")
    op.drop_table("fee_plans")
    with op.batch_alter_table("payment_lines", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_lines_seller")
    op.drop_table("payment_lines")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("lines_count")
