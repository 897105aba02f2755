"""``paychaos run --jobs N``: one scenario as N independent worlds, sharded by merchant.

Production shards a payment platform by merchant: a merchant's payments, keys
and orders live on one shard, and shards share nothing. A sharded run does the
same. Shard ``k`` of ``N`` is a whole world (its own engine database, provider
core and workers) that owns the merchants ``m_k, m_{k+N}, ...``, gets ``1/N``
of the arrival rate, of the payment cap and of the provider's rate limit, and
runs the scenario's faults as they are (each shard's engine crashes at the
scenario's rate, as each production shard would). Its seed is derived from the
scenario's seed and ``k`` (a hash, stable across Python versions). The shards
run in N processes; their reports and checks are merged in shard order, so one
scenario, seed and N give one byte-identical merged report.

A world holds at most about ``WORLD_PAYMENTS_MAX`` payments: its in-memory
database lives in one buffer that SQLite cannot grow past 2 GiB
(``scenarios.memdb``), and a payment takes about 9 KB of it. A scenario
expected to make more runs as more shards than N (as a production platform
adds shards as it grows, not servers to one shard), as many as it needs and its
merchants allow, still in N processes, each running its shards one after the
other; the shard count depends only on the scenario and N, so the report does
too. Smaller worlds also run faster: a world's every index and cache is smaller.

Merging: counts are summed (payments, states, faults, coverage, histogram
buckets, invariants' ``checked``); violations are concatenated in shard order;
latency percentiles are computed over every shard's raw latencies; samples are
summed at every sample time, a shard that already reached quiescence counting
with its last sample; the expectations (faults fired, payments, coverage) are
checked on the merged counts, not per shard: a declared fault that fired in one
shard fired in the run.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import islice
from typing import Any

from scenarios.clients import expected_payments
from scenarios.oracles import Invariant
from scenarios.runner import (
    PASSED,
    TRACED_PAYMENTS_MAX,
    RunResult,
    declared_faults,
    latency_histogram,
    latency_percentiles,
    run_scenario,
    run_status,
    unfired_faults,
    unfired_reason,
    unmet_expectations,
)
from scenarios.schema import Scenario

JOBS_MAX = 64
# The most payments one world is made to hold (measured: about 9 KB of database a
# payment in happy-path, more where faults multiply attempts and webhooks, against
# a 2 GiB buffer).
WORLD_PAYMENTS_MAX = 125_000
FAULT_LOG_MAX = 5_000


@dataclass(frozen=True, slots=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        assert 0 <= self.index < self.count <= JOBS_MAX, (self.index, self.count)

    def merchant_numbers(self, merchants: int) -> list[int]:
        """The merchants this shard owns: every ``count``-th, from its index."""
        return list(range(self.index, merchants, self.count))


def shard_seed(seed: int, shard: Shard) -> int:
    """A seed per shard, derived from the scenario's: the same on every machine."""
    digest = hashlib.sha256(f"paychaos-shard:{seed}:{shard.index}:{shard.count}".encode())
    return int.from_bytes(digest.digest()[:8], "big") >> 1


def _split(total: int, shard: Shard) -> int:
    return total // shard.count + (1 if shard.index < total % shard.count else 0)


def shard_scenario(scenario: Scenario, shard: Shard) -> Scenario:
    """The shard's share of the workload (and of the provider's rate limit)."""
    workload = scenario.workload
    arrivals = workload.arrivals.model_copy(
        update={"rate_per_s": workload.arrivals.rate_per_s / shard.count}
    )
    workload = workload.model_copy(
        update={"arrivals": arrivals, "payments_max": max(_split(workload.payments_max, shard), 1)}
    )
    psp_faults = dict(scenario.psp_faults)
    limit = psp_faults.get("rate_limit")
    if isinstance(limit, dict):
        limit = dict(limit)
        if "refill_per_s" in limit:
            limit["refill_per_s"] = float(limit["refill_per_s"]) / shard.count
        if "capacity" in limit:
            limit["capacity"] = max(math.ceil(int(limit["capacity"]) / shard.count), 1)
        psp_faults["rate_limit"] = limit
    return scenario.model_copy(update={"workload": workload, "psp_faults": psp_faults})


def check_jobs(scenario: Scenario, jobs: int) -> str | None:
    """Why ``scenario`` cannot run as ``jobs`` shards, or None."""
    if not 1 <= jobs <= JOBS_MAX:
        return f"--jobs: between 1 and {JOBS_MAX}"
    if jobs > scenario.workload.merchants:
        return (
            f"--jobs: {jobs} shards need at least {jobs} merchants; "
            f"{scenario.name} has {scenario.workload.merchants}"
        )
    return None


def shard_count(scenario: Scenario, jobs: int) -> int:
    """How many worlds ``scenario`` runs as with ``jobs`` processes: ``jobs``, or more
    when a world would hold more than ``WORLD_PAYMENTS_MAX`` payments (at most one
    world per merchant)."""
    expected = expected_payments(scenario.workload, scenario.duration_s)
    needed = math.ceil(expected / WORLD_PAYMENTS_MAX)
    return max(jobs, min(needed, scenario.workload.merchants, JOBS_MAX))


def _run_shard(args: tuple[Scenario, int, Shard, bool, str | None]) -> RunResult:
    scenario, seed, shard, trace, database_url = args
    return run_scenario(
        shard_scenario(scenario, shard), shard_seed(seed, shard), trace=trace,
        merchants=shard.merchant_numbers(scenario.workload.merchants), database_url=database_url,
    )  # fmt: skip


def run_sharded(
    scenario: Scenario,
    seed: int | None,
    jobs: int,
    *,
    trace: bool = False,
    shards: int | None = None,
    on_shard_done: Callable[[int, int], None] | None = None,
    database_url: str | None = None,
) -> RunResult:
    """Run ``scenario`` as ``shards`` shards (by default ``shard_count(scenario, jobs)``)
    in ``jobs`` processes and merge them; ``on_shard_done(done, count)`` as they end
    (in shard order). One shard is the unsharded run itself. ``database_url``: each
    world on a PostgreSQL database of its own there (``run_scenario``)."""
    count = shard_count(scenario, jobs) if shards is None else shards
    if count == 1:
        return run_scenario(scenario, seed, trace=trace, database_url=database_url)
    base_seed = scenario.seed if seed is None else seed
    work = [(scenario, base_seed, Shard(index, count), trace, database_url)
            for index in range(count)]  # fmt: skip
    processes = min(jobs, count)
    results: list[RunResult] = []
    with ExitStack() as stack:
        # One process runs its shards in turn here; more take one shard a task, in
        # order: either way a process holds one world at a time.
        run_each = (
            map if processes == 1
            else stack.enter_context(ProcessPoolExecutor(max_workers=processes)).map
        )  # fmt: skip
        for result in run_each(_run_shard, work):
            results.append(result)
            if on_shard_done is not None:
                on_shard_done(len(results), count)
    return merge(scenario, base_seed, results, processes)


# -- merging ---------------------------------------------------------------------------


def merge_invariants(per_shard: list[list[Invariant]]) -> list[Invariant]:
    merged = []
    for same in zip(*per_shard, strict=True):
        first = same[0]
        assert all(inv.id == first.id for inv in same), [inv.id for inv in same]
        merged.append(
            Invariant(
                first.id, first.name, first.description,
                checked=sum(inv.checked for inv in same),
                violations=[v for inv in same for v in inv.violations],
                applicable=first.applicable,
            )
        )  # fmt: skip
    return merged


def _summed(mappings: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for mapping in mappings:
        total.update(mapping)
    return dict(sorted(total.items()))


def merge_samples(per_shard: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sum the shards at every sample time; a finished shard counts with its last sample."""
    times = sorted({sample["t"] for samples in per_shard for sample in samples})
    cursors = [0] * len(per_shard)
    last: list[dict[str, Any] | None] = [None] * len(per_shard)
    merged = []
    for t in times:
        for k, samples in enumerate(per_shard):
            while cursors[k] < len(samples) and samples[cursors[k]]["t"] <= t:
                last[k] = samples[cursors[k]]
                cursors[k] += 1
        merged.append({"t": t, **_sum_samples([s for s in last if s is not None])})
    return merged


def _sum_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for sample in samples:
        for key, value in sample.items():
            if key == "t":
                continue
            if isinstance(value, dict):
                total[key] = _summed([total.get(key, {}), value])
            else:
                total[key] = total.get(key, 0) + value
    return total


def _keyed(
    items: list[dict[str, Any]], time_key: str, shard: int
) -> Iterator[tuple[float, int, int, dict[str, Any]]]:
    """``(time, shard, position, item)``: ties break on shard then position, never on items."""
    for position, item in enumerate(items):
        yield item[time_key], shard, position, item


def merge_traces(per_shard: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every shard's events by virtual time, each naming its shard (ties: shard order)."""
    streams = [_keyed(events, "t", k) for k, events in enumerate(per_shard)]
    return [{"shard": k, **event} for _, k, _, event in heapq.merge(*streams)]


def _faults_over_time(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: Counter[tuple[float, str]] = Counter()
    for report in reports:
        for row in report["faults_over_time"]:
            counts[(row["t"], row["kind"])] += row["count"]
    return [{"t": t, "kind": kind, "count": n} for (t, kind), n in sorted(counts.items())]


def _fault_log(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The earliest records of all shards, by time (each shard's list is in time order)."""
    streams = [_keyed(report["fault_log"], "at", k) for k, report in enumerate(reports)]
    return [record for _, _, _, record in islice(heapq.merge(*streams), FAULT_LOG_MAX)]


def _shard_summary(index: int, shard: RunResult) -> dict[str, Any]:
    report = shard.report
    return {
        "index": index,
        "seed": shard.seed,
        "payments": report["payments"],
        "quiescent_at_s": report["quiescent_at_s"],
    }


def merge(scenario: Scenario, seed: int, shards: list[RunResult], jobs: int) -> RunResult:
    """One report and one verdict for the whole sharded run (in ``jobs`` processes)."""
    reports = [shard.report for shard in shards]
    invariants = merge_invariants([shard.invariants for shard in shards])
    payments = sum(int(report["payments"]) for report in reports)
    fired = _summed([report["faults_fired"] for report in reports])
    coverage = _summed([report["coverage"] for report in reports])
    quiescent = [report["quiescent_at_s"] for report in reports]
    quiescent_at_s = None if None in quiescent else max(quiescent)
    problems = unmet_expectations(scenario, payments, coverage, quiescent_at_s)
    unfired = unfired_faults(scenario, fired)  # fired in any shard is fired
    status = run_status(invariants, problems, unfired)
    latencies = [value for shard in shards for value in shard.client_latencies_s]
    traces = sorted(
        (trace for report in reports for trace in report["traces"]),
        key=lambda trace: str(trace["payment_id"]),
    )[:TRACED_PAYMENTS_MAX]
    report = {
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": seed,
        "duration_s": scenario.duration_s,
        "quiescent_at_s": quiescent_at_s,
        "ok": status == PASSED,
        "status": status,
        "payments": payments,
        "payments_by_state": _summed([report["payments_by_state"] for report in reports]),
        "invariants": [inv.to_json() for inv in invariants],
        "problems": problems,
        "inconclusive": [unfired_reason(kind) for kind in unfired],
        "faults_declared": declared_faults(scenario),
        "faults_fired": fired,
        "faults_unfired": unfired,
        "coverage": coverage,
        "client_latency": latency_percentiles(latencies),
        "client_latency_histogram": latency_histogram(latencies),
        "faults_over_time": _faults_over_time(reports),
        "samples": merge_samples([report["samples"] for report in reports]),
        "fault_log": _fault_log(reports),
        "traces": traces,
        "jobs": jobs,
        "shards": [_shard_summary(k, shard) for k, shard in enumerate(shards)],
    }
    trace = merge_traces([shard.trace for shard in shards])
    return RunResult(scenario, seed, invariants, problems, report, trace, latencies, unfired)
