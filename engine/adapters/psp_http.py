"""The provider over HTTP: Stripe's dialect with httpx, retries and a circuit breaker.

Every call carries its attempt's provider idempotency key, so every retry is
safe: the provider answers a retried key with its first answer and never acts
twice. Retries are bounded, with exponential backoff and jitter, and only for
answers that say nothing about the outcome (a timeout, a broken connection,
409 in flight, 429, 502, 503, 504). A saved 500 is replayed for its key, so it
is not retried.

The circuit breaker (``engine.domain.breaker``, shared with the simulation)
opens after ``failures_max`` consecutive failures and then fails fast for
``open_s``: the call's outcome is ``unknown``, so the attempt waits for the
recovery worker; nothing is failed by guess. After ``open_s`` one trial call is
let through (half-open); a success closes the circuit.

The clock, the sleep and the random source are parameters, so tests and the
simulation drive this module without real time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from engine.adapters import stripe_dialect as dialect
from engine.domain.breaker import RETRYABLE_STATUS, CircuitBreaker, CircuitState, is_failure
from engine.domain.provider import EventPage, EventQuery, ProviderCall, ProviderOutcome

__all__ = [
    "RETRYABLE_STATUS", "CircuitBreaker", "CircuitState", "HttpProvider", "ProviderStats",
    "RetryPolicy",
]  # fmt: skip
RETRY_AFTER_S_MAX = 30.0


@dataclass(slots=True)
class RetryPolicy:
    attempts_max: int = 3  # the first try included
    backoff_s: float = 0.2
    backoff_factor: float = 2.0
    backoff_max_s: float = 5.0

    def delay_s(self, retry: int, rng: random.Random, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, RETRY_AFTER_S_MAX)
        base = min(self.backoff_s * self.backoff_factor**retry, self.backoff_max_s)
        return base * (0.5 + rng.random())  # jitter: spread retries of many clients


@dataclass(slots=True)
class ProviderStats:
    """Counters for metrics: calls, retries, failures by kind, fast failures."""

    calls: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    short_circuited: int = 0

    def fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


class HttpProvider:
    """The engine's provider over HTTP: ``call`` performs, ``lookup`` asks what happened,
    ``list_events`` lists the provider's events (an ``EventFeed``)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ):
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            headers={"Authorization": f"Bearer {api_key}"},
            transport=transport,
        )
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.stats = ProviderStats()

    def close(self) -> None:
        self.client.close()

    def call(self, call: ProviderCall) -> ProviderOutcome:
        request = dialect.request_for(call)
        status, body = self._send(
            request.method, request.path, request.params, request.idempotency_key
        )
        return dialect.outcome_from_response(call, status, body)

    def lookup(self, call: ProviderCall) -> ProviderOutcome:
        refresh = dialect.refresh_request(call)
        if refresh is not None:
            status, body = self._send(refresh.method, refresh.path, {}, None)
            if status is None or body is None:
                return dialect.UNKNOWN
            return dialect.outcome_from_response(call, status, body)
        status, body = self._send("GET", f"/_admin/idempotency/{call.idempotency_key}", {}, None)
        if status != 200 or body is None:
            return dialect.UNKNOWN  # the lookup itself failed: still unknown
        return dialect.outcome_from_lookup(call, body)

    def list_events(self, query: EventQuery) -> EventPage:
        """One page of the provider's events (``EventFeed``), retried and broken as calls are."""
        status, body = self._send("GET", dialect.EVENTS_PATH, dialect.events_params(query), None)
        return dialect.event_page(status, body)

    def _send(
        self, method: str, path: str, params: Mapping[str, str], key: str | None
    ) -> tuple[int | None, dict[str, Any] | None]:
        """One request with bounded retries; (None, None) when no answer came."""
        self.stats.calls += 1
        if not self.breaker.allow():
            self.stats.short_circuited += 1
            return None, None
        headers = {"Idempotency-Key": key} if key else {}
        for attempt in range(self.retry.attempts_max):
            status, body, retry_after_s = self._once(method, path, params, headers)
            self.breaker.record(status)
            if not is_failure(status) or status == 500:  # a 500 is saved for its key
                return status, body
            last = attempt + 1 == self.retry.attempts_max
            if last or not self.breaker.allow():
                return status, body
            self.stats.retries += 1
            self.sleep(self.retry.delay_s(attempt, self.rng, retry_after_s))
        return None, None

    def _once(
        self, method: str, path: str, params: Mapping[str, str], headers: dict[str, str]
    ) -> tuple[int | None, dict[str, Any] | None, float | None]:
        try:
            if method == "GET":
                response = self.client.get(path, params=dict(params), headers=headers)
            else:
                response = self.client.post(path, data=dict(params), headers=headers)
        except httpx.TimeoutException:
            self.stats.fail("timeout")
            return None, None, None
        except httpx.TransportError as exc:
            self.stats.fail(type(exc).__name__)
            return None, None, None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 500 or response.status_code == 429:
            self.stats.fail(f"http_{response.status_code}")
        retry_after = response.headers.get("Retry-After")
        retry_after_s = float(retry_after) if retry_after and retry_after.isdigit() else None
        return response.status_code, body if isinstance(body, dict) else None, retry_after_s
