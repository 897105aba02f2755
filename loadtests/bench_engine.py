"""``paychaos bench engine``: payment lifecycles per second next to raw transactions.

A lifecycle is create, authorize, partial capture and partial refund, driven by
``driver.perform`` against the in-process ``FakeProvider``: 7 transactions
(create; begin and complete of authorize, capture and refund). The baseline is
measured in the same run on the same database (same SQLAlchemy engine, so the
same pool and, on SQLite, the same ``BEGIN IMMEDIATE``): as many minimal
transactions as the engine ran steps, each BEGIN, INSERT one row into a tiny
table, COMMIT. The ratio compares per step: engine steps/s over raw tx/s.
Goal: >= 0.5, i.e. an engine step costs at most two minimal transactions.

A second table does the same for webhooks taken as the API takes them
(``take_webhook``: the inbox row and the event applied in one transaction), each
applied and then delivered again as a duplicate, next to as many raw transactions
(no goal is set for it: it shows what intake costs).

Every database is the benchmark's own: in-memory SQLite, a SQLite file in a
temporary directory, and on each extra PostgreSQL server a database created
for the run and dropped after it.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from engine.adapters.database import (
    Database,
    normalize_url,
    postgres_url_problem,
    scratch_database,
)
from engine.adapters.fake_provider import FakeProvider
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund
from engine.domain.ports import FixedClock, SeededIds
from engine.domain.provider import EventType, OutcomeStatus, ProviderEvent, ProviderOutcome
from engine.service.driver import perform
from engine.service.engine import PaymentEngine

STEPS_PER_LIFECYCLE = 7
RATIO_GOAL = 0.5
LIFECYCLES_SMALL = 100  # per database: a few hundred in all, seconds
LIFECYCLES_FULL = 2_000
WARMUP_LIFECYCLES = 10
ROUNDS = 5
MERCHANT = "m_bench"
AMOUNT_MINOR = 10_000
CAPTURE_MINOR = 7_500
REFUND_MINOR = 2_000

raw_metadata = sa.MetaData()
raw_rows = sa.Table(
    "bench_raw_rows",
    raw_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("payload", sa.String(32), nullable=False),
)


@dataclass(frozen=True, slots=True)
class Measurement:
    database: str
    lifecycles: int
    engine_s: float
    raw_s: float
    webhooks: int = 0
    applied_s: float = 0.0
    duplicate_s: float = 0.0
    webhook_raw_s: float = 0.0

    @property
    def lifecycles_per_s(self) -> float:
        return self.lifecycles / self.engine_s

    @property
    def steps_per_s(self) -> float:
        return self.lifecycles * STEPS_PER_LIFECYCLE / self.engine_s

    @property
    def raw_tx_per_s(self) -> float:
        return self.lifecycles * STEPS_PER_LIFECYCLE / self.raw_s

    @property
    def ratio(self) -> float:
        return self.steps_per_s / self.raw_tx_per_s


class Lifecycles:
    """Drives whole payment lives through one engine, each with fresh keys and order."""

    def __init__(self, database: Database, seed: int = 7):
        self.engine = PaymentEngine(database, FixedClock(), SeededIds(random.Random(seed)))
        self.provider = FakeProvider()
        self.done = 0

    def one(self) -> None:
        n, engine, provider = self.done, self.engine, self.provider
        self.done += 1
        created = engine.create_payment(
            CreatePayment(MERCHANT, f"c-{n}", f"order-{n}", AMOUNT_MINOR, "USD", "pm_card_visa")
        )
        payment_id = created.payment.id
        perform(engine, provider, engine.begin_authorize(Authorize(MERCHANT, f"a-{n}", payment_id)))
        perform(
            engine, provider, engine.begin_capture(Capture(MERCHANT, f"k-{n}", payment_id,
                                                           CAPTURE_MINOR))
        )  # fmt: skip
        result = perform(
            engine, provider, engine.begin_refund(Refund(MERCHANT, f"r-{n}", payment_id,
                                                         REFUND_MINOR))
        )  # fmt: skip
        assert result.payment.state == "partially_refunded", result.payment.state


class Webhooks:
    """Deliveries taken as the API takes them (``take_webhook``: the inbox row and the
    event applied in one transaction). Each confirms an authorization whose answer was
    lost (the payment waits in ``processing``); then each arrives again, a duplicate.
    The payments are made beforehand, untimed."""

    def __init__(self, database: Database, count: int, seed: int = 11):
        engine = PaymentEngine(database, FixedClock(), SeededIds(random.Random(seed)))
        self.engine = engine
        self.deliveries: list[tuple[ProviderEvent, str]] = []
        for n in range(count):
            created = engine.create_payment(CreatePayment(
                MERCHANT, f"w-c-{n}", f"w-order-{n}", AMOUNT_MINOR, "USD", "pm_card_visa"
            ))  # fmt: skip
            payment_id = created.payment.id
            call = engine.begin_authorize(Authorize(MERCHANT, f"w-a-{n}", payment_id)).call
            assert call is not None
            engine.complete_authorize(call.attempt_id, ProviderOutcome(OutcomeStatus.UNKNOWN))
            event = ProviderEvent(f"evt_bench_{n}", EventType.AUTHORIZED.value,
                                  FixedClock().now(), payment_id=payment_id,
                                  amount_minor=AMOUNT_MINOR)  # fmt: skip
            self.deliveries.append((event, f'{{"id": "{event.event_id}"}}'))

    def take(self, deliveries: list[tuple[ProviderEvent, str]], expected: str) -> None:
        for event, payload in deliveries:
            taken = self.engine.take_webhook(event, payload)
            assert taken[0] == expected, taken


class RawTransactions:
    """Minimal one-row SQLAlchemy Core transactions on the same engine."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        raw_metadata.create_all(engine)
        self.done = 0

    def one(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(raw_rows.insert(), {"id": self.done, "payload": "x"})
        self.done += 1


def _timed(work: Callable[[], None], times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        work()
    return time.perf_counter() - started


def measure(name: str, database: Database, lifecycles: int) -> Measurement:
    """Alternate rounds of raw and engine work, so that drift hits both alike."""
    engine_work = Lifecycles(database)
    raw_work = RawTransactions(database.engine)
    for _ in range(WARMUP_LIFECYCLES):  # statement caches and pool warm on both sides
        engine_work.one()
    _timed(raw_work.one, WARMUP_LIFECYCLES * STEPS_PER_LIFECYCLE)
    raw_s = engine_s = 0.0
    for round_ in range(ROUNDS):
        share = lifecycles // ROUNDS + (round_ < lifecycles % ROUNDS)
        raw_s += _timed(raw_work.one, share * STEPS_PER_LIFECYCLE)
        engine_s += _timed(engine_work.one, share)
    assert engine_work.done == WARMUP_LIFECYCLES + lifecycles
    webhooks = Webhooks(database, WARMUP_LIFECYCLES + lifecycles)
    warm, timed = webhooks.deliveries[:WARMUP_LIFECYCLES], webhooks.deliveries[WARMUP_LIFECYCLES:]
    webhooks.take(warm, "applied")
    webhook_raw_s = applied_s = duplicate_s = 0.0
    for round_ in range(ROUNDS):
        part = timed[round_::ROUNDS]
        webhook_raw_s += _timed(raw_work.one, len(part))
        applied_s += _timed(partial(webhooks.take, part, "applied"), 1)
        duplicate_s += _timed(partial(webhooks.take, part, "duplicate"), 1)
    return Measurement(name, lifecycles, engine_s, raw_s, len(timed), applied_s, duplicate_s,
                       webhook_raw_s)  # fmt: skip


@contextmanager
def sqlite_file() -> Iterator[Database]:
    with tempfile.TemporaryDirectory(prefix="paychaos-bench-") as directory:
        database = Database(f"sqlite:///{Path(directory) / 'bench.db'}", migrate=True)
        try:
            yield database
        finally:
            database.dispose()


def postgres_database(url: str) -> AbstractContextManager[Database]:
    """A database of the run's own on the server at ``url``, dropped afterwards."""
    return scratch_database(url, f"paychaos_bench_{os.getpid()}")


def describe(url: str) -> str:
    server = sa.make_url(normalize_url(url))
    return f"postgresql ({server.host or 'local'}:{server.port or 5432})"


def table(measurements: list[Measurement]) -> Table:
    out = Table(title="engine lifecycles vs minimal transactions (same run, same database)")
    for column in ("database", "lifecycles", "engine lifecycles/s", "engine steps/s",
                   "raw tx/s", "ratio engine/raw"):  # fmt: skip
        out.add_column(column, justify="left" if column == "database" else "right")
    out.add_column("goal")
    out.add_column("met")
    for m in measurements:
        met = m.ratio >= RATIO_GOAL
        out.add_row(
            m.database, f"{m.lifecycles}", f"{m.lifecycles_per_s:,.1f}", f"{m.steps_per_s:,.0f}",
            f"{m.raw_tx_per_s:,.0f}", f"{m.ratio:.2f}", f">= {RATIO_GOAL}",
            "[green]yes[/]" if met else "[red]no[/]",
        )  # fmt: skip
    return out


def webhook_table(measurements: list[Measurement]) -> Table:
    out = Table(title="webhooks taken (inbox row and event applied in one transaction) vs "
                "minimal transactions")  # fmt: skip
    for column in ("database", "webhooks", "applied/s", "duplicates/s", "raw tx/s",
                   "ratio applied/raw"):  # fmt: skip
        out.add_column(column, justify="left" if column == "database" else "right")
    for m in measurements:
        raw_per_s = m.webhooks / m.webhook_raw_s
        out.add_row(
            m.database, f"{m.webhooks}", f"{m.webhooks / m.applied_s:,.0f}",
            f"{m.webhooks / m.duplicate_s:,.0f}", f"{raw_per_s:,.0f}",
            f"{m.webhooks / m.applied_s / raw_per_s:.2f}",
        )  # fmt: skip
    return out


def run(small: bool, extra_urls: list[str], console: Console) -> None:
    for url in extra_urls:
        if (problem := postgres_url_problem(url)) is not None:
            console.print(f"[red]error:[/] --db-url: {problem} "
                          "(SQLite in memory and in a file are always measured)")  # fmt: skip
            raise SystemExit(2)
    lifecycles = LIFECYCLES_SMALL if small else LIFECYCLES_FULL
    console.print(
        f"{lifecycles} lifecycles per database, {STEPS_PER_LIFECYCLE} transactions each "
        f"(create; begin+complete authorize, capture, refund); raw: as many one-row inserts"
    )
    measurements = []
    memory = Database("sqlite://", migrate=True)
    try:
        measurements.append(measure("sqlite (memory)", memory, lifecycles))
    finally:
        memory.dispose()
    with sqlite_file() as database:
        measurements.append(measure("sqlite (file, WAL)", database, lifecycles))
    for url in extra_urls:
        try:
            with postgres_database(url) as database:
                measurements.append(measure(describe(url), database, lifecycles))
        except sa.exc.OperationalError as exc:
            console.print(f"[red]error:[/] --db-url: cannot reach {describe(url)}: {exc.orig}")
            raise SystemExit(2) from exc
    console.print(table(measurements))
    console.print(webhook_table(measurements))
