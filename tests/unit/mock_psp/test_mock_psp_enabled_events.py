"""The engine's webhook subscription: every event it acts on, and not the rest."""

from __future__ import annotations

import json

from engine.adapters.stripe_dialect import ENABLED_EVENTS, event_from_stripe
from engine.domain.provider import EventType

ACTED_ON = {kind.value for kind in EventType}


def _every_flow(psp) -> None:
    """Authorize, capture, void, refund, decline, 3DS, a dispute lost and one won."""
    psp.pay(1000)
    manual = psp.pay(2000, capture_method="manual")
    psp.ok("POST", f"/v1/payment_intents/{manual['id']}/capture", {"amount_to_capture": 1500})
    psp.ok("POST", "/v1/refunds", {"payment_intent": manual["id"], "amount": 500})
    voided = psp.pay(700, capture_method="manual")
    psp.ok("POST", f"/v1/payment_intents/{voided['id']}/cancel")
    psp.call("POST", "/v1/payment_intents", {
        "amount": 900, "currency": "usd", "payment_method": "pm_card_chargeDeclined",
        "confirm": "true",
    })  # fmt: skip
    psp.pay(800, pm="pm_card_threeDSecureRequired")
    psp.pay(5000, pm="pm_card_createDispute")
    won = psp.pay(5000, pm="pm_card_createDispute")
    dispute_id = psp.core.state.charges[won["latest_charge"]].dispute_id
    psp.ok(
        "POST", f"/v1/disputes/{dispute_id}", {"evidence[uncategorized_text]": "winning_evidence"}
    )


def _delivered(psp) -> dict[str, list[str]]:
    """Event ids delivered, by endpoint url."""
    seen: dict[str, list[str]] = {}
    for delivery in psp.core.due_deliveries():
        seen.setdefault(delivery.url, []).append(json.loads(delivery.payload)["id"])
        psp.core.ack(delivery, 200)
    return seen


def test_the_engine_subscribes_to_every_event_it_acts_on_and_to_few_others(psp):
    psp.core.admin.register_webhook_endpoint("https://all.test", ("*",))
    psp.core.admin.register_webhook_endpoint("https://engine.test", ENABLED_EVENTS)
    _every_flow(psp)
    delivered = _delivered(psp)
    events = psp.core.state.events
    acted_on = {
        event_id for event_id in delivered["https://all.test"]
        if event_from_stripe(events[event_id].to_json()).type in ACTED_ON
    }  # fmt: skip
    kinds = {events[event_id].type for event_id in acted_on}
    # Every flow above made an event the engine acts on, of each of these kinds.
    assert {"payment_intent.succeeded", "payment_intent.amount_capturable_updated",
            "payment_intent.canceled", "payment_intent.payment_failed",
            "payment_intent.requires_action", "refund.created", "charge.dispute.created",
            "charge.dispute.closed"} <= kinds  # fmt: skip
    subscribed = set(delivered["https://engine.test"])
    assert acted_on <= subscribed
    # The rest of a payment's events (created, charge.*, ...) are not sent at all.
    assert len(subscribed) < 0.6 * len(delivered["https://all.test"])
    assert "charge.succeeded" not in {events[event_id].type for event_id in subscribed}


def test_the_catch_up_lists_every_event_the_engine_acts_on_by_name(psp):
    from engine.adapters.stripe_dialect import CAUGHT_UP_EVENTS, EVENT_TYPES_LISTED_MAX
    from mock_psp.faults import name_matches

    _every_flow(psp)
    events = psp.core.state.events.values()
    acted_on = {event.type for event in events
                if event_from_stripe(event.to_json()).type in ACTED_ON}  # fmt: skip
    assert acted_on <= set(CAUGHT_UP_EVENTS)
    assert len(CAUGHT_UP_EVENTS) <= EVENT_TYPES_LISTED_MAX
    assert all(name_matches(list(ENABLED_EVENTS), kind) for kind in CAUGHT_UP_EVENTS)
