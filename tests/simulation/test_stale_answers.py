"""Faults and checks that expose stale or wrong answers (issue 17, blind spot 5): late
arrivals at the provider, late replays by clients, and each event's first delivery."""

from __future__ import annotations

from typing import Any

from scenarios.oracles import check_webhook_intake
from scenarios.runner import run_scenario
from scenarios.schema import load_scenario, parse_scenario
from scenarios.world import World


def short(name: str, duration_s: float = 180.0, **update: Any) -> Any:
    scenario = load_scenario(name)
    return scenario.model_copy(update={"duration_s": duration_s, **update})


def test_a_late_arrival_after_not_found_is_resolved_without_a_second_charge():
    result = run_scenario(short("psp-timeouts", 300.0), 1)
    coverage = result.report["coverage"]
    assert result.ok, (result.violated, result.problems)
    assert result.report["faults_fired"]["api.late_arrival"] > 0
    after_not_found = sum(v for k, v in coverage.items() if "after a lookup said not found" in k)
    assert after_not_found > 0, coverage


def test_a_run_with_late_arrivals_is_the_same_run_for_the_same_seed():
    first = run_scenario(short("psp-timeouts", 120.0), 5).report
    again = run_scenario(short("psp-timeouts", 120.0), 5).report
    assert first == again


def test_every_kind_of_request_is_replayed_at_quiescence_and_answers_the_same():
    clients = {"late_replay_rate": 0.5, "late_replay_within_s": 120, "quiescence_replays": 5}
    scenario = short("happy-path", 180.0)
    scenario = scenario.model_copy(update={"clients": scenario.clients.model_copy(update=clients)})
    result = run_scenario(scenario, 2)
    coverage = result.report["coverage"]
    assert result.ok, (result.violated, result.problems)
    for kind in ("CreatePayment", "Authorize", "Capture", "Void", "Refund"):
        assert coverage[f"{kind} replayed at quiescence"] > 0, kind
    assert coverage["client replayed a finished request later"] > 0
    idempotency = next(inv for inv in result.invariants if inv.id == "I6")
    assert idempotency.checked >= coverage["client replayed a finished request at quiescence"]


def test_a_first_delivery_taken_as_a_duplicate_is_a_violation():
    world = World(parse_scenario({"name": "first-takes"}), 1)
    world.first_takes = {"evt_new": ("original", "applied"), "evt_lost": ("original", "duplicate")}
    intake = check_webhook_intake(world)
    assert [v["subject"] for v in intake.violations] == ["evt_lost"]
    assert intake.checked >= 2
    world.db.dispose()


def test_each_events_first_delivery_is_recorded_with_the_intakes_answer():
    result = run_scenario(short("webhook-storm", 120.0), 1)
    assert result.ok, (result.violated, result.problems)
    coverage = result.report["coverage"]
    assert any("taken after a newer event of its payment" in k for k in coverage), coverage
