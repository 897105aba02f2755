"""The engine's read API: what an outside checker may see of a stored engine.

Read-only, typed and paged views over the engine's database, for whoever judges
the engine from outside (the simulation's oracles, an auditor over HTTP): payments
with their state history, provider attempts, refunds and split lines; ledger
journals with their entries; outbox events; wallets; payouts; reconciliation
exceptions and the report rows reconciliation matched. Nothing else: a view is
added when a checker needs it.

Each page is read in one unit of work that is never committed (and on PostgreSQL
is declared ``READ ONLY``, with its BEGIN), its statements run as every unit's are
(``engine.adapters.direct.Direct``); pages are keyed by their table's primary key, in its
order, at most ``PAGE_SIZE_MAX`` items each. Records are plain frozen data
(strings, ints, aware datetimes; states and kinds as their string values), never
the store's rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.adapters.direct import Direct

PAGE_SIZE = 500
PAGE_SIZE_MAX = 1_000
PAGES_MAX = 1_000_000  # a walk over every page stops here: far past any stored engine

T = TypeVar("T")
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Page(Generic[T, C]):
    """Items in key order, and the key to ask the next page after (None: the last)."""

    items: tuple[T, ...]
    after: C | None


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    seq: int
    from_state: str | None
    to_state: str
    reason: str
    amount_minor: int | None
    at: datetime


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    id: str
    kind: str
    status: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class RefundRecord:
    id: str
    amount_minor: int
    currency: str
    status: str
    provider_refund_id: str | None


@dataclass(frozen=True, slots=True)
class LineRecord:
    """One seller's line of a split payment, with its fee plan as it was."""

    line_no: int
    seller_id: str
    amount_minor: int
    fee_bps: int
    fee_fixed_minor: int
    captured_minor: int
    fee_minor: int
    refunded_minor: int
    fee_reversed_minor: int


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """A payment, its history in order, its attempts, refunds and lines (by key)."""

    id: str
    merchant_id: str
    order_id: str
    state: str
    amount_minor: int
    currency: str
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    provider_payment_id: str | None
    lines_count: int
    history: tuple[HistoryRecord, ...]
    attempts: tuple[AttemptRecord, ...]
    refunds: tuple[RefundRecord, ...]
    lines: tuple[LineRecord, ...]
    # What a chargeback withdrew and has not given back, and the last decision the engine
    # applied about it (open | won | lost; None: no dispute taken).
    disputed_minor: int = 0
    dispute_status: str | None = None


@dataclass(frozen=True, slots=True)
class EntryRecord:
    id: int
    account: str
    side: str  # "D" or "C"
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """A ledger journal and its entries, in the order they were written."""

    id: str
    kind: str
    payment_id: str | None
    history_seq: int | None
    created_at: datetime
    entries: tuple[EntryRecord, ...]


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    sequence: int
    event_id: str
    type: str
    payment_id: str
    history_seq: int | None
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class WalletRecord:
    owner_id: str
    currency: str
    pending_minor: int
    available_minor: int


@dataclass(frozen=True, slots=True)
class PayoutRecord:
    id: str
    seller_id: str
    currency: str
    amount_minor: int
    status: str
    provider_payout_id: str | None


@dataclass(frozen=True, slots=True)
class ReconExceptionRecord:
    id: str
    category: str
    kind: str | None
    provider_ref: str | None
    balance_transaction_id: str | None
    detail: str
    status: str
    created_at: datetime
    resolution_reason: str | None = None


@dataclass(frozen=True, slots=True)
class SettlementRowRecord:
    """A report row reconciliation matched to a ledger movement (a balance transaction
    once, ever): the report's figures, as the run that matched it read them."""

    balance_transaction_id: str
    run_id: str
    kind: str
    provider_ref: str
    payment_id: str | None
    currency: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    created_at: datetime


_p = t.payments.c
_PAYMENT = sa.select(
    _p.id, _p.merchant_id, _p.order_id, _p.state, _p.amount_minor, _p.currency,
    _p.authorized_minor, _p.captured_minor, _p.refunded_minor, _p.provider_payment_id,
    _p.lines_count, _p.disputed_minor,
)  # fmt: skip


def every(fetch: Callable[[C | None], Page[T, C]]) -> Iterator[T]:
    """Every item of a paged view, page after page, in key order."""
    after: C | None = None
    for _ in range(PAGES_MAX):
        page = fetch(after)
        yield from page.items
        if page.after is None:
            return
        after = page.after
    raise AssertionError(f"more than {PAGES_MAX} pages")


def _limit(limit: int) -> int:
    assert 0 < limit <= PAGE_SIZE_MAX, f"a page holds 1..{PAGE_SIZE_MAX} items, not {limit}"
    return limit


def _page(items: Sequence[T], limit: int, key: Callable[[T], C]) -> Page[T, C]:
    return Page(tuple(items), key(items[-1]) if len(items) == limit else None)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


class ReadApi:
    """Read-only views of one engine database (see the module's doc)."""

    def __init__(self, database: Database):
        self._database = database

    @contextmanager
    def _unit(self) -> Iterator[Direct]:
        with self._database.transaction() as unit:  # rolled back on exit
            unit.read_only()
            yield unit

    # -- payments ------------------------------------------------------------------------
    def payments(
        self, after: str | None = None, limit: int = PAGE_SIZE
    ) -> Page[PaymentRecord, str]:
        """Payments by id, each with its history, attempts, refunds and lines."""
        query = _PAYMENT.order_by(t.payments.c.id).limit(_limit(limit))
        if after is not None:
            query = query.where(t.payments.c.id > after)
        with self._unit() as c:
            rows = c.execute(query).mappings().all()
            records = self._payments(c, rows)
        return _page(records, limit, lambda record: record.id)

    def payment(self, payment_id: str) -> PaymentRecord | None:
        with self._unit() as c:
            query = _PAYMENT.where(t.payments.c.id == payment_id)
            rows = c.execute(query).mappings().all()
            records = self._payments(c, rows)
        return records[0] if records else None

    def _payments(self, c: Direct, rows: Sequence[Any]) -> list[PaymentRecord]:
        ids = [row["id"] for row in rows]
        history = _by_payment(c, t.payment_history, ids, t.payment_history.c.seq, _history)
        attempts = _by_payment(c, t.attempts, ids, t.attempts.c.id, _attempt)
        refunds = _by_payment(c, t.refunds, ids, t.refunds.c.id, _refund)
        lines = _by_payment(c, t.payment_lines, ids, t.payment_lines.c.line_no, _line)
        disputes = _dispute_statuses(c, ids)
        return [
            _payment(row, history[pid], attempts[pid], refunds[pid], lines[pid], disputes.get(pid))
            for row in rows
            for pid in (row["id"],)
        ]

    # -- the ledger ----------------------------------------------------------------------
    def journals(
        self, after: str | None = None, limit: int = PAGE_SIZE
    ) -> Page[JournalRecord, str]:
        """Journals by id, each with its entries in the order they were written."""
        j, e = t.ledger_journals.c, t.ledger_entries.c
        query = sa.select(t.ledger_journals).order_by(j.id).limit(_limit(limit))
        if after is not None:
            query = query.where(j.id > after)
        with self._unit() as c:
            rows = c.execute(query).mappings().all()
            entries: dict[str, list[EntryRecord]] = defaultdict(list)
            ids = [row["id"] for row in rows]
            if ids:
                found = c.execute(
                    sa.select(t.ledger_entries).where(e.journal_id.in_(ids)).order_by(e.id)
                ).mappings()
                for entry in found:
                    entries[entry["journal_id"]].append(EntryRecord(
                        int(entry["id"]), entry["account"], entry["side"],
                        int(entry["amount_minor"]), entry["currency"],
                    ))  # fmt: skip
        records = [_journal(row, entries[row["id"]]) for row in rows]
        return _page(records, limit, lambda record: record.id)

    # -- events, wallets, payouts, reconciliation -------------------------------------------
    def outbox(self, after: int | None = None, limit: int = PAGE_SIZE) -> Page[OutboxRecord, int]:
        """Outbox events in the order they were written, published or not."""
        o = t.outbox.c
        query = sa.select(o.id, o.event_id, o.type, o.payment_id, o.history_seq,
                          o.published_at).order_by(o.id).limit(_limit(limit))  # fmt: skip
        if after is not None:
            query = query.where(o.id > after)
        with self._unit() as c:
            records = [
                OutboxRecord(int(sequence), event_id, kind, payment_id, _int_or_none(seq), at)
                for sequence, event_id, kind, payment_id, seq, at in c.execute(query)
            ]
        return _page(records, limit, lambda record: record.sequence)

    def wallets(
        self, after: tuple[str, str] | None = None, limit: int = PAGE_SIZE
    ) -> Page[WalletRecord, tuple[str, str]]:
        """Wallets by (owner, currency)."""
        w = t.wallets.c
        query = sa.select(w.owner_id, w.currency, w.pending_minor, w.available_minor)
        query = query.order_by(w.owner_id, w.currency).limit(_limit(limit))
        if after is not None:
            owner, currency = after
            query = query.where(
                sa.or_(w.owner_id > owner, sa.and_(w.owner_id == owner, w.currency > currency))
            )
        with self._unit() as c:
            records = [
                WalletRecord(owner, currency, int(pending), int(available))
                for owner, currency, pending, available in c.execute(query)
            ]
        return _page(records, limit, lambda record: (record.owner_id, record.currency))

    def payouts(self, after: str | None = None, limit: int = PAGE_SIZE) -> Page[PayoutRecord, str]:
        po = t.payouts.c
        query = sa.select(po.id, po.seller_id, po.currency, po.amount_minor, po.status,
                          po.provider_payout_id).order_by(po.id).limit(_limit(limit))  # fmt: skip
        if after is not None:
            query = query.where(po.id > after)
        with self._unit() as c:
            records = [
                PayoutRecord(payout_id, seller, currency, int(amount), status, provider_id)
                for payout_id, seller, currency, amount, status, provider_id in c.execute(query)
            ]
        return _page(records, limit, lambda record: record.id)

    def recon_exceptions(
        self, after: str | None = None, limit: int = PAGE_SIZE
    ) -> Page[ReconExceptionRecord, str]:
        """The exceptions reconciliation found, open or resolved, by id."""
        x = t.recon_exceptions.c
        query = sa.select(x.id, x.category, x.kind, x.provider_ref, x.balance_transaction_id,
                          x.detail, x.status, x.created_at, x.resolution_reason)  # fmt: skip
        query = query.order_by(x.id).limit(_limit(limit))
        if after is not None:
            query = query.where(x.id > after)
        with self._unit() as c:
            records = [ReconExceptionRecord(*row) for row in c.execute(query)]
        return _page(records, limit, lambda record: record.id)

    def settlement_rows(
        self, after: str | None = None, limit: int = PAGE_SIZE
    ) -> Page[SettlementRowRecord, str]:
        """The report rows reconciliation matched, by balance transaction id."""
        r = t.settlement_rows.c
        query = sa.select(r.balance_transaction_id, r.run_id, r.kind, r.provider_ref,
                          r.payment_id, r.currency, r.gross_minor, r.fee_minor, r.net_minor,
                          r.created_at)  # fmt: skip
        query = query.order_by(r.balance_transaction_id).limit(_limit(limit))
        if after is not None:
            query = query.where(r.balance_transaction_id > after)
        with self._unit() as c:
            records = [
                SettlementRowRecord(bt, run, kind, ref, pid, cur, int(g), int(f), int(n), at)
                for bt, run, kind, ref, pid, cur, g, f, n, at in c.execute(query)
            ]
        return _page(records, limit, lambda record: record.balance_transaction_id)


def _by_payment(
    c: Direct, table: sa.Table, ids: list[str], order: Any, make: Callable[[Any], T]
) -> dict[str, list[T]]:
    """A child table's rows of these payments, per payment, in ``order``."""
    grouped: dict[str, list[T]] = defaultdict(list)
    if ids:
        query = sa.select(table).where(table.c.payment_id.in_(ids)).order_by(order)
        for row in c.execute(query).mappings():
            grouped[row["payment_id"]].append(make(row))
    return grouped


APPLIED = ("applied", "applied_no_change")  # a lost dispute moves no state: "no change"
# The dispute events the engine applied, the later decision first: one dispute per charge.
DISPUTE_STATUS = (
    ("charge.dispute.lost", "lost"), ("charge.dispute.won", "won"),
    ("charge.dispute.created", "open"),
)  # fmt: skip


def _dispute_statuses(c: Direct, ids: list[str]) -> dict[str, str]:
    """Per payment: its dispute's status, by the dispute events the engine applied."""
    if not ids:
        return {}
    e = t.provider_events.c
    types = [kind for kind, _ in DISPUTE_STATUS]
    query = sa.select(e.payment_id, e.type).where(
        e.payment_id.in_(ids), e.type.in_(types), e.outcome.in_(APPLIED)
    )
    applied: dict[str, set[str]] = defaultdict(set)
    for payment_id, kind in c.execute(query):
        applied[payment_id].add(kind)
    return {
        pid: next(status for kind, status in DISPUTE_STATUS if kind in kinds)
        for pid, kinds in applied.items()
    }


def _payment(
    row: Any, history: list[HistoryRecord], attempts: list[AttemptRecord],
    refunds: list[RefundRecord], lines: list[LineRecord], dispute_status: str | None,
) -> PaymentRecord:  # fmt: skip
    return PaymentRecord(
        row["id"], row["merchant_id"], row["order_id"], str(row["state"]),
        int(row["amount_minor"]), row["currency"], int(row["authorized_minor"]),
        int(row["captured_minor"]), int(row["refunded_minor"]), row["provider_payment_id"],
        int(row["lines_count"]), tuple(history), tuple(attempts), tuple(refunds), tuple(lines),
        int(row["disputed_minor"]), dispute_status,
    )  # fmt: skip


def _journal(row: Any, entries: list[EntryRecord]) -> JournalRecord:
    return JournalRecord(
        row["id"], row["kind"], row["payment_id"], _int_or_none(row["history_seq"]),
        row["created_at"], tuple(entries),
    )  # fmt: skip


def _history(row: Any) -> HistoryRecord:
    return HistoryRecord(
        int(row["seq"]), row["from_state"], row["to_state"], row["reason"],
        _int_or_none(row["amount_minor"]), row["at"],
    )  # fmt: skip


def _attempt(row: Any) -> AttemptRecord:
    return AttemptRecord(row["id"], row["kind"], row["status"], int(row["amount_minor"]))


def _refund(row: Any) -> RefundRecord:
    return RefundRecord(
        row["id"], int(row["amount_minor"]), row["currency"], row["status"],
        row["provider_refund_id"],
    )  # fmt: skip


def _line(row: Any) -> LineRecord:
    return LineRecord(
        int(row["line_no"]), row["seller_id"], int(row["amount_minor"]), int(row["fee_bps"]),
        int(row["fee_fixed_minor"]), int(row["captured_minor"]), int(row["fee_minor"]),
        int(row["refunded_minor"]), int(row["fee_reversed_minor"]),
    )  # fmt: skip
