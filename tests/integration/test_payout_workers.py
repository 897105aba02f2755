"""The service's payout tasks: scheduled rounds paid once, unanswered payouts recovered."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.domain.commands import CreatePayout
from engine.domain.ports import FixedClock
from engine.service.engine import PaymentEngine
from engine.workers.payouts import PayoutScheduler
from engine.workers.recovery import RecoveryWorker
from tests.integration.test_splits import (
    assert_audit_holds,
    assert_wallets_match_the_ledger,
    split_payment,
    wallets_by_seller,
)


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


def settled(engine: PaymentEngine, provider: FakeProvider) -> None:
    assert engine.settle_payment(split_payment(engine, provider, None))


def test_a_round_pays_every_available_balance_once_however_often_it_runs(
    engine: PaymentEngine, provider: FakeProvider, clock: FixedClock, database: Database
) -> None:
    settled(engine, provider)
    scheduler = PayoutScheduler(engine, provider, interval_s=3_600)
    assert scheduler.run_once().paid_out == 2
    assert scheduler.run_once().paid_out == 0  # the same round
    again = PayoutScheduler(engine, provider, interval_s=3_600)  # a second process, same round
    assert again.run_once().paid_out == 0
    assert len(engine.payouts()) == 2
    assert wallets_by_seller(engine) == {"s_books": (0, 0), "s_music": (0, 0)}
    clock.advance(timedelta(hours=1))
    assert scheduler.run_once().paid_out == 0  # nothing left to pay
    assert_wallets_match_the_ledger(engine)
    assert_audit_holds(database)


def test_the_recovery_worker_resolves_a_payout_whose_answer_was_lost(
    engine: PaymentEngine, provider: FakeProvider, clock: FixedClock
) -> None:
    settled(engine, provider)
    begun = engine.begin_payout(CreatePayout("s_books", "p-1", "USD", 1_000))
    assert begun.call is not None
    provider.fail_next.append("before")  # the request never reached the provider
    engine.complete_payout(begun.call.attempt_id, provider.call(begun.call))
    clock.advance(timedelta(minutes=2))
    RecoveryWorker(engine, provider).run_once()
    assert [p["status"] for p in engine.payouts()] == ["in_transit"]
    assert provider.calls == 4  # authorize, capture, the lost payout, its resend
