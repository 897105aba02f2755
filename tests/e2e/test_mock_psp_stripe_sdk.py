"""Conformance: the official ``stripe`` SDK against ``mock_psp.server`` over real HTTP.

Each test starts the server in-process on a free port (uvicorn in a thread) and points
a ``StripeClient`` at it with ``base_addresses={"api": ...}``. Fault plans are seeded,
loops are bounded, and waiting is polling with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import pytest
import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mock_psp.background import serve_in_thread
from mock_psp.server import PspServer, ServerSettings, build_core

API_KEY = "sk_test_paychaos_e2e"
WAIT_S_MAX = 15.0


class QuickRetries(stripe.RequestsClient):
    """The SDK's own HTTP client, with its retry backoff shortened so tests stay fast."""

    def _sleep_time_seconds(self, num_retries: int) -> float:
        return 0.01


class Psp:
    def __init__(self, base_url: str, server: PspServer) -> None:
        self.base_url = base_url
        self.server = server
        self.admin_http = httpx.Client(base_url=base_url, timeout=5.0)

    def client(self, retries: int = 0, timeout_s: float = 5.0) -> stripe.StripeClient:
        return stripe.StripeClient(
            API_KEY,
            base_addresses={"api": self.base_url},
            max_network_retries=retries,
            http_client=QuickRetries(timeout=timeout_s),
        )

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = self.admin_http.request(method, f"/_admin/{path}", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()


StartPsp = Callable[..., AbstractContextManager[Psp]]


@pytest.fixture
def start_psp() -> StartPsp:
    @contextmanager
    def start(
        seed: int = 7, faults: dict[str, Any] | None = None, **settings: Any
    ) -> Iterator[Psp]:
        server = PspServer(build_core(seed, faults), ServerSettings(**settings))
        with serve_in_thread(server.app) as base_url:
            psp = Psp(base_url, server)
            try:
                yield psp
            finally:
                psp.admin_http.close()

    return start


@pytest.fixture
def psp(start_psp: StartPsp) -> Iterator[Psp]:
    with start_psp() as running:
        yield running


def _manual_intent(client: stripe.StripeClient, amount: int = 1000, **extra: Any) -> Any:
    params: dict[str, Any] = {
        "amount": amount,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "capture_method": "manual",
        **extra,
    }
    return client.v1.payment_intents.create(params=params)


# --- the payment lifecycle -----------------------------------------------------------------


def test_the_sdk_creates_confirms_and_captures_a_payment_in_full(psp: Psp) -> None:
    client = psp.client()
    created = _manual_intent(client, 2500, metadata={"order_id": "o-full"})
    assert created.status == "requires_confirmation"
    assert created.metadata["order_id"] == "o-full"
    confirmed = client.v1.payment_intents.confirm(created.id)
    assert confirmed.status == "requires_capture"
    assert confirmed.amount_capturable == 2500
    captured = client.v1.payment_intents.capture(created.id)
    assert captured.status == "succeeded"
    assert captured.amount_received == 2500
    assert client.v1.payment_intents.retrieve(created.id).status == "succeeded"


def test_a_partial_capture_releases_the_rest(psp: Psp) -> None:
    client = psp.client()
    created = _manual_intent(client, 1000, confirm=True)
    assert created.status == "requires_capture"
    captured = client.v1.payment_intents.capture(created.id, params={"amount_to_capture": 600})
    assert captured.status == "succeeded"
    assert captured.amount_received == 600
    assert captured.amount_capturable == 0


def test_a_confirmed_payment_can_be_canceled_before_capture(psp: Psp) -> None:
    client = psp.client()
    created = _manual_intent(client, 1000, confirm=True)
    canceled = client.v1.payment_intents.cancel(
        created.id, params={"cancellation_reason": "requested_by_customer"}
    )
    assert canceled.status == "canceled"
    assert canceled.cancellation_reason == "requested_by_customer"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.capture(created.id)
    assert refused.value.code == "payment_intent_unexpected_state"


def test_refunds_are_partial_or_full_and_never_exceed_the_capture(psp: Psp) -> None:
    client = psp.client()
    paid = client.v1.payment_intents.create(
        params={
            "amount": 1000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        }
    )
    assert paid.status == "succeeded"
    first = client.v1.refunds.create(params={"payment_intent": paid.id, "amount": 300})
    assert (first.status, first.amount) == ("succeeded", 300)
    rest = client.v1.refunds.create(params={"payment_intent": paid.id})
    assert rest.amount == 700
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.refunds.create(params={"payment_intent": paid.id, "amount": 1})
    listed = client.v1.refunds.list(params={"payment_intent": paid.id})
    assert sorted(refund.amount for refund in listed.data) == [300, 700]


# --- Stripe's own error classes ----------------------------------------------------------


def test_a_declined_card_raises_the_sdks_card_error_with_its_decline_code(psp: Psp) -> None:
    client = psp.client()
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(
            params={
                "amount": 1000,
                "currency": "usd",
                "payment_method": "pm_card_chargeDeclinedInsufficientFunds",
                "confirm": True,
            }
        )
    error = declined.value
    assert error.http_status == 402
    assert error.code == "card_declined"
    assert error.error is not None
    assert error.error.decline_code == "insufficient_funds"
    assert error.error.payment_intent is not None


def test_a_key_reused_with_other_parameters_raises_the_sdks_idempotency_error(psp: Psp) -> None:
    client = psp.client()
    params: dict[str, Any] = {"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa"}
    created = client.v1.payment_intents.create(
        params=params,
        options={"idempotency_key": "order-42"},
    )
    replayed = client.v1.payment_intents.create(
        params=params,
        options={"idempotency_key": "order-42"},
    )
    assert replayed.id == created.id
    assert replayed.last_response is not None
    assert replayed.last_response.headers.get("Idempotent-Replayed") == "true"
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(
            params={**params, "amount": 2000},
            options={"idempotency_key": "order-42"},
        )


def test_bad_keys_unknown_ids_and_bad_params_get_stripes_errors(psp: Psp) -> None:
    wrong = stripe.StripeClient(
        "rk_live_nope", base_addresses={"api": psp.base_url}, http_client=QuickRetries()
    )
    with pytest.raises(stripe.AuthenticationError):
        wrong.v1.payment_intents.list()
    client = psp.client()
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.retrieve("pi_doesnotexist")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.payment_intents.create(
            params={"amount": 1000, "currency": "usd", "colour": "red"}
        )
    assert unknown.value.param == "colour"
    with pytest.raises(stripe.InvalidRequestError) as wrong_type:
        client.v1.payment_intents.create(params={"amount": "ten", "currency": "usd"})
    assert wrong_type.value.param == "amount"
    assert client.v1.payment_intents.list().data == []


# --- webhooks ----------------------------------------------------------------------------


class Receiver:
    """A merchant's webhook endpoint that verifies every delivery with the SDK."""

    def __init__(self) -> None:
        self.secret = ""
        self.accepted: list[stripe.Event] = []
        self.rejected: list[str] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/hooks", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        payload = await request.body()
        header = request.headers.get("stripe-signature")
        try:
            event = stripe.Webhook.construct_event(payload, header, self.secret)
        except stripe.SignatureVerificationError as exc:
            with self._lock:
                self.rejected.append(str(exc))
            return Response(status_code=400)
        with self._lock:
            self.accepted.append(event)
        return Response(status_code=200)


def _drain_webhooks(psp: Psp) -> dict[str, Any]:
    """Wait (bounded) until nothing is pending, moving provider time past retries."""
    deadline_s = time.monotonic() + WAIT_S_MAX
    while time.monotonic() < deadline_s:
        stats = psp.admin("GET", "webhooks")
        if stats["pending"] == 0 and stats["in_flight"] == 0:
            return dict(stats["outcomes"])
        if stats["in_flight"] == 0:
            psp.admin("POST", "clock/advance", {"seconds": 30})
        time.sleep(0.01)
    raise AssertionError(f"webhooks still pending after {WAIT_S_MAX}s: {stats}")


WEBHOOK_FAULTS: dict[str, Any] = {
    "webhooks": {
        "duplicate_rate": 0.3,
        "forged_rate": 0.3,
        "old_timestamp_rate": 0.3,
        "drop_attempt_rate": 0.3,
    },
    "webhook_retry": {"first_retry_s": 5, "backoff_factor": 2, "attempts_max": 8},
}


def test_the_sdk_accepts_every_genuine_webhook_and_rejects_every_forged_one(
    start_psp: StartPsp,
) -> None:
    receiver = Receiver()
    with serve_in_thread(receiver.app) as hook_base, start_psp(11, WEBHOOK_FAULTS) as psp:
        client = psp.client()
        endpoint = client.v1.webhook_endpoints.create(
            params={"url": f"{hook_base}/hooks", "enabled_events": ["*"]}
        )
        assert endpoint.secret is not None and endpoint.secret.startswith("whsec_")
        receiver.secret = endpoint.secret
        for index in range(4):
            paid = _manual_intent(client, 1000 + index, confirm=True)
            client.v1.payment_intents.capture(paid.id)
        client.v1.refunds.create(params={"payment_intent": paid.id, "amount": 100})
        outcomes = _drain_webhooks(psp)
        events = client.v1.events.list(params={"limit": 100}).data

    assert len(events) >= 13
    assert {event.id for event in receiver.accepted} == {event.id for event in events}
    # Every genuine delivery (originals, duplicates) was accepted; forgeries never were.
    assert outcomes.get("forged.rejected", 0) >= 1
    assert outcomes.get("old_timestamp.rejected", 0) >= 1
    assert outcomes.get("duplicate.accepted", 0) >= 1
    for kind in ("original", "duplicate"):
        assert outcomes.get(f"{kind}.rejected", 0) == 0, outcomes
    for kind in ("forged", "old_timestamp"):
        assert outcomes.get(f"{kind}.accepted", 0) == 0, outcomes
    assert (
        len(receiver.rejected) == outcomes["forged.rejected"] + outcomes["old_timestamp.rejected"]
    )


# --- timeouts: the SDK's retries never charge twice --------------------------------------


TIMEOUT_FAULTS: dict[str, Any] = {
    "api_rules": [
        {
            "endpoints": ["payment_intents.*", "refunds.create"],
            "timeout_after_rate": 0.35,
            "timeout_before_rate": 0.15,
        }
    ]
}


def test_sdk_retries_after_lost_responses_never_charge_twice(start_psp: StartPsp) -> None:
    orders = [f"order-{index}" for index in range(8)]
    with start_psp(3, TIMEOUT_FAULTS, timeout_hold_s=5.0) as psp:
        client = psp.client(retries=8, timeout_s=0.3)
        for index, order in enumerate(orders):
            paid = client.v1.payment_intents.create(
                params={
                    "amount": 1000 + index,
                    "currency": "usd",
                    "payment_method": "pm_card_visa",
                    "confirm": True,
                    "metadata": {"order_id": order},
                }
            )
            assert paid.status == "succeeded"
            client.v1.refunds.create(params={"payment_intent": paid.id, "amount": 100})
        psp.admin("POST", "faults", {})
        truth = psp.admin("GET", "ground_truth")
        counts = psp.admin("GET", "fault_log")["counts"]
        listed = client.v1.payment_intents.list(params={"limit": 100}).data

    assert counts.get("api.timeout_after", 0) >= 3, counts
    assert counts.get("api.timeout_before", 0) >= 1, counts
    assert len(listed) == len(orders)
    assert set(truth["orders"]) == set(orders)
    for index, order in enumerate(orders):
        (totals,) = truth["orders"][order].values()
        assert totals["successful_charge_count"] == 1, (order, totals)
        assert len(totals["payment_intents"]) == 1, (order, totals)
        assert totals["captured"] == 1000 + index
        assert totals["refunded"] == 100
