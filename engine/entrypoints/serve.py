"""The composition root of the HTTP service: settings in, a ready FastAPI app out.

``uvicorn --factory engine.entrypoints.serve:app_from_env`` builds one app per
worker process from ``PAYCHAOS_*`` environment variables; ``paychaos serve
engine`` sets them and starts uvicorn.

Unless ``workers`` is off, each app also carries the engine's workers
(``engine.workers.background``), started and stopped by the app's lifespan;
with several processes on one database, one of them runs them at a time.

Fail closed: without a webhook signing secret nothing is built (``InsecureSettings``)
unless ``skip_webhook_verification`` says so by name, and then every process logs a
warning when it starts. ``/metrics`` is served only on ``metrics_port`` (0: not at all).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI

from engine.adapters.api_keys import PREFIXES, KeyInfo, KeyStore, Revoked
from engine.adapters.database import Database, check_schema
from engine.adapters.psp_http import CircuitBreaker, HttpProvider, RetryPolicy
from engine.adapters.urllib3_transport import Urllib3Transport
from engine.entrypoints import sqlite_turns
from engine.entrypoints.api import Services, create_app
from engine.entrypoints.http_guard import TokenBucket
from engine.entrypoints.logs import configure as configure_logs
from engine.entrypoints.metrics import Metrics, MetricsListener
from engine.entrypoints.system import RandomIds, SystemClock
from engine.service.engine import RECOVERY_SCHEDULE, EngineSettings, PaymentEngine
from engine.service.reconciliation import Reconciler
from engine.workers import BackgroundWorker, EventCatchUp, InProcessPublisher, Worker, lease_for
from engine.workers.inbox import SafetyNetInbox
from engine.workers.payouts import PayoutScheduler
from engine.workers.reconciliation import HttpReportSource, ReconciliationWorker

log = logging.getLogger("paychaos.serve")
DEFAULT_DB_URL = "sqlite:///paychaos.db"
DEFAULT_PSP_URL = "http://127.0.0.1:12111"
DEFAULT_RECOVERY_SCHEDULE_S = tuple(step.total_seconds() for step in RECOVERY_SCHEDULE)
RECOVERY_STEPS_MAX = 32
RECOVERY_STEP_S_MAX = 30 * 86_400.0
RECON_INTERVAL_S_MAX = 7 * 86_400.0
RECON_LATENESS_S = 300
# The event catch-up (``engine.workers.events``): a pass this often by default, and at
# most a day apart (the provider keeps its events 30 days; its retries stop after 3).
EVENTS_CATCH_UP_S = 300.0
EVENTS_CATCH_UP_S_MIN = 10.0
EVENTS_CATCH_UP_S_MAX = 86_400.0
# Threads for the engine's steps per API process: SQLite has one writer at a time, so
# more threads only wait; PostgreSQL runs steps side by side while others wait on I/O.
STEP_THREADS = {"sqlite": 1, "postgresql": 8}
INBOX_SAFETY_NET_S = 5.0
DEFAULT_METRICS_HOST = "127.0.0.1"
INSECURE_ENV = "PAYCHAOS_INSECURE_SKIP_WEBHOOK_VERIFICATION"
INSECURE_WARNING = (
    "webhook signatures are NOT verified (--insecure-skip-webhook-verification): anybody "
    "who can reach /v1/webhooks/psp can forge provider events and move money; "
    "never run this way outside a test"
)


class InsecureSettings(ValueError):
    """Settings that would leave the webhook intake open without saying so."""


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"60,300,3600"`` -> seconds between lookups; ValueError naming the problem."""
    try:
        steps = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise ValueError("comma-separated seconds, such as 60,300,3600") from exc
    if not 1 <= len(steps) <= RECOVERY_STEPS_MAX:
        raise ValueError(f"between 1 and {RECOVERY_STEPS_MAX} steps")
    if not all(0 < step <= RECOVERY_STEP_S_MAX for step in steps):
        raise ValueError(f"each step above 0 and at most {RECOVERY_STEP_S_MAX:.0f} seconds")
    return steps


def format_schedule(steps: tuple[float, ...]) -> str:
    return ",".join(f"{step:g}" for step in steps)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    db_url: str = DEFAULT_DB_URL
    psp_url: str = DEFAULT_PSP_URL
    psp_api_key: str = "sk_test_paychaos"
    webhook_secret: str = ""  # required unless skip_webhook_verification
    provider_timeout_s: float = 5.0
    rate_per_s: float = 100.0
    rate_burst: float = 200.0
    workers: bool = True
    worker_interval_s: float = 1.0
    recovery_schedule_s: tuple[float, ...] = DEFAULT_RECOVERY_SCHEDULE_S
    circuit_open_s: float = 30.0
    # Reconciliation windows (0: off): each reconciled recon_delay_s after it ends.
    recon_interval_s: float = 0.0
    recon_delay_s: float = 3_600.0
    # Scheduled payouts of every seller's available balance (0: off).
    payout_interval_s: float = 0.0
    # List the provider's events and take those whose webhooks never came (0: off).
    events_catch_up_s: float = EVENTS_CATCH_UP_S
    # Threads for the engine's steps per process (0: as suits the database, STEP_THREADS).
    step_threads: int = 0
    # Accept unsigned webhooks (tests only): never implied by a missing secret.
    skip_webhook_verification: bool = False
    # /metrics on a listener of its own (0: not served at all; never on the API's port).
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_port: int = 0
    # API processes of one server (serve engine --workers): the first to start binds
    # metrics_port, the others leave it to that one.
    api_processes: int = 1

    @classmethod
    def from_env(cls) -> ServiceSettings:
        env = os.environ
        text = env.get("PAYCHAOS_RECOVERY_SCHEDULE_S")
        schedule = parse_schedule(text) if text else DEFAULT_RECOVERY_SCHEDULE_S
        return cls(
            db_url=env.get("PAYCHAOS_DB_URL", DEFAULT_DB_URL),
            psp_url=env.get("PAYCHAOS_PSP_URL", DEFAULT_PSP_URL),
            psp_api_key=env.get("PAYCHAOS_PSP_API_KEY", "sk_test_paychaos"),
            webhook_secret=env.get("PAYCHAOS_WEBHOOK_SECRET", ""),
            provider_timeout_s=float(env.get("PAYCHAOS_PROVIDER_TIMEOUT_S", "5")),
            rate_per_s=float(env.get("PAYCHAOS_RATE_PER_S", "100")),
            rate_burst=float(env.get("PAYCHAOS_RATE_BURST", "200")),
            workers=env.get("PAYCHAOS_WORKERS", "1") != "0",
            worker_interval_s=float(env.get("PAYCHAOS_WORKER_INTERVAL_S", "1")),
            recovery_schedule_s=schedule,
            circuit_open_s=float(env.get("PAYCHAOS_CIRCUIT_OPEN_S", "30")),
            recon_interval_s=float(env.get("PAYCHAOS_RECON_INTERVAL_S", "0")),
            recon_delay_s=float(env.get("PAYCHAOS_RECON_DELAY_S", "3600")),
            payout_interval_s=float(env.get("PAYCHAOS_PAYOUT_INTERVAL_S", "0")),
            events_catch_up_s=float(env.get("PAYCHAOS_EVENTS_CATCH_UP_S", str(EVENTS_CATCH_UP_S))),
            step_threads=int(env.get("PAYCHAOS_STEP_THREADS", "0")),
            skip_webhook_verification=env.get(INSECURE_ENV) == "1",
            metrics_host=env.get("PAYCHAOS_METRICS_HOST", DEFAULT_METRICS_HOST),
            metrics_port=int(env.get("PAYCHAOS_METRICS_PORT", "0")),
            api_processes=int(env.get("PAYCHAOS_API_PROCESSES", "1")),
        )

    def to_env(self) -> dict[str, str]:
        return {
            "PAYCHAOS_DB_URL": self.db_url,
            "PAYCHAOS_PSP_URL": self.psp_url,
            "PAYCHAOS_PSP_API_KEY": self.psp_api_key,
            "PAYCHAOS_WEBHOOK_SECRET": self.webhook_secret,
            "PAYCHAOS_PROVIDER_TIMEOUT_S": str(self.provider_timeout_s),
            "PAYCHAOS_RATE_PER_S": str(self.rate_per_s),
            "PAYCHAOS_RATE_BURST": str(self.rate_burst),
            "PAYCHAOS_WORKERS": "1" if self.workers else "0",
            "PAYCHAOS_WORKER_INTERVAL_S": str(self.worker_interval_s),
            "PAYCHAOS_RECOVERY_SCHEDULE_S": format_schedule(self.recovery_schedule_s),
            "PAYCHAOS_CIRCUIT_OPEN_S": str(self.circuit_open_s),
            "PAYCHAOS_RECON_INTERVAL_S": str(self.recon_interval_s),
            "PAYCHAOS_RECON_DELAY_S": str(self.recon_delay_s),
            "PAYCHAOS_PAYOUT_INTERVAL_S": str(self.payout_interval_s),
            "PAYCHAOS_EVENTS_CATCH_UP_S": str(self.events_catch_up_s),
            "PAYCHAOS_STEP_THREADS": str(self.step_threads),
            INSECURE_ENV: "1" if self.skip_webhook_verification else "0",
            "PAYCHAOS_METRICS_HOST": self.metrics_host,
            "PAYCHAOS_METRICS_PORT": str(self.metrics_port),
            "PAYCHAOS_API_PROCESSES": str(self.api_processes),
        }

    def webhook_problem(self) -> str | None:
        """Why the webhook intake cannot be served as configured; None when it can."""
        if self.webhook_secret or self.skip_webhook_verification:
            return None
        return (
            "a webhook signing secret is required (--webhook-secret or "
            "PAYCHAOS_WEBHOOK_SECRET): without one any forged provider event would be taken "
            "as genuine. For a test only, --insecure-skip-webhook-verification accepts "
            "unsigned events"
        )

    def problem(self) -> tuple[str, str] | None:
        """The first setting that cannot work, as (setting, why); None when all can."""
        if self.recovery_schedule_s[0] < self.provider_timeout_s:
            # Not a money matter (a resend reuses the attempt's key), but a lookup of
            # a call still in flight races its own checkout for the answer.
            return "recovery_schedule_s", (
                "its first step is shorter than the provider timeout: recovery would ask "
                "about calls still in flight"
            )
        if not 0 < self.worker_interval_s <= 3_600:
            return "worker_interval_s", "above 0 and at most 3600 seconds"
        if not 0 < self.circuit_open_s <= 3_600:
            return "circuit_open_s", "above 0 and at most 3600 seconds"
        if not 0 <= self.step_threads <= 64:
            return "step_threads", "0 (as suits the database) to 64"
        if not 0 <= self.metrics_port <= 65_535:
            return "metrics_port", "0 (off) or a TCP port up to 65535"
        if not 1 <= self.api_processes <= 64:
            return "workers", "between 1 and 64"
        if not (self.payout_interval_s == 0 or 60 <= self.payout_interval_s <= 30 * 86_400):
            return "payout_interval_s", "0 (off), or 60 seconds to 30 days"
        catch_up = events_catch_up_problem(self.events_catch_up_s)
        if catch_up is not None:
            return catch_up
        return recon_problem(self.recon_interval_s, self.recon_delay_s)


def build_services(settings: ServiceSettings) -> Services:
    """Wire the engine, its provider, its keys and its workers; a stale schema is refused
    here, and so (``InsecureSettings``) is a webhook intake without a secret."""
    refused = settings.webhook_problem()
    if refused is not None:
        raise InsecureSettings(f"webhook_secret: {refused}")
    if settings.skip_webhook_verification:
        log.warning(INSECURE_WARNING)  # in every process, each time one starts
    database = Database(settings.db_url)
    check_schema(database.engine)
    sqlite_turns.install(database.engine)
    clock = SystemClock()
    schedule = tuple(timedelta(seconds=step) for step in settings.recovery_schedule_s)
    engine = PaymentEngine(database, clock, RandomIds(), EngineSettings(recovery_schedule=schedule))
    # One try within the timeout: a checkout never waits on retries; recovery retries.
    provider = HttpProvider(
        settings.psp_url, settings.psp_api_key, timeout_s=settings.provider_timeout_s,
        retry=RetryPolicy(attempts_max=1), breaker=CircuitBreaker(open_s=settings.circuit_open_s),
        transport=transport_for(settings.psp_url),
    )  # fmt: skip
    services = Services(
        engine, provider, KeyStore(database), clock, settings.webhook_secret, Metrics(),
        TokenBucket(settings.rate_per_s, settings.rate_burst),
        background=build_workers(engine, settings) if settings.workers else None,
        step_threads=settings.step_threads or STEP_THREADS.get(database.dialect, 4),
        skip_webhook_verification=settings.skip_webhook_verification,
    )  # fmt: skip
    if settings.metrics_port:
        services.metrics_listener = MetricsListener(
            settings.metrics_host, settings.metrics_port,
            functools.partial(services.metrics.render, services),
            shared=settings.api_processes > 1,
        )  # fmt: skip
    return services


def transport_for(psp_url: str) -> Urllib3Transport | None:
    """urllib3's keep-alive pools for a plain-HTTP provider (the mock PSP); httpx's own
    for anything else."""
    return Urllib3Transport() if psp_url.startswith("http://") else None


def recon_problem(interval_s: float, delay_s: float) -> tuple[str, str] | None:
    """Reconciliation's settings: off (0), or windows of a minute to a week."""
    if interval_s != 0 and not 60 <= interval_s <= RECON_INTERVAL_S_MAX:
        return "recon_interval_s", f"0 (off), or 60 to {RECON_INTERVAL_S_MAX:.0f} seconds"
    if not RECON_LATENESS_S <= delay_s <= RECON_INTERVAL_S_MAX:
        return "recon_delay_s", f"{RECON_LATENESS_S} to {RECON_INTERVAL_S_MAX:.0f} seconds"
    return None


def build_reconciliation(
    engine: PaymentEngine, settings: ServiceSettings
) -> ReconciliationWorker | None:
    """The scheduled reconciliation against the provider's report, when it is on."""
    if settings.recon_interval_s <= 0:
        return None
    source = HttpReportSource(settings.psp_url, settings.psp_api_key)
    reconciler = Reconciler(engine.db, engine.clock, engine.ids, engine)
    return ReconciliationWorker(
        reconciler, source, interval_s=settings.recon_interval_s,
        delay_s=settings.recon_delay_s, lateness_s=RECON_LATENESS_S,
    )  # fmt: skip


def events_catch_up_problem(every_s: float) -> tuple[str, str] | None:
    """The event catch-up's interval: off (0), or 10 seconds to a day."""
    if every_s != 0 and not EVENTS_CATCH_UP_S_MIN <= every_s <= EVENTS_CATCH_UP_S_MAX:
        return "events_catch_up_s", (
            f"0 (off), or {EVENTS_CATCH_UP_S_MIN:.0f} to {EVENTS_CATCH_UP_S_MAX:.0f} seconds"
        )
    return None


def build_catch_up(
    engine: PaymentEngine, provider: HttpProvider, every_s: float
) -> EventCatchUp | None:
    """The event catch-up over the workers' provider (its retries and breaker), when on."""
    return EventCatchUp(engine, provider, every_s=every_s) if every_s > 0 else None


def build_workers(engine: PaymentEngine, settings: ServiceSettings) -> BackgroundWorker:
    """The workers of ``paychaos serve worker``, on a thread, relaying to an in-process consumer."""
    # A provider of their own: lookups retry with the attempt's key (nobody waits on
    # them), and their breaker opens on what they see, not on checkouts'.
    provider = HttpProvider(
        settings.psp_url, settings.psp_api_key, timeout_s=settings.provider_timeout_s,
        breaker=CircuitBreaker(open_s=settings.circuit_open_s),
        transport=transport_for(settings.psp_url),
    )  # fmt: skip
    reconciliation = build_reconciliation(engine, settings)
    catch_up = build_catch_up(engine, provider, settings.events_catch_up_s)
    worker = Worker.assemble(engine, provider, InProcessPublisher(), reconciliation, catch_up)
    # The API applies each delivery as it takes it; the workers pick up what it missed.
    worker.inbox = SafetyNetInbox(
        engine, every_s=max(INBOX_SAFETY_NET_S, settings.worker_interval_s)
    )
    if settings.payout_interval_s > 0:
        worker.payouts = PayoutScheduler(engine, provider, settings.payout_interval_s)
    # Stopping waits at most for the lookup in flight and its resend: their tries and backoff.
    stop_s_max = 2 * provider.retry.attempts_max * (settings.provider_timeout_s + 1.0) + 1.0

    def close() -> None:
        provider.close()
        if reconciliation is not None:
            reconciliation.source.close()

    return BackgroundWorker(
        worker, lease_for(engine.db), settings.worker_interval_s, close=close,
        stop_s_max=stop_s_max,
    )  # fmt: skip


def app_from_env() -> FastAPI:
    configure_logs()
    return create_app(build_services(ServiceSettings.from_env()))


def new_api_key(database_url: str, merchant_id: str, kind: str) -> tuple[str, str]:
    """Create a key for a merchant; returns (key id, the key itself, shown only now)."""
    database = Database(database_url)
    check_schema(database.engine)
    secret = f"{PREFIXES[kind]}{secrets.token_hex(24)}"
    key_id = RandomIds().new_id("key")
    KeyStore(database).create(key_id, merchant_id, kind, secret, SystemClock().now())
    database.dispose()
    return key_id, secret


def revoke_api_key(database_url: str, key_id: str) -> Revoked:
    """Revoke a key now; every process refuses it within ``api_keys.REVOCATION_S_MAX``."""
    database = Database(database_url)
    try:
        check_schema(database.engine)
        return KeyStore(database).revoke(key_id, SystemClock().now())
    finally:
        database.dispose()


def list_api_keys(database_url: str, merchant_id: str | None) -> list[KeyInfo]:
    database = Database(database_url)
    try:
        check_schema(database.engine)
        return KeyStore(database).list_keys(merchant_id)
    finally:
        database.dispose()
