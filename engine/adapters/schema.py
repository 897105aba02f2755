"""The relational schema, as SQLAlchemy Core tables.

The tables exist in a database only through the Alembic migrations in
``engine/migrations``; a test checks that the migrations and this module agree.
What the database itself enforces (append-only ledger, balanced journals) lives
in the migration as triggers, for SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        assert value.tzinfo is not None, "naive datetimes are refused"
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    # What the two processors above, composed with SQLite's DATETIME string format
    # (``YYYY-MM-DD HH:MM:SS.ffffff``), give: for the store's direct path on SQLite.
    # A step writes one "now" several times and reads back the same few strings:
    # the last conversion each way is kept (a tuple, swapped whole, so threads
    # never see half of one; the kept datetime cannot be freed and its id reused).
    @staticmethod
    def sqlite_bind(value: datetime | None) -> str | None:
        if value is None:
            return None
        last = _last_bound
        if last[0] is value:
            return last[1]
        assert value.tzinfo is not None, "naive datetimes are refused"
        utc = value if value.tzinfo is UTC else value.astimezone(UTC)
        text = utc.replace(tzinfo=None).isoformat(" ", "microseconds")
        _remember_bound(value, text)
        return text

    @staticmethod
    def sqlite_result(value: str | None) -> datetime | None:
        if value is None:
            return None
        last = _last_result
        if last[0] == value:
            return last[1]
        parsed = datetime.fromisoformat(value)
        result = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        _remember_result(value, result)
        return result


_last_bound: tuple[datetime | None, str] = (None, "")
_last_result: tuple[str | None, datetime | None] = (None, None)


def _remember_bound(value: datetime, text: str) -> None:
    global _last_bound
    _last_bound = (value, text)


def _remember_result(value: str, result: datetime) -> None:
    global _last_result
    _last_result = (value, result)


Id = sa.String(64)
Money = sa.BigInteger

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("merchant_id", sa.String(255), nullable=False),
    sa.Column("order_id", sa.String(255), nullable=False),
    # Set while the payment holds (or may hold) the order's money; the unique
    # index allows at most one such payment per (merchant, order).
    sa.Column("active_order_id", sa.String(255), nullable=True),
    sa.Column("amount_minor", Money, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("payment_method", sa.String(128), nullable=False),
    sa.Column("capture_method", sa.String(16), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("authorized_minor", Money, nullable=False, server_default="0"),
    sa.Column("captured_minor", Money, nullable=False, server_default="0"),
    sa.Column("refunded_minor", Money, nullable=False, server_default="0"),
    # Refunds sent to the provider whose outcome is not yet known: reserved so
    # that concurrent refunds can never add up to more than was captured.
    sa.Column("refund_reserved_minor", Money, nullable=False, server_default="0"),
    sa.Column("fee_minor", Money, nullable=False, server_default="0"),
    sa.Column("disputed_minor", Money, nullable=False, server_default="0"),
    sa.Column("provider_payment_id", sa.String(255), nullable=True),
    sa.Column("decline_code", sa.String(64), nullable=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("history_count", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # How many lines (sellers) a split payment has; 0 for a plain payment.
    sa.Column("lines_count", sa.Integer, nullable=False, server_default="0"),
    # A capture learned without its provider fee (by a webhook): the fee is asked for.
    sa.Column("fee_pending", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
    sa.CheckConstraint(
        "authorized_minor >= 0 AND authorized_minor <= amount_minor", name="authorized_in_range"
    ),
    sa.CheckConstraint(
        "captured_minor >= 0 AND captured_minor <= authorized_minor", name="captured_le_authorized"
    ),
    sa.CheckConstraint(
        "refunded_minor >= 0 AND refund_reserved_minor >= 0"
        " AND refunded_minor + refund_reserved_minor <= captured_minor",
        name="refunded_le_captured",
    ),
    sa.CheckConstraint("fee_minor >= 0 AND disputed_minor >= 0", name="fees_non_negative"),
    sa.UniqueConstraint("merchant_id", "active_order_id", name="uq_payments_active_order"),
    sa.UniqueConstraint("provider_payment_id"),
    sa.Index("ix_payments_merchant_order", "merchant_id", "order_id"),
    sa.Index("ix_payments_merchant_created", "merchant_id", "created_at"),
    # The recovery worker's reads: payments awaiting 3DS, captures awaiting their fee.
    sa.Index("ix_payments_state", "state"),
    sa.Index(
        "ix_payments_fee_pending",
        "id",
        sqlite_where=sa.text("fee_pending = 1"),
        postgresql_where=sa.text("fee_pending"),
    ),
)

payment_history = sa.Table(
    "payment_history",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("payment_id", Id, sa.ForeignKey("payments.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("from_state", sa.String(32), nullable=True),
    sa.Column("to_state", sa.String(32), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("attempt_id", Id, nullable=True),
    sa.Column("provider_event_id", sa.String(255), nullable=True),
    sa.Column("amount_minor", Money, nullable=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("payment_id", "seq", name="uq_payment_history_payment_seq"),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("payment_id", Id, sa.ForeignKey("payments.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("amount_minor", Money, nullable=False),
    sa.Column("provider_idempotency_key", sa.String(255), nullable=False),
    sa.Column("refund_id", Id, nullable=True),
    sa.Column("idempotency_id", Id, nullable=True),
    sa.Column("decline_code", sa.String(64), nullable=True),
    sa.Column("lookup_count", sa.Integer, nullable=False, server_default="0"),
    # When the recovery worker should next ask the provider; an attempt the
    # provider still cannot explain after the whole schedule needs a person.
    sa.Column("next_lookup_at", UTCDateTime, nullable=True),
    sa.Column("needs_review", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime, nullable=True),
    sa.CheckConstraint("amount_minor >= 0", name="amount_non_negative"),
    sa.UniqueConstraint("provider_idempotency_key"),
    sa.Index("ix_attempts_payment", "payment_id"),
    sa.Index("ix_attempts_status", "status"),
)

refunds = sa.Table(
    "refunds",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("payment_id", Id, sa.ForeignKey("payments.id"), nullable=False),
    sa.Column("amount_minor", Money, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(255), nullable=True),
    sa.Column("provider_refund_id", sa.String(255), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
    sa.Index("ix_refunds_payment", "payment_id"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("merchant_id", sa.String(255), nullable=False),
    sa.Column("scope", sa.String(32), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("resource_id", Id, nullable=True),
    sa.Column("response_code", sa.Integer, nullable=True),
    sa.Column("response_body", sa.JSON, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("merchant_id", "scope", "key", name="uq_idempotency_keys_scope_key"),
    sa.Index("ix_idempotency_keys_expires_at", "expires_at"),
)

provider_events = sa.Table(
    "provider_events",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("provider_event_id", sa.String(255), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("payment_id", Id, nullable=True),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("provider_event_id"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("event_id", Id, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("payment_id", Id, nullable=False),
    sa.Column("history_seq", sa.Integer, nullable=True),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("published_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("event_id"),
    sa.UniqueConstraint("payment_id", "history_seq", name="uq_outbox_payment_history_seq"),
    # Only the unpublished events: the relay's read costs its batch, not the history.
    sa.Index(
        "ix_outbox_unpublished",
        "id",
        sqlite_where=sa.text("published_at IS NULL"),
        postgresql_where=sa.text("published_at IS NULL"),
    ),
)

ledger_journals = sa.Table(
    "ledger_journals",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("payment_id", Id, nullable=True),
    sa.Column("history_seq", sa.Integer, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_ledger_journals_payment", "payment_id"),
)

ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    # Deferred: entries are written first and their journal row last, so the
    # journal's insert trigger can see (and refuse) an unbalanced set.
    sa.Column(
        "journal_id",
        Id,
        sa.ForeignKey("ledger_journals.id", deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
    sa.Column("account", sa.String(255), nullable=False),
    sa.Column("side", sa.String(1), nullable=False),
    sa.Column("amount_minor", Money, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
    sa.CheckConstraint("side IN ('D', 'C')", name="side_valid"),
    sa.Index("ix_ledger_entries_journal", "journal_id"),
    sa.Index("ix_ledger_entries_account", "account", "currency"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("merchant_id", sa.String(255), nullable=False),
    # "secret" may write; "restricted" may only read.
    sa.Column("kind", sa.String(16), nullable=False),
    # SHA-256 of the key: the key itself is shown once, at creation, and never stored.
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.CheckConstraint("kind IN ('secret', 'restricted')", name="kind_valid"),
    sa.UniqueConstraint("key_hash"),
    sa.Index("ix_api_keys_merchant", "merchant_id"),
)

webhook_inbox = sa.Table(
    "webhook_inbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("provider_event_id", sa.String(255), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    # pending -> applied, or -> dead after too many failed applications (the DLQ)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'applied', 'dead')", name="status_valid"),
    sa.UniqueConstraint("provider_event_id"),
    sa.Index("ix_webhook_inbox_status", "status"),
)

# Marketplace (split payments): one line per seller of a payment, the sellers'
# fee plans, and their wallets (materialised from the ledger, audited against it).
payment_lines = sa.Table(
    "payment_lines",
    metadata,
    sa.Column("payment_id", Id, sa.ForeignKey("payments.id"), primary_key=True),
    sa.Column("line_no", sa.Integer, primary_key=True),
    sa.Column("seller_id", sa.String(255), nullable=False),
    sa.Column("amount_minor", Money, nullable=False),
    # The fee plan as it was when the payment was made.
    sa.Column("fee_bps", sa.Integer, nullable=False),
    sa.Column("fee_fixed_minor", Money, nullable=False),
    sa.Column("captured_minor", Money, nullable=False, server_default="0"),
    sa.Column("fee_minor", Money, nullable=False, server_default="0"),
    sa.Column("refunded_minor", Money, nullable=False, server_default="0"),
    sa.Column("fee_reversed_minor", Money, nullable=False, server_default="0"),
    sa.Column("disputed_minor", Money, nullable=False, server_default="0"),
    # Where the seller's share sits: "pending" until the payment settles.
    sa.Column("bucket", sa.String(16), nullable=False, server_default="pending"),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
    sa.CheckConstraint(
        "captured_minor >= 0 AND captured_minor <= amount_minor", name="captured_le_amount"
    ),
    sa.CheckConstraint(
        "refunded_minor >= 0 AND refunded_minor <= captured_minor", name="refunded_le_captured"
    ),
    sa.CheckConstraint(
        "fee_minor >= 0 AND fee_minor <= captured_minor"
        " AND fee_reversed_minor >= 0 AND fee_reversed_minor <= fee_minor",
        name="fee_in_range",
    ),
    sa.CheckConstraint("disputed_minor >= 0", name="disputed_non_negative"),
    sa.CheckConstraint("bucket IN ('pending', 'available')", name="bucket_valid"),
    sa.Index("ix_payment_lines_seller", "seller_id"),
)

fee_plans = sa.Table(
    "fee_plans",
    metadata,
    sa.Column("seller_id", sa.String(255), primary_key=True),
    sa.Column("percent_bps", sa.Integer, nullable=False),
    sa.Column("fixed_minor", Money, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.CheckConstraint("percent_bps >= 0 AND percent_bps <= 10000", name="bps_in_range"),
    sa.CheckConstraint("fixed_minor >= 0", name="fixed_non_negative"),
)

# Balances may go negative: a refund or dispute after a payout is the seller's
# debt (engine/domain/marketplace.py); payouts check the available balance.
wallets = sa.Table(
    "wallets",
    metadata,
    sa.Column("owner_id", sa.String(255), primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("pending_minor", Money, nullable=False, server_default="0"),
    sa.Column("available_minor", Money, nullable=False, server_default="0"),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Payouts: a seller's available money sent to its bank through the provider.
payouts = sa.Table(
    "payouts",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("seller_id", sa.String(255), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount_minor", Money, nullable=False),
    # pending (call not answered) | unknown (timed out) | in_transit | paid | failed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("provider_payout_id", sa.String(255), nullable=True),
    sa.Column("provider_idempotency_key", sa.String(255), nullable=False),
    sa.Column("idempotency_id", Id, nullable=True),
    sa.Column("failure_code", sa.String(64), nullable=True),
    sa.Column("lookups", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_lookup_at", UTCDateTime, nullable=True),
    sa.Column("needs_review", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("arrived_at", UTCDateTime, nullable=True),
    # When the engine learned the provider took it: its movement's time for reconciliation.
    sa.Column("taken_at", UTCDateTime, nullable=True),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
    sa.CheckConstraint(
        "status IN ('pending', 'unknown', 'in_transit', 'paid', 'failed')", name="status_valid"
    ),
    sa.UniqueConstraint("provider_idempotency_key"),
    sa.UniqueConstraint("provider_payout_id"),
    sa.Index("ix_payouts_seller", "seller_id", "currency"),
    sa.Index("ix_payouts_status", "status"),
)

# Reconciliation: each run over a settlement report, the report rows it matched
# (a balance transaction is matched once, ever), and the exceptions it found.
recon_runs = sa.Table(
    "recon_runs",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("source", sa.String(255), nullable=False),
    sa.Column("format", sa.String(8), nullable=False),
    sa.Column("window_start_at", UTCDateTime, nullable=False),
    sa.Column("window_end_at", UTCDateTime, nullable=False),
    sa.Column("rows_count", sa.Integer, nullable=False),
    sa.Column("matched_count", sa.Integer, nullable=False),
    sa.Column("exceptions_count", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

settlement_rows = sa.Table(
    "settlement_rows",
    metadata,
    sa.Column("balance_transaction_id", sa.String(255), primary_key=True),
    sa.Column("run_id", Id, sa.ForeignKey("recon_runs.id"), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("provider_ref", sa.String(255), nullable=False),
    sa.Column("payment_id", Id, nullable=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("gross_minor", Money, nullable=False),
    sa.Column("fee_minor", Money, nullable=False),
    sa.Column("net_minor", Money, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index("ix_settlement_rows_provider_ref", "provider_ref"),
)

recon_exceptions = sa.Table(
    "recon_exceptions",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("run_id", Id, sa.ForeignKey("recon_runs.id"), nullable=False),
    # One open exception per discrepancy, however many runs see it again.
    sa.Column("dedupe_key", sa.String(600), nullable=False),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("party", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(32), nullable=True),
    sa.Column("provider_ref", sa.String(255), nullable=True),
    sa.Column("payment_id", Id, nullable=True),
    sa.Column("balance_transaction_id", sa.String(255), nullable=True),
    sa.Column("currency", sa.String(3), nullable=True),
    sa.Column("expected_minor", Money, nullable=True),
    sa.Column("reported_minor", Money, nullable=True),
    sa.Column("detail", sa.String(500), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("resolution_reason", sa.String(500), nullable=True),
    sa.Column("journal_id", Id, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("resolved_at", UTCDateTime, nullable=True),
    # A missing_in_ledger's row (``settlement.row_document``): a later run pairs it.
    sa.Column("reported_row", sa.JSON, nullable=True),
    sa.CheckConstraint("status IN ('open', 'resolved')", name="status_valid"),
    sa.UniqueConstraint("dedupe_key"),
    sa.Index("ix_recon_exceptions_status", "status", "category"),
)

# The event catch-up's cursor, per provider feed (``engine.workers.events``): every event
# created before ``read_to_at`` was listed and taken through the webhook intake.
event_cursors = sa.Table(
    "event_cursors",
    metadata,
    sa.Column("feed", sa.String(64), primary_key=True),
    sa.Column("read_to_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
