"""Recovery on a schedule: ask the provider what became of open attempts.

The engine decides when an attempt is due (``next_lookup_at``, moved along
``EngineSettings.recovery_schedule`` by every "unknown") and when it needs a
person (``needs_review``); this worker only asks and hands over the answers.
A request the provider never received is sent again with the same key.

While the provider adapter's circuit breaker is open (and not yet due for its
trial call) the rest of the batch waits for a later loop: a lookup then would
answer "unknown" without asking anyone, and use up a step of the schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from engine.adapters.psp_http import CircuitBreaker, CircuitState
from engine.domain.provider import OutcomeStatus
from engine.service.driver import Provider
from engine.service.engine import PaymentEngine

log = logging.getLogger("paychaos.worker.recovery")


@dataclass(slots=True)
class RecoveryReport:
    looked_up: int = 0
    resolved: int = 0
    resent: int = 0
    still_unknown: int = 0
    deferred: int = 0
    fees_learned: int = 0


def provider_known_away(provider: Provider) -> bool:
    """An open circuit that lets no trial call through yet: every call would fail fast."""
    breaker = getattr(provider, "breaker", None)
    if not isinstance(breaker, CircuitBreaker) or breaker.state is not CircuitState.OPEN:
        return False
    return breaker.clock() - breaker.opened_at_s < breaker.open_s


class RecoveryWorker:
    def __init__(self, engine: PaymentEngine, provider: Provider, batch_max: int = 50):
        assert batch_max > 0
        self.engine = engine
        self.provider = provider
        self.batch_max = batch_max

    def run_once(self, stopping: Callable[[], bool] = lambda: False) -> RecoveryReport:
        """One batch of due attempts; ``stopping()`` is asked between lookups."""
        report = RecoveryReport()
        calls = self.engine.due_attempts(self.batch_max)
        for index, call in enumerate(calls):
            if stopping():
                break
            if provider_known_away(self.provider):
                report.deferred = len(calls) - index
                break
            outcome = self.provider.lookup(call)
            report.looked_up += 1
            result, resend = self.engine.resolve_attempt(call.attempt_id, outcome)
            if resend is not None:
                report.resent += 1
                outcome = self.provider.call(resend)
                result, _ = self.engine.resolve_attempt(call.attempt_id, outcome)
            if outcome.status is OutcomeStatus.UNKNOWN:
                report.still_unknown += 1
            elif result.status_code != 202:
                report.resolved += 1
            log.info(
                "recovery lookup",
                extra={"attempt_id": call.attempt_id, "payment_id": call.payment_id,
                       "outcome": str(outcome.status)},
            )  # fmt: skip
        if not stopping() and not provider_known_away(self.provider):
            report.fees_learned = self.learn_fees(stopping)
        if not stopping() and not provider_known_away(self.provider):
            report.resolved += self.recover_payouts(stopping)
        return report

    def recover_payouts(self, stopping: Callable[[], bool]) -> int:
        """Payouts without an answer: looked up by key; one the provider never saw, resent."""
        resolved = 0
        for call in self.engine.due_payouts(self.batch_max):
            if stopping() or provider_known_away(self.provider):
                break
            outcome = self.provider.lookup(call)
            if outcome.status is OutcomeStatus.NOT_FOUND:
                outcome = self.provider.call(call)
            done = self.engine.complete_payout(call.attempt_id, outcome, looked_up=True)
            resolved += done.status_code == 200
        return resolved

    def learn_fees(self, stopping: Callable[[], bool]) -> int:
        """Captures learned by webhook carry no fee: ask the provider (a read) for each."""
        learned = 0
        for call in self.engine.fee_lookups(self.batch_max):
            if stopping() or provider_known_away(self.provider):
                break
            learned += self.engine.complete_fee(call.payment_id, self.provider.call(call))
        return learned
