"""A scenario's timeline in wall time, and its fault plan as live mode sends it.

A scenario's simulated duration may be hours, so live mode runs its timeline
``time_scale`` times faster: arrivals (the rate times the scale: the same
number of checkouts per simulated second), spikes, fault windows, think times,
the customers' 3DS delays and the provider's webhook delays and retry
schedule. Network latencies, timeouts and the clients' backoff stay real: they
are properties of the servers and of HTTP, not of the story.

The mock PSP counts fault windows from its own start, which a live run cannot
know, so live mode never sends a window: it switches the plan over the admin
API at each window's (scaled) edges, sending the rules open at that moment.

Engine faults (crashes, database outages, failed commits) cannot be caused
over HTTP; they are listed as not applied, never dropped in silence.
"""

from __future__ import annotations

from dataclasses import dataclass

from mock_psp.faults import FaultPlanConfig, WebhookFaultSpec, window_active
from scenarios.schema import Clients, EngineFaults, Scenario, Workers

TIME_SCALE_MIN = 1.0  # live mode runs the story as fast as written, or faster
TIME_SCALE_MAX = 10_000.0
DURATION_S_MAX = 3_600.0
REFILL_PER_S_MAX = 1_000_000.0


@dataclass(frozen=True, slots=True)
class Timeline:
    """Wall seconds of the run against simulated seconds of the scenario."""

    time_scale: float
    duration_s: float  # wall seconds of arrivals

    def __post_init__(self) -> None:
        assert TIME_SCALE_MIN <= self.time_scale <= TIME_SCALE_MAX, self.time_scale
        assert 0 < self.duration_s <= DURATION_S_MAX, self.duration_s

    def wall_s(self, simulated_s: float) -> float:
        return simulated_s / self.time_scale

    def simulated_s(self, wall_s: float) -> float:
        return wall_s * self.time_scale


def scaled_faults(plan: FaultPlanConfig, time_scale: float) -> FaultPlanConfig:
    """The plan with its story times divided by ``time_scale`` (latencies stay real).

    ``old_timestamp_age_s`` stays too: it must exceed the receiver's signature
    tolerance, a wall-clock property. A rate limit refills ``time_scale`` times
    faster, as the arrivals come that much faster.
    """
    data = plan.model_dump()
    for rule in data["api_rules"]:
        rule["windows"] = [_scaled(window, time_scale) for window in rule["windows"]]
    hooks = data["webhooks"]
    hooks["windows"] = [_scaled(window, time_scale) for window in hooks["windows"]]
    for name in ("delay_max_s", "reorder_window_s", "stale_replay_after_s"):
        hooks[name] /= time_scale
    retry = data["webhook_retry"]
    for name in ("first_retry_s", "retry_delay_max_s", "give_up_after_s"):
        retry[name] /= time_scale
    if data["rate_limit"] is not None:
        limit = data["rate_limit"]
        limit["refill_per_s"] = min(limit["refill_per_s"] * time_scale, REFILL_PER_S_MAX)
    return FaultPlanConfig.model_validate(data)


def _scaled(window: dict[str, float], time_scale: float) -> dict[str, float]:
    return {"start_s": window["start_s"] / time_scale, "end_s": window["end_s"] / time_scale}


def switch_times_s(plan: FaultPlanConfig) -> list[float]:
    """Every window edge of the plan after the start, in order: when to send the plan again."""
    edges = {
        edge
        for windows in [rule.windows for rule in plan.api_rules] + [plan.webhooks.windows]
        for window in windows
        for edge in (window.start_s, window.end_s)
        if edge > 0
    }
    return sorted(edges)


def faults_at(plan: FaultPlanConfig, t_s: float) -> FaultPlanConfig:
    """The plan as open at ``t_s`` seconds into the run, with no windows left in it."""
    rules = [
        rule.model_copy(update={"windows": []})
        for rule in plan.api_rules
        if window_active(rule.windows, t_s)
    ]
    hooks = plan.webhooks
    webhooks = (
        hooks.model_copy(update={"windows": []})
        if window_active(hooks.windows, t_s)
        else WebhookFaultSpec()
    )
    return plan.model_copy(update={"api_rules": rules, "webhooks": webhooks})


def quiet_faults(plan: FaultPlanConfig) -> FaultPlanConfig:
    """No fault at all for quiescence; deliveries keep the plan's (scaled) retry schedule."""
    return FaultPlanConfig(webhook_retry=plan.webhook_retry)


def not_applied(scenario: Scenario) -> list[str]:
    """What of the scenario a live run cannot do over HTTP, one sentence each."""
    faults = scenario.engine_faults
    notes = []
    if faults.crashes or faults.crash_rate_per_hour > 0:
        notes.append(
            "engine_faults.crashes: not applicable in live mode (an engine process cannot be "
            "crashed over its API; crash it yourself, e.g. kill and restart `paychaos serve "
            "engine`, while the run goes on)"
        )
    if faults.db_outages:
        notes.append(
            "engine_faults.db_outages: not applicable in live mode (the engine's database "
            "cannot be taken away over its API)"
        )
    if faults.commit_failure_rate > 0:
        notes.append(
            "engine_faults.commit_failure_rate: not applicable in live mode (commits happen "
            "inside the engine)"
        )
    marketplace = scenario.workload.marketplace
    if marketplace.split_rate > 0 or marketplace.payouts is not None:
        notes.append(
            "workload.marketplace: not applicable in live mode (the engine's HTTP API takes no "
            "split lines and no payouts; orders are sent whole)"
        )
    plan = scenario.fault_plan()
    if scenario.reconciliation is not None or plan.settlement != type(plan.settlement)():
        notes.append(
            "reconciliation and psp_faults.settlement: not applied in live mode (live mode "
            "reads no settlement report; run `paychaos recon run` on the engine's database)"
        )
    if plan.payouts.failure_rate > 0:
        notes.append("psp_faults.payouts: not applied in live mode (live mode makes no payouts)")
    if scenario.workers != Workers():
        notes.append(
            "workers: not applicable in live mode (the engine's own workers run on their own "
            "schedule)"
        )
    if scenario.clients.timeout_s != Clients().timeout_s:
        notes.append("clients.timeout_s: used as the HTTP client's timeout, capped at 60 s")
    return notes


def applicable(scenario: Scenario) -> Scenario:
    """The scenario without what live mode cannot apply, for the "declared faults fired"
    and expectation checks: engine faults, settlement faults and payout failures, and the
    paths ``coverage_min`` names (the simulation's: a live run's clients, scale and
    quiescence differ, so its paths are reported, not held to the world's counts)."""
    psp_faults = {
        k: v for k, v in scenario.psp_faults.items() if k not in ("settlement", "payouts")
    }
    expect = scenario.expect.model_copy(update={"coverage_min": {}})
    return scenario.model_copy(
        update={"engine_faults": EngineFaults(), "psp_faults": psp_faults, "reconciliation": None,
                "expect": expect}
    )  # fmt: skip
