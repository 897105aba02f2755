"""Every statement of every unit of work takes one path per dialect: the unit's ``Direct``.

With SQLAlchemy's own execution refused, a payment's life, the listings, the
workers' polls, the read API, API keys and a reconciliation run (with a
resolution) still run, on SQLite and on PostgreSQL; every commit, reconciliation's
and the API keys' included, asks the database's fault port; and ad-hoc
statements (an ``IN`` list of any length) take neither the store's prebuilt
statement cache nor the PostgreSQL session's prepared-statement names.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from engine.adapters import direct
from engine.adapters import schema as t
from engine.adapters.api_keys import KeyStore, Revoked
from engine.adapters.database import Database, UnitFaults
from engine.adapters.direct import Direct
from engine.adapters.fake_provider import FakeProvider
from engine.adapters.store import unit_of_work
from engine.audit import audit
from engine.domain.errors import StoreUnavailable
from engine.domain.marketplace import FeePlan
from engine.domain.ports import FixedClock, SeededIds
from engine.domain.provider import ProviderEvent
from engine.service.engine import PaymentEngine
from engine.service.read_api import ReadApi, every
from engine.service.reconciliation import Reconciler
from engine.workers.inbox import InboxProcessor
from tests.integration.helpers import MERCHANT, captured, refund

AT = datetime(2026, 1, 1, tzinfo=UTC)
REPORT = (
    "balance_transaction_id,created_utc,available_on_utc,currency,gross,fee,net,"
    "reporting_category,source_id,payment_intent_id,refund_id,payment_metadata[payment_id]\n"
)  # a report of nothing: every movement booked in its window is missing at the provider
SECRET = "sk_" + "s" * 40


class SqlAlchemyRefused(AssertionError):
    pass


@contextmanager
def sqlalchemy_execution_refused() -> Iterator[None]:
    """SQLAlchemy's execution refused: only ``Direct`` may reach the database."""

    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise SqlAlchemyRefused("a statement went through SQLAlchemy's execution")

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(sa.engine.Connection, "execute", refused)
        patched.setattr(sa.engine.Connection, "exec_driver_sql", refused)
        yield


def assert_audit_holds(database: Database) -> None:
    with database.engine.connect() as connection:
        assert [(r.name, r.violations) for r in audit(connection) if not r.ok] == []


def _engine(database: Database, clock: FixedClock) -> PaymentEngine:
    return PaymentEngine(database, clock, SeededIds(random.Random(11)))


def test_a_unit_of_work_yields_its_direct_path(database: Database) -> None:
    with database.transaction() as unit:
        assert isinstance(unit, Direct)
        assert unit.execute(sa.select(sa.literal(1))).scalar() == 1


def test_everything_runs_without_sqlalchemys_execution(database: Database) -> None:
    with sqlalchemy_execution_refused():
        a_day_of_everything(database)
    with (
        sqlalchemy_execution_refused(),
        database.engine.connect() as connection,
        pytest.raises(SqlAlchemyRefused),  # the refusal refuses
    ):
        connection.execute(sa.select(sa.literal(1)))
    assert_audit_holds(database)


def a_day_of_everything(database: Database) -> None:
    """A payment's life, listings, the workers' polls, the read API, API keys and a
    reconciliation run with a resolution."""
    clock = FixedClock(AT)
    engine, provider = _engine(database, clock), FakeProvider()
    # A payment's life: create, authorize, capture, refund.
    payment_id = captured(engine, provider)
    refund(engine, provider, payment_id, "refund-1", 2_500)
    second = captured(engine, provider, key="create-2", order_id="order-2")
    # Listings.
    assert {view.body["id"] for view in engine.list_payments(MERCHANT)} == {payment_id, second}
    assert len(engine.ledger_of(payment_id)) >= 3
    assert engine.merchant_balance(MERCHANT)["USD"]["available"] > 0
    engine.set_fee_plan("seller_1", FeePlan(percent_bps=250, fixed_minor=30))
    engine.set_fee_plan("seller_1", FeePlan(percent_bps=300, fixed_minor=30))
    assert engine.wallets() == [] and engine.payouts() == []
    # The workers' polls.
    assert engine.due_attempts() == [] and engine.attempts_for_review() == []
    assert engine.due_payouts() == []
    events = engine.unpublished_events()
    assert events
    engine.mark_published(events)
    assert engine.unpublished_events() == []
    assert engine.expire_idempotency_keys() == 0
    engine.store_webhook("evt_one", "charge.succeeded", "{}")
    assert len(engine.pending_webhooks()) == 1
    taken = InboxProcessor(engine, lambda _: ProviderEvent("evt_one", "charge.succeeded", AT))
    report = taken.run_once()
    assert report.applied + report.failed == 1 and engine.dead_letters() == []
    # The read API.
    reads = ReadApi(database)
    assert {record.id for record in every(reads.payments)} == {payment_id, second}
    assert list(every(reads.journals)) and list(every(reads.outbox))
    assert not list(every(reads.wallets)) and not list(every(reads.payouts))
    # API keys.
    keys = KeyStore(database)
    keys.create("key_1", MERCHANT, "secret", SECRET, AT)
    principal = keys.authenticate(SECRET)
    assert principal is not None and principal.merchant_id == MERCHANT
    assert [info.id for info in keys.list_keys(MERCHANT)] == ["key_1"]
    assert keys.revoke("key_1", AT) is Revoked.NOW and keys.authenticate(SECRET) is None
    # Reconciliation: a run, its exceptions, a resolution posting a journal.
    clock.set(AT + timedelta(days=2))
    recon = Reconciler(database, clock, SeededIds(random.Random(12)), engine)
    summary = recon.run(REPORT, "test", AT - timedelta(hours=1), AT + timedelta(days=1))
    assert summary.exceptions and recon.last_window_end("test") == AT + timedelta(days=1)
    found = recon.exceptions()
    assert found and found[0].status == "open"
    resolved = recon.resolve(found[0].id, "written off in the test")
    assert resolved.status == "resolved"
    assert list(every(reads.recon_exceptions))
    assert list(every(reads.settlement_rows)) == []


class FailingCommits(UnitFaults):
    def __init__(self) -> None:
        self.asked = 0

    def commit_fails(self) -> bool:
        self.asked += 1
        return True


def test_every_commit_asks_the_fault_port_and_a_failed_one_keeps_nothing(
    database: Database,
) -> None:
    clock = FixedClock(AT)
    engine, provider = _engine(database, clock), FakeProvider()
    captured(engine, provider)
    faults = database.faults = FailingCommits()
    with pytest.raises(StoreUnavailable):
        KeyStore(database).create("key_1", MERCHANT, "secret", SECRET, AT)
    assert faults.asked == 1
    recon = Reconciler(database, clock, SeededIds(random.Random(12)), engine)
    with pytest.raises(StoreUnavailable):
        recon.run(REPORT, "test", AT - timedelta(hours=1), AT + timedelta(days=1))
    assert faults.asked > 1
    database.faults = None
    assert KeyStore(database).list_keys() == []
    assert recon.last_window_end("test") is None and recon.exceptions() == []


def _prepared_names(database: Database) -> int:
    with database.transaction() as unit:
        return int(unit.execute(sa.text("SELECT count(*) FROM pg_prepared_statements")).scalar())


def test_ad_hoc_statements_are_compiled_once_per_shape_and_never_prepared(
    database: Database,
) -> None:
    engine, provider = _engine(database, FixedClock(AT)), FakeProvider()
    payment_id = captured(engine, provider)
    engine.ledger_of(payment_id)
    postgres = database.dialect == "postgresql"
    names = _prepared_names(database) if postgres else 0
    compiled, shapes = len(direct._prepared), len(direct._adhoc)
    for size in range(1, 60):
        with unit_of_work(database) as store:
            refs = [f"acct_{n}" for n in range(size)]
            assert store.account_balances(refs) == []
            store.mark_outbox_published(list(range(size)), AT)
            store.commit()
    assert len(direct._prepared) == compiled  # the per-statement-object cache is not grown
    assert len(direct._adhoc) <= shapes + 2  # one shape each, whatever the list's length
    if postgres:
        assert _prepared_names(database) == names


def _ad_hoc_queries(payment_id: str, now: datetime) -> list[sa.Executable]:
    p, e, j = t.payments.c, t.ledger_entries.c, t.ledger_journals.c
    touched = sa.func.coalesce(p.updated_at, p.created_at)
    signed = sa.case((e.side == "D", e.amount_minor), else_=-e.amount_minor)
    return [
        sa.select(t.payments).where(touched <= now, p.state.in_(["captured", "refunded"])),
        sa.select(t.payments).where(touched > now),
        sa.select(t.ledger_journals).where(j.payment_id == payment_id).order_by(j.id),
        sa.select(e.account, e.currency, sa.func.sum(signed))
        .where(e.journal_id.in_(sa.select(j.id).where(j.payment_id == payment_id)))
        .group_by(e.account, e.currency)
        .order_by(e.account),
        sa.select(sa.func.max(j.created_at), sa.func.count()),
        sa.select(t.outbox).where(t.outbox.c.id.in_([1, 2, 3])).order_by(t.outbox.c.id),
    ]


def test_ad_hoc_statements_bind_and_read_what_sqlalchemy_does(database: Database) -> None:
    engine, provider = _engine(database, FixedClock(AT)), FakeProvider()
    payment_id = captured(engine, provider)
    queries = _ad_hoc_queries(payment_id, AT + timedelta(hours=1))
    sent: list[tuple[Any, ...]] = []

    def keep(*args: Any) -> None:
        sent.append(tuple(args[3]) if database.dialect == "sqlite" else tuple(args[3].values()))

    sa.event.listen(database.engine, "before_cursor_execute", keep)
    try:
        with database.engine.connect() as connection:
            expected = [[dict(row) for row in connection.execute(q).mappings()] for q in queries]
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", keep)
    assert expected[0] and expected[2] and expected[3] and expected[5]
    with database.transaction() as unit:
        assert [unit.execute(q).mappings().all() for q in queries] == expected
    if database.dialect == "sqlite":  # the same values bound, in the same order
        made = [direct.adhoc(q, database.engine.dialect, (), False) for q in queries]
        assert [tuple(shape.args({}, values)[1]) for shape, values in made] == sent
