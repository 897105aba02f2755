"""Real servers for robustness tests: the mock PSP and the engine as subprocesses.

Each server runs in a session of its own (so a SIGKILL takes the engine's
uvicorn worker processes with it) on a port chosen at run time; readiness and
every later condition are polled with a bound, never slept for.

The engine always has a webhook signing secret (it refuses to start without one):
``WEBHOOK_SECRET`` unless a test registers an endpoint on the mock PSP, which then
answers the secret to give it. Its ``/metrics`` is on a port of its own,
``Server.metrics_url``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.adapters.api_keys import KeyStore
from engine.adapters.database import Database
from loadtests.load import cli, free_port

READY_S_MAX = 90.0
STOP_S_MAX = 30.0
POLL_S = 0.05
MERCHANT = "m_robust"
# For engines whose provider has no webhook endpoint registered (nothing is delivered);
# a test that registers one passes the secret the mock PSP answered instead.
WEBHOOK_SECRET = "whsec_live_servers_unregistered_0123456789"


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 120.0) -> Any:
    """Poll ``check`` until it returns something true, at most ``timeout_s``; return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(POLL_S)


@dataclass
class Server:
    name: str
    args: list[str]
    url: str
    ready_path: str
    log: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    metrics_url: str = ""  # the engine's metrics listener
    process: subprocess.Popen[bytes] | None = None
    _out: IO[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, f"{self.name} is running"
        self._out = self.log.open("ab")
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + READY_S_MAX
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(POLL_S)

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + self.ready_path, timeout=2.0).status_code < 500
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL to the whole session: no shutdown, no flush, nothing."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signum)
            try:
                process.wait(STOP_S_MAX)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_S_MAX)
        _reap_session(process.pid)
        if self._out is not None:
            self._out.close()
            self._out = None


def _reap_session(pgid: int) -> None:
    """Children of a killed uvicorn may outlive their parent for a moment: end them too."""
    deadline = time.monotonic() + STOP_S_MAX
    while _live_members(pgid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(POLL_S)


def _live_members(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (Linux ``/proc``)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def psp_server(tmp_path: Path, port: int | None = None, *extra: str) -> Server:
    port = port or free_port()
    args = cli("serve", "psp", "--port", str(port), "--seed", "1", *extra)
    return Server("mock PSP", args, f"http://127.0.0.1:{port}", "/_admin/faults",
                  tmp_path / "psp.log")  # fmt: skip


def engine_server(
    tmp_path: Path,
    db_url: str,
    psp_url: str,
    webhook_secret: str = WEBHOOK_SECRET,
    *extra: str,
    port: int | None = None,
) -> Server:
    """``serve engine`` on ``port`` (any free one by default), its metrics on another."""
    port, metrics_port = port or free_port(), free_port()
    args = cli("serve", "engine", "--db", db_url, "--psp", psp_url, "--port", str(port),
               "--metrics-port", str(metrics_port), *extra)  # fmt: skip
    env = {**os.environ, "PAYCHAOS_WEBHOOK_SECRET": webhook_secret}
    return Server("engine", args, f"http://127.0.0.1:{port}", "/readyz",
                  tmp_path / "engine.log", env, f"http://127.0.0.1:{metrics_port}")  # fmt: skip


def new_database(db_url: str) -> str:
    """Migrate the database and give the merchant a key; returns the key."""
    database = Database(db_url, migrate=True)
    secret = f"sk_{secrets.token_hex(24)}"
    KeyStore(database).create("key_robust", MERCHANT, "secret", secret, _now())
    database.dispose()
    return secret


def _now() -> Any:
    from engine.entrypoints.system import SystemClock

    return SystemClock().now()


def set_faults(psp_url: str, faults: dict[str, Any]) -> None:
    response = httpx.post(f"{psp_url}/_admin/faults", json=faults, timeout=10.0)
    assert response.status_code == 200, response.text


def ground_truth(psp_url: str) -> dict[str, Any]:
    truth: dict[str, Any] = httpx.get(f"{psp_url}/_admin/ground_truth", timeout=10.0).json()
    return truth


def metrics(metrics_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the engine's metrics listener (``Server.metrics_url``), by
    (name, sorted labels)."""
    response = httpx.get(f"{metrics_url}/metrics", timeout=10.0)
    assert response.status_code == 200, response.text
    text = response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    return found.get((name, tuple(sorted(labels.items()))), float("nan"))


def audit(db_url: str) -> None:
    """``paychaos audit --db``, as an operator would run it: exit 0 or the table."""
    result = subprocess.run(cli("audit", "--db", db_url), capture_output=True, text=True,
                            timeout=READY_S_MAX, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@contextmanager
def running(*servers: Server) -> Iterator[None]:
    """Start in order, stop in reverse order, whatever happens."""
    started: list[Server] = []
    try:
        for server in servers:
            server.start()
            started.append(server)
        yield
    finally:
        for server in reversed(started):
            server.stop()
