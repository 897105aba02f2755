"""``paychaos bench engine --small`` runs end to end and prints its table.

Only the shape of the output is checked: speeds belong to the benchmark's
table, never to a test's assertions.
"""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from engine.entrypoints.cli import app

COLUMNS = ("database", "lifecycles", "engine lifecycles/s", "engine steps/s", "raw tx/s",
           "ratio engine/raw", "goal", "met",
           "webhooks taken", "applied/s", "duplicates/s", "ratio applied/raw")  # fmt: skip


def bench(*args: str) -> str:
    result = CliRunner().invoke(app, ["bench", "engine", "--small", *args])
    assert result.exit_code == 0, result.output
    for column in COLUMNS:
        assert column in result.output, result.output
    return result.output


def test_bench_engine_small_prints_a_ratio_for_both_sqlite_databases() -> None:
    output = bench()
    assert "sqlite (memory)" in output
    assert "sqlite (file, WAL)" in output
    assert ">= 0.5" in output


@pytest.mark.postgres
def test_bench_engine_small_measures_postgres_in_a_database_it_drops(postgres_url: str) -> None:
    server = sa.make_url(postgres_url)
    output = bench("--db-url", postgres_url)
    assert f"postgresql ({server.host}:{server.port or 5432})" in output
    admin = sa.create_engine(server, poolclass=sa.NullPool)
    with admin.connect() as connection:
        leftovers = connection.execute(
            sa.text("SELECT datname FROM pg_database WHERE datname = :name"),
            {"name": f"paychaos_bench_{os.getpid()}"},  # the CLI ran in this process
        ).all()
    admin.dispose()
    assert leftovers == []


def test_bench_engine_refuses_a_url_that_is_not_postgres() -> None:
    result = CliRunner().invoke(app, ["bench", "engine", "--small", "--db-url", "mysql://x/y"])
    assert result.exit_code == 2
    assert "--db-url" in result.output
    assert "Traceback" not in result.output
