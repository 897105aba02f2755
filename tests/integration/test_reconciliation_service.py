"""Reconciliation through the engine's database, on SQLite and PostgreSQL.

Payments are made with the in-process fake provider; the settlement report is
written here from what that provider did, then broken one row per fault
category. Each fault is found once, in its category; a second run over the same
report adds nothing; resolving posts a balanced correction the audit accepts;
a malformed report is refused naming its line and column, and nothing is kept.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider, provider_fee_minor
from engine.audit import audit
from engine.domain.commands import Capture
from engine.domain.errors import Conflict, InvalidRequest, NotFound, SettlementFileInvalid
from engine.domain.money import CURRENCY_EXPONENTS
from engine.domain.ports import FixedClock, SeededIds
from engine.domain.provider import EventType, OutcomeStatus, ProviderEvent, ProviderOutcome
from engine.domain.reconciliation import MovementKind, Tolerances
from engine.service.driver import perform
from engine.service.engine import PaymentEngine
from engine.service.reconciliation import RECON_ADJUSTMENTS, Reconciler, RunSummary
from tests.integration.helpers import MERCHANT, authorized, refund

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
START = datetime(2026, 1, 3, tzinfo=UTC)  # the window: one day
# Disputes the ledger learns of late: two minutes of lateness, a quarter hour of lag.
LATE_BOOKING = Tolerances(lateness_s=120, booking_lag_s=900)
COLUMNS = (
    "balance_transaction_id", "created_utc", "available_on_utc", "currency", "gross", "fee",
    "net", "reporting_category", "source_id", "payment_intent_id", "refund_id",
    "payment_metadata[payment_id]",
)  # fmt: skip


def major(minor: int, currency: str) -> str:
    exponent = CURRENCY_EXPONENTS[currency]
    sign, units = ("-" if minor < 0 else ""), abs(minor)
    if exponent == 0:
        return f"{sign}{units}"
    return f"{sign}{units // 10**exponent}.{units % 10**exponent:0{exponent}d}"


@dataclass(slots=True)
class Report:
    rows: list[dict[str, str]] = field(default_factory=list)

    def add(self, bt: str, at: datetime, currency: str, gross: int, fee: int, category: str,
            *, intent: str = "", refund_id: str = "", payment_id: str = "") -> None:  # fmt: skip
        when = at.strftime("%Y-%m-%d %H:%M:%S")
        values = (bt, when, when, currency.lower(), major(gross, currency), major(fee, currency),
                  major(gross - fee, currency), category, refund_id or intent or bt, intent,
                  refund_id, payment_id)  # fmt: skip
        self.rows.append(dict(zip(COLUMNS, values, strict=True)))

    def by_bt(self, bt: str) -> dict[str, str]:
        return next(row for row in self.rows if row["balance_transaction_id"] == bt)

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()


@dataclass(slots=True)
class Book:
    """Payments made, and the faithful report of them."""

    engine: PaymentEngine
    recon: Reconciler
    clock: FixedClock
    report: Report
    payments: dict[str, str]  # name -> payment id


@pytest.fixture
def book(database: Database) -> Iterator[Book]:
    clock = FixedClock(START - 2 * DAY)
    engine = PaymentEngine(database, clock, SeededIds(random.Random(3)))
    recon = Reconciler(database, clock, SeededIds(random.Random(4)), engine)
    provider, report, payments = FakeProvider(), Report(), {}

    def charge(name: str, amount: int, currency: str = "USD", capture: int | None = None) -> None:
        payment_id = authorized(engine, provider, key=f"c-{name}", order_id=f"o-{name}",
                                amount_minor=amount, currency=currency)  # fmt: skip
        begun = engine.begin_capture(Capture(MERCHANT, f"k-{name}", payment_id, capture))
        perform(engine, provider, begun)
        payments[name] = payment_id
        got = capture or amount
        report.add(f"txn_{name}", clock.now(), currency, got, provider_fee_minor(got), "charge",
                   intent=f"pi_{payment_id}", payment_id=payment_id)  # fmt: skip

    charge("early", 4_000)  # booked two days before the window
    clock.set(START + timedelta(hours=1))
    for name, amount in (("full", 10_000), ("partial", 8_000), ("plain", 2_000)):
        charge(name, amount, capture=6_000 if name == "partial" else None)
        clock.advance(timedelta(minutes=10))
    charge("yen", 5_000, "JPY")
    clock.advance(timedelta(minutes=10))
    refunded = refund(engine, provider, payments["full"], "r-full", 2_500)
    refund_row = engine.get_payment(payments["full"]).refunds[0]
    provider_refund_id = refund_row["provider_refund_id"]
    report.add("txn_refund", clock.now(), "USD", -2_500, 0, "refund",
               intent=f"pi_{payments['full']}", refund_id=provider_refund_id)  # fmt: skip
    assert refunded.status_code == 200
    clock.set(START + 2 * DAY)
    yield Book(engine, recon, clock, report, payments)


def faithful(book: Book) -> str:
    """The report as the provider would send it: the early charge belongs to its own day."""
    book.report.rows = [row for row in book.report.rows if row["balance_transaction_id"]
                        != "txn_early"]  # fmt: skip
    return book.report.csv()


def states(book: Book) -> dict[str, str]:
    return {name: book.engine.get_payment(pid).state for name, pid in book.payments.items()}


def count(database: Database, table: sa.Table) -> int:
    with database.engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def assert_audit_holds(database: Database) -> None:
    with database.engine.connect() as connection:
        assert [(r.name, r.violations) for r in audit(connection) if not r.ok] == []


# -- a faithful report ------------------------------------------------------------------
def test_a_faithful_report_settles_every_matched_charge_and_finds_nothing(
    book: Book, database: Database
) -> None:
    summary = book.recon.run(faithful(book), "test", START, START + DAY)
    assert summary.clean and summary.new_count == 0
    assert (summary.rows_count, summary.matched_count, summary.settled_count) == (5, 5, 4)
    assert states(book) == {"early": "captured", "full": "settled", "partial": "settled",
                            "plain": "settled", "yen": "settled"}  # fmt: skip
    assert book.recon.exceptions() == []
    again = book.recon.run(faithful(book), "test", START, START + DAY)
    assert again.clean and again.settled_count == 0
    assert count(database, t.settlement_rows) == 5 and count(database, t.recon_runs) == 2
    assert_audit_holds(database)


# -- one fault per category ------------------------------------------------------------------
def broken(book: Book) -> str:
    """Each row wrong in one way: one exception per category."""
    report = book.report
    missing = report.by_bt("txn_plain")
    report.rows.remove(missing)  # missing at the provider
    full = report.by_bt("txn_full")  # amount: one cent more than captured
    full.update(gross="100.01", net=major(10_001 - provider_fee_minor(10_000), "USD"))
    partial = report.by_bt("txn_partial")  # the provider kept five cents more
    fee = provider_fee_minor(6_000) + 5
    partial.update(fee=major(fee, "USD"), net=major(6_000 - fee, "USD"))
    report.by_bt("txn_yen").update(currency="usd", gross="50.00", fee="0.00", net="50.00")
    early = report.by_bt("txn_early")  # reported in the window, booked two days before
    early.update(created_utc="2026-01-03 05:00:00", available_on_utc="2026-01-03 05:00:00")
    report.rows.append(dict(report.by_bt("txn_refund")))  # the same row twice
    report.add("txn_phantom", START + timedelta(hours=7), "USD", 777, 0, "charge",
               intent="pi_nobody")  # fmt: skip
    return report.csv()


EXPECTED = {
    "amount_mismatch": ("charge", "full", 10_000, 10_001),
    "fee_mismatch": ("charge", "partial", 204, 209),
    "currency_mismatch": ("charge", "yen", 5_000, 5_000),
    "missing_at_provider": ("charge", "plain", 2_000, None),
    "outside_window": ("charge", "early", 4_000, 4_000),
    "duplicate": ("refund", None, None, 2_500),
    "missing_in_ledger": ("charge", None, None, 777),
}


def test_each_fault_is_found_once_in_its_category_and_a_rerun_adds_none(
    book: Book, database: Database
) -> None:
    text = broken(book)
    summary = book.recon.run(text, "test", START, START + DAY)
    assert {k: v for k, v in summary.counts().items() if v} == dict.fromkeys(EXPECTED, 1)
    assert summary.new_count == 7 and summary.matched_count == 1  # the refund
    found = {item.category: item for item in book.recon.exceptions()}
    for category, (kind, name, expected, reported) in EXPECTED.items():
        item = found[category]
        payment_id = book.payments[name] if name else None
        assert (item.kind, item.expected_minor, item.reported_minor) == (kind, expected, reported)
        assert item.payment_id == payment_id and item.status == "open", item
    assert found["currency_mismatch"].currency == "USD"  # the report's
    again = book.recon.run(text, "test", START, START + DAY)
    assert again.counts() == summary.counts() and again.new_count == 0
    assert len(book.recon.exceptions(status=None)) == 7
    assert states(book)["full"] == "partially_refunded"  # an exception: not settled
    assert_audit_holds(database)


# -- resolving ------------------------------------------------------------------------------
def entries_of(database: Database, journal_id: str) -> set[tuple[str, str, int, str]]:
    e = t.ledger_entries.c
    with database.engine.connect() as c:
        rows = c.execute(sa.select(e.account, e.side, e.amount_minor, e.currency)
                         .where(e.journal_id == journal_id))  # fmt: skip
        return {(str(a), str(s), int(m), str(cur)) for a, s, m, cur in rows}


CORRECTIONS = {
    "amount_mismatch": {("psp_clearing", "D", 1, "USD"), (RECON_ADJUSTMENTS, "C", 1, "USD")},
    "fee_mismatch": {("provider_fees", "D", 5, "USD"), ("psp_clearing", "C", 5, "USD")},
    "missing_at_provider": {(RECON_ADJUSTMENTS, "D", 2_000, "USD"),
                            ("psp_clearing", "C", 2_000, "USD")},
    "missing_in_ledger": {("psp_clearing", "D", 777, "USD"), (RECON_ADJUSTMENTS, "C", 777, "USD")},
    "currency_mismatch": {(RECON_ADJUSTMENTS, "D", 5_000, "JPY"),
                          ("psp_clearing", "C", 5_000, "JPY"),
                          ("psp_clearing", "D", 5_000, "USD"),
                          (RECON_ADJUSTMENTS, "C", 5_000, "USD")},
    "duplicate": None,  # listed twice by the provider: no money moved twice
    "outside_window": None,
}  # fmt: skip


def test_resolving_posts_a_balanced_correction_once_and_the_audit_holds(
    book: Book, database: Database
) -> None:
    text = broken(book)
    book.recon.run(text, "test", START, START + DAY)
    for item in book.recon.exceptions():
        book.clock.advance(timedelta(minutes=1))
        resolved = book.recon.resolve(item.id, f"checked by hand: {item.category}")
        assert resolved.status == "resolved" and resolved.resolved_at == book.clock.now()
        expected = CORRECTIONS[item.category]
        if expected is None:
            assert resolved.journal_id is None, item.category
        else:
            assert resolved.journal_id is not None
            assert entries_of(database, resolved.journal_id) == expected, item.category
        with pytest.raises(Conflict) as refused:
            book.recon.resolve(item.id, "again")
        assert refused.value.code == "recon_exception_resolved"
    assert book.recon.exceptions() == []
    assert {i.resolution_reason for i in book.recon.exceptions(status="resolved", limit=10)} == {
        f"checked by hand: {category}" for category in EXPECTED
    }
    # Reported charges whose difference is now booked settle; the missing one does not.
    assert states(book) == {"early": "settled", "full": "settled", "partial": "settled",
                            "plain": "captured", "yen": "settled"}  # fmt: skip
    assert_audit_holds(database)
    book.recon.run(text, "test", START, START + DAY)
    assert book.recon.exceptions() == []  # a resolved discrepancy is not raised again


def test_resolve_and_list_refuse_bad_input_with_typed_errors(book: Book) -> None:
    text = broken(book)
    book.recon.run(text, "test", START, START + DAY)
    first = book.recon.exceptions()[0]
    with pytest.raises(NotFound):
        book.recon.resolve("rcx_nope", "no such exception")
    for reason in ("", "   ", "x" * 501, "card 4242 4242 4242 4242"):
        with pytest.raises(InvalidRequest) as refused:
            book.recon.resolve(first.id, reason)
        assert refused.value.field == "reason"
    with pytest.raises(InvalidRequest):
        book.recon.exceptions(category="lost")
    with pytest.raises(InvalidRequest):
        book.recon.exceptions(status="closed")
    with pytest.raises(InvalidRequest):
        book.recon.run(text, "test", START + DAY, START)  # a window backwards
    assert book.recon.exceptions()[0].status == "open"


# -- bad input ------------------------------------------------------------------------------
def test_a_malformed_report_names_its_line_and_column_and_nothing_is_kept(
    book: Book, database: Database
) -> None:
    partial = book.report.by_bt("txn_partial")
    partial["gross"] = "60.001"  # more decimals than USD has
    with pytest.raises(SettlementFileInvalid) as refused:
        book.recon.run(book.report.csv(), "test", START, START + DAY)
    assert "line 4, column gross" in refused.value.message  # the header is line 1
    partial["gross"] = "60.00"
    long_ref = faithful(book).replace("txn_plain", "txn_" + "p" * 300)
    with pytest.raises(SettlementFileInvalid) as too_long:
        book.recon.run(long_ref, "test", START, START + DAY)
    assert "column balance_transaction_id" in too_long.value.message
    for table in (t.recon_runs, t.settlement_rows, t.recon_exceptions):
        assert count(database, table) == 0
    assert "settled" not in states(book).values()


# -- disputes ---------------------------------------------------------------------------------
def test_a_dispute_and_its_reversal_match_their_rows_and_a_wrong_one_is_found(
    book: Book, database: Database
) -> None:
    payment_id, intent = book.payments["plain"], f"pi_{book.payments['plain']}"
    later, report = START + 2 * DAY, Report()  # a day of its own
    book.clock.set(later + timedelta(hours=3))
    opened = ProviderEvent("evt_d1", EventType.DISPUTE_CREATED.value, book.clock.now(),
                           payment_id=payment_id, amount_minor=2_000)  # fmt: skip
    assert book.engine.apply_provider_event(opened).outcome == "applied"
    report.add("txn_dispute", book.clock.now(), "USD", -2_000, 1_500, "dispute", intent=intent)
    book.clock.advance(timedelta(hours=1))
    won = ProviderEvent("evt_d2", EventType.DISPUTE_WON.value, book.clock.now(),
                        payment_id=payment_id)  # fmt: skip
    assert book.engine.apply_provider_event(won).outcome == "applied"
    report.add("txn_won", book.clock.now(), "USD", 2_000, -1_500, "dispute_reversal",
               intent=intent)  # fmt: skip
    summary = book.recon.run(report.csv(), "test", later, later + DAY)
    assert summary.clean and summary.matched_count == 2, summary.exceptions
    report.by_bt("txn_won").update(gross="19.99", net=major(1_999 + 1_500, "USD"))
    wrong = book.recon.run(report.csv(), "test", later, later + DAY)
    assert [(e.category.value, e.kind) for e in wrong.exceptions] == [
        ("amount_mismatch", MovementKind.DISPUTE_REVERSAL)
    ]
    assert_audit_holds(database)


def _dispute_found_missing_then_booked(
    book: Book, withdrawn_at: datetime, booked_at: datetime, reported_minor: int = -2_000
) -> tuple[RunSummary, Report]:
    """Day 2: the provider withdrew at ``withdrawn_at`` (its report says
    ``reported_minor``), the 00:00-01:00 window ran at 01:02 before the engine knew,
    and the engine booked the 2,000 dispute at ``booked_at``: that first run, and the
    report it read."""
    payment_id, intent = book.payments["plain"], f"pi_{book.payments['plain']}"
    later, report = START + 2 * DAY, Report()
    report.add("txn_dispute", withdrawn_at, "USD", reported_minor, 1_500, "dispute",
               intent=intent)  # fmt: skip
    book.clock.set(later + timedelta(minutes=62))
    first = book.recon.run(report.csv(), "test", later, later + HOUR, LATE_BOOKING)
    book.clock.set(booked_at)
    opened = ProviderEvent("evt_d1", EventType.DISPUTE_CREATED.value, withdrawn_at,
                           payment_id=payment_id, amount_minor=2_000, fee_minor=1_500)  # fmt: skip
    assert book.engine.apply_provider_event(opened).outcome == "applied"
    return first, report


def test_a_dispute_booked_after_its_rows_window_ran_is_matched_by_the_next_window(
    book: Book, database: Database
) -> None:
    """The provider withdrew at 00:59; the engine learned it by a retried webhook at
    01:03, after the 00:00-01:00 window ran: that run's missing_in_ledger was true
    then, and the next window matches the pair and closes it (no outside_window, no
    missing_at_provider, no journal)."""
    later = START + 2 * DAY
    first, report = _dispute_found_missing_then_booked(
        book, later + timedelta(minutes=59), later + timedelta(minutes=63)
    )
    assert [(e.category.value, e.balance_transaction_id) for e in first.exceptions] == [
        ("missing_in_ledger", "txn_dispute")
    ]
    book.clock.set(later + 2 * HOUR)
    second = book.recon.run(report.csv(), "test", later + HOUR, later + 2 * HOUR, LATE_BOOKING)
    assert second.clean and second.matched_count == 1, second.exceptions
    (closed,) = book.recon.exceptions(status=None)
    assert (closed.status, closed.journal_id) == ("resolved", None)
    assert closed.resolution_reason == f"booked late: matched by run {second.run_id}"
    assert book.recon.exceptions() == []
    assert_audit_holds(database)


def test_a_dispute_booked_hours_after_its_row_is_paired_with_the_row_found_missing(
    book: Book, database: Database
) -> None:
    """The engine learned of a withdrawal five hours late (its webhook retried), far
    beyond the booking lag, and the report of the booking's window no longer holds
    the row: the run of that window pairs the booking with the row the first run
    found missing (kept with its exception), matches it and closes the exception."""
    later = START + 2 * DAY
    first, _ = _dispute_found_missing_then_booked(
        book, later + timedelta(minutes=30), later + 5 * HOUR + timedelta(minutes=10)
    )
    assert [(e.category.value, e.balance_transaction_id) for e in first.exceptions] == [
        ("missing_in_ledger", "txn_dispute")
    ]
    book.clock.set(later + 6 * HOUR + timedelta(minutes=5))
    second = book.recon.run(Report().csv(), "test", later + 5 * HOUR, later + 6 * HOUR,
                            LATE_BOOKING)  # fmt: skip
    assert second.clean and second.matched_count == 1, second.exceptions
    assert second.paired_late_count == 1 and second.closed_count == 1
    (closed,) = book.recon.exceptions(status=None)
    assert (closed.status, closed.journal_id) == ("resolved", None)
    assert closed.resolution_reason == f"booked late: matched by run {second.run_id}"
    again = book.recon.run(Report().csv(), "test", later + 5 * HOUR, later + 6 * HOUR,
                           LATE_BOOKING)  # fmt: skip
    # The window run again pairs the two again (the row is kept), and closes nothing new.
    assert again.clean and (again.paired_late_count, again.closed_count) == (1, 0)
    assert_audit_holds(database)


def test_a_late_booking_that_differs_from_its_owed_row_is_an_amount_mismatch(
    book: Book, database: Database
) -> None:
    later = START + 2 * DAY
    _dispute_found_missing_then_booked(
        book, later + timedelta(minutes=30), later + 5 * HOUR + timedelta(minutes=10), -2_500
    )
    book.clock.set(later + 6 * HOUR + timedelta(minutes=5))
    second = book.recon.run(Report().csv(), "test", later + 5 * HOUR, later + 6 * HOUR,
                            LATE_BOOKING)  # fmt: skip
    assert [(e.category.value, e.balance_transaction_id) for e in second.exceptions] == [
        ("amount_mismatch", "txn_dispute")
    ]
    assert second.matched_count == 0 and second.paired_late_count == 1
    by_category = {x.category: x for x in book.recon.exceptions(status=None)}
    assert by_category["missing_in_ledger"].status == "resolved"
    assert by_category["missing_in_ledger"].resolution_reason == (
        f"booked late: paired by run {second.run_id}, which found the pair differs"
    )
    assert by_category["amount_mismatch"].status == "open"


def test_a_fee_learned_after_its_capture_is_the_fee_compared(book: Book) -> None:
    later, report = START + 2 * DAY, Report()
    book.clock.set(later + timedelta(hours=1))
    payment_id = authorized(book.engine, FakeProvider(), key="c-late", order_id="o-late")
    begun = book.engine.begin_capture(Capture(MERCHANT, "k-late", payment_id, None))
    assert begun.call is not None
    answer = ProviderOutcome(OutcomeStatus.SUCCEEDED, f"pi_{payment_id}", amount_minor=10_000)
    book.engine.complete_capture(begun.call.attempt_id, answer)  # the fee not told
    report.add(
        "txn_late", book.clock.now(), "USD", 10_000, 325, "charge", intent=f"pi_{payment_id}"
    )
    assert book.recon.run(report.csv(), "test", later, later + DAY).clean  # no fee booked yet
    learned = ProviderOutcome(OutcomeStatus.SUCCEEDED, fee_minor=320, fee_known=True)
    assert book.engine.complete_fee(payment_id, learned)
    again = book.recon.run(report.csv(), "test", later, later + DAY)
    assert [(e.category.value, e.expected_minor, e.reported_minor) for e in again.exceptions] == [
        ("fee_mismatch", 320, 325)
    ]


# -- payouts, three ways ----------------------------------------------------------------------
def test_a_payout_is_matched_with_the_report_and_the_bank_or_found_missing_at_the_bank(
    book: Book, database: Database
) -> None:
    later, report = START + 2 * DAY, Report()
    sent_at = later + timedelta(hours=1)
    with database.engine.begin() as c:
        for payout_id, status in (("po_landed", "paid"), ("po_lost", "in_transit")):
            c.execute(t.payouts.insert().values(
                id=f"pout_{payout_id}", seller_id="s_1", currency="USD", amount_minor=5_000,
                status=status, provider_payout_id=payout_id, provider_idempotency_key=payout_id,
                created_at=sent_at, updated_at=sent_at,
                arrived_at=sent_at + HOUR if status == "paid" else None,
            ))  # fmt: skip
            report.add(f"txn_{payout_id}", sent_at, "USD", -5_000, 0, "payout")
    report.rows[0]["source_id"], report.rows[1]["source_id"] = "po_landed", "po_lost"
    summary = book.recon.run(report.csv(), "test", later, later + DAY,
                             Tolerances(payout_arrival_s=6 * 3_600))  # fmt: skip
    assert (summary.matched_count, summary.landed_count) == (1, 1)
    assert [(e.category.value, e.party.value, e.provider_ref) for e in summary.exceptions] == [
        ("missing_at_bank", "bank", "po_lost")
    ]
    lost = book.recon.exceptions(category="missing_at_bank")[0]
    assert book.recon.resolve(lost.id, "the bank found it").journal_id is None  # not the ledger's
