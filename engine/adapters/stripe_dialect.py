"""Stripe's dialect, both ways: provider calls to requests, responses and events back.

Pure translation, no I/O: the simulation hands the requests to the mock PSP's
core in process, the HTTP adapter sends them with httpx. Every mapping from a
provider answer to an engine outcome lives here and nowhere else:

- a PaymentIntent in ``requires_capture`` is an authorization, ``succeeded`` a
  capture (an automatic one when it answers an authorize call),
  ``requires_action`` asks for 3DS, ``requires_payment_method`` a decline;
- a 402 ``card_error`` is a decline with its decline code; any other 4xx is a
  definite refusal (nothing happened), except ``idempotency_error``;
- a timeout, 409 (a request with this key still in flight), 429 and 5xx say
  nothing about what happened: the outcome is ``unknown`` and the attempt
  waits for a lookup by its idempotency key. The engine never guesses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.domain.provider import (
    CallKind,
    EventPage,
    EventQuery,
    EventType,
    OutcomeStatus,
    ProviderCall,
    ProviderEvent,
    ProviderOutcome,
)

O = OutcomeStatus  # noqa: E741
UNKNOWN = ProviderOutcome(OutcomeStatus.UNKNOWN)


@dataclass(frozen=True, slots=True)
class StripeRequest:
    method: str
    path: str
    params: dict[str, str]
    idempotency_key: str


def _metadata(call: ProviderCall) -> dict[str, str]:
    metadata = {
        "metadata[payment_id]": call.payment_id,
        "metadata[merchant_id]": call.merchant_id,
        "metadata[order_id]": call.order_id,
    }
    if call.refund_id is not None:
        metadata["metadata[refund_id]"] = call.refund_id
    return metadata


# The provider's fee is on the charge's balance transaction: asked for with every call
# that may capture, so the capture's journal books it at once.
EXPAND_FEE = {"expand[0]": "latest_charge.balance_transaction"}


def request_for(call: ProviderCall) -> StripeRequest:
    """The one Stripe request that performs a call; retries reuse it verbatim."""
    if call.kind is CallKind.AUTHORIZE and call.provider_payment_id is not None:
        # A second confirm (after 3DS) confirms the same intent: a new intent
        # would be a second charge waiting to happen.
        path = f"/v1/payment_intents/{call.provider_payment_id}/confirm"
        params = {"payment_method": call.payment_method, **EXPAND_FEE}
        return StripeRequest("POST", path, params, call.idempotency_key)
    if call.kind is CallKind.AUTHORIZE:
        params = {
            "amount": str(call.amount_minor),
            "currency": call.currency.lower(),
            "payment_method": call.payment_method,
            "capture_method": call.capture_method,
            "confirm": "true",
            **EXPAND_FEE,
            **_metadata(call),
        }
        return StripeRequest("POST", "/v1/payment_intents", params, call.idempotency_key)
    if call.kind is CallKind.FEE:
        assert call.provider_payment_id is not None, "a fee lookup needs the provider's id"
        path = f"/v1/payment_intents/{call.provider_payment_id}"
        return StripeRequest("GET", path, dict(EXPAND_FEE), call.idempotency_key)
    if call.kind is CallKind.PAYOUT:
        params = {
            "amount": str(call.amount_minor),
            "currency": call.currency.lower(),
            "metadata[payout_id]": call.attempt_id,
            "metadata[seller_id]": call.merchant_id,
        }
        return StripeRequest("POST", "/v1/payouts", params, call.idempotency_key)
    assert call.provider_payment_id is not None, f"{call.kind} needs the provider's id"
    base = f"/v1/payment_intents/{call.provider_payment_id}"
    if call.kind is CallKind.CAPTURE:
        params = {"amount_to_capture": str(call.amount_minor), **EXPAND_FEE}
        return StripeRequest("POST", f"{base}/capture", params, call.idempotency_key)
    if call.kind is CallKind.VOID:
        return StripeRequest("POST", f"{base}/cancel", {}, call.idempotency_key)
    params = {
        "payment_intent": call.provider_payment_id,
        "amount": str(call.amount_minor),
        **_metadata(call),
    }
    return StripeRequest("POST", "/v1/refunds", params, call.idempotency_key)


def outcome_from_response(
    call: ProviderCall, status: int | None, body: Mapping[str, Any] | None
) -> ProviderOutcome:
    """What a response (or its absence: ``status=None``) tells about a call."""
    if status is None or body is None or status in {409, 429} or status >= 500:
        return UNKNOWN
    if status >= 400:
        return _outcome_from_error(status, body)
    if body.get("object") == "refund":
        return _outcome_from_refund(body)
    if body.get("object") == "payment_intent":
        return _outcome_from_intent(call, body)
    if body.get("object") == "payout":
        return _outcome_from_payout(body)
    return ProviderOutcome(O.UNKNOWN, message=f"unexpected object {body.get('object')!r}")


def _outcome_from_payout(body: Mapping[str, Any]) -> ProviderOutcome:
    """A payout the provider accepted is in transit; a failed or canceled one is refused."""
    if body.get("status") in {"failed", "canceled"}:
        code = body.get("failure_code") or str(body.get("status"))
        return ProviderOutcome(O.DECLINED, decline_code=str(code),
                               provider_payout_id=body.get("id"))  # fmt: skip
    return ProviderOutcome(
        O.SUCCEEDED, amount_minor=body.get("amount"), provider_payout_id=body.get("id")
    )


def _outcome_from_error(status: int, body: Mapping[str, Any]) -> ProviderOutcome:
    error = body.get("error") or {}
    code = error.get("decline_code") or error.get("code") or f"http_{status}"
    if error.get("type") == "idempotency_error":
        return ProviderOutcome(O.UNKNOWN, message=f"idempotency_error: {error.get('message')}")
    intent = error.get("payment_intent") or {}
    return ProviderOutcome(
        O.DECLINED,
        provider_payment_id=intent.get("id") if isinstance(intent, Mapping) else None,
        decline_code=str(code),
        message=error.get("message"),
    )


def _outcome_from_intent(call: ProviderCall, intent: Mapping[str, Any]) -> ProviderOutcome:
    status, pi_id = intent.get("status"), intent.get("id")
    if status == "requires_capture":
        return ProviderOutcome(O.SUCCEEDED, pi_id, amount_minor=intent.get("amount_capturable"))
    if status == "succeeded":
        fee = _fee_minor(intent)
        return ProviderOutcome(
            O.SUCCEEDED,
            pi_id,
            amount_minor=intent.get("amount_received"),
            captured=call.kind is CallKind.AUTHORIZE,
            fee_minor=fee or 0,
            fee_known=fee is not None,
        )
    if status == "canceled":
        if call.kind is CallKind.VOID:
            return ProviderOutcome(O.SUCCEEDED, pi_id)
        return ProviderOutcome(O.DECLINED, pi_id, decline_code="payment_intent_canceled")
    if status == "requires_action":
        return ProviderOutcome(O.REQUIRES_ACTION, pi_id)
    if status == "requires_payment_method":
        error = intent.get("last_payment_error") or {}
        code = error.get("decline_code") or error.get("code") or "card_declined"
        return ProviderOutcome(O.DECLINED, pi_id, decline_code=str(code))
    return ProviderOutcome(O.UNKNOWN, pi_id, message=f"payment intent is {status}")


def _fee_minor(intent: Mapping[str, Any]) -> int | None:
    """The fee, when the charge and its balance transaction came expanded; else None."""
    charge = intent.get("latest_charge")
    if isinstance(charge, Mapping):
        transaction = charge.get("balance_transaction")
        if isinstance(transaction, Mapping):
            return int(transaction.get("fee") or 0)
    return None


def _outcome_from_refund(refund: Mapping[str, Any]) -> ProviderOutcome:
    status = refund.get("status")
    pi_id = refund.get("payment_intent")
    if status == "succeeded":
        return ProviderOutcome(
            O.SUCCEEDED,
            pi_id,
            provider_refund_id=refund.get("id"),
            amount_minor=refund.get("amount"),
        )
    if status in {"failed", "canceled"}:
        return ProviderOutcome(
            O.DECLINED, pi_id, provider_refund_id=refund.get("id"),
            decline_code=str(refund.get("failure_reason") or "refund_failed"),
        )  # fmt: skip
    return ProviderOutcome(O.UNKNOWN, pi_id, provider_refund_id=refund.get("id"))


def refresh_request(call: ProviderCall) -> StripeRequest | None:
    """For a call whose saved response is stale by design, the object as it is now."""
    if not call.awaiting_action or call.provider_payment_id is None:
        return None
    return StripeRequest(
        "GET", f"/v1/payment_intents/{call.provider_payment_id}", {}, call.idempotency_key
    )


def outcome_from_lookup(call: ProviderCall, lookup: Mapping[str, Any]) -> ProviderOutcome:
    """What the provider's lookup by idempotency key says about a call."""
    if not lookup.get("found"):
        return ProviderOutcome(O.NOT_FOUND)
    if lookup.get("in_flight") or lookup.get("response_status") is None:
        return UNKNOWN
    if lookup["response_status"] == 500:
        # A saved 500 is final for its key (every retry replays it) and, by the
        # lookup's contract, the provider failed before doing any work.
        return ProviderOutcome(O.DECLINED, decline_code="provider_error")
    return outcome_from_response(call, lookup["response_status"], lookup.get("response_body"))


_INTENT_EVENTS = {
    "payment_intent.requires_action": EventType.REQUIRES_ACTION,
    "payment_intent.amount_capturable_updated": EventType.AUTHORIZED,
    "payment_intent.succeeded": EventType.SUCCEEDED,
    "payment_intent.payment_failed": EventType.PAYMENT_FAILED,
    "payment_intent.canceled": EventType.CANCELED,
}


# The event types the engine acts on: what its webhook endpoint subscribes to
# (``enabled_events``), as Stripe advises. Other types (``charge.succeeded``,
# ``payment_intent.created``, ...) would be verified, kept and ignored: work for
# nothing on both sides, and most of a payment's events. Disputes are taken
# whole: they are rare, and their funds events are the money moving.
ENABLED_EVENTS: tuple[str, ...] = (
    *_INTENT_EVENTS, "refund.created", "refund.updated", "charge.dispute.*",
    "payout.paid", "payout.failed",
)  # fmt: skip

# The event types the engine acts on, by name: what the event catch-up lists
# (``GET /v1/events`` takes at most 20 names in ``types``, without wildcards). A
# dispute's other events (updated, funds withdrawn or reinstated) change nothing.
CAUGHT_UP_EVENTS: tuple[str, ...] = (
    *_INTENT_EVENTS, "refund.created", "refund.updated", "charge.dispute.created",
    "charge.dispute.closed", "payout.paid", "payout.failed",
)  # fmt: skip
EVENTS_PATH = "/v1/events"
EVENT_TYPES_LISTED_MAX = 20


def events_params(query: EventQuery) -> dict[str, str]:
    """The query string of ``GET /v1/events`` for one page of ``query``."""
    assert 0 < len(query.types) <= EVENT_TYPES_LISTED_MAX and 0 < query.limit <= 100
    params = {
        "created[gte]": str(query.created_gte_s),
        "created[lt]": str(query.created_lt_s),
        "limit": str(query.limit),
        **{f"types[{index}]": kind for index, kind in enumerate(query.types)},
    }
    if query.starting_after is not None:
        params["starting_after"] = query.starting_after
    return params


def event_page(status: int | None, body: Mapping[str, Any] | None) -> EventPage:
    """What an answer to ``GET /v1/events`` lists (``status=None``: no answer came)."""
    if status is None or body is None:
        return EventPage(failure="no_answer")
    if status != 200:
        return EventPage(failure=f"http_{status}")
    data = body.get("data")
    if body.get("object") != "list" or not isinstance(data, list):
        return EventPage(failure="not_a_list")
    if not all(isinstance(event, Mapping) and isinstance(event.get("id"), str) for event in data):
        return EventPage(failure="not_a_list")
    return EventPage(tuple(data), body.get("has_more") is True)


def _dispute_fee_minor(kind: str, dispute: Mapping[str, Any]) -> int:
    """The dispute fee the provider took (on opening) or gave back (on a win)."""
    bts = dispute.get("balance_transactions") or []
    if not isinstance(bts, list) or not all(isinstance(bt, Mapping) for bt in bts):
        raise ValueError("balance_transactions is a list of objects")
    if kind == EventType.DISPUTE_CREATED:
        return sum(_int(bt, "fee") or 0 for bt in bts if (_int(bt, "amount") or 0) < 0)
    if kind == EventType.DISPUTE_WON:
        return sum(-(_int(bt, "fee") or 0) for bt in bts if (_int(bt, "amount") or 0) > 0)
    return 0


# An event's unix time: from 1970 to the year 9999, as a datetime can hold it.
CREATED_S_MAX = 253_402_300_799
TEXT_LENGTH_MAX = 255  # the engine's columns for provider ids
EVENT_TYPE_LENGTH_MAX = 64


def _int(obj: Mapping[str, Any], key: str) -> int | None:
    """An integer field of a provider object, or None; ValueError for anything else (a
    signed event is the provider's word, but its shape is still checked)."""
    value = obj.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{key} is not an integer")


def _text(obj: Mapping[str, Any], key: str) -> str | None:
    """A short string field (ids, codes, statuses: what the engine stores or looks up)."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= TEXT_LENGTH_MAX and "\x00" not in value:
        return value
    raise ValueError(f"{key} is not a string of at most {TEXT_LENGTH_MAX} characters")


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} is not an object")
    return value


def event_from_stripe(event: Mapping[str, Any]) -> ProviderEvent:
    """A verified Stripe event as the engine's neutral ``ProviderEvent``; ValueError if it
    is not shaped as one."""
    event = _object(event, "the event")
    kind, event_id, created_s = _text(event, "type"), _text(event, "id"), _int(event, "created")
    if kind is None or event_id is None or created_s is None:
        raise ValueError("an event has an id, a type and a created time")
    if not 0 <= created_s <= CREATED_S_MAX:
        raise ValueError("created is not a time")
    if len(kind) > EVENT_TYPE_LENGTH_MAX:
        raise ValueError("type is not an event type")
    obj = _object(_object(event.get("data"), "data").get("object"), "data.object")
    metadata = _object(obj.get("metadata") or {}, "metadata")
    created_at = datetime.fromtimestamp(created_s, UTC)
    common: dict[str, Any] = {
        "event_id": event_id,
        "created_at": created_at,
        "payment_id": _text(metadata, "payment_id"),
    }
    if kind in _INTENT_EVENTS:
        mapped = _INTENT_EVENTS[kind]
        amount = _int(obj, "amount_capturable") if mapped is EventType.AUTHORIZED else None
        if mapped is EventType.SUCCEEDED:
            amount = _int(obj, "amount_received")
        error = _object(obj.get("last_payment_error") or {}, "last_payment_error")
        return ProviderEvent(
            type=mapped.value, provider_payment_id=_text(obj, "id"), amount_minor=amount,
            decline_code=_text(error, "decline_code") or _text(error, "code"), **common,
        )  # fmt: skip
    if kind in {"refund.created", "refund.updated"}:
        status = _text(obj, "status")
        mapped_refund = {"succeeded": EventType.REFUND_SUCCEEDED, "failed": EventType.REFUND_FAILED}
        return ProviderEvent(
            type=mapped_refund[status].value if status in mapped_refund else kind,
            provider_payment_id=_text(obj, "payment_intent"),
            refund_id=_text(metadata, "refund_id"), provider_refund_id=_text(obj, "id"),
            amount_minor=_int(obj, "amount"), **common,
        )  # fmt: skip
    if kind in {"payout.paid", "payout.failed"}:
        return ProviderEvent(
            type=kind, payout_id=_text(metadata, "payout_id"), provider_payout_id=_text(obj, "id"),
            amount_minor=_int(obj, "amount"), decline_code=_text(obj, "failure_code"),
            event_id=common["event_id"], created_at=created_at,
        )  # fmt: skip
    if kind.startswith("charge.dispute."):
        mapped_kind = kind
        if kind == "charge.dispute.closed":
            won = _text(obj, "status") == "won"
            mapped_kind = (EventType.DISPUTE_WON if won else EventType.DISPUTE_LOST).value
        return ProviderEvent(
            type=mapped_kind, provider_payment_id=_text(obj, "payment_intent"),
            amount_minor=_int(obj, "amount"), fee_minor=_dispute_fee_minor(mapped_kind, obj),
            **common,
        )  # fmt: skip
    return ProviderEvent(type=kind, provider_payment_id=_text(obj, "payment_intent"), **common)
