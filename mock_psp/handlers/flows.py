"""The money flows behind the endpoints: authorise, decline, capture, release, dispute.

Each function performs one provider-side change completely: the object updates, the
balance transaction, the ground-truth effect and the events, in Stripe's order. They
are called after a handler has validated its command, and by ``tick`` and admin calls.
"""

from __future__ import annotations

from mock_psp.records import Charge, Dispute, PaymentIntent, PaymentMethod
from mock_psp.serialize import (
    balance_transaction_json,
    charge_json,
    dispute_json,
    payment_error_json,
    payment_intent_json,
)
from mock_psp.states import PiStatus, check_transition
from mock_psp.testcards import Decline, Flow
from mock_psp.truth import EffectKind
from mock_psp.world import World, day_start_s

AUTH_FAILURE_MESSAGE = (
    "The provided PaymentMethod has failed authentication. You can provide payment_method_data "
    "or a new PaymentMethod to attempt to fulfill this PaymentIntent again."
)


def set_status(pi: PaymentIntent, target: PiStatus) -> None:
    pi.status = check_transition(pi.status, target)


def attempt_payment(
    world: World, pi: PaymentIntent, pm: PaymentMethod, forced: Decline | None
) -> Decline | None:
    """Run a confirmation; returns the decline (after recording it) or None."""
    card = pm.card
    pi.last_payment_error = None
    if card.flow is Flow.AUTHENTICATE:
        request_authentication(world, pi)
        return None
    decline = forced or (card.decline if card.flow is Flow.DECLINE else None)
    if world.config.processing_delay_s > 0:
        set_status(pi, PiStatus.PROCESSING)
        pi.processing_until_s = world.now_s + world.config.processing_delay_s
        pi.processing_decline = decline
        world.add_timer(pi.processing_until_s, "processing", pi.id)
        world.emit("payment_intent.processing", payment_intent_json(pi))
        return None
    if decline is not None:
        fail_payment(world, pi, pm, decline)
        return decline
    authorize(world, pi, pm)
    return None


def request_authentication(world: World, pi: PaymentIntent) -> None:
    set_status(pi, PiStatus.REQUIRES_ACTION)
    if pi.return_url:
        pi.next_action = {
            "type": "redirect_to_url",
            "redirect_to_url": {
                "return_url": pi.return_url,
                "url": f"https://hooks.stripe.com/3d_secure_2/authenticate/{pi.id}",
            },
        }
    else:
        pi.next_action = {
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": ""},
        }
    world.emit("payment_intent.requires_action", payment_intent_json(pi))


def _new_charge(world: World, pi: PaymentIntent, pm: PaymentMethod, status: str) -> Charge:
    charge = Charge(
        id=world.new_id("ch"),
        created_s=world.now_int,
        payment_intent_id=pi.id,
        payment_method_id=pm.id,
        card=pm.card,
        amount_minor=pi.amount_minor,
        currency=pi.currency,
        status=status,
        metadata=dict(pi.metadata),  # Stripe copies the intent's metadata onto its charge
        description=pi.description,
        receipt_email=pi.receipt_email,
    )
    world.state.charges[charge.id] = charge
    pi.latest_charge_id = charge.id
    return charge


def fail_payment(world: World, pi: PaymentIntent, pm: PaymentMethod, decline: Decline) -> Charge:
    charge = _new_charge(world, pi, pm, "failed")
    charge.failure = decline
    pi.next_action = None
    pi.last_payment_error = payment_error_json(decline, charge.id, pm.id)
    # Stripe detaches the failed method so the client must supply a new one.
    pi.payment_method_id = None
    set_status(pi, PiStatus.REQUIRES_PAYMENT_METHOD)
    world.emit("charge.failed", charge_json(charge))
    world.emit("payment_intent.payment_failed", payment_intent_json(pi))
    return charge


def fail_authentication(world: World, pi: PaymentIntent) -> None:
    pm_id = pi.payment_method_id
    pi.next_action = None
    pi.last_payment_error = {
        "type": "invalid_request_error",
        "code": "payment_intent_authentication_failure",
        "decline_code": None,
        "message": AUTH_FAILURE_MESSAGE,
        "param": None,
        "payment_method": {"id": pm_id, "object": "payment_method", "type": "card"},
    }
    pi.payment_method_id = None
    set_status(pi, PiStatus.REQUIRES_PAYMENT_METHOD)
    world.emit("payment_intent.payment_failed", payment_intent_json(pi))


def authorize(world: World, pi: PaymentIntent, pm: PaymentMethod) -> Charge:
    charge = _new_charge(world, pi, pm, "succeeded")
    pi.next_action = None
    pi.processing_until_s = None
    world.record_effect(EffectKind.AUTHORIZED, pi.amount_minor, pi.currency, charge.id, pi)
    if pi.capture_method == "manual":
        pi.amount_capturable_minor = pi.amount_minor
        set_status(pi, PiStatus.REQUIRES_CAPTURE)
        world.emit("charge.succeeded", charge_json(charge))
        world.emit("payment_intent.amount_capturable_updated", payment_intent_json(pi))
        return charge
    _capture_charge(world, pi, charge, pi.amount_minor)
    set_status(pi, PiStatus.SUCCEEDED)
    world.emit("charge.succeeded", charge_json(charge))
    world.emit("payment_intent.succeeded", payment_intent_json(pi))
    _maybe_dispute(world, pi, charge)
    return charge


def _capture_charge(world: World, pi: PaymentIntent, charge: Charge, amount_minor: int) -> None:
    assert 0 < amount_minor <= charge.amount_minor, (amount_minor, charge.amount_minor)
    fee_minor = world.config.pricing.charge_fee_minor(amount_minor, charge.currency)
    delay_s = 0 if charge.card.bypass_pending else world.config.availability_delay_s
    bt = world.post_balance(
        amount_minor=amount_minor,
        fee_minor=fee_minor,
        currency=charge.currency,
        type_="charge",
        category="charge",
        source_id=charge.id,
        description=pi.description,
        available_on_s=day_start_s(world.now_s + delay_s) if delay_s else world.now_int,
        payment_intent_id=pi.id,
        charge_id=charge.id,
    )
    charge.captured = True
    charge.amount_captured_minor = amount_minor
    charge.balance_transaction_id = bt.id
    pi.amount_received_minor = amount_minor
    pi.amount_capturable_minor = 0
    world.record_effect(EffectKind.CAPTURED, amount_minor, charge.currency, charge.id, pi)


def capture(world: World, pi: PaymentIntent, amount_minor: int) -> Charge:
    assert pi.status is PiStatus.REQUIRES_CAPTURE and pi.latest_charge_id is not None
    charge = world.state.charges[pi.latest_charge_id]
    released_minor = pi.amount_capturable_minor - amount_minor
    _capture_charge(world, pi, charge, amount_minor)
    if released_minor > 0:
        charge.released_minor = released_minor
        world.record_effect(EffectKind.RELEASED, released_minor, charge.currency, charge.id, pi)
    set_status(pi, PiStatus.SUCCEEDED)
    world.emit("charge.captured", charge_json(charge))
    world.emit("payment_intent.succeeded", payment_intent_json(pi))
    _maybe_dispute(world, pi, charge)
    return charge


def cancel(world: World, pi: PaymentIntent, reason: str | None) -> None:
    if pi.status is PiStatus.REQUIRES_CAPTURE and pi.latest_charge_id is not None:
        charge = world.state.charges[pi.latest_charge_id]
        charge.released_minor = pi.amount_capturable_minor
        world.record_effect(
            EffectKind.RELEASED, pi.amount_capturable_minor, charge.currency, charge.id, pi
        )
    pi.amount_capturable_minor = 0
    pi.next_action = None
    pi.canceled_at_s = world.now_int
    pi.cancellation_reason = reason
    set_status(pi, PiStatus.CANCELED)
    world.emit("payment_intent.canceled", payment_intent_json(pi))


def _maybe_dispute(world: World, pi: PaymentIntent, charge: Charge) -> None:
    spec = charge.card.dispute
    if spec is not None:
        open_dispute(world, charge, spec.reason, spec.inquiry, charge.amount_captured_minor)


def dispute_view(world: World, dispute: Dispute) -> dict[str, object]:
    bts = [world.state.balance_transactions[bt_id] for bt_id in dispute.balance_transaction_ids]
    brand = world.state.charges[dispute.charge_id].card.brand
    return dispute_json(dispute, bts, brand, world.now_s)


def open_dispute(
    world: World, charge: Charge, reason: str, inquiry: bool, amount_minor: int
) -> Dispute:
    assert charge.captured and charge.dispute_id is None
    pi = world.state.payment_intents[charge.payment_intent_id]
    dispute = Dispute(
        id=world.new_id("du"),
        created_s=world.now_int,
        amount_minor=amount_minor,
        currency=charge.currency,
        charge_id=charge.id,
        payment_intent_id=pi.id,
        reason=reason,
        status="warning_needs_response" if inquiry else "needs_response",
        is_inquiry=inquiry,
        evidence_due_by_s=world.now_int + world.config.dispute_evidence_window_s,
        # Not Stripe's behaviour (its disputes start with empty metadata): copying the
        # intent's lets an engine match dispute webhooks by its own payment id.
        metadata=dict(pi.metadata),
    )
    world.state.disputes[dispute.id] = dispute
    charge.dispute_id = dispute.id
    if inquiry:
        world.emit("charge.dispute.created", dispute_view(world, dispute))
    else:
        # As Stripe does for a chargeback, the dispute arrives with its withdrawal (and
        # the dispute fee) already on it.
        bt = world.post_balance(
            amount_minor=-amount_minor,
            fee_minor=world.config.pricing.dispute_fee_minor,
            currency=charge.currency,
            type_="adjustment",
            category="dispute",
            source_id=dispute.id,
            description=f"Chargeback withdrawal for {charge.id}",
            payment_intent_id=pi.id,
            charge_id=charge.id,
        )
        dispute.balance_transaction_ids.append(bt.id)
        world.record_effect(
            EffectKind.DISPUTE_WITHDRAWN, amount_minor, charge.currency, dispute.id, pi
        )
        world.emit("charge.dispute.created", dispute_view(world, dispute))
        world.emit("charge.dispute.funds_withdrawn", dispute_view(world, dispute))
    return dispute


def close_dispute(world: World, dispute: Dispute, won: bool) -> None:
    """Close a dispute as won (funds reinstated) or lost (the withdrawal stands)."""
    assert dispute.status not in ("won", "lost", "warning_closed"), dispute.status
    pi = world.state.payment_intents[dispute.payment_intent_id]
    previous = {"status": dispute.status}
    if dispute.is_inquiry:
        dispute.status = "warning_closed"
    else:
        dispute.status = "won" if won else "lost"
    if won and not dispute.is_inquiry:
        pricing = world.config.pricing
        fee_back = pricing.dispute_fee_minor if pricing.dispute_fee_returned_on_win else 0
        bt = world.post_balance(
            amount_minor=dispute.amount_minor,
            fee_minor=-fee_back,
            currency=dispute.currency,
            type_="adjustment",
            category="dispute_reversal",
            source_id=dispute.id,
            description=f"Chargeback reversal for {dispute.charge_id}",
            payment_intent_id=pi.id,
            charge_id=dispute.charge_id,
        )
        dispute.balance_transaction_ids.append(bt.id)
        world.record_effect(
            EffectKind.DISPUTE_REINSTATED, dispute.amount_minor, dispute.currency, dispute.id, pi
        )
        world.emit("charge.dispute.funds_reinstated", dispute_view(world, dispute))
    world.emit("charge.dispute.closed", dispute_view(world, dispute), previous)


def balance_json_for(world: World, bt_id: str | None) -> dict[str, object] | None:
    if bt_id is None:
        return None
    return balance_transaction_json(world.state.balance_transactions[bt_id], world.now_s)
