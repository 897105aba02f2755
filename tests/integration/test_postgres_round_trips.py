"""On PostgreSQL a step's BEGIN and COMMIT ride with its statements.

A step is one round trip for its first reads (with the BEGIN the engine sends
itself), one per further read it must wait for, and one for its writes and the
COMMIT; the driver's connection is in autocommit only for the step and goes
back to the pool as it came, whether the step committed, failed or lost a race.
"""

from __future__ import annotations

import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.adapters.store import RetryStep, unit_of_work
from engine.domain.commands import Authorize, Capture, CreatePayment
from engine.domain.errors import IllegalTransition
from engine.domain.ports import FixedClock, SeededIds
from engine.domain.provider import EventType, OutcomeStatus, ProviderEvent, ProviderOutcome
from engine.service.driver import perform
from engine.service.engine import PaymentEngine

pytestmark = pytest.mark.postgres
MERCHANT = "m_trips"
AT = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(postgres_database: Database) -> PaymentEngine:
    return PaymentEngine(postgres_database, FixedClock(), SeededIds(random.Random(3)))


def _syncs(database: Database, work: object) -> list[str]:
    """The protocol messages that end a round trip (Sync, simple Query) during ``work``."""
    raw = database.engine.raw_connection()
    driver = raw.driver_connection
    raw.close()  # back to the pool: with one connection in use, the step gets this one
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "trace"
        with path.open("w") as out:
            driver.pgconn.trace(out.fileno())
            driver.pgconn.set_trace_flags(1)  # no timestamps
            try:
                work()  # type: ignore[operator]
            finally:
                driver.pgconn.untrace()
        lines = path.read_text().splitlines()
    messages = [line.split() for line in lines if line.startswith("F")]
    return [words[2] for words in messages if len(words) > 2 and words[2] in ("Sync", "Query")]


def test_a_create_is_one_trip_to_read_its_key_and_one_to_write_and_commit(
    engine: PaymentEngine, postgres_database: Database
) -> None:
    command = CreatePayment(MERCHANT, "k-create", "order-1", 1_000, "USD", "pm_card_visa")
    trips = _syncs(postgres_database, lambda: engine.create_payment(command))
    # BEGIN + the key's read, then
    # the payment, history, outbox and key rows with the COMMIT.
    assert trips == ["Sync", "Sync"]


def test_an_authorization_begun_is_two_trips(
    engine: PaymentEngine, postgres_database: Database
) -> None:
    created = engine.create_payment(
        CreatePayment(MERCHANT, "k-c", "order-4", 1_000, "USD", "pm_card_visa")
    )
    command = Authorize(MERCHANT, "k-a", created.payment.id)
    trips = _syncs(postgres_database, lambda: engine.begin_authorize(command))
    # BEGIN + the key + the payment locked + its attempts in flight + the holder of its
    # order; the key, attempt and order claim written with the COMMIT.
    assert trips == ["Sync", "Sync"]


def test_a_completed_authorization_is_two_trips(
    engine: PaymentEngine, postgres_database: Database
) -> None:
    created = engine.create_payment(
        CreatePayment(MERCHANT, "k-c", "order-2", 1_000, "USD", "pm_card_visa")
    )
    call = engine.begin_authorize(Authorize(MERCHANT, "k-a", created.payment.id)).call
    assert call is not None
    outcome = FakeProvider().call(call)
    trips = _syncs(postgres_database, lambda: engine.complete_authorize(call.attempt_id, outcome))
    # BEGIN + the payment locked + the attempt; the writes and COMMIT.
    assert trips == ["Sync", "Sync"]


def test_a_webhook_is_two_trips_and_its_duplicate_two(
    engine: PaymentEngine, postgres_database: Database
) -> None:
    created = engine.create_payment(
        CreatePayment(MERCHANT, "k-c", "order-3", 1_000, "USD", "pm_card_visa")
    )
    payment_id = created.payment.id
    call = engine.begin_authorize(Authorize(MERCHANT, "k-a", payment_id)).call
    assert call is not None
    engine.complete_authorize(call.attempt_id, ProviderOutcome(OutcomeStatus.UNKNOWN))
    event = ProviderEvent("evt_trips", EventType.AUTHORIZED.value, AT, payment_id=payment_id,
                          amount_minor=1_000)  # fmt: skip
    trips = _syncs(postgres_database, lambda: engine.take_webhook(event, "{}"))
    # BEGIN + the payment locked + its open attempts + the inbox row + the event taken;
    # the writes and COMMIT.
    assert trips == ["Sync", "Sync"]
    assert engine.get_payment(payment_id).state == "authorized"
    again = _syncs(postgres_database, lambda: engine.take_webhook(event, "{}"))
    assert again == ["Sync", "Sync"]  # the same first reads find it kept; COMMIT


def _autocommit_of_pooled(database: Database) -> bool:
    raw = database.engine.raw_connection()
    try:
        return bool(raw.driver_connection.autocommit)
    finally:
        raw.close()


def test_a_refused_step_hands_its_connection_back_out_of_autocommit(
    engine: PaymentEngine, postgres_database: Database
) -> None:
    created = engine.create_payment(
        CreatePayment(MERCHANT, "k-c", "order-3", 1_000, "USD", "pm_card_visa")
    )
    with pytest.raises(IllegalTransition):
        engine.begin_capture(Capture(MERCHANT, "k-cap", created.payment.id))
    assert _autocommit_of_pooled(postgres_database) is False
    with postgres_database.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(t.attempts)).scalar() == 0


def test_a_unique_race_found_in_the_write_batch_retries_the_step_and_keeps_nothing(
    postgres_database: Database,
) -> None:
    row = {
        "id": "idk_one", "merchant_id": MERCHANT, "scope": "create_payment", "key": "k-dup",
        "fingerprint": "f" * 64, "status": "in_flight",
        "created_at": FixedClock().now(), "expires_at": FixedClock().now(),
    }  # fmt: skip
    with unit_of_work(postgres_database) as store:
        store.insert_idempotency_key(row)
        store.commit()
    with pytest.raises(RetryStep), unit_of_work(postgres_database) as store:
        store.insert_idempotency_key({**row, "id": "idk_two"})  # deferred: sent at commit
        store.commit()
    assert _autocommit_of_pooled(postgres_database) is False
    with postgres_database.engine.connect() as connection:
        ids = connection.execute(sa.select(t.idempotency_keys.c.id)).scalars().all()
    assert ids == ["idk_one"]


def test_a_whole_life_on_postgres_keeps_every_connection_in_transaction_mode(
    engine: PaymentEngine, postgres_database: Database
) -> None:
    provider = FakeProvider()
    created = engine.create_payment(
        CreatePayment(MERCHANT, "k-c", "order-4", 1_000, "USD", "pm_card_visa")
    )
    payment_id = created.payment.id
    perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, "k-a", payment_id)))
    result = perform(
        engine, provider, engine.begin_capture(Capture(MERCHANT, "k-k", payment_id, 400))
    )
    assert result.payment.state == "partially_captured"
    assert _autocommit_of_pooled(postgres_database) is False
