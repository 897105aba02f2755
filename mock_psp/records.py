"""The provider's stored objects and their JSON in Stripe's exact shapes.

Entities (PaymentIntent, Charge, Refund, ...) change state over their life, so they
are mutable slots dataclasses owned by ``ProviderState``; only handlers in
``mock_psp.operations`` mutate them. Events are frozen: an event is a snapshot of an
object at the moment of a change, and Stripe never rewrites one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from mock_psp.states import PiStatus
from mock_psp.testcards import CardProfile, Decline

JsonDict = dict[str, Any]
API_VERSION = "2024-06-20"
CARD_EXP_MONTH = 12
CARD_EXP_YEAR = 2034


@dataclass(slots=True)
class PaymentMethod:
    id: str
    card: CardProfile
    created_s: int


@dataclass(slots=True)
class PaymentIntent:
    id: str
    created_s: int
    amount_minor: int
    currency: str
    capture_method: str
    client_secret: str
    status: PiStatus = PiStatus.REQUIRES_PAYMENT_METHOD
    payment_method_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    customer: str | None = None
    receipt_email: str | None = None
    statement_descriptor: str | None = None
    return_url: str | None = None
    setup_future_usage: str | None = None
    payment_method_types: list[str] = field(default_factory=lambda: ["card"])
    payment_method_options: Any = None
    automatic_payment_methods: JsonDict | None = None
    amount_capturable_minor: int = 0
    amount_received_minor: int = 0
    latest_charge_id: str | None = None
    canceled_at_s: int | None = None
    cancellation_reason: str | None = None
    last_payment_error: JsonDict | None = None
    next_action: JsonDict | None = None
    processing_until_s: float | None = None  # set while an async confirmation runs
    processing_decline: Decline | None = None


@dataclass(slots=True)
class Charge:
    id: str
    created_s: int
    payment_intent_id: str
    payment_method_id: str
    card: CardProfile
    amount_minor: int
    currency: str
    status: str  # succeeded | failed
    metadata: dict[str, str]
    description: str | None = None
    captured: bool = False
    amount_captured_minor: int = 0
    amount_refunded_minor: int = 0
    released_minor: int = 0  # authorised but never captured, given back to the card
    balance_transaction_id: str | None = None
    failure: Decline | None = None
    dispute_id: str | None = None
    receipt_email: str | None = None


@dataclass(slots=True)
class Refund:
    id: str
    created_s: int
    amount_minor: int
    currency: str
    charge_id: str
    payment_intent_id: str
    status: str  # pending | succeeded
    reason: str | None
    metadata: dict[str, str]
    balance_transaction_id: str | None = None
    settles_at_s: float | None = None


@dataclass(slots=True)
class Dispute:
    id: str
    created_s: int
    amount_minor: int
    currency: str
    charge_id: str
    payment_intent_id: str
    reason: str
    status: str
    is_inquiry: bool
    evidence_due_by_s: int
    metadata: dict[str, str]
    balance_transaction_ids: list[str] = field(default_factory=list)
    evidence: dict[str, str] = field(default_factory=dict)
    submission_count: int = 0


@dataclass(slots=True)
class BalanceTransaction:
    id: str
    created_s: int
    available_on_s: int
    amount_minor: int
    fee_minor: int
    currency: str
    type: str
    reporting_category: str
    source_id: str
    description: str | None
    payment_intent_id: str | None = None
    charge_id: str | None = None

    @property
    def net_minor(self) -> int:
        return self.amount_minor - self.fee_minor


@dataclass(slots=True)
class Payout:
    id: str
    created_s: int
    amount_minor: int
    currency: str
    arrival_date_s: int
    status: str  # pending | paid | failed | canceled
    metadata: dict[str, str]
    description: str | None
    balance_transaction_id: str | None = None
    failure_code: str | None = None


@dataclass(slots=True)
class WebhookEndpoint:
    id: str
    created_s: int
    url: str
    secret: str
    enabled_events: list[str]
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    enabled: bool = True

    def wants(self, event_type: str) -> bool:
        return self.enabled and _enabled(tuple(self.enabled_events), event_type)


@lru_cache(maxsize=4_096)
def _enabled(patterns: tuple[str, ...], event_type: str) -> bool:
    """Whether one of an endpoint's ``enabled_events`` patterns covers ``event_type``."""
    return any(
        pattern == "*"
        or pattern == event_type
        or (pattern.endswith(".*") and event_type.startswith(pattern[:-1]))
        for pattern in patterns
    )


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    created_s: int
    data_object: JsonDict
    request_id: str | None
    idempotency_key: str | None
    pending_webhooks: int
    previous_attributes: JsonDict | None = None

    def to_json(self) -> JsonDict:
        data: JsonDict = {"object": self.data_object}
        if self.previous_attributes is not None:
            data["previous_attributes"] = self.previous_attributes
        return {
            "id": self.id,
            "object": "event",
            "api_version": API_VERSION,
            "created": self.created_s,
            "data": data,
            "livemode": False,
            "pending_webhooks": self.pending_webhooks,
            "request": {"id": self.request_id, "idempotency_key": self.idempotency_key},
            "type": self.type,
        }
