"""What the database itself refuses, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from engine.adapters import schema as t
from engine.adapters.database import (
    Database,
    LedgerGuardRefused,
    SchemaOutOfDate,
    check_schema,
    downgrade,
    schema_revision,
)
from engine.adapters.fake_provider import FakeProvider
from engine.domain.ledger import Entry, Journal, Side
from engine.domain.provider import ProviderEvent
from engine.service.engine import PaymentEngine
from tests.integration.helpers import captured


def write_entries(db: Database, journal_id: str, entries: list[tuple[str, str, int]]) -> None:
    with db.transaction() as c:
        c.execute(
            t.ledger_entries.insert(),
            [
                {
                    "journal_id": journal_id,
                    "account": a,
                    "side": s,
                    "amount_minor": m,
                    "currency": "USD",
                }
                for a, s, m in entries
            ],
        )
        c.execute(
            t.ledger_journals.insert().values(
                id=journal_id, kind="test", created_at=sa.func.current_timestamp()
            )
        )
        c.commit()


def test_a_balanced_journal_is_accepted(database: Database) -> None:
    write_entries(database, "j1", [("a", "D", 5), ("b", "C", 5)])


def test_an_unbalanced_journal_is_refused_at_commit(database: Database) -> None:
    with pytest.raises(LedgerGuardRefused) as caught:
        write_entries(database, "j1", [("a", "D", 5), ("b", "C", 4)])
    assert caught.value.code == "ledger_unbalanced"
    with database.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(t.ledger_entries)).scalar() == 0


def test_a_single_entry_journal_is_refused(database: Database) -> None:
    with pytest.raises(LedgerGuardRefused):
        write_entries(database, "j1", [("a", "D", 5)])


def test_entries_for_a_closed_journal_are_refused(database: Database) -> None:
    write_entries(database, "j1", [("a", "D", 5), ("b", "C", 5)])
    with pytest.raises(LedgerGuardRefused) as caught, database.transaction() as c:
        c.execute(
            t.ledger_entries.insert(),
            [
                {
                    "journal_id": "j1",
                    "account": "a",
                    "side": "D",
                    "amount_minor": 1,
                    "currency": "USD",
                },
                {
                    "journal_id": "j1",
                    "account": "b",
                    "side": "C",
                    "amount_minor": 1,
                    "currency": "USD",
                },
            ],
        )
        c.commit()
    assert caught.value.code == "ledger_journal_closed"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount_minor = 6",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_journals SET kind = 'x'",
        "DELETE FROM ledger_journals",
    ],
)
def test_ledger_rows_are_append_only(database: Database, statement: str) -> None:
    write_entries(database, "j1", [("a", "D", 5), ("b", "C", 5)])
    with pytest.raises(LedgerGuardRefused) as caught, database.transaction() as c:
        c.execute(sa.text(statement))
        c.commit()
    assert caught.value.code == "append_only"


def test_payment_history_is_append_only(engine: PaymentEngine, database: Database) -> None:
    captured(engine, FakeProvider())
    with pytest.raises(LedgerGuardRefused), database.transaction() as c:
        c.execute(sa.text("UPDATE payment_history SET to_state = 'refunded'"))
        c.commit()


@pytest.mark.parametrize(
    "values",
    [
        {"captured_minor": 20_000},
        {"refunded_minor": 20_000},
        {"authorized_minor": -1},
        {"refund_reserved_minor": 10_000},
    ],
)
def test_checks_refuse_impossible_amounts(
    engine: PaymentEngine, database: Database, values: dict[str, int]
) -> None:
    payment_id = captured(engine, FakeProvider(), amount_minor=5_000)
    with pytest.raises(sa.exc.IntegrityError), database.transaction() as c:
        c.execute(t.payments.update().where(t.payments.c.id == payment_id).values(**values))
        c.commit()


def test_a_provider_event_id_is_unique(database: Database, engine: PaymentEngine) -> None:
    event = ProviderEvent("evt_1", "payment_intent.succeeded", datetime(2026, 1, 1, tzinfo=UTC))
    assert engine.apply_provider_event(event).outcome == "unmatched"
    assert engine.apply_provider_event(event).outcome == "duplicate"
    with pytest.raises(sa.exc.IntegrityError), database.transaction() as c:
        c.execute(
            t.provider_events.insert().values(
                id="x", provider_event_id="evt_1", type="t", outcome="o",
                received_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
        )  # fmt: skip
        c.commit()


def test_the_migrations_build_exactly_the_declared_schema(database: Database) -> None:
    with database.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), t.metadata)
    assert diff == []


def test_a_stale_schema_is_a_clear_error(database: Database) -> None:
    check_schema(database.engine)
    downgrade(database.engine, "base")
    assert schema_revision(database.engine)[0] is None
    with pytest.raises(SchemaOutOfDate) as caught:
        check_schema(database.engine)
    assert "paychaos db upgrade" in caught.value.message


def test_journals_the_engine_builds_pass_the_database_guards(database: Database) -> None:
    journal = Journal("ok", (Entry("a", Side.DEBIT, 3, "USD"), Entry("b", Side.CREDIT, 3, "USD")))
    write_entries(
        database, "j2", [(e.account, e.side.value, e.amount_minor) for e in journal.entries]
    )
