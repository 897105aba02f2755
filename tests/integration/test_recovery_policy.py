"""The one recovery policy: which attempts are due, 3DS ones included, and its schedule.

An authorization waiting for the customer (3DS) learns the customer's answer by
a webhook; when that webhook is lost, only recovery can see it. So such an
attempt is due like an open one, polled along ``recovery_schedule`` while its
payment waits, and flagged for review after the last step. On SQLite and
PostgreSQL; time is a FixedClock and nothing sleeps.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta

import pytest

from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.domain.commands import Authorize, Void
from engine.domain.ports import FixedClock
from engine.service.driver import perform
from engine.service.engine import RECOVERY_SCHEDULE, PaymentEngine
from engine.workers import RecoveryWorker
from mock_psp.clock import ManualClock
from mock_psp.core import ProviderCore
from mock_psp.transport import CoreTransport
from tests.integration.helpers import MERCHANT, create
from tests.integration.test_workers import assert_audit_holds

THREE_DS_CARD = "pm_card_threeDSecureRequired"


@pytest.fixture
def psp() -> Iterator[tuple[HttpProvider, ProviderCore]]:
    """The mock PSP's core behind the real HTTP adapter; no webhook reaches the engine."""
    core = ProviderCore(ManualClock(), random.Random(5))
    provider = HttpProvider(
        "http://psp.test", "sk_test_recovery", transport=CoreTransport(core),
        retry=RetryPolicy(attempts_max=1), rng=random.Random(1), sleep=lambda _s: None,
    )  # fmt: skip
    yield provider, core
    provider.close()


def awaiting_customer(engine: PaymentEngine, provider: object, method: str) -> str:
    payment_id = create(engine, payment_method=method).payment.id
    begun = engine.begin_authorize(Authorize(MERCHANT, "auth", payment_id))
    result = perform(engine, provider, begun)  # type: ignore[arg-type]
    assert (result.status_code, result.payment.state) == (200, "requires_action")
    return payment_id


def test_an_authorization_waiting_for_the_customer_is_due_on_the_schedule(
    engine: PaymentEngine, clock: FixedClock
) -> None:
    payment_id = awaiting_customer(engine, FakeProvider(), "pm_card_authenticationRequired")
    clock.advance(RECOVERY_SCHEDULE[0] - timedelta(seconds=1))
    assert engine.due_attempts() == []
    clock.advance(timedelta(seconds=1))
    [due] = engine.due_attempts()
    assert (due.payment_id, due.awaiting_action) == (payment_id, True)
    assert [c.attempt_id for c in engine.attempts_to_recover()] == [due.attempt_id]


def test_a_customer_who_never_acts_is_polled_on_the_schedule_then_flagged_for_review(
    engine: PaymentEngine, clock: FixedClock
) -> None:
    provider = FakeProvider()  # its lookup answers requires_action for ever
    payment_id = awaiting_customer(engine, provider, "pm_card_authenticationRequired")
    worker = RecoveryWorker(engine, provider)
    for step in RECOVERY_SCHEDULE:
        clock.advance(step - timedelta(seconds=1))
        assert engine.due_attempts() == [], f"due before its {step} step"
        clock.advance(timedelta(seconds=1))
        report = worker.run_once()
        assert (report.looked_up, report.resolved) == (1, 0)
    clock.advance(timedelta(days=30))
    assert engine.due_attempts() == [] and engine.attempts_to_recover() == []
    [flagged] = engine.attempts_for_review()
    assert flagged.payment_id == payment_id
    assert engine.get_payment(payment_id).state == "requires_action"


def test_an_abandoned_3ds_whose_payment_was_voided_is_never_due(
    engine: PaymentEngine, clock: FixedClock
) -> None:
    provider = FakeProvider()
    payment_id = awaiting_customer(engine, provider, "pm_card_authenticationRequired")
    voided = perform(engine, provider, engine.begin_void(Void(MERCHANT, "void", payment_id)))
    assert voided.payment.state == "canceled"
    clock.advance(timedelta(days=3))
    assert engine.due_attempts() == [] and engine.attempts_for_review() == []


def test_recovery_authorizes_a_3ds_payment_whose_webhook_was_lost(
    engine: PaymentEngine,
    clock: FixedClock,
    database: Database,
    psp: tuple[HttpProvider, ProviderCore],
) -> None:
    provider, core = psp
    payment_id = awaiting_customer(engine, provider, THREE_DS_CARD)
    worker = RecoveryWorker(engine, provider)
    clock.advance(RECOVERY_SCHEDULE[0])
    report = worker.run_once()  # the customer has not acted yet: still waiting
    assert (report.looked_up, report.resolved) == (1, 0)
    assert engine.get_payment(payment_id).state == "requires_action"
    core.admin.authenticate(engine.get_payment(payment_id)["provider_payment_id"])
    clock.advance(RECOVERY_SCHEDULE[1])
    report = worker.run_once()
    assert (report.looked_up, report.resolved) == (1, 1)
    assert report.paths == {"3DS outcome succeeded found by polling the provider": 1}
    assert engine.get_payment(payment_id).state == "authorized"
    clock.advance(timedelta(days=3))
    assert engine.due_attempts() == [] and engine.attempts_for_review() == []
    assert_audit_holds(database)
