"""The worker loop: recovery, outbox relay, webhook inbox and key expiry, every interval.

Bounded: each task does one batch per loop, ``loops_max`` bounds the loop (for
tests), and ``stop`` ends it between tasks. Transient trouble (the database or
the bus away, contention) is logged and retried next loop; anything else is a
defect and stops the worker, to be restarted by its supervisor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.domain.errors import Conflict, StoreUnavailable
from engine.service.engine import PaymentEngine
from engine.workers.inbox import InboxProcessor
from engine.workers.recovery import RecoveryWorker
from engine.workers.relay import OutboxRelay, PublishFailed

log = logging.getLogger("paychaos.worker")
TRANSIENT = (StoreUnavailable, PublishFailed, Conflict)


@dataclass(slots=True)
class LoopReport:
    loops: int = 0
    resolved: int = 0
    still_unknown: int = 0
    published: int = 0
    webhooks_applied: int = 0
    webhooks_dead: int = 0
    keys_expired: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Worker:
    def __init__(
        self,
        engine: PaymentEngine,
        recovery: RecoveryWorker | None,
        relay: OutboxRelay,
        inbox: InboxProcessor,
    ):
        self.engine = engine
        self.recovery = recovery
        self.relay = relay
        self.inbox = inbox
        self.report = LoopReport()

    def _guarded(self, name: str, task: Callable[[], Any]) -> Any:
        try:
            return task()
        except TRANSIENT as exc:
            self.report.errors[name] = self.report.errors.get(name, 0) + 1
            log.warning("%s skipped this loop: %s", name, exc.code, extra={"task": name})
            return None

    def run_once(self) -> LoopReport:
        r = self.report
        if self.recovery is not None:
            recovered = self._guarded("recovery", self.recovery.run_once)
            if recovered is not None:
                r.resolved += recovered.resolved
                r.still_unknown += recovered.still_unknown
        relayed = self._guarded("relay", self.relay.run_once)
        r.published += relayed.published if relayed is not None else 0
        inbox = self._guarded("inbox", self.inbox.run_once)
        if inbox is not None:
            r.webhooks_applied += inbox.applied
            r.webhooks_dead += inbox.dead
        r.keys_expired += self._guarded("expiry", self.engine.expire_idempotency_keys) or 0
        r.loops += 1
        return r

    def run(
        self, interval_s: float, loops_max: int | None = None, stop: threading.Event | None = None
    ) -> LoopReport:
        """Loop until ``stop`` is set or ``loops_max`` loops ran; wait ``interval_s`` between."""
        assert interval_s >= 0 and (loops_max is None or loops_max > 0)
        stop = stop or threading.Event()
        while not stop.is_set():
            self.run_once()
            if loops_max is not None and self.report.loops >= loops_max:
                break
            stop.wait(interval_s)
        return self.report
