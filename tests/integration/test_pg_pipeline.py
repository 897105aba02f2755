"""The engine's statements sent through libpq's pipeline (``engine.adapters.pg_pipeline``):
values and errors as psycopg's cursor gives them, prepared statements that survive
failures and a DEALLOCATE behind the session's back."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from engine.adapters import pg_pipeline
from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.domain.commands import Authorize, CreatePayment
from engine.domain.ports import FixedClock, SeededIds
from engine.service.driver import perform
from engine.service.engine import PaymentEngine

pytestmark = pytest.mark.postgres
S = pg_pipeline.Statement


@pytest.fixture
def connection(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    url = sa.make_url(postgres_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS pipeline_rows")
        conn.execute(
            "CREATE TABLE pipeline_rows (id int PRIMARY KEY, name text NOT NULL, "
            "at timestamptz, doc jsonb, flag boolean)"
        )
        yield conn


INSERT = "INSERT INTO pipeline_rows (id, name, at, doc, flag) VALUES (%s, %s, %s, %s, %s)"
SELECT = "SELECT id, name, at, doc, flag FROM pipeline_rows WHERE id >= %s ORDER BY id"


def test_values_go_and_come_back_as_the_cursor_gives_them(
    connection: psycopg.Connection[Any],
) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    doc = psycopg.types.json.Jsonb({"a": [1, "x"], "b": None})
    session = pg_pipeline.Session(connection)
    answers = session.run(
        [
            S("BEGIN", None),
            S(INSERT, [(1, "one", at, doc, True), (2, "100%", None, None, False)], many=True),
            S(SELECT, (0,)),
            S("UPDATE pipeline_rows SET name = name || %s WHERE id > %s", ("!", 0)),
            S("COMMIT", None),
        ]
    )
    assert len(answers) == 5
    assert answers[2].fetchall() == [
        (1, "one", at, {"a": [1, "x"], "b": None}, True),
        (2, "100%", None, None, False),
    ]
    assert answers[2].fetchone() == answers[2].fetchall()[0]
    assert answers[3].rowcount == 2
    read = [row[:2] for row in connection.execute(SELECT, (0,)).fetchall()]
    assert read == [(1, "one!"), (2, "100%!")]  # committed, as a cursor reads it
    assert session.run([S(SELECT, (5,))])[0].fetchone() is None


def test_a_refused_statement_raises_psycopgs_error_and_nothing_after_it_runs(
    connection: psycopg.Connection[Any],
) -> None:
    session = pg_pipeline.Session(connection)
    session.run([S(INSERT, (1, "one", None, None, None))])
    with pytest.raises(pg_pipeline.Failed) as failed:
        session.run(
            [
                S("BEGIN", None),
                S(INSERT, (2, "two", None, None, None)),
                S(INSERT, (1, "again", None, None, None)),  # the primary key again
                S(INSERT, (3, "three", None, None, None)),
                S("COMMIT", None),
            ]
        )
    assert failed.value.index == 2
    assert isinstance(failed.value.error, psycopg.errors.UniqueViolation)
    assert failed.value.error.diag.constraint_name == "pipeline_rows_pkey"
    assert connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    connection.rollback()
    # The session goes on: its statements are prepared, and nothing of the batch stayed.
    rows = session.run([S(SELECT, (0,))])[0].fetchall()
    assert [row[0] for row in rows] == [1]


def test_prepared_statements_deallocated_behind_the_sessions_back_are_prepared_again(
    connection: psycopg.Connection[Any],
) -> None:
    session = pg_pipeline.Session(connection)
    session.run([S(INSERT, (1, "one", None, None, None))])
    connection.execute("DEALLOCATE ALL")
    with pytest.raises(pg_pipeline.Failed) as failed:
        session.run([S(INSERT, (2, "two", None, None, None))])
    assert failed.value.error.sqlstate == "26000"
    session.run([S(INSERT, (2, "two", None, None, None))])
    assert len(session.run([S(SELECT, (0,))])[0].fetchall()) == 2


def test_a_value_the_adapters_refuse_sends_nothing(connection: psycopg.Connection[Any]) -> None:
    session = pg_pipeline.Session(connection)
    with pytest.raises(psycopg.ProgrammingError):
        session.run([S(INSERT, (1, "one", None, None, None)), S(SELECT, (object(),))])
    assert connection.execute("SELECT count(*) FROM pipeline_rows").fetchone() == (0,)
    # The statement whose values were adapted was not named as prepared: it still works.
    session.run([S(INSERT, (1, "one", None, None, None))])
    assert connection.execute("SELECT count(*) FROM pipeline_rows").fetchone() == (1,)


def test_the_engines_prepared_statements_outlive_a_drop_run_through_sqlalchemy(
    postgres_database: Database,
) -> None:
    """psycopg, with statements of its own prepared, answers a DROP (or ALTER, or
    ROLLBACK) it runs with DEALLOCATE ALL; its preparing is off on the engine's
    connections, so the engine's statements stay prepared."""
    engine = PaymentEngine(postgres_database, FixedClock(), SeededIds(random.Random(5)))
    provider = FakeProvider()

    def pay(n: int) -> None:
        created = engine.create_payment(
            CreatePayment("m_pipe", f"c-{n}", f"o-{n}", 1_000, "EUR", "pm_card_visa")
        )
        authorize = Authorize("m_pipe", f"a-{n}", created.payment.id)
        perform(engine, provider, engine.begin_authorize(authorize))

    pay(1)
    with postgres_database.engine.connect() as connection:
        for _ in range(6):
            connection.exec_driver_sql("SELECT %(n)s::int", {"n": 1}).all()
        connection.exec_driver_sql("CREATE TEMPORARY TABLE scratch (n int)")
        connection.exec_driver_sql("DROP TABLE scratch")
        connection.exec_driver_sql("SELECT %(n)s::int", {"n": 1}).all()
        names = list(
            connection.exec_driver_sql("SELECT name FROM pg_prepared_statements").scalars()
        )
        connection.commit()
    assert names and all(name.startswith("paychaos_") for name in names)
    pay(2)
