"""The provider's state and the context one request runs in.

``ProviderState`` owns every stored object (insertion order is creation order, which
list endpoints rely on). ``World`` is what a handler sees: the state, the config, the
id source, the time of the request, and the helpers that keep side effects in one
place: ``emit`` (event + webhook queue), ``post_balance`` (balance transaction) and
``record_effect`` (ground truth). Handlers never touch the clock or a random source.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from mock_psp.ids import IdSource
from mock_psp.money import Pricing
from mock_psp.records import (
    BalanceTransaction,
    Charge,
    Dispute,
    Event,
    PaymentIntent,
    PaymentMethod,
    Payout,
    Refund,
    WebhookEndpoint,
)
from mock_psp.testcards import Decline
from mock_psp.truth import EffectKind, GroundTruth, MoneyEffect
from mock_psp.webhooks import DeliveryScheduler

DAY_S = 86_400
OBJECTS_MAX = 5_000_000


class ProviderConfig(BaseModel):
    """How the provider behaves when no fault is injected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pricing: Pricing = Field(default_factory=Pricing)
    availability_delay_s: int = Field(default=2 * DAY_S, ge=0, le=30 * DAY_S)
    payout_arrival_delay_s: int = Field(default=DAY_S, ge=0, le=30 * DAY_S)
    dispute_evidence_window_s: int = Field(default=7 * DAY_S, ge=DAY_S, le=60 * DAY_S)
    # > 0: confirmations pass through ``processing`` and complete on a later ``tick``.
    processing_delay_s: float = Field(default=0.0, ge=0.0, le=7 * DAY_S)
    # > 0: refunds are ``pending`` first and succeed later (refund.updated).
    refund_settle_delay_s: float = Field(default=0.0, ge=0.0, le=30 * DAY_S)
    order_ref_key: str = Field(default="order_id", min_length=1, max_length=40)
    # None accepts any ``sk_test_...`` key; a list accepts exactly those keys.
    api_keys: list[str] | None = None
    # Webhook bodies are indented JSON, as Stripe's; None sends them compact (faster).
    webhook_payload_indent: int | None = Field(default=2, ge=0, le=8)
    # How long an event stays retrievable whole (Stripe: 30 days); None keeps every
    # event forever. Older events leave only their ``EventStub`` in ``event_log``.
    event_retention_s: float | None = Field(default=None, ge=0.0, le=30 * DAY_S)


class EventStub(NamedTuple):
    """What is kept of every event for good: what it was about, when, which one."""

    created_s: int
    type: str
    id: str
    object_id: str | None  # the event's object (a PaymentIntent, Charge, Refund, ...)
    payment_intent_id: str | None  # the object's PaymentIntent, when it has one


@dataclass(slots=True)
class ProviderState:
    payment_methods: dict[str, PaymentMethod] = field(default_factory=dict)
    payment_intents: dict[str, PaymentIntent] = field(default_factory=dict)
    charges: dict[str, Charge] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    disputes: dict[str, Dispute] = field(default_factory=dict)
    balance_transactions: dict[str, BalanceTransaction] = field(default_factory=dict)
    payouts: dict[str, Payout] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)  # whole, within the retention
    event_log: list[EventStub] = field(default_factory=list)  # every event, in order
    # (expires_at_s, event id), in creation order: the events to forget whole.
    event_expiry: deque[tuple[float, str]] = field(default_factory=deque)
    webhook_endpoints: dict[str, WebhookEndpoint] = field(default_factory=dict)
    # (due_at_s, seq, kind, object id): time-driven work run by ``ProviderCore.tick``.
    timers: list[tuple[float, int, str, str]] = field(default_factory=list)
    timer_seq: int = 0

    def clear(self) -> None:
        for mapping in (
            self.payment_methods,
            self.payment_intents,
            self.charges,
            self.refunds,
            self.disputes,
            self.balance_transactions,
            self.payouts,
            self.events,
            self.webhook_endpoints,
        ):
            mapping.clear()  # cleared in place: the webhook scheduler holds the endpoints
        self.event_log.clear()
        self.event_expiry.clear()
        self.timers.clear()
        self.timer_seq = 0

    def object_count(self) -> int:
        return (
            len(self.payment_intents)
            + len(self.charges)
            + len(self.refunds)
            + len(self.disputes)
            + len(self.balance_transactions)
            + len(self.payouts)
            + len(self.events)
        )

    def expire_events(self, now_s: float) -> int:
        """Forget whole the events past their retention (their stubs stay); how many went."""
        expiry, gone = self.event_expiry, 0
        while expiry and expiry[0][0] <= now_s:
            self.events.pop(expiry.popleft()[1], None)
            gone += 1
        return gone


def day_start_s(at_s: float) -> int:
    """Stripe's ``available_on`` and ``arrival_date`` are whole UTC days."""
    return int(at_s // DAY_S) * DAY_S


class World:
    """The context of one request (or one tick): state, config, ids and ``now``."""

    __slots__ = (
        "config",
        "forced_decline",
        "forced_decline_used",
        "idempotency_key",
        "ids",
        "now_s",
        "request_id",
        "scheduler",
        "state",
        "truth",
    )

    def __init__(
        self,
        state: ProviderState,
        config: ProviderConfig,
        ids: IdSource,
        scheduler: DeliveryScheduler,
        truth: GroundTruth,
    ) -> None:
        self.state = state
        self.config = config
        self.ids = ids
        self.scheduler = scheduler
        self.truth = truth
        self.now_s = 0.0
        self.request_id: str | None = None
        self.idempotency_key: str | None = None
        # An injected decline for this request (fault plan); set and read by the core.
        self.forced_decline: Decline | None = None
        self.forced_decline_used = False

    def begin(self, now_s: float, request_id: str | None, idempotency_key: str | None) -> None:
        self.now_s = now_s
        self.request_id = request_id
        self.idempotency_key = idempotency_key
        self.forced_decline = None
        self.forced_decline_used = False

    @property
    def now_int(self) -> int:
        return int(self.now_s)

    def new_id(self, prefix: str) -> str:
        assert self.state.object_count() < OBJECTS_MAX, "provider store is full"
        return self.ids.new(prefix)

    def emit(
        self, event_type: str, data_object: dict[str, Any], previous: dict[str, Any] | None = None
    ) -> Event:
        wanted = sum(1 for ep in self.state.webhook_endpoints.values() if ep.wants(event_type))
        event = Event(
            id=self.new_id("evt"),
            type=event_type,
            created_s=self.now_int,
            data_object=data_object,
            request_id=self.request_id,
            idempotency_key=self.idempotency_key,
            pending_webhooks=wanted,
            previous_attributes=previous,
        )
        self._keep(event)
        self.scheduler.enqueue(event, self.now_s)
        return event

    def _keep(self, event: Event) -> None:
        state, retention_s = self.state, self.config.event_retention_s
        obj = event.data_object
        pi_id = obj.get("payment_intent") if obj.get("object") != "payment_intent" else obj["id"]
        state.event_log.append(
            EventStub(event.created_s, event.type, event.id, obj.get("id"), pi_id)
        )
        state.events[event.id] = event
        if retention_s is not None:
            state.event_expiry.append((self.now_s + retention_s, event.id))
            state.expire_events(self.now_s)

    def add_timer(self, due_at_s: float, kind: str, object_id: str) -> None:
        self.state.timer_seq += 1
        heapq.heappush(self.state.timers, (due_at_s, self.state.timer_seq, kind, object_id))

    def post_balance(
        self,
        *,
        amount_minor: int,
        fee_minor: int,
        currency: str,
        type_: str,
        category: str,
        source_id: str,
        description: str | None,
        available_on_s: int | None = None,
        payment_intent_id: str | None = None,
        charge_id: str | None = None,
    ) -> BalanceTransaction:
        bt = BalanceTransaction(
            id=self.new_id("txn"),
            created_s=self.now_int,
            available_on_s=self.now_int if available_on_s is None else available_on_s,
            amount_minor=amount_minor,
            fee_minor=fee_minor,
            currency=currency,
            type=type_,
            reporting_category=category,
            source_id=source_id,
            description=description,
            payment_intent_id=payment_intent_id,
            charge_id=charge_id,
        )
        self.state.balance_transactions[bt.id] = bt
        return bt

    def order_ref(self, metadata: dict[str, str]) -> str | None:
        return metadata.get(self.config.order_ref_key)

    def record_effect(
        self,
        kind: EffectKind,
        amount_minor: int,
        currency: str,
        object_id: str,
        pi: PaymentIntent | None = None,
    ) -> None:
        self.truth.record(
            MoneyEffect(
                at_s=self.now_s,
                kind=kind,
                amount_minor=amount_minor,
                currency=currency,
                object_id=object_id,
                payment_intent_id=None if pi is None else pi.id,
                order_ref=None if pi is None else self.order_ref(pi.metadata),
            )
        )

    def balances(self) -> tuple[dict[str, int], dict[str, int]]:
        """(available, pending) net balances per currency at ``now``."""
        available: dict[str, int] = {}
        pending: dict[str, int] = {}
        for bt in self.state.balance_transactions.values():
            bucket = available if bt.available_on_s <= self.now_s else pending
            bucket[bt.currency] = bucket.get(bt.currency, 0) + bt.net_minor
        return available, pending
