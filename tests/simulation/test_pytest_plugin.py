"""The pytest plugin: a team's own scenario tests, and what they say when one fails."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from engine.adapters.store import Row, Store
from engine.service.engine import PaymentEngine
from scenarios.runner import run_scenario
from scenarios.schema import load_scenario

if TYPE_CHECKING:  # imported by pytest as a plugin first: importing it here would beat that
    from scenarios.pytest_plugin import PaychaosRunner

pytest_plugins = ["scenarios.pytest_plugin", "pytester"]


def replayed_file(command: str | None) -> Path:
    assert command is not None and command.startswith("paychaos run ")
    return Path(shlex.split(command)[2])


def test_a_shipped_scenario_runs_by_name_and_its_invariants_hold(
    paychaos_run: PaychaosRunner,
) -> None:
    result = paychaos_run("happy-path", seed=2, duration="60s")
    paychaos_run.assert_ok(result)
    assert result.scenario.duration_s == 60.0
    assert result.seed == 2
    replay = replayed_file(paychaos_run.replay_command(result))
    assert load_scenario(replay) == result.scenario


def test_a_scenario_written_inline_runs_and_can_be_replayed_from_its_file(
    paychaos_run: PaychaosRunner,
) -> None:
    result = paychaos_run(
        {
            "name": "duplicates-only",
            "duration_s": 60,
            "psp_faults": {"webhooks": {"duplicate_rate": 0.5}},
        },
        seed=4,
    )
    paychaos_run.assert_ok(result)
    assert result.report["faults_fired"]["webhook.duplicate"] > 0
    replay = replayed_file(paychaos_run.replay_command(result))
    assert run_scenario(load_scenario(replay), 4).report == result.report


def test_a_failing_run_names_the_invariant_the_problems_and_the_replay_command(
    paychaos_run: PaychaosRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PaymentEngine, "_replay", lambda self, command, key: None)
    insert = Store.insert_idempotency_key

    def insert_unmatched(self: Store, row: Row) -> None:
        insert(self, {**row, "key": f"{row['key']}#{row['id']}"})

    monkeypatch.setattr(Store, "insert_idempotency_key", insert_unmatched)
    result = paychaos_run("double-click", seed=1, duration="2m")
    with pytest.raises(pytest.fail.Exception) as failed:
        paychaos_run.assert_ok(result)
    message = str(failed.value)
    assert "I6 idempotency violated" in message
    assert "replay of" in message  # an example violation, with its payment
    assert "coverage and expectations not met" in message
    assert f"replay: paychaos run {paychaos_run.replay_command(result)[13:]}" in message  # type: ignore[index]
    assert "--duration" not in message  # the written file already holds the duration
    replay = replayed_file(paychaos_run.replay_command(result))
    assert not run_scenario(load_scenario(replay), 1).ok


def test_a_team_enables_it_from_its_conftest(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["scenarios.pytest_plugin"]\n')
    pytester.makepyfile(
        """
        def test_happy_path_holds(paychaos_run):
            result = paychaos_run("happy-path", seed=1, duration="30s")
            paychaos_run.assert_ok(result)
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
