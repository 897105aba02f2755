"""A payment's life through the engine's steps, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider, provider_fee_minor
from engine.audit import audit
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund, Void
from engine.domain.errors import (
    AmountExceeded,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    IllegalTransition,
    NotFound,
    OperationInProgress,
    OrderAlreadyActive,
)
from engine.domain.ports import FixedClock
from engine.domain.provider import OutcomeStatus, ProviderOutcome
from engine.service.driver import perform, recover
from engine.service.engine import PaymentEngine
from tests.integration.helpers import MERCHANT, authorized, captured, create, refund


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


def assert_audit_holds(database: Database) -> None:
    with database.engine.connect() as connection:
        failures = [(r.name, r.violations) for r in audit(connection) if not r.ok]
    assert failures == []


def states(engine: PaymentEngine, payment_id: str) -> list[str]:
    return [item["to_state"] for item in engine.get_payment(payment_id).history]


def test_create_authorize_capture_partially_and_refund_twice(
    engine: PaymentEngine, provider: FakeProvider, database: Database
) -> None:
    payment_id = captured(engine, provider, amount_minor=7_500)
    refund(engine, provider, payment_id, "r1", 1_000)
    last = refund(engine, provider, payment_id, "r2", None)
    payment = engine.get_payment(payment_id)
    assert last.payment.state == "refunded"
    assert (payment["authorized_minor"], payment["captured_minor"]) == (10_000, 7_500)
    assert payment["refunded_minor"] == 7_500
    assert payment["fee_minor"] == provider_fee_minor(7_500)
    assert states(engine, payment_id) == [
        "created", "authorized", "partially_captured", "partially_refunded", "refunded",
    ]  # fmt: skip
    assert [r["amount_minor"] for r in payment.refunds] == [1_000, 6_500]
    kinds = [journal["kind"] for journal, _ in engine.ledger_of(payment_id)]
    assert kinds == ["authorization_hold", "capture", "refund", "refund"]
    assert_audit_holds(database)


def test_automatic_capture_goes_straight_to_captured(
    engine: PaymentEngine, provider: FakeProvider, database: Database
) -> None:
    payment_id = create(engine, capture_method="automatic", currency="JPY").payment.id
    result = perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    assert result.payment.state == "captured"
    assert result.payment["captured_minor"] == 10_000
    assert_audit_holds(database)


def test_void_releases_the_authorization(
    engine: PaymentEngine, provider: FakeProvider, database: Database
) -> None:
    payment_id = authorized(engine, provider, currency="KWD")
    result = perform(engine, provider, engine.begin_void(Void(MERCHANT, "v", payment_id)))
    assert result.payment.state == "canceled"
    assert [j["kind"] for j, _ in engine.ledger_of(payment_id)] == ["authorization_hold", "void"]
    assert_audit_holds(database)


def test_capture_after_void_is_refused_and_changes_nothing(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    payment_id = authorized(engine, provider)
    perform(engine, provider, engine.begin_void(Void(MERCHANT, "v", payment_id)))
    before = engine.get_payment(payment_id)
    with pytest.raises(IllegalTransition):
        engine.begin_capture(Capture(MERCHANT, "c", payment_id))
    assert engine.get_payment(payment_id) == before


def test_a_decline_fails_the_payment_and_frees_the_order(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    declined = create(engine, payment_method="pm_card_chargeDeclined").payment.id
    result = perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a1", declined)))
    assert (result.status_code, result.payment.state) == (402, "failed")
    assert result.payment["decline_code"] == "card_declined"
    retry = create(engine, key="create-2").payment.id
    again = perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a2", retry)))
    assert again.payment.state == "authorized"


def test_three_d_secure_then_authorized_by_a_new_confirm(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    payment_id = create(engine, payment_method="pm_card_authenticationRequired").payment.id
    result = perform(
        engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a1", payment_id))
    )
    assert result.payment.state == "requires_action"
    with pytest.raises(IllegalTransition):
        engine.begin_capture(Capture(MERCHANT, "c", payment_id))


def test_over_capture_and_over_refund_are_refused(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    payment_id = authorized(engine, provider)
    with pytest.raises(AmountExceeded) as caught:
        engine.begin_capture(Capture(MERCHANT, "c", payment_id, 10_001))
    assert caught.value.field == "amount_minor"
    perform(engine, provider, engine.begin_capture(Capture(MERCHANT, "c2", payment_id, 5_000)))
    refund(engine, provider, payment_id, "r1", 4_000)
    with pytest.raises(AmountExceeded):
        engine.begin_refund(Refund(MERCHANT, "r2", payment_id, 1_001))


def test_a_replay_returns_the_stored_response_without_a_second_effect(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    first = create(engine)
    again = create(engine)
    assert again.replayed and not first.replayed
    assert again.payment.id == first.payment.id
    assert again.status_code == first.status_code == 201
    assert len(engine.list_payments(MERCHANT)) == 1
    payment_id = first.payment.id
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    replay = engine.begin_authorize(Authorize(MERCHANT, "a", payment_id))
    assert replay.replayed and replay.call is None and replay.payment.state == "authorized"
    assert provider.calls == 1


def test_the_same_key_with_another_request_is_refused(engine: PaymentEngine) -> None:
    create(engine)
    with pytest.raises(IdempotencyKeyReused) as caught:
        create(engine, amount_minor=10_001)
    assert (caught.value.code, caught.value.http_status) == ("idempotency_key_reused", 422)


def test_a_key_still_in_flight_gets_a_conflict(engine: PaymentEngine) -> None:
    payment_id = create(engine).payment.id
    engine.begin_authorize(Authorize(MERCHANT, "a", payment_id))
    with pytest.raises(IdempotencyKeyInFlight) as caught:
        engine.begin_authorize(Authorize(MERCHANT, "a", payment_id))
    assert caught.value.http_status == 409
    with pytest.raises(OperationInProgress):
        engine.begin_authorize(Authorize(MERCHANT, "other-key", payment_id))


def test_keys_are_scoped_by_merchant(engine: PaymentEngine) -> None:
    mine = create(engine, merchant_id="m_1")
    theirs = create(engine, merchant_id="m_2")
    assert mine.payment.id != theirs.payment.id
    with pytest.raises(NotFound):
        engine.get_payment(mine.payment.id, merchant_id="m_2")


def test_expired_keys_are_forgotten_after_the_retention(
    engine: PaymentEngine, clock: FixedClock
) -> None:
    create(engine)
    clock.advance(timedelta(hours=23))
    assert engine.expire_idempotency_keys() == 0
    clock.advance(timedelta(hours=1))
    assert engine.expire_idempotency_keys() == 1
    assert not create(engine).replayed


def test_a_double_click_with_a_new_key_cannot_pay_one_order_twice(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    authorized(engine, provider)
    second = create(engine, key="create-2").payment.id
    with pytest.raises(OrderAlreadyActive) as caught:
        engine.begin_authorize(Authorize(MERCHANT, "a2", second))
    assert caught.value.field == "order_id"
    assert engine.get_payment(second).state == "created"


def test_a_timeout_after_processing_stays_unknown_until_the_provider_answers(
    engine: PaymentEngine, provider: FakeProvider, clock: FixedClock, database: Database
) -> None:
    payment_id = create(engine).payment.id
    provider.fail_next.append("after")
    result = perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    assert (result.status_code, result.payment.state) == (202, "processing")
    assert engine.unresolved_attempts(timedelta(seconds=30)) == []  # not old enough yet
    clock.advance(timedelta(minutes=1))
    calls = engine.unresolved_attempts(timedelta(seconds=30))
    assert len(calls) == 1
    unknown = ProviderOutcome(OutcomeStatus.UNKNOWN)
    still, resend = engine.resolve_attempt(calls[0].attempt_id, unknown)
    assert (still.payment.state, resend) == ("processing", None)
    assert recover(engine, provider, calls) == 1
    assert engine.get_payment(payment_id).state == "authorized"
    assert provider.truth[payment_id].charges == 1
    assert_audit_holds(database)


def test_a_request_lost_before_processing_is_sent_again_with_the_same_key(
    engine: PaymentEngine, provider: FakeProvider, clock: FixedClock
) -> None:
    payment_id = create(engine).payment.id
    provider.fail_next.append("before")
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    clock.advance(timedelta(minutes=1))
    calls = engine.unresolved_attempts(timedelta(seconds=30))
    assert provider.lookup(calls[0]).status is OutcomeStatus.NOT_FOUND
    assert recover(engine, provider, calls) == 1
    assert engine.get_payment(payment_id).state == "authorized"
    assert provider.truth[payment_id].charges == 1


def test_a_replay_after_an_unknown_outcome_gets_the_stored_processing_answer(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    payment_id = create(engine).payment.id
    provider.fail_next.append("after")
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    replay = engine.begin_authorize(Authorize(MERCHANT, "a", payment_id))
    assert (replay.replayed, replay.status_code, replay.payment.state) == (True, 202, "processing")


def test_reads_by_merchant_and_by_order(engine: PaymentEngine) -> None:
    create(engine, key="k1", order_id="o-1")
    create(engine, key="k2", order_id="o-2")
    create(engine, key="k3", order_id="o-1")
    create(engine, key="k4", order_id="o-1", merchant_id="m_2")
    assert len(engine.list_payments(MERCHANT)) == 3
    assert len(engine.list_payments(MERCHANT, order_id="o-1")) == 2
    assert len(engine.list_payments(MERCHANT, limit=1)) == 1


def test_bad_input_writes_nothing(engine: PaymentEngine, database: Database) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the command refuses before any step
        CreatePayment(MERCHANT, "k", "o", 0, "USD", "pm_card_visa")
    with pytest.raises(NotFound):
        engine.begin_capture(Capture(MERCHANT, "c", "pay_missing"))
    assert engine.list_payments(MERCHANT) == []
    with database.engine.connect() as connection:
        keys = connection.exec_driver_sql("SELECT count(*) FROM idempotency_keys").scalar_one()
    assert keys == 0
