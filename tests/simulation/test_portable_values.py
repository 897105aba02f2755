"""Every string a run stores fits its column, as PostgreSQL would insist.

Scenarios run on SQLite, which does not enforce a ``VARCHAR``'s length; PostgreSQL
refuses a longer value, and the step that wrote it fails on every try. (A lost
dispute's webhook did: its outcome, ``applied_no_change``, is 17 characters and the
column was 16.) Here shipped scenarios that reach most of the engine's paths run,
and before their checks every string column of the world's database is measured.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database
from scenarios import runner
from scenarios.oracles import Invariant, run_oracles
from scenarios.schema import library_paths, load_scenario
from scenarios.world import World

LIBRARY = {path.stem: path for path in library_paths()}
# Disputes won and lost, settlement and reconciliation, payouts, crashes and the
# kitchen sink's every flow and fault.
SCENARIOS = ("dispute-storm", "settlement-mismatch", "payout-failure", "kitchen-sink")


def overlong(connection: sa.Connection) -> list[str]:
    """Each (table.column, its length, the longest value stored) that does not fit."""
    found = []
    for table in t.metadata.sorted_tables:
        for column in table.columns:
            length = getattr(column.type, "length", None)
            if not isinstance(column.type, sa.String) or length is None:
                continue
            longest = connection.execute(sa.select(sa.func.max(sa.func.length(column)))).scalar()
            if longest is not None and longest > length:
                value = connection.execute(
                    sa.select(column).where(sa.func.length(column) == longest).limit(1)
                ).scalar()
                found.append(f"{table.name}.{column.name} is {length} long, holds {value!r}")
    return found


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_stored_string_fits_its_column(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[list[str]] = []

    def measure_then_check(world: World) -> list[Invariant]:
        with world.db.engine.connect() as connection:
            measured.append(overlong(connection))
        return run_oracles(world)

    monkeypatch.setattr("scenarios.runner.run_oracles", measure_then_check)
    result = runner.run_scenario(load_scenario(LIBRARY[name]))
    assert result.ok, [inv.id for inv in result.violated] + result.problems
    assert measured == [[]]


def test_a_value_longer_than_its_column_is_found() -> None:
    database = Database("sqlite://", migrate=True)
    with database.engine.begin() as connection:
        connection.execute(t.provider_events.insert().values(
            id="pev_1", provider_event_id="evt_1", type="charge.dispute.closed", outcome="x" * 40,
            received_at=datetime(2026, 1, 1, tzinfo=UTC),
        ))  # fmt: skip
        assert overlong(connection) == [f"provider_events.outcome is 32 long, holds {'x' * 40!r}"]
    database.dispose()
