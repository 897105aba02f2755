"""A provider that fails, is away or is slow, through the real HTTP stack.

The mock PSP and the engine (``paychaos serve engine``, its workers embedded)
run as processes on free ports. Whatever the provider does, a checkout is
answered within the provider timeout, a payment without the provider's word
stays ``processing`` (202) and is never failed by guess, and once the provider
answers again the embedded recovery worker brings every payment to the
provider's truth: checked through the API, the PSP's ground truth, the
engine's audit and the load test's invariant checks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.load import check, free_port
from tests.e2e.live_servers import (
    WEBHOOK_SECRET,
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

PROVIDER_TIMEOUT_S = 1
# The first lookup well after the call's own timeout, so that the checkout, not
# recovery, answers first. Then each "unknown" doubles the wait: an outage of any
# length in this test is looked up again about as long after it ends, and review
# is half an hour away.
ENGINE_OPTIONS = (
    "--provider-timeout-s", str(PROVIDER_TIMEOUT_S),
    "--recovery-schedule-s", f"{6 * PROVIDER_TIMEOUT_S},1,2,4,8,16,32,64,128,256,512,1024",
    "--worker-interval-s", "0.1", "--circuit-open-s", "1",
)  # fmt: skip
PAYMENTS = 6
OUTAGE = {"api_rules": [{"endpoints": ["*"], "error_503_rate": 1.0}]}


class Shop:
    """A merchant's client of the engine's API."""

    def __init__(self, engine_url: str, api_key: str):
        self.client = httpx.Client(
            base_url=engine_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60.0
        )

    def post(self, path: str, key: str, body: Any = None) -> httpx.Response:
        return self.client.post(path, json=body, headers={"Idempotency-Key": key})

    def create(self, order_id: str) -> str:
        body = {"amount_minor": 4_200, "currency": "EUR", "order_id": order_id,
                "payment_method": "pm_card_visa"}  # fmt: skip
        response = self.post("/v1/payments", f"create-{order_id}", body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def payment(self, payment_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.client.get(f"/v1/payments/{payment_id}").json()
        return found

    def states(self, payment_ids: list[str]) -> set[str]:
        return {self.payment(pid)["state"] for pid in payment_ids}

    def close(self) -> None:
        self.client.close()


def assert_provider_truth(db_url: str, psp_url: str, shop: Shop, payment_ids: list[str]) -> None:
    """Every payment authorized once at the provider, and the engine agrees with it."""
    intents = ground_truth(psp_url)["payment_intents"]
    for pid in payment_ids:
        payment = shop.payment(pid)
        truth = intents[payment["provider_payment_id"]]
        assert truth["successful_charge_count"] == 1, (pid, truth)
        assert truth["authorized"] == payment["amount_minor"] == 4_200
        states = [item["to_state"] for item in payment["history"]]
        assert states == ["created", "processing", "authorized"], (pid, states)
        assert payment["history"][-1]["reason"] == "authorize_succeeded_by_lookup"
    results, problems = check(db_url, psp_url)
    assert problems == [] and [r.name for r in results if not r.ok] == []
    audit(db_url)


def start_checkouts(shop: Shop, count: int) -> list[str]:
    """Create and confirm ``count`` payments; each confirm must be answered 202 processing."""
    payment_ids = []
    for number in range(count):
        pid = shop.create(f"order-{number}")
        confirmed = shop.post(f"/v1/payments/{pid}/confirm", f"confirm-{number}")
        assert (confirmed.status_code, confirmed.json()["state"]) == (202, "processing")
        payment_ids.append(pid)
    return payment_ids


def test_a_provider_outage_leaves_payments_processing_until_recovery_resolves_them(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    api_key = new_database(db_url)
    psp = psp_server(tmp_path)
    engine = engine_server(tmp_path, db_url, psp.url, WEBHOOK_SECRET, *ENGINE_OPTIONS)
    with running(psp, engine):
        shop = Shop(engine.url, api_key)
        set_faults(psp.url, OUTAGE)  # every API call answers 503
        payment_ids = start_checkouts(shop, PAYMENTS)
        found = metrics(engine.metrics_url)
        assert sample(found, "paychaos_provider_circuit_state", client="api") == 2  # open
        assert sample(found, "paychaos_provider_errors_total", client="api", kind="http_503") >= 5
        assert sample(found, "paychaos_unknown_attempts") == PAYMENTS
        # The worker asks during the outage: the provider never had these calls,
        # the resends get 503 too, and nothing is decided.
        wait_until(
            lambda: sample(metrics(engine.metrics_url), "paychaos_worker_recovery_total",
                           outcome="still_unknown") >= 1,
            "a recovery lookup during the outage",
        )  # fmt: skip
        assert shop.states(payment_ids) == {"processing"}
        assert ground_truth(psp.url)["payment_intents"] == {}
        set_faults(psp.url, {})  # the provider is back
        wait_until(lambda: shop.states(payment_ids) == {"authorized"}, "recovered")
        found = metrics(engine.metrics_url)
        assert sample(found, "paychaos_worker_recovery_total", outcome="resolved") == PAYMENTS
        assert sample(found, "paychaos_unknown_attempts") == 0
        assert sample(found, "paychaos_attempts_needing_review") == 0
        assert sample(found, "paychaos_worker_state", state="leading") == 1
        assert_provider_truth(db_url, psp.url, shop, payment_ids)
        shop.close()


def test_an_unreachable_provider_never_holds_a_checkout_and_recovery_sends_again(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    api_key = new_database(db_url)
    psp_port = free_port()  # nothing listens there yet
    psp = psp_server(tmp_path, psp_port)
    engine = engine_server(tmp_path, db_url, psp.url, WEBHOOK_SECRET, *ENGINE_OPTIONS)
    with running(engine):
        shop = Shop(engine.url, api_key)
        payment_ids = start_checkouts(shop, PAYMENTS)
        wait_until(
            lambda: sample(metrics(engine.metrics_url), "paychaos_worker_recovery_total",
                           outcome="still_unknown") >= 1,
            "a recovery lookup while the provider is away",
        )  # fmt: skip
        assert shop.states(payment_ids) == {"processing"}
        with running(psp):  # the provider comes up, never having seen a call
            wait_until(lambda: shop.states(payment_ids) == {"authorized"}, "recovered")
            found = metrics(engine.metrics_url)
            assert sample(found, "paychaos_worker_recovery_total", outcome="resent") >= PAYMENTS
            assert sample(found, "paychaos_unknown_attempts") == 0
            assert_provider_truth(db_url, psp.url, shop, payment_ids)
        shop.close()


def test_a_slow_provider_is_answered_processing_after_the_timeout_and_recovered(
    tmp_path: Path,
) -> None:
    """The provider does the work but holds its answer for a minute: the checkout is
    answered 202 after the provider timeout, and the worker finds the charge by key."""
    hold_s = 60.0
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    api_key = new_database(db_url)
    psp = psp_server(tmp_path, None, "--timeout-hold-s", str(hold_s))
    engine = engine_server(tmp_path, db_url, psp.url, WEBHOOK_SECRET, *ENGINE_OPTIONS)
    with running(psp, engine):
        shop = Shop(engine.url, api_key)
        set_faults(psp.url, {"api_rules": [{"endpoints": ["payment_intents.create"],
                                            "timeout_after_rate": 1.0}]})  # fmt: skip
        started_s = time.monotonic()
        payment_ids = start_checkouts(shop, 1)
        # Not a performance claim: the answer came while the provider still held its own.
        assert time.monotonic() - started_s < hold_s / 2
        wait_until(lambda: shop.states(payment_ids) == {"authorized"}, "recovered")
        found = metrics(engine.metrics_url)
        assert sample(found, "paychaos_provider_errors_total", client="api", kind="timeout") == 1
        assert sample(found, "paychaos_worker_recovery_total", outcome="resolved") == 1
        assert_provider_truth(db_url, psp.url, shop, payment_ids)
        shop.close()
