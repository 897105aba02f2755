"""Coverage is judged where it means something: a run whose declared fault never
fired is inconclusive (exit 3), not failed; a sweep fails on coverage only when a
declared fault fired in none of its seeds."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import yaml
from typer.testing import CliRunner

from engine.entrypoints.cli import app
from scenarios.runner import INCONCLUSIVE, run_scenario
from scenarios.schema import parse_scenario

pytest_plugins = ["pytester"]
runner = CliRunner()

# The provider answers 500 to everything, but only in a window after the run ends:
# the declared fault cannot fire.
CANNOT_FIRE: dict[str, Any] = {
    "name": "cannot-fire",
    "duration_s": 30,
    "workload": {"arrivals": {"rate_per_s": 0.2}},
    "psp_faults": {
        "api_rules": [{"windows": [{"start_s": 9000, "end_s": 9001}], "error_500_rate": 1.0}]
    },
}
# About one crash a minute for a minute: some seeds crash, others do not.
SOMETIMES_FIRES: dict[str, Any] = {
    "name": "sometimes-fires",
    "duration_s": 60,
    "workload": {"arrivals": {"rate_per_s": 0.2}},
    "engine_faults": {"crash_rate_per_hour": 40, "restart_after_s": 5},
}


def scenario_file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(f"# {data['name']}: a test scenario.\n" + yaml.safe_dump(data))
    return path


def test_a_run_whose_declared_fault_cannot_fire_is_inconclusive_not_failed() -> None:
    result = run_scenario(parse_scenario(CANNOT_FIRE, "<test>"))
    assert result.status == INCONCLUSIVE and not result.ok
    assert result.problems == [] and result.violated == []
    assert result.unfired == ["api.http_500"]
    assert result.report["status"] == "inconclusive"
    assert result.report["inconclusive"] == [
        "declared fault api.http_500 never fired: this run proves nothing about it"
    ]


def test_the_cli_exits_3_on_an_inconclusive_run_and_every_output_says_so(
    tmp_path: Path,
) -> None:
    files = {name: tmp_path / name for name in ("r.json", "j.xml", "r.html")}
    result = runner.invoke(
        app,
        [
            "run", str(scenario_file(tmp_path, CANNOT_FIRE)), "--quiet",
            "--report-json", str(files["r.json"]), "--junit", str(files["j.xml"]),
            "--report-html", str(files["r.html"]),
        ],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    flat = " ".join(result.output.split())
    assert "INCONCLUSIVE: 0 of 1 scenario runs passed, 1 inconclusive, 0 failed" in flat
    assert "declared fault api.http_500 never fired: this run proves nothing about it" in flat
    document = json.loads(files["r.json"].read_text())
    assert document["status"] == "inconclusive" and document["ok"] is False
    assert document["runs"][0]["status"] == "inconclusive"
    assert document["runs"][0]["faults_unfired"] == ["api.http_500"]
    suite = ET.parse(files["j.xml"]).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("failures") == "0" and suite.get("skipped") == "1"
    assert suite.find("testcase/failure") is None
    skipped = suite.find("testcase[@name='expectations']/skipped")
    assert skipped is not None and "api.http_500 never fired" in skipped.get("message", "")
    page = files["r.html"].read_text()
    assert "paychaos report: INCONCLUSIVE" in page and "FAIL<" not in page


def sweep(path: Path, seeds: str) -> tuple[int, str]:
    result = runner.invoke(app, ["sweep", str(path), "--seeds", seeds, "--jobs", "2"])
    return result.exit_code, result.output


def test_a_sweep_passes_when_each_fault_fired_in_some_seed_and_lists_the_others(
    tmp_path: Path,
) -> None:
    code, output = sweep(scenario_file(tmp_path, SOMETIMES_FIRES), "1-8")
    assert code == 0, output
    flat = " ".join(output.split())  # the console wraps long lines
    summary = re.search(r"(\d+) of 8 seeds passed, (\d+) inconclusive, 0 failed", flat)
    assert summary is not None, output
    assert int(summary[1]) > 0 and int(summary[2]) > 0
    listed = re.search(r"engine\.crash never fired in (\d+) seed\(s\), .*?: seeds ([\d, ]+)", flat)
    assert listed is not None, output
    assert int(listed[1]) == int(summary[2]) == len(listed[2].strip(" ,").split(","))


def test_a_sweep_fails_when_a_declared_fault_fired_in_none_of_its_seeds(tmp_path: Path) -> None:
    code, output = sweep(scenario_file(tmp_path, CANNOT_FIRE), "1-3")
    assert code == 1, output
    flat = " ".join(output.split())
    assert "declared fault api.http_500 fired in none of the 3 seeds" in flat
    assert "0 of 3 seeds passed, 3 inconclusive, 0 failed" in flat


def test_the_pytest_plugin_skips_an_inconclusive_scenario_with_the_reason(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest('pytest_plugins = ["scenarios.pytest_plugin"]\n')
    pytester.makepyfile(
        f"""
        def test_cannot_fire(paychaos_run):
            paychaos_run.assert_ok(paychaos_run({CANNOT_FIRE!r}, seed=1))
        """
    )
    outcome = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    outcome.assert_outcomes(skipped=1)
    outcome.stdout.fnmatch_lines(["*inconclusive: declared fault api.http_500 never fired*"])
