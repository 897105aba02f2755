"""Realistic checkout users against ``paychaos serve engine``.

Each user is a merchant's checkout: create a payment, confirm it, then capture
(all or part) or cancel, then sometimes refund in parts. Every POST carries an
Idempotency-Key; a timeout or a 5xx is retried with the same key (bounded); a
small share of users double-click with a new key for the same order and must be
refused (409 ``order_already_active``) once the first payment holds the order.

Tuning (environment): ``PAYCHAOS_LOAD_KEYS`` (comma-separated API keys, one per
merchant), ``PAYCHAOS_LOAD_MIX`` (``capture_full,capture_partial,cancel``
weights), ``PAYCHAOS_LOAD_REFUND_RATE``, ``PAYCHAOS_LOAD_DOUBLE_CLICK_RATE``,
``PAYCHAOS_LOAD_RATE_PER_USER`` (checkouts per second per user).
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from typing import Any

from locust import HttpUser, constant_throughput, task

KEYS = [key for key in os.environ.get("PAYCHAOS_LOAD_KEYS", "").split(",") if key]
MIX = [float(w) for w in os.environ.get("PAYCHAOS_LOAD_MIX", "5,3,2").split(",")]
REFUND_RATE = float(os.environ.get("PAYCHAOS_LOAD_REFUND_RATE", "0.3"))
DOUBLE_CLICK_RATE = float(os.environ.get("PAYCHAOS_LOAD_DOUBLE_CLICK_RATE", "0.03"))
RATE_PER_USER = float(os.environ.get("PAYCHAOS_LOAD_RATE_PER_USER", "1.0"))
RETRIES_MAX = 3
RETRYABLE = {0, 409, 429, 500, 502, 503, 504}
_user_numbers = itertools.count()


class CheckoutUser(HttpUser):  # type: ignore[misc]
    wait_time = constant_throughput(RATE_PER_USER)

    def on_start(self) -> None:
        number = next(_user_numbers)
        self.key = KEYS[number % len(KEYS)] if KEYS else "sk_missing"
        self.rng = random.Random(number)

    def post(self, path: str, name: str, body: dict[str, Any] | None = None) -> Any:
        """POST with an idempotency key, retried with the same key when no answer came."""
        key = uuid.uuid4().hex
        headers = {"Authorization": f"Bearer {self.key}", "Idempotency-Key": key}
        answer = None
        for _ in range(RETRIES_MAX):
            with self.client.post(
                path, json=body, headers=headers, name=name, catch_response=True
            ) as response:
                answer = response
                if response.status_code in RETRYABLE and response.status_code != 409:
                    response.failure(f"retrying after {response.status_code}")
                    continue
                if response.status_code == 409 and "in_flight" in response.text:
                    response.success()
                    continue
                if response.status_code in {402, 409}:
                    response.success()  # a decline or a refused double click is an answer
                return response
        return answer

    @task
    def checkout(self) -> None:
        order_id = f"o-{uuid.uuid4().hex[:16]}"
        amount = self.rng.randint(500, 50_000)
        body = {"amount_minor": amount, "currency": "USD", "order_id": order_id,
                "payment_method": "pm_card_visa"}  # fmt: skip
        created = self.post("/v1/payments", "/v1/payments", body)
        if created is None or created.status_code != 201:
            return
        payment_id = created.json()["id"]
        confirmed = self.post(f"/v1/payments/{payment_id}/confirm", "/v1/payments/[id]/confirm")
        if self.rng.random() < DOUBLE_CLICK_RATE:
            self.double_click(body)
        if confirmed is None or confirmed.json().get("state") != "authorized":
            return
        flow = self.rng.choices(["capture_full", "capture_partial", "cancel"], MIX)[0]
        if flow == "cancel":
            self.post(f"/v1/payments/{payment_id}/cancel", "/v1/payments/[id]/cancel")
            return
        capture = {"amount_minor": max(1, amount * 2 // 3)} if flow == "capture_partial" else None
        captured = self.post(
            f"/v1/payments/{payment_id}/capture", "/v1/payments/[id]/capture", capture
        )
        if captured is not None and self.rng.random() < REFUND_RATE:
            left = captured.json().get("captured_minor", 0)
            for _ in range(self.rng.randint(1, 2)):
                part = max(1, left // 3)
                self.post(
                    f"/v1/payments/{payment_id}/refunds", "/v1/payments/[id]/refunds",
                    {"amount_minor": part},
                )  # fmt: skip

    def double_click(self, body: dict[str, Any]) -> None:
        again = self.post("/v1/payments", "/v1/payments (double click)", body)
        if again is not None and again.status_code == 201:
            payment_id = again.json()["id"]
            self.post(
                f"/v1/payments/{payment_id}/confirm", "/v1/payments/[id]/confirm (double click)"
            )
