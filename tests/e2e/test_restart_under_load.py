"""The engine killed (SIGKILL) in the middle of a load run, started again on the same database.

Customers on threads check out concurrently against ``paychaos serve engine``
(two API processes, the workers embedded: one process runs them under the
lease) and the mock PSP, retrying every POST with its own idempotency key on a
broken connection, a 5xx, a 409 (in flight) or a 429, and replaying each
answered POST once. After a set number of checkouts the engine's whole process
group is killed and started again on the same port and database; the
customers carry on. At the end no money is lost or applied twice: every
checkout has one payment with the amounts its customer was answered, the
engine's audit passes, and the load test's checks against the provider's
ground truth hold. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from engine.adapters.database import Database
from loadtests.load import check, free_port, register_webhooks
from tests.conftest import fresh_postgres
from tests.e2e.live_servers import (
    audit,
    engine_server,
    ground_truth,
    metrics,
    new_database,
    psp_server,
    running,
    sample,
    set_faults,
    wait_until,
)

CUSTOMERS = 4
CHECKOUTS_EACH = 5
KILL_AFTER = 6  # checkouts finished before the kill; the rest straddle it
STEP_S_MAX = 180.0  # one POST (with its retries) or one wait for a payment's state
RETRY_S = 0.1  # a customer's pause before a retry or a new look
RETRYABLE = {409, 429}
# Long enough that a provider call seen in flight is still in flight when the kill lands.
PROVIDER_TIMEOUT_S = 10
CANARY = "order-canary"
ENGINE_OPTIONS = (
    "--workers", "2", "--provider-timeout-s", str(PROVIDER_TIMEOUT_S),
    "--recovery-schedule-s", f"{2 * PROVIDER_TIMEOUT_S},1,2,4,8,16,32,64,128,256,512,1024",
    "--worker-interval-s", "0.2", "--circuit-open-s", "1",
)  # fmt: skip
# Deliveries refused while the engine was down come back within seconds, not minutes.
PSP_FAULTS: dict[str, Any] = {"webhook_retry": {"first_retry_s": 0.5, "retry_delay_max_s": 2.0}}
# Just before the kill: authorizations done by the PSP but answered a minute later,
# and their webhooks held back (each delivery attempt dropped, so retried later):
# nothing but the kill may end the canary's wait, or the engine could learn of the
# authorization by webhook before the kill lands.
SLOW_CONFIRMS = {
    **PSP_FAULTS,
    "api_rules": [
        {"endpoints": ["payment_intents.create"], "latency": {"kind": "fixed", "fixed_ms": 60_000}}
    ],
    "webhooks": {"drop_attempt_rate": 1.0},
}


@dataclass(frozen=True, slots=True)
class Checkout:
    """One order and what its customer asks for: capture (all or part), refund, or cancel."""

    order_id: str
    amount_minor: int
    plan: str  # "capture", "partial_refund" or "cancel"

    @property
    def expected(self) -> tuple[str, int, int]:
        """(state, captured, refunded) once everything asked for is done."""
        if self.plan == "capture":
            return "captured", self.amount_minor, 0
        if self.plan == "partial_refund":
            return "partially_refunded", self.amount_minor - 300, 200
        return "canceled", 0, 0


@dataclass
class Customer:
    """Checks out one order after another, with same-key retries through anything."""

    client: httpx.Client
    checkouts: list[Checkout]
    done: list[str] = field(default_factory=list)  # payment ids, as checkouts finish
    retries: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            for checkout in self.checkouts:
                self.done.append(self.check_out(checkout))
        except BaseException as exc:  # reported by the test's thread
            self.error = exc

    def check_out(self, c: Checkout) -> str:
        body = {"amount_minor": c.amount_minor, "currency": "EUR", "order_id": c.order_id,
                "payment_method": "pm_card_visa"}  # fmt: skip
        pid = str(self.post("/v1/payments", f"{c.order_id}-create", body).json()["id"])
        base = f"/v1/payments/{pid}"
        self.step(f"{base}/confirm", f"{c.order_id}-confirm", None, pid,
                  lambda p: p["state"] == "authorized")  # fmt: skip
        if c.plan == "cancel":
            self.step(f"{base}/cancel", f"{c.order_id}-cancel", None, pid,
                      lambda p: p["state"] == "canceled")  # fmt: skip
            return pid
        captured = c.amount_minor - (300 if c.plan == "partial_refund" else 0)
        self.step(f"{base}/capture", f"{c.order_id}-capture", {"amount_minor": captured}, pid,
                  lambda p: p["captured_minor"] == captured)  # fmt: skip
        if c.plan == "partial_refund":
            self.step(f"{base}/refunds", f"{c.order_id}-refund", {"amount_minor": 200}, pid,
                      lambda p: p["refunded_minor"] == 200)  # fmt: skip
        return pid

    def step(
        self, path: str, key: str, body: Any, pid: str, done: Callable[[dict[str, Any]], bool]
    ) -> None:
        """POST, then, when the answer was 202 (the provider's word still awaited), look
        at the payment until recovery has finished the job."""
        answer = self.post(path, key, body)
        assert answer.status_code in {200, 202}, (path, answer.status_code, answer.text)
        deadline = time.monotonic() + STEP_S_MAX
        while not done(self.get(f"/v1/payments/{pid}")):
            assert time.monotonic() < deadline, f"{path}: still not done"
            time.sleep(RETRY_S)

    def post(self, path: str, key: str, body: Any) -> httpx.Response:
        """The first final answer for this key, then once more: a replay answers the same."""
        first = self._send(lambda: self.client.post(path, json=body,
                                                    headers={"Idempotency-Key": key}))  # fmt: skip
        again = self._send(lambda: self.client.post(path, json=body,
                                                    headers={"Idempotency-Key": key}))  # fmt: skip
        assert (again.status_code, again.json()) == (first.status_code, first.json()), path
        assert first.status_code < 400, (path, first.status_code, first.text)
        return first

    def get(self, path: str) -> dict[str, Any]:
        found: dict[str, Any] = self._send(lambda: self.client.get(path)).json()
        return found

    def _send(self, request: Callable[[], httpx.Response]) -> httpx.Response:
        deadline = time.monotonic() + STEP_S_MAX
        while True:
            try:
                response = request()
                if response.status_code < 500 and response.status_code not in RETRYABLE:
                    return response
                outcome = str(response.status_code)
            except httpx.TransportError:  # the engine is down, or was killed under this request
                outcome = "transport"
            self.retries[outcome] = self.retries.get(outcome, 0) + 1
            assert time.monotonic() < deadline, f"no answer within {STEP_S_MAX} s"
            time.sleep(RETRY_S)


def checkouts_for(customer: int) -> list[Checkout]:
    plans = ("capture", "partial_refund", "cancel")
    amount = 1_000 + 100 * customer
    return [
        Checkout(f"order-{customer}-{n}", amount + 10 * n, plans[(customer + n) % len(plans)])
        for n in range(CHECKOUTS_EACH)
    ]


def canary_attempt(db_url: str) -> str | None:
    """The status of the canary's authorization attempt, read from the database."""
    database = Database(db_url)
    try:
        with database.engine.connect() as connection:
            found = connection.execute(
                sa.text("SELECT a.status FROM attempts a JOIN payments p ON p.id = a.payment_id "
                        "WHERE p.order_id = :order AND a.kind = 'authorize'"),
                {"order": CANARY},
            ).scalar_one_or_none()  # fmt: skip
    finally:
        database.dispose()
    return None if found is None else str(found)


def settled(metrics_url: str, psp_url: str) -> bool:
    """Nothing left to do: webhooks delivered and applied, attempts resolved, events relayed."""
    webhooks = httpx.get(f"{psp_url}/_admin/webhooks", timeout=10.0).json()
    if webhooks["pending"] or webhooks["in_flight"]:
        return False
    found = metrics(metrics_url)  # read from the database: the same from either process
    return (
        sample(found, "paychaos_unknown_attempts") == 0
        and sample(found, "paychaos_outbox_backlog") == 0
        and sample(found, "paychaos_webhook_inbox", status="pending") == 0
    )


def run_killed_in_the_middle(tmp_path: Path, db_url: str) -> None:
    api_key = new_database(db_url)
    psp = psp_server(tmp_path)
    with running(psp):
        set_faults(psp.url, PSP_FAULTS)
        engine_port = free_port()
        secret = register_webhooks(psp.url, f"http://127.0.0.1:{engine_port}")
        engine = engine_server(tmp_path, db_url, psp.url, secret, *ENGINE_OPTIONS,
                               port=engine_port)  # fmt: skip
        with running(engine):
            clients = [httpx.Client(base_url=engine.url, timeout=30.0,
                                    headers={"Authorization": f"Bearer {api_key}"})
                       for _ in range(CUSTOMERS)]  # fmt: skip
            customers = [Customer(client, checkouts_for(n)) for n, client in enumerate(clients)]
            threads = [threading.Thread(target=c.run, daemon=True) for c in customers]
            for thread in threads:
                thread.start()

            def finished() -> int:
                return sum(len(c.done) for c in customers)

            wait_until(lambda: finished() >= KILL_AFTER, "checkouts before the kill", STEP_S_MAX)
            # A canary checkout whose authorization the PSP performs and holds the answer
            # of: the kill lands while the engine waits for it, its attempt open.
            set_faults(psp.url, SLOW_CONFIRMS)
            canary = Customer(clients[0], [Checkout(CANARY, 777, "capture")])
            threads.append(threading.Thread(target=canary.run, daemon=True))
            threads[-1].start()
            wait_until(lambda: canary_attempt(db_url) == "pending", "the canary in flight")
            engine.kill()
            assert canary_attempt(db_url) == "pending"  # left so by the crash
            assert finished() < CUSTOMERS * CHECKOUTS_EACH, "the kill came after the run"
            set_faults(psp.url, PSP_FAULTS)
            customers.append(canary)
            engine.start()  # same port, same database
            for thread in threads:
                thread.join(STEP_S_MAX * 4)
            errors = [c.error for c in customers if c.error is not None]
            assert errors == [] and not any(t.is_alive() for t in threads), errors
            retries = [c.retries for c in customers]
            print(f"retries by cause, per customer: {retries}")  # shown with pytest -s
            assert sum(r.get("transport", 0) for r in retries) > 0, "nobody saw the engine down"
            wait_until(lambda: settled(engine.metrics_url, psp.url), "settled", STEP_S_MAX)
            check_every_checkout(customers, clients[0], psp.url)
            for client in clients:
                client.close()
        results, problems = check(db_url, psp.url)  # the engine stopped, the PSP still up
    assert problems == [] and [(r.name, r.violations) for r in results if not r.ok] == []
    audit(db_url)


def check_every_checkout(customers: list[Customer], client: httpx.Client, psp_url: str) -> None:
    """One payment per order, with what its customer was answered, at the engine and the PSP."""
    orders = ground_truth(psp_url)["orders"]
    for customer in customers:
        assert len(customer.done) == len(customer.checkouts)
        for checkout, pid in zip(customer.checkouts, customer.done, strict=True):
            found = client.get("/v1/payments", params={"order_id": checkout.order_id}).json()
            assert [p["id"] for p in found["data"]] == [pid], checkout  # never created twice
            payment = client.get(f"/v1/payments/{pid}").json()
            seen = (payment["state"], payment["captured_minor"], payment["refunded_minor"])
            assert seen == checkout.expected, (checkout, seen)
            [totals] = orders[checkout.order_id].values()
            assert (totals["captured"], totals["refunded"]) == checkout.expected[1:], checkout
            assert len(totals["payment_intents"]) == 1, checkout  # one charge per order


def test_a_kill_in_the_middle_of_a_load_run_loses_and_doubles_nothing_on_sqlite(
    tmp_path: Path,
) -> None:
    run_killed_in_the_middle(tmp_path, f"sqlite:///{tmp_path / 'engine.db'}")


@pytest.mark.postgres
def test_a_kill_in_the_middle_of_a_load_run_loses_and_doubles_nothing_on_postgres(
    tmp_path: Path, postgres_url: str
) -> None:
    fresh_postgres(postgres_url).dispose()
    run_killed_in_the_middle(tmp_path, postgres_url)
