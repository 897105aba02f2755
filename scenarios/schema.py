"""Scenario scripts: YAML files validated by a pydantic schema.

A bad file is refused before anything runs, with a message that names the
file, the field and what was expected (``ScenarioError``; the CLI exits 2).
Durations are seconds or strings such as ``90s``, ``30m``, ``2h``, ``1d``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from engine.domain.money import CURRENCY_EXPONENTS
from mock_psp.errors import FaultConfigError
from mock_psp.faults import FaultPlanConfig, parse_fault_config

DURATION_S_MAX = 30 * 86_400.0
PAYMENTS_MAX = 2_000_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0, None: 1.0}


class ScenarioError(Exception):
    """A scenario file that cannot run; the message names the file and the field."""


def parse_duration_s(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30m")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_S[match.group(2)]
    raise ValueError(f"a duration is a number of seconds or a string like 30m, not {value!r}")


DurationS = Annotated[float, BeforeValidator(parse_duration_s), Field(ge=0.0, le=DURATION_S_MAX)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Weight = Annotated[float, Field(ge=0.0, le=1_000_000.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Spike(_Strict):
    start_s: DurationS
    end_s: DurationS
    multiplier: float = Field(gt=0.0, le=1_000.0)

    @model_validator(mode="after")
    def _ordered(self) -> Spike:
        if self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self


class Arrivals(_Strict):
    rate_per_s: float = Field(default=1.0, gt=0.0, le=100_000.0)
    spikes: list[Spike] = Field(default_factory=list, max_length=100)


class Flows(_Strict):
    """Relative weights of what a customer's checkout does."""

    capture_full: Weight = 4.0
    capture_partial: Weight = 2.0
    automatic: Weight = 2.0
    void: Weight = 1.0
    three_ds: Weight = 0.0
    three_ds_abandon: Weight = 0.0
    decline: Weight = 0.5
    dispute: Weight = 0.0  # captured at once, then disputed by the cardholder
    refund_dispute: Weight = 0.0  # captured, refunded in full, then disputed all the same

    @model_validator(mode="after")
    def _some(self) -> Flows:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one flow needs a positive weight")
        return self


class Amounts(_Strict):
    median_minor: int = Field(default=5_000, ge=1, le=10**9)
    sigma: float = Field(default=0.8, ge=0.0, le=5.0)
    min_minor: int = Field(default=100, ge=1, le=10**9)
    max_minor: int = Field(default=500_000, ge=1, le=10**10)

    @model_validator(mode="after")
    def _ordered(self) -> Amounts:
        if self.min_minor > self.max_minor:
            raise ValueError("min_minor must not exceed max_minor")
        return self


class FeePlanSpec(_Strict):
    percent_bps: int = Field(default=1_000, ge=0, le=10_000)
    fixed_minor: int = Field(default=0, ge=0, le=10**9)


class PayoutSchedule(_Strict):
    """Sellers' payouts: every ``interval_s`` each seller asks for its available balance."""

    interval_s: DurationS = 300.0
    min_minor: int = Field(default=1, ge=1, le=10**9)
    # A seller that asks for more than it has (pending included): the engine must refuse.
    over_ask_rate: Probability = 0.0


class Marketplace(_Strict):
    """Split orders: a share of payments is split among several sellers."""

    split_rate: Probability = 0.0
    sellers: int = Field(default=20, ge=2, le=100_000)
    lines_max: int = Field(default=3, ge=2, le=50)
    fee_plans: list[FeePlanSpec] = Field(
        default_factory=lambda: [FeePlanSpec()], min_length=1, max_length=100
    )
    payouts: PayoutSchedule | None = None


class Workload(_Strict):
    arrivals: Arrivals = Field(default_factory=Arrivals)
    flows: Flows = Field(default_factory=Flows)
    amounts: Amounts = Field(default_factory=Amounts)
    currencies: dict[str, Weight] = Field(default_factory=lambda: {"USD": 1.0}, max_length=50)
    merchants: int = Field(default=5, ge=1, le=100_000)
    refund_rate: Probability = 0.3
    refunds_max: int = Field(default=2, ge=0, le=20)
    payments_max: int = Field(default=10_000, ge=1, le=PAYMENTS_MAX)
    think_time_s: DurationS = 5.0
    marketplace: Marketplace = Field(default_factory=Marketplace)
    # The merchant's dispute desk answers each dispute after a while; some are won.
    dispute_response_s: DurationS = 300.0
    dispute_win_rate: Probability = 0.5

    @model_validator(mode="after")
    def _known_currencies(self) -> Workload:
        unknown = sorted(set(self.currencies) - set(CURRENCY_EXPONENTS))
        if unknown:
            raise ValueError(f"unknown ISO 4217 currencies: {', '.join(unknown)}")
        if not any(weight > 0 for weight in self.currencies.values()):
            raise ValueError("at least one currency needs a positive weight")
        return self


class Clients(_Strict):
    """How a client behaves when the engine is slow, down or unclear."""

    timeout_s: DurationS = 30.0
    retries_max: int = Field(default=3, ge=0, le=20)
    backoff_s: DurationS = 2.0
    backoff_factor: float = Field(default=2.0, ge=1.0, le=10.0)
    new_key_resubmit_rate: Probability = 0.0  # a "double click": same order, a new key
    replay_rate: Probability = 0.05  # re-send a finished request with its key: same answer
    # ... and again at a random later time, up to ``late_replay_within_s`` after its answer
    late_replay_rate: Probability = 0.0
    late_replay_within_s: DurationS = 600.0
    # Once the world is quiet, a sample of each kind of finished request is sent again
    # (create, authorize, capture, void, refund): its answer must not have changed.
    quiescence_replays: int = Field(default=20, ge=0, le=10_000)  # per kind of request
    conflicting_replay_rate: Probability = 0.0  # the same key with another body: refused


class Window(_Strict):
    start_s: DurationS
    end_s: DurationS

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self


class Crash(_Strict):
    at_s: DurationS
    restart_after_s: DurationS = 30.0


class EngineFaults(_Strict):
    crashes: list[Crash] = Field(default_factory=list, max_length=1_000)
    crash_rate_per_hour: float = Field(default=0.0, ge=0.0, le=100.0)
    restart_after_s: DurationS = 30.0
    db_outages: list[Window] = Field(default_factory=list, max_length=1_000)
    commit_failure_rate: Probability = 0.0  # a step's commit fails: it must roll back whole


class Workers(_Strict):
    recovery_interval_s: DurationS = 60.0
    recovery_grace_s: DurationS = 30.0
    recovery_batch_max: int = Field(default=100, ge=1, le=10_000)
    webhook_poll_s: DurationS = 1.0
    key_expiry_interval_s: DurationS = 3_600.0
    # The event catch-up (``engine.workers.events``): a pass every events_catch_up_s
    # (0: off) over the provider's events older than events_grace_s (whole seconds;
    # younger ones are left to their delivery and its retries, as in production).
    events_catch_up_s: DurationS = 30.0
    events_grace_s: DurationS = Field(default=600.0, multiple_of=1.0)


class Reconciliation(_Strict):
    """The provider's settlement report reconciled on a schedule (``scenarios.reconcile``).

    Windows of ``interval_s`` from the start; each is reconciled ``delay_s`` after
    it ends (so that what the engine learns late is booked by then), with rows
    matched up to ``lateness_s`` from their movements, and up to ``booking_lag_s``
    after them when the engine booked the money late (a movement booked later than
    that after its row is found missing by the row's run, then paired when booked).
    All whole seconds.
    """

    interval_s: DurationS = 300.0
    delay_s: DurationS = 300.0
    lateness_s: DurationS = 120.0
    booking_lag_s: DurationS = 900.0
    amount_tolerance_minor: int = Field(default=0, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _consistent(self) -> Reconciliation:
        for name in ("interval_s", "delay_s", "lateness_s", "booking_lag_s"):
            if not float(getattr(self, name)).is_integer():
                raise ValueError(f"{name} is whole seconds")
        if self.interval_s < 60:
            raise ValueError("interval_s is at least 60 seconds")
        if self.lateness_s > self.interval_s:
            raise ValueError("lateness_s must not exceed interval_s")
        if self.delay_s < self.lateness_s:
            raise ValueError("delay_s must be at least lateness_s: rows that late are not in yet")
        return self


class Expect(_Strict):
    """Bounds a run must meet on top of the invariants."""

    payments_min: int = Field(default=1, ge=0)
    faults_fired: list[str] | Literal["declared"] = "declared"
    coverage_min: dict[str, int] = Field(default_factory=dict, max_length=100)
    # The run length ``coverage_min`` is counted for (default: the scenario's own
    # duration); a shorter run (``--duration``, a test) needs proportionally fewer.
    coverage_for_s: DurationS | None = None
    unresolved_max: int = Field(default=0, ge=0)


class Scenario(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = Field(default="", max_length=4_000)
    seed: int = Field(default=1, ge=0, le=2**63 - 1)
    duration_s: DurationS = 600.0
    quiescence_max_s: DurationS = 4 * 86_400.0
    provider_timeout_s: DurationS = 10.0
    workload: Workload = Field(default_factory=Workload)
    clients: Clients = Field(default_factory=Clients)
    psp_faults: dict[str, Any] = Field(default_factory=dict)
    engine_faults: EngineFaults = Field(default_factory=EngineFaults)
    workers: Workers = Field(default_factory=Workers)
    reconciliation: Reconciliation | None = None  # off unless the scenario asks for it
    expect: Expect = Field(default_factory=Expect)

    def fault_plan(self) -> FaultPlanConfig:
        return parse_fault_config(self.psp_faults)

    @model_validator(mode="before")
    @classmethod
    def _coverage_for_own_duration(cls, data: Any) -> Any:
        expect = data.get("expect") if isinstance(data, dict) else None
        if isinstance(expect, dict) and expect.get("coverage_for_s") is None:
            duration = data.get("duration_s", 600.0)
            return {**data, "expect": {**expect, "coverage_for_s": duration}}
        return data

    @model_validator(mode="after")
    def _valid_fault_plan(self) -> Scenario:
        try:
            self.fault_plan()
        except FaultConfigError as exc:
            raise ValueError(f"psp_faults.{exc}") from exc
        return self

    @model_validator(mode="after")
    def _late_rows_detectable(self) -> Scenario:
        """A late row must land beyond its movement's window and the lateness, or no
        reconciliation could tell it from a punctual one."""
        recon, spec = self.reconciliation, self.fault_plan().settlement
        if recon is None or spec.late_row_rate == 0:
            return self
        needed_s = recon.interval_s + 2 * recon.lateness_s
        if spec.late_by_s < needed_s:
            raise ValueError(
                f"psp_faults.settlement.late_by_s: at least reconciliation.interval_s + "
                f"2 x lateness_s ({needed_s:g}), or a late row is matched as punctual"
            )
        return self


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required field is missing"
    return f"{where}: {message}"


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping of fields at the top level")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors()[:5])
        raise ScenarioError(f"{source}: {problems}") from None


def load_scenario(path: str | Path) -> Scenario:
    """A scenario file, or a shipped scenario by its name (``webhook-storm``)."""
    path = Path(path)
    shipped = LIBRARY / f"{path.name}.yaml"
    if not path.exists() and path.parent == Path(".") and not path.suffix and shipped.exists():
        path = shipped
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScenarioError(f"{path}: not valid YAML{where}") from None
    return parse_scenario(data, str(path))


LIBRARY = Path(__file__).parent / "library"


def library_paths() -> list[Path]:
    return sorted(LIBRARY.glob("*.yaml"))
