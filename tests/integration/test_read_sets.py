"""Read sets: a step's first reads, declared as data and answered by name.

``Store.load`` sends a read set in one round trip on PostgreSQL and reads it one
by one on SQLite; the answers are the same either way. Nothing is kept for later:
a read after a load goes to the database and sees the step's own writes.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from engine.adapters.database import Database
from engine.adapters.store import (
    AttemptReads,
    CommandReads,
    EventReads,
    LoadedAttempt,
    LoadedCommand,
    LoadedEvent,
    OpenAttempts,
    unit_of_work,
)
from engine.domain.commands import Authorize, CreatePayment
from engine.domain.ports import FixedClock, SeededIds
from engine.domain.provider import OutcomeStatus, ProviderEvent, ProviderOutcome
from engine.service.engine import PaymentEngine
from engine.service.events import EVENT_ANSWERABLE
from engine.service.steps import OPEN_STATUSES

MERCHANT = "m_reads"
BUSY = OpenAttempts(("authorize", "void"), OPEN_STATUSES)


def _world(database: Database) -> dict[str, str]:
    """Two payments: one with an authorization in flight (holding its order) and a
    webhook kept and taken; one only created."""
    engine = PaymentEngine(database, FixedClock(), SeededIds(random.Random(5)))
    held = engine.create_payment(
        CreatePayment(MERCHANT, "k-c1", "order-1", 1_000, "USD", "pm_card_visa")
    ).payment.id
    fresh = engine.create_payment(
        CreatePayment(MERCHANT, "k-c2", "order-2", 2_000, "USD", "pm_card_visa")
    ).payment.id
    call = engine.begin_authorize(Authorize(MERCHANT, "k-a1", held)).call
    assert call is not None
    engine.complete_authorize(call.attempt_id, ProviderOutcome(OutcomeStatus.UNKNOWN))
    kept = ProviderEvent("evt_kept", "charge.updated", FixedClock().now(), payment_id=held)
    assert engine.take_webhook(kept, "{}") == ("applied", "ignored")
    return {"held": held, "fresh": fresh, "attempt": call.attempt_id}


def _read_sets(ids: dict[str, str]) -> list[CommandReads | AttemptReads | EventReads]:
    held, fresh = ids["held"], ids["fresh"]
    return [
        CommandReads(MERCHANT, "authorize", "k-new", held, busy=BUSY, order_holder=True),
        CommandReads(MERCHANT, "authorize", "k-new", fresh, busy=BUSY, order_holder=True),
        CommandReads(MERCHANT, "capture", "k-new", held),
        CommandReads(MERCHANT, "authorize", "k-a1", held, busy=BUSY, order_holder=True),
        CommandReads(MERCHANT, "authorize", "k-new", "pay_missing", busy=BUSY),
        AttemptReads(ids["attempt"]),
        AttemptReads("att_missing"),
        EventReads("evt_new", held, inbox=True, attempts=EVENT_ANSWERABLE),
        EventReads("evt_new", held),
        EventReads("evt_kept", held, inbox=True, attempts=EVENT_ANSWERABLE),
        EventReads("evt_kept", held, attempts=EVENT_ANSWERABLE),
        EventReads("evt_kept", None, inbox=True),
        EventReads("evt_new", None),
    ]


def _answers(database: Database) -> list[LoadedCommand | LoadedAttempt | LoadedEvent]:
    ids = _world(database)
    with unit_of_work(database) as s:
        return [s.load(reads) for reads in _read_sets(ids)]


@pytest.mark.postgres
def test_a_read_set_answers_the_same_batched_on_postgres_and_one_by_one_on_sqlite(
    sqlite_database: Database, postgres_database: Database
) -> None:
    one_by_one, batched = _answers(sqlite_database), _answers(postgres_database)
    assert batched == one_by_one
    new_key, _, _, replay, missing, attempt, no_attempt, event, _, kept, taken, _, _ = batched
    assert isinstance(new_key, LoadedCommand) and new_key.key is None
    assert new_key.payment is not None and [a["kind"] for a in new_key.busy] == ["authorize"]
    assert new_key.order_holder is not None and new_key.order_holder["id"] == new_key.payment["id"]
    assert isinstance(replay, LoadedCommand) and replay.key is not None
    assert isinstance(missing, LoadedCommand) and missing.payment is None and not missing.busy
    assert isinstance(attempt, LoadedAttempt) and attempt.attempt is not None
    assert attempt.payment is not None and attempt.attempt["payment_id"] == attempt.payment["id"]
    assert no_attempt == LoadedAttempt(None, None)
    assert isinstance(event, LoadedEvent) and event.payment is not None
    assert event.inbox is None and event.taken is None and len(event.attempts) == 1
    assert isinstance(taken, LoadedEvent) and taken.taken is not None and taken.inbox is None
    assert isinstance(kept, LoadedEvent) and kept.inbox is not None


def test_a_key_or_an_inbox_row_found_needs_nothing_more(database: Database) -> None:
    ids = _world(database)
    with unit_of_work(database) as s:
        replay = s.load(CommandReads(MERCHANT, "authorize", "k-a1", ids["held"], busy=BUSY,
                                     order_holder=True))  # fmt: skip
        kept = s.load(EventReads("evt_kept", ids["held"], inbox=True, attempts=EVENT_ANSWERABLE))
    assert replay.key is not None and replay.key["scope"] == "authorize"
    assert (replay.payment, replay.busy, replay.order_holder) == (None, [], None)
    assert kept.inbox is not None and kept.inbox["provider_event_id"] == "evt_kept"
    assert (kept.payment, kept.attempts, kept.taken) == (None, [], None)


def test_reads_after_a_load_go_to_the_database_and_see_the_step_s_writes(
    database: Database,
) -> None:
    ids = _world(database)
    held = ids["held"]
    with unit_of_work(database) as s:
        loaded = s.load(CommandReads(MERCHANT, "void", "k-v", held, busy=BUSY))
        assert loaded.payment is not None and loaded.key is None
        s.update_payment(held, loaded.payment["history_count"], metadata={"seen": "after"})
        payment = s.payment(held, lock=True)  # the same read the load made
        assert payment is not None and payment["metadata"] == {"seen": "after"}
        assert [a["id"] for a in s.attempts_of(held, BUSY.kinds, BUSY.statuses)] == [
            a["id"] for a in loaded.busy
        ]
        s.update_attempt(ids["attempt"], status="succeeded")
        assert s.attempts_of(held, BUSY.kinds, BUSY.statuses) == []
        event = s.load(EventReads("evt_new", held, attempts=EVENT_ANSWERABLE))
        assert event.payment is not None and event.payment["metadata"] == {"seen": "after"}
        row: dict[str, Any] = {"id": "pev_x", "provider_event_id": "evt_new", "type": "t",
                               "payment_id": held, "outcome": "applied",
                               "received_at": FixedClock().now()}  # fmt: skip
        s.insert_provider_event(row)
        provider_event = s.provider_event("evt_new")
        assert provider_event is not None and provider_event["id"] == "pev_x"
