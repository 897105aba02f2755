"""Recovery on a schedule: ask the provider what became of open attempts.

The engine decides when an attempt is due (``next_lookup_at``, moved along
``EngineSettings.recovery_schedule`` by every "unknown") and when it needs a
person (``needs_review``); this worker only asks and hands over the answers.
A request the provider never received is sent again with the same key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


class RecoveryWorker:
    def __init__(self, engine: PaymentEngine, provider: Provider, batch_max: int = 50):
        assert batch_max > 0
        self.engine = engine
        self.provider = provider
        self.batch_max = batch_max

    def run_once(self) -> RecoveryReport:
        report = RecoveryReport()
        for call in self.engine.due_attempts(self.batch_max):
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
        return report
