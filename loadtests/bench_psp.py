"""``paychaos bench psp``: create + confirm + capture per second, next to same-run baselines.

Targets, each a separate server process on a free 127.0.0.1 port, started, measured
and stopped in turn on the same machine in the same run:

- ``paychaos serve psp``, faults off;
- ``paychaos serve psp`` with a moderate fault plan (latency 0-4 ms, 1 % 500s, 1 % 503s,
  0.5 % lost requests, 0.5 % lost responses, 2 % extra declines on confirm);
- a trivial FastAPI endpoint (one catch-all POST that returns a constant JSON object)
  served the same way (uvicorn, one process, access log off): the ceiling;
- localstripe (PyPI ``localstripe``), when installed; left out with ``--small``.

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio streams (far
cheaper per request than the servers it measures), with a fixed number of connections,
each running whole flows: POST /v1/payment_intents, POST .../confirm, POST .../capture,
every request with its own Idempotency-Key as Stripe's SDKs send. It is bounded in
flows and in seconds per target. Requests/s counts answered requests; latencies are
per request (p50/p99). Goals: >= 30x localstripe and >= 0.5x the trivial endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

API_KEY = "sk_test_bench"
HOST = "127.0.0.1"
READY_S_MAX = 30.0
STOP_S_MAX = 10.0
REQUEST_TIMEOUT_S = 2.0
HEADER_BYTES_MAX = 64 * 1024
BODY_BYTES_MAX = 4 * 1024 * 1024
GOAL_VS_LOCALSTRIPE = 30.0
GOAL_VS_TRIVIAL = 0.5
CREATE_BODY = b"amount=1000&currency=usd&payment_method=pm_card_visa&capture_method=manual"

MODERATE_FAULTS = """\
api_latency: {kind: uniform, min_ms: 0, max_ms: 4}
api_rules:
  - endpoints: ["payment_intents.*"]
    error_500_rate: 0.01
    error_503_rate: 0.01
    timeout_before_rate: 0.005
    timeout_after_rate: 0.005
  - endpoints: ["payment_intents.confirm"]
    decline_rate: 0.02
rate_limit: {capacity: 100000, refill_per_s: 100000}
"""

# localstripe pickles its whole store to /tmp/localstripe.pickle on every write; the
# bench keeps that cost but writes to a file of its own (argv[2]).
LOCALSTRIPE_MAIN = """\
import pickle, sys
from aiohttp import web
from localstripe.resources import store
from localstripe.server import app

def dump_to_disk():
    with open(sys.argv[2], "wb") as f:
        pickle.dump(store, f, protocol=pickle.HIGHEST_PROTOCOL)

store.dump_to_disk = dump_to_disk
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


@dataclass(frozen=True, slots=True)
class Mode:
    flows: int
    connections: int
    seconds_max: float
    warmup_flows: int
    localstripe_flows: int
    localstripe: bool


SMALL = Mode(
    flows=150,
    connections=8,
    seconds_max=10.0,
    warmup_flows=10,
    localstripe_flows=0,
    localstripe=False,
)
FULL = Mode(
    flows=3_000,
    connections=32,
    seconds_max=30.0,
    warmup_flows=100,
    localstripe_flows=200,
    localstripe=True,
)


@dataclass(slots=True)
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    lost: int = 0
    flows_ok: int = 0
    flows_failed: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    requests_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    non_200: int = 0
    lost: int = 0
    flows_ok: int = 0
    note: str = ""


class LostRequest(Exception):
    """No (complete) answer: a timeout or a dropped connection."""


class Connection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for these servers."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._host_header = f"Host: {HOST}:{port}\r\n".encode()

    async def request(self, path: str, body: bytes, key: str) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._exchange(path, body, key), REQUEST_TIMEOUT_S)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            await self.close()
            raise LostRequest(type(exc).__name__) from exc

    async def _exchange(self, path: str, body: bytes, key: str) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(HOST, self._port)
        assert self._reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\n".encode()
            + self._host_header
            + f"Authorization: Bearer {API_KEY}\r\nIdempotency-Key: {key}\r\n".encode()
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        self._writer.write(head + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        if len(raw) > HEADER_BYTES_MAX:
            raise ValueError("response headers too large")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        length = int(headers.get("content-length", "-1"))
        if not 0 <= length <= BODY_BYTES_MAX:
            raise ValueError("response without a usable Content-Length")
        payload = await self._reader.readexactly(length)
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, payload

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# One key sequence for the whole process: a reused key would be a cheap replay.
_KEYS = itertools.count()


async def _flow(conn: Connection, tally: Tally) -> None:
    """create -> confirm -> capture; stops at the first request that is not a 200."""
    path, body = "/v1/payment_intents", CREATE_BODY
    for step in ("create", "confirm", "capture"):
        started_s = time.perf_counter()
        try:
            status, payload = await conn.request(path, body, f"bench-{os.getpid()}-{next(_KEYS)}")
        except LostRequest:
            tally.lost += 1
            tally.flows_failed += 1
            return
        tally.latencies_s.append(time.perf_counter() - started_s)
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if status != 200:
            tally.flows_failed += 1
            return
        if step == "create":
            intent_id = json.loads(payload)["id"]
            path, body = f"/v1/payment_intents/{intent_id}/confirm", b""
        elif step == "confirm":
            path = f"/v1/payment_intents/{intent_id}/capture"
    tally.flows_ok += 1


async def _load(port: int, flows: int, connections: int, seconds_max: float) -> tuple[Tally, float]:
    tally = Tally()
    remaining = [flows]
    deadline_s = time.perf_counter() + seconds_max

    async def worker() -> None:
        conn = Connection(port)
        try:
            while remaining[0] > 0 and time.perf_counter() < deadline_s:
                remaining[0] -= 1
                await _flow(conn, tally)
        finally:
            await conn.close()

    started_s = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(connections, flows))))
    return tally, time.perf_counter() - started_s


def _percentile_ms(sorted_s: list[float], fraction: float) -> float:
    index = min(len(sorted_s) - 1, max(0, round(fraction * (len(sorted_s) - 1))))
    return sorted_s[index] * 1000.0


def measure(name: str, port: int, flows: int, mode: Mode) -> Result:
    asyncio.run(_load(port, mode.warmup_flows, mode.connections, mode.seconds_max))
    tally, elapsed_s = asyncio.run(_load(port, flows, mode.connections, mode.seconds_max))
    answered = len(tally.latencies_s)
    if answered == 0:
        return Result(name, note=f"no answers ({tally.lost} lost)")
    ordered = sorted(tally.latencies_s)
    return Result(
        name,
        requests_per_s=answered / elapsed_s,
        p50_ms=_percentile_ms(ordered, 0.50),
        p99_ms=_percentile_ms(ordered, 0.99),
        requests=answered,
        non_200=answered - tally.statuses.get(200, 0),
        lost=tally.lost,
        flows_ok=tally.flows_ok,
    )


# --- server processes --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_http(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"GET /ready HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


@contextlib.contextmanager
def server_process(command: list[str], port: int, log_path: Path) -> Iterator[None]:
    """Start a server, wait (bounded) until it answers HTTP, and always stop it."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            deadline_s = time.monotonic() + READY_S_MAX
            while not _answers_http(port):
                if process.poll() is not None or time.monotonic() > deadline_s:
                    tail = log_path.read_text(errors="replace")[-400:].strip()
                    raise RuntimeError(f"server did not start: {tail or 'no output'}")
                time.sleep(0.02)
            yield
        finally:
            process.terminate()
            try:
                process.wait(STOP_S_MAX)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_S_MAX)


def _psp_command(faults: Path | None) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        args = [sys.executable, "-m", "engine.entrypoints.cli", "serve", "psp"]
        args += ["--port", str(port), "--seed", "1", "--timeout-hold-s", "0.2"]
        return args + (["--faults", str(faults)] if faults is not None else [])

    return command


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    command: Callable[[int], list[str]] | None  # port -> argv; None: not measured
    flows: int = 0
    note: str = ""


def _targets(workdir: Path, mode: Mode) -> list[Target]:
    faults = workdir / "moderate-faults.yaml"
    faults.write_text(MODERATE_FAULTS)
    pickle_path = str(workdir / "localstripe.pickle")
    targets = [
        Target("mock PSP, faults off", _psp_command(None), mode.flows),
        Target("mock PSP, moderate faults", _psp_command(faults), mode.flows),
        Target(
            "trivial FastAPI endpoint",
            lambda port: [sys.executable, "-m", "loadtests.bench_psp", "trivial", str(port)],
            mode.flows,
        ),
    ]
    if not mode.localstripe:
        targets.append(Target("localstripe", None, note="left out (--small)"))
    elif importlib.util.find_spec("localstripe") is None:
        targets.append(Target("localstripe", None, note="not installed (pip install localstripe)"))
    else:
        targets.append(
            Target(
                "localstripe",
                lambda port: [sys.executable, "-c", LOCALSTRIPE_MAIN, str(port), pickle_path],
                mode.localstripe_flows,
            )
        )
    return targets


def run_targets(mode: Mode, console: Console) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="paychaos-bench-psp-") as tmp:
        workdir = Path(tmp)
        for target in _targets(workdir, mode):
            if target.command is None:
                results.append(Result(target.name, note=target.note))
                continue
            port = _free_port()
            console.print(f"[dim]measuring {target.name} on port {port} ...[/]")
            log_path = workdir / f"server-{port}.log"
            try:
                with server_process(target.command(port), port, log_path):
                    results.append(measure(target.name, port, target.flows, mode))
            except RuntimeError as exc:
                results.append(Result(target.name, note=str(exc)[:200]))
    return results


# --- the table ---------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:,.2f}x"


def render(results: list[Result], mode: Mode) -> Table:
    by_name = {result.name: result for result in results}
    trivial = by_name["trivial FastAPI endpoint"].requests_per_s
    localstripe = by_name["localstripe"].requests_per_s
    table = Table(
        title=(
            f"bench psp: create + confirm + capture, {mode.connections} connections, "
            f"up to {mode.flows} flows or {mode.seconds_max:.0f} s per target"
        )
    )
    for header in ("target", "req/s", "p50 ms", "p99 ms", "requests", "non-200", "lost"):
        table.add_column(header, justify="left" if header == "target" else "right")
    table.add_column("vs trivial", justify="right")
    table.add_column("vs localstripe", justify="right")
    table.add_column("note")
    for result in results:
        table.add_row(
            result.name,
            _fmt(result.requests_per_s, 0),
            _fmt(result.p50_ms, 2),
            _fmt(result.p99_ms, 2),
            str(result.requests),
            str(result.non_200),
            str(result.lost),
            _ratio(result.requests_per_s, trivial),
            _ratio(result.requests_per_s, localstripe),
            result.note,
        )
    return table


def goals(results: list[Result]) -> list[str]:
    by_name = {result.name: result for result in results}
    psp = by_name["mock PSP, faults off"].requests_per_s
    lines = []
    for base_name, goal in (
        ("trivial FastAPI endpoint", GOAL_VS_TRIVIAL),
        ("localstripe", GOAL_VS_LOCALSTRIPE),
    ):
        base = by_name[base_name].requests_per_s
        if psp is None or not base:
            lines.append(f"goal >= {goal:g}x {base_name}: not measured")
            continue
        ratio = psp / base
        verdict = "met" if ratio >= goal else "NOT met"
        lines.append(f"goal >= {goal:g}x {base_name}: {ratio:,.2f}x, {verdict}")
    return lines


def run(small: bool, console: Console) -> list[Result]:
    mode = SMALL if small else FULL
    results = run_targets(mode, console)
    console.print(render(results, mode))
    for line in goals(results):
        console.print(line)
    console.print(f"[dim]{os.cpu_count()} CPUs; load generator and server share them.[/]")
    return results


def _serve_trivial(port: int) -> None:
    """The ceiling: FastAPI doing nothing but answer, served as ``serve psp`` is."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    answer = {"id": "pi_trivial", "object": "payment_intent", "status": "succeeded"}

    @app.post("/{rest:path}")
    async def anything(rest: str) -> dict[str, str]:
        return answer

    @app.get("/{rest:path}")
    async def ready(rest: str) -> dict[str, str]:
        return answer

    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False, ws="none")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "trivial":
        _serve_trivial(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m loadtests.bench_psp trivial PORT")
