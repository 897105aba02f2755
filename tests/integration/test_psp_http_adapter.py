"""The engine's HTTP provider adapter against the mock PSP core, in process."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from engine.adapters.database import Database
from engine.adapters.psp_http import CircuitBreaker, CircuitState, HttpProvider, RetryPolicy
from engine.audit import audit
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund
from engine.domain.ports import FixedClock, SeededIds
from engine.domain.provider import OutcomeStatus
from engine.service.driver import perform, recover
from engine.service.engine import PaymentEngine
from mock_psp.clock import ManualClock
from mock_psp.core import ProviderCore
from mock_psp.transport import CoreTransport

MERCHANT = "m_1"


class FakeTime:
    """The adapter's clock and sleep, moved only by the test."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now_s += seconds


@pytest.fixture
def engine(sqlite_database: Database, clock: FixedClock) -> PaymentEngine:
    return PaymentEngine(sqlite_database, clock, SeededIds(random.Random(3)))


def provider_for(
    faults: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[HttpProvider, ProviderCore, CoreTransport, FakeTime]:
    core = ProviderCore(ManualClock(), random.Random(9), faults=faults or {})
    transport = CoreTransport(core)
    fake_time = FakeTime()
    breaker = kwargs.pop("breaker", None) or CircuitBreaker(clock=fake_time.clock)
    provider = HttpProvider(
        "http://psp.test", "sk_test_adapter", transport=transport, sleep=fake_time.sleep,
        rng=random.Random(1), breaker=breaker, **kwargs,
    )  # fmt: skip
    return provider, core, transport, fake_time


@pytest.fixture
def healthy() -> Iterator[tuple[HttpProvider, ProviderCore, CoreTransport, FakeTime]]:
    parts = provider_for()
    yield parts
    parts[0].close()


def create(engine: PaymentEngine, key: str = "c1", method: str = "pm_card_visa") -> str:
    command = CreatePayment(MERCHANT, key, f"order-{key}", 10_000, "EUR", method)
    return engine.create_payment(command).payment.id


def test_a_payment_lives_its_life_over_http(engine: PaymentEngine, healthy: Any) -> None:
    provider, core, _, _ = healthy
    payment_id = create(engine)
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    perform(engine, provider, engine.begin_capture(Capture(MERCHANT, "c", payment_id, 6_000)))
    result = perform(
        engine, provider, engine.begin_refund(Refund(MERCHANT, "r", payment_id, 1_000))
    )
    assert result.payment.state == "partially_refunded"
    pi_id = result.payment["provider_payment_id"]
    truth = core.truth.per_payment_intent()[pi_id]
    assert (truth.captured_minor, truth.refunded_minor, truth.successful_charge_count) == (
        6_000,
        1_000,
        1,
    )
    with engine.db.engine.connect() as connection:
        assert all(check.ok for check in audit(connection))


def test_a_decline_comes_back_with_its_code(engine: PaymentEngine, healthy: Any) -> None:
    provider = healthy[0]
    payment_id = create(engine, method="pm_card_visa_chargeDeclinedInsufficientFunds")
    result = perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    assert (result.status_code, result.payment.state) == (402, "failed")
    assert result.payment["decline_code"] == "insufficient_funds"


def test_lost_responses_are_retried_with_the_same_key_and_never_charge_twice(
    engine: PaymentEngine, clock: FixedClock
) -> None:
    faults = {"api_rules": [{"endpoints": ["payment_intents.create"], "timeout_after_rate": 1.0}]}
    provider, core, transport, fake_time = provider_for(faults, retry=RetryPolicy(attempts_max=3))
    payment_id = create(engine)
    result = perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    assert (result.status_code, result.payment.state) == (202, "processing")
    assert transport.requests == 3 and len(fake_time.slept) == 2
    assert len(core.state.payment_intents) == 1  # three sends, one intent
    clock.advance(timedelta(minutes=1))
    assert recover(engine, provider, engine.unresolved_attempts(timedelta(seconds=30))) == 1
    assert engine.get_payment(payment_id).state == "authorized"
    assert sum(t.successful_charge_count for t in core.truth.per_payment_intent().values()) == 1


def test_the_circuit_opens_after_consecutive_failures_and_fails_fast(engine: PaymentEngine) -> None:
    faults = {"api_rules": [{"endpoints": ["*"], "error_503_rate": 1.0}]}
    fake = FakeTime()
    breaker = CircuitBreaker(failures_max=3, open_s=30.0, clock=fake.clock)
    provider, _, transport, _ = provider_for(
        faults, retry=RetryPolicy(attempts_max=2), breaker=breaker
    )
    outcomes = []
    for key in ("p1", "p2", "p3"):
        payment_id = create(engine, key)
        begun = engine.begin_authorize(Authorize(MERCHANT, f"a-{key}", payment_id))
        assert begun.call is not None
        outcomes.append(provider.call(begun.call).status)
    assert outcomes == [OutcomeStatus.UNKNOWN] * 3
    assert breaker.state is CircuitState.OPEN
    assert transport.requests == 3  # 2 for the first call, 1 more opened it; then none
    assert provider.stats.short_circuited == 1
    fake.now_s += 31
    assert breaker.allow() and breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()  # one trial at a time
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


def test_an_unknown_outcome_is_never_guessed_while_the_provider_is_down(
    engine: PaymentEngine, clock: FixedClock
) -> None:
    faults = {"api_rules": [{"endpoints": ["*"], "timeout_before_rate": 1.0}]}
    provider, core, _, _ = provider_for(faults, retry=RetryPolicy(attempts_max=1))
    payment_id = create(engine)
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "a", payment_id)))
    clock.advance(timedelta(minutes=1))
    calls = engine.unresolved_attempts(timedelta(seconds=30))
    assert len(calls) == 1
    assert provider.lookup(calls[0]).status is OutcomeStatus.NOT_FOUND
    core.set_faults({})
    assert recover(engine, provider, calls) == 1
    assert engine.get_payment(payment_id).state == "authorized"


def test_retry_delays_grow_with_jitter_and_honour_retry_after() -> None:
    policy = RetryPolicy(backoff_s=0.1, backoff_factor=2.0, backoff_max_s=1.0)
    rng = random.Random(4)
    delays = [policy.delay_s(retry, rng, None) for retry in range(6)]
    assert all(0.05 <= d <= 1.5 for d in delays)
    assert delays[3] > delays[0]
    assert policy.delay_s(0, rng, 7.0) == 7.0
    assert policy.delay_s(0, rng, 3_600.0) == 30.0
