"""The store's direct path on SQLite gives what SQLAlchemy gives, value for value."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.adapters.direct import Direct
from engine.adapters.store import Store
from engine.domain.commands import Authorize, CreatePayment
from engine.domain.ports import FixedClock, SeededIds
from engine.service.engine import PaymentEngine

DIALECT = sqlite.dialect()
UTC_TYPE = t.UTCDateTime()


def moments() -> list[datetime]:
    rng = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    out = [datetime(1, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)]
    for _ in range(500):
        start = datetime(2000, 1, 1, tzinfo=UTC)
        moment = start + timedelta(seconds=rng.uniform(0, 40 * 365 * 86_400))
        out.append(moment.replace(tzinfo=rng.choice(zones)))
    return out


@pytest.mark.parametrize("moment", [*moments()[:50], None])
def test_utc_datetimes_bind_to_the_same_string_as_sqlalchemy(moment: datetime | None) -> None:
    slow = UTC_TYPE._cached_bind_processor(DIALECT)  # what a compiled statement applies
    assert slow is not None
    assert t.UTCDateTime.sqlite_bind(moment) == slow(moment)


def test_utc_datetimes_read_back_as_sqlalchemy_reads_them() -> None:
    bind = UTC_TYPE._cached_bind_processor(DIALECT)
    result = UTC_TYPE._cached_result_processor(DIALECT, None)
    assert bind is not None and result is not None
    for moment in moments():
        stored = bind(moment)
        assert t.UTCDateTime.sqlite_result(stored) == result(stored) == moment
        assert t.UTCDateTime.sqlite_result(stored).tzinfo is UTC  # type: ignore[union-attr]
    assert t.UTCDateTime.sqlite_result(None) is None


def test_the_direct_path_reads_the_rows_sqlalchemy_reads() -> None:
    db = Database("sqlite://", migrate=True)
    try:
        engine = PaymentEngine(db, FixedClock(), SeededIds(random.Random(3)))
        created = engine.create_payment(
            CreatePayment("m_1", "k-1", "o-1", 1_234, "JPY", "pm_card_visa", metadata={"a": "b"})
        )
        engine.begin_authorize(Authorize("m_1", "k-2", created.payment.id))
        tables = (t.payments, t.idempotency_keys, t.attempts, t.payment_history)
        queries = [sa.select(table).order_by(*table.primary_key.columns) for table in tables]
        with db.engine.connect() as connection:  # SQLAlchemy's own execution
            slow = [[dict(row) for row in connection.execute(q).mappings()] for q in queries]
        with db.transaction() as direct:
            assert isinstance(direct, Direct)
            for query, rows in zip(queries, slow, strict=True):
                assert rows and direct.all(query, {}) == rows  # as a prebuilt statement
                assert direct.execute(query).mappings().all() == rows  # as an ad-hoc one
            assert Store(direct).payment(created.payment.id) == slow[0][0]
    finally:
        db.dispose()
