"""``paychaos recon run|exceptions|resolve`` on a stored SQLite database.

Payments are made in the file database with the fake provider; reports are
written as the provider would (JSON with the mock PSP's columns, CSV by hand).
Exit codes: 0 clean, 1 exceptions found, 2 bad input with nothing written.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider, provider_fee_minor
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.cli import app
from engine.service.engine import PaymentEngine
from tests.integration.helpers import captured

AT = datetime(2026, 1, 3, 10, tzinfo=UTC)
WINDOW = ["--window-start", "2026-01-03T00:00:00Z", "--window-end", "2026-01-04T00:00:00Z"]


@pytest.fixture
def stored(tmp_path: Path) -> tuple[str, list[str]]:
    """A database with two captured payments; their provider ids."""
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    database = Database(url, migrate=True)
    engine = PaymentEngine(database, FixedClock(AT), SeededIds(random.Random(5)))
    provider = FakeProvider()
    ids = [captured(engine, provider, key=f"c-{n}", order_id=f"o-{n}") for n in range(2)]
    database.dispose()
    return url, [f"pi_{payment_id}" for payment_id in ids]


def json_report(path: Path, intents: list[str], gross_minor: int = 10_000) -> Path:
    created = int(AT.timestamp())
    rows = [
        {"balance_transaction_id": f"txn_{n}", "created": created, "available_on": created,
         "currency": "usd", "gross_minor": gross_minor, "fee_minor": provider_fee_minor(10_000),
         "net_minor": gross_minor - provider_fee_minor(10_000), "reporting_category": "charge",
         "source_id": f"ch_{n}", "payment_intent_id": intent}
        for n, intent in enumerate(intents)
    ]  # fmt: skip
    path.write_text(json.dumps({"object": "settlement_report", "data": rows}))
    return path


def recon(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["recon", *args])
    return result.exit_code, result.output


def count(url: str, table: sa.Table) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as c:
        found = int(c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    engine.dispose()
    return found


def test_a_clean_report_exits_0_and_settles(stored: tuple[str, list[str]], tmp_path: Path) -> None:
    url, intents = stored
    code, out = recon(
        "run", "--db", url, "--report", str(json_report(tmp_path / "r.json", intents))
    )
    assert code == 0, out
    assert re.search(r"matched\s+│?\s*2", out) and re.search(r"payments settled\s+│?\s*2", out)
    code, out = recon("exceptions", "--db", url)
    assert code == 0 and "reconciliation exceptions (0)" in out


def test_exceptions_exit_1_are_listed_and_resolved_once(
    stored: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, intents = stored
    report = json_report(tmp_path / "r.json", intents[:1], gross_minor=10_050)
    code, out = recon("run", "--db", url, "--report", str(report), *WINDOW)
    assert code == 1, out
    assert "amount_mismatch" in out and "missing_at_provider" in out
    code, out = recon("exceptions", "--db", url, "--category", "amount_mismatch")
    assert code == 0 and "(1)" in out and "100.50 USD" in out, out
    exception_id = re.search(r"rcx_[0-9a-f]{20}", out)
    assert exception_id is not None, out
    code, out = recon("resolve", exception_id.group(0), "--reason", "fee taken twice", "--db", url)
    assert code == 0 and "journal jnl_" in out and "reason: fee taken twice" in out, out
    code, out = recon("resolve", exception_id.group(0), "--reason", "again", "--db", url)
    assert code == 2 and "already resolved" not in out and "was resolved" in out, out
    code, out = recon("exceptions", "--db", url, "--all")
    assert "(2)" in out and "resolved" in out and "open" in out, out
    code, out = recon("exceptions", "--db", url, "--category", "lost")
    assert code == 2 and "category" in out


def test_a_malformed_report_exits_2_naming_line_and_column_and_writes_nothing(
    stored: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, intents = stored
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "balance_transaction_id,created_utc,available_on_utc,currency,gross,fee,net,"
        "reporting_category,payment_intent_id\n"
        f"txn_0,2026-01-03 10:00:00,2026-01-03 10:00:00,usd,100.00,3.20,96.80,charge,{intents[0]}\n"
        f"txn_1,2026-01-03 10:00:00,2026-01-03 10:00:00,usd,1OO.00,3.20,96.80,charge,{intents[1]}\n"
    )
    code, out = recon("run", "--db", url, "--report", str(bad), *WINDOW)
    assert code == 2 and "line 3, column gross" in out and "Traceback" not in out, out
    code, out = recon("run", "--db", url, "--report", str(tmp_path / "absent.csv"), *WINDOW)
    assert code == 2 and "--report" in out
    report = json_report(tmp_path / "r.json", intents)
    code, out = recon("run", "--db", url, "--report", str(report), "--window-start", "yesterday")
    assert code == 2 and "--window-start" in out
    for table in (t.recon_runs, t.recon_exceptions, t.settlement_rows):
        assert count(url, table) == 0
    code, out = recon("resolve", "rcx_nope", "--reason", "x", "--db", url)
    assert code == 2 and "no exception rcx_nope" in out


def test_window_defaults_to_the_report_rows(stored: tuple[str, list[str]], tmp_path: Path) -> None:
    url, intents = stored
    report = json_report(tmp_path / "r.json", intents)
    code, out = recon("run", "--db", url, "--report", str(report))
    assert code == 0 and (AT.isoformat() in out), out
    assert (AT + timedelta(seconds=1)).isoformat() in out
