"""``paychaos hunt``: a planted defect is found, shrunk and written; a sound engine: nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.adapters.store import Row, Store
from engine.entrypoints.cli import app
from engine.service.engine import PaymentEngine
from scenarios.hunt import hunt
from scenarios.runner import run_scenario
from scenarios.schema import load_scenario

runner = CliRunner()


def ignore_idempotency_keys(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(PaymentEngine, "_replay", lambda self, command, key: None)
    insert = Store.insert_idempotency_key

    def insert_unmatched(self: Store, row: Row) -> None:
        insert(self, {**row, "key": f"{row['key']}#{row['id']}"})

    mp.setattr(Store, "insert_idempotency_key", insert_unmatched)


def test_hunt_finds_a_planted_defect_and_writes_a_minimal_scenario_that_fails_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ignore_idempotency_keys(monkeypatch)
    monkeypatch.chdir(tmp_path)  # to see that no example database is left behind
    out = tmp_path / "found"
    result = runner.invoke(
        app, ["hunt", "--examples", "10", "--seed", "3", "--duration", "2m", "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "I6 idempotency" in result.output
    [written] = sorted(out.glob("*.yaml"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["found"]
    assert f"paychaos run {written}" in result.output.replace("\n", "")
    scenario = load_scenario(written)
    # Shrunk: the shortest duration, no provider or engine faults; only what I6 needs.
    assert scenario.duration_s == 30.0
    assert not scenario.engine_faults.crashes and not scenario.engine_faults.db_outages
    assert scenario.fault_plan().api_rules == []
    clients = scenario.clients  # replays right after, at another body, or at quiescence
    assert (
        clients.replay_rate > 0
        or clients.conflicting_replay_rate > 0
        or clients.quiescence_replays > 0
    )
    # The file replays the failure, with the defect, through the CLI ...
    replayed = runner.invoke(app, ["run", str(written), "--quiet"])
    assert replayed.exit_code == 1, replayed.output
    monkeypatch.undo()
    # ... and passes once the defect is gone.
    assert run_scenario(scenario).ok


def test_hunt_reports_nothing_on_the_sound_engine_and_writes_nothing(tmp_path: Path) -> None:
    result = hunt(examples=4, seed=1, duration_max_s=60.0, out_dir=tmp_path)
    assert not result.found, result.reasons
    assert result.runs == 4
    assert list(tmp_path.iterdir()) == []


def test_hunt_is_deterministic_given_its_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ignore_idempotency_keys(monkeypatch)
    first = hunt(examples=3, seed=5, duration_max_s=60.0, out_dir=tmp_path / "first")
    second = hunt(examples=3, seed=5, duration_max_s=60.0, out_dir=tmp_path / "second")
    assert first.found and first.path is not None and second.path is not None
    assert first.path.read_text().replace("first", "second") == second.path.read_text()
    assert first.runs == second.runs


def test_hunt_refuses_bad_options_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["hunt", "--duration", "soon", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--duration" in result.output and "Traceback" not in result.output
