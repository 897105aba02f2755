"""``paychaos bench sim --small`` runs end to end and prints its tables.

Only the shape of the output is checked: speeds belong to the benchmark's
table, never to a test's assertions.
"""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from engine.entrypoints.cli import app
from loadtests.bench_sim import DaySlice, day_scenario, day_table
from scenarios.clients import expected_payments
from scenarios.shards import shard_count

SPEED_COLUMNS = ("scenario", "payments / wall s", "sim s / wall s", "simpy events/s",
                 "sqlite tx/s", "events / payment", "tx / payment")  # fmt: skip


def test_bench_sim_small_prints_speeds_next_to_simpy_and_sqlite_and_the_day() -> None:
    result = CliRunner().invoke(app, ["bench", "sim", "--small"])
    assert result.exit_code == 0, result.output
    for column in SPEED_COLUMNS:
        assert column in result.output, result.output
    assert "kitchen-sink" in result.output and "happy-path" in result.output
    assert "1,000,000 payments/day" in result.output
    assert "measured" in result.output and "projected" in result.output


def _rendered(day: DaySlice) -> str:
    console = Console(width=200, record=True)
    console.print(day_table(day))
    return console.export_text()


def test_the_day_table_projects_a_slice_and_measures_a_whole_day() -> None:
    hour = _rendered(DaySlice(3_600.0, 41_000, 60.0, True, 500.0, 100.0))
    assert "a slice of the day" in hour and "projected: slice x day/slice" in hour
    assert "1,440" in hour  # 60 s x 24
    assert "met (projected)" in hour and "not met" not in hour
    day = _rendered(DaySlice(86_400.0, 999_000, 1_900.0, True, 4_000.0, 100.0))
    assert "the whole day, all checks" in day and "projected" not in day
    assert "not met (measured)" in day
    failed = _rendered(DaySlice(86_400.0, 999_000, 1_500.0, False, 4_000.0, 100.0))
    assert "checks FAILED" in failed and "not met (measured)" in failed


def test_the_shipped_day_is_a_million_payments_as_eight_worlds() -> None:
    day = day_scenario(86_400.0)
    assert day.duration_s == 86_400.0
    assert day.workload.arrivals.rate_per_s * day.duration_s == pytest.approx(1_000_000)
    assert expected_payments(day.workload, day.duration_s) == pytest.approx(1_000_000)
    assert shard_count(day, 2) == 8
