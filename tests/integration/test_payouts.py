"""Payouts through the engine: the available balance, the provider's answers, exactly once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.domain.commands import CreatePayout
from engine.domain.errors import IdempotencyKeyReused, InsufficientFunds
from engine.domain.provider import EventType, OutcomeStatus, ProviderEvent, ProviderOutcome
from engine.service.engine import PaymentEngine
from tests.integration.test_splits import (
    assert_audit_holds,
    assert_wallets_match_the_ledger,
    split_payment,
    wallets_by_seller,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)
BOOKS_NET = 5_371  # s_books' share of the split payment, net of its fee


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


def settled_seller(engine: PaymentEngine, provider: FakeProvider) -> None:
    payment_id = split_payment(engine, provider, None)
    assert engine.settle_payment(payment_id)


def paid_out(engine: PaymentEngine, provider: FakeProvider, key: str, amount: int) -> str:
    begun = engine.begin_payout(CreatePayout("s_books", key, "USD", amount))
    assert begun.call is not None
    done = engine.complete_payout(begun.call.attempt_id, provider.call(begun.call))
    assert done.payout["status"] == "in_transit"
    return str(begun.call.attempt_id)


def event(kind: EventType, payout_id: str, n: int = 1) -> ProviderEvent:
    return ProviderEvent(f"evt_po_{n}", kind.value, AT, payout_id=payout_id,
                         provider_payout_id=f"po_{payout_id}")  # fmt: skip


def test_a_payout_moves_available_money_to_the_bank_once(
    engine: PaymentEngine, provider: FakeProvider, database: Database
) -> None:
    settled_seller(engine, provider)
    payout_id = paid_out(engine, provider, "p-1", 5_000)
    assert wallets_by_seller(engine)["s_books"] == (0, BOOKS_NET - 5_000)
    assert engine.apply_provider_event(event(EventType.PAYOUT_PAID, payout_id)).outcome == "applied"
    assert (
        engine.apply_provider_event(event(EventType.PAYOUT_PAID, payout_id)).outcome == "duplicate"
    )
    assert [p["status"] for p in engine.payouts("s_books")] == ["paid"]
    assert wallets_by_seller(engine)["s_books"] == (0, BOOKS_NET - 5_000)
    assert_wallets_match_the_ledger(engine)
    assert_audit_holds(database)


def test_a_failed_payout_gives_the_money_back_once(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    settled_seller(engine, provider)
    payout_id = paid_out(engine, provider, "p-1", 5_000)
    engine.apply_provider_event(event(EventType.PAYOUT_FAILED, payout_id))
    engine.apply_provider_event(event(EventType.PAYOUT_PAID, payout_id, 2))  # stale: too late
    assert [p["status"] for p in engine.payouts("s_books")] == ["failed"]
    assert wallets_by_seller(engine)["s_books"] == (0, BOOKS_NET)
    assert_wallets_match_the_ledger(engine)


def test_no_payout_beyond_the_available_balance_and_nothing_written(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    split_payment(engine, provider, None)  # captured, not settled: all of it pending
    with pytest.raises(InsufficientFunds):
        engine.begin_payout(CreatePayout("s_books", "p-1", "USD", 1))
    assert engine.payouts() == []
    assert wallets_by_seller(engine)["s_books"] == (BOOKS_NET, 0)


def test_an_unknown_payout_is_looked_up_never_guessed(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    settled_seller(engine, provider)
    begun = engine.begin_payout(CreatePayout("s_books", "p-1", "USD", 1_000))
    assert begun.call is not None
    provider.fail_next.append("after")
    lost = engine.complete_payout(begun.call.attempt_id, provider.call(begun.call))
    assert (lost.status_code, lost.payout["status"]) == (202, "unknown")
    assert wallets_by_seller(engine)["s_books"] == (0, BOOKS_NET - 1_000)  # still reserved
    found = engine.complete_payout(begun.call.attempt_id, provider.lookup(begun.call))
    assert found.payout["status"] == "in_transit"


def test_a_declined_payout_returns_the_money_and_a_replay_answers_the_same(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    settled_seller(engine, provider)
    command = CreatePayout("s_books", "p-1", "USD", 1_000)
    begun = engine.begin_payout(command)
    assert begun.call is not None
    declined = ProviderOutcome(OutcomeStatus.DECLINED, decline_code="balance_insufficient")
    done = engine.complete_payout(begun.call.attempt_id, declined)
    assert done.payout["status"] == "failed"
    assert wallets_by_seller(engine)["s_books"] == (0, BOOKS_NET)
    replay = engine.begin_payout(command)
    assert replay.replayed and replay.payout == done.payout and replay.call is None
    with pytest.raises(IdempotencyKeyReused):
        engine.begin_payout(CreatePayout("s_books", "p-1", "USD", 999))
    assert_wallets_match_the_ledger(engine)
