"""PaymentIntents: Stripe's statuses, capture methods, declines, 3DS and metadata."""

from __future__ import annotations

import pytest

from mock_psp.errors import IllegalTransition
from mock_psp.states import TRANSITIONS, PiStatus, check_transition


def test_confirming_with_pm_card_visa_succeeds_and_captures_automatically(psp):
    pi = psp.pay(2500, metadata={"order_id": "ord-1"})
    assert pi["object"] == "payment_intent"
    assert pi["status"] == "succeeded"
    assert pi["amount_received"] == 2500
    assert pi["amount_capturable"] == 0
    assert pi["latest_charge"].startswith("ch_")
    assert pi["payment_method"].startswith("pm_") and pi["payment_method"] != "pm_card_visa"
    charge = psp.ok("GET", f"/v1/charges/{pi['latest_charge']}")
    assert charge["captured"] is True
    assert charge["amount_captured"] == 2500
    assert charge["metadata"] == {"order_id": "ord-1"}
    assert psp.event_types() == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
    ]


def test_manual_capture_holds_the_amount_until_captured(psp):
    pi = psp.pay(3000, capture_method="manual")
    assert pi["status"] == "requires_capture"
    assert pi["amount_capturable"] == 3000
    assert pi["amount_received"] == 0
    captured = psp.ok("POST", f"/v1/payment_intents/{pi['id']}/capture")
    assert captured["status"] == "succeeded"
    assert captured["amount_received"] == 3000
    assert "charge.captured" in psp.event_types()
    assert "payment_intent.amount_capturable_updated" in psp.event_types()


def test_partial_capture_releases_the_rest_of_the_authorisation(psp):
    pi = psp.pay(3000, capture_method="manual", metadata={"order_id": "o"})
    captured = psp.ok(
        "POST", f"/v1/payment_intents/{pi['id']}/capture", {"amount_to_capture": 1200}
    )
    assert captured["amount_received"] == 1200
    assert captured["amount_capturable"] == 0
    truth = psp.core.truth.per_payment_intent()[pi["id"]]
    assert (truth.authorized_minor, truth.captured_minor, truth.released_minor) == (
        3000,
        1200,
        1800,
    )


def test_capturing_more_than_capturable_is_refused_and_changes_nothing(psp):
    pi = psp.pay(1000, capture_method="manual")
    result = psp.post(f"/v1/payment_intents/{pi['id']}/capture", {"amount_to_capture": 1001})
    error = psp.error(result)
    assert result.response.status == 400
    assert (error["code"], error["param"]) == ("amount_too_large", "amount_to_capture")
    assert psp.ok("GET", f"/v1/payment_intents/{pi['id']}")["status"] == "requires_capture"


def test_capture_of_an_automatic_payment_is_refused_with_unexpected_state(psp):
    pi = psp.pay(1000)
    error = psp.error(psp.post(f"/v1/payment_intents/{pi['id']}/capture"))
    assert error["code"] == "payment_intent_unexpected_state"
    assert error["payment_intent"]["id"] == pi["id"]


def test_cancel_of_an_authorisation_releases_it(psp):
    pi = psp.pay(1000, capture_method="manual")
    canceled = psp.ok(
        "POST", f"/v1/payment_intents/{pi['id']}/cancel", {"cancellation_reason": "abandoned"}
    )
    assert canceled["status"] == "canceled"
    assert canceled["cancellation_reason"] == "abandoned"
    assert canceled["canceled_at"] == int(psp.clock.now())
    assert psp.core.truth.per_payment_intent()[pi["id"]].released_minor == 1000
    assert psp.event_types()[-1] == "payment_intent.canceled"


def test_cancel_after_success_is_refused(psp):
    pi = psp.pay(1000)
    error = psp.error(psp.post(f"/v1/payment_intents/{pi['id']}/cancel"))
    assert error["code"] == "payment_intent_unexpected_state"


def test_create_without_confirm_then_confirm_later(psp):
    pi = psp.ok("POST", "/v1/payment_intents", {"amount": 500, "currency": "eur"})
    assert pi["status"] == "requires_payment_method"
    assert pi["client_secret"].startswith(f"{pi['id']}_secret_")
    missing = psp.error(psp.post(f"/v1/payment_intents/{pi['id']}/confirm"))
    assert missing["code"] == "payment_intent_unexpected_state"
    confirmed = psp.ok(
        "POST", f"/v1/payment_intents/{pi['id']}/confirm", {"payment_method": "pm_card_visa"}
    )
    assert confirmed["status"] == "succeeded"


def test_attaching_a_payment_method_without_confirming_requires_confirmation(psp):
    pi = psp.ok(
        "POST",
        "/v1/payment_intents",
        {"amount": 500, "currency": "usd", "payment_method": "pm_card_mastercard"},
    )
    assert pi["status"] == "requires_confirmation"


@pytest.mark.parametrize(
    ("token", "code", "decline_code"),
    [
        ("pm_card_visa_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_visa_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedLostCard", "card_declined", "lost_card"),
        ("pm_card_chargeDeclinedStolenCard", "card_declined", "stolen_card"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "incorrect_cvc"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", "processing_error"),
    ],
)
def test_decline_test_cards_answer_402_with_stripes_codes(psp, token, code, decline_code):
    result = psp.post(
        "/v1/payment_intents",
        {"amount": 700, "currency": "usd", "payment_method": token, "confirm": "true"},
    )
    assert result.response.status == 402
    error = psp.error(result)
    assert (error["type"], error["code"], error["decline_code"]) == (
        "card_error",
        code,
        decline_code,
    )
    pi = error["payment_intent"]
    assert pi["status"] == "requires_payment_method"
    assert pi["last_payment_error"]["decline_code"] == decline_code
    assert pi["payment_method"] is None
    charge = psp.ok("GET", f"/v1/charges/{error['charge']}")
    assert (charge["status"], charge["paid"], charge["failure_code"]) == ("failed", False, code)
    assert psp.event_types()[-2:] == ["charge.failed", "payment_intent.payment_failed"]
    assert psp.core.truth.effects() == []


def test_a_declined_intent_can_be_confirmed_again_with_a_good_card(psp):
    error = psp.error(
        psp.post(
            "/v1/payment_intents",
            {
                "amount": 700,
                "currency": "usd",
                "payment_method": "pm_card_chargeDeclined",
                "confirm": "true",
            },
        )
    )
    pi_id = error["payment_intent"]["id"]
    retried = psp.ok(
        "POST", f"/v1/payment_intents/{pi_id}/confirm", {"payment_method": "pm_card_visa"}
    )
    assert retried["status"] == "succeeded"
    assert psp.core.truth.per_payment_intent()[pi_id].successful_charge_count == 1


def test_three_d_secure_card_requires_action_then_succeeds_once_authenticated(psp):
    pi = psp.pay(900, pm="pm_card_authenticationRequired", return_url="https://shop.test/r")
    assert pi["status"] == "requires_action"
    assert pi["next_action"]["type"] == "redirect_to_url"
    assert "payment_intent.requires_action" in psp.event_types()
    done = psp.core.admin.authenticate(pi["id"], succeed=True)
    assert done["status"] == "succeeded"
    assert done["next_action"] is None


def test_failed_authentication_returns_the_intent_to_requires_payment_method(psp):
    pi = psp.pay(900, pm="pm_card_threeDSecure2Required")
    done = psp.core.admin.authenticate(pi["id"], succeed=False)
    assert done["status"] == "requires_payment_method"
    assert done["last_payment_error"]["code"] == "payment_intent_authentication_failure"


def test_three_d_secure_then_decline_card_declines_after_authentication(psp):
    pi = psp.pay(900, pm="pm_card_authenticationRequiredChargeDeclinedInsufficientFunds")
    assert pi["status"] == "requires_action"
    done = psp.core.admin.authenticate(pi["id"])
    assert done["status"] == "requires_payment_method"
    assert done["last_payment_error"]["decline_code"] == "insufficient_funds"


def test_authenticating_an_intent_that_needs_no_action_is_refused(psp):
    pi = psp.pay(900)
    response = psp.core.admin.handle("POST", f"/_admin/payment_intents/{pi['id']}/authenticate", {})
    assert response.status == 400
    assert response.body["error"]["code"] == "payment_intent_unexpected_state"


def test_metadata_round_trips_into_every_event_object(psp):
    psp.pay(1000, capture_method="manual", metadata={"order_id": "o-9", "payment_id": "pay_1"})
    for event in psp.core.state.events.values():
        assert event.data_object["metadata"] == {"order_id": "o-9", "payment_id": "pay_1"}


def test_update_merges_metadata_and_an_empty_value_deletes_a_key(psp):
    pi = psp.ok(
        "POST",
        "/v1/payment_intents",
        {"amount": 100, "currency": "usd", "metadata": {"a": "1", "b": "2"}},
    )
    updated = psp.ok(
        "POST", f"/v1/payment_intents/{pi['id']}", {"metadata[b]": "", "metadata[c]": "3"}
    )
    assert updated["metadata"] == {"a": "1", "c": "3"}


def test_retrieve_and_list_with_pagination_newest_first(psp):
    ids = [psp.pay(100 + i)["id"] for i in range(5)]
    first = psp.ok("GET", "/v1/payment_intents", {"limit": 2})
    assert [pi["id"] for pi in first["data"]] == [ids[4], ids[3]]
    assert first["has_more"] is True and first["object"] == "list"
    second = psp.ok("GET", "/v1/payment_intents", {"limit": 2, "starting_after": ids[3]})
    assert [pi["id"] for pi in second["data"]] == [ids[2], ids[1]]
    back = psp.ok("GET", "/v1/payment_intents", {"limit": 2, "ending_before": ids[1]})
    assert [pi["id"] for pi in back["data"]] == [ids[3], ids[2]]
    assert psp.ok("GET", f"/v1/payment_intents/{ids[0]}")["amount"] == 100


def test_expanding_latest_charge_inlines_the_charge(psp):
    pi = psp.pay(100)
    expanded = psp.ok("GET", f"/v1/payment_intents/{pi['id']}", {"expand[]": "latest_charge"})
    assert expanded["latest_charge"]["object"] == "charge"


def test_async_processing_completes_on_a_later_tick(make_psp):
    psp = make_psp(processing_delay_s=30.0)
    pi = psp.pay(100)
    assert pi["status"] == "processing"
    psp.clock.advance(31)
    assert psp.ok("GET", f"/v1/payment_intents/{pi['id']}")["status"] == "succeeded"
    assert psp.event_types()[1:] == [
        "payment_intent.processing",
        "charge.succeeded",
        "payment_intent.succeeded",
    ]


def test_the_transition_table_refuses_leaving_a_terminal_state():
    assert (PiStatus.SUCCEEDED, PiStatus.CANCELED) not in TRANSITIONS
    with pytest.raises(IllegalTransition):
        check_transition(PiStatus.CANCELED, PiStatus.SUCCEEDED)
