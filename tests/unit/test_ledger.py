"""Posting rules: two-phase holds, partial capture releases the rest, journals balance."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain import ledger
from engine.domain.ledger import Entry, Journal, Side
from engine.domain.money import Money


def balances(*journals: Journal) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for journal in journals:
        for entry in journal.entries:
            totals[entry.account] += entry.signed_minor()
    return {account: total for account, total in totals.items() if total}


def test_an_unbalanced_journal_cannot_be_built() -> None:
    with pytest.raises(AssertionError):
        Journal("bad", (Entry("a", Side.DEBIT, 5, "USD"), Entry("b", Side.CREDIT, 4, "USD")))


def test_a_journal_balances_per_currency_not_in_total() -> None:
    with pytest.raises(AssertionError):
        Journal("bad", (Entry("a", Side.DEBIT, 5, "USD"), Entry("b", Side.CREDIT, 5, "EUR")))


def test_a_partial_capture_posts_the_part_and_releases_the_whole_hold() -> None:
    held, captured, fee = Money(10_000, "USD"), Money(7_500, "USD"), Money(248, "USD")
    hold = ledger.authorization_hold("m", held)
    capture = ledger.capture("m", held, captured, fee)
    assert balances(hold, capture) == {
        "psp_clearing": 7_500 - 248,
        "merchant_payable:m": -7_500,
        "provider_fees": 248,
    }


def test_a_void_releases_the_hold() -> None:
    held = Money(999, "JPY")
    assert balances(ledger.authorization_hold("m", held), ledger.void("m", held)) == {}


@given(
    amount=st.integers(1, 10**9),
    capture_part=st.floats(0.01, 1.0),
    refund_part=st.floats(0.0, 1.0),
)
def test_money_is_conserved_through_a_lifecycle(
    amount: int, capture_part: float, refund_part: float
) -> None:
    captured = max(1, int(amount * capture_part))
    refunded = int(captured * refund_part)
    held = Money(amount, "KWD")
    journals = [
        ledger.authorization_hold("m", held),
        ledger.capture("m", held, Money(captured, "KWD"), Money(0, "KWD")),
    ]
    if refunded:
        journals.append(ledger.refund("m", Money(refunded, "KWD")))
    totals = balances(*journals)
    assert sum(totals.values()) == 0
    assert totals.get("merchant_payable:m", 0) == -(captured - refunded)
    assert not any(account.startswith("holds:") for account in totals)
