"""The seeded fault plan: its config (pydantic, so a bad config names the field) and the
API-side decisions drawn from it.

Times in windows are seconds of provider time since the provider started (or was
reset), so a scenario can say "an outage from t=60 s to t=120 s" whatever the epoch.
Every probability is drawn from the plan's own seeded stream; a request always draws
the same number of values, so the same seed and request sequence give the same
decisions. Example (a 503 outage of /confirm between 60 s and 120 s)::

    {"api_rules": [{"endpoints": ["payment_intents.confirm"], "error_503_rate": 1.0,
                    "windows": [{"start_s": 60, "end_s": 120}]}]}
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from statistics import NormalDist
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mock_psp.errors import FaultConfigError
from mock_psp.testcards import DECLINES_BY_CODE, Decline

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
LATENCY_MS_MAX = 600_000.0
WINDOW_S_MAX = 10 * 365 * 86_400.0
RULES_MAX = 64
Z_99 = 2.3263478740408408  # the standard normal quantile at 0.99
_STANDARD_NORMAL = NormalDist()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencySpec(_Strict):
    kind: Literal["none", "fixed", "uniform", "lognormal"] = "none"
    fixed_ms: float = Field(default=0.0, ge=0.0, le=LATENCY_MS_MAX)
    min_ms: float = Field(default=0.0, ge=0.0, le=LATENCY_MS_MAX)
    max_ms: float = Field(default=0.0, ge=0.0, le=LATENCY_MS_MAX)
    p50_ms: float = Field(default=50.0, gt=0.0, le=LATENCY_MS_MAX)
    p99_ms: float = Field(default=500.0, gt=0.0, le=LATENCY_MS_MAX)
    cap_ms: float = Field(default=60_000.0, gt=0.0, le=LATENCY_MS_MAX)

    @model_validator(mode="after")
    def _ordered(self) -> LatencySpec:
        if self.min_ms > self.max_ms and self.kind == "uniform":
            raise ValueError("min_ms must not exceed max_ms")
        if self.p99_ms < self.p50_ms:
            raise ValueError("p99_ms must not be below p50_ms")
        return self

    def sample_s(self, rng: random.Random) -> float:
        # One draw whatever the kind, so switching kinds does not shift later decisions.
        u = rng.random()
        if self.kind == "none":
            delay_ms = 0.0
        elif self.kind == "fixed":
            delay_ms = self.fixed_ms
        elif self.kind == "uniform":
            delay_ms = self.min_ms + (self.max_ms - self.min_ms) * u
        else:
            mu = math.log(self.p50_ms)
            sigma = (math.log(self.p99_ms) - mu) / Z_99
            delay_ms = math.exp(mu + sigma * _normal_quantile(u))
        return min(delay_ms, self.cap_ms) / 1000.0


def _normal_quantile(u: float) -> float:
    """Inverse of the standard normal CDF (one uniform in, one normal out)."""
    clamped = min(max(u, 1e-12), 1.0 - 1e-12)
    return _STANDARD_NORMAL.inv_cdf(clamped)


class TimeWindow(_Strict):
    start_s: float = Field(ge=0.0, le=WINDOW_S_MAX)
    end_s: float = Field(ge=0.0, le=WINDOW_S_MAX)

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindow:
        if self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self

    def contains(self, elapsed_s: float) -> bool:
        return self.start_s <= elapsed_s < self.end_s


def window_active(windows: list[TimeWindow], elapsed_s: float) -> bool:
    return not windows or any(window.contains(elapsed_s) for window in windows)


def name_matches(patterns: list[str], name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


class ApiFaultRule(_Strict):
    endpoints: list[str] = Field(default_factory=lambda: ["*"], max_length=64)
    windows: list[TimeWindow] = Field(default_factory=list, max_length=64)
    latency: LatencySpec | None = None
    timeout_before_rate: Probability = 0.0
    timeout_after_rate: Probability = 0.0
    error_500_rate: Probability = 0.0
    error_503_rate: Probability = 0.0
    decline_rate: Probability = 0.0
    decline_code: str = "generic_decline"

    @model_validator(mode="after")
    def _known_decline(self) -> ApiFaultRule:
        if self.decline_code not in DECLINES_BY_CODE:
            raise ValueError(f"decline_code must be one of {', '.join(sorted(DECLINES_BY_CODE))}")
        return self


class RateLimitSpec(_Strict):
    capacity: int = Field(default=100, ge=1, le=1_000_000)
    refill_per_s: float = Field(default=100.0, gt=0.0, le=1_000_000.0)
    endpoints: list[str] = Field(default_factory=lambda: ["*"], max_length=64)


class LateArrivalSpec(_Strict):
    """Requests the provider did not answer that reach it later all the same.

    A request lost on the way in (a timeout before processing) or refused at the edge
    (429, 503) is, at ``rate``, parked and processed ``delay_min_s``..``delay_max_s``
    later, as if a queue or a slow network hop had held it: by then a lookup by its
    idempotency key may have said "not found". Only requests that change something
    (those that carry an idempotency key) arrive late; on arrival the provider's
    idempotency applies as to any request, so a resend with the same key and the late
    arrival make one object between them.
    """

    rate: Probability = 0.0
    delay_min_s: float = Field(default=5.0, ge=0.0, le=86_400.0)
    delay_max_s: float = Field(default=120.0, ge=0.0, le=86_400.0)
    endpoints: list[str] = Field(default_factory=lambda: ["*"], max_length=64)

    @model_validator(mode="after")
    def _ordered(self) -> LateArrivalSpec:
        if self.delay_max_s < self.delay_min_s:
            raise ValueError("delay_max_s must not be below delay_min_s")
        return self


class WebhookFaultSpec(_Strict):
    event_types: list[str] = Field(default_factory=lambda: ["*"], max_length=64)
    windows: list[TimeWindow] = Field(default_factory=list, max_length=64)
    drop_attempt_rate: Probability = 0.0
    permanent_loss_rate: Probability = 0.0
    duplicate_rate: Probability = 0.0
    delay_rate: Probability = 0.0
    delay_max_s: float = Field(default=300.0, ge=0.0, le=86_400.0)
    reorder_rate: Probability = 0.0
    reorder_window_s: float = Field(default=60.0, ge=0.0, le=3_600.0)
    stale_replay_rate: Probability = 0.0
    stale_replay_after_s: float = Field(default=600.0, ge=0.0, le=7 * 86_400.0)
    forged_rate: Probability = 0.0
    old_timestamp_rate: Probability = 0.0
    old_timestamp_age_s: float = Field(default=3_600.0, ge=301.0, le=30 * 86_400.0)


class WebhookRetrySpec(_Strict):
    """Stripe retries a failed delivery with exponential backoff for up to three days."""

    attempts_max: int = Field(default=16, ge=1, le=100)
    first_retry_s: float = Field(default=60.0, gt=0.0, le=86_400.0)
    backoff_factor: float = Field(default=2.0, ge=1.0, le=10.0)
    retry_delay_max_s: float = Field(default=12 * 3_600.0, gt=0.0, le=3 * 86_400.0)
    give_up_after_s: float = Field(default=3 * 86_400.0, gt=0.0, le=30 * 86_400.0)


class SettlementFaultSpec(_Strict):
    missing_row_rate: Probability = 0.0
    amount_mismatch_rate: Probability = 0.0
    mismatch_delta_minor: int = Field(default=1, ge=1, le=1_000_000)
    unexpected_row_count: int = Field(default=0, ge=0, le=1_000)
    late_row_rate: Probability = 0.0
    late_by_s: float = Field(default=86_400.0, gt=0.0, le=30 * 86_400.0)
    # Per download of a report: served garbled (cut short, or one row with a value no
    # parser can read) or not ready (503). The next download of the span is drawn anew.
    garbled_rate: Probability = 0.0
    unavailable_rate: Probability = 0.0


class PayoutFaultSpec(_Strict):
    # A payout that reaches its arrival date fails instead (the bank refused it):
    # ``payout.failed``, and the money goes back to the provider balance.
    failure_rate: Probability = 0.0


class FaultPlanConfig(_Strict):
    api_latency: LatencySpec = Field(default_factory=LatencySpec)
    api_rules: list[ApiFaultRule] = Field(default_factory=list, max_length=RULES_MAX)
    rate_limit: RateLimitSpec | None = None
    late_arrivals: LateArrivalSpec = Field(default_factory=LateArrivalSpec)
    webhooks: WebhookFaultSpec = Field(default_factory=WebhookFaultSpec)
    webhook_retry: WebhookRetrySpec = Field(default_factory=WebhookRetrySpec)
    settlement: SettlementFaultSpec = Field(default_factory=SettlementFaultSpec)
    payouts: PayoutFaultSpec = Field(default_factory=PayoutFaultSpec)


def parse_fault_config(data: Mapping[str, Any]) -> FaultPlanConfig:
    """Validate a fault plan; the first problem becomes a ``FaultConfigError`` naming its field."""
    try:
        return FaultPlanConfig.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "faults"
        raise FaultConfigError(field, first["msg"]) from exc


@dataclass(frozen=True, slots=True)
class ApiFaultDecision:
    """What the plan decided for one API request, before the provider runs it."""

    endpoint: str
    latency_s: float
    timeout_before: bool = False
    rate_limited: bool = False
    server_error_status: int | None = None  # 500 or 503
    timeout_after: bool = False
    decline: Decline | None = None

    @property
    def processed(self) -> bool:
        """Whether the provider gets to run the request at all."""
        return not (self.timeout_before or self.rate_limited or self.server_error_status == 503)


class TokenBucket:
    """Rate limiting in provider time: ``capacity`` requests of burst, refilled linearly."""

    __slots__ = ("_last_s", "_spec", "_tokens")

    def __init__(self, spec: RateLimitSpec, now_s: float) -> None:
        self._spec = spec
        self._tokens = float(spec.capacity)
        self._last_s = now_s

    def take(self, now_s: float) -> bool:
        elapsed_s = max(0.0, now_s - self._last_s)
        self._tokens = min(self._spec.capacity, self._tokens + elapsed_s * self._spec.refill_per_s)
        self._last_s = max(self._last_s, now_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ApiFaultPlanner:
    """Draws per-request API faults from the config and a seeded stream."""

    __slots__ = ("_bucket", "_config", "_late_rng", "_rng", "_started_at_s")

    def __init__(
        self,
        config: FaultPlanConfig,
        rng: random.Random,
        started_at_s: float,
        late_rng: random.Random | None = None,
    ) -> None:
        self._rng = rng
        # Late arrivals draw from a stream of their own, and only for unanswered
        # requests: turning them on does not shift any other decision of a run.
        self._late_rng = late_rng if late_rng is not None else random.Random("late-arrivals")
        self._started_at_s = started_at_s
        self._config = config
        self._bucket: TokenBucket | None = None
        self.reconfigure(config, started_at_s)

    @property
    def config(self) -> FaultPlanConfig:
        return self._config

    def reconfigure(self, config: FaultPlanConfig, now_s: float) -> None:
        self._config = config
        spec = config.rate_limit
        self._bucket = None if spec is None else TokenBucket(spec, now_s)

    def restart(self, now_s: float) -> None:
        """Windows count from here again (after a reset)."""
        self._started_at_s = now_s
        self.reconfigure(self._config, now_s)

    def elapsed_s(self, now_s: float) -> float:
        return now_s - self._started_at_s

    def decide(self, endpoint: str, now_s: float) -> ApiFaultDecision:
        elapsed_s = self.elapsed_s(now_s)
        rules = [
            rule
            for rule in self._config.api_rules
            if name_matches(rule.endpoints, endpoint) and window_active(rule.windows, elapsed_s)
        ]
        latency = next((r.latency for r in rules if r.latency is not None), None)
        latency_s = (latency or self._config.api_latency).sample_s(self._rng)
        fired = {name: False for name in ("before", "after", "e500", "e503", "decline")}
        decline: Decline | None = None
        for rule in rules:
            draws = [self._rng.random() for _ in range(5)]
            fired["before"] |= draws[0] < rule.timeout_before_rate
            fired["after"] |= draws[1] < rule.timeout_after_rate
            fired["e500"] |= draws[2] < rule.error_500_rate
            fired["e503"] |= draws[3] < rule.error_503_rate
            if decline is None and draws[4] < rule.decline_rate:
                decline = DECLINES_BY_CODE[rule.decline_code]
        return self._resolve(endpoint, now_s, latency_s, fired, decline)

    def late_arrival_s(self, endpoint: str) -> float | None:
        """For a request left unanswered: after how long it reaches the provider all
        the same, or None (it is lost for good). Two draws whenever the rate is on."""
        spec = self._config.late_arrivals
        if spec.rate <= 0 or not name_matches(spec.endpoints, endpoint):
            return None
        fires, u = self._late_rng.random() < spec.rate, self._late_rng.random()
        return spec.delay_min_s + (spec.delay_max_s - spec.delay_min_s) * u if fires else None

    def _resolve(
        self,
        endpoint: str,
        now_s: float,
        latency_s: float,
        fired: dict[str, bool],
        decline: Decline | None,
    ) -> ApiFaultDecision:
        # Precedence follows where each fault happens on the way in: the network loses the
        # request first, then the edge rate-limits or sheds load, then the API fails.
        if fired["before"]:
            return ApiFaultDecision(endpoint, latency_s, timeout_before=True)
        limited = (
            self._bucket is not None
            and self._config.rate_limit is not None
            and name_matches(self._config.rate_limit.endpoints, endpoint)
            and not self._bucket.take(now_s)
        )
        if limited:
            return ApiFaultDecision(endpoint, latency_s, rate_limited=True)
        if fired["e503"]:
            return ApiFaultDecision(endpoint, latency_s, server_error_status=503)
        if fired["e500"]:
            return ApiFaultDecision(endpoint, latency_s, server_error_status=500)
        return ApiFaultDecision(endpoint, latency_s, timeout_after=fired["after"], decline=decline)
