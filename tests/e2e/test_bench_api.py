"""``paychaos bench api --small`` runs end to end and its table holds real numbers.

No speed is asserted (performance claims live in the benchmark's own table): only
that calls were answered, the percentiles are numbers, and no invariant broke.
"""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from engine.entrypoints.cli import app


def table_rows(output: str) -> list[list[str]]:
    """The table's rows that carry numbers (a wrapped name continues on a line of its own)."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 12 and cells[3]:
            rows.append(cells)
    return rows


def assert_real_numbers(rows: list[list[str]], database: str) -> None:
    start = next(i for i, row in enumerate(rows) if row[0].startswith(database))
    saturation, offered = rows[start], rows[start + 1]
    assert saturation[1].startswith("saturation") and offered[1].endswith("offered")
    for row in (saturation, offered):
        assert int(row[2]) > 0  # 2xx calls
        assert float(row[3].replace(",", "")) > 0  # calls/s
        p50, p95, p99 = (float(cell) for cell in row[4:7])
        assert all(math.isfinite(p) and p > 0 for p in (p50, p95, p99))
        assert p50 <= p95 <= p99
    assert saturation[9] == "0"  # invariant violations


def test_bench_api_small_on_sqlite_answers_calls_and_keeps_every_invariant() -> None:
    result = CliRunner().invoke(app, ["bench", "api", "--small"])
    assert result.exit_code == 0, result.output
    assert "bench api" in result.output
    assert_real_numbers(table_rows(result.output), "sqlite")
    assert "every invariant holds after the load on sqlite (file, WAL)" in result.output
    assert "CPU at saturation" in result.output


@pytest.mark.postgres
def test_bench_api_small_on_postgresql_stands_next_to_pgbench(postgres_url: str) -> None:
    result = CliRunner().invoke(app, ["bench", "api", "--small", "--db-url", postgres_url])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert_real_numbers(rows, "sqlite")
    assert_real_numbers(rows, "postgresql")
    pgbench = next(row for row in rows if row[1] == "pgbench TPC-B")
    assert pgbench[3].endswith(" tps") or "pgbench not installed" in result.output
    assert "every invariant holds after the load on sqlite (file, WAL) and postgresql" in (
        result.output
    )


def test_a_database_url_that_is_not_postgresql_is_refused_naming_the_option() -> None:
    result = CliRunner().invoke(app, ["bench", "api", "--small", "--db-url", "sqlite:///x.db"])
    assert result.exit_code == 2
    assert "--db-url" in result.output and "not a PostgreSQL URL" in result.output
