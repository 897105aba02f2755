"""``paychaos wallets`` and ``paychaos payouts``: a manual payout against the mock PSP."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.cli import app
from engine.service.engine import PaymentEngine
from tests.integration.test_splits import split_payment

runner = CliRunner()


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A file database with a settled split payment: s_books has 5,371 available."""
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    database = Database(url, migrate=True)
    engine = PaymentEngine(database, FixedClock(), SeededIds(random.Random(3)))
    payment_id = split_payment(engine, FakeProvider(), None)
    assert engine.settle_payment(payment_id)
    database.dispose()
    yield url


def test_wallets_are_listed(db_url: str) -> None:
    result = runner.invoke(app, ["wallets", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "s_books" in result.output and "5371" in result.output


def test_a_payout_beyond_the_available_balance_is_refused_naming_the_field(db_url: str) -> None:
    result = runner.invoke(app, ["payouts", "create", "--db", db_url, "--psp", "http://127.0.0.1:9",
                                 "--seller", "s_books", "--currency", "USD", "--key", "k1",
                                 "--amount-minor", "5372"])  # fmt: skip
    assert result.exit_code == 2
    assert "amount_minor" in result.output and "insufficient_funds" in result.output
    listed = runner.invoke(app, ["payouts", "list", "--db", db_url])
    assert "0 payouts" in listed.output


def test_an_unreachable_provider_leaves_the_payout_unknown_never_failed(db_url: str) -> None:
    args = ["payouts", "create", "--db", db_url, "--psp", "http://127.0.0.1:9",
            "--seller", "s_books", "--currency", "USD", "--key", "k1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "unknown" in result.output and "5371" in result.output
