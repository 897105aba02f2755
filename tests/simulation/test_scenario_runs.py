"""Scenario files, runs and their determinism, through the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.entrypoints.cli import app
from scenarios.runner import declared_faults, run_scenario
from scenarios.schema import ScenarioError, library_paths, load_scenario, parse_scenario

LIBRARY = {path.stem: path for path in library_paths()}
runner = CliRunner()


def short(name: str, duration_s: float = 120.0):  # type: ignore[no-untyped-def]
    return load_scenario(LIBRARY[name]).model_copy(update={"duration_s": duration_s})


def test_the_shipped_library_has_every_scenario_the_product_promises() -> None:
    assert set(LIBRARY) >= {
        "happy-path", "webhook-storm", "psp-timeouts", "psp-outage", "crash-recovery",
        "double-click", "refund-race", "3ds-abandonment", "black-friday", "forged-webhooks",
        "kitchen-sink",
    }  # fmt: skip


@pytest.mark.parametrize("path", sorted(LIBRARY.values()), ids=sorted(LIBRARY))
def test_every_shipped_scenario_is_valid_and_says_what_it_shows(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert path.read_text().startswith(f"# {path.stem}:"), "a comment says what it shows"
    if scenario.name != "happy-path":
        assert declared_faults(scenario) or scenario.clients.new_key_resubmit_rate > 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nduration_s: soon\n", "duration_s"),
        ("name: x\nworkload: {arrivals: {rate_per_s: -1}}\n", "workload.arrivals.rate_per_s"),
        ("name: x\nworkload: {currencies: {XXX: 1}}\n", "unknown ISO 4217 currencies: XXX"),
        ("name: x\nsurprise: 1\n", "surprise: unknown field"),
        ("name: x\npsp_faults: {webhooks: {duplicate_rate: 2}}\n", "psp_faults.webhooks"),
        ("name: x\nworkload: [\n", "not valid YAML at line"),
        ("- just\n- a list\n", "expected a mapping"),
        ("description: no name\n", "name: required field is missing"),
    ],
)
def test_a_bad_scenario_file_is_refused_naming_the_file_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_the_cli_exits_2_on_a_bad_file_and_runs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nduration_s: -5\n")
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["run", str(path), "--report-json", str(report)])
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "duration_s" in result.output
    assert "Traceback" not in result.output
    assert not report.exists()


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read" in result.output


def test_a_healthy_run_holds_every_invariant_and_reaches_quiescence() -> None:
    result = run_scenario(short("happy-path"))
    assert result.ok, (result.problems, [inv.to_json() for inv in result.violated])
    assert result.report["payments"] > 20
    assert result.report["quiescent_at_s"] >= 120
    assert all(inv.checked > 0 for inv in result.invariants if inv.applicable)


def test_a_chaos_run_in_which_no_declared_fault_fired_is_not_a_pass() -> None:
    scenario = parse_scenario(
        {
            "name": "quiet-chaos",
            "duration_s": 30,
            "workload": {"arrivals": {"rate_per_s": 0.2}},
            "psp_faults": {"api_rules": [{"windows": [{"start_s": 9000, "end_s": 9001}],
                                          "error_500_rate": 1.0}]},
        }
    )  # fmt: skip
    result = run_scenario(scenario)
    assert not result.ok and result.status == "inconclusive"
    assert any("api.http_500 never fired" in reason for reason in result.inconclusive)


def test_the_cli_writes_json_junit_and_trace_and_exits_0(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("r.json", "j.xml", "t.jsonl")}
    result = runner.invoke(
        app,
        [
            "run", str(LIBRARY["forged-webhooks"]), "--duration", "2m", "--quiet",
            "--report-json", str(files["r.json"]), "--junit", str(files["j.xml"]),
            "--trace", str(files["t.jsonl"]),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(files["r.json"].read_text())
    assert document["ok"] is True
    assert document["runs"][0]["faults_fired"]["webhook.forged"] > 0
    assert "<testsuites" in files["j.xml"].read_text()
    first = json.loads(files["t.jsonl"].read_text().splitlines()[0])
    assert {"scenario", "seed", "t", "what"} <= set(first)


def test_kitchen_sink_gives_a_byte_identical_report_and_trace_for_one_seed(tmp_path: Path) -> None:
    outputs = []
    for attempt in ("a", "b"):
        report, trace = tmp_path / f"{attempt}.json", tmp_path / f"{attempt}.jsonl"
        result = runner.invoke(
            app,
            [
                "run", str(LIBRARY["kitchen-sink"]), "--duration", "10m", "--seed", "5",
                "--quiet", "--report-json", str(report), "--trace", str(trace),
            ],
        )  # fmt: skip
        assert result.exit_code in {0, 1, 3}, result.output
        lines = [line for line in report.read_text().splitlines() if "wall_time_s" not in line]
        outputs.append(("\n".join(lines), trace.read_bytes()))
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1] == outputs[1][1]
    assert len(outputs[0][1]) > 10_000


def test_another_seed_gives_another_run() -> None:
    first = run_scenario(short("happy-path", 60.0), seed=1).report
    second = run_scenario(short("happy-path", 60.0), seed=2).report
    assert (
        first["payments_by_state"] != second["payments_by_state"]
        or first["samples"] != second["samples"]
    )


def test_sweep_lists_no_failing_seed_for_a_healthy_scenario(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["sweep", str(LIBRARY["happy-path"]), "--seeds", "1-3", "--jobs", "2",
              "--duration", "1m"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 of 3 seeds passed, 0 inconclusive, 0 failed" in result.output


@pytest.mark.parametrize("seeds", ["", "5-1", "a-b", "1-999999"])
def test_sweep_refuses_bad_seed_ranges(seeds: str) -> None:
    result = runner.invoke(app, ["sweep", str(LIBRARY["happy-path"]), "--seeds", seeds])
    assert result.exit_code == 2
    assert "--seeds" in result.output


def test_a_shipped_scenario_is_found_by_its_name_and_an_unknown_name_is_a_clear_error() -> None:
    assert load_scenario("webhook-storm") == load_scenario(LIBRARY["webhook-storm"])
    with pytest.raises(ScenarioError, match="no-such-scenario: cannot read the file"):
        load_scenario("no-such-scenario")
