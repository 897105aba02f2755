"""The worker loop: recovery, outbox relay, webhook inbox, key expiry and (when set up)
the event catch-up, reconciliation and payouts, every interval.

Bounded: each task does one batch per loop, ``loops_max`` bounds the loop (for
tests), and ``stop`` ends it between tasks. Transient trouble (the database or
the bus away, contention) is logged and retried next loop; anything else is a
defect and stops the worker, to be restarted by its supervisor.

With a ``lease`` (``engine.workers.lease``), a loop runs the tasks only while
this process holds it, and stands by otherwise: several processes on one
database (API processes with embedded workers, ``paychaos serve worker``) do
the work once between them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.domain.errors import Conflict, StoreUnavailable
from engine.service.driver import Provider
from engine.service.engine import PaymentEngine
from engine.workers.events import EventCatchUp
from engine.workers.inbox import InboxProcessor
from engine.workers.lease import Lease
from engine.workers.payouts import PayoutScheduler
from engine.workers.reconciliation import ReconciliationWorker, ReportUnavailable
from engine.workers.recovery import RecoveryWorker
from engine.workers.relay import OutboxRelay, Publisher, PublishFailed

log = logging.getLogger("paychaos.worker")
TRANSIENT = (StoreUnavailable, PublishFailed, Conflict, ReportUnavailable)


@dataclass(slots=True)
class LoopReport:
    """Totals since the worker started (read by ``/metrics`` from another thread)."""

    loops: int = 0
    standby_loops: int = 0
    holds_lease: bool = False
    looked_up: int = 0
    resolved: int = 0
    resent: int = 0
    still_unknown: int = 0
    still_waiting: int = 0
    deferred: int = 0
    published: int = 0
    webhooks_applied: int = 0
    webhooks_failed: int = 0
    webhooks_dead: int = 0
    keys_expired: int = 0
    windows_reconciled: int = 0
    recon_exceptions_new: int = 0
    payouts_made: int = 0
    events_listed: int = 0  # the event catch-up: provider events listed,
    events_caught_up: int = 0  # ... taken as new (their webhooks never came),
    event_passes_failed: int = 0  # ... and passes a failed listing ended
    errors: dict[str, int] = field(default_factory=dict)
    last_loop_at: datetime | None = None
    last_loop_s: float = 0.0


class Worker:
    def __init__(
        self,
        engine: PaymentEngine,
        recovery: RecoveryWorker | None,
        relay: OutboxRelay,
        inbox: InboxProcessor,
        monotonic: Callable[[], float] = time.monotonic,
        reconciliation: ReconciliationWorker | None = None,
        payouts: PayoutScheduler | None = None,
        catch_up: EventCatchUp | None = None,
    ):
        self.engine = engine
        self.payouts = payouts
        self.catch_up = catch_up
        self.recovery = recovery
        self.relay = relay
        self.inbox = inbox
        self.reconciliation = reconciliation
        self.monotonic = monotonic
        self.report = LoopReport()

    @classmethod
    def assemble(
        cls,
        engine: PaymentEngine,
        provider: Provider,
        publisher: Publisher,
        reconciliation: ReconciliationWorker | None = None,
        catch_up: EventCatchUp | None = None,
    ) -> Worker:
        """Every task, with its default batch size: what ``serve`` and ``serve worker`` run."""
        return cls(
            engine, RecoveryWorker(engine, provider), OutboxRelay(engine, publisher),
            InboxProcessor(engine), reconciliation=reconciliation, catch_up=catch_up,
        )  # fmt: skip

    def _guarded(self, name: str, task: Callable[[], Any]) -> Any:
        try:
            return task()
        except TRANSIENT as exc:
            self.report.errors[name] = self.report.errors.get(name, 0) + 1
            log.warning("%s skipped this loop: %s", name, exc.code, extra={"task": name})
            return None

    def run_once(self, stop: threading.Event | None = None) -> LoopReport:
        """One batch of each task; ``stop`` set in the middle skips the rest of this loop."""
        stopping = stop.is_set if stop is not None else lambda: False
        r = self.report
        started_s = self.monotonic()
        recovery = self.recovery
        if recovery is not None:
            recovered = self._guarded("recovery", lambda: recovery.run_once(stopping))
            if recovered is not None:
                r.looked_up += recovered.looked_up
                r.resolved += recovered.resolved
                r.resent += recovered.resent
                r.still_unknown += recovered.still_unknown
                r.still_waiting += recovered.still_waiting
                r.deferred += recovered.deferred
        if not stopping():
            relayed = self._guarded("relay", self.relay.run_once)
            r.published += relayed.published if relayed is not None else 0
        if not stopping():
            inbox = self._guarded("inbox", self.inbox.run_once)
            if inbox is not None:
                r.webhooks_applied += inbox.applied
                r.webhooks_failed += inbox.failed
                r.webhooks_dead += inbox.dead
        if not stopping():
            r.keys_expired += self._guarded("expiry", self.engine.expire_idempotency_keys) or 0
        catch_up = self.catch_up
        if catch_up is not None and not stopping():
            caught = self._guarded("events", lambda: catch_up.run_once(stopping))
            if caught is not None:
                r.events_listed += caught.listed
                r.events_caught_up += caught.taken
                r.event_passes_failed += caught.failed
        reconciliation = self.reconciliation
        if reconciliation is not None and not stopping():
            recon = self._guarded("reconciliation", lambda: reconciliation.run_once(stopping))
            if recon is not None:
                r.windows_reconciled += recon.windows
                r.recon_exceptions_new += recon.exceptions_new
                if recon.unavailable:  # the report not ready: the window waits, counted
                    r.errors["reconciliation"] = r.errors.get("reconciliation", 0) + 1
        payouts = self.payouts
        if payouts is not None and not stopping():
            round_ = self._guarded("payouts", payouts.run_once)
            r.payouts_made += round_.paid_out if round_ is not None else 0
        r.loops += 1
        r.last_loop_s = self.monotonic() - started_s
        r.last_loop_at = self.engine.clock.now()
        return r

    def run(
        self,
        interval_s: float,
        loops_max: int | None = None,
        stop: threading.Event | None = None,
        lease: Lease | None = None,
    ) -> LoopReport:
        """Loop until ``stop`` is set or ``loops_max`` loops ran (standing by counts);
        wait ``interval_s`` between loops."""
        assert interval_s >= 0 and (loops_max is None or loops_max > 0)
        stop = stop or threading.Event()
        was_held: bool | None = None
        while not stop.is_set():
            held = lease is None or lease.try_acquire()
            if lease is not None and held != was_held:
                log.info("this process runs the workers" if held
                         else "another process runs the workers: standing by")  # fmt: skip
            was_held = self.report.holds_lease = held
            if held:
                self.run_once(stop)
            else:
                self.report.standby_loops += 1
            if loops_max is not None and self.report.loops + self.report.standby_loops >= loops_max:
                break
            stop.wait(interval_s)
        return self.report
