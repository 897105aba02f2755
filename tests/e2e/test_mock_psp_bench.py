"""``paychaos bench psp --small`` runs end to end and prints its table (no speed asserted)."""

from __future__ import annotations

from typer.testing import CliRunner

from engine.entrypoints.cli import app


def test_bench_psp_small_prints_a_table_with_every_target() -> None:
    result = CliRunner().invoke(app, ["bench", "psp", "--small"])
    assert result.exit_code == 0, result.output
    output = result.output
    assert "bench psp" in output
    for target in ("mock PSP, faults off", "mock PSP, moderate faults", "trivial FastAPI"):
        assert target in output
    assert "localstripe" in output
    assert "req/s" in output and "p99 ms" in output
    assert "goal >= 0.5x trivial FastAPI endpoint" in output
