"""The event catch-up against the mock PSP's core over HTTP: events whose webhooks never
came are listed and taken, the cursor survives a new worker, a failed listing moves
nothing. On SQLite and PostgreSQL; time is moved by the test and nothing sleeps."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from engine.adapters.cursor_store import CursorStore
from engine.adapters.database import Database
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.audit import audit
from engine.domain.commands import Authorize
from engine.domain.ports import FixedClock, SeededIds
from engine.domain.provider import EventPage, EventQuery
from engine.service.driver import perform
from engine.service.engine import PaymentEngine
from engine.workers.events import FEED, TAKEN_NEW, EventCatchUp
from mock_psp.clock import ManualClock
from mock_psp.core import ApiRequest, ProviderCore
from mock_psp.faults import FaultPlanConfig
from mock_psp.transport import CoreTransport
from tests.integration.helpers import MERCHANT, create

GRACE_S = 600
EVERY_S = 300.0
LIST_FAILS = {"api_rules": [{"endpoints": ["events.list"], "error_503_rate": 1.0}]}


class Psp:
    """The mock PSP's core behind the engine's HTTP adapter, on the engine's time. No
    webhook is ever delivered: every event reaches the engine by the catch-up or not at all."""

    def __init__(self, clock: FixedClock, faults: dict[str, Any] | None = None):
        self.engine_clock = clock
        self.clock = ManualClock(clock.now().timestamp())
        self.core = ProviderCore(self.clock, random.Random(5), faults=faults or {})
        self.provider = HttpProvider(
            "http://psp.test", "sk_test_catch_up", transport=CoreTransport(self.core),
            retry=RetryPolicy(attempts_max=1), rng=random.Random(1), sleep=lambda _s: None,
        )  # fmt: skip

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.engine_clock.advance(timedelta(seconds=seconds))

    def decide_dispute(self, pi_id: str, won: bool) -> None:
        charge_id = self.core.state.payment_intents[pi_id].latest_charge_id
        dispute_id = self.core.state.charges[str(charge_id)].dispute_id
        text = "winning_evidence" if won else "losing_evidence"
        result = self.core.handle(ApiRequest(
            "POST", f"/v1/disputes/{dispute_id}", {"evidence[uncategorized_text]": text},
            {"Authorization": "Bearer sk_test_catch_up"},
        ))  # fmt: skip
        assert result.response is not None and result.response.status == 200


class RecordingFeed:
    """The adapter's event list, with every query it was asked kept."""

    def __init__(self, inner: HttpProvider):
        self.inner = inner
        self.queries: list[EventQuery] = []

    def list_events(self, query: EventQuery) -> EventPage:
        self.queries.append(query)
        return self.inner.list_events(query)


@pytest.fixture
def engine(database: Database, clock: FixedClock) -> PaymentEngine:
    return PaymentEngine(database, clock, SeededIds(random.Random(3)))


@pytest.fixture
def psp(clock: FixedClock) -> Iterator[Psp]:
    made = Psp(clock)
    yield made
    made.provider.close()


def disputed_payment(engine: PaymentEngine, psp: Psp, won: bool) -> str:
    """A payment captured at once, disputed at capture, the dispute then decided."""
    payment_id = create(engine, payment_method="pm_card_createDispute",
                        capture_method="automatic").payment.id  # fmt: skip
    begun = engine.begin_authorize(Authorize(MERCHANT, "auth", payment_id))
    result = perform(engine, psp.provider, begun)
    assert result.payment.state == "captured", result
    psp.advance(60)
    psp.decide_dispute(result.payment["provider_payment_id"], won)
    return payment_id


def reasons(engine: PaymentEngine, payment_id: str) -> list[str]:
    return [item["reason"] for item in engine.get_payment(payment_id).history]


def catch_up(engine: PaymentEngine, feed: Any, **kwargs: Any) -> EventCatchUp:
    return EventCatchUp(engine, feed, every_s=EVERY_S, grace_s=GRACE_S, overlap_s=60, **kwargs)


def test_a_dispute_whose_webhooks_were_all_lost_is_applied_by_the_catch_up(
    engine: PaymentEngine, database: Database, psp: Psp
) -> None:
    payment_id = disputed_payment(engine, psp, won=True)
    assert "dispute_created_by_event" not in reasons(engine, payment_id)  # nothing came
    worker = catch_up(engine, psp.provider)
    assert worker.run_once().listed == 0  # too young: left to their delivery
    psp.advance(EVERY_S + GRACE_S)
    report = worker.run_once()
    assert not report.failed and report.refused == 0
    assert report.taken == report.listed >= 3 and report.paths[TAKEN_NEW] == report.taken
    assert "dispute_created_by_event" in reasons(engine, payment_id)
    assert engine.get_payment(payment_id).state == "settled"  # the dispute was won
    with database.engine.connect() as connection:
        assert [(r.name, r.violations) for r in audit(connection) if not r.ok] == []
    psp.advance(EVERY_S)
    again = worker.run_once()  # the overlap lists the last events again: duplicates
    assert again.taken == 0 and not again.failed


def test_a_lost_dispute_is_applied_and_a_second_worker_takes_nothing_twice(
    engine: PaymentEngine, psp: Psp
) -> None:
    payment_id = disputed_payment(engine, psp, won=False)
    psp.advance(EVERY_S + GRACE_S)
    assert catch_up(engine, psp.provider).run_once().taken >= 3
    assert engine.get_payment(payment_id).state == "disputed"  # lost: the withdrawal stands
    history = reasons(engine, payment_id)
    # A worker with a cursor of its own reads the whole span again: every event is kept.
    other = catch_up(engine, psp.provider, feed_name="psp-again")
    report = other.run_once()
    assert report.taken == 0 and report.duplicates == report.listed > 0
    assert reasons(engine, payment_id) == history


def test_the_cursor_survives_a_new_worker_instance(engine: PaymentEngine, psp: Psp) -> None:
    disputed_payment(engine, psp, won=True)
    psp.advance(EVERY_S + GRACE_S)
    first = catch_up(engine, psp.provider)
    report = first.run_once()
    assert report.read_to_at is not None
    end_s = int(engine.clock.now().timestamp()) - GRACE_S
    assert report.read_to_at.timestamp() == end_s
    assert CursorStore(engine.db).read(FEED) == report.read_to_at
    psp.advance(EVERY_S)
    feed = RecordingFeed(psp.provider)
    restarted = catch_up(engine, feed)  # a new process: nothing in memory
    assert restarted.run_once().taken == 0
    # It went on from the cursor kept in the database, less the overlap.
    assert feed.queries[0].created_gte_s == end_s - 60
    assert feed.queries[0].created_lt_s == end_s + int(EVERY_S)


def test_a_failed_listing_leaves_the_cursor_and_the_next_pass_retries(
    engine: PaymentEngine, clock: FixedClock
) -> None:
    psp = Psp(clock, LIST_FAILS)
    try:
        payment_id = disputed_payment(engine, psp, won=True)
        psp.advance(EVERY_S + GRACE_S)
        worker = catch_up(engine, psp.provider)
        report = worker.run_once()
        assert (report.failure, report.listed, report.read_to_at) == ("http_503", 0, None)
        assert report.paths["event catch-up failed: provider error"] == 1
        assert CursorStore(engine.db).read(FEED) is None
        assert worker.run_once().listed == 0  # not due again before the interval
        psp.core.set_faults(FaultPlanConfig())
        psp.advance(EVERY_S)
        retried = worker.run_once()
        assert not retried.failed and retried.taken >= 3
        assert engine.get_payment(payment_id).state == "settled"
    finally:
        psp.provider.close()


def test_a_pass_takes_at_most_its_bound_and_the_sweep_goes_on_without_waiting(
    engine: PaymentEngine, psp: Psp
) -> None:
    payment_id = disputed_payment(engine, psp, won=True)
    worker = catch_up(engine, psp.provider, events_max=2, page_max=1)
    psp.advance(EVERY_S + GRACE_S)
    first = worker.run_once()
    assert (first.listed, first.read_to_at, worker.behind) == (2, None, True)
    assert CursorStore(engine.db).read(FEED) is None  # not read whole: the cursor waits
    passes = [first]
    while worker.behind:
        passes.append(worker.run_once())  # due at once, the clock unmoved
        assert passes[-1].listed <= 2 and len(passes) < 10
    assert passes[-1].read_to_at is not None
    assert sum(p.taken for p in passes) == sum(p.listed for p in passes)  # each event once
    assert engine.get_payment(payment_id).state == "settled"


# -- production's wiring ---------------------------------------------------------------------
def test_the_services_workers_run_the_catch_up_as_configured(
    sqlite_database: Database, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.entrypoints.serve import ServiceSettings, build_workers

    engine = PaymentEngine(sqlite_database, clock, SeededIds(random.Random(3)))
    settings = ServiceSettings(webhook_secret="whsec_x", events_catch_up_s=120.0)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert ServiceSettings.from_env() == settings  # it reaches every API process
    background = build_workers(engine, settings)
    catch_up = background.worker.catch_up
    assert isinstance(catch_up, EventCatchUp) and catch_up.every == timedelta(seconds=120)
    assert isinstance(catch_up.feed, HttpProvider)  # the workers' adapter: retries, breaker
    background.stop()
    off = build_workers(engine, ServiceSettings(webhook_secret="whsec_x", events_catch_up_s=0))
    assert off.worker.catch_up is None
    assert ServiceSettings(events_catch_up_s=5).problem() == (
        "events_catch_up_s", "0 (off), or 10 to 86400 seconds",
    )  # fmt: skip
