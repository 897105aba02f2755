"""Webhooks: Stripe's signature, queued per endpoint, delivered under a fault plan."""

from __future__ import annotations

import json

import pytest
import stripe

from mock_psp.webhooks import DeliveryKind, signature_header, verify_signature


def _drain(psp, status=200, rounds=1):
    delivered = []
    for _ in range(rounds):
        for delivery in psp.core.due_deliveries():
            delivered.append(delivery)
            psp.core.ack(delivery, status(delivery) if callable(status) else status)
    return delivered


def test_registering_an_endpoint_returns_its_signing_secret_once(psp):
    created = psp.ok(
        "POST", "/v1/webhook_endpoints", {"url": "https://shop.test/hooks", "enabled_events[]": "*"}
    )
    assert created["secret"].startswith("whsec_")
    fetched = psp.ok("GET", f"/v1/webhook_endpoints/{created['id']}")
    assert "secret" not in fetched


def test_every_event_is_delivered_signed_exactly_as_stripe_signs(psp):
    endpoint = psp.core.admin.register_webhook_endpoint("https://shop.test/hooks")
    psp.pay(1000, metadata={"order_id": "o1"})
    deliveries = _drain(psp)
    assert [d.event_type for d in deliveries] == psp.event_types()
    for delivery in deliveries:
        header = delivery.headers["Stripe-Signature"]
        timestamp = int(psp.clock.now())
        assert header == signature_header(delivery.payload, endpoint["secret"], timestamp)
        # The official SDK accepts it (tolerance off: provider time is not the wall clock).
        stripe.WebhookSignature.verify_header(
            delivery.payload.decode(), header, endpoint["secret"], tolerance=None
        )
        event = json.loads(delivery.payload)
        assert event["object"] == "event"
        assert event["data"]["object"]["metadata"] == {"order_id": "o1"}


def test_an_endpoint_only_gets_the_event_types_it_enabled(psp):
    psp.core.admin.register_webhook_endpoint("https://a.test", ("payment_intent.succeeded",))
    psp.pay(1000)
    assert [d.event_type for d in _drain(psp)] == ["payment_intent.succeeded"]


def test_a_failing_endpoint_is_retried_with_exponential_backoff(make_psp):
    psp = make_psp(faults={"webhook_retry": {"first_retry_s": 60, "backoff_factor": 2}})
    psp.core.admin.register_webhook_endpoint("https://a.test", ("payment_intent.succeeded",))
    psp.pay(1000)
    attempts = []
    for step_s in (0, 60, 120, 240):
        psp.clock.advance(step_s)
        for delivery in psp.core.due_deliveries():
            attempts.append((delivery.attempt, psp.clock.now()))
            psp.core.ack(delivery, 500 if delivery.attempt < 4 else 200)
    start = attempts[0][1]
    assert [(a, t - start) for a, t in attempts] == [(1, 0), (2, 60), (3, 180), (4, 420)]
    assert psp.core.next_delivery_at_s() is None


def test_retries_stop_after_the_attempt_bound_and_the_give_up_is_logged(make_psp):
    psp = make_psp(faults={"webhook_retry": {"attempts_max": 3, "first_retry_s": 1}})
    psp.core.admin.register_webhook_endpoint("https://a.test", ("payment_intent.succeeded",))
    psp.pay(1000)
    seen = []
    for _ in range(10):
        for delivery in psp.core.due_deliveries():
            seen.append(delivery.attempt)
            psp.core.ack(delivery, None)  # timeout
        psp.clock.advance(10)
    assert seen == [1, 2, 3]
    assert psp.core.fault_log.counts()["webhook.retries_exhausted"] == 1


def test_retries_stop_after_three_days_of_provider_time(make_psp):
    psp = make_psp(
        faults={"webhook_retry": {"attempts_max": 100, "first_retry_s": 3600, "backoff_factor": 1}}
    )
    psp.core.admin.register_webhook_endpoint("https://a.test", ("payment_intent.succeeded",))
    psp.pay(1000)
    attempts = 0
    for _ in range(100):
        for delivery in psp.core.due_deliveries():
            attempts += 1
            psp.core.ack(delivery, 503)
        psp.clock.advance(3600)
    assert attempts == 73  # the first attempt and one an hour for 72 hours


def test_a_dropped_attempt_is_retried_later(make_psp):
    psp = make_psp(
        faults={"webhooks": {"drop_attempt_rate": 1.0}, "webhook_retry": {"first_retry_s": 30}}
    )
    psp.core.admin.register_webhook_endpoint("https://a.test", ("payment_intent.succeeded",))
    psp.pay(1000)
    assert psp.core.due_deliveries() == []
    psp.core.set_faults({"webhook_retry": {"first_retry_s": 30}})
    psp.clock.advance(30)
    (delivery,) = psp.core.due_deliveries()
    assert delivery.attempt == 2
    assert psp.core.fault_log.counts()["webhook.drop_attempt"] == 1


def test_permanent_loss_never_delivers_but_the_event_stays_listable(make_psp):
    psp = make_psp(faults={"webhooks": {"permanent_loss_rate": 1.0}})
    psp.core.admin.register_webhook_endpoint("https://a.test")
    psp.pay(1000)
    psp.clock.advance(4 * 86400)
    assert _drain(psp) == []
    listed = psp.ok("GET", "/v1/events", {"type": "payment_intent.succeeded"})
    assert len(listed["data"]) == 1


def test_duplicates_arrive_twice_with_the_same_event_id(make_psp):
    psp = make_psp(
        faults={"webhooks": {"duplicate_rate": 1.0, "event_types": ["payment_intent.succeeded"]}}
    )
    psp.core.admin.register_webhook_endpoint("https://a.test", ("payment_intent.succeeded",))
    psp.pay(1000)
    psp.clock.advance(10)
    deliveries = _drain(psp)
    assert [d.kind for d in deliveries] == [DeliveryKind.ORIGINAL, DeliveryKind.DUPLICATE]
    assert deliveries[0].event_id == deliveries[1].event_id


def test_forged_deliveries_fail_verification_with_the_sdk(make_psp):
    psp = make_psp(faults={"webhooks": {"forged_rate": 1.0}})
    endpoint = psp.core.admin.register_webhook_endpoint(
        "https://a.test", ("payment_intent.succeeded",)
    )
    psp.pay(1000)
    forged = [d for d in _drain(psp) if d.kind is DeliveryKind.FORGED]
    assert len(forged) == 1 and not forged[0].should_be_accepted
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(
            forged[0].payload.decode(),
            forged[0].headers["Stripe-Signature"],
            endpoint["secret"],
            tolerance=None,
        )


def test_old_timestamp_replays_are_genuine_but_outside_the_tolerance(make_psp):
    psp = make_psp(faults={"webhooks": {"old_timestamp_rate": 1.0, "old_timestamp_age_s": 3600}})
    endpoint = psp.core.admin.register_webhook_endpoint(
        "https://a.test", ("payment_intent.succeeded",)
    )
    psp.pay(1000)
    old = next(d for d in _drain(psp) if d.kind is DeliveryKind.OLD_TIMESTAMP)
    header = old.headers["Stripe-Signature"]
    stripe.WebhookSignature.verify_header(
        old.payload.decode(), header, endpoint["secret"], tolerance=None
    )
    assert old.signed_at_s == int(psp.clock.now()) - 3600
    assert not verify_signature(old.payload, header, endpoint["secret"], psp.clock.now())


def test_stale_replays_bring_an_old_event_back_after_newer_ones(make_psp):
    psp = make_psp(
        faults={
            "webhooks": {
                "stale_replay_rate": 1.0,
                "stale_replay_after_s": 600,
                "event_types": ["payment_intent.amount_capturable_updated"],
            }
        }
    )
    psp.core.admin.register_webhook_endpoint("https://a.test", ("payment_intent.*",))
    pi = psp.pay(1000, capture_method="manual")
    psp.clock.advance(100)
    psp.ok("POST", f"/v1/payment_intents/{pi['id']}/capture")
    psp.clock.advance(600)
    kinds = [(d.event_type, d.kind) for d in _drain(psp)]
    assert kinds[-1] == ("payment_intent.amount_capturable_updated", DeliveryKind.STALE_REPLAY)
    assert kinds.index(("payment_intent.succeeded", DeliveryKind.ORIGINAL)) < len(kinds) - 1


def test_delays_and_reordering_hold_deliveries_back_within_the_window(make_psp):
    psp = make_psp(seed=3, faults={"webhooks": {"reorder_rate": 1.0, "reorder_window_s": 50}})
    psp.core.admin.register_webhook_endpoint("https://a.test")
    for _ in range(5):
        psp.pay(1000)
    emitted = [e.id for e in psp.core.state.events.values()]
    psp.clock.advance(50)
    delivered = [d.event_id for d in _drain(psp)]
    assert sorted(delivered) == sorted(emitted)
    assert delivered != emitted  # reordered
    assert psp.core.fault_log.counts()["webhook.reorder"] == len(emitted)


def test_events_are_listable_with_type_filters_and_pagination(psp):
    psp.pay(1000)
    psp.pay(2000)
    succeeded = psp.ok("GET", "/v1/events", {"type": "payment_intent.succeeded"})
    assert [e["data"]["object"]["amount"] for e in succeeded["data"]] == [2000, 1000]
    wildcard = psp.ok("GET", "/v1/events", {"type": "charge.*", "limit": 1})
    assert wildcard["has_more"] is True
    one = psp.ok("GET", f"/v1/events/{succeeded['data'][0]['id']}")
    assert one["type"] == "payment_intent.succeeded"


def test_events_record_the_request_and_idempotency_key_that_caused_them(psp):
    psp.post(
        "/v1/payment_intents",
        {"amount": 1, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"},
        key="idem-1",
    )
    requests = {e.idempotency_key for e in psp.core.state.events.values()}
    assert requests == {"idem-1"}


def test_a_deleted_endpoint_gets_no_more_deliveries(psp):
    endpoint = psp.core.admin.register_webhook_endpoint("https://a.test")
    psp.pay(1000)
    deleted = psp.ok("DELETE", f"/v1/webhook_endpoints/{endpoint['id']}")
    assert deleted["deleted"] is True
    assert _drain(psp) == []
