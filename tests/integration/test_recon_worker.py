"""The reconciliation worker: the mock PSP's report over HTTP (in process), window by window.

The engine pays through the mock PSP core over ``CoreTransport``; the worker
fetches ``/_admin/settlement`` the same way. Time is two manual clocks moved
together; nothing sleeps.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from engine.adapters.database import Database
from engine.adapters.psp_http import HttpProvider
from engine.domain.ports import FixedClock, SeededIds
from engine.service.engine import PaymentEngine
from engine.service.reconciliation import Reconciler
from engine.workers import InboxProcessor, InProcessPublisher, OutboxRelay, Worker
from engine.workers.reconciliation import HttpReportSource, ReconciliationWorker, window_end
from mock_psp.clock import ManualClock
from mock_psp.core import ProviderCore
from mock_psp.transport import CoreTransport
from tests.integration.helpers import captured

START = datetime(2026, 1, 3, tzinfo=UTC)
HOUR = timedelta(hours=1)


@dataclass(slots=True)
class Setup:
    engine: PaymentEngine
    core: ProviderCore
    clock: FixedClock
    psp_clock: ManualClock
    reconciler: Reconciler

    def advance(self, delta: timedelta) -> None:
        self.clock.advance(delta)
        self.psp_clock.advance(delta.total_seconds())

    def worker(self, transport: httpx.BaseTransport | None = None) -> ReconciliationWorker:
        source = HttpReportSource("http://psp.test", "sk_test_x",
                                  transport=transport or CoreTransport(self.core))  # fmt: skip
        return ReconciliationWorker(self.reconciler, source, interval_s=3_600, delay_s=600,
                                    lateness_s=60)  # fmt: skip


@pytest.fixture
def setup(database: Database) -> Iterator[Setup]:
    clock, psp_clock = FixedClock(START + 10 * timedelta(minutes=1)), ManualClock()
    psp_clock.set((START + timedelta(minutes=10)).timestamp())
    core = ProviderCore(psp_clock, random.Random(7))
    engine = PaymentEngine(database, clock, SeededIds(random.Random(8)))
    provider = HttpProvider("http://psp.test", "sk_test_x", transport=CoreTransport(core),
                            rng=random.Random(0), sleep=lambda _s: None)  # fmt: skip
    for n in range(2):
        captured(engine, provider, key=f"c-{n}", order_id=f"o-{n}")
    reconciler = Reconciler(database, clock, SeededIds(random.Random(9)), engine)
    yield Setup(engine, core, clock, psp_clock, reconciler)
    provider.close()


def test_windows_are_aligned_to_the_interval() -> None:
    assert window_end(START + timedelta(minutes=59), HOUR) == START + HOUR
    assert window_end(START + HOUR, HOUR) == START + 2 * HOUR


def test_the_worker_reconciles_each_window_once_after_its_delay(setup: Setup) -> None:
    worker = setup.worker()
    setup.advance(HOUR - timedelta(seconds=1))  # 01:09:59: the last due window ended at 00:00
    before = worker.run_once()
    assert (before.windows, before.matched) == (1, 0)
    assert worker.run_once().windows == 0
    setup.advance(timedelta(seconds=1))  # the payments' window, to 01:00, is due at 01:10
    first = worker.run_once()
    assert (first.windows, first.matched, first.settled, first.exceptions_new) == (1, 2, 2, 0)
    assert worker.run_once().windows == 0
    setup.advance(HOUR)
    assert worker.run_once().windows == 1
    assert setup.reconciler.last_window_end("worker:psp") == START + 2 * HOUR
    again = setup.worker()  # a restarted process goes on where the runs stopped
    setup.advance(HOUR)
    assert again.run_once().windows == 1 and again.run_once(lambda: True).windows == 0


def test_planted_settlement_faults_become_exceptions(setup: Setup) -> None:
    setup.core.set_faults({"settlement": {"missing_row_rate": 1.0}})
    setup.advance(HOUR + timedelta(seconds=1))
    report = setup.worker().run_once()
    assert (report.windows, report.matched, report.exceptions_new) == (1, 0, 2)
    assert {i.category for i in setup.reconciler.exceptions()} == {"missing_at_provider"}


def test_a_provider_away_is_transient_and_a_bad_report_is_retried(setup: Setup) -> None:
    setup.advance(HOUR + timedelta(seconds=1))
    away = httpx.MockTransport(lambda request: httpx.Response(503, json={}))
    loop = Worker(setup.engine, None, OutboxRelay(setup.engine, InProcessPublisher()),
                  InboxProcessor(setup.engine), reconciliation=setup.worker(away))  # fmt: skip
    report = loop.run_once()
    assert report.errors == {"reconciliation": 1} and report.windows_reconciled == 0
    garbled = {"data": [{"balance_transaction_id": "txn_1", "currency": "usd"}]}
    broken = setup.worker(httpx.MockTransport(lambda request: httpx.Response(200, json=garbled)))
    assert broken.run_once().refused == 1
    assert setup.reconciler.last_window_end("worker:psp") is None  # nothing recorded
    fixed = setup.worker()
    assert fixed.run_once().windows == 1  # the same window, now readable


def test_a_garbled_or_unready_download_is_refused_whole_and_its_window_downloaded_again(
    setup: Setup,
) -> None:
    setup.advance(HOUR + timedelta(seconds=1))
    setup.core.set_faults({"settlement": {"unavailable_rate": 1.0}})
    worker = setup.worker()
    for _ in range(2):  # not ready: the payments' window waits
        report = worker.run_once()
        assert (report.unavailable, report.windows) == (1, 0)
    setup.core.set_faults({"settlement": {"garbled_rate": 1.0}})
    for _ in range(4):  # cut short or a bad row, drawn per download: refused whole each time
        report = worker.run_once()
        assert (report.refused, report.windows, report.matched) == (1, 0, 0)
    assert setup.reconciler.last_window_end("worker:psp") is None  # nothing recorded
    garbled = setup.core.fault_log.counts()["settlement.garbled"]
    assert garbled == 4
    setup.core.set_faults({})
    whole = worker.run_once()
    assert (whole.windows, whole.matched, whole.settled) == (1, 2, 2)


def test_the_service_runs_reconciliation_only_when_asked(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.entrypoints.serve import ServiceSettings, build_reconciliation

    assert ServiceSettings().problem() is None
    assert build_reconciliation(setup.engine, ServiceSettings()) is None
    assert ServiceSettings(recon_interval_s=30).problem() == (
        "recon_interval_s", "0 (off), or 60 to 604800 seconds",
    )  # fmt: skip
    assert ServiceSettings(recon_interval_s=3_600, recon_delay_s=10).problem() is not None
    settings = ServiceSettings(recon_interval_s=86_400, recon_delay_s=7_200)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert ServiceSettings.from_env() == settings
    worker = build_reconciliation(setup.engine, settings)
    assert worker is not None and worker.interval == timedelta(days=1)
    worker.source.close()
