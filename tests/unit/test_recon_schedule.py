"""The simulated reconciliation's schedule and its scenario section: pure, no world."""

from __future__ import annotations

import pytest

from scenarios.reconcile import due_windows
from scenarios.schema import ScenarioError, parse_scenario


def test_a_window_waits_for_its_delay_and_quiescence_runs_the_rest_up_to_now() -> None:
    assert due_windows(0, 60, 119.9, 60, final=False) == []
    assert due_windows(0, 60, 120.0, 60, final=False) == [(0, 60)]
    assert due_windows(60, 60, 239.0, 60, final=False) == [(60, 120)]
    # At quiescence: every whole window that ended, then one to just after now.
    assert due_windows(60, 60, 250.5, 60, final=True) == [(60, 120), (120, 180), (180, 240),
                                                           (240, 251)]  # fmt: skip
    assert due_windows(251, 60, 300.0, 60, final=True) == [(251, 300), (300, 301)]
    assert due_windows(301, 60, 300.0, 60, final=True) == []


def scenario(**reconciliation: object) -> dict[str, object]:
    return {
        "name": "recon",
        "psp_faults": {"settlement": {"late_row_rate": 0.1, "late_by_s": 150}},
        "reconciliation": reconciliation,
    }


def test_the_reconciliation_section_is_checked_before_anything_runs() -> None:
    assert parse_scenario(scenario(interval_s=60, delay_s=60, lateness_s=20)).reconciliation
    assert parse_scenario({"name": "off"}).reconciliation is None
    refusals = {
        "late_by_s: at least": scenario(interval_s=60, delay_s=60, lateness_s=60),
        "delay_s must be at least lateness_s": scenario(interval_s=60, delay_s=10, lateness_s=20),
        "interval_s is at least 60": scenario(interval_s=30, delay_s=30, lateness_s=0),
        "whole seconds": scenario(interval_s=60.5),
        "reconciliation.bogus: unknown field": scenario(bogus=1),
    }
    for message, data in refusals.items():
        with pytest.raises(ScenarioError, match=message):
            parse_scenario(data, "recon.yaml")
