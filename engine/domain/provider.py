"""The sans-IO seam: what the engine asks of a provider and what it learns back.

The engine never performs a provider call. A ``begin_*`` step returns a
``ProviderCall``; the driver (simpy process, HTTP worker, test) performs it and
hands the ``ProviderOutcome`` to the matching ``complete_*`` step. Webhooks
arrive as ``ProviderEvent``s. All three are neutral of any provider's dialect:
the adapters translate. The events whose webhooks never came are listed through
an ``EventFeed`` (``engine.workers.events``), a page at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol


class CallKind(StrEnum):
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"
    # A seller's payout: ``attempt_id`` is the payout's id, ``merchant_id`` the
    # seller, and the payment fields are empty.
    PAYOUT = "payout"
    # Ask for the provider's fee on a capture the engine learned without it (by a
    # webhook): a read, safe to repeat.
    FEE = "fee"


class OutcomeStatus(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    REQUIRES_ACTION = "requires_action"
    UNKNOWN = "unknown"  # a timeout, a lost response, an unreachable provider
    NOT_FOUND = "not_found"  # lookup only: the provider never received the request


@dataclass(frozen=True, slots=True)
class ProviderCall:
    attempt_id: str
    kind: CallKind
    idempotency_key: str  # the provider's key: one per attempt, reused on every retry
    payment_id: str
    merchant_id: str
    order_id: str
    amount_minor: int
    currency: str
    payment_method: str
    capture_method: str
    provider_payment_id: str | None = None
    refund_id: str | None = None
    # An authorization waiting for the customer (3DS): its saved response is
    # stale by design, so recovery asks for the provider's object as it is now.
    awaiting_action: bool = False


@dataclass(frozen=True, slots=True)
class ProviderOutcome:
    status: OutcomeStatus
    provider_payment_id: str | None = None
    provider_refund_id: str | None = None
    amount_minor: int | None = None  # what the provider authorized, captured or refunded
    captured: bool = False  # an authorize call that also captured (automatic capture)
    fee_minor: int = 0
    decline_code: str | None = None
    message: str | None = None
    provider_payout_id: str | None = None
    fee_known: bool = False  # the answer carried the fee (else it is learned later)


class EventType(StrEnum):
    REQUIRES_ACTION = "payment_intent.requires_action"
    AUTHORIZED = "payment_intent.amount_capturable_updated"
    SUCCEEDED = "payment_intent.succeeded"
    PAYMENT_FAILED = "payment_intent.payment_failed"
    CANCELED = "payment_intent.canceled"
    REFUND_SUCCEEDED = "refund.succeeded"
    REFUND_FAILED = "refund.failed"
    DISPUTE_CREATED = "charge.dispute.created"
    DISPUTE_WON = "charge.dispute.won"
    DISPUTE_LOST = "charge.dispute.lost"
    PAYOUT_PAID = "payout.paid"
    PAYOUT_FAILED = "payout.failed"


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A webhook, already verified and translated by an adapter.

    ``payment_id`` and ``refund_id`` are the engine's own ids, which the engine
    sends to the provider as metadata; they let an event be matched even when
    the call that created the provider object timed out.
    """

    event_id: str
    type: str
    created_at: datetime
    payment_id: str | None = None
    provider_payment_id: str | None = None
    refund_id: str | None = None
    provider_refund_id: str | None = None
    amount_minor: int | None = None
    fee_minor: int = 0
    decline_code: str | None = None
    payout_id: str | None = None  # the engine's payout id, from the payout's metadata
    provider_payout_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventQuery:
    """One page of the provider's events: of ``types``, created in ``[created_gte_s,
    created_lt_s)`` (Unix seconds), newest first, after the event ``starting_after``."""

    types: tuple[str, ...]
    created_gte_s: int
    created_lt_s: int
    limit: int
    starting_after: str | None = None


@dataclass(frozen=True, slots=True)
class EventPage:
    """The provider's events as it sent them (its dialect: translated when taken), newest
    first, and whether more match; or, with ``failure``, why no page came (``no_answer``,
    ``http_503``, ...): nothing was listed."""

    events: tuple[Mapping[str, Any], ...] = ()
    has_more: bool = False
    failure: str | None = None


class EventFeed(Protocol):
    def list_events(self, query: EventQuery) -> EventPage: ...
