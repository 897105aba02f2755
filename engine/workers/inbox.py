"""Webhook inbox processing: apply stored deliveries, dead-letter the ones that keep failing.

A delivery is stored (``PaymentEngine.store_webhook``) before the provider gets
its 2xx; this worker applies pending rows one transaction each. A failure is
counted on the row with its (redacted, truncated) error; after
``EngineSettings.webhook_attempts_max`` the row is ``dead`` until someone runs
``paychaos dlq retry EVENT_ID``. Applying is exactly once: the row and the
provider-event record commit with the payment's change, or not at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.adapters.stripe_dialect import event_from_stripe
from engine.service.engine import PaymentEngine, Translate

log = logging.getLogger("paychaos.worker.inbox")


@dataclass(slots=True)
class InboxReport:
    applied: int = 0
    failed: int = 0
    dead: int = 0


class InboxProcessor:
    def __init__(
        self, engine: PaymentEngine, translate: Translate = event_from_stripe, batch_max: int = 50
    ):
        assert batch_max > 0
        self.engine = engine
        self.translate = translate
        self.batch_max = batch_max

    def run_once(self) -> InboxReport:
        report = InboxReport()
        for inbox_id in self.engine.pending_webhooks(self.batch_max):
            self.apply_one(inbox_id, report)
        return report

    def apply_one(self, inbox_id: int, report: InboxReport) -> None:
        """Apply one pending row (one transaction), counted in ``report``."""
        result = self.engine.apply_webhook(inbox_id, self.translate)
        if result.status == "applied":
            report.applied += 1
        elif result.status in {"pending", "dead"}:
            report.failed += 1
            report.dead += result.status == "dead"
            log.warning(
                "webhook failed",
                extra={"provider_event_id": result.provider_event_id,
                       "status": result.status, "error": result.error},
            )  # fmt: skip


class SafetyNetInbox(InboxProcessor):
    """The inbox pass of workers that share a process with the API, which keeps and
    applies each delivery in one transaction: only deliveries whose application failed
    are left, so a pass every ``every_s`` is enough, and passes on every loop only
    raced the API for the same rows."""

    def __init__(
        self,
        engine: PaymentEngine,
        every_s: float,
        monotonic: Callable[[], float] = time.monotonic,
        translate: Translate = event_from_stripe,
        batch_max: int = 50,
    ):
        super().__init__(engine, translate, batch_max)
        assert every_s >= 0
        self.every_s = every_s
        self.monotonic = monotonic
        self._last_s: float | None = None

    def run_once(self) -> InboxReport:
        now_s = self.monotonic()
        if self._last_s is not None and now_s - self._last_s < self.every_s:
            return InboxReport()
        self._last_s = now_s
        return super().run_once()
