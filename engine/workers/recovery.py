"""Recovery on a schedule: ask the provider what became of open attempts.

The one recovery policy: ``RecoveryWorker.run_once`` pumps it with the provider
adapter in production; the simulated world pumps the same ``recovery_batch``
on its virtual clock (``scenarios/world.py``). The engine decides when an
attempt is due (``due_attempts``: ``next_lookup_at``, moved along
``EngineSettings.recovery_schedule`` by every answer that settles nothing) and
when it needs a person (``needs_review``, after the schedule's last step);
authorizations waiting for the customer (3DS) are due too, polled on the same
schedule for as long as their payment waits, since a lost webhook must not
leave a completed authentication (and its hold on the card) unseen. A request
the provider never received is sent again with the same key.

While the provider adapter's circuit breaker is open (and not yet due for its
trial call) the rest of the batch waits for a later loop: a lookup then would
answer "unknown" without asking anyone, and use up a step of the schedule.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.domain.breaker import CircuitBreaker
from engine.domain.provider import OutcomeStatus, ProviderCall
from engine.service.driver import (
    Operation,
    Provider,
    Recovered,
    learn_fee,
    pump,
    recover_attempt,
    recover_payout,
)
from engine.service.engine import CUSTOMER_TO_ACT, PaymentEngine

log = logging.getLogger("paychaos.worker.recovery")
Check = Callable[[], bool]


@dataclass(slots=True)
class RecoveryReport:
    looked_up: int = 0
    resolved: int = 0
    resent: int = 0
    still_unknown: int = 0
    still_waiting: int = 0  # 3DS polls: the customer has not acted yet
    deferred: int = 0
    fees_learned: int = 0
    # The production paths this batch took, by name (the simulation's coverage).
    paths: Counter[str] = field(default_factory=Counter)


def provider_known_away(provider: Provider) -> bool:
    """An open circuit that lets no trial call through yet: every call would fail fast."""
    breaker = getattr(provider, "breaker", None)
    return isinstance(breaker, CircuitBreaker) and breaker.away()


def never() -> bool:
    return False


def recovery_batch(
    engine: PaymentEngine,
    batch_max: int,
    stopping: Check = never,
    away: Check = never,
    report: RecoveryReport | None = None,
) -> Operation[RecoveryReport]:
    """One batch: due attempts, then fees to learn, then payouts without an answer.

    ``stopping()`` (shutdown) and ``away()`` (the provider known away) are asked
    before each provider request. ``report`` (filled as it goes): what a batch cut
    short by a crash did.
    """
    assert batch_max > 0
    report = RecoveryReport() if report is None else report
    calls = engine.due_attempts(batch_max)
    for index, call in enumerate(calls):
        if stopping():
            return report
        if away():
            report.deferred = len(calls) - index
            report.paths["recovery deferred: circuit open"] += 1
            return report
        _count(report, call, (yield from recover_attempt(engine, call)))
    for fee in engine.fee_lookups(batch_max):
        if stopping() or away():
            return report
        if (yield from learn_fee(engine, fee)):
            report.fees_learned += 1
            report.paths["provider fee of a capture learned by webhook: asked for"] += 1
    for payout in engine.due_payouts(batch_max):
        if stopping() or away():
            return report
        done, resent = yield from recover_payout(engine, payout)
        report.resent += resent
        report.resolved += done.status_code == 200
        if resent:
            report.paths["payout never reached the provider: sent again with its key"] += 1
        if done.status_code == 200:
            report.paths[f"payout {done.payout['status']} resolved by lookup"] += 1
    return report


def _count(report: RecoveryReport, call: ProviderCall, recovered: Recovered) -> None:
    status = recovered.outcome.status
    waiting = call.awaiting_action and status in CUSTOMER_TO_ACT
    report.looked_up += 1
    report.resent += recovered.resent
    if status is OutcomeStatus.UNKNOWN:
        report.still_unknown += 1
    elif waiting:
        report.still_waiting += 1
    elif recovered.result.status_code != 202:
        report.resolved += 1
    if recovered.resent:
        report.paths[f"{call.kind} never reached the provider: sent again with its key"] += 1
    elif call.awaiting_action and not waiting:
        report.paths[f"3DS outcome {status} found by polling the provider"] += 1
    elif not call.awaiting_action and status is not OutcomeStatus.UNKNOWN:
        report.paths[f"{call.kind} {status} resolved by lookup"] += 1
    log.info(
        "recovery lookup",
        extra={"attempt_id": call.attempt_id, "payment_id": call.payment_id,
               "outcome": str(status)},
    )  # fmt: skip


class RecoveryWorker:
    """The policy pumped with the provider adapter: what ``serve`` and ``serve worker`` run."""

    def __init__(self, engine: PaymentEngine, provider: Provider, batch_max: int = 50):
        assert batch_max > 0
        self.engine = engine
        self.provider = provider
        self.batch_max = batch_max

    def away(self) -> bool:
        return provider_known_away(self.provider)

    def run_once(self, stopping: Check = never) -> RecoveryReport:
        """One batch of due work; ``stopping()`` is asked between provider requests."""
        batch = recovery_batch(self.engine, self.batch_max, stopping, self.away)
        return pump(batch, self.provider)
