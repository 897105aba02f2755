"""Concurrency with real threads: the engine's row locks and unique indexes hold.

Each test lines its threads up on a ``threading.Barrier`` so that they hit the
database together, then asserts invariants over what came back and what was
stored, never timings. An engine typed error (``PaychaosError``) is a handled
outcome and is checked against the errors the scenario allows; any other
exception escapes the pool and fails the test.

PostgreSQL (row locks ``FOR UPDATE``, unique-index races retried) is the
database concurrency is proven on; the SQLite file variants show that
``BEGIN IMMEDIATE`` serializes the same steps.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.audit import audit
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund
from engine.domain.errors import (
    AmountExceeded,
    IllegalTransition,
    OperationInProgress,
    OrderAlreadyActive,
    PaychaosError,
)
from engine.domain.provider import ProviderCall, ProviderOutcome
from engine.service.driver import perform
from engine.service.engine import PaymentEngine
from engine.service.views import StepResult

T = TypeVar("T")
EngineFactory = Callable[[Database], PaymentEngine]

MERCHANT = "m_concurrency"
BARRIER_TIMEOUT_S = 60.0
AMOUNT_MINOR = 10_000
CAPTURE_THREADS = 50
REFUND_THREADS = 50
REFUND_MINOR = 200
CREATE_THREADS = 50
ORDER_THREADS = 20


class LockedProvider(FakeProvider):
    """The fake provider behind a lock: the real one keeps unguarded dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def call(self, call: ProviderCall) -> ProviderOutcome:
        with self.lock:
            return super().call(call)

    def lookup(self, call: ProviderCall) -> ProviderOutcome:
        with self.lock:
            return super().lookup(call)


def race(threads: int, work: Callable[[int], T]) -> list[T | PaychaosError]:
    """Run ``work(i)`` on ``threads`` threads released together by a barrier.

    Typed engine errors are returned as results; anything else is raised.
    """
    barrier = threading.Barrier(threads, timeout=BARRIER_TIMEOUT_S)

    def one(index: int) -> T | PaychaosError:
        barrier.wait()
        try:
            return work(index)
        except PaychaosError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, range(threads)))


def split(
    outcomes: list[T | PaychaosError], allowed: tuple[type[PaychaosError], ...]
) -> tuple[list[T], list[PaychaosError]]:
    """Successes and refusals; a refusal of a kind the scenario does not allow fails."""
    errors = [outcome for outcome in outcomes if isinstance(outcome, PaychaosError)]
    unexpected = [error for error in errors if not isinstance(error, allowed)]
    assert not unexpected, [f"{type(e).__name__}: {e.code}: {e.message}" for e in unexpected]
    successes = [outcome for outcome in outcomes if not isinstance(outcome, PaychaosError)]
    return successes, errors


def assert_audit_clean(database: Database) -> None:
    with database.engine.connect() as connection:
        results = audit(connection)
    violations = {result.name: result.violations for result in results if not result.ok}
    assert not violations, violations


def count(database: Database, table: sa.Table, *where: Any) -> int:
    with database.engine.connect() as connection:
        query = sa.select(sa.func.count()).select_from(table).where(*where)
        return int(connection.execute(query).scalar_one())


def authorized_payment(engine: PaymentEngine, provider: FakeProvider) -> str:
    created = engine.create_payment(
        CreatePayment(MERCHANT, "create-1", "order-1", AMOUNT_MINOR, "USD", "pm_card_visa")
    )
    payment_id = created.payment.id
    result = perform(
        engine, provider, engine.begin_authorize(Authorize(MERCHANT, "auth-1", payment_id))
    )
    assert result.payment.state == "authorized"
    return payment_id


@pytest.fixture
def sqlite_file_database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'concurrency.db'}", migrate=True)
    yield db
    db.dispose()


# -- (a) captures and refunds on one payment ---------------------------------------


@pytest.mark.postgres
def test_concurrent_captures_and_refunds_never_exceed_the_payments_amounts(
    postgres_database: Database, make_engine: EngineFactory
) -> None:
    engine, provider = make_engine(postgres_database), LockedProvider()
    payment_id = authorized_payment(engine, provider)

    def capture(index: int) -> StepResult:
        command = Capture(MERCHANT, f"capture-{index}", payment_id, 5_000 + index)
        return perform(engine, provider, engine.begin_capture(command))

    captures, refused = split(
        race(CAPTURE_THREADS, capture), (OperationInProgress, IllegalTransition)
    )
    assert len(captures) == 1, "one capture per payment: exactly one wins"
    assert len(refused) == CAPTURE_THREADS - 1
    captured = captures[0].payment["captured_minor"]
    assert 5_000 <= captured < 5_000 + CAPTURE_THREADS
    assert captures[0].payment.state == "partially_captured"

    def refund(index: int) -> StepResult:
        command = Refund(MERCHANT, f"refund-{index}", payment_id, REFUND_MINOR)
        return perform(engine, provider, engine.begin_refund(command))

    refunds, refused = split(race(REFUND_THREADS, refund), (AmountExceeded, IllegalTransition))
    assert all(result.status_code == 200 for result in refunds)
    # Every refund that found room reserved it, so exactly as many fit as the capture allows.
    assert len(refunds) == captured // REFUND_MINOR
    assert len(refused) == REFUND_THREADS - len(refunds)

    payment = engine.get_payment(payment_id)
    assert payment["captured_minor"] == captured <= payment["authorized_minor"] == AMOUNT_MINOR
    assert payment["refunded_minor"] == len(refunds) * REFUND_MINOR <= captured
    assert payment["refund_reserved_minor"] == 0
    assert Counter(item["status"] for item in payment.refunds) == {"succeeded": len(refunds)}
    truth = provider.truth[payment_id]
    assert truth.charges == 1
    assert truth.captured_minor == captured
    assert truth.refunded_minor == payment["refunded_minor"]
    assert_audit_clean(postgres_database)


# -- (b) one idempotency key, many creates ------------------------------------------------


def creates_with_one_key_make_one_payment(database: Database, engine: PaymentEngine) -> None:
    command = CreatePayment(MERCHANT, "one-key", "order-b", AMOUNT_MINOR, "USD", "pm_card_visa")
    results, _ = split(race(CREATE_THREADS, lambda _: engine.create_payment(command)), ())
    assert len({result.payment.id for result in results}) == 1
    assert sum(not result.replayed for result in results) == 1
    assert {result.status_code for result in results} == {201}
    assert count(database, t.payments) == 1
    assert count(database, t.idempotency_keys) == 1
    assert_audit_clean(database)


@pytest.mark.postgres
def test_concurrent_creates_with_one_key_make_one_payment_on_postgres(
    postgres_database: Database, make_engine: EngineFactory
) -> None:
    creates_with_one_key_make_one_payment(postgres_database, make_engine(postgres_database))


def test_concurrent_creates_with_one_key_make_one_payment_on_a_sqlite_file(
    sqlite_file_database: Database, make_engine: EngineFactory
) -> None:
    creates_with_one_key_make_one_payment(sqlite_file_database, make_engine(sqlite_file_database))


# -- (c) one order, many keys ------------------------------------------------------------------


def one_order_gets_at_most_one_authorized_payment(
    database: Database, engine: PaymentEngine
) -> None:
    provider = LockedProvider()

    def create_and_authorize(index: int) -> StepResult:
        created = engine.create_payment(
            CreatePayment(MERCHANT, f"create-{index}", "order-c", AMOUNT_MINOR, "USD",
                          "pm_card_visa")
        )  # fmt: skip
        authorize = Authorize(MERCHANT, f"auth-{index}", created.payment.id)
        return perform(engine, provider, engine.begin_authorize(authorize))

    authorized, refused = split(race(ORDER_THREADS, create_and_authorize), (OrderAlreadyActive,))
    assert len(authorized) == 1
    assert authorized[0].payment.state == "authorized"
    assert len(refused) == ORDER_THREADS - 1
    payments = t.payments.c
    assert count(database, t.payments, payments.order_id == "order-c") == ORDER_THREADS
    assert count(database, t.payments, payments.state == "authorized") == 1
    assert count(database, t.payments, payments.active_order_id == "order-c") == 1
    assert sum(truth.charges for truth in provider.truth.values()) == 1
    assert_audit_clean(database)


@pytest.mark.postgres
def test_concurrent_creates_for_one_order_authorize_at_most_one_payment_on_postgres(
    postgres_database: Database, make_engine: EngineFactory
) -> None:
    one_order_gets_at_most_one_authorized_payment(postgres_database, make_engine(postgres_database))


def test_concurrent_creates_for_one_order_authorize_at_most_one_payment_on_a_sqlite_file(
    sqlite_file_database: Database, make_engine: EngineFactory
) -> None:
    one_order_gets_at_most_one_authorized_payment(
        sqlite_file_database, make_engine(sqlite_file_database)
    )
