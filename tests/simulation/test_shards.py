"""``paychaos run --jobs N``: sharded by merchant, merged into one deterministic report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.entrypoints.cli import app
from scenarios import memdb
from scenarios.clients import expected_payments
from scenarios.runner import run_scenario
from scenarios.schema import library_paths, load_scenario
from scenarios.shards import (
    Shard,
    check_jobs,
    merge_samples,
    run_sharded,
    shard_count,
    shard_scenario,
    shard_seed,
)

LIBRARY = {path.stem: path for path in library_paths()}
runner = CliRunner()


def run_cli(tmp_path: Path, name: str, *args: str) -> tuple[str, list[dict[str, object]]]:
    """The JSON report without its wall time, and the trace's events."""
    report, trace = tmp_path / f"{name}.json", tmp_path / f"{name}.jsonl"
    result = runner.invoke(
        app,
        ["run", *args, "--quiet", "--report-json", str(report), "--trace", str(trace)],
    )
    assert result.exit_code in {0, 1, 3}, result.output
    lines = [line for line in report.read_text().splitlines() if "wall_time_s" not in line]
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    return "\n".join(lines), events


def test_jobs_1_gives_exactly_the_unsharded_report_and_trace(tmp_path: Path) -> None:
    args = [str(LIBRARY["happy-path"]), "--duration", "2m", "--seed", "3"]
    plain = run_cli(tmp_path, "plain", *args)
    one_job = run_cli(tmp_path, "one", *args, "--jobs", "1")
    assert plain == one_job
    assert '"jobs"' not in plain[0]


def test_jobs_2_gives_a_byte_identical_merged_report_for_one_seed(tmp_path: Path) -> None:
    args = [str(LIBRARY["kitchen-sink"]), "--duration", "3m", "--seed", "5", "--jobs", "2"]
    first, first_events = run_cli(tmp_path, "a", *args)
    second, second_events = run_cli(tmp_path, "b", *args)
    assert first == second
    assert first_events == second_events
    run = _run_of(tmp_path / "a.json")
    assert run["jobs"] == 2
    assert [shard["index"] for shard in run["shards"]] == [0, 1]
    assert run["payments"] == sum(shard["payments"] for shard in run["shards"]) > 0
    assert all(inv["checked"] > 0 for inv in run["invariants"] if inv["applicable"])
    # Merchants are partitioned: shard k serves m_k, m_{k+2}, ...
    for event in first_events:
        key = event.get("key")
        if isinstance(key, str) and key.startswith("m_"):
            assert int(key[2:6]) % 2 == event["shard"], event


def _run_of(path: Path) -> dict[str, Any]:
    run: dict[str, Any] = json.loads(path.read_text())["runs"][0]
    return run


def test_a_shard_gets_its_share_of_the_workload_and_its_own_seed() -> None:
    scenario = load_scenario(LIBRARY["kitchen-sink"])
    shard = Shard(1, 3)
    mine = shard_scenario(scenario, shard)
    assert mine.workload.arrivals.rate_per_s == scenario.workload.arrivals.rate_per_s / 3
    assert mine.psp_faults["rate_limit"]["refill_per_s"] == 1.0
    assert shard.merchant_numbers(scenario.workload.merchants)[:3] == [1, 4, 7]
    seeds = {shard_seed(11, Shard(k, 3)) for k in range(3)}
    assert len(seeds) == 3 and shard_seed(11, shard) == shard_seed(11, Shard(1, 3))
    assert check_jobs(scenario, 21) is not None  # 20 merchants cannot make 21 shards
    assert check_jobs(scenario, 2) is None


def test_merged_samples_count_a_finished_shard_with_its_last_sample() -> None:
    early = [{"t": 0.0, "by_state": {"created": 1}, "unresolved": 1, "faults": 0},
             {"t": 10.0, "by_state": {"captured": 1}, "unresolved": 0, "faults": 2}]  # fmt: skip
    late = [{"t": 0.0, "by_state": {}, "unresolved": 0, "faults": 0},
            {"t": 10.0, "by_state": {"created": 2}, "unresolved": 2, "faults": 1},
            {"t": 20.0, "by_state": {"captured": 2}, "unresolved": 0, "faults": 3}]  # fmt: skip
    merged = merge_samples([early, late])
    assert [sample["t"] for sample in merged] == [0.0, 10.0, 20.0]
    assert merged[1] == {"t": 10.0, "by_state": {"captured": 1, "created": 2},
                         "unresolved": 2, "faults": 3}  # fmt: skip
    assert merged[2]["by_state"] == {"captured": 3}
    assert merged[2]["faults"] == 5


def test_a_merged_report_has_every_field_of_a_single_report() -> None:
    scenario = load_scenario(LIBRARY["happy-path"]).model_copy(update={"duration_s": 60.0})
    single = run_scenario(scenario).report
    merged = run_sharded(scenario, None, 2).report
    assert set(merged) == set(single) | {"jobs", "shards"}


def test_the_expected_payments_integrate_the_rate_with_its_spikes_up_to_the_cap() -> None:
    workload = load_scenario(LIBRARY["black-friday"]).workload
    spikes = workload.arrivals.spikes
    assert spikes, "black-friday has its spike"
    plain = workload.model_copy(update={"arrivals": workload.arrivals.model_copy(
        update={"spikes": []})})  # fmt: skip
    assert expected_payments(plain, 600.0) == pytest.approx(workload.arrivals.rate_per_s * 600)
    extra = (
        sum((s.multiplier - 1) * (min(s.end_s, 10_000.0) - s.start_s) for s in spikes)
        * workload.arrivals.rate_per_s
    )
    capped = workload.model_copy(update={"payments_max": 10**6})
    assert expected_payments(capped, 10_000.0) == pytest.approx(
        workload.arrivals.rate_per_s * 10_000.0 + extra
    )
    assert expected_payments(workload.model_copy(update={"payments_max": 7}), 10_000.0) == 7


def test_a_scenario_too_big_for_one_world_runs_as_more_shards_than_jobs() -> None:
    scenario = load_scenario(LIBRARY["happy-path"])
    assert shard_count(scenario, 1) == 1 and shard_count(scenario, 2) == 2
    arrivals = scenario.workload.arrivals.model_copy(update={"rate_per_s": 1_000_000 / 86_400})
    day = scenario.model_copy(update={
        "duration_s": 86_400.0,
        "workload": scenario.workload.model_copy(
            update={"arrivals": arrivals, "payments_max": 2_000_000}),
    })  # fmt: skip
    # A million payments: 125,000 a world at most, so 8 worlds, whatever the processes.
    assert shard_count(day, 1) == shard_count(day, 2) == 8
    assert shard_count(day, 12) == 12
    # Never more worlds than merchants: each world owns at least one.
    few = day.model_copy(update={"workload": day.workload.model_copy(update={"merchants": 3})})
    assert shard_count(few, 2) == 3


def test_a_world_whose_database_fills_up_stops_the_run_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full in-memory database is the harness's limit, not a database outage for the
    engine to ride out: the run stops and says what to do (exit 2, no traceback)."""
    monkeypatch.setattr(memdb, "SIZE_LIMIT_BYTES", 6 << 20)
    scenario = tmp_path / "busy.yaml"
    scenario.write_text(
        LIBRARY["happy-path"].read_text()
        .replace("arrivals: {rate_per_s: 0.5}", "arrivals: {rate_per_s: 20}")
        .replace("name: happy-path", "name: busy")
    )  # fmt: skip
    result = runner.invoke(app, ["run", str(scenario), "--duration", "10m", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "busy: this world's in-memory database is full after" in result.output
    assert "--jobs" in result.output
    assert "Traceback" not in result.output
