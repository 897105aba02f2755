"""Initial schema: payments, attempts, refunds, idempotency, events, outbox, ledger.

The ledger is guarded by the database itself, on SQLite and PostgreSQL alike:
entries and journals are append-only (UPDATE and DELETE refused by triggers),
and a journal that does not balance per currency is refused at commit.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 18:23:19.189381
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("merchant_id", sa.String(length=255), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("response_code", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("merchant_id", "scope", "key", name="uq_idempotency_keys_scope_key"),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index("ix_idempotency_keys_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "ledger_journals",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=True),
        sa.Column("history_seq", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_journals")),
    )
    with op.batch_alter_table("ledger_journals", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_journals_payment", ["payment_id"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("history_seq", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbox_event_id")),
        sa.UniqueConstraint("payment_id", "history_seq", name="uq_outbox_payment_history_seq"),
    )
    op.create_table(
        "payments",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("merchant_id", sa.String(length=255), nullable=False),
        sa.Column("order_id", sa.String(length=255), nullable=False),
        sa.Column("active_order_id", sa.String(length=255), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("payment_method", sa.String(length=128), nullable=False),
        sa.Column("capture_method", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("authorized_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("captured_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("refund_reserved_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("fee_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("disputed_minor", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("provider_payment_id", sa.String(length=255), nullable=True),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("history_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_payments_amount_positive")),
        sa.CheckConstraint(
            "authorized_minor >= 0 AND authorized_minor <= amount_minor",
            name=op.f("ck_payments_authorized_in_range"),
        ),
        sa.CheckConstraint(
            "captured_minor >= 0 AND captured_minor <= authorized_minor",
            name=op.f("ck_payments_captured_le_authorized"),
        ),
        sa.CheckConstraint(
            "fee_minor >= 0 AND disputed_minor >= 0", name=op.f("ck_payments_fees_non_negative")
        ),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND refund_reserved_minor >= 0 AND refunded_minor + refund_reserved_minor <= captured_minor",
            name=op.f("ck_payments_refunded_le_captured"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("merchant_id", "active_order_id", name="uq_payments_active_order"),
        sa.UniqueConstraint("provider_payment_id", name=op.f("uq_payments_provider_payment_id")),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_payments_merchant_created", ["merchant_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_payments_merchant_order", ["merchant_id", "order_id"], unique=False
        )

    op.create_table(
        "provider_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("provider_event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_events")),
        sa.UniqueConstraint("provider_event_id", name=op.f("uq_provider_events_provider_event_id")),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("provider_idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("refund_id", sa.String(length=64), nullable=True),
        sa.Column("idempotency_id", sa.String(length=64), nullable=True),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        sa.Column("lookup_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount_minor >= 0", name=op.f("ck_attempts_amount_non_negative")),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_attempts_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
        sa.UniqueConstraint(
            "provider_idempotency_key", name=op.f("uq_attempts_provider_idempotency_key")
        ),
    )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index("ix_attempts_payment", ["payment_id"], unique=False)
        batch_op.create_index("ix_attempts_status", ["status"], unique=False)

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("journal_id", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=255), nullable=False),
        sa.Column("side", sa.String(length=1), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.CheckConstraint("side IN ('D', 'C')", name=op.f("ck_ledger_entries_side_valid")),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_ledger_entries_amount_positive")),
        sa.ForeignKeyConstraint(
            ["journal_id"],
            ["ledger_journals.id"],
            name=op.f("fk_ledger_entries_journal_id_ledger_journals"),
            initially="DEFERRED",
            deferrable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_entries_account", ["account", "currency"], unique=False)
        batch_op.create_index("ix_ledger_entries_journal", ["journal_id"], unique=False)

    op.create_table(
        "payment_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("attempt_id", sa.String(length=64), nullable=True),
        sa.Column("provider_event_id", sa.String(length=255), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_payment_history_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_history")),
        sa.UniqueConstraint("payment_id", "seq", name="uq_payment_history_payment_seq"),
    )
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("provider_refund_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_refunds_amount_positive")),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_refunds_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index("ix_refunds_payment", ["payment_id"], unique=False)
    _create_ledger_guards()


def downgrade() -> None:
    _drop_ledger_guards()
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index("ix_refunds_payment")

    op.drop_table("refunds")
    op.drop_table("payment_history")
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_journal")
        batch_op.drop_index("ix_ledger_entries_account")

    op.drop_table("ledger_entries")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_attempts_status")
        batch_op.drop_index("ix_attempts_payment")

    op.drop_table("attempts")
    op.drop_table("provider_events")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_merchant_order")
        batch_op.drop_index("ix_payments_merchant_created")

    op.drop_table("payments")
    op.drop_table("outbox")
    with op.batch_alter_table("ledger_journals", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_journals_payment")

    op.drop_table("ledger_journals")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_keys_expires_at")

    op.drop_table("idempotency_keys")


# Tables whose rows are facts: written once, never changed or removed.
_APPEND_ONLY = ("ledger_entries", "ledger_journals", "payment_history")

_SQLITE_GUARDS = [
    *(
        f"CREATE TRIGGER {table}_no_{op_name} BEFORE {op_name.upper()} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'append_only: {table} rows cannot be {op_name}d'); END"
        for table in _APPEND_ONLY
        for op_name in ("update", "delete")
    ),
    """CREATE TRIGGER ledger_entries_journal_open BEFORE INSERT ON ledger_entries
    WHEN EXISTS (SELECT 1 FROM ledger_journals WHERE id = NEW.journal_id)
    BEGIN SELECT RAISE(ABORT, 'ledger_journal_closed: entries after their journal'); END""",
    """CREATE TRIGGER ledger_journals_balanced BEFORE INSERT ON ledger_journals
    WHEN (SELECT count(*) FROM ledger_entries WHERE journal_id = NEW.id) < 2
      OR EXISTS (
        SELECT 1 FROM ledger_entries WHERE journal_id = NEW.id GROUP BY currency
        HAVING sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) <> 0)
    BEGIN SELECT RAISE(ABORT, 'ledger_unbalanced: journal does not balance'); END""",
]

_POSTGRES_GUARDS = [
    """CREATE FUNCTION paychaos_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      RAISE EXCEPTION 'append_only: % rows cannot be %', TG_TABLE_NAME, lower(TG_OP);
    END $$""",
    *(
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION paychaos_refuse_change()"
        for table in _APPEND_ONLY
    ),
    *(
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION paychaos_refuse_change()"
        for table in _APPEND_ONLY
    ),
    """CREATE FUNCTION paychaos_journal_open() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF EXISTS (SELECT 1 FROM ledger_journals WHERE id = NEW.journal_id) THEN
        RAISE EXCEPTION 'ledger_journal_closed: journal % already written', NEW.journal_id;
      END IF;
      RETURN NEW;
    END $$""",
    "CREATE TRIGGER ledger_entries_journal_open BEFORE INSERT ON ledger_entries "
    "FOR EACH ROW EXECUTE FUNCTION paychaos_journal_open()",
    """CREATE FUNCTION paychaos_journal_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF (SELECT count(*) FROM ledger_entries WHERE journal_id = NEW.id) < 2
         OR EXISTS (
           SELECT 1 FROM ledger_entries WHERE journal_id = NEW.id GROUP BY currency
           HAVING sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) <> 0)
      THEN
        RAISE EXCEPTION 'ledger_unbalanced: journal % does not balance', NEW.id;
      END IF;
      RETURN NULL;
    END $$""",
    "CREATE CONSTRAINT TRIGGER ledger_journals_balanced AFTER INSERT ON ledger_journals "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION paychaos_journal_balanced()",
]


def _create_ledger_guards() -> None:
    dialect = op.get_bind().dialect.name
    assert dialect in {"sqlite", "postgresql"}, f"unsupported database {dialect}"
    for statement in _SQLITE_GUARDS if dialect == "sqlite" else _POSTGRES_GUARDS:
        op.execute(statement)


def _drop_ledger_guards() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in ("refuse_change", "journal_open", "journal_balanced"):
            op.execute(f"DROP FUNCTION IF EXISTS paychaos_{name}() CASCADE")
