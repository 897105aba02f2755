"""Prometheus metrics for the engine's API: one registry per app, no globals."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.adapters import schema as t
from engine.adapters.psp_http import CircuitState

CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


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
        self.provider_errors = Gauge(
            "paychaos_provider_errors", "Provider call failures by kind (since start)", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        self.circuit = Gauge(
            "paychaos_provider_circuit_state", "0 closed, 1 half-open, 2 open",
            registry=self.registry,
        )  # fmt: skip

    def render(self, services: Any) -> tuple[bytes, str]:
        """Refresh the gauges read from the database and the provider, then render."""
        with services.engine.db.engine.connect() as c:
            for state, count in c.execute(
                sa.select(t.payments.c.state, sa.func.count()).group_by(t.payments.c.state)
            ):
                self.payments.labels(state=state).set(count)
            unknown = c.execute(
                sa.select(sa.func.count())
                .select_from(t.attempts)
                .where(t.attempts.c.status.in_(("pending", "unknown")))
            ).scalar_one()
        self.unknown_attempts.set(unknown)
        stats = getattr(services.provider, "stats", None)
        if stats is not None:
            for kind, count in stats.failures.items():
                self.provider_errors.labels(kind=kind).set(count)
        breaker = getattr(services.provider, "breaker", None)
        if breaker is not None:
            self.circuit.set(CIRCUIT_VALUE[breaker.state])
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
