"""Bad input: Stripe's error shape, the param named, the right status, nothing changed."""

from __future__ import annotations

import pytest

ERROR_KEYS = {"type", "code", "decline_code", "message", "param", "payment_intent"}


def _snapshot(psp):
    state = psp.core.state
    return (state.object_count(), len(state.payment_methods), len(psp.core.idempotency))


@pytest.mark.parametrize(
    ("params", "code", "param"),
    [
        ({"currency": "usd"}, "parameter_missing", "amount"),
        ({"amount": 100}, "parameter_missing", "currency"),
        ({"amount": "abc", "currency": "usd"}, "parameter_invalid_integer", "amount"),
        ({"amount": 10.5, "currency": "usd"}, "parameter_invalid_integer", "amount"),
        ({"amount": 0, "currency": "usd"}, "amount_too_small", "amount"),
        ({"amount": 100_000_000, "currency": "usd"}, "amount_too_large", "amount"),
        ({"amount": 100, "currency": "xyz"}, "parameter_invalid", "currency"),
        ({"amount": 100, "currency": "usd", "colour": "red"}, "parameter_unknown", "colour"),
        (
            {"amount": 100, "currency": "usd", "capture_method": "later"},
            "parameter_invalid_enum",
            "capture_method",
        ),
        (
            {"amount": 100, "currency": "usd", "confirm": "yes"},
            "parameter_invalid_boolean",
            "confirm",
        ),
        (
            {"amount": 100, "currency": "usd", "confirm": "true"},
            "parameter_missing",
            "payment_method",
        ),
        (
            {"amount": 100, "currency": "usd", "automatic_payment_methods[colour]": "x"},
            "parameter_unknown",
            "automatic_payment_methods[colour]",
        ),
        (
            {"amount": 100, "currency": "usd", "metadata": {"k" * 41: "v"}},
            "parameter_invalid",
            f"metadata[{'k' * 41}]",
        ),
        (
            {"amount": 100, "currency": "usd", "payment_method_types[]": "sepa_debit"},
            "parameter_invalid_enum",
            "payment_method_types[0]",
        ),
    ],
)
def test_bad_create_params_get_400_naming_the_param_and_change_nothing(psp, params, code, param):
    before = _snapshot(psp)
    result = psp.post("/v1/payment_intents", params, key="k-bad")
    assert result.response.status == 400
    error = psp.error(result)
    assert set(error) >= ERROR_KEYS
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert _snapshot(psp) == before


def test_too_many_metadata_keys_are_refused(psp):
    metadata = {f"k{i}": "v" for i in range(51)}
    error = psp.error(
        psp.post("/v1/payment_intents", {"amount": 1, "currency": "usd", "metadata": metadata})
    )
    assert error["param"] == "metadata"


@pytest.mark.parametrize(
    "params",
    [
        {"payment_method": "4242424242424242"},
        {"payment_method": "4242 4242 4242 4242"},
        {"payment_method_data[card][number]": "4000000000000002"},
        {"description": "card 5555555555554444 exp 12/30"},
    ],
)
def test_raw_card_numbers_are_refused_and_never_echoed(psp, params):
    before = _snapshot(psp)
    result = psp.post(
        "/v1/payment_intents", {"amount": 100, "currency": "usd", **params}, key="pan-key"
    )
    error = psp.error(result)
    assert error["code"] == "raw_card_data_refused"
    assert "4242" not in error["message"] and "5555" not in error["message"]
    assert _snapshot(psp) == before
    assert psp.core.lookup_idempotency("pan-key").found is False


def test_an_unknown_payment_method_is_a_404_naming_payment_method(psp):
    result = psp.post(
        "/v1/payment_intents", {"amount": 100, "currency": "usd", "payment_method": "pm_card_nope"}
    )
    assert result.response.status == 404
    error = psp.error(result)
    assert (error["code"], error["param"]) == ("resource_missing", "payment_method")
    assert psp.core.state.payment_intents == {}


def test_an_unknown_id_is_a_404_resource_missing(psp):
    result = psp.get("/v1/payment_intents/pi_doesnotexist")
    assert result.response.status == 404
    assert psp.error(result)["code"] == "resource_missing"
    assert psp.error(psp.post("/v1/refunds", {"payment_intent": "pi_nope"}))["param"] == (
        "payment_intent"
    )


def test_a_missing_api_key_is_a_401(psp):
    result = psp.post("/v1/payment_intents", {"amount": 1, "currency": "usd"}, api_key=None)
    assert result.response.status == 401
    assert psp.core.state.payment_intents == {}


@pytest.mark.parametrize("api_key", ["sk_live_123", "pk_test_123", "sk_test_"])
def test_a_bad_api_key_is_a_401_with_the_key_masked(psp, api_key):
    result = psp.post("/v1/payment_intents", {"amount": 1, "currency": "usd"}, api_key=api_key)
    assert result.response.status == 401
    assert psp.error(result)["type"] == "invalid_request_error"


def test_configured_api_keys_are_the_only_ones_accepted(make_psp):
    psp = make_psp(api_keys=["sk_test_only"])
    assert psp.get("/v1/events").response.status == 401
    assert psp.get("/v1/events", api_key="sk_test_only").response.status == 200


def test_basic_auth_with_the_key_as_user_is_accepted(psp):
    from mock_psp.core import ApiRequest

    headers = {"Authorization": "Basic c2tfdGVzdF9hYmM6"}  # base64("sk_test_abc:")
    result = psp.core.handle(ApiRequest("GET", "/v1/balance", {}, headers))
    assert result.response.status == 200


def test_an_unknown_url_is_a_404_without_a_code(psp):
    result = psp.get("/v1/nothing_here")
    assert result.response.status == 404
    error = psp.error(result)
    assert error["code"] is None and "Unrecognized request URL" in error["message"]


def test_list_limits_are_bounded(psp):
    error = psp.error(psp.get("/v1/events", {"limit": 101}))
    assert error["param"] == "limit"


def test_an_unknown_cursor_names_the_cursor_param(psp):
    error = psp.error(psp.get("/v1/payment_intents", {"starting_after": "pi_nope"}))
    assert error["param"] == "starting_after"
