"""Split payments through the engine: lines, platform fees, wallets and the ledger agree."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider, provider_fee_minor
from engine.audit import audit
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund
from engine.domain.errors import InvalidRequest
from engine.domain.marketplace import FeePlan, Split
from engine.domain.provider import EventType, OutcomeStatus, ProviderEvent, ProviderOutcome
from engine.service.driver import perform
from engine.service.engine import PaymentEngine
from tests.integration.helpers import MERCHANT

AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


def split_payment(engine: PaymentEngine, provider: FakeProvider, capture_minor: int | None) -> str:
    engine.set_fee_plan("s_books", FeePlan(percent_bps=1_000, fixed_minor=30))
    engine.set_fee_plan("s_music", FeePlan(percent_bps=250))
    created = engine.create_payment(CreatePayment(
        MERCHANT, "c-1", "order-1", 10_000, "USD", "pm_card_visa",
        splits=(Split("s_books", 6_001), Split("s_music", 3_999)),
    ))  # fmt: skip
    payment_id = created.payment.id
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a-1", payment_id)))
    begun = engine.begin_capture(Capture(MERCHANT, "k-1", payment_id, capture_minor))
    perform(engine, provider, begun)
    return payment_id


def wallets_by_seller(engine: PaymentEngine) -> dict[str, tuple[int, int]]:
    return {w["owner_id"]: (w["pending_minor"], w["available_minor"]) for w in engine.wallets()}


def assert_wallets_match_the_ledger(engine: PaymentEngine) -> None:
    derived = engine.seller_ledger_balances()
    for wallet in engine.wallets():
        balance = derived.get((wallet["owner_id"], wallet["currency"]), {})
        assert (wallet["pending_minor"], wallet["available_minor"]) == (
            balance.get("pending", 0),
            balance.get("available", 0),
        ), wallet


def assert_audit_holds(database: Database) -> None:
    with database.engine.connect() as connection:
        assert [(r.name, r.violations) for r in audit(connection) if not r.ok] == []


def test_a_full_capture_pays_each_seller_net_of_its_fee_plan(
    engine: PaymentEngine, provider: FakeProvider, database: Database
) -> None:
    payment_id = split_payment(engine, provider, None)
    lines = engine.lines_of(payment_id)
    # 10% + 0.30 of 60.01 = 6.001 -> 6.00 + 0.30; 2.5% of 39.99 = 0.99975 -> 1.00
    assert [(ln["captured_minor"], ln["fee_minor"]) for ln in lines] == [(6_001, 630), (3_999, 100)]
    assert wallets_by_seller(engine) == {"s_books": (5_371, 0), "s_music": (3_899, 0)}
    _journal, entries = engine.ledger_of(payment_id)[-1]
    posted = {(e["account"], e["side"]): e["amount_minor"] for e in entries}
    assert posted[("platform_fees:m_1", "C")] == 730
    assert posted[("provider_fees", "D")] == provider_fee_minor(10_000)
    assert_wallets_match_the_ledger(engine)
    assert_audit_holds(database)


def test_a_partial_capture_is_allocated_by_largest_remainder(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    payment_id = split_payment(engine, provider, 5_001)
    # 5001 * 6001/10000 = 3001.1001 and 5001 * 3999/10000 = 1999.8999: the unit left goes to music
    assert [ln["captured_minor"] for ln in engine.lines_of(payment_id)] == [3_001, 2_000]
    assert_wallets_match_the_ledger(engine)


def test_refunds_reverse_fees_in_proportion_and_a_full_refund_leaves_no_fee(
    engine: PaymentEngine, provider: FakeProvider, database: Database
) -> None:
    payment_id = split_payment(engine, provider, None)
    perform(engine, provider, engine.begin_refund(Refund(MERCHANT, "r-1", payment_id, 5_000)))
    lines = engine.lines_of(payment_id)
    # 5000 * 6001/10000 = 3000.5 and 1999.5: the tie goes to the earlier line
    assert [ln["refunded_minor"] for ln in lines] == [3_001, 1_999]
    assert [ln["fee_reversed_minor"] for ln in lines] == [315, 50]
    perform(engine, provider, engine.begin_refund(Refund(MERCHANT, "r-2", payment_id, None)))
    lines = engine.lines_of(payment_id)
    assert [ln["fee_reversed_minor"] for ln in lines] == [630, 100]
    assert wallets_by_seller(engine) == {"s_books": (0, 0), "s_music": (0, 0)}
    assert_wallets_match_the_ledger(engine)
    assert_audit_holds(database)


def test_a_dispute_is_borne_by_the_sellers_and_given_back_once_when_won(
    engine: PaymentEngine, provider: FakeProvider, database: Database
) -> None:
    payment_id = split_payment(engine, provider, None)
    opened = ProviderEvent("evt_d1", EventType.DISPUTE_CREATED.value, AT, payment_id=payment_id,
                           amount_minor=10_000)  # fmt: skip
    assert engine.apply_provider_event(opened).outcome == "applied"
    assert engine.apply_provider_event(opened).outcome == "duplicate"
    # The platform keeps its fee: the sellers go negative by their fees.
    assert wallets_by_seller(engine) == {"s_books": (-630, 0), "s_music": (-100, 0)}
    won = ProviderEvent("evt_d2", EventType.DISPUTE_WON.value, AT, payment_id=payment_id)
    engine.apply_provider_event(won)
    engine.apply_provider_event(won)
    assert wallets_by_seller(engine) == {"s_books": (5_371, 0), "s_music": (3_899, 0)}
    assert_wallets_match_the_ledger(engine)
    assert_audit_holds(database)


def test_a_split_that_does_not_add_up_writes_nothing(engine: PaymentEngine) -> None:
    with pytest.raises(InvalidRequest):
        engine.create_payment(
            CreatePayment(MERCHANT, "c-x", "order-x", 1_000, "USD", "pm_card_visa",
                          splits=(Split("s_1", 999),))
        )  # fmt: skip
    assert engine.list_payments(MERCHANT) == []
    assert engine.wallets() == []


def test_a_plan_changed_later_does_not_reprice_a_payment(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    engine.set_fee_plan("s_books", FeePlan(percent_bps=1_000))
    created = engine.create_payment(
        CreatePayment(MERCHANT, "c-1", "o-1", 1_000, "USD", "pm_card_visa",
                      splits=(Split("s_books", 1_000),))
    )  # fmt: skip
    engine.set_fee_plan("s_books", FeePlan(percent_bps=5_000))
    payment_id = created.payment.id
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a-1", payment_id)))
    perform(engine, provider, engine.begin_capture(Capture(MERCHANT, "k-1", payment_id, None)))
    assert engine.lines_of(payment_id)[0]["fee_minor"] == 100


def test_an_automatic_capture_pays_the_sellers_too(
    engine: PaymentEngine, provider: FakeProvider
) -> None:
    created = engine.create_payment(
        CreatePayment(MERCHANT, "c-1", "o-1", 1_000, "USD", "pm_card_visa", "automatic",
                      splits=(Split("s_a", 400), Split("s_b", 600)))
    )  # fmt: skip
    payment_id = created.payment.id
    result = perform(
        engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a-1", payment_id))
    )
    assert result.payment.state == "captured"
    assert [ln["captured_minor"] for ln in engine.lines_of(payment_id)] == [400, 600]
    assert_wallets_match_the_ledger(engine)


def test_settlement_makes_each_sellers_share_available_once(
    engine: PaymentEngine, provider: FakeProvider, database: Database
) -> None:
    payment_id = split_payment(engine, provider, None)
    perform(engine, provider, engine.begin_refund(Refund(MERCHANT, "r-1", payment_id, 1_000)))
    assert engine.settle_payment(payment_id) is True
    assert engine.settle_payment(payment_id) is False
    assert engine.get_payment(payment_id).state == "settled"
    books, music = 5_371 - (600 - 63), 3_899 - (400 - 10)
    assert wallets_by_seller(engine) == {"s_books": (0, books), "s_music": (0, music)}
    # A refund after settlement is taken from the available balance.
    perform(engine, provider, engine.begin_refund(Refund(MERCHANT, "r-2", payment_id, None)))
    assert wallets_by_seller(engine) == {"s_books": (0, 0), "s_music": (0, 0)}
    assert_wallets_match_the_ledger(engine)
    assert_audit_holds(database)


def test_a_capture_learned_by_webhook_gets_its_fee_asked_for_once(
    engine: PaymentEngine, provider: FakeProvider, database: Database
) -> None:
    created = engine.create_payment(CreatePayment(MERCHANT, "c-1", "o-1", 1_000, "USD",
                                                  "pm_card_visa", "automatic"))  # fmt: skip
    payment_id = created.payment.id
    engine.begin_authorize(Authorize(MERCHANT, "a-1", payment_id))  # the answer is lost
    succeeded = ProviderEvent("evt_1", EventType.SUCCEEDED.value, AT, payment_id=payment_id,
                              provider_payment_id="pi_1", amount_minor=1_000)  # fmt: skip
    assert engine.apply_provider_event(succeeded).outcome == "applied"
    [call] = engine.fee_lookups()
    answer = ProviderOutcome(OutcomeStatus.SUCCEEDED, "pi_1", fee_minor=59, fee_known=True)
    assert engine.complete_fee(call.payment_id, answer) is True
    assert engine.complete_fee(call.payment_id, answer) is False
    assert engine.fee_lookups() == []
    assert engine.get_payment(payment_id)["fee_minor"] == 59
    kinds = [journal["kind"] for journal, _ in engine.ledger_of(payment_id)]
    assert sorted(kinds) == ["capture", "provider_fee"]
    assert_audit_holds(database)
