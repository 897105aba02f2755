"""The outbox relay: at least once from the outbox to a bus, deduped by event id downstream.

``run_once`` reads a batch of unpublished events (outbox order), publishes them
and only then marks them published. A crash in between publishes them again:
JetStream drops the copy (``Nats-Msg-Id`` is the event id, inside its duplicate
window) and every consumer dedupes by event id anyway (``Projection``).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.domain.errors import PublishFailed as PublishFailed  # re-exported: raised here
from engine.service.engine import PaymentEngine
from engine.service.views import OutboxEvent


class Publisher(Protocol):
    def publish(self, events: Sequence[OutboxEvent]) -> int:
        """Publish in order; return how many the bus called duplicates."""
        ...

    def close(self) -> None: ...


def message_body(event: OutboxEvent) -> bytes:
    return json.dumps(
        {"event_id": event.event_id, "type": event.type, "payment_id": event.payment_id,
         "history_seq": event.history_seq, "payload": event.payload},
        sort_keys=True, default=str,
    ).encode()  # fmt: skip


# What a long-running process's own consumer remembers (the relay republishes one batch).
IN_PROCESS_WINDOW_MAX = 100_000


@dataclass(slots=True)
class Projection:
    """An idempotent consumer: each payment's latest state, every event taken once.

    ``seen`` is in memory here; a real consumer keeps it in its own database, in
    the transaction that updates its projection. With ``window_max`` (a server's
    in-process consumer) it remembers only the latest event ids and payments, as
    a bus's duplicate window does: the relay republishes only its last batch.
    """

    window_max: int | None = None
    seen: set[str] = field(default_factory=set)
    states: dict[str, tuple[int, str]] = field(default_factory=dict)
    duplicates: int = 0
    _order: deque[str] = field(default_factory=deque)

    def consume(self, event_id: str, payload: Mapping[str, Any]) -> bool:
        """Take one event; False when it was seen before."""
        if event_id in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(event_id)
        payment_id, seq = str(payload["payment_id"]), int(payload["seq"] or 0)
        current = self.states.get(payment_id)
        if current is None or current[0] < seq:  # an older event never wins
            self.states.pop(payment_id, None)  # re-inserted last: the newest
            self.states[payment_id] = (seq, str(payload["to_state"]))
        if self.window_max is not None:
            self._forget_oldest(event_id, self.window_max)
        return True

    def _forget_oldest(self, event_id: str, window_max: int) -> None:
        self._order.append(event_id)
        while len(self._order) > window_max:
            self.seen.discard(self._order.popleft())
        while len(self.states) > window_max:
            del self.states[next(iter(self.states))]

    def consume_message(self, body: bytes) -> bool:
        message = json.loads(body)
        return self.consume(str(message["event_id"]), message["payload"])

    def state_of(self, payment_id: str) -> str | None:
        current = self.states.get(payment_id)
        return current[1] if current else None


class InProcessPublisher:
    """The bus when there is none: hands each event to a consumer in this process."""

    def __init__(self, consumer: Projection | None = None):
        self.consumer = consumer if consumer is not None else Projection(IN_PROCESS_WINDOW_MAX)

    def publish(self, events: Sequence[OutboxEvent]) -> int:
        return sum(not self.consumer.consume(e.event_id, e.payload) for e in events)

    def close(self) -> None:
        pass


@dataclass(slots=True)
class RelayReport:
    published: int = 0
    duplicates: int = 0


class OutboxRelay:
    def __init__(self, engine: PaymentEngine, publisher: Publisher, batch_max: int = 100):
        assert batch_max > 0
        self.engine = engine
        self.publisher = publisher
        self.batch_max = batch_max

    def run_once(self) -> RelayReport:
        events = self.engine.unpublished_events(self.batch_max)
        if not events:
            return RelayReport()
        duplicates = self.publisher.publish(events)
        self.engine.mark_published(events)
        return RelayReport(len(events), duplicates)
