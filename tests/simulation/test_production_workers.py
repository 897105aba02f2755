"""The simulated world runs the code that ships: production's relay and its consumer,
the webhook intake and inbox worker, the reconciliation worker, the circuit breaker,
and the engine's faults through the port production's units of work go through."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.adapters.database import Database, UnitFaults
from engine.adapters.store import Row, Store, unit_of_work
from engine.domain.errors import EventTooEarly, StoreUnavailable
from engine.workers.reconciliation import ReconciliationWorker, ReconReport
from engine.workers.relay import OutboxRelay, Projection, RelayReport
from scenarios.reconcile import desk
from scenarios.runner import RunResult, run_scenario
from scenarios.schema import Scenario, library_paths, load_scenario
from scenarios.world import DatabaseFaults, World

LIBRARY = {path.stem: path for path in library_paths()}


def scenario(name: str, duration_s: float, **update: object) -> Scenario:
    return load_scenario(LIBRARY[name]).model_copy(update={"duration_s": duration_s, **update})


def violated(result: RunResult) -> set[str]:
    return {inv.id for inv in result.violated}


# -- the outbox relay ------------------------------------------------------------------------
def test_the_world_relays_with_productions_relay_into_productions_consumer() -> None:
    world = World(scenario("happy-path", 60.0))
    assert isinstance(world.relay, OutboxRelay)
    assert isinstance(world.projection, Projection)


def test_a_defect_planted_in_productions_relay_is_caught_by_a_scenario_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def run_once_losing_the_last_event(self: OutboxRelay) -> RelayReport:
        events = self.engine.unpublished_events(self.batch_max)
        if not events:
            return RelayReport()
        duplicates = self.publisher.publish(events[:-1])
        self.engine.mark_published(events)  # the last one marked, never published
        return RelayReport(len(events), duplicates)

    monkeypatch.setattr(OutboxRelay, "run_once", run_once_losing_the_last_event)
    assert "I8" in violated(run_scenario(scenario("happy-path", 120.0), 1))


def test_a_lost_bus_acknowledgement_republishes_and_the_consumer_dedupes() -> None:
    result = run_scenario(scenario("happy-path", 300.0), 1)
    assert result.ok, result.violated
    coverage = result.report["coverage"]
    assert coverage["outbox batch published, its acknowledgement lost"] > 0
    assert coverage["outbox event delivered twice, deduped by the consumer"] > 0


# -- the webhook inbox ---------------------------------------------------------------------
def test_a_webhook_whose_application_fails_is_retried_and_dead_lettered_by_the_inbox_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Succeeded payments fail at intake once, then apply; refunds fail every time."""
    insert = Store.insert_provider_event
    failed_once: set[str] = set()

    def insert_failing(self: Store, row: Row) -> None:
        event_id, kind = row["provider_event_id"], row["type"]
        if kind == "refund.succeeded" or (
            kind == "payment_intent.succeeded" and event_id not in failed_once
        ):
            failed_once.add(event_id)
            raise EventTooEarly(message="planted: not yet")
        insert(self, row)

    monkeypatch.setattr(Store, "insert_provider_event", insert_failing)
    result = run_scenario(scenario("happy-path", 120.0), 1)
    coverage = result.report["coverage"]
    assert coverage["webhook payment_intent.succeeded kept for the inbox worker: event_too_early"]
    assert coverage["webhook applied by the inbox worker"] > 0
    assert coverage["webhook failed again: left to the inbox worker"] > 0
    assert coverage["webhook dead-lettered after repeated failures"] > 0


# -- the circuit breaker ----------------------------------------------------------------------
def test_the_breaker_opens_under_a_high_5xx_rate_and_recovery_waits_for_it() -> None:
    result = run_scenario(load_scenario(LIBRARY["psp-outage"]))
    assert result.ok, result.violated
    coverage = result.report["coverage"]
    assert coverage["circuit opened"] > 0
    assert coverage["call failed fast: circuit open"] > 0
    assert coverage["recovery deferred: circuit open"] > 0


# -- engine faults through production's port -------------------------------------------------
def test_the_database_has_no_second_commit_path_for_listeners() -> None:
    assert not hasattr(Database, "_listened")
    world = World(scenario("kitchen-sink", 60.0))
    assert isinstance(world.db.faults, DatabaseFaults)
    assert not world.db.engine.dispatch.commit  # nothing listens for SQLAlchemy's commits


class FailingCommits(UnitFaults):
    def commit_fails(self) -> bool:
        return True


def inbox_row(event_id: str) -> Row:
    return {
        "provider_event_id": event_id, "type": "charge.succeeded", "payload": "{}",
        "status": "pending", "attempts": 0, "last_error": None,
        "received_at": datetime(2026, 1, 1, tzinfo=UTC), "applied_at": None,
    }  # fmt: skip


def test_a_failed_commit_through_the_port_loses_the_whole_unit() -> None:
    database = Database(migrate=True)
    database.faults = FailingCommits()
    with pytest.raises(StoreUnavailable), unit_of_work(database) as store:
        store.insert_inbox(inbox_row("evt_lost"))
        store.commit()
    database.faults = None
    with unit_of_work(database) as store:
        assert store.inbox_by_event("evt_lost") is None
        store.insert_inbox(inbox_row("evt_kept"))
        store.commit()
    with unit_of_work(database) as store:
        assert store.inbox_by_event("evt_kept") is not None


def test_commit_failures_and_outages_fire_through_the_port_in_a_run() -> None:
    result = run_scenario(scenario("kitchen-sink", 600.0), 1)
    assert result.report["faults_fired"]["engine.commit_failure"] > 0
    assert result.report["faults_fired"]["engine.db_outage"] > 0


# -- reconciliation ----------------------------------------------------------------------------
def test_the_worlds_reconciliation_is_productions_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(scenario("settlement-mismatch", 60.0))
    assert isinstance(desk(world).worker, ReconciliationWorker)
    monkeypatch.setattr(ReconciliationWorker, "run_once", lambda self, *a, **k: ReconReport())
    result = run_scenario(scenario("settlement-mismatch", 120.0), 1)
    assert "R" in violated(result)
