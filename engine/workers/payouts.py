"""Scheduled payouts: every interval, each seller's available balance goes to its bank.

The round is one operation (``payout_round``, a generator in the manner of
``engine.service.driver``): ``PayoutScheduler.run_once`` pumps it with the provider
adapter in production, and the simulated world pumps the same round on its
virtual clock, with its sellers' own asks (``ask``) in place of "the available
balance".

Each round's payouts carry idempotency keys made of the seller, the currency and
the round's number (wall time cut into intervals), so a round repeated by a
restarted or a second worker process pays nobody twice: the engine answers the
replay. A call without an answer is left ``unknown`` for the recovery worker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.domain.commands import CreatePayout
from engine.domain.errors import InsufficientFunds
from engine.service.driver import Operation, Provider, pay_out, pump
from engine.service.engine import PaymentEngine

SELLERS_PER_ROUND_MAX = 1_000
# What a seller asks to be paid out of a wallet row; None: nothing this round.
Ask = Callable[[Mapping[str, Any]], int | None]


@dataclass(slots=True)
class PayoutRound:
    paid_out: int = 0
    refused: int = 0
    # The production paths this round took, by name (the simulation's coverage).
    paths: Counter[str] = field(default_factory=Counter)


def available_balance(min_minor: int) -> Ask:
    """The default ask: the whole available balance, when it reaches ``min_minor``."""

    def ask(wallet: Mapping[str, Any]) -> int | None:
        amount = int(wallet["available_minor"])
        return amount if amount >= min_minor else None

    return ask


def payout_round(
    engine: PaymentEngine, number: int, ask: Ask, report: PayoutRound | None = None
) -> Operation[PayoutRound]:
    """Round ``number``: one payout per wallet that asks for one, each sent and completed.

    ``report`` (filled as it goes): what a round cut short by a crash did.
    """
    report = PayoutRound() if report is None else report
    for wallet in engine.wallets()[:SELLERS_PER_ROUND_MAX]:
        amount = ask(wallet)
        if amount is None:
            continue
        seller, currency = wallet["owner_id"], wallet["currency"]
        command = CreatePayout(seller, f"scheduled-{seller}-{currency}-{number}", currency,
                               amount)  # fmt: skip
        try:
            begun = engine.begin_payout(command)
        except InsufficientFunds:
            report.refused += 1  # the balance moved since it was read, or asked for more
            report.paths["payout beyond the available balance refused"] += 1
            continue
        if begun.call is None:
            continue  # this round's payout was made before (a repeated round)
        done = yield from pay_out(engine, begun)
        report.paid_out += 1
        report.paths[f"payout {done.payout['status']} on the provider's answer"] += 1
    return report


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
        number = int(self.engine.clock.now().timestamp() // self.interval_s)
        if number == self.last_round:
            return PayoutRound()
        self.last_round = number
        round_ = payout_round(self.engine, number, available_balance(self.min_minor))
        return pump(round_, self.provider)
