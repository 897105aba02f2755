"""A 3DS payment whose webhooks are lost converges in the served engine.

The mock PSP and the engine (``paychaos serve engine``, its workers embedded)
run as processes on free ports, the engine's webhook endpoint registered on the
provider. Every webhook is lost for good; the customer completes 3D Secure at
the provider; only the engine's recovery worker, polling an authorization that
waits for the customer, can learn it. Every wait is polled with a bound.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from loadtests.load import free_port, register_webhooks
from tests.e2e.live_servers import (
    engine_server,
    ground_truth,
    new_database,
    psp_server,
    running,
    set_faults,
    wait_until,
)
from tests.e2e.test_robustness import Shop

ENGINE_OPTIONS = (
    "--provider-timeout-s", "1", "--worker-interval-s", "0.1",
    "--recovery-schedule-s", "1,1,1,2,4,8,16,32,64",
)  # fmt: skip
WEBHOOKS_LOST = {"webhooks": {"permanent_loss_rate": 1.0}}


def test_a_3ds_payment_completed_by_the_customer_is_authorized_without_its_webhook(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'engine.db'}"
    api_key = new_database(db_url)
    psp = psp_server(tmp_path)
    engine_port = free_port()
    with running(psp):
        secret = register_webhooks(psp.url, f"http://127.0.0.1:{engine_port}")
        engine = engine_server(tmp_path, db_url, psp.url, secret, *ENGINE_OPTIONS,
                               port=engine_port)  # fmt: skip
        with running(engine):
            set_faults(psp.url, WEBHOOKS_LOST)
            shop = Shop(engine.url, api_key)
            body = {"amount_minor": 17_125, "currency": "USD", "order_id": "order-3ds",
                    "payment_method": "pm_card_threeDSecureRequired"}  # fmt: skip
            created = shop.post("/v1/payments", "create-3ds", body)
            assert created.status_code == 201, created.text
            payment_id = created.json()["id"]
            confirmed = shop.post(f"/v1/payments/{payment_id}/confirm", "confirm-3ds")
            assert confirmed.json()["state"] == "requires_action", confirmed.text
            intent_id = confirmed.json()["provider_payment_id"]
            authenticated = httpx.post(
                f"{psp.url}/_admin/payment_intents/{intent_id}/authenticate", timeout=10.0
            )
            assert authenticated.status_code == 200, authenticated.text
            wait_until(lambda: shop.payment(payment_id)["state"] == "authorized",
                       "authorized by recovery", timeout_s=60.0)  # fmt: skip
            payment = shop.payment(payment_id)
            assert payment["history"][-1]["reason"] == "authorize_succeeded_by_lookup"
            intent = ground_truth(psp.url)["payment_intents"][intent_id]
            assert intent["successful_charge_count"] == 1
            assert intent["authorized"] == payment["authorized_minor"] == 17_125
            outcomes = httpx.get(f"{psp.url}/_admin/webhooks", timeout=10.0).json()["outcomes"]
            delivered = [k for k in outcomes if k.endswith((".accepted", ".rejected"))]
            assert delivered == [], outcomes  # the engine heard nothing by webhook
            shop.close()
