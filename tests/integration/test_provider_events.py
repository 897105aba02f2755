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


@pytest.mark.parametrize("kind", ["charge.updated", "customer.created"])
def test_event_types_the_engine_does_not_use_are_ignored(engine: PaymentEngine, kind: str) -> None:
    payment_id = create(engine).payment.id
    result = engine.apply_provider_event(ProviderEvent("evt_x", kind, AT, payment_id=payment_id))
    assert result.outcome == "ignored"
    assert engine.get_payment(payment_id).state == "created"
