"""Reconciliation: ledger against report and bank; one exception per planted fault."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.errors import InvalidRequest
from engine.domain.reconciliation import (
    BankPayout,
    ExceptionCategory,
    LedgerMovement,
    MovementKind,
    Party,
    ReconciliationResult,
    ReconciliationWindow,
    Tolerances,
    reconcile,
    row_key,
)
from engine.domain.settlement import (
    GROSS_SIGN_BY_CATEGORY,
    SettlementRow,
    parse_settlement_report,
)
from mock_psp import settlement as psp_settlement
from mock_psp.clock import ManualClock
from mock_psp.core import ApiRequest, ProviderCore
from mock_psp.world import ProviderConfig

C = ExceptionCategory
K = MovementKind
DAY_S = 86_400
START = datetime(2024, 1, 1, tzinfo=UTC)
END = START + timedelta(days=1)
WINDOW = ReconciliationWindow(START, END)


def at(seconds: int) -> datetime:
    return START + timedelta(seconds=seconds)


def movement(
    ref: str,
    kind: MovementKind = K.CHARGE,
    *,
    gross: int = 1000,
    fee: int | None = 59,
    currency: str = "USD",
    at_s: int = 3_600,
    payment_id: str | None = None,
) -> LedgerMovement:
    if kind in (K.REFUND, K.PAYOUT, K.PAYOUT_REVERSAL) and fee == 59:
        fee = 0
    return LedgerMovement(ref, payment_id or f"pay_{ref}", kind, currency, gross, fee, at(at_s))


def row_for(m: LedgerMovement, **changes: Any) -> SettlementRow:
    """The row a faithful provider reports for what the ledger booked."""
    gross = GROSS_SIGN_BY_CATEGORY[m.kind] * m.gross_minor
    fee = m.fee_minor or 0
    ref = m.provider_ref
    ids: dict[str, Any] = {}
    if m.kind in (K.CHARGE, K.DISPUTE, K.DISPUTE_REVERSAL):
        ids = {"payment_intent_id": ref, "charge_id": f"ch_{ref}", "source_id": f"ch_{ref}"}
        if m.kind is not K.CHARGE:
            ids.update(dispute_id=f"dp_{ref}", source_id=f"dp_{ref}")
    elif m.kind is K.REFUND:
        ids = {"refund_id": ref, "source_id": ref, "payment_intent_id": f"pi_of_{ref}"}
    else:
        ids = {"payout_id": ref, "source_id": ref}
    row = SettlementRow(
        balance_transaction_id=f"txn_{m.kind}_{ref}",
        created_at=m.at,
        available_on_at=m.at,
        currency=m.currency,
        gross_minor=gross,
        fee_minor=fee,
        net_minor=gross - fee,
        reporting_category=m.kind.value,
        payment_metadata=(("payment_id", m.payment_id),) if m.payment_id else (),
        **ids,
    )
    return replace(row, **changes)


def with_gross(row: SettlementRow, size_minor: int) -> SettlementRow:
    gross = GROSS_SIGN_BY_CATEGORY[row.reporting_category] * size_minor
    return replace(row, gross_minor=gross, net_minor=gross - row.fee_minor)


def with_fee(row: SettlementRow, fee_minor: int) -> SettlementRow:
    return replace(row, fee_minor=fee_minor, net_minor=row.gross_minor - fee_minor)


def landed(m: LedgerMovement, **changes: Any) -> BankPayout:
    bank = BankPayout(m.provider_ref, m.currency, m.gross_minor, m.at + timedelta(hours=20))
    return replace(bank, **changes)


def run(
    movements: list[LedgerMovement],
    rows: list[SettlementRow],
    bank: list[BankPayout] | None = None,
    **tolerances: int,
) -> ReconciliationResult:
    return reconcile(movements, rows, bank or [], WINDOW, Tolerances(**tolerances))


def found(result: ReconciliationResult) -> list[tuple[str, str]]:
    return [(e.category.value, e.provider_ref) for e in result.exceptions]


def books() -> list[LedgerMovement]:
    return [
        movement("pi_1", payment_id="pay_1"),
        movement("re_1", K.REFUND, gross=300, at_s=7_200, payment_id="pay_1"),
        movement("pi_2", gross=5_000, fee=175, currency="JPY", at_s=100),
        movement("pi_3", gross=1_500, fee=74, currency="KWD", at_s=200),
        movement("pi_4", K.DISPUTE, gross=2_000, fee=1_500, at_s=9_000),
        movement("pi_4", K.DISPUTE_REVERSAL, gross=2_000, fee=-1_500, at_s=9_500),
        movement("po_1", K.PAYOUT, gross=900, at_s=10_000),
    ]


# --- a clean input --------------------------------------------------------------------


def test_a_faithful_report_gives_no_exception_and_every_pair_matched() -> None:
    movements = books()
    rows = [row_for(m) for m in movements]
    result = run(movements, rows, [landed(movements[-1])])
    assert result.exceptions == () and result.clean
    assert len(result.matched) == len(movements)
    assert result.matched[-1].bank == landed(movements[-1])
    assert set(result.counts().values()) == {0}


def test_the_outputs_do_not_depend_on_the_input_order() -> None:
    movements = [*books(), movement("pi_9", at_s=50)]
    rows = [row_for(m) for m in movements[1:]] + [row_for(movement("pi_x", at_s=60))]
    rows[1] = with_gross(rows[1], 1)
    rows.append(replace(rows[2], balance_transaction_id="txn_again"))
    first = run(movements, rows)
    shuffled = random.Random(3)
    for _ in range(5):
        shuffled.shuffle(movements)
        shuffled.shuffle(rows)
        assert run(movements, rows) == first
    assert [e.sort_key() for e in first.exceptions] == sorted(
        e.sort_key() for e in first.exceptions
    )


# --- one category at a time -----------------------------------------------------------


def test_a_booked_charge_the_report_lacks_is_missing_at_provider() -> None:
    movements = books()
    rows = [row_for(m) for m in movements if m.provider_ref != "pi_1"]
    result = run(movements, rows, [landed(movements[-1])])
    (exception,) = result.exceptions
    assert (exception.category, exception.party) == (C.MISSING_AT_PROVIDER, Party.LEDGER)
    assert (exception.provider_ref, exception.kind, exception.payment_id) == (
        "pi_1",
        K.CHARGE,
        "pay_1",
    )
    assert (exception.expected_minor, exception.reported_minor) == (1000, None)
    assert exception.currency == "USD"
    assert "in the ledger, not in the report" in exception.detail


def test_a_reported_row_the_ledger_lacks_is_missing_in_ledger() -> None:
    movements = books()
    stranger = row_for(movement("pi_x", gross=4_200, payment_id="pay_x"))
    result = run(movements, [row_for(m) for m in movements] + [stranger], [landed(movements[-1])])
    (exception,) = result.exceptions
    assert (exception.category, exception.provider_ref) == (C.MISSING_IN_LEDGER, "pi_x")
    assert (exception.expected_minor, exception.reported_minor) == (None, 4_200)
    assert (exception.payment_id, exception.balance_transaction_id) == ("pay_x", "txn_charge_pi_x")


def test_a_row_of_a_category_the_engine_never_books_is_missing_in_ledger() -> None:
    fee_row = replace(row_for(movement("x")), reporting_category="other_adjustment")
    (exception,) = run([], [fee_row]).exceptions
    assert (exception.category, exception.kind) == (C.MISSING_IN_LEDGER, None)
    assert exception.detail.startswith("other_adjustment")


def test_a_different_amount_is_one_amount_mismatch_naming_both() -> None:
    charge = movement("pi_1", gross=1_000)
    result = run([charge], [with_gross(row_for(charge), 1_007)])
    (exception,) = result.exceptions
    assert exception.category is C.AMOUNT_MISMATCH
    assert (exception.expected_minor, exception.reported_minor) == (1_000, 1_007)
    assert "10.00 USD" in exception.detail and "10.07 USD" in exception.detail


def test_a_refunds_amount_is_compared_as_a_size() -> None:
    refund = movement("re_1", K.REFUND, gross=300)
    (exception,) = run([refund], [with_gross(row_for(refund), 301)]).exceptions
    assert (exception.expected_minor, exception.reported_minor) == (300, 301)


def test_an_amount_within_the_tolerance_matches() -> None:
    charge = movement("pi_1", gross=1_000)
    result = run([charge], [with_gross(row_for(charge), 1_002)], amount_tolerance_minor=2)
    assert result.clean and len(result.matched) == 1


def test_a_different_fee_is_one_fee_mismatch() -> None:
    charge = movement("pi_1", fee=59)
    (exception,) = run([charge], [with_fee(row_for(charge), 60)]).exceptions
    assert exception.category is C.FEE_MISMATCH
    assert (exception.expected_minor, exception.reported_minor) == (59, 60)


def test_a_fee_the_engine_does_not_book_is_not_compared() -> None:
    dispute = movement("pi_1", K.DISPUTE, fee=None)
    assert run([dispute], [with_fee(row_for(dispute), 1_500)]).clean


def test_a_different_currency_is_one_currency_mismatch_and_no_amount_check() -> None:
    charge = movement("pi_1", gross=1_000)
    row = replace(row_for(charge), currency="EUR", gross_minor=5, net_minor=5 - 59)
    (exception,) = run([charge], [row]).exceptions
    assert exception.category is C.CURRENCY_MISMATCH
    assert (exception.expected_currency, exception.reported_currency) == ("USD", "EUR")


def test_a_balance_transaction_reported_twice_is_one_duplicate() -> None:
    charge = movement("pi_1")
    row = row_for(charge)
    result = run([charge], [row, replace(row, source="line 9")])
    (exception,) = result.exceptions
    assert (exception.category, exception.balance_transaction_id) == (
        C.DUPLICATE,
        row.balance_transaction_id,
    )
    assert "line 9" in exception.detail
    assert len(result.matched) == 1


def test_one_provider_reference_under_two_balance_transactions_is_a_duplicate() -> None:
    charge = movement("pi_1")
    twin = replace(row_for(charge), balance_transaction_id="txn_other")
    (exception,) = run([charge], [row_for(charge), twin]).exceptions
    assert (exception.category, exception.balance_transaction_id) == (C.DUPLICATE, "txn_other")


def test_a_charge_booked_twice_by_the_ledger_is_a_duplicate() -> None:
    charge = movement("pi_1")
    (exception,) = run([charge, replace(charge, at=at(4_000))], [row_for(charge)]).exceptions
    assert (exception.category, exception.party) == (C.DUPLICATE, Party.LEDGER)
    assert exception.reported_minor is None


# --- the window -----------------------------------------------------------------------


def test_a_late_row_is_one_outside_window_never_also_missing() -> None:
    charge = movement("pi_1", at_s=DAY_S - 10)
    late = row_for(charge, created_at=END + timedelta(hours=1))
    (exception,) = run([charge], [late]).exceptions
    assert (exception.category, exception.provider_ref) == (C.OUTSIDE_WINDOW, "pi_1")
    assert "reported outside this window" in exception.detail


def test_a_row_late_within_the_lateness_tolerance_matches() -> None:
    charge = movement("pi_1", at_s=DAY_S - 10)
    late = row_for(charge, created_at=END + timedelta(minutes=5))
    assert run([charge], [late], lateness_s=600).clean
    assert found(run([charge], [late], lateness_s=60)) == [("outside_window", "pi_1")]


def test_a_row_before_its_booking_within_the_booking_lag_matches() -> None:
    """The ledger learns of money after the provider moves it (a dispute by a retried
    webhook): a row earlier than its movement is the engine learning late."""
    dispute = movement("pi_1", K.DISPUTE, fee=1_500, at_s=600)
    early = row_for(dispute, created_at=at(-240))  # in the previous window
    assert found(run([dispute], [early], lateness_s=120)) == [("outside_window", "pi_1")]
    assert run([dispute], [early], lateness_s=120, booking_lag_s=900).clean


def test_the_booking_lag_never_excuses_a_row_later_than_its_movement() -> None:
    charge = movement("pi_1", at_s=DAY_S - 10)
    late = row_for(charge, created_at=END + timedelta(minutes=5))
    result = run([charge], [late], lateness_s=60, booking_lag_s=3_600)
    assert found(result) == [("outside_window", "pi_1")]


def test_a_row_of_this_window_booked_later_within_the_lag_is_left_to_the_bookings_run() -> None:
    booked_next_window = movement("pi_1", K.DISPUTE, fee=1_500, at_s=DAY_S + 200)
    row = row_for(booked_next_window, created_at=at(DAY_S - 30))
    assert found(run([booked_next_window], [row], lateness_s=60)) == [("outside_window", "pi_1")]
    assert run([booked_next_window], [row], lateness_s=60, booking_lag_s=900).clean


def test_the_movements_run_and_the_rows_run_judge_a_pair_by_one_rule() -> None:
    """A row the movement's widened window reaches, but later than the booking by more
    than the lateness: both runs call it outside_window, never one matched and the
    other an exception."""
    charge = movement("pi_1", at_s=DAY_S - 200)
    late = row_for(charge, created_at=END + timedelta(seconds=30))
    tolerances = Tolerances(lateness_s=60, booking_lag_s=900)
    own = reconcile([charge], [late], [], WINDOW, tolerances)
    next_window = ReconciliationWindow(END, END + timedelta(days=1))
    rows_run = reconcile([charge], [late], [], next_window, tolerances)
    assert found(own) == found(rows_run) == [("outside_window", "pi_1")]
    assert not own.matched and not rows_run.matched
    near = replace(late, created_at=at(DAY_S - 170))
    assert reconcile([charge], [near], [], WINDOW, tolerances).matched
    assert reconcile([charge], [near], [], next_window, tolerances).clean


def test_an_owed_row_is_paired_with_its_booking_however_late() -> None:
    """A row an earlier run found missing (owed), booked a day later: the booking's
    run pairs them, never outside_window or missing_at_provider, and names the row."""
    dispute = movement("pi_1", K.DISPUTE, fee=1_500, at_s=3_600)
    owed = row_for(dispute, created_at=at(-DAY_S))
    tolerances = Tolerances(lateness_s=60, booking_lag_s=900)
    result = reconcile([dispute], [], [], WINDOW, tolerances, owed=[owed])
    assert result.clean and [m.row for m in result.matched] == [owed]
    assert result.paired_late == (owed.balance_transaction_id,)
    assert found(reconcile([dispute], [], [], WINDOW, tolerances)) == [
        ("missing_at_provider", "pi_1")
    ]


def test_an_owed_row_that_differs_from_its_booking_is_compared_not_matched() -> None:
    dispute = movement("pi_1", K.DISPUTE, fee=1_500, at_s=3_600)
    owed = row_for(dispute, created_at=at(-DAY_S), gross_minor=-2_500, net_minor=-4_000)
    result = reconcile([dispute], [], [], WINDOW, Tolerances(), owed=[owed])
    assert found(result) == [("amount_mismatch", "pi_1")] and not result.matched
    assert result.paired_late == (owed.balance_transaction_id,)


def test_an_owed_row_is_not_found_missing_again_and_waits_for_its_booking() -> None:
    charge = movement("pi_1", at_s=-2 * DAY_S)  # only to build the row
    owed = row_for(charge, created_at=at(100))
    result = reconcile([], [owed], [], WINDOW, Tolerances(), owed=[owed])
    assert result.clean and not result.matched and result.paired_late == ()
    out_of_scope = movement("pi_1", at_s=DAY_S + 3_600)
    later = reconcile([out_of_scope], [owed], [], WINDOW, Tolerances(), owed=[owed])
    assert later.clean and not later.matched  # the booking's own run pairs it


def test_a_missing_in_ledger_keeps_its_row_for_a_later_run() -> None:
    charge = movement("pi_1")
    row = row_for(charge)
    (missing,) = reconcile([], [row], [], WINDOW).exceptions
    assert missing.category is C.MISSING_IN_LEDGER and missing.row == row
    (other,) = reconcile([charge], [], [], WINDOW).exceptions
    assert other.row is None


def test_a_row_in_the_window_booked_far_outside_it_is_outside_window() -> None:
    early = movement("pi_1", at_s=-3 * DAY_S)
    (exception,) = run([early], [row_for(early, created_at=at(100))]).exceptions
    assert exception.category is C.OUTSIDE_WINDOW
    assert "booked by the ledger outside this window" in exception.detail


def test_a_pair_just_across_the_boundary_belongs_to_the_movements_window() -> None:
    before = movement("pi_1", at_s=-30)
    assert run([before], [row_for(before, created_at=at(20))], lateness_s=60).clean


def test_rows_and_movements_of_other_windows_alone_are_not_this_runs_business() -> None:
    yesterday = movement("pi_1", at_s=-DAY_S)
    tomorrow = row_for(movement("pi_2", at_s=DAY_S + 5))
    assert run([yesterday], [tomorrow]).clean


def test_a_window_and_tolerances_are_bounded() -> None:
    with pytest.raises(InvalidRequest):
        ReconciliationWindow(END, START)
    with pytest.raises(InvalidRequest):
        ReconciliationWindow(START, START + timedelta(days=500))
    with pytest.raises(InvalidRequest) as caught:
        Tolerances(amount_tolerance_minor=-1)
    assert caught.value.field == "amount_tolerance_minor"


# --- payouts, three ways --------------------------------------------------------------


def test_a_payout_reported_booked_and_landed_matches_three_ways() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900)
    result = run([payout], [row_for(payout)], [landed(payout)])
    assert result.clean and result.matched[0].bank == landed(payout)


def test_a_payout_that_never_landed_is_missing_at_bank() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900)
    (exception,) = run([payout], [row_for(payout)], payout_arrival_s=DAY_S // 2).exceptions
    assert (exception.category, exception.party) == (C.MISSING_AT_BANK, Party.BANK)
    assert (exception.expected_minor, exception.reported_minor, exception.bank_minor) == (
        900,
        900,
        None,
    )


def test_a_payout_not_yet_due_at_the_bank_is_in_transit() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900, at_s=DAY_S - 60)
    result = run([payout], [row_for(payout)])
    assert result.clean and result.payouts_in_transit == ("po_1",)


def test_a_reversed_payout_is_not_expected_at_the_bank() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900)
    back = movement("po_1", K.PAYOUT_REVERSAL, gross=900, at_s=4_000)
    assert run([payout, back], [row_for(payout), row_for(back)], payout_arrival_s=0).clean


def test_a_payout_landing_with_another_amount_is_a_bank_amount_mismatch() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900)
    (exception,) = run([payout], [row_for(payout)], [landed(payout, amount_minor=890)]).exceptions
    assert (exception.category, exception.party) == (C.AMOUNT_MISMATCH, Party.BANK)
    assert (exception.reported_minor, exception.bank_minor) == (900, 890)


def test_a_payout_landing_in_another_currency_is_a_bank_currency_mismatch() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900)
    (exception,) = run([payout], [row_for(payout)], [landed(payout, currency="EUR")]).exceptions
    assert (exception.category, exception.party) == (C.CURRENCY_MISMATCH, Party.BANK)
    assert exception.bank_currency == "EUR"


def test_a_misreported_payout_the_bank_confirms_is_one_exception_against_the_ledger() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900)
    result = run([payout], [with_gross(row_for(payout), 990)], [landed(payout)])
    (exception,) = result.exceptions
    assert (exception.category, exception.party) == (C.AMOUNT_MISMATCH, Party.LEDGER)
    assert exception.detail.endswith("the bank as the ledger")
    currency = run([payout], [replace(row_for(payout), currency="EUR")], [landed(payout)])
    assert found(currency) == [("currency_mismatch", "po_1")]


def test_a_payout_missing_from_the_report_is_one_exception_though_it_landed() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900)
    (exception,) = run([payout], [], [landed(payout)]).exceptions
    assert exception.category is C.MISSING_AT_PROVIDER and exception.bank_minor == 900


def test_a_reported_payout_the_ledger_lacks_is_one_missing_in_ledger_either_way() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900)
    assert found(run([], [row_for(payout)], [landed(payout)])) == [("missing_in_ledger", "po_1")]
    assert found(run([], [row_for(payout)])) == [("missing_in_ledger", "po_1")]


def test_money_landing_that_nobody_reported_or_booked_is_missing_in_ledger_at_the_bank() -> None:
    stray = BankPayout("po_x", "USD", 500, at(100))
    (exception,) = run([], [], [stray]).exceptions
    assert (exception.category, exception.party, exception.bank_minor) == (
        C.MISSING_IN_LEDGER,
        Party.BANK,
        500,
    )
    assert run([], [], [replace(stray, arrived_at=at(-DAY_S))]).clean


def test_a_payout_landing_twice_is_a_bank_duplicate() -> None:
    payout = movement("po_1", K.PAYOUT, gross=900)
    twice = [landed(payout), landed(payout, arrived_at=at(20_000))]
    (exception,) = run([payout], [row_for(payout)], twice).exceptions
    assert (exception.category, exception.party) == (C.DUPLICATE, Party.BANK)


# --- the property: a clean set gives nothing, each planted fault exactly one ----------

CURRENCIES = ("JPY", "USD", "KWD", "BHD", "EUR")
FAULTS = (
    "drop",
    "amount",
    "fee",
    "currency",
    "duplicate",
    "unexpected",
    "shift",
    "bank_drop",
    "bank_amount",
)


@st.composite
def ledgers(draw: st.DrawFn) -> list[LedgerMovement]:
    count = draw(st.integers(min_value=1, max_value=10))
    movements = []
    for index in range(count):
        kind = draw(st.sampled_from(list(MovementKind)))
        gross = draw(st.integers(min_value=0, max_value=10**9))
        fee = 0
        if kind in (K.CHARGE, K.DISPUTE):
            fee = draw(st.integers(min_value=0, max_value=10**6))
        elif kind is K.DISPUTE_REVERSAL:
            fee = draw(st.integers(min_value=-(10**6), max_value=0))
        movements.append(
            LedgerMovement(
                provider_ref=f"{kind.value[:2]}_{index}",
                payment_id=draw(st.sampled_from([None, f"pay_{index}"])),
                kind=kind,
                currency=draw(st.sampled_from(CURRENCIES)),
                gross_minor=gross,
                fee_minor=fee,
                at=at(draw(st.integers(min_value=0, max_value=DAY_S - 1))),
            )
        )
    return movements


def psp_report(rows: list[SettlementRow], as_json: bool) -> list[SettlementRow]:
    """Write the rows as the mock PSP writes its report, then read them back."""
    written = [
        psp_settlement.SettlementRow(
            balance_transaction_id=row.balance_transaction_id,
            created_s=int(row.created_at.timestamp()),
            available_on_s=int(row.available_on_at.timestamp()),
            currency=row.currency.lower(),
            gross_minor=row.gross_minor,
            fee_minor=row.fee_minor,
            net_minor=row.net_minor,
            reporting_category=row.reporting_category,
            source_id=row.source_id or "",
            description=None,
            customer_facing_amount_minor=None,
            payment_intent_id=row.payment_intent_id,
            charge_id=row.charge_id,
            refund_id=row.refund_id,
            dispute_id=row.dispute_id,
            card_brand=None,
            payment_metadata=dict(row.payment_metadata),
        )
        for row in rows
    ]
    report = psp_settlement.SettlementReport(0, 1, "payment_id", tuple(written))
    text = json.dumps(report.to_json()) if as_json else report.to_csv()
    return list(parse_settlement_report(text).rows)


def plant(
    fault: str,
    target: int,
    rows: list[SettlementRow],
    bank: list[BankPayout],
    tolerances: Tolerances,
) -> tuple[str, str] | None:
    """Plant one fault in the report or the bank; say which exception it must give."""
    row = rows[target]
    kind, ref = row_key(row)
    if fault == "drop":
        del rows[target]
        return ("missing_at_provider", ref)
    if fault == "amount":
        rows[target] = with_gross(row, abs(row.gross_minor) + 1 + target)
        return ("amount_mismatch", ref)
    if fault == "fee":
        rows[target] = with_fee(row, row.fee_minor + 1)
        return ("fee_mismatch", ref)
    if fault == "currency":
        other = next(code for code in CURRENCIES if code != row.currency)
        rows[target] = replace(row, currency=other)
        return ("currency_mismatch", ref)
    if fault == "duplicate":
        rows.append(row)
        # A row created in the lateness margin is the next window's to call a duplicate.
        return ("duplicate", ref) if WINDOW.holds(row.created_at) else None
    if fault == "unexpected":
        rows.append(row_for(movement("pi_unexpected", at_s=target)))
        return ("missing_in_ledger", "pi_unexpected")
    if fault == "shift":
        late_s = tolerances.lateness_s + target
        rows[target] = replace(row, created_at=END + timedelta(seconds=late_s))
        return ("outside_window", ref)
    assert kind is K.PAYOUT, fault
    index = next(i for i, payout in enumerate(bank) if payout.payout_id == ref)
    if fault == "bank_amount":
        bank[index] = replace(bank[index], amount_minor=bank[index].amount_minor + 1)
        return ("amount_mismatch", ref)
    del bank[index]
    due_at = row.created_at + timedelta(seconds=tolerances.payout_arrival_s)
    return ("missing_at_bank", ref) if due_at <= END else None


@settings(max_examples=100)
@given(
    ledgers(),
    st.sampled_from([0, 60, 3_600]),
    st.sampled_from([0, 3_600, DAY_S]),
    st.booleans(),
    st.data(),
)
def test_a_clean_report_gives_nothing_and_each_planted_fault_exactly_one(
    movements: list[LedgerMovement],
    lateness_s: int,
    arrival_s: int,
    as_json: bool,
    data: st.DataObject,
) -> None:
    size = len(movements)
    jitters = data.draw(
        st.lists(st.integers(-lateness_s, lateness_s), min_size=size, max_size=size)
    )
    faithful = [
        row_for(m, created_at=m.at + timedelta(seconds=jitter))
        for m, jitter in zip(movements, jitters, strict=True)
    ]
    rows = psp_report(faithful, as_json)
    assert rows == faithful
    bank = [landed(m) for m in movements if m.kind is K.PAYOUT]
    tolerances = Tolerances(lateness_s=lateness_s, payout_arrival_s=arrival_s)
    clean = reconcile(movements, rows, bank, WINDOW, tolerances)
    assert clean.exceptions == () and len(clean.matched) == size
    payout_rows = [i for i, row in enumerate(rows) if row.reporting_category == "payout"]
    for fault in FAULTS:
        candidates = payout_rows if fault.startswith("bank") else list(range(size))
        if not candidates:
            continue
        target = data.draw(st.sampled_from(candidates), label=fault)
        planted_rows, planted_bank = list(rows), list(bank)
        expected = plant(fault, target, planted_rows, planted_bank, tolerances)
        result = reconcile(movements, planted_rows, planted_bank, WINDOW, tolerances)
        assert found(result) == ([] if expected is None else [expected]), fault
        unmatched = 0 if expected is None or fault in ("duplicate", "unexpected") else 1
        assert len(result.matched) == size - unmatched, fault


# --- against the mock PSP's own faults ------------------------------------------------


def _post(core: ProviderCore, path: str, params: dict[str, Any]) -> Any:
    result = core.handle(ApiRequest("POST", path, params, {"Authorization": "Bearer sk_test_x"}))
    assert result.response is not None and result.response.status == 200, result
    return result.response.body


def _ledger_from_psp_truth(core: ProviderCore) -> list[LedgerMovement]:
    """What an engine that booked everything the provider did would hold."""
    movements = []
    for bt in core.state.balance_transactions.values():
        kind = MovementKind(bt.reporting_category)
        ref = bt.source_id if kind in (K.REFUND, K.PAYOUT) else bt.payment_intent_id or ""
        movements.append(
            LedgerMovement(
                ref,
                None,
                kind,
                bt.currency.upper(),
                abs(bt.amount_minor),
                bt.fee_minor,
                datetime.fromtimestamp(bt.created_s, tz=UTC),
            )
        )
    return movements


def test_the_mock_psps_settlement_faults_each_give_one_exception() -> None:
    faults = {
        "settlement": {
            "missing_row_rate": 0.15,
            "amount_mismatch_rate": 0.15,
            "late_row_rate": 0.15,
            "late_by_s": DAY_S,
            "unexpected_row_count": 2,
        }
    }
    clock = ManualClock()
    core = ProviderCore(clock, random.Random(11), ProviderConfig(), faults)
    start_s = int(core.now())
    for index in range(30):
        currency = ("usd", "jpy", "kwd")[index % 3]
        intent = _post(
            core,
            "/v1/payment_intents",
            {
                "amount": 1_000 + index,
                "currency": currency,
                "confirm": "true",
                "payment_method": "pm_card_bypassPending",
            },
        )
        if index % 4 == 0:
            _post(core, "/v1/refunds", {"payment_intent": intent["id"], "amount": 10})
        clock.advance(60)
    payout = _post(core, "/v1/payouts", {"amount": 500, "currency": "usd"})
    clock.advance(3 * DAY_S)
    core.tick()
    window_report = core.settlement_report(start_s, start_s + DAY_S)
    tail_report = core.settlement_report(start_s + DAY_S, start_s + 3 * DAY_S)
    rows = [
        *parse_settlement_report(window_report.to_csv()).rows,
        *parse_settlement_report(json.dumps(tail_report.to_json())).rows,
    ]
    arrived = core.state.payouts[payout["id"]]
    assert arrived.status == "paid"
    bank = [
        BankPayout(
            arrived.id,
            "USD",
            arrived.amount_minor,
            datetime.fromtimestamp(arrived.arrival_date_s, tz=UTC),
        )
    ]
    window = ReconciliationWindow(
        datetime.fromtimestamp(start_s, tz=UTC), datetime.fromtimestamp(start_s + DAY_S, tz=UTC)
    )
    result = reconcile(_ledger_from_psp_truth(core), rows, bank, window)
    in_window = {row.balance_transaction_id for row in window_report.rows}
    expected = _expected_from_fault_log(core, in_window)
    assert Counter(e.category.value for e in result.exceptions) == expected


def _expected_from_fault_log(core: ProviderCore, in_window: set[str]) -> Counter[str]:
    """One exception per planted fault; a missing row hides its other faults, a late row
    its mismatch (it is never compared); unexpected rows of the later report are not
    this window's."""
    by_target: dict[str, set[str]] = {}
    for record in core.fault_log.records():
        by_target.setdefault(record.target, set()).add(str(record.kind))
    expected: Counter[str] = Counter()
    for target, kinds in by_target.items():
        if "settlement.missing_row" in kinds:
            expected["missing_at_provider"] += 1
        elif "settlement.late_row" in kinds:
            expected["outside_window"] += 1
        elif "settlement.amount_mismatch" in kinds:
            expected["amount_mismatch"] += 1
        elif "settlement.unexpected_row" in kinds and target in in_window:
            expected["missing_in_ledger"] += 1
    assert min(expected.values()) > 0 and len(expected) == 4, expected
    return expected
