"""The reconciliation worker's schedule (the simulation's too) and the scenario section:
pure, no world."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.workers.reconciliation import ReconciliationWorker, ReportSource
from scenarios.schema import ScenarioError, parse_scenario

ORIGIN = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Clock:
    now_s: float = 0.0

    def now(self) -> datetime:
        return ORIGIN + timedelta(seconds=self.now_s)


@dataclass
class Summary:
    matched_count: int = 0
    settled_count: int = 0
    new_count: int = 0


@dataclass
class Reconciler:
    """What the worker asks of a reconciler: its clock, where it stopped, a run."""

    clock: Clock = field(default_factory=Clock)
    windows: list[tuple[float, float]] = field(default_factory=list)

    def last_window_end(self, source: str) -> datetime | None:
        return None

    def run(self, document: Any, source: str, start_at: datetime, end_at: datetime,
            tolerances: Any) -> Summary:  # fmt: skip
        self.windows.append(((start_at - ORIGIN).total_seconds(),
                             (end_at - ORIGIN).total_seconds()))  # fmt: skip
        return Summary()


class NoReport(ReportSource):
    def fetch(self, start_s: int, end_s: int) -> Mapping[str, Any]:
        return {"object": "settlement_report", "data": []}


def windows_at(worker: ReconciliationWorker, now_s: float, *, closing: bool = False) -> list[
        tuple[float, float]]:  # fmt: skip
    reconciler: Any = worker.reconciler
    reconciler.clock.now_s, reconciler.windows = now_s, []
    worker.run_once(closing=closing)
    return list(reconciler.windows)


def test_a_window_waits_for_its_delay_and_a_closing_pass_runs_the_rest_up_to_now() -> None:
    """The world's schedule, as production's worker keeps it: windows from the run's
    origin, each once its delay has passed; at quiescence every whole window that
    ended, then one to just after now."""
    reconciler: Any = Reconciler()
    worker = ReconciliationWorker(reconciler, NoReport(), interval_s=60, delay_s=60,
                                  lateness_s=20, origin=ORIGIN, first_start_at=ORIGIN)  # fmt: skip
    assert windows_at(worker, 119.9) == []
    assert windows_at(worker, 120.0) == [(0, 60)]
    assert windows_at(worker, 239.0) == [(60, 120)]
    assert windows_at(worker, 250.5, closing=True) == [(120, 180), (180, 240), (240, 251)]
    assert windows_at(worker, 300.0, closing=True) == [(251, 300), (300, 301)]
    assert windows_at(worker, 300.0, closing=True) == []


def test_without_an_origin_the_worker_starts_at_the_last_window_due() -> None:
    """What ``paychaos serve worker`` does: not the whole past, and windows from the epoch."""
    reconciler: Any = Reconciler()
    worker = ReconciliationWorker(reconciler, NoReport(), interval_s=3_600, delay_s=3_600)
    assert windows_at(worker, 3 * 86_400 + 1_800.0) == [(86_400 * 3 - 7_200, 86_400 * 3 - 3_600)]


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
