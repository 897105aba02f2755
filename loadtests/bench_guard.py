"""``paychaos bench guard``: what an oversized request costs the engine's API.

``paychaos serve engine`` runs on a free 127.0.0.1 port (a SQLite file; no provider
is called). A raw socket sends each request below as a client would, the body in
64 KiB chunks, and stops sending as soon as the server answers. For each it
measures the time from the first byte sent to the status line, the bytes the
client got out before the answer, and the server's peak resident memory
(``VmHWM`` in ``/proc/PID/status``) before and after: the growth is what the
request cost at its worst. The baseline, measured the same way in the same run, is
a small valid request.

Cases: a 200 MB body declared by ``Content-Length`` without a key, a 200 MB
chunked body without ``Content-Length`` to the webhook intake without a signature,
and one with a valid key to ``POST /v1/payments``. Goal: each refused (413) in
under 100 ms, at a cost under 10 MB of memory. ``--small`` sends 20 MB.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engine.adapters.database import Database
from engine.entrypoints.serve import new_api_key
from loadtests.load import cli, free_port, wait_ready

HOST = "127.0.0.1"
CHUNK_BYTES = 64 * 1024
FULL_BYTES = 200 * 1024 * 1024
SMALL_BYTES = 20 * 1024 * 1024
REFUSED_MS_GOAL = 100.0
MEMORY_MB_GOAL = 10.0
ANSWER_S_MAX = 30.0


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    path: str
    headers: dict[str, str]
    body_bytes: int
    chunked: bool


@dataclass(frozen=True, slots=True)
class Measured:
    case: Case
    status: int
    elapsed_ms: float
    sent_bytes: int
    peak_growth_mb: float

    def within_goals(self) -> bool:
        return (
            self.status == 413
            and self.elapsed_ms < REFUSED_MS_GOAL
            and self.peak_growth_mb < MEMORY_MB_GOAL
        )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc (Linux only)")


def send(port: int, case: Case) -> tuple[int, float, int]:
    """(status, ms to the status line, bytes sent before it) for one request."""
    head = [f"POST {case.path} HTTP/1.1", f"Host: {HOST}:{port}",
            "Content-Type: application/json"]  # fmt: skip
    head += [f"{name}: {value}" for name, value in case.headers.items()]
    head.append("Transfer-Encoding: chunked" if case.chunked
                else f"Content-Length: {case.body_bytes}")  # fmt: skip
    chunk = b"x" * CHUNK_BYTES
    if case.chunked:
        chunk = f"{CHUNK_BYTES:x}\r\n".encode() + chunk + b"\r\n"
    sent_bytes = 0
    with socket.create_connection((HOST, port), timeout=ANSWER_S_MAX) as sock:
        started = time.perf_counter()
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        while sent_bytes < case.body_bytes:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # answered before the body was all sent
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent_bytes += CHUNK_BYTES
        else:
            if case.chunked:
                sock.sendall(b"0\r\n\r\n")
        status_line = _status_line(sock)
        elapsed_ms = (time.perf_counter() - started) * 1000
    return int(status_line.split()[1]), elapsed_ms, sent_bytes


def _status_line(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n" not in received:
        part = sock.recv(4096)
        if not part:
            raise RuntimeError(f"the server closed without answering: {received!r}")
        received += part
    return received.split(b"\r\n", 1)[0]


def cases(body_bytes: int, key: str) -> list[Case]:
    return [
        Case("baseline: a valid ~0.5 KB create", "/v1/payments",
             {"Authorization": f"Bearer {key}", "Idempotency-Key": "baseline"}, 0, False),
        Case("declared Content-Length, no key", "/v1/payments", {}, body_bytes, False),
        Case("chunked, webhook intake, no signature", "/v1/webhooks/psp", {}, body_bytes, True),
        Case("chunked, valid key, create", "/v1/payments",
             {"Authorization": f"Bearer {key}", "Idempotency-Key": "big"}, body_bytes, True),
    ]  # fmt: skip


def measure_all(port: int, pid: int, key: str, body_bytes: int) -> list[Measured]:
    results = []
    for case in cases(body_bytes, key):
        before_mb = peak_rss_mb(pid)
        if case.body_bytes == 0:
            status, elapsed_ms, sent = _baseline(port, key)
        else:
            status, elapsed_ms, sent = send(port, case)
        results.append(Measured(case, status, elapsed_ms, sent, peak_rss_mb(pid) - before_mb))
    return results


def _baseline(port: int, key: str) -> tuple[int, float, int]:
    body = (
        b'{"amount_minor": 1000, "currency": "EUR", "order_id": "bench-guard", '
        b'"payment_method": "pm_card_visa", "metadata": {"note": "' + b"n" * 400 + b'"}}'
    )
    head = (f"POST /v1/payments HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nIdempotency-Key: baseline\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection((HOST, port), timeout=ANSWER_S_MAX) as sock:
        started = time.perf_counter()
        sock.sendall(head + body)
        status_line = _status_line(sock)
        return int(status_line.split()[1]), (time.perf_counter() - started) * 1000, len(body)


def run(small: bool, console: Console) -> int:
    body_bytes = SMALL_BYTES if small else FULL_BYTES
    with tempfile.TemporaryDirectory(prefix="paychaos-bench-guard-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'guard.db'}"
        Database(db_url, migrate=True).dispose()
        _, key = new_api_key(db_url, "m_guard", "secret")
        port = free_port()
        args = cli("serve", "engine", "--db", db_url, "--port", str(port), "--no-workers",
                   "--psp", f"http://{HOST}:{free_port()}")  # fmt: skip
        env = {**os.environ, "PAYCHAOS_WEBHOOK_SECRET": "whsec_bench_guard"}
        with (Path(tmp) / "engine.log").open("wb") as log:
            process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_ready(f"http://{HOST}:{port}/readyz", process)
                results = measure_all(port, process.pid, key, body_bytes)
            finally:
                process.terminate()
                process.wait(timeout=30)
    return report(console, results, body_bytes)


def report(console: Console, results: list[Measured], body_bytes: int) -> int:
    table = Table(title=f"oversized requests ({body_bytes // (1024 * 1024)} MB) against the "
                  "engine's API; baseline: a valid ~0.5 KB create")  # fmt: skip
    for column in ("request", "status", "ms to answer", "MB sent before it",
                   "peak RSS growth MB", f"goal: 413 < {REFUSED_MS_GOAL:g} ms, < "
                   f"{MEMORY_MB_GOAL:g} MB"):  # fmt: skip
        table.add_column(column, justify="left" if column == "request" else "right")
    for result in results:
        table.add_row(
            result.case.name, str(result.status), f"{result.elapsed_ms:.1f}",
            f"{result.sent_bytes / (1024 * 1024):.2f}", f"{result.peak_growth_mb:.2f}",
            "-" if result.case.body_bytes == 0 else ("met" if result.within_goals() else "MISSED"),
        )  # fmt: skip
    console.print(table)
    oversized = [result for result in results if result.case.body_bytes]
    if any(result.status != 413 for result in oversized):
        console.print("[red]an oversized request was not refused with 413[/]")
        return 1
    if not all(result.within_goals() for result in oversized):
        console.print("[yellow]a goal was missed (the machine's noise counts in the time)[/]")
    return 0
