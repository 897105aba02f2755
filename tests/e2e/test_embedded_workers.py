"""The workers inside the API's process: lifespan, the one-process-per-database lease,
health and metrics. In process: the engine on a SQLite file, the mock PSP core
behind the HTTP adapter (no network), a FixedClock moved by the test."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from engine.adapters.api_keys import KeyStore
from engine.adapters.database import Database
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.api import Services, create_app
from engine.entrypoints.cli import app as cli_app
from engine.entrypoints.metrics import Metrics
from engine.entrypoints.serve import ServiceSettings
from engine.service.engine import RECOVERY_SCHEDULE, PaymentEngine
from engine.workers import (
    BackgroundWorker,
    InProcessPublisher,
    Worker,
    WorkerState,
    lease_for,
)
from engine.workers.lease import FileLease, PostgresLease
from mock_psp.clock import ManualClock
from mock_psp.core import ProviderCore
from mock_psp.transport import CoreTransport
from tests.conftest import fresh_postgres
from tests.e2e.live_servers import wait_until

SECRET = "sk_test_embedded_0123456789abcdef"
NOW = datetime(2026, 3, 1, tzinfo=UTC)
PAYMENT = {"amount_minor": 2_500, "currency": "EUR", "order_id": "o-1",
           "payment_method": "pm_card_visa"}  # fmt: skip
INTERVAL_S = 0.01


class LockedTransport(CoreTransport):
    """The core is not thread-safe; the API's threads and the worker's take turns."""

    def __init__(self, core: ProviderCore):
        super().__init__(core)
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            return super().handle_request(request)


@pytest.fixture
def psp() -> ProviderCore:
    return ProviderCore(ManualClock(NOW.timestamp()), random.Random(3))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'engine.db'}", migrate=True)
    KeyStore(db).create("key_1", "m_one", "secret", SECRET, NOW)
    yield db
    db.dispose()


def provider_for(psp: ProviderCore, transport: CoreTransport) -> HttpProvider:
    return HttpProvider("http://psp.test", "sk_test_engine", transport=transport,
                        retry=RetryPolicy(attempts_max=1), sleep=lambda _s: None)  # fmt: skip


def background(engine: PaymentEngine, provider: HttpProvider) -> BackgroundWorker:
    worker = Worker.assemble(engine, provider, InProcessPublisher())
    return BackgroundWorker(worker, lease_for(engine.db), INTERVAL_S)


@pytest.fixture
def services(database: Database, psp: ProviderCore) -> Iterator[Services]:
    clock = FixedClock(NOW)
    engine = PaymentEngine(database, clock, SeededIds(random.Random(8)))
    transport = LockedTransport(psp)
    api_provider, worker_provider = provider_for(psp, transport), provider_for(psp, transport)
    yield Services(engine, api_provider, KeyStore(database), clock, "whsec_test", Metrics(),
                   background=background(engine, worker_provider))  # fmt: skip
    api_provider.close()
    worker_provider.close()


def post(client: TestClient, path: str, key: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {SECRET}", "Idempotency-Key": key}
    return client.post(path, json=body, headers=headers)


def state_of(client: TestClient, payment_id: str) -> str:
    headers = {"Authorization": f"Bearer {SECRET}"}
    response = client.get(f"/v1/payments/{payment_id}", headers=headers)
    return str(response.json()["state"])


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the app's metrics listener would answer (it is not on the API's port)."""
    app: Any = client.app
    services: Services = app.state.services
    text = services.metrics.render(services)[0].decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_app_runs_its_workers_from_startup_to_shutdown(
    services: Services, psp: ProviderCore
) -> None:
    """A lost response leaves the payment processing; the embedded recovery worker,
    once the attempt is due, asks the provider and finishes the job."""
    psp.set_faults({"api_rules": [{"endpoints": ["payment_intents.create"],
                                   "timeout_after_rate": 1.0}]})  # fmt: skip
    workers, clock = services.background, services.clock
    assert workers is not None and isinstance(clock, FixedClock)
    with TestClient(create_app(services)) as client:
        pid = post(client, "/v1/payments", "c1", PAYMENT).json()["id"]
        confirmed = post(client, f"/v1/payments/{pid}/confirm", "a1")
        assert (confirmed.status_code, confirmed.json()["state"]) == (202, "processing")
        loops = workers.report.loops
        wait_until(lambda: workers.report.loops >= loops + 2, "two more worker loops")
        assert state_of(client, pid) == "processing"  # not due yet: nobody asked, nobody guessed
        clock.advance(RECOVERY_SCHEDULE[0])
        wait_until(lambda: state_of(client, pid) == "authorized", "recovered by the worker")
        replay = post(client, f"/v1/payments/{pid}/confirm", "a1")  # a saved answer never changes
        assert (replay.status_code, replay.json()) == (202, confirmed.json())
        found = samples(client)
        assert found[("paychaos_worker_state", (("state", "leading"),))] == 1.0
        assert found[("paychaos_worker_recovery_total", (("outcome", "resolved"),))] == 1.0
        assert found[("paychaos_unknown_attempts", ())] == 0.0
        assert found[("paychaos_payments", (("state", "processing"),))] == 0.0
        assert found[("paychaos_payments", (("state", "authorized"),))] == 1.0
        assert found[("paychaos_worker_last_loop_timestamp_seconds", ())] > 0
        assert found[("paychaos_outbox_backlog", ())] == 0.0  # relayed in process
        assert client.get("/healthz").json() == {"status": "ok"}
    assert workers.state is WorkerState.STOPPED
    intent = next(iter(psp.truth.per_payment_intent().values()))
    assert intent.successful_charge_count == 1


def test_one_process_per_database_runs_the_workers_and_another_takes_over(
    database: Database, psp: ProviderCore
) -> None:
    engine = PaymentEngine(database, FixedClock(NOW), SeededIds(random.Random(1)))
    provider = provider_for(psp, LockedTransport(psp))
    first, second = background(engine, provider), background(engine, provider)
    first.start()
    wait_until(lambda: first.state is WorkerState.LEADING, "the first leads")
    second.start()
    wait_until(lambda: second.report.standby_loops >= 3, "the second stands by")
    assert second.report.loops == 0 and second.state is WorkerState.STANDBY
    assert first.stop()
    wait_until(lambda: second.state is WorkerState.LEADING, "the second takes over")
    assert second.stop()
    provider.close()


def test_a_file_lease_is_held_by_one_holder_at_a_time(tmp_path: Path) -> None:
    one, two = FileLease(tmp_path / "db.workers.lock"), FileLease(tmp_path / "db.workers.lock")
    assert one.try_acquire() and one.try_acquire()
    assert not two.try_acquire()
    one.release()
    assert two.try_acquire()
    two.release()


@pytest.mark.postgres
def test_a_postgres_lease_is_held_by_one_session_at_a_time(postgres_url: str) -> None:
    database = fresh_postgres(postgres_url)
    one, two = lease_for(database), lease_for(database)
    assert isinstance(one, PostgresLease) and isinstance(two, PostgresLease)
    try:
        assert one.try_acquire() and one.try_acquire()
        assert not two.try_acquire()
        one.release()
        assert two.try_acquire()
    finally:
        one.release()
        two.release()
        database.dispose()


def test_serve_worker_stands_by_while_another_process_runs_the_workers(
    database: Database,
) -> None:
    held = lease_for(database)
    assert isinstance(held, FileLease) and held.try_acquire()  # as serve engine would
    try:
        args = ["serve", "worker", "--db", database.url, "--psp", "http://127.0.0.1:9",
                "--interval-s", "0", "--max-loops", "2"]  # fmt: skip
        result = CliRunner().invoke(cli_app, args)
    finally:
        held.release()
    assert result.exit_code == 0, result.output
    assert "0 loops, 2 standing by" in result.output


class Broken(Worker):
    def run_once(self, stop: threading.Event | None = None) -> Any:
        raise RuntimeError("a defect")


def test_a_worker_stopped_by_a_defect_makes_the_process_unhealthy(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    assert services.background is not None
    worker = services.background.worker
    services.background = BackgroundWorker(
        Broken(worker.engine, worker.recovery, worker.relay, worker.inbox),
        lease_for(services.engine.db), INTERVAL_S,
    )  # fmt: skip
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/healthz").status_code == 503, "unhealthy")
        assert client.get("/healthz").json() == {"status": "workers_failed"}
        assert samples(client)[("paychaos_worker_state", (("state", "failed"),))] == 1.0
    assert "the workers stopped on a defect" in caplog.text


def test_without_workers_metrics_say_so_and_payments_by_state_drop_to_zero(
    services: Services,
) -> None:
    services.background = None
    client = TestClient(create_app(services))
    pid = post(client, "/v1/payments", "c1", PAYMENT).json()["id"]
    assert samples(client)[("paychaos_payments", (("state", "created"),))] == 1.0
    assert post(client, f"/v1/payments/{pid}/cancel", "v1").json()["state"] == "canceled"
    found = samples(client)
    assert found[("paychaos_payments", (("state", "created"),))] == 0.0
    assert found[("paychaos_payments", (("state", "canceled"),))] == 1.0
    assert found[("paychaos_worker_state", (("state", "disabled"),))] == 1.0
    assert found[("paychaos_webhook_inbox", (("status", "dead"),))] == 0.0
    assert ("paychaos_worker_loops_total", (("role", "leader"),)) not in found


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--recovery-schedule-s", "soon"], "--recovery-schedule-s: comma-separated"),
        (["--recovery-schedule-s", "0,60"], "--recovery-schedule-s: each step above 0"),
        (["--recovery-schedule-s", "4", "--provider-timeout-s", "5"], "shorter than the provider"),
        (["--worker-interval-s", "0"], "--worker-interval-s"),
        (["--circuit-open-s", "-1"], "--circuit-open-s"),
    ],
)
def test_serve_engine_refuses_worker_settings_that_cannot_work(
    options: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "engine", "--db", "sqlite://", *options])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_worker_settings_travel_to_each_api_process_by_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ServiceSettings(workers=False, worker_interval_s=0.5,
                               recovery_schedule_s=(2.0, 10.0), circuit_open_s=3.0)  # fmt: skip
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert ServiceSettings.from_env() == settings
    assert ServiceSettings().recovery_schedule_s == tuple(
        step.total_seconds() for step in RECOVERY_SCHEDULE
    )
    assert timedelta(seconds=ServiceSettings().recovery_schedule_s[0]) == RECOVERY_SCHEDULE[0]
