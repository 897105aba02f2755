"""One live run: preflight, faults on, workload, faults off, quiescence, snapshot, checks.

Everything goes over HTTP to servers already running: the engine's public API
(with the merchants' API keys) and the mock PSP's admin API. The provider's
fault plan as found is put back at the end, whatever happened.

Bounded in wall time: the workload lasts ``duration_s`` (arrivals stop; the
checkouts still going get ``DRAIN_S_MAX`` more, then are cut off), quiescence at
most ``quiescence_max_s``, and every HTTP call has a timeout.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from loadtests.live.checks import live_invariants
from loadtests.live.clients import Evidence, LiveClients
from loadtests.live.http import EngineApi, PspAdmin, PspAdminError
from loadtests.live.plan import (
    Timeline,
    applicable,
    faults_at,
    not_applied,
    quiet_faults,
    scaled_faults,
    switch_times_s,
)
from loadtests.live.settle import ReadFailed, Snapshot, balances, quiesce, snapshot
from mock_psp.faults import FaultPlanConfig
from scenarios.oracles import Invariant
from scenarios.runner import (
    RunResult,
    check_expectations,
    declared_faults,
    latency_histogram,
    latency_percentiles,
)
from scenarios.schema import Scenario

DRAIN_S_MAX = 30.0
READY_WAIT_S = 10.0
READY_POLL_S = 0.25
CLIENT_TIMEOUT_S_MAX = 60.0
TRACED_PAYMENTS_MAX = 10
FAULT_RECORDS_MAX = 5_000


class LiveError(Exception):
    """The run could not start (``begun`` False: bad input) or could not finish its checks."""

    def __init__(self, option: str, message: str, begun: bool = False):
        super().__init__(f"{option}: {message}")
        self.begun = begun


@dataclass(frozen=True, slots=True)
class LiveOptions:
    engine_url: str
    psp_url: str
    api_keys: tuple[str, ...]
    time_scale: float
    duration_s: float
    payments_max: int
    concurrency: int
    quiescence_max_s: float
    psp_key: str
    recovery_grace_s: float = 90.0  # how long a 202'd capture or void may keep the run busy
    seed: int | None = None
    db_url: str | None = None  # the engine's database, read only for I8 (the outbox)
    run_id: str = ""  # default: a fresh one, so that order ids and keys never collide


def run_live(scenario: Scenario, options: LiveOptions) -> RunResult:
    return asyncio.run(_run(scenario, options))


async def _run(scenario: Scenario, options: LiveOptions) -> RunResult:
    seed = scenario.seed if options.seed is None else options.seed
    timeline = Timeline(options.time_scale, options.duration_s)
    timeout_s = min(scenario.clients.timeout_s, CLIENT_TIMEOUT_S_MAX)
    api = EngineApi(options.engine_url, list(options.api_keys), timeout_s)
    psp = PspAdmin(options.psp_url, options.psp_key)
    begun = False
    try:
        merchants, before = await preflight(api, psp)
        if options.db_url is not None:
            outbox_from_db(options.db_url)  # refused now rather than after the run
        begun = True
        plan = scaled_faults(scenario.fault_plan(), options.time_scale)
        run_id = options.run_id or f"live-{secrets.token_hex(4)}"
        clients = LiveClients(
            scenario, seed, timeline, api, psp, merchants, run_id, options.payments_max,
            options.concurrency,
        )  # fmt: skip
        found = await psp.faults()
        try:
            return await _drive(scenario, seed, options, clients, plan, before)
        finally:
            await psp.set_faults(found)  # leave the provider as it was found
    except ReadFailed as exc:
        raise LiveError("--engine", f"the checks cannot be complete: {exc}", begun) from None
    except PspAdminError as exc:
        raise LiveError("--psp", str(exc), begun) from None
    finally:
        await api.close()
        await psp.close()


async def preflight(api: EngineApi, psp: PspAdmin) -> tuple[list[str], list[dict[str, Any]]]:
    """Both servers answer and every key is the engine's: the merchants and their balances."""
    ready = await api.ready()
    deadline = time.monotonic() + READY_WAIT_S
    while ready.status != 200 and time.monotonic() < deadline:  # a server just starting
        await asyncio.sleep(READY_POLL_S)
        ready = await api.ready()
    if ready.status is None:
        raise LiveError("--engine", f"no answer from {api.base_url}/readyz")
    if ready.status != 200:
        reason = ready.body.get("reason", "") if isinstance(ready.body, dict) else ""
        raise LiveError("--engine", f"{api.base_url}/readyz answered {ready.status} {reason}")
    for number in range(len(api.api_keys)):
        answer = await api.send(number, "GET", "/v1/balance")
        if answer.status != 200:
            raise LiveError(
                "--api-key",
                f"key number {number + 1} was refused by the engine ({answer.status} "
                f"{answer.code}); create one with `paychaos keys create --db URL --merchant M`",
            )
    try:
        await psp.webhooks()
    except PspAdminError as exc:
        raise LiveError("--psp", f"the mock PSP's admin API does not answer ({exc})") from None
    before = await balances(api)
    return [str(document["merchant_id"]) for document in before], before


async def _drive(
    scenario: Scenario,
    seed: int,
    options: LiveOptions,
    clients: LiveClients,
    plan: FaultPlanConfig,
    before: list[dict[str, Any]],
) -> RunResult:
    psp, api = clients.psp, clients.api
    webhooks_before, counts_before = await psp.webhooks(), await psp.fault_counts()
    psp_started_s = await psp.now_s()
    started = time.monotonic()
    await psp.set_faults(faults_at(plan, 0.0).model_dump(mode="json"))
    switcher = asyncio.create_task(_switch_faults(psp, plan, clients.timeline, started))
    try:
        await clients.arrivals()
    finally:
        switcher.cancel()
        with suppress(asyncio.CancelledError):
            await switcher  # a plan the provider refused is raised here, not lost
    await clients.drain(DRAIN_S_MAX)
    workload_s = time.monotonic() - started
    await psp.set_faults(quiet_faults(plan).model_dump(mode="json"))
    quiet_s, advanced_s = await quiesce(
        api, psp, clients.evidence, options.quiescence_max_s, options.recovery_grace_s
    )
    shot = await snapshot(api, psp, clients.evidence)
    wall_s = time.monotonic() - started
    outbox = None if options.db_url is None else outbox_from_db(options.db_url, begun=True)
    invariants = live_invariants(shot, clients.evidence, before, webhooks_before, outbox)
    fired = {
        kind: count - counts_before.get(kind, 0)
        for kind, count in sorted(shot.fault_counts.items())
        if count > counts_before.get(kind, 0)
    }
    coverage = _coverage(clients.evidence, shot, webhooks_before)
    problems = _problems(scenario, options, clients.evidence, shot, fired, coverage, quiet_s)
    timing = {"workload_s": workload_s, "quiet_after_s": quiet_s, "wall_s": wall_s,
              "psp_started_s": psp_started_s, "psp_clock_advanced_s": advanced_s}  # fmt: skip
    report = build_report(scenario, seed, options, clients, shot, invariants, problems, fired,
                          coverage, timing)  # fmt: skip
    return RunResult(scenario, seed, invariants, problems, report,
                     client_latencies_s=clients.evidence.latencies_s)  # fmt: skip


def outbox_from_db(db_url: str, begun: bool = False) -> Invariant:
    """I8 over the engine's database (every payment in it): one outbox event per change."""
    from engine.adapters.database import Database, check_schema
    from engine.audit import check_outbox

    try:
        database = Database(db_url)
        try:
            check_schema(database.engine)
            with database.engine.connect() as connection:
                result = check_outbox(connection)
        finally:
            database.dispose()
    except Exception as exc:  # a bad URL, an unreachable server, a stale schema: say so
        message = f"cannot read {db_url!r}: {type(exc).__name__}: {exc}"
        raise LiveError("--db", message, begun) from None
    inv = Invariant(result.invariant, result.name, f"{result.description} (all of --db)")
    inv.checked = result.checked
    for subject, detail in result.violations:
        inv.add(subject, detail)
    return inv


async def _switch_faults(
    psp: PspAdmin, plan: FaultPlanConfig, timeline: Timeline, started: float
) -> None:
    """Send the plan again at each window edge: the PSP's own windows count from its start."""
    for at_s in switch_times_s(plan):
        if at_s >= timeline.duration_s:
            return
        await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
        await psp.set_faults(faults_at(plan, at_s).model_dump(mode="json"))


def _coverage(evidence: Evidence, shot: Snapshot, webhooks_before: dict[str, Any]) -> Counter[str]:
    """The clients' paths, the paths the payments' histories show, the provider's deliveries."""
    coverage = Counter(evidence.coverage)
    for payment in shot.payments.values():
        for item in payment.get("history", []):
            reason = str(item.get("reason") or "")
            for suffix, path in (("_by_lookup", "resolved by lookup"),
                                 ("_by_event", "learned from a webhook")):  # fmt: skip
                if reason.endswith(suffix):
                    kind, _, status = reason.removesuffix(suffix).partition("_")
                    coverage[f"{kind} {status} {path}"] += 1
    earlier = webhooks_before.get("outcomes", {})
    for outcome, count in shot.webhooks.get("outcomes", {}).items():
        if int(count) > int(earlier.get(outcome, 0)):
            coverage[f"provider webhook delivery {outcome}"] += int(count) - int(
                earlier.get(outcome, 0)
            )
    return coverage


def _problems(
    scenario: Scenario,
    options: LiveOptions,
    evidence: Evidence,
    shot: Snapshot,
    fired: dict[str, int],
    coverage: Counter[str],
    quiet_s: float | None,
) -> list[str]:
    # What live mode cannot apply is reported as not applied; it cannot be expected to fire.
    problems = check_expectations(applicable(scenario), fired, len(evidence.orders), coverage,
                                  None)  # fmt: skip
    if quiet_s is None:
        busy = sorted(
            pid for pid, p in shot.payments.items()
            if p["state"] == "processing" or pid in shot.unresolved
        )  # fmt: skip
        problems.append(
            f"no quiescence within --quiescence-max {options.quiescence_max_s:g}s "
            f"({len(busy)} payments still processing or unresolved): is the engine's recovery "
            "worker (`paychaos serve worker`) running? It first looks an attempt up a minute "
            "after it began"
        )
    return problems


def build_report(
    scenario: Scenario,
    seed: int,
    options: LiveOptions,
    clients: LiveClients,
    shot: Snapshot,
    invariants: list[Invariant],
    problems: list[str],
    fired: dict[str, int],
    coverage: Counter[str],
    timing: dict[str, Any],
) -> dict[str, Any]:
    """The simulation's report shape (so the same tables and files work), plus the live facts."""
    evidence, timeline = clients.evidence, clients.timeline
    by_state = Counter(str(p["state"]) for p in shot.payments.values())
    records = [r for r in shot.fault_records if float(r["at"]) >= timing["psp_started_s"]]
    live = applicable(scenario)
    return {
        "mode": "live",
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": seed,
        "run_id": clients.run_id,
        "engine": options.engine_url,
        "psp": options.psp_url,
        "merchants": sorted(set(clients.merchant_ids)),
        "time_scale": timeline.time_scale,
        "duration_s": timeline.simulated_s(timeline.duration_s),
        "wall_duration_s": timeline.duration_s,
        "wall_time": {
            k: None if v is None else round(v, 3) for k, v in timing.items() if k != "psp_started_s"
        },
        "quiescent_at_s": None
        if timing["quiet_after_s"] is None
        else round(timing["workload_s"] + timing["quiet_after_s"], 3),
        "ok": all(inv.ok for inv in invariants) and not problems,
        "payments": len(evidence.orders),
        "engine_payments": len(shot.payments),
        "payments_by_state": dict(sorted(by_state.items())),
        "invariants": [inv.to_json() for inv in invariants],
        "problems": problems,
        "not_applied": not_applied(scenario),
        "faults_declared": declared_faults(live),
        "faults_fired": fired,
        "coverage": dict(sorted(coverage.items())),
        "client_latency": latency_percentiles(evidence.latencies_s),
        "client_latency_histogram": latency_histogram(evidence.latencies_s),
        "faults_over_time": _faults_over_time(records, timing["psp_started_s"], timeline),
        "samples": [],
        "fault_log": records[:FAULT_RECORDS_MAX],
        "traces": _traces(shot, invariants),
    }


def _faults_over_time(
    records: list[dict[str, Any]], started_s: float, timeline: Timeline
) -> list[dict[str, Any]]:
    """Fault counts per kind per hundredth of the run (in the scenario's seconds)."""
    slice_s = max(timeline.duration_s / 100.0, 0.01)
    buckets: Counter[tuple[float, str]] = Counter()
    for record in records:
        at_s = (float(record["at"]) - started_s) // slice_s * slice_s
        buckets[(round(timeline.simulated_s(at_s), 3), str(record["kind"]))] += 1
    return [{"t": t, "kind": kind, "count": n} for (t, kind), n in sorted(buckets.items())]


def _traces(shot: Snapshot, invariants: list[Invariant]) -> list[dict[str, Any]]:
    """The engine's history next to the provider's intent, for payments that broke a rule."""
    subjects = sorted(
        {v["subject"] for inv in invariants for v in inv.violations}
        & set(shot.payments)
    )[:TRACED_PAYMENTS_MAX]  # fmt: skip
    traces = []
    for pid in subjects:
        payment = shot.payments[pid]
        intent = shot.intents.get(str(payment.get("provider_payment_id")))
        traces.append({
            "payment_id": pid,
            "engine": [{"t": h.get("at"), "from": h.get("from_state"), "to": h.get("to_state"),
                        "reason": h.get("reason")} for h in payment.get("history", [])],
            "provider": [] if intent is None else [
                {"t": intent.get("created"), "type": f"payment_intent {intent.get('status')}",
                 "id": intent.get("id")}
            ],
        })  # fmt: skip
    return traces
