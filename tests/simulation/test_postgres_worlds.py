"""Scenarios on PostgreSQL: the engine's production database under the same chaos.

A world's engine database is in memory by default; ``--db-url`` gives each world
a database of its own on a PostgreSQL server, created for the run and dropped
after it. The checks are the same, and so is what must hold; the engine behaves
alike on both, so one seed gives one report on either.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from engine.entrypoints.cli import app
from scenarios.runner import run_scenario
from scenarios.schema import library_paths, load_scenario

LIBRARY = {path.stem: path for path in library_paths()}


def _world_databases(url: str) -> set[str]:
    server = sa.create_engine(url, poolclass=sa.NullPool)
    with server.connect() as connection:
        names = connection.exec_driver_sql(
            "SELECT datname FROM pg_database WHERE datname LIKE 'paychaos_world_%%'"
        ).scalars()
        found = set(names)
    server.dispose()
    return found


@pytest.mark.postgres
@pytest.mark.parametrize(
    "name",
    [
        "dispute-storm",  # disputes won and lost, on refunded charges too, under webhook chaos
        "crash-recovery",  # commits that fail and an engine that crashes mid-step
    ],
)
def test_a_scenario_holds_every_invariant_on_postgresql(name: str, postgres_url: str) -> None:
    before = _world_databases(postgres_url)
    scenario = load_scenario(LIBRARY[name])
    result = run_scenario(scenario, database_url=postgres_url)
    assert result.ok, [(inv.id, inv.violations[:3]) for inv in result.violated] + result.problems
    assert result.report["payments"] > 100
    assert _world_databases(postgres_url) <= before  # its world's database is dropped
    # The engine behaves alike on both databases: one seed, one report.
    in_memory = run_scenario(scenario)
    assert json.dumps(result.report, sort_keys=True, default=str) == json.dumps(
        in_memory.report, sort_keys=True, default=str
    )


@pytest.mark.postgres
def test_run_with_a_database_url_shards_onto_databases_of_their_own(postgres_url: str) -> None:
    before = _world_databases(postgres_url)
    outcome = CliRunner().invoke(
        app, ["run", "happy-path", "--duration", "60s", "--jobs", "2", "--db-url", postgres_url,
              "--quiet"],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    assert "1 of 1 scenario runs passed" in outcome.output
    assert _world_databases(postgres_url) <= before


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite://", "is not a PostgreSQL URL"),
        ("postgresql://postgres@127.0.0.1:1/nothing", "cannot reach the server"),
    ],
)
def test_a_bad_database_url_is_refused_naming_the_option(url: str, says: str) -> None:
    outcome = CliRunner().invoke(app, ["run", "happy-path", "--db-url", url])
    assert outcome.exit_code == 2
    assert "--db-url" in outcome.output and says in outcome.output
    assert "Traceback" not in outcome.output
