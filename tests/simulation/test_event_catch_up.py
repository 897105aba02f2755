"""The event catch-up in the simulated world: production's ``EventCatchUp``, pumped on the
world's clock through the provider's event list, takes the dispute events whose webhooks
the provider gave up on; the W oracle excuses a duplicate first delivery only for an
event the list carried to the engine before it."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.workers.events import TAKEN_NEW, CatchUpReport, EventCatchUp, never
from scenarios.oracles import check_webhook_intake
from scenarios.runner import RunResult, run_scenario
from scenarios.schema import Scenario, library_paths, load_scenario, parse_scenario
from scenarios.world import World

LIBRARY = {path.stem: path for path in library_paths()}
DISPUTES_LOST = {"permanent_loss_rate": 1.0, "event_types": ["charge.dispute.*"]}


def disputes_never_delivered(duration_s: float = 600.0) -> Scenario:
    """dispute-storm, short, where every dispute webhook is lost for good."""
    scenario = load_scenario(LIBRARY["dispute-storm"])
    workload = scenario.workload.model_copy(update={"dispute_response_s": 120.0})
    faults = {**scenario.psp_faults, "webhooks": DISPUTES_LOST}
    return scenario.model_copy(
        update={"duration_s": duration_s, "workload": workload, "psp_faults": faults}
    )


def violated(result: RunResult) -> set[str]:
    return {inv.id for inv in result.violated}


def test_a_scenario_whose_dispute_webhooks_are_all_lost_converges_by_the_catch_up() -> None:
    result = run_scenario(disputes_never_delivered(), 3)
    assert result.ok, (result.violated, result.problems)
    coverage = result.report["coverage"]
    assert coverage[TAKEN_NEW] > 10
    assert coverage["dispute answered: won"] > 0 and coverage["dispute answered: lost"] > 0


def test_without_the_catch_up_lost_dispute_webhooks_leave_the_engine_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def pass_doing_nothing(
        self: EventCatchUp, now: datetime, stopping: object = never,
        report: CatchUpReport | None = None,
    ) -> CatchUpReport:  # fmt: skip
        return CatchUpReport() if report is None else report

    monkeypatch.setattr(EventCatchUp, "pass_once", pass_doing_nothing)
    monkeypatch.setattr(World, "catch_up_pending", lambda self: False)
    assert "I7" in violated(run_scenario(disputes_never_delivered(), 3))


def test_a_duplicate_first_delivery_is_excused_only_for_an_event_fetched_before_it() -> None:
    world = World(parse_scenario({"name": "fetched-first"}), 1)
    world.first_takes = {
        "evt_fetched_first": ("original", "duplicate"),
        "evt_fetched_after": ("original", "duplicate"),
        "evt_never_fetched": ("original", "duplicate"),
    }
    world.fetched_at["evt_fetched_first"] = world.moment()
    for event_id in world.first_takes:
        world.first_take_at[event_id] = world.moment()
    world.fetched_at["evt_fetched_after"] = world.moment()
    intake = check_webhook_intake(world)
    assert sorted(v["subject"] for v in intake.violations) == [
        "evt_fetched_after", "evt_never_fetched",
    ]  # fmt: skip
    world.db.dispose()


def test_failed_listings_end_passes_and_later_passes_catch_up_all_the_same() -> None:
    scenario = disputes_never_delivered()
    rules = [{"endpoints": ["events.list"], "error_503_rate": 0.3, "timeout_after_rate": 0.2}]
    scenario = scenario.model_copy(
        update={"psp_faults": {**scenario.psp_faults, "api_rules": rules}}
    )
    result = run_scenario(scenario, 4)
    assert result.ok, (result.violated, result.problems)
    coverage = result.report["coverage"]
    assert coverage["event catch-up failed: provider error"] > 0
    assert coverage[TAKEN_NEW] > 10
