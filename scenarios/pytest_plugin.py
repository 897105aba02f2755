"""Scenario tests in pytest: fixtures and an assertion that reads well when it fails.

Enable it in the ``conftest.py`` at the root of your tests::

    pytest_plugins = ["scenarios.pytest_plugin"]

then write tests such as::

    def test_refunds_survive_a_webhook_storm(paychaos_run):
        result = paychaos_run("webhook-storm", seed=7, duration="5m")
        paychaos_run.assert_ok(result)

    def test_my_own_mix(paychaos_run):
        faults = {"webhooks": {"duplicate_rate": 0.3}}
        result = paychaos_run({"name": "my-mix", "duration_s": 120, "psp_faults": faults}, seed=3)
        assert not result.violated

A scenario is a shipped name (``"webhook-storm"``), a path to a YAML file, a
mapping with the file's fields, or a ``Scenario``. ``seed`` and ``duration``
override the scenario's; other keyword arguments replace top-level fields.
Every run's effective scenario is written under the test's ``tmp_path``, so a
failure names the exact ``paychaos run`` command that replays it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from scenarios.runner import FAILED, INCONCLUSIVE, RunResult, run_scenario
from scenarios.schema import (
    LIBRARY,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_duration_s,
    parse_scenario,
)

VIOLATIONS_SHOWN_MAX = 5

ScenarioSource = str | Path | Mapping[str, Any] | Scenario


def resolve_scenario(source: ScenarioSource) -> tuple[Scenario, Path | None]:
    """The scenario, and the file it came from (if it did)."""
    if isinstance(source, Scenario):
        return source, None
    if isinstance(source, Mapping):
        return parse_scenario(dict(source), "<scenario mapping>"), None
    path = Path(source)
    if not path.suffix and not path.exists():
        shipped = LIBRARY / f"{path.name}.yaml"
        if not shipped.exists():
            raise ScenarioError(f"{source}: no such file and no shipped scenario of that name")
        path = shipped
    return load_scenario(path), path


def failure_message(result: RunResult, replay: str | None = None) -> str:
    """What broke, in words: violated invariants with examples, unmet expectations, replay."""
    lines = [f"scenario {result.scenario.name!r} with seed {result.seed} failed"]
    for inv in result.violated:
        lines.append(f"  {inv.id} {inv.name} violated {len(inv.violations)} time(s):")
        for violation in inv.violations[:VIOLATIONS_SHOWN_MAX]:
            lines.append(f"    - {violation['subject']}: {violation['detail']}")
        if len(inv.violations) > VIOLATIONS_SHOWN_MAX:
            lines.append(f"    ... and {len(inv.violations) - VIOLATIONS_SHOWN_MAX} more")
    if result.problems:
        lines.append("  coverage and expectations not met:")
        lines.extend(f"    - {problem}" for problem in result.problems)
    if result.inconclusive:
        lines.append("  inconclusive:")
        lines.extend(f"    - {reason}" for reason in result.inconclusive)
    lines.append(f"  replay: {_replay(result, replay)}")
    return "\n".join(lines)


def inconclusive_message(result: RunResult, replay: str | None = None) -> str:
    """Why a run in which nothing failed still proves less than it should."""
    reasons = "; ".join(result.inconclusive)
    return (
        f"scenario {result.scenario.name!r} with seed {result.seed} is inconclusive: {reasons}"
        f" (replay: {_replay(result, replay)})"
    )


def _replay(result: RunResult, replay: str | None) -> str:
    return replay or f"paychaos run <{result.scenario.name}.yaml> --seed {result.seed}"


def assert_invariants_hold(result: RunResult, replay: str | None = None) -> None:
    """Fail the test, readably, if an invariant was violated or an expectation not met;
    skip it, with the reason, if the run is inconclusive (a declared fault never fired)."""
    if result.status == FAILED:
        pytest.fail(failure_message(result, replay), pytrace=False)
    if result.status == INCONCLUSIVE:
        pytest.skip(inconclusive_message(result, replay))


class PaychaosRunner:
    """Runs scenarios for one test and remembers how to replay each run."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.results: list[RunResult] = []
        self._replays: dict[int, str] = {}

    def __call__(
        self,
        scenario: ScenarioSource,
        seed: int | None = None,
        *,
        duration: str | float | None = None,
        **fields: Any,
    ) -> RunResult:
        loaded, path = resolve_scenario(scenario)
        if duration is not None:
            fields["duration_s"] = parse_duration_s(duration)
        if fields:
            data = {**loaded.model_dump(mode="json"), **fields}
            loaded, path = parse_scenario(data, "<scenario with overrides>"), None
        if path is None:
            path = self._write(loaded)
        result = run_scenario(loaded, seed)
        self.results.append(result)
        self._replays[id(result)] = f"paychaos run {path} --seed {result.seed}"
        return result

    def _write(self, scenario: Scenario) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{scenario.name}-{len(self.results) + 1}.yaml"
        text = yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False)
        path.write_text(f"# {scenario.name}: written by the paychaos pytest plugin\n" + text)
        return path

    def replay_command(self, result: RunResult) -> str | None:
        return self._replays.get(id(result))

    def assert_ok(self, result: RunResult) -> None:
        assert_invariants_hold(result, self.replay_command(result))


@pytest.fixture
def paychaos_run(tmp_path: Path) -> PaychaosRunner:
    """Run a scenario (a shipped name, a file, a mapping or a Scenario) with a seed."""
    return PaychaosRunner(tmp_path / "paychaos-scenarios")
