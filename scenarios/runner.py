"""Run a scenario: workload under faults, then quiescence, then the oracles.

After the scenario's duration the faults stop (the provider's fault plan is
cleared, the engine stops crashing), arrivals end, and the workers run until
nothing is left to do: no checkout in progress, no unresolved provider attempt,
no webhook waiting for delivery and no event the catch-up has yet to read
(bounded by ``quiescence_max_s``). Only
then are the invariants checked.
"""

from __future__ import annotations

import itertools
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.adapters.database import scratch_database
from mock_psp.faults import FaultPlanConfig
from scenarios.clients import Clients
from scenarios.oracles import Invariant, payment_trace, run_oracles
from scenarios.reconcile import reconcile_at_quiescence, start_reconciliation
from scenarios.schema import Scenario
from scenarios.world import EPOCH_S, Step, World

QUIESCENCE_POLL_S = 60.0
TRACED_PAYMENTS_MAX = 10


# A run's verdict. Failed: an invariant was violated or a real expectation was not
# met (too few payments, a path not reached, no quiescence). Inconclusive: nothing
# failed, but a declared fault never fired, so the run proves nothing about it
# (another seed may). Passed: neither.
PASSED = "passed"
FAILED = "failed"
INCONCLUSIVE = "inconclusive"
STATUS_ORDER = (PASSED, INCONCLUSIVE, FAILED)  # worst last


def worst_status(statuses: Sequence[str]) -> str:
    return max(statuses, key=STATUS_ORDER.index, default=PASSED)


@dataclass(slots=True)
class RunResult:
    scenario: Scenario
    seed: int
    invariants: list[Invariant]
    problems: list[str]  # expectations not met, each fails the run: too few payments, ...
    report: dict[str, Any]
    trace: list[dict[str, Any]] = field(default_factory=list)
    client_latencies_s: list[float] = field(default_factory=list)  # raw, for merging shards
    unfired: list[str] = field(default_factory=list)  # declared faults that never fired

    @property
    def status(self) -> str:
        return run_status(self.invariants, self.problems, self.unfired)

    @property
    def ok(self) -> bool:
        """Passed: every invariant held, every expectation was met, every declared fault fired."""
        return self.status == PASSED

    @property
    def inconclusive(self) -> list[str]:
        """Why the run proves less than it should (empty unless a declared fault never fired)."""
        return [unfired_reason(kind) for kind in self.unfired]

    @property
    def violated(self) -> list[Invariant]:
        return [inv for inv in self.invariants if not inv.ok]


def run_status(
    invariants: Sequence[Invariant], problems: Sequence[str], unfired: Sequence[str]
) -> str:
    if problems or not all(inv.ok for inv in invariants):
        return FAILED
    return INCONCLUSIVE if unfired else PASSED


def declared_faults(scenario: Scenario) -> list[str]:
    """The fault kinds a scenario asks for; a run in which one never fired is inconclusive."""
    plan = scenario.fault_plan()
    declared: set[str] = set()
    rule_faults = {
        "timeout_before_rate": "api.timeout_before",
        "timeout_after_rate": "api.timeout_after",
        "error_500_rate": "api.http_500",
        "error_503_rate": "api.http_503",
        "decline_rate": "api.extra_decline",
    }
    for rule in plan.api_rules:
        declared |= {kind for name, kind in rule_faults.items() if getattr(rule, name) > 0}
    if plan.rate_limit is not None:
        declared.add("api.http_429")
    if plan.late_arrivals.rate > 0:
        declared.add("api.late_arrival")
    webhook_faults = {
        "drop_attempt_rate": "webhook.drop_attempt",
        "permanent_loss_rate": "webhook.permanent_loss",
        "duplicate_rate": "webhook.duplicate",
        "delay_rate": "webhook.delay",
        "reorder_rate": "webhook.reorder",
        "stale_replay_rate": "webhook.stale_replay",
        "forged_rate": "webhook.forged",
        "old_timestamp_rate": "webhook.old_timestamp",
    }
    declared |= {kind for name, kind in webhook_faults.items() if getattr(plan.webhooks, name) > 0}
    settlement_faults = {
        "missing_row_rate": "settlement.missing_row",
        "amount_mismatch_rate": "settlement.amount_mismatch",
        "late_row_rate": "settlement.late_row",
        "unexpected_row_count": "settlement.unexpected_row",
        "garbled_rate": "settlement.garbled",
        "unavailable_rate": "settlement.unavailable",
    }
    declared |= {kind for name, kind in settlement_faults.items() if getattr(plan.settlement, name)}
    if plan.payouts.failure_rate > 0:
        declared.add("payout.failed")
    engine = scenario.engine_faults
    if engine.crashes or engine.crash_rate_per_hour > 0:
        declared.add("engine.crash")
    if engine.db_outages:
        declared.add("engine.db_outage")
    if engine.commit_failure_rate > 0:
        declared.add("engine.commit_failure")
    return sorted(declared)


def fired_faults(world: World) -> dict[str, int]:
    fired = {str(kind): count for kind, count in world.psp.fault_log.counts().items() if count}
    if world.coverage["engine crashed"]:
        fired["engine.crash"] = world.coverage["engine crashed"]
    # Counted where the outage refuses a step: a commit failure also surfaces as
    # store_unavailable, so coverage paths cannot tell the two faults apart.
    if world.node.outage_hits:
        fired["engine.db_outage"] = world.node.outage_hits
    if world.coverage["engine.commit_failure"]:
        fired["engine.commit_failure"] = world.coverage["engine.commit_failure"]
    return dict(sorted(fired.items()))


def quiesce(world: World) -> Step:
    scenario = world.scenario
    yield world.env.timeout(scenario.duration_s)
    world.node.faults_on = False
    world.node.up = True
    retry = world.psp.faults.webhook_retry
    world.psp.set_faults(FaultPlanConfig(webhook_retry=retry))
    world.note("quiescence.start")
    deadline_s = scenario.duration_s + scenario.quiescence_max_s
    while world.env.now < deadline_s:
        yield world.env.timeout(QUIESCENCE_POLL_S)
        if world.active_checkouts or not world.arrivals_done:
            continue
        if world.psp.next_delivery_at_s() is not None:
            continue
        if world.recovery_pending() or world.catch_up_pending():
            continue
        if world.engine.open_payouts(1) or world.engine.fee_lookups(1):
            continue
        if world.engine.unpublished_events(1) or world.engine.pending_webhooks(1):
            continue
        if reconcile_at_quiescence(world):  # it settled payments: their events to relay
            continue
        break
    yield from world.recover_once()
    world.quiescent_at_s = world.env.now
    world.note("quiescence.end")


def run_scenario(
    scenario: Scenario,
    seed: int | None = None,
    on_progress: Callable[[float], None] | None = None,
    *,
    trace: bool = False,
    merchants: Sequence[int] | None = None,
    database_url: str | None = None,
) -> RunResult:
    """One run; ``trace`` records every event with its virtual time (for ``--trace``).

    ``merchants`` limits the workload to those merchant numbers (a shard's own).
    ``database_url``: the engine's database is one of the run's own on that
    PostgreSQL server, created for the run and dropped after it (by default it is
    in memory).
    """
    if database_url is None:
        return _run_world(World(scenario, seed, trace=trace, merchants=merchants), on_progress)
    name = f"paychaos_world_{os.getpid()}_{next(_scratch_numbers)}"
    with scratch_database(database_url, name) as database:
        world = World(scenario, seed, trace=trace, merchants=merchants, database=database)
        return _run_world(world, on_progress)


_scratch_numbers = itertools.count(1)


def _run_world(world: World, on_progress: Callable[[float], None] | None) -> RunResult:
    scenario = world.scenario
    clients = Clients(world)
    env = world.env
    env.process(clients.arrivals())
    env.process(world.deliver_webhooks())
    env.process(world.recovery_worker())
    env.process(world.crashes())
    env.process(world.outbox_relay())
    env.process(world.inbox_worker())
    if scenario.workers.events_catch_up_s > 0:
        env.process(world.event_catch_up())
    if scenario.workload.marketplace.payouts is not None:
        env.process(world.payout_scheduler())
    if scenario.workload.flows.dispute > 0 or scenario.workload.flows.refund_dispute > 0:
        env.process(world.dispute_desk())
    start_reconciliation(world)
    env.process(world.sampler(max(scenario.duration_s / 100.0, 1.0)))
    done = env.process(quiesce(world))
    # Run in slices of simulated time only to report progress: events are
    # processed in the same order as in one run, so the outcome is the same.
    slice_s = max(scenario.duration_s / 100.0, 1.0)
    while not done.triggered:
        env.run(until=env.now + slice_s)
        if on_progress is not None:
            on_progress(min(env.now, scenario.duration_s))
    env.run(until=done)
    # Quiet now: replay a sample of every kind of request (I6); count what arrived late.
    env.run(until=env.process(clients.replay_at_quiescence()))
    world.coverage.update(world.psp.late_arrival_paths)
    if world.projection.duplicates:
        world.coverage["outbox event delivered twice, deduped by the consumer"] = (
            world.projection.duplicates
        )
    invariants = run_oracles(world)
    problems = expectation_problems(world)
    unfired = unfired_faults(scenario, fired_faults(world))
    report = build_report(world, invariants, problems, unfired)
    world.db.dispose()
    return RunResult(
        scenario, world.seed, invariants, problems, report, world.trace, world.client_latencies_s,
        unfired,
    )  # fmt: skip


def expectation_problems(world: World) -> list[str]:
    return unmet_expectations(
        world.scenario, len(world.orders), world.coverage, world.quiescent_at_s
    )


def expected_faults(scenario: Scenario) -> list[str]:
    """The fault kinds the scenario expects to fire (``expect.faults_fired``)."""
    wanted = scenario.expect.faults_fired
    return declared_faults(scenario) if wanted == "declared" else sorted(wanted)


def unfired_faults(scenario: Scenario, fired: Mapping[str, int]) -> list[str]:
    """The expected faults that did not fire: the run proves nothing about them."""
    return [kind for kind in expected_faults(scenario) if not fired.get(kind)]


def unfired_reason(kind: str) -> str:
    return f"declared fault {kind} never fired: this run proves nothing about it"


def check_expectations(
    scenario: Scenario,
    fired: Mapping[str, int],
    payments: int,
    coverage: Mapping[str, int],
    quiescent_at_s: float | None,
) -> list[str]:
    """Every ``expect:`` bound in one list, unfired faults included (live mode's
    judgement: one wall-time run, no seeds to judge coverage over). The simulation
    keeps the two apart: ``unmet_expectations`` fail a run, ``unfired_faults``
    make it inconclusive."""
    unmet = unmet_expectations(scenario, payments, coverage, quiescent_at_s)
    return [unfired_reason(kind) for kind in unfired_faults(scenario, fired)] + unmet


def unmet_expectations(
    scenario: Scenario,
    payments: int,
    coverage: Mapping[str, int],
    quiescent_at_s: float | None,
) -> list[str]:
    """The scenario's ``expect:`` bounds that fail a run, over its counts (one world's
    or merged shards'): payments, paths reached, quiescence."""
    expect = scenario.expect
    problems = []
    if payments < expect.payments_min:
        problems.append(f"only {payments} payments, expected at least {expect.payments_min}")
    for path, minimum in sorted(expect.coverage_min.items()):
        if expect.coverage_for_s and scenario.duration_s < expect.coverage_for_s:
            minimum = int(minimum * scenario.duration_s / expect.coverage_for_s)
        if coverage.get(path, 0) < minimum:
            problems.append(
                f"path {path!r} reached {coverage.get(path, 0)} times, expected {minimum}"
            )
    if quiescent_at_s is not None and quiescent_at_s >= (
        scenario.duration_s + scenario.quiescence_max_s
    ):
        problems.append("the world did not reach quiescence in quiescence_max_s")
    return problems


def latency_percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"count": len(values)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "count": len(values),
        "p50_s": round(cuts[49], 6),
        "p95_s": round(cuts[94], 6),
        "p99_s": round(cuts[98], 6),
        "max_s": round(max(values), 6),
    }


LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def latency_histogram(values: list[float]) -> list[dict[str, Any]]:
    """Counts per latency bucket (upper bounds in seconds; the last is open)."""
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    for value in values:
        index = next(
            (i for i, bound in enumerate(LATENCY_BUCKETS_S) if value <= bound),
            len(LATENCY_BUCKETS_S),
        )
        counts[index] += 1
    bounds: list[float | None] = [*LATENCY_BUCKETS_S, None]
    return [{"le_s": bound, "count": count} for bound, count in zip(bounds, counts, strict=True)]


def _faults_over_time(world: World) -> list[dict[str, Any]]:
    """Fault counts per kind in slices of one hundredth of the run's duration."""
    slice_s = max(world.scenario.duration_s / 100.0, 1.0)
    buckets: dict[tuple[float, str], int] = {}
    times = [(record.at_s - EPOCH_S, str(record.kind)) for record in world.psp.fault_log.records()]
    times += [(t_s, "engine.crash") for t_s in world.crash_times_s]
    for t_s, kind in times:
        key = (round(int(t_s // slice_s) * slice_s, 3), kind)
        buckets[key] = buckets.get(key, 0) + 1
    return [{"t": t, "kind": kind, "count": n} for (t, kind), n in sorted(buckets.items())]


def build_report(
    world: World, invariants: list[Invariant], problems: list[str], unfired: list[str]
) -> dict[str, Any]:
    scenario = world.scenario
    final = world.samples[-1] if world.samples else {"by_state": {}}
    traced = sorted(
        {
            v["subject"]
            for inv in invariants
            for v in inv.violations
            if v["subject"].startswith("pay_")
        }
    )[:TRACED_PAYMENTS_MAX]
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": world.seed,
        "duration_s": scenario.duration_s,
        "quiescent_at_s": world.quiescent_at_s,
        "ok": run_status(invariants, problems, unfired) == PASSED,
        "status": run_status(invariants, problems, unfired),
        "payments": len(world.orders),
        "payments_by_state": final["by_state"],
        "invariants": [inv.to_json() for inv in invariants],
        "problems": problems,
        "inconclusive": [unfired_reason(kind) for kind in unfired],
        "faults_declared": declared_faults(scenario),
        "faults_fired": fired_faults(world),
        "faults_unfired": unfired,
        "coverage": dict(sorted(world.coverage.items())),
        "client_latency": latency_percentiles(world.client_latencies_s),
        "client_latency_histogram": latency_histogram(world.client_latencies_s),
        "faults_over_time": _faults_over_time(world),
        "samples": world.samples,
        "fault_log": [record.to_json() for record in world.psp.fault_log.records()[:5_000]],
        "traces": [payment_trace(world, payment_id) for payment_id in traced],
    }
