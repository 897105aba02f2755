"""The engine's read API, on SQLite and PostgreSQL: typed, paged, read-only views of
what the engine stored, agreeing with what its own steps answer."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from datetime import datetime

import pytest
import sqlalchemy as sa

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.domain.commands import CreatePayout, Refund
from engine.service.driver import perform
from engine.service.engine import PaymentEngine
from engine.service.read_api import PAGE_SIZE_MAX, PaymentRecord, ReadApi, every
from tests.integration.helpers import MERCHANT, captured
from tests.integration.test_splits import split_payment


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def stored(engine: PaymentEngine, provider: FakeProvider) -> dict[str, str]:
    """A split payment refunded in part, settled and paid out; two plain captures."""
    split = split_payment(engine, provider, None)
    perform(engine, provider, engine.begin_refund(Refund(MERCHANT, "r-1", split, 1_000)))
    assert engine.settle_payment(split)
    begun = engine.begin_payout(CreatePayout("s_books", "po-1", "USD", 1_000))
    assert begun.call is not None
    engine.complete_payout(begun.call.attempt_id, provider.call(begun.call))
    plain = captured(engine, provider, key="create-2", order_id="order-2")
    other = captured(engine, provider, 2_500, key="create-3", order_id="order-3")
    return {"split": split, "plain": plain, "other": other}


def _plain_data(value: object) -> bool:
    """Only strings, ints, bools, datetimes, None, tuples of those and records of those."""
    if is_dataclass(value):
        return all(_plain_data(getattr(value, f.name)) for f in fields(value))
    if isinstance(value, tuple):
        return all(_plain_data(item) for item in value)
    return value is None or isinstance(value, str | int | datetime)


def _count(database: Database, table: sa.Table) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_payments_come_with_their_history_attempts_refunds_and_lines(
    database: Database, engine: PaymentEngine, stored: dict[str, str]
) -> None:
    reads = ReadApi(database)
    payments = {p.id: p for p in every(reads.payments)}
    assert set(payments) == set(stored.values())
    split = payments[stored["split"]]
    view = engine.get_payment(split.id, MERCHANT, with_lines=True)
    assert (split.state, split.captured_minor, split.refunded_minor) == (
        view.state, view["captured_minor"], view["refunded_minor"],
    )  # fmt: skip
    assert [(h.seq, h.from_state, h.to_state, h.reason) for h in split.history] == [
        (h["seq"], h["from_state"], h["to_state"], h["reason"]) for h in view.history
    ]
    assert [(r.id, r.amount_minor, r.status) for r in split.refunds] == [
        (r["id"], r["amount_minor"], r["status"]) for r in view.refunds
    ]
    assert [(line.seller_id, line.amount_minor) for line in split.lines] == [
        ("s_books", 6_001), ("s_music", 3_999),
    ]  # fmt: skip
    assert split.lines_count == 2 and payments[stored["plain"]].lines == ()
    assert {a.kind for a in split.attempts} >= {"authorize", "capture", "refund"}
    assert all(a.status == "succeeded" for a in split.attempts)
    assert all(_plain_data(p) for p in payments.values())
    assert reads.payment(split.id) == split
    assert reads.payment("pay_missing") is None


def test_pages_are_bounded_and_walk_every_item_once_in_key_order(
    database: Database, stored: dict[str, str]
) -> None:
    reads = ReadApi(database)
    first = reads.payments(limit=2)
    assert len(first.items) == 2 and first.after == first.items[-1].id
    rest = reads.payments(first.after, limit=2)
    assert len(rest.items) == 1 and rest.after is None
    ids = [p.id for p in first.items + rest.items]
    assert ids == sorted(stored.values())
    assert [p.id for p in every(lambda after: reads.payments(after, limit=1))] == ids
    journals = [j.id for j in every(lambda after: reads.journals(after, limit=3))]
    assert journals == sorted(journals) and len(journals) == _count(database, t.ledger_journals)
    with pytest.raises(AssertionError):
        reads.payments(limit=PAGE_SIZE_MAX + 1)


def test_journals_carry_their_entries_and_each_balances(
    database: Database, stored: dict[str, str]
) -> None:
    reads = ReadApi(database)
    journals = list(every(reads.journals))
    entries = [entry for journal in journals for entry in journal.entries]
    assert len(entries) == _count(database, t.ledger_entries)
    for journal in journals:
        assert len(journal.entries) >= 2, journal
        for currency in {entry.currency for entry in journal.entries}:
            signed = sum(e.amount_minor if e.side == "D" else -e.amount_minor
                         for e in journal.entries if e.currency == currency)  # fmt: skip
            assert signed == 0, journal
    kinds = {journal.kind for journal in journals if journal.payment_id == stored["split"]}
    assert {"capture", "refund"} <= kinds
    assert all(_plain_data(journal) for journal in journals)


def test_outbox_wallets_and_payouts_agree_with_the_engine(
    database: Database, engine: PaymentEngine, stored: dict[str, str]
) -> None:
    reads = ReadApi(database)
    events = list(every(reads.outbox))
    assert len(events) == _count(database, t.payment_history)
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert all(e.published_at is None for e in events)
    wallets = {(w.owner_id, w.currency): (w.pending_minor, w.available_minor)
               for w in every(lambda after: reads.wallets(after, limit=1))}  # fmt: skip
    assert wallets == {
        (w["owner_id"], w["currency"]): (w["pending_minor"], w["available_minor"])
        for w in engine.wallets()
    }
    payouts = list(every(reads.payouts))
    assert [(p.seller_id, p.amount_minor, p.status) for p in payouts] == [
        ("s_books", 1_000, "in_transit"),
    ]  # fmt: skip
    assert payouts[0].provider_payout_id is not None
    assert list(every(reads.recon_exceptions)) == []


def test_reading_writes_nothing(database: Database, stored: dict[str, str]) -> None:
    reads = ReadApi(database)
    tables = (t.payments, t.payment_history, t.ledger_entries, t.outbox, t.wallets, t.payouts)
    before = [_count(database, table) for table in tables]
    for view in (reads.payments, reads.journals, reads.outbox, reads.wallets, reads.payouts,
                 reads.recon_exceptions):  # fmt: skip
        list(every(view))  # type: ignore[arg-type]
    assert [_count(database, table) for table in tables] == before
    assert isinstance(reads.payment(stored["plain"]), PaymentRecord)


@pytest.mark.postgres
def test_on_postgresql_a_read_unit_refuses_writes(postgres_database: Database) -> None:
    reads = ReadApi(postgres_database)
    with pytest.raises(sa.exc.InternalError, match="read-only transaction"), reads._unit() as c:
        c.execute(t.fee_plans.delete())
