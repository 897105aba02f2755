"""``paychaos load``: engine and mock PSP on loopback, locust in distributed mode
(one master and two local worker processes), then the invariants."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner

from engine.entrypoints.cli import app


def test_a_short_distributed_load_run_keeps_every_invariant(tmp_path: Path) -> None:
    out = tmp_path / "load"
    result = CliRunner().invoke(
        app,
        ["load", "--users", "4", "--rate", "8", "--duration", "6", "--processes", "2",
         "--out", str(out), "--expect-rps", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "every invariant holds after the load" in result.output
    with (out / "locust_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Request Count"]) > 10
    assert int(rows["/v1/payments"]["Request Count"]) > 0
    assert (out / "locust.html").exists()
    assert "worker" in (out / "locust.log").read_text().lower()


def test_a_missed_target_is_a_non_zero_exit(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["load", "--users", "2", "--rate", "4", "--duration", "3", "--out", str(tmp_path),
         "--expect-rps", "100000"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "below --expect-rps" in result.output


def test_bad_load_options_are_refused() -> None:
    result = CliRunner().invoke(app, ["load", "--users", "0"])
    assert result.exit_code == 2 and "--users" in result.output
