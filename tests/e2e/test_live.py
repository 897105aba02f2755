"""``paychaos live``: shipped scenarios in wall time against the real servers on loopback,
and proof that its checks fail when the engine behind the API is defective.

The mock PSP and the engine run as subprocesses on free 127.0.0.1 ports, started
and polled for readiness as ``paychaos load`` does (never slept for). The engine
runs its own workers with a short recovery schedule, so that unknown outcomes
are looked up within seconds instead of a minute. Each test has a merchant of
its own (live mode checks that the merchant's balance moved by exactly what the
run posted). The defective engines are a proxy in front of the real one that
rewrites one kind of answer, or acts behind its back.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from engine.adapters.api_keys import KeyStore
from engine.adapters.database import Database
from engine.entrypoints.cli import app
from engine.entrypoints.system import SystemClock
from loadtests.load import cli, free_port, register_webhooks, running
from mock_psp.background import serve_in_thread

# Scenario story seconds to wall seconds: a 15-minute scenario covers 8 s at 40x.
FAST = ["--time-scale", "40", "--quiescence-max", "120", "--recovery-grace", "10"]
DEFECT_SCENARIO = """\
# live-defect: a short, busy checkout mix with many replays.
name: live-defect
seed: 5
duration_s: 2m
workload:
  arrivals: {rate_per_s: 0.2}
  flows: {capture_full: 2, automatic: 1, void: 1}
  refund_rate: 0.5
  think_time_s: 1
clients: {replay_rate: 0.5}
"""


@dataclass(frozen=True)
class Stack:
    db_url: str
    psp_url: str
    engine_url: str

    def key(self, merchant: str) -> str:
        """A secret API key for a new merchant, as `paychaos keys create` makes one."""
        database = Database(self.db_url)
        secret = f"sk_{secrets.token_hex(24)}"
        KeyStore(database).create(
            f"key_{merchant}", merchant, "secret", secret, SystemClock().now()
        )
        database.dispose()
        return secret


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("live")
    db_url = f"sqlite:///{work / 'engine.db'}"
    Database(db_url, migrate=True).dispose()
    psp_port, engine_port = free_port(), free_port()
    psp_url, engine_url = f"http://127.0.0.1:{psp_port}", f"http://127.0.0.1:{engine_port}"
    env = dict(os.environ)
    with ExitStack() as servers:
        psp = cli("serve", "psp", "--port", str(psp_port), "--seed", "1")
        servers.enter_context(running(psp, env, f"{psp_url}/_admin/faults", work / "psp.log"))
        secret = register_webhooks(psp_url, engine_url)
        engine = cli(
            "serve", "engine", "--db", db_url, "--psp", psp_url, "--port", str(engine_port),
            "--provider-timeout-s", "1", "--worker-interval-s", "0.2",
            "--recovery-schedule-s", "1,2,5,10,30,60",
        )  # fmt: skip
        engine_env = {**env, "PAYCHAOS_WEBHOOK_SECRET": secret}
        servers.enter_context(running(engine, engine_env, f"{engine_url}/readyz",
                                      work / "engine.log"))  # fmt: skip
        yield Stack(db_url, psp_url, engine_url)


def live(stack: Stack, engine_url: str, scenario: str, report: Path, *extra: str) -> Any:
    merchant = f"m_live_{secrets.token_hex(4)}"
    args = ["live", scenario, "--engine", engine_url, "--psp", stack.psp_url,
            "--api-key", stack.key(merchant), "--seed", "7", "--report-json", str(report),
            *FAST, *extra]  # fmt: skip
    return CliRunner().invoke(app, args)


def run_report(path: Path, result: Any) -> dict[str, Any]:
    assert path.exists(), f"no report ({result.exception!r}):\n{result.output}"
    document = json.loads(path.read_text())
    assert len(document["runs"]) == 1
    run: dict[str, Any] = document["runs"][0]
    return run


def by_id(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {inv["id"]: inv for inv in run["invariants"]}


def test_a_healthy_engine_keeps_every_invariant_on_the_happy_path(
    stack: Stack, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    result = live(stack, stack.engine_url, "happy-path", report, "--duration", "6",
                  "--payments-max", "30", "--db", stack.db_url)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "all invariants hold" in result.output
    run = run_report(report, result)
    assert run["mode"] == "live" and run["ok"] and run["problems"] == []
    assert 0 < run["payments"] <= 30 and run["engine_payments"] >= run["payments"]
    invariants = by_id(run)
    for id_ in ("I1", "I2", "I3", "I4", "I7", "I8", "W", "E"):
        assert invariants[id_]["applicable"] and invariants[id_]["ok"], invariants[id_]
        assert invariants[id_]["checked"] > 0, id_
    assert invariants["I6"]["ok"]
    assert not invariants["I5"]["applicable"] and invariants["I5"]["reason"]
    assert run["quiescent_at_s"] is not None
    assert sum(run["payments_by_state"].values()) == run["engine_payments"]


def test_provider_timeouts_are_recovered_and_every_invariant_holds(
    stack: Stack, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    result = live(stack, stack.engine_url, "psp-timeouts", report, "--duration", "8",
                  "--payments-max", "60")  # fmt: skip
    run = run_report(report, result)
    violated = [inv["id"] for inv in run["invariants"] if not inv["ok"]]
    assert violated == [], result.output
    assert run["quiescent_at_s"] is not None, result.output
    fired = run["faults_fired"]
    assert fired.get("api.timeout_after", 0) + fired.get("api.timeout_before", 0) > 0
    assert run["coverage"].get("authorize outcome unknown: left to recovery", 0) > 0
    assert by_id(run)["I8"]["reason"].startswith("not in live mode")
    assert result.exit_code == 0, result.output


# -- a check that cannot fail is a defect: engines that break one rule each --------------
Rewrite = Callable[[Request, int, Any, "Proxy"], Awaitable[Any]]


@dataclass
class Proxy:
    """Forwards to the real engine; ``rewrite`` may change what the client is told."""

    engine_url: str
    psp_url: str
    rewrite: Rewrite
    seen: set[tuple[str, str, str]]
    posts: int = 0
    http: httpx.AsyncClient | None = None

    async def forward(self, request: Request) -> Response:
        assert self.http is not None
        kept = {"authorization", "idempotency-key", "content-type"}
        headers = {k: v for k, v in request.headers.items() if k.lower() in kept}
        upstream = await self.http.request(
            request.method, request.url.path, params=request.query_params,
            content=await request.body(), headers=headers,
        )  # fmt: skip
        try:
            body = upstream.json()
        except ValueError:
            return Response(upstream.content, upstream.status_code)
        body = await self.rewrite(request, upstream.status_code, body, self)
        if isinstance(body, Response):
            return body
        return JSONResponse(body, upstream.status_code)

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            async with httpx.AsyncClient(base_url=self.engine_url, timeout=30.0) as client:
                self.http = client
                yield

        methods = ["GET", "POST"]
        return Starlette(routes=[Route("/{rest:path}", self.forward, methods=methods)],
                         lifespan=lifespan)  # fmt: skip


def _payment(body: Any) -> bool:
    return isinstance(body, dict) and "state" in body and "id" in body


async def replay_differs(request: Request, status: int, body: Any, proxy: Proxy) -> Any:
    key = (request.headers.get("authorization", ""), request.headers.get("idempotency-key", ""),
           request.url.path)  # fmt: skip
    if request.method == "POST" and _payment(body):
        if key in proxy.seen:
            body["metadata"] = {"answered": "anew"}
        proxy.seen.add(key)
    return body


async def unbalanced_journal(request: Request, status: int, body: Any, proxy: Proxy) -> Any:
    if request.url.path.endswith("/ledger") and body.get("data"):
        body["data"][0]["entries"][0]["amount_minor"] += 1
    return body


async def illegal_history(request: Request, status: int, body: Any, proxy: Proxy) -> Any:
    history = body.get("history") if isinstance(body, dict) else None
    if history and body["state"] in {"captured", "partially_captured"}:
        history.append({**history[-1], "seq": history[-1]["seq"] + 1,
                        "from_state": body["state"], "to_state": "authorized"})  # fmt: skip
    return body


async def second_charge(request: Request, status: int, body: Any, proxy: Proxy) -> Any:
    """After an authorization, charge the customer again for the same order, behind its back."""
    if request.url.path.endswith("/confirm") and _payment(body) and body["state"] == "authorized":
        form = {
            "amount": str(body["amount_minor"]), "currency": body["currency"].lower(),
            "payment_method": "pm_card_visa", "confirm": "true",
            "metadata[order_id]": body["order_id"], "metadata[payment_id]": body["id"],
        }  # fmt: skip
        async with httpx.AsyncClient(base_url=proxy.psp_url, timeout=10.0) as psp:
            auth = {"Authorization": "Bearer sk_test_defect"}
            charged = await psp.post("/v1/payment_intents", data=form, headers=auth)
        assert charged.status_code == 200, charged.text
    return body


async def captured_lie(request: Request, status: int, body: Any, proxy: Proxy) -> Any:
    """Reads say a little more was captured than the provider took."""
    payments = body.get("data", []) if isinstance(body, dict) else []
    for payment in [body, *payments] if request.method == "GET" else []:
        if _payment(payment) and payment["captured_minor"] > 0:
            payment["captured_minor"] += 1
            payment["authorized_minor"] += 1
    return body


async def internal_error(request: Request, status: int, body: Any, proxy: Proxy) -> Any:
    if request.method == "POST":
        proxy.posts += 1
        if proxy.posts % 5 == 0:
            return Response("Internal Server Error", 500)
    return body


@pytest.mark.parametrize(
    ("rewrite", "invariant"),
    [
        (replay_differs, "I6"),
        (unbalanced_journal, "I1"),
        (illegal_history, "I4"),
        (second_charge, "I2"),
        (captured_lie, "I7"),
        (internal_error, "E"),
    ],
)
def test_live_mode_catches_a_defective_engine(
    stack: Stack, tmp_path: Path, rewrite: Rewrite, invariant: str
) -> None:
    scenario = tmp_path / "live-defect.yaml"
    scenario.write_text(DEFECT_SCENARIO)
    report = tmp_path / "report.json"
    proxy = Proxy(stack.engine_url, stack.psp_url, rewrite, set())
    with serve_in_thread(proxy.app()) as defective_url:
        result = live(stack, defective_url, str(scenario), report, "--duration", "3",
                      "--payments-max", "12")  # fmt: skip
    assert result.exit_code == 1, result.output
    run = run_report(report, result)
    found = by_id(run)[invariant]
    assert found["applicable"] and not found["ok"], result.output
    assert found["violations"], found
    assert "VIOLATED" in result.output


# -- bad input changes nothing and says which option -----------------------------------------
def test_a_bad_scenario_file_is_refused_naming_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nworkload: {arrivals: {rate_per_s: -1}}\n")
    nowhere = "http://127.0.0.1:1"
    args = ["live", str(bad), "--engine", nowhere, "--psp", nowhere, "--api-key", "sk_x"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "workload.arrivals.rate_per_s" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-scenario"], "no shipped scenario"),
        (["happy-path", "--engine", "http://10.1.2.3:8000"], "--allow-remote"),
        (["happy-path", "--api-key", ""], "paychaos keys create"),
        (["happy-path", "--api-key", "rk_restricted"], "restricted"),
        (["happy-path", "--time-scale", "0.5"], "--time-scale"),
        (["happy-path", "--duration", "2h"], "--duration"),
        (["happy-path", "--psp", "ftp://127.0.0.1:1"], "--psp"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(args: list[str], message: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    defaults = {"--engine": dead, "--psp": dead, "--api-key": "sk_test_nobody"}
    for option, value in defaults.items():
        if option not in args:
            args = [*args, option, value]
    result = CliRunner().invoke(app, ["live", *args], env={"PAYCHAOS_API_KEY": ""})
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_engine_faults_are_reported_as_not_applied_and_a_silent_engine_is_bad_input() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        app, ["live", "kitchen-sink", "--engine", dead, "--psp", dead, "--api-key", "sk_nobody"]
    )
    assert result.exit_code == 2, result.output
    assert "engine_faults.crashes: not applicable in live mode" in result.output
    assert "engine_faults.db_outages: not applicable in live mode" in result.output
    assert "--engine: no answer" in result.output


def test_a_key_the_engine_refuses_and_an_unreadable_db_are_bad_input(
    stack: Stack, tmp_path: Path
) -> None:
    base = ["live", "happy-path", "--engine", stack.engine_url, "--psp", stack.psp_url]
    refused = CliRunner().invoke(app, [*base, "--api-key", "sk_not_a_key_of_this_engine"])
    assert refused.exit_code == 2, refused.output
    assert "--api-key: key number 1 was refused by the engine (401" in refused.output
    missing = f"sqlite:///{tmp_path / 'no' / 'such.db'}"
    key = stack.key(f"m_live_{secrets.token_hex(4)}")
    unreadable = CliRunner().invoke(app, [*base, "--api-key", key, "--db", missing])
    assert unreadable.exit_code == 2, unreadable.output
    assert "--db: cannot read" in unreadable.output
