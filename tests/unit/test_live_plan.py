"""Live mode's pure parts: the scenario's timeline in wall time, the fault plan as sent
over the admin API, and the checks over a snapshot (no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.live.checks import check_ledgers, check_transitions, history_breaks
from loadtests.live.clients import Evidence
from loadtests.live.plan import (
    Timeline,
    faults_at,
    not_applied,
    quiet_faults,
    scaled_faults,
    switch_times_s,
)
from loadtests.live.settle import Snapshot
from mock_psp.faults import parse_fault_config
from scenarios.schema import parse_scenario

PLAN = parse_fault_config(
    {
        "api_latency": {"kind": "fixed", "fixed_ms": 200},
        "rate_limit": {"capacity": 10, "refill_per_s": 3},
        "api_rules": [
            {"endpoints": ["*"], "timeout_after_rate": 0.1},
            {"windows": [{"start_s": 300, "end_s": 600}], "error_503_rate": 0.5},
        ],
        "webhooks": {"windows": [{"start_s": 100, "end_s": 200}], "delay_rate": 0.5,
                     "delay_max_s": 600, "old_timestamp_rate": 0.1},
    }
)  # fmt: skip


def test_story_times_run_faster_and_network_times_stay_real() -> None:
    scaled = scaled_faults(PLAN, 10.0)
    assert scaled.api_latency.fixed_ms == 200
    assert (
        scaled.api_rules[1].windows[0].start_s == 30 and scaled.api_rules[1].windows[0].end_s == 60
    )
    assert scaled.webhooks.delay_max_s == 60 and scaled.webhooks.old_timestamp_age_s == 3_600
    assert scaled.webhook_retry.first_retry_s == 6
    assert scaled.rate_limit is not None and scaled.rate_limit.refill_per_s == 30


def test_the_plan_is_switched_at_each_window_edge_and_sent_without_windows() -> None:
    scaled = scaled_faults(PLAN, 10.0)
    assert switch_times_s(scaled) == [10.0, 20.0, 30.0, 60.0]
    at_start = faults_at(scaled, 0.0)
    assert [rule.timeout_after_rate for rule in at_start.api_rules] == [0.1]
    assert at_start.webhooks.delay_rate == 0
    in_both = faults_at(scaled, 30.0)
    assert [rule.error_503_rate for rule in in_both.api_rules] == [0.0, 0.5]
    assert all(not rule.windows for rule in in_both.api_rules)
    assert faults_at(scaled, 15.0).webhooks.delay_rate == 0.5
    assert len(faults_at(scaled, 60.0).api_rules) == 1


def test_quiescence_turns_every_fault_off_but_keeps_the_retry_schedule() -> None:
    scaled = scaled_faults(PLAN, 10.0)
    quiet = quiet_faults(scaled)
    assert not quiet.api_rules and quiet.rate_limit is None and quiet.api_latency.kind == "none"
    assert quiet.webhook_retry == scaled.webhook_retry


def test_engine_faults_are_named_as_not_applied() -> None:
    scenario = parse_scenario(
        {"name": "s", "engine_faults": {"crash_rate_per_hour": 2,
                                        "db_outages": [{"start_s": 1, "end_s": 2}]}}
    )  # fmt: skip
    notes = not_applied(scenario)
    assert [note.split(":")[0] for note in notes] == [
        "engine_faults.crashes", "engine_faults.db_outages",
    ]  # fmt: skip
    assert all("not applicable in live mode" in note for note in notes)
    assert not_applied(parse_scenario({"name": "s"})) == []


def test_a_timeline_is_bounded() -> None:
    assert Timeline(20.0, 30.0).simulated_s(30.0) == 600.0
    with pytest.raises(AssertionError):
        Timeline(0.5, 30.0)


def _journal(*entries: tuple[str, str, int]) -> dict[str, Any]:
    return {"id": "jr_1", "kind": "capture", "entries": [
        {"account": a, "side": side, "amount_minor": n, "currency": "USD"} for a, side, n in entries
    ]}  # fmt: skip


def test_an_unbalanced_journal_and_an_unexplained_balance_are_violations() -> None:
    shot = Snapshot()
    shot.payments["pay_1"] = {"merchant_id": "m_1"}
    shot.ledgers["pay_1"] = [
        _journal(("psp_clearing", "D", 100), ("merchant_payable:m_1", "C", 99))
    ]
    shot.balances = [{"merchant_id": "m_1", "balances": {"USD": {"available": 100, "pending": 0}}}]
    before = [{"merchant_id": "m_1", "balances": {}}]
    inv = check_ledgers(shot, before)
    details = [v["detail"] for v in inv.violations]
    assert any("does not balance" in d for d in details)
    assert any("available USD moved by 100, the run's journals say 99" in d for d in details)


def test_a_history_must_walk_the_state_machine_to_the_current_state() -> None:
    legal = [
        {"seq": 1, "from_state": None, "to_state": "created"},
        {"seq": 2, "from_state": "created", "to_state": "authorized"},
    ]
    assert history_breaks(legal, "authorized") == []
    illegal = [*legal, {"seq": 3, "from_state": "authorized", "to_state": "refunded"}]
    assert history_breaks(illegal, "refunded") == [
        "illegal transition authorized -> refunded at seq 3"
    ]
    assert history_breaks(legal, "captured") == [
        "history ends in authorized but the payment is captured"
    ]
    gap = [legal[0], {**legal[1], "seq": 3}]
    assert history_breaks(gap, "authorized")[0].startswith("history breaks at seq 3")
    shot = Snapshot()
    shot.payments["pay_1"] = {"state": "refunded", "history": illegal}
    assert not check_transitions(shot, Evidence()).ok


def test_settlement_faults_and_payout_failures_are_listed_as_not_applied_live() -> None:
    from loadtests.live.plan import applicable, not_applied
    from scenarios.runner import declared_faults
    from scenarios.schema import library_paths, load_scenario

    paths = {path.stem: path for path in library_paths()}
    for name in ("settlement-mismatch", "payout-failure"):
        scenario = load_scenario(paths[name])
        notes = " ".join(not_applied(scenario))
        assert "not applied in live mode" in notes
        live_declared = declared_faults(applicable(scenario))
        assert not [k for k in live_declared if k.startswith(("settlement.", "payout."))]
