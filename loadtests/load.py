"""``paychaos load``: locust against the real HTTP stack, then the invariants.

Starts the mock PSP and the engine on free 127.0.0.1 ports (subprocesses),
creates merchants and their API keys, runs locust headless for a bounded time,
lets the world settle (webhooks delivered, unknown attempts recovered by
lookup), stops everything, and checks the engine's database against the
provider's ground truth. Prints throughput, latency percentiles and the
invariant table; exits non-zero on a violation or a missed target.
"""

from __future__ import annotations

import csv
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from engine.adapters.api_keys import KeyStore
from engine.adapters.database import Database, upgrade
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.adapters.stripe_dialect import ENABLED_EVENTS
from engine.audit import audit
from engine.entrypoints.render import audit_table
from engine.entrypoints.system import RandomIds, SystemClock
from engine.service.driver import recover
from engine.service.engine import PaymentEngine
from mock_psp.background import free_socket

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
READY_S_MAX = 30.0
SETTLE_S_MAX = 120.0
POLL_S = 0.1
MERCHANTS = 4


@dataclass(slots=True)
class LoadResult:
    requests: int = 0
    failures: int = 0
    rps: float = 0.0
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)


def register_webhooks(psp_url: str, engine_url: str) -> str:
    """Register the engine's webhook endpoint on the mock PSP, for the event types
    the engine acts on; returns the signing secret."""
    body = {"url": f"{engine_url}/v1/webhooks/psp", "enabled_events": list(ENABLED_EVENTS)}
    answer = httpx.post(f"{psp_url}/_admin/webhook_endpoints", json=body, timeout=10.0)
    answer.raise_for_status()
    return str(answer.json()["secret"])


def free_port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_S_MAX
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(POLL_S)
    raise TimeoutError(f"{url} not ready after {READY_S_MAX}s")


@contextmanager
def running(args: list[str], env: dict[str, str], ready_url: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(ready_url, process)
            yield
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.entrypoints.cli", *args]


def make_keys(db_url: str) -> list[str]:
    database = Database(db_url)
    upgrade(database.engine)
    store, ids, now = KeyStore(database), RandomIds(), SystemClock().now()
    keys = []
    for number in range(MERCHANTS):
        secret = f"sk_{secrets.token_hex(24)}"
        store.create(ids.new_id("key"), f"m_load_{number}", "secret", secret, now)
        keys.append(secret)
    database.dispose()
    return keys


def settle(db_url: str, psp_url: str) -> None:
    """Let webhooks drain and recover every unknown attempt by lookup (bounded)."""
    deadline = time.monotonic() + SETTLE_S_MAX
    while time.monotonic() < deadline:
        stats = httpx.get(f"{psp_url}/_admin/webhooks", timeout=5.0).json()
        if not stats["pending"] and not stats["in_flight"]:
            break
        time.sleep(POLL_S)
    database = Database(db_url)
    engine = PaymentEngine(database, SystemClock(), RandomIds())
    provider = HttpProvider(psp_url, "sk_test_load", retry=RetryPolicy(attempts_max=3))
    while time.monotonic() < deadline:
        calls = engine.unresolved_attempts(timedelta(0), 100, awaiting_customer=False)
        if not calls:
            break
        recover(engine, provider, calls)
    provider.close()
    database.dispose()


def check(db_url: str, psp_url: str) -> tuple[list[Any], list[str]]:
    """The engine's own audit plus agreement with the provider's ground truth."""
    database = Database(db_url)
    with database.engine.connect() as connection:
        results = audit(connection)
        rows = connection.exec_driver_sql(
            "SELECT id, state, provider_payment_id, captured_minor, refunded_minor FROM payments"
        ).all()
        open_attempts = connection.exec_driver_sql(
            "SELECT count(*) FROM attempts WHERE status IN ('pending', 'unknown')"
        ).scalar_one()
    database.dispose()
    truth = httpx.get(f"{psp_url}/_admin/ground_truth", timeout=10.0).json()
    problems = [f"I7: {open_attempts} provider attempts still unresolved"] if open_attempts else []
    for payment_id, _state, pi_id, captured, refunded in rows:
        if pi_id is None:
            continue
        totals = truth["payment_intents"].get(pi_id, {})
        seen = (totals.get("captured", 0), totals.get("refunded", 0))
        if seen != (captured, refunded):
            problems.append(f"I7: {payment_id} engine {captured}/{refunded}, provider {seen}")
        if totals.get("successful_charge_count", 0) > 1:
            problems.append(f"I2: {pi_id} charged {totals['successful_charge_count']} times")
    intents = truth["payment_intents"]
    for order, by_currency in truth.get("orders", {}).items():
        for totals in by_currency.values():
            kept = [pi for pi in totals["payment_intents"] if intents[pi].get("captured", 0) > 0]
            if len(kept) > 1:
                problems.append(f"I2: order {order} captured on {len(kept)} intents")
    return results, problems


def read_stats(prefix: Path, result: LoadResult) -> None:
    with (prefix.parent / f"{prefix.name}_stats.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                result.requests = int(row["Request Count"])
                result.failures = int(row["Failure Count"])
                result.rps = float(row["Requests/s"])
                for label in ("50%", "95%", "99%"):
                    result.percentiles_ms[label] = float(row[label])


def run_load(
    console: Console,
    users: int,
    rate: float,
    duration_s: int,
    db_url: str | None,
    out_dir: Path,
    processes: int,
    expect_rps: float | None,
    expect_p99_ms: float | None,
) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="paychaos-load-"))
    db_url = db_url or f"sqlite:///{work / 'engine.db'}"
    keys = make_keys(db_url)
    psp_url = f"http://127.0.0.1:{free_port()}"
    engine_url = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "PAYCHAOS_LOAD_KEYS": ",".join(keys),
           "PAYCHAOS_LOAD_RATE_PER_USER": str(rate / max(users, 1))}  # fmt: skip
    result = LoadResult()
    with ExitStack() as stack:
        psp_port = psp_url.rsplit(":", 1)[1]
        stack.enter_context(running(cli("serve", "psp", "--port", psp_port, "--seed", "1"),
                                    env, f"{psp_url}/v1/balance", out_dir / "psp.log"))  # fmt: skip
        secret = register_webhooks(psp_url, engine_url)
        engine_env = {**env, "PAYCHAOS_WEBHOOK_SECRET": secret}
        engine_args = cli("serve", "engine", "--db", db_url, "--psp", psp_url, "--port",
                          engine_url.rsplit(":", 1)[1])  # fmt: skip
        stack.enter_context(running(engine_args, engine_env, f"{engine_url}/readyz",
                                    out_dir / "engine.log"))  # fmt: skip
        locust = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(users), "-r", str(max(1, users)), "-t", f"{duration_s}s",
            "--host", engine_url, "--csv", str(out_dir / "locust"),
            "--html", str(out_dir / "locust.html"), "--only-summary", "--stop-timeout", "10",
        ]  # fmt: skip
        if processes > 1:
            locust += ["--processes", str(processes)]
        console.print(f"locust: {users} users, about {rate:g} checkouts/s, for {duration_s} s")
        with (out_dir / "locust.log").open("wb") as locust_log:
            subprocess.run(
                locust, env=env, check=False, timeout=duration_s + 120,
                stdout=subprocess.DEVNULL, stderr=locust_log,
            )  # fmt: skip
        settle(db_url, psp_url)
        results, problems = check(db_url, psp_url)
    read_stats(out_dir / "locust", result)
    shutil.rmtree(work, ignore_errors=True)
    result.violations = [f"{r.invariant} {r.name}: {v}" for r in results for v in r.violations[:5]]
    result.violations += problems
    if expect_rps is not None and result.rps < expect_rps:
        result.missed.append(
            f"throughput {result.rps:.1f} req/s is below --expect-rps {expect_rps}"
        )
    p99 = result.percentiles_ms.get("99%")
    if expect_p99_ms is not None and (p99 is None or p99 > expect_p99_ms):
        result.missed.append(f"p99 {p99} ms is above --expect-p99-ms {expect_p99_ms}")
    print_result(console, result, results)
    return 1 if result.violations or result.missed else 0


def print_result(console: Console, result: LoadResult, results: list[Any]) -> None:
    table = Table(title="load", title_justify="left")
    for column in ("requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right")
    p = result.percentiles_ms
    table.add_row(
        str(result.requests), str(result.failures), f"{result.rps:.1f}",
        *(f"{p.get(label, float('nan')):.0f}" for label in ("50%", "95%", "99%")),
    )  # fmt: skip
    console.print(table)
    console.print(audit_table(results))
    for line in result.violations:
        console.print(f"[red]violation:[/] {line}")
    for line in result.missed:
        console.print(f"[red]target missed:[/] {line}")
    if not result.violations and not result.missed:
        console.print("[green]every invariant holds after the load[/]")
