"""``paychaos bench sim``: how fast the simulation runs, next to its two floors.

For kitchen-sink and happy-path (the shipped files; ``--small`` shortens them
to two simulated minutes) it prints simulated payments per wall second and the
time compression (simulated seconds, quiescence included, per wall second).
Next to them, measured in the same run: simpy's raw event rate (one process
that only waits, ``yield env.timeout(1)``) and the raw in-memory SQLite
transaction rate (minimal one-row SQLAlchemy Core transactions, BEGIN, INSERT,
COMMIT, as ``bench engine`` measures them). The ratios (``events / payment``,
``tx / payment``) say how many raw simpy events and how many raw transactions
take the wall time that one simulated payment takes.

Then the goal: one simulated day at 1,000,000 payments per day (11.6 a
second) in under 30 minutes with ``paychaos run --jobs 2``. The day is too big
for one world a process (a world holds at most ``WORLD_PAYMENTS_MAX``
payments, ``scenarios.shards``): it runs as 8 worlds in 2 processes. The
benchmark runs a slice of that day (``loadtests/day.yaml``: happy-path's workload at that rate,
sharded as the day is, with quiescence and every check) and measures it; the
full day is projected from the slice by its simulated length. The projection
is optimistic: a world slows as its database grows (measured: a world's
payments cost a quarter more at the end of its day than in its first hour).
With ``--day`` the slice is the whole day and nothing is projected (it takes
the half hour). The table says which numbers are measured and which are
projected; memory is the peak of the processes.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import simpy
from rich.console import Console
from rich.table import Table

from engine.adapters.database import Database
from loadtests.bench_engine import RawTransactions
from scenarios.runner import run_scenario
from scenarios.schema import Scenario, library_paths, load_scenario
from scenarios.shards import run_sharded, shard_count

SCENARIOS = ("kitchen-sink", "happy-path")
SMALL_DURATION_S = 120.0
SIMPY_EVENTS = {True: 200_000, False: 2_000_000}
RAW_TRANSACTIONS = {True: 3_000, False: 30_000}
DAY_S = 86_400.0
DAY_PAYMENTS = 1_000_000
DAY_JOBS = 2
DAY_GOAL_WALL_S = 30 * 60.0
DAY_SLICE_S = {True: 60.0, False: 3_600.0}  # simulated seconds of the day actually run
DAY_FILE = Path(__file__).with_name("day.yaml")


@dataclass(frozen=True, slots=True)
class SimRun:
    scenario: str
    payments: int
    simulated_s: float
    wall_s: float

    @property
    def payments_per_s(self) -> float:
        return self.payments / self.wall_s

    @property
    def compression(self) -> float:
        return self.simulated_s / self.wall_s


def simpy_events_per_s(events: int) -> float:
    env = simpy.Environment()

    def waits() -> simpy.events.ProcessGenerator:
        for _ in range(events):
            yield env.timeout(1.0)

    env.process(waits())
    started = time.perf_counter()
    env.run()
    return events / (time.perf_counter() - started)


def raw_sqlite_tx_per_s(transactions: int) -> float:
    database = Database("sqlite://")
    try:
        raw = RawTransactions(database.engine)
        for _ in range(100):  # warm the statement cache and the pool
            raw.one()
        started = time.perf_counter()
        for _ in range(transactions):
            raw.one()
        return transactions / (time.perf_counter() - started)
    finally:
        database.dispose()


def _library(name: str) -> Scenario:
    return load_scenario(next(path for path in library_paths() if path.stem == name))


def simulate(name: str, small: bool) -> SimRun:
    scenario = _library(name)
    if small:
        scenario = scenario.model_copy(update={"duration_s": SMALL_DURATION_S})
    started = time.perf_counter()
    result = run_scenario(scenario)
    wall_s = time.perf_counter() - started
    simulated_s = result.report["quiescent_at_s"] or scenario.duration_s
    return SimRun(name, result.report["payments"], simulated_s, wall_s)


def day_scenario(slice_s: float) -> Scenario:
    """The shipped day (``loadtests/day.yaml``), for ``slice_s`` of it."""
    scenario = load_scenario(DAY_FILE)
    return scenario.model_copy(update={"duration_s": slice_s})


@dataclass(frozen=True, slots=True)
class DaySlice:
    slice_s: float
    payments: int
    wall_s: float
    ok: bool
    peak_rss_mb: float  # the largest shard process
    base_rss_mb: float  # what a shard process holds before its world (the parent's)

    @property
    def projected_wall_s(self) -> float:
        return self.wall_s * DAY_S / self.slice_s

    @property
    def projected_rss_mb(self) -> float:
        """A process's peak for a world of the whole day (it runs its worlds in turn)."""
        grown_mb = max(self.peak_rss_mb - self.base_rss_mb, 0.0)
        return self.base_rss_mb + grown_mb * DAY_S / self.slice_s


def day_slice(slice_s: float) -> DaySlice:
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    # The slice runs as the whole day would: as many worlds, each a day's share.
    shards = shard_count(day_scenario(DAY_S), DAY_JOBS)
    result = run_sharded(day_scenario(slice_s), None, DAY_JOBS, shards=shards)
    wall_s = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return DaySlice(
        slice_s, result.report["payments"], wall_s, result.ok, peak_kb / 1024, base_kb / 1024
    )


def speed_table(runs: list[SimRun], simpy_rate: float, raw_rate: float) -> Table:
    out = Table(title="simulation speed vs its floors (measured in the same run)")
    columns = (
        "scenario", "payments", "simulated s", "wall s", "payments / wall s", "sim s / wall s",
        "simpy events/s", "sqlite tx/s", "events / payment", "tx / payment",
    )  # fmt: skip
    for column in columns:
        out.add_column(column, justify="left" if column == "scenario" else "right")
    for run in runs:
        out.add_row(
            run.scenario, f"{run.payments:,}", f"{run.simulated_s:,.0f}", f"{run.wall_s:.2f}",
            f"{run.payments_per_s:,.0f}", f"{run.compression:,.0f}x", f"{simpy_rate:,.0f}",
            f"{raw_rate:,.0f}", f"{simpy_rate / run.payments_per_s:,.0f}",
            f"{raw_rate / run.payments_per_s:,.1f}",
        )  # fmt: skip
    return out


def day_table(day: DaySlice) -> Table:
    out = Table(
        title=f"one simulated day at {DAY_PAYMENTS:,} payments/day, --jobs {DAY_JOBS} "
        f"({DAY_FILE.name}: happy-path's workload at {DAY_PAYMENTS / DAY_S:.2f}/s)"
    )
    for column in ("what", "simulated s", "payments", "wall s", "payments / wall s",
                   "peak RSS a process", "how"):  # fmt: skip
        out.add_column(column, justify="left" if column in {"what", "how"} else "right")
    whole = day.slice_s >= DAY_S
    out.add_row(
        "the whole day, all checks" if whole else "a slice of the day, all checks",
        f"{day.slice_s:,.0f}", f"{day.payments:,}",
        f"{day.wall_s:,.1f}", f"{day.payments / day.wall_s:,.0f}", f"{day.peak_rss_mb:,.0f} MB",
        "measured" if day.ok else "[red]measured: checks FAILED[/]",
    )  # fmt: skip
    if not whole:
        out.add_row(
            "the whole day", f"{DAY_S:,.0f}", f"~{DAY_PAYMENTS:,}",
            f"{day.projected_wall_s:,.0f}", f"{DAY_PAYMENTS / day.projected_wall_s:,.0f}",
            f"~{day.projected_rss_mb:,.0f} MB", "projected: slice x day/slice",
        )  # fmt: skip
    how = "measured" if whole else "projected"
    met = day.ok and day.projected_wall_s < DAY_GOAL_WALL_S
    out.add_row(
        "goal", f"{DAY_S:,.0f}", f"{DAY_PAYMENTS:,}", f"< {DAY_GOAL_WALL_S:,.0f}",
        f">= {DAY_PAYMENTS / DAY_GOAL_WALL_S:,.0f}", "",
        f"[green]met ({how})[/]" if met else f"[red]not met ({how})[/]",
    )  # fmt: skip
    return out


def run(small: bool, console: Console, whole_day: bool = False) -> None:
    console.print(
        f"scenarios: {', '.join(SCENARIOS)}"
        + (f" at {SMALL_DURATION_S:.0f} simulated s each" if small else " as shipped")
        + f"; simpy: {SIMPY_EVENTS[small]:,} timeouts; sqlite: {RAW_TRANSACTIONS[small]:,} "
        "one-row transactions in memory"
    )
    simpy_rate = simpy_events_per_s(SIMPY_EVENTS[small])
    raw_rate = raw_sqlite_tx_per_s(RAW_TRANSACTIONS[small])
    runs = [simulate(name, small) for name in SCENARIOS]
    console.print(speed_table(runs, simpy_rate, raw_rate))
    slice_s = DAY_S if whole_day else DAY_SLICE_S[small]
    console.print(
        f"the day: {slice_s:,.0f} simulated s at the day's rate in {DAY_JOBS} shard processes "
        + ("are run and measured: the whole day" if whole_day
           else "are run and measured; the whole day is projected from them")
    )  # fmt: skip
    console.print(day_table(day_slice(slice_s)))
