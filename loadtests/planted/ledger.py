"""Planted defects of blind spot 1 (issue 17): wrong postings that sums cannot see.

Each journal below still balances, and each keeps the sum the old I9 compared
(``psp_clearing`` + ``payouts_in_transit``) right: only a per-account reference (I9)
or the postings table per journal kind (I1) sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from engine.domain import ledger
from engine.domain.entities import Payment
from engine.domain.money import Money
from engine.service.engine import PaymentEngine
from loadtests.planted.catalogue import Defect, Patcher


def payout_landing_debits_clearing(mp: Patcher) -> None:
    """A landed payout is booked the wrong way round between the two accounts the
    provider's balance is split over: clearing debited, payouts in transit credited."""

    def landed(amount: Money) -> ledger.Journal:
        entries = ledger._pair(ledger.PSP_CLEARING, ledger.PAYOUTS_IN_TRANSIT, amount)
        return ledger.Journal("payout_paid", tuple(entries))

    mp.setattr(ledger, "payout_paid", landed)


def capture_fee_charged_to_the_merchant(mp: Patcher) -> None:
    """The provider's fee on a capture is taken from the merchant's payable instead of
    being booked as the platform's cost (``provider_fees``)."""
    capture = ledger.capture

    def charged(
        merchant_id: str, held: Money | None, captured: Money, fee: Money
    ) -> ledger.Journal:
        journal = capture(merchant_id, held, captured, Money(0, captured.currency))
        fee_entries = ledger._pair(ledger.merchant_payable(merchant_id), ledger.PSP_CLEARING, fee)
        return ledger.Journal(journal.kind, journal.entries + tuple(fee_entries))

    mp.setattr(ledger, "capture", charged)


@contextmanager
def _swapped(name: str, replacement: Callable[..., ledger.Journal]) -> Iterator[None]:
    kept = getattr(ledger, name)
    setattr(ledger, name, replacement)
    try:
        yield
    finally:
        setattr(ledger, name, kept)


def chargeback_charged_to_the_merchant(mp: Patcher) -> None:
    """A plain payment's chargeback (and its reinstatement on a win) is booked on the
    merchant's payable instead of the platform's disputes account."""
    opened, won = PaymentEngine._open_dispute, PaymentEngine._win_dispute

    def on_payable(p: Payment, kind: str, reverse: bool) -> Callable[[Money], ledger.Journal]:
        def journal(money: Money) -> ledger.Journal:
            payable = ledger.merchant_payable(p.merchant_id)
            clearing = ledger.PSP_CLEARING
            debit, credit = (clearing, payable) if reverse else (payable, clearing)
            return ledger.Journal(kind, tuple(ledger._pair(debit, credit, money)))

        return journal

    def open_on_payable(self: PaymentEngine, s: Any, p: Payment, event: Any, amount: int) -> None:
        with _swapped("dispute_withdrawal", on_payable(p, "dispute_withdrawal", False)):
            opened(self, s, p, event, amount)

    def win_on_payable(self: PaymentEngine, s: Any, p: Payment, event: Any) -> None:
        with _swapped("dispute_reinstatement", on_payable(p, "dispute_reinstatement", True)):
            won(self, s, p, event)

    mp.setattr(PaymentEngine, "_open_dispute", open_on_payable)
    mp.setattr(PaymentEngine, "_win_dispute", win_on_payable)


BLIND_SPOT = "per-account conservation"
DEFECTS: list[Defect] = [
    Defect(payout_landing_debits_clearing, "payout-failure", 1_200.0,
           frozenset({"I1", "I9"}), blind_spot=BLIND_SPOT),
    Defect(capture_fee_charged_to_the_merchant, "happy-path", 120.0,
           frozenset({"I1", "I9"}), blind_spot=BLIND_SPOT),
    Defect(chargeback_charged_to_the_merchant, "dispute-storm", 300.0,
           frozenset({"I1", "I9"}), blind_spot=BLIND_SPOT),
]  # fmt: skip
