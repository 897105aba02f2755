"""Webhooks: deduplicated by event id, tolerant of reordering, posted exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.audit import audit
from engine.domain.commands import Authorize, Capture, Refund
from engine.domain.provider import EventType, OutcomeStatus, ProviderEvent, ProviderOutcome
from engine.service.driver import perform
from engine.service.engine import PaymentEngine
from tests.integration.helpers import MERCHANT, authorized, captured, create

AT = datetime(2026, 1, 1, tzinfo=UTC)


def event(event_id: str, kind: EventType, payment_id: str, **fields: object) -> ProviderEvent:
    return ProviderEvent(event_id, kind.value, AT, payment_id=payment_id, **fields)  # type: ignore[arg-type]


def journal_kinds(engine: PaymentEngine, payment_id: str) -> list[str]:
    return [journal["kind"] for journal, _ in engine.ledger_of(payment_id)]


def assert_audit_holds(database: Database) -> None:
    with database.engine.connect() as connection:
        assert [r.name for r in audit(connection) if not r.ok] == []


def test_a_webhook_settles_an_authorization_whose_response_was_lost(
    engine: PaymentEngine, database: Database
) -> None:
    payment_id = create(engine).payment.id
    begun = engine.begin_authorize(Authorize(MERCHANT, "a", payment_id))
    assert begun.call is not None
    engine.complete_authorize(begun.call.attempt_id, ProviderOutcome(OutcomeStatus.UNKNOWN))
    authorized_event = event("evt_1", EventType.AUTHORIZED, payment_id, amount_minor=10_000,
                             provider_payment_id="pi_1")  # fmt: skip
    assert engine.apply_provider_event(authorized_event).outcome == "applied"
    payment = engine.get_payment(payment_id)
    assert payment.state == "authorized"
    assert payment["provider_payment_id"] == "pi_1"
    assert engine.unresolved_attempts(timedelta(0)) == []
    replay = engine.begin_authorize(Authorize(MERCHANT, "a", payment_id))
    assert replay.replayed and replay.status_code == 202  # the saved answer never changes
    assert_audit_holds(database)


def test_a_duplicate_webhook_is_recorded_once_and_posts_nothing_more(
    engine: PaymentEngine, database: Database
) -> None:
    payment_id = create(engine).payment.id
    begun = engine.begin_authorize(Authorize(MERCHANT, "a", payment_id))
    assert begun.call is not None
    authorized_event = event("evt_1", EventType.AUTHORIZED, payment_id, amount_minor=10_000)
    assert engine.apply_provider_event(authorized_event).outcome == "applied"
    assert engine.apply_provider_event(authorized_event).outcome == "duplicate"
    assert journal_kinds(engine, payment_id) == ["authorization_hold"]
    late = engine.complete_authorize(
        begun.call.attempt_id, ProviderOutcome(OutcomeStatus.SUCCEEDED, amount_minor=10_000)
    )
    assert late.payment.state == "authorized"
    assert journal_kinds(engine, payment_id) == ["authorization_hold"]
    assert_audit_holds(database)


def test_a_stale_event_after_a_newer_state_is_recorded_and_ignored(
    engine: PaymentEngine, database: Database
) -> None:
    provider = FakeProvider()
    payment_id = captured(engine, provider)
    stale = event("evt_old", EventType.AUTHORIZED, payment_id, amount_minor=10_000)
    assert engine.apply_provider_event(stale).outcome == "stale"
    assert engine.get_payment(payment_id).state == "captured"
    assert journal_kinds(engine, payment_id) == ["authorization_hold", "capture"]
    assert engine.apply_provider_event(stale).outcome == "duplicate"
    assert_audit_holds(database)


def test_a_capture_confirmed_by_webhook_before_its_response(
    engine: PaymentEngine, database: Database
) -> None:
    provider = FakeProvider()
    payment_id = authorized(engine, provider)
    begun = engine.begin_capture(Capture(MERCHANT, "c", payment_id, 6_000))
    assert begun.call is not None
    succeeded = event("evt_c", EventType.SUCCEEDED, payment_id, amount_minor=6_000, fee_minor=204)
    assert engine.apply_provider_event(succeeded).outcome == "applied"
    outcome = provider.call(begun.call)
    result = engine.complete_capture(begun.call.attempt_id, outcome)
    assert result.payment.state == "partially_captured"
    assert result.payment["fee_minor"] == 204
    assert journal_kinds(engine, payment_id) == ["authorization_hold", "capture"]
    assert_audit_holds(database)


def test_a_refund_webhook_duplicated_posts_the_refund_once(
    engine: PaymentEngine, database: Database
) -> None:
    provider = FakeProvider()
    payment_id = captured(engine, provider)
    begun = engine.begin_refund(Refund(MERCHANT, "r", payment_id, 3_000))
    refunded = event("evt_r", EventType.REFUND_SUCCEEDED, payment_id, refund_id=begun.refund_id,
                     amount_minor=3_000)  # fmt: skip
    assert engine.apply_provider_event(refunded).outcome == "applied"
    again = event(
        "evt_r2",
        EventType.REFUND_SUCCEEDED,
        payment_id,
        refund_id=begun.refund_id,
        amount_minor=3_000,
    )  # a second delivery under a new id: the refund is done
    assert engine.apply_provider_event(again).outcome == "stale"
    perform(engine, provider, begun)
    payment = engine.get_payment(payment_id)
    assert (payment.state, payment["refunded_minor"], payment["refund_reserved_minor"]) == (
        "partially_refunded", 3_000, 0,
    )  # fmt: skip
    assert journal_kinds(engine, payment_id).count("refund") == 1
    assert_audit_holds(database)


def test_three_d_secure_completed_at_the_provider_authorizes_by_webhook(
    engine: PaymentEngine,
) -> None:
    provider = FakeProvider()
    payment_id = create(engine, payment_method="pm_card_authenticationRequired").payment.id
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    done = event("evt_3ds", EventType.AUTHORIZED, payment_id, amount_minor=10_000)
    assert engine.apply_provider_event(done).outcome == "applied"
    assert engine.get_payment(payment_id).state == "authorized"


def test_a_dispute_withdraws_and_a_won_dispute_reinstates(
    engine: PaymentEngine, database: Database
) -> None:
    payment_id = captured(engine, FakeProvider())
    opened = event("evt_d1", EventType.DISPUTE_CREATED, payment_id, amount_minor=10_000)
    assert engine.apply_provider_event(opened).outcome == "applied"
    assert engine.get_payment(payment_id).state == "disputed"
    won = event("evt_d2", EventType.DISPUTE_WON, payment_id)
    assert engine.apply_provider_event(won).outcome == "applied"
    assert engine.get_payment(payment_id).state == "settled"
    kinds = journal_kinds(engine, payment_id)
    assert kinds[-2:] == ["dispute_withdrawal", "dispute_reinstatement"]
    assert_audit_holds(database)


def refunded_in_full(engine: PaymentEngine) -> str:
    provider = FakeProvider()
    payment_id = captured(engine, provider)
    perform(engine, provider, engine.begin_refund(Refund(MERCHANT, "r", payment_id, 10_000)))
    assert engine.get_payment(payment_id).state == "refunded"
    return payment_id


def test_a_dispute_on_a_charge_refunded_in_full_still_withdraws(
    engine: PaymentEngine, database: Database
) -> None:
    """The cardholder's bank may not have seen the refund yet: the provider withdraws the
    disputed amount all the same, so the engine books it, and gives it back on a win."""
    payment_id = refunded_in_full(engine)
    opened = event("evt_d1", EventType.DISPUTE_CREATED, payment_id, amount_minor=10_000,
                   fee_minor=1_500)  # fmt: skip
    assert engine.apply_provider_event(opened).outcome == "applied"
    payment = engine.get_payment(payment_id)
    assert (payment.state, payment["disputed_minor"]) == ("disputed", 10_000)
    assert journal_kinds(engine, payment_id)[-1] == "dispute_withdrawal"
    won = event("evt_d2", EventType.DISPUTE_WON, payment_id, fee_minor=1_500)
    assert engine.apply_provider_event(won).outcome == "applied"
    payment = engine.get_payment(payment_id)
    assert (payment.state, payment["disputed_minor"]) == ("refunded", 0)
    assert [h["to_state"] for h in payment.history][-2:] == ["disputed", "refunded"]
    assert journal_kinds(engine, payment_id)[-1] == "dispute_reinstatement"
    assert_audit_holds(database)


def test_a_lost_dispute_on_a_refunded_charge_leaves_the_withdrawal_booked(
    engine: PaymentEngine, database: Database
) -> None:
    payment_id = refunded_in_full(engine)
    opened = event("evt_d1", EventType.DISPUTE_CREATED, payment_id, amount_minor=4_000)
    assert engine.apply_provider_event(opened).outcome == "applied"
    lost = event("evt_d2", EventType.DISPUTE_LOST, payment_id)
    assert engine.apply_provider_event(lost).outcome == "applied_no_change"
    payment = engine.get_payment(payment_id)
    assert (payment.state, payment["disputed_minor"]) == ("disputed", 4_000)
    withdrawn = [entries for journal, entries in engine.ledger_of(payment_id)
                 if journal["kind"] == "dispute_withdrawal"]  # fmt: skip
    assert len(withdrawn) == 1
    assert sum(e["amount_minor"] for e in withdrawn[0] if e["side"] == "D") == 4_000
    assert_audit_holds(database)


def test_a_dispute_without_an_amount_on_a_refunded_charge_is_stale(engine: PaymentEngine) -> None:
    """Nothing is left on the charge to default to: the engine does not guess an amount."""
    payment_id = refunded_in_full(engine)
    opened = event("evt_d1", EventType.DISPUTE_CREATED, payment_id)
    assert engine.apply_provider_event(opened).outcome == "stale"
    assert engine.get_payment(payment_id).state == "refunded"


@pytest.mark.parametrize("kind", ["charge.updated", "customer.created"])
def test_event_types_the_engine_does_not_use_are_ignored(engine: PaymentEngine, kind: str) -> None:
    payment_id = create(engine).payment.id
    result = engine.apply_provider_event(ProviderEvent("evt_x", kind, AT, payment_id=payment_id))
    assert result.outcome == "ignored"
    assert engine.get_payment(payment_id).state == "created"
