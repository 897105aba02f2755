"""``paychaos bench api``: payment API calls per second and latency, next to pgbench.

For each database (a SQLite file in a temporary directory always; with
``--db-url`` also a PostgreSQL database of the run's own on that server, created
and dropped) the mock PSP and the engine API are started on free 127.0.0.1 ports
with the helpers of ``paychaos load``: ``paychaos serve psp`` with a fault plan
of zero API latency (the provider's latency is excluded) and ``paychaos serve
engine``, the PSP's webhooks registered on the engine as in production.
Merchants get API keys as ``paychaos keys create`` makes them (the engine limits
each key to 100 calls/s, so the load is spread over several merchants).

The load generator runs in this process: asyncio over a fixed set of keep-alive
connections, with a minimal HTTP/1.1 client (httpx costs about 3 ms of CPU per
call on this machine, as much as the engine spends on a read, and the generator
shares the cores with what it measures). It drives checkout flows over the
whole API: create with an Idempotency-Key (sometimes replayed), GET, confirm,
full or partial capture, cancel, full or partial refund, refund list, ledger.
Each database gets, in this order and each bounded in time:

- a warm-up;
- saturation: a closed loop, one worker per connection running flows back to
  back; calls/s counts 2xx answers per wall second;
- an offered rate: an open loop at 300 calls/s (wrk2's way). Each call has an
  intended start on a fixed schedule and its latency counts from there, so a
  slow answer that holds up later calls is not hidden (coordinated omission).
  Calls still unsent when the schedule runs ``late_s_max`` behind are counted.

Then the world settles (webhooks drained, unknown attempts recovered by lookup)
and the checks of ``paychaos load`` run: the engine's audit and agreement with
the provider's ground truth. A violation makes the exit 1. On PostgreSQL,
pgbench's TPC-B then runs against the run's database on the same server, the
engine stopped; the ratio is API calls/s at saturation over pgbench's tps.

Goals (2 cores, load generator included): >= 500 calls/s with zero violations,
p99 < 50 ms at 300 calls/s, ratio to pgbench >= 0.3. Everything shares the CPUs
(with whatever else the machine runs), so each database's notes say where the
CPU went during saturation, per part and per call.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from engine.adapters.database import Database, normalize_url, postgres_url_problem
from engine.entrypoints.serve import new_api_key
from loadtests.bench_engine import describe, postgres_database
from loadtests.load import check, cli, free_port, register_webhooks, running, settle

CALLS_PER_S_GOAL = 500.0
OFFERED_PER_S = 300.0
P99_MS_GOAL = 50.0
PGBENCH_RATIO_GOAL = 0.3
MERCHANTS = 16  # each key may make 100 calls/s (per engine process): room for 1,600
HOST = "127.0.0.1"
REQUEST_TIMEOUT_S = 10.0
BODY_BYTES_MAX = 4 * 1024 * 1024
PGBENCH_FALLBACK = Path("/usr/bin/pgbench")
PSP_FAULTS = {"api_latency": {"kind": "none"}}  # the provider answers at once
AMOUNT_MINOR = 10_000
PART_MINOR = 2_500


@dataclass(frozen=True, slots=True)
class Mode:
    engine_workers: int
    connections: int
    warmup_s: float
    saturation_s: float
    offered_s: float
    late_s_max: float
    pgbench_clients: int
    pgbench_scale: int
    pgbench_s: int


SMALL = Mode(engine_workers=1, connections=8, warmup_s=0.5, saturation_s=2.0, offered_s=2.0,
             late_s_max=1.0, pgbench_clients=2, pgbench_scale=2, pgbench_s=2)  # fmt: skip
FULL = Mode(engine_workers=2, connections=16, warmup_s=3.0, saturation_s=20.0, offered_s=20.0,
            late_s_max=10.0, pgbench_clients=8, pgbench_scale=8, pgbench_s=15)  # fmt: skip

# Checkout flows, started in turn; each call of a flow waits for the one before it.
FLOWS: tuple[tuple[str, ...], ...] = (
    ("create", "confirm", "capture", "get"),
    ("create", "get", "confirm", "capture_part", "refund_part", "ledger"),
    ("create", "replay", "confirm", "cancel", "get"),
    ("create", "confirm", "capture", "refund", "refunds"),
)


# -- the load generator ------------------------------------------------------------------------
@dataclass(slots=True)
class Flow:
    number: int
    api_key: str
    steps: tuple[str, ...]
    position: int = 0
    payment_id: str = ""

    @property
    def done(self) -> bool:
        return self.position >= len(self.steps)

    def request(self, run_id: str) -> tuple[str, str, dict[str, Any] | None, str | None]:
        """(method, path, JSON body, Idempotency-Key) of the flow's next call."""
        step, n, pay = self.steps[self.position], self.number, f"/v1/payments/{self.payment_id}"
        # Letters between the numbers: a long run of digits can pass Luhn, and the
        # engine rightly refuses anything that looks like a card number.
        key = f"{run_id}n{n}p{self.position}"
        if step in {"create", "replay"}:
            body: dict[str, Any] | None = {"amount_minor": AMOUNT_MINOR, "currency": "USD",
                    "order_id": f"o{run_id}n{n}", "payment_method": "pm_card_visa"}  # fmt: skip
            return "POST", "/v1/payments", body, f"{run_id}n{n}p0"  # a replay reuses the key
        posts: dict[str, tuple[str, dict[str, Any] | None]] = {
            "confirm": (f"{pay}/confirm", None),
            "capture": (f"{pay}/capture", None),
            "capture_part": (f"{pay}/capture", {"amount_minor": AMOUNT_MINOR - PART_MINOR}),
            "cancel": (f"{pay}/cancel", None),
            "refund": (f"{pay}/refunds", None),
            "refund_part": (f"{pay}/refunds", {"amount_minor": PART_MINOR}),
        }
        if step in posts:
            path, body = posts[step]
            return "POST", path, body, key
        gets = {"get": pay, "ledger": f"{pay}/ledger", "refunds": f"{pay}/refunds"}
        return "GET", gets[step], None, None


@dataclass(slots=True)
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    ok: int = 0
    non_2xx: dict[int, int] = field(default_factory=dict)
    examples: dict[int, str] = field(default_factory=dict)  # one answer per error status
    lost: int = 0  # no complete answer
    unsent: int = 0  # an open loop's calls never sent: the schedule ran too late
    elapsed_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per part, if known

    @property
    def errors(self) -> int:
        """Calls sent and not answered 2xx (unsent calls are counted apart)."""
        return sum(self.non_2xx.values()) + self.lost

    @property
    def calls_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentiles_ms(self) -> tuple[float, float, float]:
        """p50, p95, p99 of answered calls; NaN with fewer than two."""
        if len(self.latencies_s) < 2:
            return float("nan"), float("nan"), float("nan")
        cuts = statistics.quantiles(self.latencies_s, n=100, method="inclusive")
        return cuts[49] * 1e3, cuts[94] * 1e3, cuts[98] * 1e3


class LostCall(Exception):
    """No complete answer: a timeout, a refused or dropped connection, a garbled reply."""


class Connection:
    """One keep-alive HTTP/1.1 connection to the engine; just enough protocol for it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, request: bytes) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._exchange(request), REQUEST_TIMEOUT_S)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            raise LostCall(type(exc).__name__) from exc

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(request)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {name.strip().lower(): value.strip() for name, _, value in
                   (line.partition(":") for line in lines[1:] if line)}  # fmt: skip
        length = int(headers.get("content-length", "-1"))
        if not 0 <= length <= BODY_BYTES_MAX:
            raise ValueError("an answer without a usable Content-Length")
        payload = await self.reader.readexactly(length)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, payload

    def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()


class Driver:
    """Checkout flows over keep-alive connections; ``call`` sends a flow's next request."""

    def __init__(self, port: int, api_keys: list[str], run_id: str) -> None:
        self.host_line = f"Host: {HOST}:{port}\r\n"
        self.api_keys = api_keys
        self.run_id = run_id
        self.flows_started = 0

    def new_flow(self) -> Flow:
        n = self.flows_started
        self.flows_started += 1
        return Flow(n, self.api_keys[n % len(self.api_keys)], FLOWS[n % len(FLOWS)])

    def encode(self, flow: Flow) -> bytes:
        method, path, body, key = flow.request(self.run_id)
        head = f"{method} {path} HTTP/1.1\r\n{self.host_line}"
        head += f"Authorization: Bearer {flow.api_key}\r\n"
        if key is not None:
            head += f"Idempotency-Key: {key}\r\n"
        payload = b"" if body is None else json.dumps(body).encode()
        if method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        return (head + "\r\n").encode() + payload

    async def call(self, conn: Connection, flow: Flow, tally: Tally, started_s: float) -> None:
        """One call; latency from ``started_s`` (the intended start, in an open loop)."""
        request = self.encode(flow)
        try:
            status, payload = await conn.request(request)
        except LostCall:
            tally.lost += 1
            flow.position = len(flow.steps)  # a flow stops at its first failure
            return
        tally.latencies_s.append(time.perf_counter() - started_s)
        if not 200 <= status < 300:
            tally.non_2xx[status] = tally.non_2xx.get(status, 0) + 1
            line = request.split(b" HTTP", 1)[0].decode()
            tally.examples.setdefault(status, f"{line}: {payload[:300].decode(errors='replace')}")
            flow.position = len(flow.steps)
            return
        tally.ok += 1
        if flow.position == 0:
            flow.payment_id = json.loads(payload)["id"]
        flow.position += 1


async def closed_loop(
    driver: Driver, conns: list[Connection], seconds: float, database_name: str | None = None
) -> Tally:
    """One worker per connection runs flows back to back until the deadline."""
    tally = Tally()
    before = cpu_snapshot(database_name)
    started_s = time.perf_counter()
    deadline_s = started_s + seconds

    async def worker(conn: Connection) -> None:
        flow = driver.new_flow()
        while time.perf_counter() < deadline_s:
            if flow.done:
                flow = driver.new_flow()
            await driver.call(conn, flow, tally, time.perf_counter())

    await asyncio.gather(*(worker(conn) for conn in conns))
    tally.elapsed_s = time.perf_counter() - started_s
    tally.cpu_s = cpu_delta(before, cpu_snapshot(database_name))
    return tally


async def open_loop(
    driver: Driver, conns: list[Connection], rate_per_s: float, seconds: float, late_s_max: float
) -> Tally:
    """Calls on a fixed schedule, each timed from its intended start; a call waits for
    an idle connection (bounded by the connections), and that wait counts."""
    tally = Tally()
    ready: deque[Flow] = deque()  # flows whose last call was answered
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for conn in conns:
        idle.put_nowait(conn)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(conn: Connection, flow: Flow, intended_s: float) -> None:
        try:
            await driver.call(conn, flow, tally, intended_s)
        finally:
            idle.put_nowait(conn)
        if not flow.done:
            ready.append(flow)

    calls = int(rate_per_s * seconds)
    started_s = time.perf_counter()
    for number in range(calls):
        intended_s = started_s + number / rate_per_s
        if intended_s > time.perf_counter():
            await asyncio.sleep(intended_s - time.perf_counter())  # the schedule, not a poll
        try:
            late_s = intended_s + late_s_max - time.perf_counter()
            conn = await asyncio.wait_for(idle.get(), max(0.0, late_s))
        except TimeoutError:
            tally.unsent = calls - number
            break
        flow = ready.popleft() if ready else driver.new_flow()
        task = asyncio.create_task(one(conn, flow, intended_s))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT_S)
    tally.elapsed_s = time.perf_counter() - started_s
    return tally


async def drive(
    port: int, api_keys: list[str], mode: Mode, run_id: str, database_name: str | None
) -> tuple[Tally, Tally]:
    conns = [Connection(port) for _ in range(mode.connections)]
    driver = Driver(port, api_keys, run_id)
    try:
        await closed_loop(driver, conns, mode.warmup_s)
        saturation = await closed_loop(driver, conns, mode.saturation_s, database_name)
        offered = await open_loop(driver, conns, OFFERED_PER_S, mode.offered_s, mode.late_s_max)
    finally:
        for conn in conns:
            conn.close()
    return saturation, offered


# -- where the CPU went (Linux /proc; nothing elsewhere) ----------------------------------------
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROCESS_DEPTH_MAX = 16


def _process(pid: str) -> tuple[str, float] | None:
    """(parent pid, CPU seconds) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[1], (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _part(child_pid: str) -> str:
    """Which server a child of this process is, from its command line."""
    argv = _cmdline(child_pid).split(b"\0")
    return "engine" if b"engine" in argv[3:] else "mock PSP" if b"psp" in argv else "children"


def cpu_snapshot(database_name: str | None = None) -> dict[str, float]:
    """CPU seconds so far: the machine (busy), this process, each child's process tree and
    the PostgreSQL backends serving ``database_name`` (their title names the database)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return {}
    out = {"machine": (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS_PER_S,
           "load generator": time.process_time()}  # fmt: skip
    me, backend = str(os.getpid()), f" {database_name} ".encode() if database_name else None
    procs = {pid: found for pid in os.listdir("/proc") if pid.isdigit()
             if (found := _process(pid)) is not None}  # fmt: skip
    for pid, (_, seconds) in procs.items():
        chain = [pid]
        while chain[-1] in procs and chain[-1] != me and len(chain) < PROCESS_DEPTH_MAX:
            chain.append(procs[chain[-1]][0])
        part = None
        if chain[-1] == me and len(chain) > 1:
            part = _part(chain[-2])
        elif backend is not None and backend in _cmdline(pid):
            part = "PostgreSQL backends"
        if part is not None:
            out[part] = out.get(part, 0.0) + seconds
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per part over a phase; what no part used is the database's and others'."""
    if not before or not after:
        return {}
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    machine = used.pop("machine")
    used["everything else"] = max(0.0, machine - sum(used.values()))
    used["machine"] = machine
    return used


def cpu_note(tally: Tally) -> str:
    """Cores used per part and CPU per 2xx call; the ceiling this run's parts allow."""
    if not tally.cpu_s or not tally.ok:
        return "CPU use not measured (no /proc)"
    cores = {name: seconds / tally.elapsed_s for name, seconds in tally.cpu_s.items()}
    parts = [f"{name} {cores[name]:.2f} ({tally.cpu_s[name] / tally.ok * 1e3:.1f} ms/call)"
             for name in sorted(cores) if name != "machine"]  # fmt: skip
    own_s = sum(v for k, v in tally.cpu_s.items() if k not in {"machine", "everything else"})
    ceiling = (os.cpu_count() or 1) * tally.ok / own_s if own_s > 0 else float("inf")
    return (f"{cores['machine']:.2f} of {os.cpu_count()} cores busy: {', '.join(parts)}; "
            f"the run's own parts took {own_s / tally.ok * 1e3:.1f} ms of CPU per call: at that "
            f"cost {os.cpu_count()} otherwise idle cores would serve {ceiling:,.0f} calls/s at "
            "most")  # fmt: skip


# -- one database ------------------------------------------------------------------------------
@dataclass(slots=True)
class DatabaseResult:
    name: str
    saturation: Tally
    offered: Tally
    violations: list[str]
    webhooks: int
    pgbench_tps: float | None = None
    pgbench_note: str = ""


def make_keys(db_url: str) -> list[str]:
    return [new_api_key(db_url, f"m_bench_{n}", "secret")[1] for n in range(MERCHANTS)]


def measure(name: str, db_url: str, mode: Mode, work: Path, console: Console) -> DatabaseResult:
    """Servers up, load, settle, check; the servers are always stopped."""
    keys = make_keys(db_url)
    faults = work / "no-latency.json"
    faults.write_text(json.dumps(PSP_FAULTS))
    psp_port, engine_port = free_port(), free_port()
    psp_url, engine_url = f"http://{HOST}:{psp_port}", f"http://{HOST}:{engine_port}"
    label = re.sub(r"[^a-z]", "", name)[:8]
    with ExitStack() as stack:
        stack.enter_context(running(
            cli("serve", "psp", "--port", str(psp_port), "--seed", "1", "--faults", str(faults)),
            dict(os.environ), f"{psp_url}/v1/balance", work / f"psp-{label}.log",
        ))  # fmt: skip
        secret = register_webhooks(psp_url, engine_url)
        stack.enter_context(running(
            cli("serve", "engine", "--db", db_url, "--psp", psp_url, "--port", str(engine_port),
                "--workers", str(mode.engine_workers)),
            {**os.environ, "PAYCHAOS_WEBHOOK_SECRET": secret},
            f"{engine_url}/readyz", work / f"engine-{label}.log",
        ))  # fmt: skip
        console.print(f"[dim]{name}: {mode.warmup_s:g} s warm-up, {mode.saturation_s:g} s "
                      f"at saturation, {mode.offered_s:g} s at {OFFERED_PER_S:g}/s[/]")  # fmt: skip
        run_id = f"b{os.getpid()}{label}"
        database_name = sa.make_url(db_url).database if db_url.startswith("postgresql") else None
        saturation, offered = asyncio.run(drive(engine_port, keys, mode, run_id, database_name))
        settle(db_url, psp_url)
        outcomes = httpx.get(f"{psp_url}/_admin/webhooks", timeout=10.0).json()["outcomes"]
        results, problems = check(db_url, psp_url)
    violations = [f"{r.invariant} {r.name}: {v}" for r in results for v in r.violations[:5]]
    webhooks = sum(count for outcome, count in outcomes.items() if outcome.endswith("accepted"))
    return DatabaseResult(name, saturation, offered, violations + problems, webhooks)


# -- pgbench -----------------------------------------------------------------------------------
def pgbench(db_url: str, mode: Mode) -> tuple[float | None, str]:
    """TPC-B transactions/s on the database at ``db_url``, or None and why not."""
    program = shutil.which("pgbench") or (
        str(PGBENCH_FALLBACK) if PGBENCH_FALLBACK.exists() else None
    )
    if program is None:
        return None, "pgbench not installed (Debian: postgresql-client)"
    url = sa.make_url(normalize_url(db_url))
    where = ["-h", url.host or HOST, "-p", str(url.port or 5432), "-U", url.username or "postgres",
             str(url.database)]  # fmt: skip
    env = {**os.environ, **({"PGPASSWORD": url.password} if url.password else {})}
    n, scale = str(mode.pgbench_clients), str(mode.pgbench_scale)
    output = ""
    for argv in (["-i", "-q", "-s", scale], ["-c", n, "-j", n, "-T", str(mode.pgbench_s)]):
        try:
            done = subprocess.run([program, *argv, *where], env=env, capture_output=True,
                                  text=True, check=False, timeout=mode.pgbench_s + 120)  # fmt: skip
        except subprocess.TimeoutExpired:
            return None, "pgbench did not finish in time"
        if done.returncode != 0:
            return None, f"pgbench failed: {(done.stderr or done.stdout).strip()[-200:]}"
        output = done.stdout
    found = re.search(r"^tps = ([0-9.]+)", output, re.MULTILINE)
    if found is None:
        return None, "no tps line in pgbench's output"
    return float(found.group(1)), f"TPC-B, scale {scale}, -c {n} -j {n} -T {mode.pgbench_s}"


# -- the table ---------------------------------------------------------------------------------
def _met(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def _pgbench_row(r: DatabaseResult) -> list[str]:
    goal = f"ratio >= {PGBENCH_RATIO_GOAL:g}"
    if r.pgbench_tps is None:
        return ["", "pgbench TPC-B", "", "-", "", "", "", "", "", "", goal, "-"]
    ratio = r.saturation.calls_per_s / r.pgbench_tps
    return ["", "pgbench TPC-B", "", f"{r.pgbench_tps:,.0f} tps", "", "", "", "", "", "",
            f"{goal}: {ratio:.2f}", _met(ratio >= PGBENCH_RATIO_GOAL)]  # fmt: skip


def render(results: list[DatabaseResult], mode: Mode) -> Table:
    table = Table(title=f"bench api: payment API calls over HTTP on 127.0.0.1, engine with "
                        f"{mode.engine_workers} worker(s), provider latency 0")  # fmt: skip
    for column in ("database", "phase", "2xx calls", "calls/s", "p50 ms", "p95 ms", "p99 ms",
                   "errors", "unsent", "violations", "goal", "met"):  # fmt: skip
        justify = "left" if column in {"database", "phase", "goal"} else "right"
        table.add_column(column, justify=justify, no_wrap=column != "database")  # type: ignore[arg-type]
    for r in results:
        sat, off = r.saturation, r.offered
        table.add_row(
            r.name, f"saturation ({mode.connections} conn.)", str(sat.ok),
            f"{sat.calls_per_s:,.0f}", *(f"{p:.1f}" for p in sat.percentiles_ms()),
            str(sat.errors), "", str(len(r.violations)), f">= {CALLS_PER_S_GOAL:g}/s, 0 violations",
            _met(sat.calls_per_s >= CALLS_PER_S_GOAL and not r.violations),
        )  # fmt: skip
        table.add_row(
            "", f"{OFFERED_PER_S:g}/s offered", str(off.ok), f"{off.calls_per_s:,.0f}",
            *(f"{p:.1f}" for p in off.percentiles_ms()), str(off.errors), str(off.unsent), "",
            f"p99 < {P99_MS_GOAL:g} ms, 0 errors",
            _met(off.percentiles_ms()[2] < P99_MS_GOAL and not off.errors and not off.unsent),
        )  # fmt: skip
        if r.pgbench_note:
            table.add_row(*_pgbench_row(r))
    return table


def report(console: Console, results: list[DatabaseResult], mode: Mode) -> int:
    console.print(render(results, mode))
    for r in results:
        if r.pgbench_note:
            console.print(f"[dim]{r.name}, pgbench:[/] {r.pgbench_note}; ratio: API calls/s at "
                          "saturation over pgbench's transactions/s")  # fmt: skip
        console.print(f"[dim]{r.name}, CPU at saturation:[/] {cpu_note(r.saturation)}")
        calls = r.saturation.ok + r.offered.ok
        console.print(f"[dim]{r.name}:[/] the engine also took {r.webhooks} webhooks from the "
                      f"provider ({r.webhooks / max(1, calls):.2f} per 2xx call)")  # fmt: skip
        for tally, phase in ((r.saturation, "saturation"), (r.offered, "open loop")):
            if not tally.errors and not tally.unsent:
                continue
            codes = ", ".join(f"{code} x{count}" for code, count in sorted(tally.non_2xx.items()))
            console.print(f"[yellow]{r.name}, {phase}:[/] non-2xx: {codes or 'none'}; "
                          f"no answer: {tally.lost}; unsent, the schedule "
                          f"{mode.late_s_max:g} s late: {tally.unsent}")  # fmt: skip
            for status, example in sorted(tally.examples.items()):
                console.print(f"  {status} {example}")
        for line in r.violations:
            console.print(f"[red]{r.name}: violation:[/] {line}")
    if any(r.violations for r in results):
        return 1
    console.print(f"[green]every invariant holds after the load on "
                  f"{' and '.join(r.name for r in results)}[/] (the audit, and agreement with "
                  "the provider's ground truth)")  # fmt: skip
    return 0


def run(small: bool, db_url: str | None, console: Console) -> int:
    if db_url is not None and (problem := postgres_url_problem(db_url)) is not None:
        console.print(f"[red]error:[/] --db-url: {problem}")
        return 2
    mode = SMALL if small else FULL
    results: list[DatabaseResult] = []
    with tempfile.TemporaryDirectory(prefix="paychaos-bench-api-") as tmp:
        work = Path(tmp)
        try:
            sqlite = Database(f"sqlite:///{work / 'bench-api.db'}", migrate=True)
            sqlite.dispose()
            results.append(measure("sqlite (file, WAL)", sqlite.url, mode, work, console))
            if db_url is not None:
                with postgres_database(db_url) as database:
                    database.dispose()
                    result = measure(describe(db_url), database.url, mode, work, console)
                    result.pgbench_tps, result.pgbench_note = pgbench(database.url, mode)
                    results.append(result)
        except (RuntimeError, TimeoutError) as exc:
            console.print(f"[red]error:[/] a server did not start: {exc}")
            for log in sorted(work.glob("*.log")):
                console.print(f"[dim]{log.name}:[/] {log.read_text(errors='replace')[-600:]}")
            return 1
    return report(console, results, mode)
