"""Refunds, disputes, balance transactions with pricing, payouts and the ground truth."""

from __future__ import annotations

import pytest

from mock_psp.money import Pricing, format_major

DAY_S = 86_400


def test_several_partial_refunds_add_up_and_an_over_refund_is_refused(psp):
    pi = psp.pay(1000, metadata={"order_id": "o1"})
    first = psp.ok(
        "POST",
        "/v1/refunds",
        {"payment_intent": pi["id"], "amount": 300, "metadata[refund_id]": "r1"},
    )
    assert (first["status"], first["amount"], first["metadata"]) == (
        "succeeded",
        300,
        {"refund_id": "r1"},
    )
    psp.ok("POST", "/v1/refunds", {"charge": pi["latest_charge"], "amount": 600})
    over = psp.post("/v1/refunds", {"payment_intent": pi["id"], "amount": 101})
    assert psp.error(over)["code"] == "amount_too_large"
    rest = psp.ok("POST", "/v1/refunds", {"payment_intent": pi["id"]})
    assert rest["amount"] == 100
    again = psp.error(psp.post("/v1/refunds", {"payment_intent": pi["id"]}))
    assert again["code"] == "charge_already_refunded"
    charge = psp.ok("GET", f"/v1/charges/{pi['latest_charge']}")
    assert (charge["amount_refunded"], charge["refunded"]) == (1000, True)
    assert psp.core.truth.per_order()["o1"]["usd"].refunded_minor == 1000
    listed = psp.ok("GET", "/v1/refunds", {"payment_intent": pi["id"]})
    assert [r["amount"] for r in listed["data"]] == [100, 600, 300]


def test_refund_events_carry_the_refund_metadata(psp):
    pi = psp.pay(1000)
    psp.ok("POST", "/v1/refunds", {"payment_intent": pi["id"], "metadata[refund_id]": "r9"})
    events = list(psp.core.state.events.values())
    assert [e.type for e in events[-2:]] == ["refund.created", "charge.refunded"]
    assert events[-2].data_object["metadata"] == {"refund_id": "r9"}


def test_refunding_an_uncaptured_payment_is_refused(psp):
    pi = psp.pay(1000, capture_method="manual")
    error = psp.error(psp.post("/v1/refunds", {"payment_intent": pi["id"]}))
    assert error["code"] == "charge_not_refundable"


def test_pending_refunds_succeed_later_with_refund_updated(make_psp):
    psp = make_psp(refund_settle_delay_s=3600)
    pi = psp.pay(1000)
    refund = psp.ok("POST", "/v1/refunds", {"payment_intent": pi["id"]})
    assert refund["status"] == "pending"
    psp.clock.advance(3600)
    assert psp.ok("GET", f"/v1/refunds/{refund['id']}")["status"] == "succeeded"
    assert psp.event_types()[-1] == "refund.updated"


def test_the_dispute_test_card_disputes_after_capture_and_withdraws_funds(psp):
    pi = psp.pay(5000, pm="pm_card_createDispute", capture_method="manual")
    assert psp.core.state.disputes == {}
    psp.ok("POST", f"/v1/payment_intents/{pi['id']}/capture")
    (dispute,) = psp.ok("GET", "/v1/disputes", {"payment_intent": pi["id"]})["data"]
    assert (dispute["status"], dispute["reason"], dispute["amount"]) == (
        "needs_response",
        "fraudulent",
        5000,
    )
    (withdrawal,) = dispute["balance_transactions"]
    assert (withdrawal["amount"], withdrawal["fee"], withdrawal["net"]) == (-5000, 1500, -6500)
    assert withdrawal["reporting_category"] == "dispute"
    assert psp.event_types()[-2:] == ["charge.dispute.created", "charge.dispute.funds_withdrawn"]
    refund = psp.error(psp.post("/v1/refunds", {"payment_intent": pi["id"]}))
    assert refund["code"] == "charge_disputed"


def test_winning_evidence_wins_the_dispute_and_reinstates_funds(psp):
    pi = psp.pay(5000, pm="pm_card_createDispute", metadata={"order_id": "o7"})
    dispute_id = psp.core.state.charges[pi["latest_charge"]].dispute_id
    won = psp.ok(
        "POST", f"/v1/disputes/{dispute_id}", {"evidence[uncategorized_text]": "winning_evidence"}
    )
    assert won["status"] == "won"
    assert [bt["reporting_category"] for bt in won["balance_transactions"]] == [
        "dispute",
        "dispute_reversal",
    ]
    assert psp.event_types()[-3:] == [
        "charge.dispute.updated",
        "charge.dispute.funds_reinstated",
        "charge.dispute.closed",
    ]
    totals = psp.core.truth.per_order()["o7"]["usd"]
    assert (totals.disputed_minor, totals.reinstated_minor, totals.net_captured_minor) == (
        5000,
        5000,
        5000,
    )


def test_submitting_evidence_puts_the_dispute_under_review_and_admin_closes_it(psp):
    pi = psp.pay(5000, pm="pm_card_createDispute")
    dispute_id = psp.core.state.charges[pi["latest_charge"]].dispute_id
    review = psp.ok(
        "POST", f"/v1/disputes/{dispute_id}", {"evidence[product_description]": "a mug"}
    )
    assert review["status"] == "under_review"
    assert review["evidence_details"]["submission_count"] == 1
    lost = psp.core.admin.handle(
        "POST", f"/_admin/disputes/{dispute_id}/close", {"outcome": "lost"}
    )
    assert lost.body["status"] == "lost"
    assert psp.core.truth.per_payment_intent()[pi["id"]].net_captured_minor == 0
    again = psp.error(psp.post(f"/v1/disputes/{dispute_id}/close"))
    assert again["code"] == "dispute_already_closed"


def test_accepting_a_dispute_loses_it(psp):
    pi = psp.pay(5000, pm="pm_card_createDispute")
    dispute_id = psp.core.state.charges[pi["latest_charge"]].dispute_id
    assert psp.ok("POST", f"/v1/disputes/{dispute_id}/close")["status"] == "lost"


def test_an_inquiry_withdraws_no_funds(psp):
    pi = psp.pay(5000, pm="pm_card_createDisputeInquiry")
    (dispute,) = psp.ok("GET", "/v1/disputes")["data"]
    assert dispute["status"] == "warning_needs_response"
    assert dispute["balance_transactions"] == []
    assert psp.core.truth.per_payment_intent()[pi["id"]].disputed_minor == 0


def test_the_admin_api_opens_a_dispute_on_any_captured_payment(psp):
    pi = psp.pay(4000)
    response = psp.core.admin.handle(
        "POST",
        "/_admin/disputes",
        {"payment_intent": pi["id"], "amount": 1000, "reason": "product_not_received"},
    )
    assert response.status == 200
    assert (response.body["amount"], response.body["reason"]) == (1000, "product_not_received")
    twice = psp.core.admin.handle("POST", "/_admin/disputes", {"payment_intent": pi["id"]})
    assert twice.status == 400


@pytest.mark.parametrize(
    ("amount", "fee"),
    [(1000, 59), (1, 30), (17, 30), (18, 31), (10_000, 320), (99_999_999, 2_900_030)],
)
def test_the_default_fee_is_2_9_percent_plus_30_rounded_half_up(amount, fee):
    assert Pricing().charge_fee_minor(amount, "usd") == fee


def test_charge_balance_transactions_carry_gross_fee_net_and_availability(psp):
    pi = psp.pay(1000)
    (bt,) = psp.ok("GET", "/v1/balance_transactions", {"source": pi["latest_charge"]})["data"]
    assert (bt["amount"], bt["fee"], bt["net"], bt["reporting_category"]) == (
        1000,
        59,
        941,
        "charge",
    )
    assert bt["status"] == "pending"
    assert bt["available_on"] == int(psp.clock.now()) // DAY_S * DAY_S + 2 * DAY_S
    assert bt["fee_details"][0]["type"] == "stripe_fee"


def test_pricing_is_configurable_per_currency(make_psp):
    psp = make_psp(pricing={"fee_bps": 360, "fee_fixed_minor_by_currency": {"jpy": 0}})
    pi = psp.ok(
        "POST",
        "/v1/payment_intents",
        {"amount": 1000, "currency": "jpy", "payment_method": "pm_card_visa", "confirm": "true"},
    )
    bt = psp.core.state.balance_transactions[
        psp.core.state.charges[pi["latest_charge"]].balance_transaction_id
    ]
    assert (bt.fee_minor, bt.net_minor) == (36, 964)


def test_a_payout_needs_available_funds_and_is_paid_on_arrival(psp):
    psp.pay(10_000)
    refused = psp.error(psp.post("/v1/payouts", {"amount": 100, "currency": "usd"}))
    assert (refused["code"], refused["param"]) == ("balance_insufficient", "amount")
    psp.clock.advance(2 * DAY_S)
    balance = psp.ok("GET", "/v1/balance")
    assert balance["available"] == [
        {"amount": 9680, "currency": "usd", "source_types": {"card": 9680}}
    ]
    payout = psp.ok(
        "POST", "/v1/payouts", {"amount": 9000, "currency": "usd", "metadata[batch]": "b1"}
    )
    assert (payout["status"], payout["metadata"]) == ("pending", {"batch": "b1"})
    assert psp.event_types()[-1] == "payout.created"
    psp.clock.advance(DAY_S)
    assert psp.ok("GET", f"/v1/payouts/{payout['id']}")["status"] == "paid"
    assert psp.event_types()[-2:] == ["payout.updated", "payout.paid"]
    assert psp.core.truth.paid_out_minor() == {"usd": 9000}
    assert psp.ok("GET", "/v1/balance")["available"][0]["amount"] == 680


def test_a_pending_payout_can_be_canceled_and_the_money_returns(psp):
    psp.pay(pm="pm_card_bypassPending", amount=10_000)
    payout = psp.ok("POST", "/v1/payouts", {"amount": 5000, "currency": "usd"})
    canceled = psp.ok("POST", f"/v1/payouts/{payout['id']}/cancel")
    assert canceled["status"] == "canceled"
    assert psp.core.truth.paid_out_minor() == {"usd": 0}
    assert psp.error(psp.post(f"/v1/payouts/{payout['id']}/cancel"))["code"] == (
        "payout_not_cancelable"
    )


def test_the_ground_truth_groups_effects_per_intent_and_per_order(psp):
    psp.pay(1000, metadata={"order_id": "dup"})
    psp.pay(1000, metadata={"order_id": "dup"})
    order = psp.core.truth.per_order()["dup"]["usd"]
    assert order.successful_charge_count == 2  # a double charge an oracle must flag
    assert order.captured_minor == 2000
    truth = psp.core.admin.handle("GET", "/_admin/ground_truth", {}).body
    assert truth["orders"]["dup"]["usd"]["net_captured"] == 2000
    assert {e["kind"] for e in truth["effects"]} == {"authorized", "captured"}


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (1234, "usd", "12.34"),
        (-5, "usd", "-0.05"),
        (700, "jpy", "700"),
        (1234, "kwd", "1.234"),
        (-1, "kwd", "-0.001"),
        (0, "eur", "0.00"),
    ],
)
def test_major_units_use_the_currency_exponent(amount, currency, text):
    assert format_major(amount, currency) == text
