"""Stripe's form dialect, the admin surface and the provider clock."""

from __future__ import annotations

import pytest
import stripe

from mock_psp.clock import ManualClock, OffsetClock
from mock_psp.errors import ParameterInvalid, ParameterUnknown
from mock_psp.params import decode_params


def test_form_pairs_decode_into_nested_values():
    tree = decode_params(
        [
            ("amount", "100"),
            ("metadata[order_id]", "o1"),
            ("expand[]", "latest_charge"),
            ("expand[]", "customer"),
            ("items[0][price]", "p1"),
            ("items[0][qty]", "2"),
            ("items[1][price]", "p2"),
        ]
    )
    assert tree == {
        "amount": "100",
        "metadata": {"order_id": "o1"},
        "expand": ["latest_charge", "customer"],
        "items": [{"price": "p1", "qty": "2"}, {"price": "p2"}],
    }


def test_python_values_normalise_to_the_strings_a_form_would_carry():
    assert decode_params({"confirm": True, "amount": 5, "metadata": {"a": "b"}}) == {
        "confirm": "true",
        "amount": "5",
        "metadata": {"a": "b"},
    }


def test_a_key_given_twice_is_refused():
    with pytest.raises(ParameterInvalid):
        decode_params([("amount", "1"), ("amount", "2")])


def test_a_malformed_key_is_refused_as_unknown():
    with pytest.raises(ParameterUnknown):
        decode_params({"amount]": "1"})


def test_too_deep_nesting_is_refused():
    with pytest.raises(ParameterInvalid):
        decode_params({"a[b][c][d][e]": "1"})


def test_advancing_the_clock_runs_due_work_and_refuses_going_backwards(psp):
    response = psp.core.admin.handle("POST", "/_admin/clock/advance", {"seconds": 90})
    assert response.body["now"] == psp.clock.now()
    with pytest.raises(ValueError):
        psp.clock.set(psp.clock.now() - 1)
    bad = psp.core.admin.handle("POST", "/_admin/clock/advance", {"seconds": -1})
    assert (bad.status, bad.body["error"]["param"]) == (400, "seconds")


def test_an_offset_clock_moves_a_base_clock_forward():
    base = ManualClock(100.0)
    clock = OffsetClock(base)
    clock.advance(50)
    base.advance(1)
    assert clock.now() == 151.0


def test_reset_forgets_objects_keys_effects_and_faults(psp):
    psp.core.set_faults({"api_rules": [{"timeout_after_rate": 1.0}]})
    psp.post(
        "/v1/payment_intents",
        {"amount": 1, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"},
        key="r",
    )
    assert psp.core.admin.handle("POST", "/_admin/reset", {}).status == 200
    assert psp.core.state.object_count() == 0
    assert psp.core.truth.effects() == [] and psp.core.fault_log.total() == 0
    assert psp.core.lookup_idempotency("r").found is False


def test_admin_webhook_registration_and_stats(psp):
    created = psp.core.admin.handle(
        "POST", "/_admin/webhook_endpoints", {"url": "https://a.test/h"}
    )
    assert created.body["enabled_events"] == ["*"]
    psp.pay(100)
    stats = psp.core.admin.handle("GET", "/_admin/webhooks", {}).body
    assert stats["pending"] == 3


def test_an_unknown_admin_path_is_a_404(psp):
    assert psp.core.admin.handle("GET", "/_admin/nothing", {}).status == 404


def test_the_sdk_constructs_every_genuine_event_the_core_sends(psp):
    endpoint = psp.core.admin.register_webhook_endpoint("https://a.test")
    pi = psp.pay(1000, capture_method="manual")
    psp.ok("POST", f"/v1/payment_intents/{pi['id']}/capture", {"amount_to_capture": 400})
    psp.ok("POST", "/v1/refunds", {"payment_intent": pi["id"], "amount": 100})
    for delivery in psp.core.due_deliveries():
        event = stripe.Webhook.construct_event(
            delivery.payload.decode(),
            delivery.headers["Stripe-Signature"],
            endpoint["secret"],
            tolerance=None,
        )
        assert event.type == delivery.event_type
        psp.core.ack(delivery, 200)
