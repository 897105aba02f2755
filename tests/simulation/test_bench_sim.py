"""``paychaos bench sim --small`` runs end to end and prints its tables.

Only the shape of the output is checked: speeds belong to the benchmark's
table, never to a test's assertions.
"""

from __future__ import annotations

from typer.testing import CliRunner

from engine.entrypoints.cli import app

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
