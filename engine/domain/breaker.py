"""The provider's circuit breaker: pure, on a clock its owner gives it.

One breaker stands between the engine and the provider wherever the engine calls
it: the HTTP adapter (``engine.adapters.psp_http.HttpProvider``) in the service,
the simulated world's provider calls in virtual time. The recovery policy asks
it too (``away``): while it is open, a lookup would be answered "unknown"
without asking anyone, so the batch waits for a later loop.

    CLOSED --failures_max consecutive failures--> OPEN --open_s later--> HALF_OPEN
    HALF_OPEN --its one trial call succeeds--> CLOSED
    HALF_OPEN --the trial fails--> OPEN

While open, calls fail fast: their outcome is ``unknown``, so each attempt waits
for the recovery worker; nothing is failed by guess. An answer counts as a
failure when it says nothing about the outcome or the provider is in trouble
(no answer, 5xx, 429, 409 in flight); any other answer is a success.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

# Answers that say nothing about the outcome: a retry with the same key may learn it.
RETRYABLE_STATUS = frozenset({409, 429, 502, 503, 504})


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def is_failure(status: int | None) -> bool:
    """Whether an answer (None: none came) counts against the provider."""
    return status is None or status >= 500 or status in RETRYABLE_STATUS


@dataclass(slots=True)
class CircuitBreaker:
    failures_max: int = 5
    open_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    opened_at_s: float = 0.0
    trial_in_flight: bool = False

    def allow(self) -> bool:
        """Whether a call may go out now (half-open: the one trial call)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN and self.clock() - self.opened_at_s >= self.open_s:
            self.state = CircuitState.HALF_OPEN
            self.trial_in_flight = False
        if self.state is CircuitState.HALF_OPEN and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def away(self) -> bool:
        """Open, and no trial call let through yet: every call would fail fast."""
        if self.state is not CircuitState.OPEN:
            return False
        return self.clock() - self.opened_at_s < self.open_s

    def record_success(self) -> None:
        self.state, self.failures, self.trial_in_flight = CircuitState.CLOSED, 0, False

    def record_failure(self) -> None:
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.failures_max:
            self.state, self.opened_at_s, self.trial_in_flight = (
                CircuitState.OPEN,
                self.clock(),
                False,
            )

    def record(self, status: int | None) -> bool:
        """Count an answer (None: none came); True when it opened the circuit."""
        if not is_failure(status):
            self.record_success()
            return False
        was_open = self.state is CircuitState.OPEN
        self.record_failure()
        return not was_open and self.state is CircuitState.OPEN
