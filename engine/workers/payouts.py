"""Scheduled payouts: every interval, each seller's available balance goes to its bank.

Each round's payouts carry idempotency keys made of the seller, the currency and
the round's number (wall time cut into intervals), so a round repeated by a
restarted or a second worker process pays nobody twice: the engine answers the
replay. A call without an answer is left ``unknown`` for the recovery worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.domain.commands import CreatePayout
from engine.domain.errors import InsufficientFunds
from engine.service.driver import Provider, pay_out, pump
from engine.service.engine import PaymentEngine

SELLERS_PER_ROUND_MAX = 1_000


@dataclass(slots=True)
class PayoutRound:
    paid_out: int = 0
    refused: int = 0


class PayoutScheduler:
    def __init__(
        self, engine: PaymentEngine, provider: Provider, interval_s: float, min_minor: int = 1
    ):
        assert interval_s > 0 and min_minor > 0
        self.engine, self.provider = engine, provider
        self.interval_s, self.min_minor = interval_s, min_minor
        self.last_round: int | None = None

    def run_once(self) -> PayoutRound:
        """Pay out every available balance once per interval; nothing between rounds."""
        report = PayoutRound()
        number = int(self.engine.clock.now().timestamp() // self.interval_s)
        if number == self.last_round:
            return report
        self.last_round = number
        for wallet in self.engine.wallets()[:SELLERS_PER_ROUND_MAX]:
            amount = int(wallet["available_minor"])
            if amount < self.min_minor:
                continue
            seller, currency = wallet["owner_id"], wallet["currency"]
            command = CreatePayout(seller, f"scheduled-{seller}-{currency}-{number}", currency,
                                   amount)  # fmt: skip
            try:
                begun = self.engine.begin_payout(command)
            except InsufficientFunds:
                report.refused += 1  # the balance moved since it was read
                continue
            if begun.call is not None:
                pump(pay_out(self.engine, begun), self.provider)
                report.paid_out += 1
        return report
