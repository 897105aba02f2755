"""Stripe JSON for each stored object. Pure functions of the record (and of ``now`` where
Stripe's answer depends on time, as a balance transaction's pending/available status)."""

from __future__ import annotations

from mock_psp.records import (
    CARD_EXP_MONTH,
    CARD_EXP_YEAR,
    BalanceTransaction,
    Charge,
    Dispute,
    JsonDict,
    PaymentIntent,
    Payout,
    Refund,
    WebhookEndpoint,
)
from mock_psp.testcards import Decline

STATEMENT_DESCRIPTOR = "PAYCHAOS MOCK"


def payment_intent_json(pi: PaymentIntent) -> JsonDict:
    return {
        "id": pi.id,
        "object": "payment_intent",
        "amount": pi.amount_minor,
        "amount_capturable": pi.amount_capturable_minor,
        "amount_details": {"tip": {}},
        "amount_received": pi.amount_received_minor,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": pi.automatic_payment_methods,
        "canceled_at": pi.canceled_at_s,
        "cancellation_reason": pi.cancellation_reason,
        "capture_method": pi.capture_method,
        "client_secret": pi.client_secret,
        "confirmation_method": "automatic",
        "created": pi.created_s,
        "currency": pi.currency,
        "customer": pi.customer,
        "description": pi.description,
        "invoice": None,
        "last_payment_error": pi.last_payment_error,
        "latest_charge": pi.latest_charge_id,
        "livemode": False,
        "metadata": dict(pi.metadata),
        "next_action": pi.next_action,
        "on_behalf_of": None,
        "payment_method": pi.payment_method_id,
        "payment_method_configuration_details": None,
        "payment_method_options": pi.payment_method_options
        or {"card": {"installments": None, "network": None, "request_three_d_secure": "automatic"}},
        "payment_method_types": list(pi.payment_method_types),
        "processing": None,
        "receipt_email": pi.receipt_email,
        "review": None,
        "setup_future_usage": pi.setup_future_usage,
        "shipping": None,
        "source": None,
        "statement_descriptor": pi.statement_descriptor,
        "statement_descriptor_suffix": None,
        "status": str(pi.status),
        "transfer_data": None,
        "transfer_group": None,
    }


def payment_error_json(decline: Decline, charge_id: str, payment_method_id: str) -> JsonDict:
    """The ``last_payment_error`` Stripe stores on a PaymentIntent after a decline."""
    return {
        "type": "card_error",
        "code": decline.code,
        "decline_code": decline.decline_code,
        "message": decline.message,
        "param": decline.param,
        "charge": charge_id,
        "payment_method": {"id": payment_method_id, "object": "payment_method", "type": "card"},
    }


def _outcome(charge: Charge) -> JsonDict:
    if charge.failure is None:
        return {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 32,
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    return {
        "network_status": "declined_by_network",
        "reason": charge.failure.decline_code,
        "risk_level": "normal",
        "risk_score": 32,
        "seller_message": "The bank did not return any further details with this decline.",
        "type": "issuer_declined",
    }


def charge_json(charge: Charge) -> JsonDict:
    card = charge.card
    return {
        "id": charge.id,
        "object": "charge",
        "amount": charge.amount_minor,
        "amount_captured": charge.amount_captured_minor,
        "amount_refunded": charge.amount_refunded_minor,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": charge.balance_transaction_id,
        "billing_details": {
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": None,
            "name": None,
            "phone": None,
        },
        "calculated_statement_descriptor": STATEMENT_DESCRIPTOR,
        "captured": charge.captured,
        "created": charge.created_s,
        "currency": charge.currency,
        "customer": None,
        "description": charge.description,
        "disputed": charge.dispute_id is not None,
        "failure_balance_transaction": None,
        "failure_code": charge.failure.code if charge.failure else None,
        "failure_message": charge.failure.message if charge.failure else None,
        "fraud_details": {},
        "livemode": False,
        "metadata": dict(charge.metadata),
        "on_behalf_of": None,
        "outcome": _outcome(charge),
        "paid": charge.status == "succeeded",
        "payment_intent": charge.payment_intent_id,
        "payment_method": charge.payment_method_id,
        "payment_method_details": {
            "card": {
                "brand": card.brand,
                "country": "US",
                "exp_month": CARD_EXP_MONTH,
                "exp_year": CARD_EXP_YEAR,
                "funding": card.funding,
                "last4": card.last4,
                "network": card.brand,
                "three_d_secure": None,
            },
            "type": "card",
        },
        "receipt_email": charge.receipt_email,
        "receipt_url": None,
        "refunded": charge.captured
        and charge.amount_refunded_minor == charge.amount_captured_minor,
        "review": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "status": charge.status,
        "transfer_data": None,
        "transfer_group": None,
    }


def refund_json(refund: Refund) -> JsonDict:
    return {
        "id": refund.id,
        "object": "refund",
        "amount": refund.amount_minor,
        "balance_transaction": refund.balance_transaction_id,
        "charge": refund.charge_id,
        "created": refund.created_s,
        "currency": refund.currency,
        "destination_details": {
            "card": {
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        "metadata": dict(refund.metadata),
        "payment_intent": refund.payment_intent_id,
        "reason": refund.reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": refund.status,
        "transfer_reversal": None,
    }


def balance_transaction_json(bt: BalanceTransaction, now_s: float) -> JsonDict:
    fee_details = []
    if bt.fee_minor != 0:
        fee_details.append(
            {
                "amount": bt.fee_minor,
                "application": None,
                "currency": bt.currency,
                "description": "Stripe processing fees",
                "type": "stripe_fee",
            }
        )
    return {
        "id": bt.id,
        "object": "balance_transaction",
        "amount": bt.amount_minor,
        "available_on": bt.available_on_s,
        "created": bt.created_s,
        "currency": bt.currency,
        "description": bt.description,
        "exchange_rate": None,
        "fee": bt.fee_minor,
        "fee_details": fee_details,
        "net": bt.net_minor,
        "reporting_category": bt.reporting_category,
        "source": bt.source_id,
        "status": "available" if bt.available_on_s <= now_s else "pending",
        "type": bt.type,
    }


def dispute_json(
    dispute: Dispute, balance_transactions: list[BalanceTransaction], brand: str, now_s: float
) -> JsonDict:
    return {
        "id": dispute.id,
        "object": "dispute",
        "amount": dispute.amount_minor,
        "balance_transactions": [
            balance_transaction_json(bt, now_s) for bt in balance_transactions
        ],
        "charge": dispute.charge_id,
        "created": dispute.created_s,
        "currency": dispute.currency,
        "evidence": dict(dispute.evidence),
        "evidence_details": {
            "due_by": dispute.evidence_due_by_s,
            "has_evidence": bool(dispute.evidence),
            "past_due": now_s > dispute.evidence_due_by_s,
            "submission_count": dispute.submission_count,
        },
        "is_charge_refundable": dispute.is_inquiry,
        "livemode": False,
        "metadata": dict(dispute.metadata),
        "payment_intent": dispute.payment_intent_id,
        "payment_method_details": {
            "card": {
                "brand": brand,
                "case_type": "inquiry" if dispute.is_inquiry else "chargeback",
                "network_reason_code": "10.4" if dispute.reason == "fraudulent" else "13.1",
            },
            "type": "card",
        },
        "reason": dispute.reason,
        "status": dispute.status,
    }


def payout_json(payout: Payout) -> JsonDict:
    return {
        "id": payout.id,
        "object": "payout",
        "amount": payout.amount_minor,
        "arrival_date": payout.arrival_date_s,
        "automatic": False,
        "balance_transaction": payout.balance_transaction_id,
        "created": payout.created_s,
        "currency": payout.currency,
        "description": payout.description,
        "destination": "ba_mock_bank_account",
        "failure_balance_transaction": None,
        "failure_code": payout.failure_code,
        "failure_message": None,
        "livemode": False,
        "metadata": dict(payout.metadata),
        "method": "standard",
        "original_payout": None,
        "reversed_by": None,
        "source_type": "card",
        "statement_descriptor": None,
        "status": payout.status,
        "type": "bank_account",
    }


def webhook_endpoint_json(endpoint: WebhookEndpoint, *, with_secret: bool) -> JsonDict:
    body: JsonDict = {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "api_version": None,
        "application": None,
        "created": endpoint.created_s,
        "description": endpoint.description,
        "enabled_events": list(endpoint.enabled_events),
        "livemode": False,
        "metadata": dict(endpoint.metadata),
        "status": "enabled" if endpoint.enabled else "disabled",
        "url": endpoint.url,
    }
    # Like Stripe, the signing secret is only returned when the endpoint is created.
    if with_secret:
        body["secret"] = endpoint.secret
    return body
