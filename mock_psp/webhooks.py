"""Webhook signing and the pure delivery scheduler.

Signing is Stripe's: ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, f"{t}.{payload}")>``
where ``payload`` is the exact JSON bytes sent. A driver (simpy process or asyncio
task) loops::

    for delivery in scheduler.due_deliveries(now_s):
        status = post(delivery.url, delivery.payload, delivery.headers)  # None on timeout
        scheduler.ack(delivery, status, now_s)
    sleep until scheduler.next_due_at_s()

Faults are decided from the plan's webhook section with the scheduler's own seeded
stream: per event and endpoint at enqueue time (permanent loss, duplicate, delay,
reordering, stale replay, forged copy, old-timestamp replay) and per attempt at send
time (drop one attempt, which the provider retries with exponential backoff for up to
``give_up_after_s`` and at most ``attempts_max`` attempts). Only original deliveries
are retried; the extra copies are one-shot, as an attacker's or a network's would be.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import orjson

from mock_psp.faultlog import FaultKind, FaultLog
from mock_psp.faults import FaultPlanConfig, WebhookRetrySpec, name_matches, window_active
from mock_psp.records import Event, WebhookEndpoint

SCHEDULED_MAX = 1_000_000
DUE_BATCH_MAX = 10_000
DUPLICATE_SPREAD_S = 5.0
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


def event_payload(event: Event, indent: int | None = 2) -> bytes:
    """The bytes that are signed and sent; Stripe sends JSON indented by 2.

    ``indent=None`` sends compact JSON, the same document in fewer bytes, for
    simulations. Both are orjson's; other indents, rare, are json's.
    """
    if indent is None:
        return orjson.dumps(event.to_json())
    if indent == 2:
        return orjson.dumps(event.to_json(), option=orjson.OPT_INDENT_2)
    return json.dumps(event.to_json(), indent=indent).encode("utf-8")


def compute_signature(payload: bytes, secret: str, timestamp_s: int) -> str:
    signed = f"{timestamp_s}.".encode() + payload
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def signature_header(payload: bytes, secret: str, timestamp_s: int) -> str:
    return f"t={timestamp_s},v1={compute_signature(payload, secret, timestamp_s)}"


def verify_signature(
    payload: bytes, header: str, secret: str, now_s: float, tolerance_s: float = 300.0
) -> bool:
    """What a receiver does (as ``stripe.Webhook.construct_event``): used by tests and oracles."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp_s = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = compute_signature(payload, secret, timestamp_s)
    if not hmac.compare_digest(expected, parts.get("v1", "")):
        return False
    return timestamp_s >= now_s - tolerance_s


class DeliveryKind(StrEnum):
    ORIGINAL = "original"  # the real delivery; retried until a 2xx or giving up
    DUPLICATE = "duplicate"
    STALE_REPLAY = "stale_replay"  # a genuine old event arriving after newer ones
    FORGED = "forged"  # signed with a wrong secret: must be rejected
    OLD_TIMESTAMP = "old_timestamp"  # genuine, but signed long ago: must be rejected


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: str
    endpoint_id: str
    url: str
    event_id: str
    event_type: str
    attempt: int
    kind: DeliveryKind
    payload: bytes
    headers: dict[str, str]
    signed_at_s: int
    due_at_s: float
    first_attempt_at_s: float

    @property
    def should_be_accepted(self) -> bool:
        return self.kind not in (DeliveryKind.FORGED, DeliveryKind.OLD_TIMESTAMP)


@dataclass(frozen=True, slots=True)
class _Scheduled:
    due_at_s: float
    endpoint_id: str
    event_id: str
    kind: DeliveryKind
    attempt: int
    first_attempt_at_s: float


class DeliveryScheduler:
    __slots__ = (
        "_config",
        "_endpoints",
        "_heap",
        "_in_flight",
        "_log",
        "_payload_indent",
        "_payload_refs",
        "_payloads",
        "_rng",
        "_seq",
        "_started_at_s",
        "stats",
    )

    def __init__(
        self,
        endpoints: Mapping[str, WebhookEndpoint],
        config: FaultPlanConfig,
        rng: random.Random,
        log: FaultLog,
        started_at_s: float,
        payload_indent: int | None = 2,
    ) -> None:
        self._endpoints = endpoints
        self._payload_indent = payload_indent
        self._config = config
        self._rng = rng
        self._log = log
        self._started_at_s = started_at_s
        self._heap: list[tuple[float, int, _Scheduled]] = []
        self._seq = 0
        self._payloads: dict[str, tuple[str, bytes]] = {}  # event id -> (type, bytes)
        # Scheduled items and unacknowledged deliveries of each event: its payload is
        # dropped when the last one is done, so memory follows the queue, not history.
        self._payload_refs: Counter[str] = Counter()
        self._in_flight: dict[str, Delivery] = {}
        self.stats: Counter[str] = Counter()

    def reconfigure(self, config: FaultPlanConfig) -> None:
        self._config = config

    def pending_count(self) -> int:
        return len(self._heap)

    def in_flight_count(self) -> int:
        return len(self._in_flight)

    def next_due_at_s(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def _push(self, item: _Scheduled) -> None:
        if len(self._heap) >= SCHEDULED_MAX:
            self.stats["overflow_dropped"] += 1
            return
        self._seq += 1
        heapq.heappush(self._heap, (item.due_at_s, self._seq, item))
        self._payload_refs[item.event_id] += 1

    def _release(self, event_id: str) -> None:
        self._payload_refs[event_id] -= 1
        if self._payload_refs[event_id] <= 0:
            del self._payload_refs[event_id]
            self._payloads.pop(event_id, None)

    def enqueue(self, event: Event, now_s: float) -> int:
        """Schedule an event for every endpoint that wants it; returns how many want it."""
        wanted = [ep for ep in self._endpoints.values() if ep.wants(event.type)]
        if not wanted:
            return 0
        self._payloads[event.id] = (event.type, event_payload(event, self._payload_indent))
        for endpoint in wanted:
            self._plan_event(event, endpoint.id, now_s)
        if not self._payload_refs[event.id]:  # lost on every endpoint: nothing will send it
            self._release_unscheduled(event.id)
        return len(wanted)

    def _release_unscheduled(self, event_id: str) -> None:
        self._payload_refs.pop(event_id, None)
        self._payloads.pop(event_id, None)

    def _plan_event(self, event: Event, endpoint_id: str, now_s: float) -> None:
        spec = self._config.webhooks
        # A fixed number of draws per (event, endpoint): decisions stay aligned across configs.
        draws = [self._rng.random() for _ in range(9)]
        applies = name_matches(spec.event_types, event.type) and window_active(
            spec.windows, now_s - self._started_at_s
        )
        target = f"{event.id}@{endpoint_id}"
        if applies and draws[0] < spec.permanent_loss_rate:
            self._log.record(now_s, FaultKind.WEBHOOK_PERMANENT_LOSS, target, event.type)
            return
        due_s = now_s
        if applies and draws[1] < spec.delay_rate:
            due_s += draws[2] * spec.delay_max_s
            self._log.record(now_s, FaultKind.WEBHOOK_DELAY, target, f"{due_s - now_s:.3f}s")
        if applies and spec.reorder_window_s > 0 and draws[3] < spec.reorder_rate:
            due_s += draws[4] * spec.reorder_window_s
            self._log.record(now_s, FaultKind.WEBHOOK_REORDER, target, f"held {due_s - now_s:.3f}s")
        original = _Scheduled(due_s, endpoint_id, event.id, DeliveryKind.ORIGINAL, 1, due_s)
        self._push(original)
        if not applies:
            return
        extras = (
            (
                draws[5] < spec.duplicate_rate,
                DeliveryKind.DUPLICATE,
                FaultKind.WEBHOOK_DUPLICATE,
                due_s + draws[2] * DUPLICATE_SPREAD_S,
            ),
            (
                draws[6] < spec.stale_replay_rate,
                DeliveryKind.STALE_REPLAY,
                FaultKind.WEBHOOK_STALE_REPLAY,
                due_s + spec.stale_replay_after_s,
            ),
            (draws[7] < spec.forged_rate, DeliveryKind.FORGED, FaultKind.WEBHOOK_FORGED, due_s),
            (
                draws[8] < spec.old_timestamp_rate,
                DeliveryKind.OLD_TIMESTAMP,
                FaultKind.WEBHOOK_OLD_TIMESTAMP,
                due_s,
            ),
        )
        for fired, kind, fault, at_s in extras:
            if fired:
                self._log.record(now_s, fault, target, f"due {at_s - now_s:.3f}s")
                self._push(_Scheduled(at_s, endpoint_id, event.id, kind, 1, at_s))

    def due_deliveries(self, now_s: float, limit: int = DUE_BATCH_MAX) -> list[Delivery]:
        """Deliveries to send now, in due order; dropped attempts are rescheduled silently."""
        assert 0 < limit <= DUE_BATCH_MAX
        ready: list[Delivery] = []
        while self._heap and self._heap[0][0] <= now_s and len(ready) < limit:
            _, seq, item = heapq.heappop(self._heap)
            endpoint = self._endpoints.get(item.endpoint_id)
            if endpoint is None or not endpoint.enabled:
                self.stats["endpoint_gone"] += 1
                self._release(item.event_id)
                continue
            if item.kind is DeliveryKind.ORIGINAL and self._drop_attempt(item, now_s):
                self._release(item.event_id)  # after the retry (if any) was scheduled
                continue
            delivery = self._build(item, seq, endpoint, now_s)  # in flight until its ack
            self._in_flight[delivery.delivery_id] = delivery
            ready.append(delivery)
        return ready

    def _drop_attempt(self, item: _Scheduled, now_s: float) -> bool:
        spec = self._config.webhooks
        event_type = self._payloads[item.event_id][0]
        draw = self._rng.random()
        applies = name_matches(spec.event_types, event_type) and window_active(
            spec.windows, now_s - self._started_at_s
        )
        if not (applies and draw < spec.drop_attempt_rate):
            return False
        target = f"{item.event_id}@{item.endpoint_id}"
        self._log.record(now_s, FaultKind.WEBHOOK_DROP_ATTEMPT, target, f"attempt {item.attempt}")
        self._retry(item, now_s)
        return True

    def _build(
        self, item: _Scheduled, seq: int, endpoint: WebhookEndpoint, now_s: float
    ) -> Delivery:
        event_type, payload = self._payloads[item.event_id]
        signed_at_s = int(now_s)
        secret = endpoint.secret
        if item.kind is DeliveryKind.OLD_TIMESTAMP:
            signed_at_s = int(now_s - self._config.webhooks.old_timestamp_age_s)
        if item.kind is DeliveryKind.FORGED:
            secret = f"whsec_forged_{self._rng.getrandbits(64):016x}"
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": signature_header(payload, secret, signed_at_s),
        }
        return Delivery(
            delivery_id=f"dlv_{seq:010d}",
            endpoint_id=endpoint.id,
            url=endpoint.url,
            event_id=item.event_id,
            event_type=event_type,
            attempt=item.attempt,
            kind=item.kind,
            payload=payload,
            headers=headers,
            signed_at_s=signed_at_s,
            due_at_s=item.due_at_s,
            first_attempt_at_s=item.first_attempt_at_s,
        )

    def ack(self, delivery: Delivery, status_code: int | None, now_s: float) -> None:
        """Report the endpoint's answer (None: timeout or connection error)."""
        if self._in_flight.pop(delivery.delivery_id, None) is None:
            self.stats["unknown_ack"] += 1
            return
        ok = status_code is not None and 200 <= status_code < 300
        self.stats[f"{delivery.kind}.{'accepted' if ok else 'rejected'}"] += 1
        if delivery.kind is not DeliveryKind.ORIGINAL or ok:
            self._release(delivery.event_id)
            return
        item = _Scheduled(
            delivery.due_at_s,
            delivery.endpoint_id,
            delivery.event_id,
            delivery.kind,
            delivery.attempt,
            delivery.first_attempt_at_s,
        )
        self._retry(item, now_s)
        self._release(delivery.event_id)

    def _retry(self, item: _Scheduled, now_s: float) -> None:
        retry = self._config.webhook_retry
        delay_s = _backoff_s(item.attempt, retry)
        next_at_s = now_s + delay_s
        target = f"{item.event_id}@{item.endpoint_id}"
        too_late = next_at_s - item.first_attempt_at_s > retry.give_up_after_s
        if item.attempt >= retry.attempts_max or too_late:
            self._log.record(now_s, FaultKind.WEBHOOK_GIVEN_UP, target, f"after {item.attempt}")
            return
        self._push(
            _Scheduled(
                next_at_s,
                item.endpoint_id,
                item.event_id,
                item.kind,
                item.attempt + 1,
                item.first_attempt_at_s,
            )
        )

    def clear(self, now_s: float) -> None:
        self._started_at_s = now_s
        self._heap.clear()
        self._payloads.clear()
        self._payload_refs.clear()
        self._in_flight.clear()
        self.stats.clear()


def _backoff_s(attempt: int, retry: WebhookRetrySpec) -> float:
    """Delay after failed attempt number ``attempt`` (1-based): exponential, capped."""
    delay_s: float = retry.first_retry_s * retry.backoff_factor ** (attempt - 1)
    return min(delay_s, retry.retry_delay_max_s)
