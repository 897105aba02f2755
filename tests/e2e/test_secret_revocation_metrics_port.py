"""Issue 15, the HTTP surface: the webhook intake fails closed without a secret, a
revoked API key stops working in every process within a second, and ``/metrics``
lives on a listener of its own, never on the API's port.

The servers are real processes (``paychaos serve engine``) on ports chosen at run
time; every wait is a bounded poll.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from engine.adapters.api_keys import KeyStore
from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.adapters.webhook_signature import sign
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.api import Services, create_app
from engine.entrypoints.cli import app as cli_app
from engine.entrypoints.metrics import Metrics, MetricsListener
from engine.entrypoints.serve import INSECURE_WARNING
from engine.service.engine import PaymentEngine
from loadtests.load import cli, free_port
from tests.e2e.live_servers import (
    MERCHANT,
    READY_S_MAX,
    WEBHOOK_SECRET,
    engine_server,
    new_database,
    running,
    wait_until,
)

REVOKED_S_MAX = 10.0  # the poll's bound; the promise (api_keys.REVOCATION_S_MAX) is 1 s
EXIT_S_MAX = 60.0  # a server that refuses to start exits at once; this only bounds a hang
NOW = datetime(2026, 3, 1, tzinfo=UTC)
API_KEY = "sk_test_hardening_0123456789abcdef"
UNUSED_PSP = "http://127.0.0.1:9"  # no provider is called in these tests
EVENT = {
    "id": "evt_forged", "type": "payment_intent.canceled", "created": int(NOW.timestamp()),
    "data": {"object": {"id": "pi_nobody", "object": "payment_intent", "status": "canceled",
                        "metadata": {"payment_id": "pay_nobody"}}},
}  # fmt: skip


def environment_without_a_secret() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PAYCHAOS_WEBHOOK_SECRET", None)
    env.pop("PAYCHAOS_INSECURE_SKIP_WEBHOOK_VERIFICATION", None)
    return env


def migrated(tmp_path: Path) -> str:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    Database(db_url, migrate=True).dispose()
    return db_url


# -- 1. the webhook secret ----------------------------------------------------------------
def test_serve_engine_without_a_webhook_secret_exits_2_naming_the_option(tmp_path: Path) -> None:
    args = cli("serve", "engine", "--db", migrated(tmp_path), "--port", str(free_port()))
    result = subprocess.run(args, env=environment_without_a_secret(), capture_output=True,
                            text=True, timeout=EXIT_S_MAX, check=False)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "--webhook-secret" in output and "--insecure-skip-webhook-verification" in output
    assert "Traceback" not in output


def test_the_uvicorn_factory_without_a_webhook_secret_fails_to_start(tmp_path: Path) -> None:
    """``uvicorn --factory engine.entrypoints.serve:app_from_env``, as a deployment may run it."""
    env = {**environment_without_a_secret(), "PAYCHAOS_DB_URL": migrated(tmp_path)}
    args = [sys.executable, "-m", "uvicorn", "--factory", "engine.entrypoints.serve:app_from_env",
            "--port", str(free_port())]  # fmt: skip
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=EXIT_S_MAX,
                            check=False)  # fmt: skip
    assert result.returncode != 0
    assert "webhook_secret: a webhook signing secret is required" in result.stderr


def test_the_insecure_flag_starts_warns_in_every_process_and_takes_unsigned_webhooks(
    tmp_path: Path,
) -> None:
    db_url = migrated(tmp_path)
    engine = engine_server(tmp_path, db_url, UNUSED_PSP, "", "--workers", "2",
                           "--insecure-skip-webhook-verification")  # fmt: skip
    engine.env = environment_without_a_secret()
    with running(engine):
        # One warning per API process (each builds its own services), once each is up.
        wait_until(lambda: len(logged(engine.log, "WARNING", "paychaos.serve")) == 2,
                   "a warning from each process")  # fmt: skip
        assert f"WARNING: {INSECURE_WARNING}" in engine.log.read_text()  # and the CLI's own
        unsigned = httpx.post(f"{engine.url}/v1/webhooks/psp", json=EVENT, timeout=10.0)
        assert unsigned.status_code == 200, unsigned.text
        assert unsigned.json()["received"] is True


def logged(log: Path, level: str, logger: str) -> list[dict[str, Any]]:
    """The server's JSON log lines of ``level`` from ``logger``."""
    lines = []
    for text in log.read_text().splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            if line.get("levelname") == level and line.get("name") == logger:
                lines.append(line)
    return lines


@pytest.fixture
def services(sqlite_database: Database) -> Iterator[Services]:
    clock = FixedClock(NOW)
    engine = PaymentEngine(sqlite_database, clock, SeededIds(random.Random(4)))
    keys = KeyStore(sqlite_database)
    keys.create("key_1", "m_one", "secret", API_KEY, NOW)
    services = Services(engine, FakeProvider(), keys, clock, "whsec_real", Metrics())
    yield services
    services.close()


def test_an_event_signed_with_the_empty_key_is_refused_and_kept_nowhere(
    services: Services,
) -> None:
    """The finding: with an empty secret, a forged dispute moved money."""
    payload = json.dumps(EVENT).encode()
    forged = {"Stripe-Signature": sign(payload, "", int(NOW.timestamp()))}
    client = TestClient(create_app(services), raise_server_exceptions=False)
    refused = client.post("/v1/webhooks/psp", content=payload, headers=forged)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "webhook_signature_invalid"
    with services.engine.db.engine.connect() as connection:
        kept = connection.exec_driver_sql("SELECT count(*) FROM webhook_inbox").scalar_one()
    assert kept == 0


def test_services_without_a_secret_are_refused_unless_verification_is_skipped_by_name(
    services: Services,
) -> None:
    engine, keys, clock = services.engine, services.keys, services.clock
    with pytest.raises(AssertionError, match="no webhook secret"):
        Services(engine, FakeProvider(), keys, clock, "", Metrics())
    insecure = Services(engine, FakeProvider(), keys, clock, "", Metrics(),
                        skip_webhook_verification=True)  # fmt: skip
    client = TestClient(create_app(insecure), raise_server_exceptions=False)
    taken = client.post("/v1/webhooks/psp", content=json.dumps(EVENT).encode())
    assert taken.status_code == 200, taken.text


# -- 2. key revocation ---------------------------------------------------------------------
def refused_after_s(url: str, api_key: str, timeout_s: float) -> float | None:
    """Seconds until ``url`` answers 401 to the key (polled), or None if it never did."""
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {api_key}"}
    while time.monotonic() - started < timeout_s:
        if httpx.get(f"{url}/v1/balance", headers=headers, timeout=5.0).status_code == 401:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_a_revoked_key_is_refused_by_every_engine_process(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    api_key = new_database(db_url)  # the key "key_robust" of MERCHANT
    engines = []
    for name in ("a", "b"):  # two processes on one database, each with a log of its own
        (tmp_path / name).mkdir()
        engines.append(engine_server(tmp_path / name, db_url, UNUSED_PSP))
    headers = {"Authorization": f"Bearer {api_key}"}
    with running(*engines):
        for engine in engines:  # works on both, and each now holds it in its cache
            assert httpx.get(f"{engine.url}/v1/balance", headers=headers).status_code == 200
        revoked = subprocess.run(cli("keys", "revoke", "key_robust", "--db", db_url),
                                 capture_output=True, text=True, timeout=READY_S_MAX,
                                 check=False)  # fmt: skip
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        elapsed_s = {e.url: refused_after_s(e.url, api_key, REVOKED_S_MAX) for e in engines}
        assert None not in elapsed_s.values(), f"seconds to 401 after the CLI: {elapsed_s}"
    listed = CliRunner().invoke(cli_app, ["keys", "list", "--db", db_url, "--merchant", MERCHANT])
    assert listed.exit_code == 0 and "key_robust" in listed.output
    assert api_key not in listed.output and api_key[:12] in listed.output
    row = next(line for line in listed.output.splitlines() if "key_robust" in line)
    today = datetime.now(UTC).date().isoformat()
    assert row.count(today) == 2, row  # created, and revoked: today both


@pytest.mark.parametrize(
    ("key_id", "message"),
    [("key_robust", "already revoked"), ("key_nobody", "no API key"), ("", "KEY_ID")],
)
def test_revoking_an_unknown_or_revoked_key_exits_2_naming_key_id(
    tmp_path: Path, key_id: str, message: str
) -> None:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    new_database(db_url)
    runner = CliRunner()
    assert runner.invoke(cli_app, ["keys", "revoke", "key_robust", "--db", db_url]).exit_code == 0
    result = runner.invoke(cli_app, ["keys", "revoke", key_id, "--db", db_url])
    assert result.exit_code == 2, result.output
    assert "KEY_ID" in result.output and message in result.output
    assert "Traceback" not in result.output


# -- 3. /metrics on its own listener -------------------------------------------------------
def test_metrics_answer_on_their_own_port_and_404_on_the_api_port(tmp_path: Path) -> None:
    engine = engine_server(tmp_path, migrated(tmp_path), UNUSED_PSP)
    with running(engine):
        on_api = httpx.get(f"{engine.url}/metrics", timeout=10.0)
        assert on_api.status_code == 404 and on_api.json()["error"]["code"] == "not_found"
        scraped = httpx.get(f"{engine.metrics_url}/metrics", timeout=10.0)
        assert scraped.status_code == 200 and "paychaos_payments" in scraped.text
        assert scraped.headers["content-type"].startswith("text/plain")
        assert httpx.get(f"{engine.metrics_url}/v1/balance", timeout=10.0).status_code == 404
        assert f"metrics on {engine.metrics_url}/metrics" in engine.log.read_text()


def test_with_two_api_processes_the_first_to_start_serves_the_metrics(tmp_path: Path) -> None:
    engine = engine_server(tmp_path, migrated(tmp_path), UNUSED_PSP, WEBHOOK_SECRET,
                           "--workers", "2")  # fmt: skip
    with running(engine):
        wait_until(lambda: logged(engine.log, "INFO", "paychaos.metrics"), "the other standing by")
        scrapes = [httpx.get(f"{engine.metrics_url}/metrics", timeout=10.0) for _ in range(3)]
        assert {scrape.status_code for scrape in scrapes} == {200}
        assert httpx.get(f"{engine.url}/metrics", timeout=10.0).status_code == 404
    [standing_by] = logged(engine.log, "INFO", "paychaos.metrics")
    assert standing_by["message"] == "another API process serves the metrics"


def test_a_metrics_port_in_use_stops_one_process_but_not_a_sibling_of_a_shared_one() -> None:
    def render() -> tuple[bytes, str]:
        return b"", "text/plain"

    first = MetricsListener("127.0.0.1", 0, render)
    assert first.start() is True
    try:
        with pytest.raises(OSError):
            MetricsListener("127.0.0.1", first.port, render).start()
        assert MetricsListener("127.0.0.1", first.port, render, shared=True).start() is False
    finally:
        first.stop()


def test_the_app_binds_its_metrics_listener_at_startup_and_releases_it_at_shutdown(
    services: Services,
) -> None:
    listener = MetricsListener("127.0.0.1", 0, lambda: services.metrics.render(services))
    services.metrics_listener = listener
    with TestClient(create_app(services)) as client:
        assert client.get("/metrics").status_code == 404
        url = f"http://127.0.0.1:{listener.port}/metrics"
        assert 'paychaos_payments{state="created"} 0.0' in httpx.get(url, timeout=10.0).text
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--metrics-port", "8000", "--port", "8000"], "--metrics-port: must differ"),
        (["--metrics-port", "70000"], "--metrics-port: 0 (off)"),
        (["--metrics-port", "IN_USE"], "--metrics-port: cannot listen on 127.0.0.1:"),
        (["--metrics-port", "9464", "--metrics-host", "192.0.2.1"], "(--metrics-host)"),
        (["--workers", "0"], "--workers: between 1 and 64"),
    ],
)
def test_serve_engine_refuses_metrics_settings_that_cannot_work(
    options: list[str], message: str
) -> None:
    with socket.socket() as taken:  # a port some other program listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        in_use = str(taken.getsockname()[1])
        args = ["serve", "engine", "--db", "sqlite://", "--webhook-secret", "whsec_x",
                *(in_use if option == "IN_USE" else option for option in options)]  # fmt: skip
        result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
