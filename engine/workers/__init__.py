"""The engine's workers: recovery on a schedule, the outbox relay, the webhook inbox.

Each worker has a ``run_once()`` that does one bounded batch of service steps;
``loop.Worker`` runs them all (and idempotency-key expiry) in turn, every
``interval_s``. They are drivers around the engine's steps, like the simulation's
simpy processes: the engine itself never does I/O.

    recovery.RecoveryWorker   the recovery policy (due attempts, 3DS polls, fees, payouts), pumped
    relay.OutboxRelay         unpublished_events -> publisher -> mark_published
    inbox.InboxProcessor      pending_webhooks -> apply_webhook (DLQ after N failures)
    events.EventCatchUp       the provider's events -> take_webhook (webhooks that never came)
    nats_bus.NatsPublisher    JetStream, Nats-Msg-Id = event id (deduped in the window)
    lease                     one process per database runs the loop; the others stand by
    background.BackgroundWorker  the loop on a thread of the API's process (serve engine)
"""

from __future__ import annotations

from engine.workers.background import BackgroundWorker, WorkerState
from engine.workers.events import CatchUpReport, EventCatchUp
from engine.workers.inbox import InboxProcessor, InboxReport
from engine.workers.lease import Lease, lease_for
from engine.workers.loop import LoopReport, Worker
from engine.workers.recovery import RecoveryReport, RecoveryWorker
from engine.workers.relay import (
    InProcessPublisher,
    OutboxRelay,
    Projection,
    Publisher,
    PublishFailed,
)

__all__ = [
    "BackgroundWorker",
    "CatchUpReport",
    "EventCatchUp",
    "InProcessPublisher",
    "InboxProcessor",
    "InboxReport",
    "Lease",
    "LoopReport",
    "OutboxRelay",
    "Projection",
    "PublishFailed",
    "Publisher",
    "RecoveryReport",
    "RecoveryWorker",
    "Worker",
    "WorkerState",
    "lease_for",
]
