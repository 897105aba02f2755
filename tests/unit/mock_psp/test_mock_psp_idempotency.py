"""Idempotency keys as Stripe documents them, in provider time."""

from __future__ import annotations

PARAMS = {"amount": 1500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}


def test_a_replay_with_the_same_key_returns_the_saved_response_and_charges_once(psp):
    first = psp.post("/v1/payment_intents", PARAMS, key="order-1-attempt")
    again = psp.post("/v1/payment_intents", PARAMS, key="order-1-attempt")
    assert again.response.body == first.response.body
    assert again.response.status == 200
    assert again.replayed is True and again.processed is False
    assert again.response.headers["Idempotent-Replayed"] == "true"
    assert again.response.headers["Request-Id"] == first.response.headers["Request-Id"]
    assert len(psp.core.state.payment_intents) == 1
    assert len(psp.core.state.charges) == 1


def test_form_pairs_and_a_nested_dict_are_the_same_request(psp):
    first = psp.post("/v1/payment_intents", {**PARAMS, "metadata": {"order_id": "o1"}}, key="k")
    again = psp.post("/v1/payment_intents", {**PARAMS, "metadata[order_id]": "o1"}, key="k")
    assert again.replayed and again.response.body == first.response.body


def test_the_same_key_with_other_params_is_an_idempotency_error(psp):
    psp.post("/v1/payment_intents", PARAMS, key="k1")
    result = psp.post("/v1/payment_intents", {**PARAMS, "amount": 1600}, key="k1")
    assert result.response.status == 400
    assert psp.error(result)["type"] == "idempotency_error"
    assert len(psp.core.state.payment_intents) == 1


def test_the_same_key_on_another_endpoint_is_an_idempotency_error(psp):
    pi = psp.ok("POST", "/v1/payment_intents", {"amount": 1, "currency": "usd"}, key="k2")
    result = psp.post(f"/v1/payment_intents/{pi['id']}/cancel", {}, key="k2")
    assert psp.error(result)["type"] == "idempotency_error"


def test_declines_are_saved_and_replayed_too(psp):
    params = {**PARAMS, "payment_method": "pm_card_chargeDeclined"}
    first = psp.post("/v1/payment_intents", params, key="d1")
    again = psp.post("/v1/payment_intents", params, key="d1")
    assert first.response.status == again.response.status == 402
    assert again.response.body == first.response.body
    assert len(psp.core.state.charges) == 1


def test_a_request_with_its_key_still_in_flight_gets_409(make_psp):
    psp = make_psp(faults={"api_latency": {"kind": "fixed", "fixed_ms": 2000}})
    first = psp.post("/v1/payment_intents", PARAMS, key="slow")
    assert first.latency_s == 2.0
    concurrent = psp.post("/v1/payment_intents", PARAMS, key="slow")
    assert concurrent.response.status == 409
    assert psp.error(concurrent)["code"] == "idempotency_key_in_use"
    assert concurrent.response.headers["Stripe-Should-Retry"] == "true"
    psp.clock.advance(2.5)
    later = psp.post("/v1/payment_intents", PARAMS, key="slow")
    assert later.replayed and later.response.status == 200
    assert len(psp.core.state.payment_intents) == 1


def test_keys_expire_after_24_hours_of_provider_time(psp):
    psp.post("/v1/payment_intents", PARAMS, key="old")
    psp.clock.advance(24 * 3600 - 1)
    assert psp.post("/v1/payment_intents", PARAMS, key="old").replayed is True
    psp.clock.advance(2)
    assert psp.core.lookup_idempotency("old").found is False
    fresh = psp.post("/v1/payment_intents", PARAMS, key="old")
    assert fresh.replayed is False
    assert len(psp.core.state.payment_intents) == 2


def test_validation_errors_are_not_saved_so_a_corrected_retry_runs(psp):
    bad = psp.post("/v1/payment_intents", {**PARAMS, "amount": "x"}, key="fixme")
    assert bad.response.status == 400
    assert psp.core.lookup_idempotency("fixme").found is False
    good = psp.post("/v1/payment_intents", PARAMS, key="fixme")
    assert good.response.status == 200 and not good.replayed


def test_an_injected_500_is_saved_and_replayed_without_any_effect(make_psp):
    psp = make_psp(faults={"api_rules": [{"error_500_rate": 1.0}]})
    first = psp.post("/v1/payment_intents", PARAMS, key="boom")
    assert first.response.status == 500
    assert first.response.headers["Stripe-Should-Retry"] == "false"
    psp.core.set_faults({})
    again = psp.post("/v1/payment_intents", PARAMS, key="boom")
    assert again.response.status == 500 and again.replayed
    assert psp.core.state.payment_intents == {}


def test_an_injected_503_is_not_saved_so_a_retry_succeeds(make_psp):
    psp = make_psp(faults={"api_rules": [{"error_503_rate": 1.0}]})
    first = psp.post("/v1/payment_intents", PARAMS, key="shed")
    assert first.response.status == 503 and first.processed is False
    psp.core.set_faults({})
    again = psp.post("/v1/payment_intents", PARAMS, key="shed")
    assert again.response.status == 200 and not again.replayed


def test_after_a_timeout_after_processing_the_key_lookup_tells_what_happened(make_psp):
    psp = make_psp(faults={"api_rules": [{"timeout_after_rate": 1.0}]})
    lost = psp.post("/v1/payment_intents", PARAMS, key="lost-response")
    assert lost.timed_out and lost.processed
    lookup = psp.core.lookup_idempotency("lost-response")
    assert lookup.found and lookup.response is not None
    assert lookup.response.status == 200
    pi_id = lookup.response.body["id"]
    assert psp.core.state.payment_intents[pi_id].status == "succeeded"
    via_admin = psp.core.admin.handle("GET", "/_admin/idempotency/lost-response", {})
    assert via_admin.body["response_body"]["id"] == pi_id
    psp.core.set_faults({})
    retry = psp.post("/v1/payment_intents", PARAMS, key="lost-response")
    assert retry.replayed and retry.response.body["id"] == pi_id
    assert len(psp.core.state.charges) == 1


def test_after_a_timeout_before_processing_the_key_is_unknown_and_nothing_happened(make_psp):
    psp = make_psp(faults={"api_rules": [{"timeout_before_rate": 1.0}]})
    lost = psp.post("/v1/payment_intents", PARAMS, key="never-arrived")
    assert lost.timed_out and not lost.processed
    assert psp.core.lookup_idempotency("never-arrived").to_json()["found"] is False
    assert psp.core.state.payment_intents == {}


def test_get_requests_ignore_idempotency_keys(psp):
    psp.get("/v1/events", key="k")
    assert psp.core.lookup_idempotency("k").found is False


def test_an_overlong_key_is_refused(psp):
    error = psp.error(psp.post("/v1/payment_intents", PARAMS, key="k" * 256))
    assert error["param"] == "Idempotency-Key"
