"""Prometheus metrics for the engine's API and its workers: one registry per app, no globals.

Two sources, refreshed when ``/metrics`` is scraped:

- the database, so any process answers the same: payments by state, open
  (unknown) provider attempts and those flagged for review, the outbox backlog,
  the webhook inbox's backlog and dead letters;
- this process: request latency, webhook intake and lag, the provider
  adapters' errors and circuit state (``client="api"`` for checkouts,
  ``client="worker"`` for recovery lookups), and the workers' totals and last
  loop, which only the process running them has (``paychaos_worker_state``
  says which one that is; the others stand by).

With several API processes each keeps its own counters: a scrape sees one.

They are served by ``MetricsListener``, on a port of their own (``serve engine
--metrics-port``), never on the API's: what they tell (volumes, backlogs, the
provider's health) is for the operator's scraper, not for whoever reaches the API.
With ``--workers N`` one process binds that port, the first to start, and serves
every scrape; the others find it taken and stand by (a replacement of the one that
dies binds it again). So scrapes are not spread at random over the processes, as
SO_REUSEPORT would spread them: what is read from the database is the whole
service's, and this process's own counters are always the same process's (its
``paychaos_worker_state`` says whether it runs the workers). For every process's
counters, run several one-process engines, each with its own metrics port.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.adapters import schema as t
from engine.adapters.psp_http import CircuitState
from engine.domain.states import PaymentState
from engine.workers.background import BackgroundWorker, WorkerState

log = logging.getLogger("paychaos.metrics")
CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
INBOX_WAITING = ("pending", "dead")
METRICS_PATH = "/metrics"
SCRAPE_TIMEOUT_S = 10.0
LISTENER_STOP_S_MAX = 5.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "paychaos_http_request_duration_seconds", "API request latency",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )  # fmt: skip
        self.webhooks = Counter(
            "paychaos_webhooks_total", "Provider webhooks by outcome", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.webhook_lag = Histogram(
            "paychaos_webhook_lag_seconds", "Delay from the provider's event to its intake",
            registry=self.registry, buckets=(0.1, 1, 5, 30, 60, 300, 3600, 86400),
        )  # fmt: skip
        self.payments = Gauge(
            "paychaos_payments", "Payments by state", ["state"], registry=self.registry
        )
        self.unknown_attempts = Gauge(
            "paychaos_unknown_attempts", "Provider attempts whose outcome is not known yet",
            registry=self.registry,
        )  # fmt: skip
        self.review_attempts = Gauge(
            "paychaos_attempts_needing_review",
            "Open attempts the recovery schedule ran out on: never guessed, a person's job",
            registry=self.registry,
        )  # fmt: skip
        self.outbox_backlog = Gauge(
            "paychaos_outbox_backlog", "Outbox events not yet published", registry=self.registry
        )
        self.inbox = Gauge(
            "paychaos_webhook_inbox", "Stored webhooks waiting (pending) or given up on (dead)",
            ["status"], registry=self.registry,
        )  # fmt: skip
        self.inbox_oldest = Gauge(
            "paychaos_webhook_inbox_oldest_pending_seconds",
            "Age of the oldest stored webhook not applied yet (0 when none)",
            registry=self.registry,
        )  # fmt: skip
        self.circuit = Gauge(
            "paychaos_provider_circuit_state", "0 closed, 1 half-open, 2 open", ["client"],
            registry=self.registry,
        )  # fmt: skip
        self._process = _ProcessCollector()
        self.registry.register(self._process)

    def render(self, services: Any) -> tuple[bytes, str]:
        """Refresh what is read from the database and the providers, then render."""
        self._read_database(services)
        providers = {"api": services.provider}
        background: BackgroundWorker | None = getattr(services, "background", None)
        recovery = background.worker.recovery if background is not None else None
        if recovery is not None:
            providers["worker"] = recovery.provider
        for client, provider in providers.items():
            breaker = getattr(provider, "breaker", None)
            if breaker is not None:
                self.circuit.labels(client=client).set(CIRCUIT_VALUE[breaker.state])
        self._process.providers, self._process.background = providers, background
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _read_database(self, services: Any) -> None:
        a, w = t.attempts.c, t.webhook_inbox.c
        open_attempts = a.status.in_(("pending", "unknown"))
        with services.engine.db.engine.connect() as c:
            states = t.payments.c.state
            by_state = dict(
                c.execute(sa.select(states, sa.func.count()).group_by(states)).tuples().all()
            )
            flagged = sa.case((a.needs_review == sa.true(), 1), else_=0)
            unknown, review = c.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(flagged), 0)).where(
                    open_attempts
                )
            ).one()
            backlog = c.execute(
                sa.select(sa.func.count()).where(t.outbox.c.published_at.is_(None))
            ).scalar_one()
            inbox = dict(
                c.execute(
                    sa.select(w.status, sa.func.count()).where(w.status.in_(INBOX_WAITING))
                    .group_by(w.status)
                ).tuples().all()
            )  # fmt: skip
            oldest = c.execute(
                sa.select(sa.func.min(w.received_at)).where(w.status == "pending")
            ).scalar_one()
        for state in PaymentState:  # a state nobody is in any more reads 0, not its last count
            self.payments.labels(state=state.value).set(by_state.get(state.value, 0))
        self.unknown_attempts.set(unknown)
        self.review_attempts.set(review)
        self.outbox_backlog.set(backlog)
        for status in INBOX_WAITING:
            self.inbox.labels(status=status).set(inbox.get(status, 0))
        age_s = 0.0
        if oldest is not None:  # min() keeps the column's type: an aware UTC datetime
            age_s = max(0.0, (services.clock.now() - oldest).total_seconds())
        self.inbox_oldest.set(age_s)


class _ProcessCollector:
    """Totals kept by this process's objects, exposed as they are when scraped."""

    def __init__(self) -> None:
        self.providers: dict[str, Any] = {}
        self.background: BackgroundWorker | None = None

    def describe(self) -> list[Metric]:
        return []  # names are known only when scraped; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._provider_totals()
        yield from self._worker_state()
        if self.background is not None:
            yield from _worker_totals(self.background)

    def _provider_totals(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "paychaos_provider_errors", "Provider call failures by kind", labels=["client", "kind"]
        )
        short = CounterMetricFamily(
            "paychaos_provider_short_circuited",
            "Provider calls failed fast by an open circuit breaker", labels=["client"],
        )  # fmt: skip
        for client, provider in self.providers.items():
            stats = getattr(provider, "stats", None)
            if stats is None:
                continue
            for kind, count in sorted(dict(stats.failures).items()):  # a copy: others write
                errors.add_metric([client, kind], count)
            short.add_metric([client], stats.short_circuited)
        yield errors
        yield short

    def _worker_state(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "paychaos_worker_state",
            "1 for this process's workers' state: leading (runs them), standby (another "
            "process does), starting, stopped, failed, or disabled (--no-workers)",
            labels=["state"],
        )
        now = self.background.state.value if self.background is not None else "disabled"
        for name in (*(s.value for s in WorkerState), "disabled"):
            state.add_metric([name], 1.0 if name == now else 0.0)
        yield state


def _worker_totals(background: BackgroundWorker) -> Iterator[Metric]:
    r = background.report
    loops = CounterMetricFamily(
        "paychaos_worker_loops", "Worker loops, run (holding the lease) or stood by",
        labels=["role"],
    )  # fmt: skip
    loops.add_metric(["leader"], r.loops)
    loops.add_metric(["standby"], r.standby_loops)
    yield loops
    recovery = CounterMetricFamily(
        "paychaos_worker_recovery", "Recovery lookups by outcome: resolved, still unknown, "
        "resent (the provider never had it), deferred (circuit open)", labels=["outcome"],
    )  # fmt: skip
    for outcome, count in (("resolved", r.resolved), ("still_unknown", r.still_unknown),
                           ("resent", r.resent), ("deferred", r.deferred)):  # fmt: skip
        recovery.add_metric([outcome], count)
    yield recovery
    webhooks = CounterMetricFamily(
        "paychaos_worker_webhooks", "Inbox webhooks the worker applied, failed, dead-lettered",
        labels=["outcome"],
    )  # fmt: skip
    for outcome, count in (("applied", r.webhooks_applied), ("failed", r.webhooks_failed),
                           ("dead", r.webhooks_dead)):  # fmt: skip
        webhooks.add_metric([outcome], count)
    yield webhooks
    events = CounterMetricFamily(
        "paychaos_worker_events", "The event catch-up: provider events listed, taken as new "
        "(their webhooks never came), and passes a failed listing ended", labels=["outcome"],
    )  # fmt: skip
    for outcome, count in (("listed", r.events_listed), ("caught_up", r.events_caught_up),
                           ("failed_pass", r.event_passes_failed)):  # fmt: skip
        events.add_metric([outcome], count)
    yield events
    yield CounterMetricFamily(
        "paychaos_worker_outbox_published", "Outbox events relayed", value=r.published
    )
    yield CounterMetricFamily(
        "paychaos_worker_keys_expired", "Idempotency keys expired", value=r.keys_expired
    )
    skipped = CounterMetricFamily(
        "paychaos_worker_skipped", "Tasks skipped for a loop on transient trouble",
        labels=["task"],
    )  # fmt: skip
    for task, count in sorted(dict(r.errors).items()):
        skipped.add_metric([task], count)
    yield skipped
    last_at = r.last_loop_at.timestamp() if r.last_loop_at is not None else 0.0
    yield GaugeMetricFamily(
        "paychaos_worker_last_loop_timestamp_seconds", "When the last loop ended (0: none yet)",
        value=last_at,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "paychaos_worker_last_loop_duration_seconds", "How long the last loop took",
        value=r.last_loop_s,
    )  # fmt: skip


Render = Callable[[], tuple[bytes, str]]


class MetricsListener:
    """``GET /metrics`` on an address of its own, served by one thread of this process.

    The standard library's HTTP server, one scrape at a time: scrapes are seconds
    apart and each reads the database, so more threads would only queue there. The
    port is bound by ``start`` (the app's startup) and released by ``stop``. A port
    in use stops the server before it serves anything, unless the listener is
    ``shared`` by the processes of one ``serve engine``: then another of them has it.
    """

    def __init__(self, host: str, port: int, render: Render, shared: bool = False) -> None:
        assert 0 <= port <= 65_535
        self.host = host
        self.port = port
        self.render = render
        self.shared = shared
        self._server: _ScrapeServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """True when this process serves the metrics; False when a sibling process does."""
        assert self._server is None, "started twice"
        try:
            self._server = _ScrapeServer((self.host, self.port), self.render)
        except OSError as exc:
            if not (self.shared and exc.errno == errno.EADDRINUSE):
                raise
            log.info("another API process serves the metrics", extra={"port": self.port})
            return False
        self.port = self._server.server_address[1]  # the port bound, when 0 asked for any
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="paychaos-metrics", daemon=True
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.shutdown()  # waits for the scrape in progress (bounded by SCRAPE_TIMEOUT_S)
        server.server_close()
        thread.join(LISTENER_STOP_S_MAX)


class _ScrapeServer(HTTPServer):
    def __init__(self, address: tuple[str, int], render: Render) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.render = render
        super().__init__(address, _ScrapeHandler)


class _ScrapeHandler(BaseHTTPRequestHandler):
    server: _ScrapeServer
    timeout = SCRAPE_TIMEOUT_S  # a client that stalls holds the one thread this long at most

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != METRICS_PATH:
            self._answer(404, b"not found: metrics are at /metrics\n", "text/plain")
            return
        try:
            body, content_type = self.server.render()
        except Exception:  # the database away, say: the scraper sees a failed scrape
            log.exception("metrics scrape failed")
            self._answer(503, b"metrics unavailable\n", "text/plain")
            return
        self._answer(200, body, content_type)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a line per scrape on standard error is noise (failures are logged)."""
