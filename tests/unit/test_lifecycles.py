"""Every lifecycle is a table: statuses as enums, their legal moves as data."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import pytest

from engine.domain import lifecycles as lc
from engine.domain.entities import Attempt, Payment
from engine.domain.ledger import PER_OWNER, Account, seller_account, seller_of
from engine.domain.provider import CallKind
from engine.domain.states import PaymentState

TABLES: list[tuple[type[StrEnum], dict]] = [
    (lc.AttemptStatus, lc.ATTEMPT_MOVES),
    (lc.RefundStatus, lc.REFUND_MOVES),
    (lc.PayoutStatus, lc.PAYOUT_MOVES),
    (lc.InboxStatus, lc.INBOX_MOVES),
    (lc.KeyStatus, lc.KEY_MOVES),
    (lc.ExceptionStatus, lc.EXCEPTION_MOVES),
]
AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("statuses", "moves"), TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_each_table_names_every_status_once_and_only_its_own(
    statuses: type[StrEnum], moves: dict
) -> None:
    assert set(moves) == {None, *statuses}
    for targets in moves.values():
        assert all(isinstance(target, statuses) for target in targets)
    reachable = set().union(*moves.values())
    assert reachable == set(statuses), "a status no move reaches"


def test_a_move_outside_its_table_is_a_defect() -> None:
    a = lc.AttemptStatus
    assert lc.moved(lc.ATTEMPT_MOVES, a.PENDING, a.UNKNOWN) == "unknown"
    with pytest.raises(AssertionError, match="succeeded -> pending"):
        lc.moved(lc.ATTEMPT_MOVES, lc.AttemptStatus.SUCCEEDED, lc.AttemptStatus.PENDING)
    with pytest.raises(AssertionError):
        lc.moved(lc.PAYOUT_MOVES, lc.PayoutStatus.PAID, lc.PayoutStatus.FAILED)
    with pytest.raises(AssertionError):
        lc.moved(lc.INBOX_MOVES, lc.InboxStatus.APPLIED, lc.InboxStatus.PENDING)


def test_answered_attempts_and_settled_payouts_are_final() -> None:
    assert not lc.ATTEMPT_MOVES[lc.AttemptStatus.SUCCEEDED]
    assert not lc.ATTEMPT_MOVES[lc.AttemptStatus.DECLINED]
    assert not lc.PAYOUT_MOVES[lc.PayoutStatus.PAID]
    assert not lc.KEY_MOVES[lc.KeyStatus.COMPLETED]
    assert lc.OPEN_ATTEMPT == ("pending", "unknown")
    assert lc.OPEN_PAYOUT == ("pending", "unknown")


def _payment_row() -> dict:
    return {
        "id": "pay_1", "merchant_id": "m_1", "order_id": "o_1", "active_order_id": "o_1",
        "amount_minor": 1_000, "currency": "USD", "payment_method": "pm_card_visa",
        "capture_method": "manual", "state": "authorized", "authorized_minor": 1_000,
        "captured_minor": 0, "refunded_minor": 0, "refund_reserved_minor": 0, "fee_minor": 0,
        "disputed_minor": 0, "provider_payment_id": "pi_1", "decline_code": None,
        "metadata": {"a": "b"}, "history_count": 2, "created_at": AT, "updated_at": AT,
        "lines_count": 0, "fee_pending": 0,
    }  # fmt: skip


def test_a_payment_is_built_from_its_row_typed_and_written_back_as_the_same_row() -> None:
    row = _payment_row()
    payment = Payment.from_row(row)
    assert payment.state is PaymentState.AUTHORIZED and payment.fee_pending is False
    assert payment.as_row() == {**row, "fee_pending": False}
    payment.change({"state": "captured", "captured_minor": 1_000})
    assert payment.state is PaymentState.CAPTURED and payment.captured_minor == 1_000
    assert payment.open_to_refund_minor == 1_000


def test_an_attempt_is_built_from_its_row_typed() -> None:
    row = {
        "id": "att_1", "payment_id": "pay_1", "kind": "capture", "status": "unknown",
        "amount_minor": 500, "provider_idempotency_key": "paychaos-att_1", "refund_id": None,
        "idempotency_id": "idk_1", "decline_code": None, "lookup_count": 1,
        "next_lookup_at": AT, "needs_review": False, "created_at": AT, "updated_at": AT,
        "resolved_at": None,
    }  # fmt: skip
    attempt = Attempt.from_row(row)
    assert attempt.kind is CallKind.CAPTURE and attempt.status is lc.AttemptStatus.UNKNOWN
    assert attempt.as_row() == row
    attempt.change({"status": "succeeded"})
    assert attempt.status is lc.AttemptStatus.SUCCEEDED


def test_the_chart_of_accounts_names_and_reads_back_per_owner_accounts() -> None:
    assert Account.MERCHANT_PAYABLE.of("m_1") == "merchant_payable:m_1"
    assert Account.parse("holds:merchant_payable:m_1") == (Account.HOLDS_MERCHANT_PAYABLE, "m_1")
    assert Account.parse("psp_clearing") == (Account.PSP_CLEARING, None)
    assert seller_account("s_1", "available") == "seller_available:s_1"
    assert seller_of("seller_pending:s_1") == ("pending", "s_1")
    for account in PER_OWNER:
        assert Account.parse(account.of("x:y")) == (account, "x:y")
    with pytest.raises(AssertionError):
        Account.PSP_CLEARING.of("m_1")
