"""The engine's HTTP API in process: FastAPI's TestClient, the real engine on SQLite,
and the real mock PSP core behind the HTTP provider adapter (no network)."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.adapters.api_keys import KeyStore
from engine.adapters.database import Database
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.adapters.webhook_signature import sign
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.api import REQUEST_ID_HEADER, Services, TokenBucket, create_app
from engine.entrypoints.metrics import Metrics
from engine.service.engine import PaymentEngine
from mock_psp.clock import ManualClock
from mock_psp.core import ProviderCore
from mock_psp.transport import CoreTransport

SECRET = "sk_test_merchant_one_0123456789"
RESTRICTED = "rk_test_merchant_one_0123456789"
OTHER = "sk_test_merchant_two_0123456789"
WEBHOOK_SECRET = "whsec_test"
NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def psp() -> ProviderCore:
    return ProviderCore(ManualClock(NOW.timestamp()), random.Random(2))


@pytest.fixture
def services(sqlite_database: Database, psp: ProviderCore) -> Iterator[Services]:
    clock = FixedClock(NOW)
    engine = PaymentEngine(sqlite_database, clock, SeededIds(random.Random(8)))
    provider = HttpProvider(
        "http://psp.test", "sk_test_engine", transport=CoreTransport(psp),
        retry=RetryPolicy(attempts_max=1), sleep=lambda _s: None,
    )  # fmt: skip
    keys = KeyStore(sqlite_database)
    keys.create("key_1", "m_one", "secret", SECRET, NOW)
    keys.create("key_2", "m_one", "restricted", RESTRICTED, NOW)
    keys.create("key_3", "m_two", "secret", OTHER, NOW)
    yield Services(engine, provider, keys, clock, WEBHOOK_SECRET, Metrics())
    provider.close()


@pytest.fixture
def client(services: Services) -> TestClient:
    return TestClient(create_app(services), raise_server_exceptions=False)


def post(
    client: TestClient, path: str, body: Any = None, key: str | None = "k", auth: str = SECRET
) -> Any:
    headers = {"Authorization": f"Bearer {auth}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(path, json=body, headers=headers)


def get(client: TestClient, path: str, auth: str = SECRET) -> Any:
    return client.get(path, headers={"Authorization": f"Bearer {auth}"})


PAYMENT = {
    "amount_minor": 10_000,
    "currency": "EUR",
    "order_id": "o-1",
    "payment_method": "pm_card_visa",
}


def create(client: TestClient, key: str = "c1", **overrides: Any) -> dict[str, Any]:
    response = post(client, "/v1/payments", {**PAYMENT, **overrides}, key)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_payment_lives_its_whole_life_over_http(client: TestClient) -> None:
    payment = create(client)
    pid = payment["id"]
    assert post(client, f"/v1/payments/{pid}/confirm", key="a").json()["state"] == "authorized"
    captured = post(client, f"/v1/payments/{pid}/capture", {"amount_minor": 7_000}, "cap")
    assert captured.json()["state"] == "partially_captured"
    refund = post(client, f"/v1/payments/{pid}/refunds", {"amount_minor": 2_000}, "r1")
    assert refund.status_code == 200 and refund.json()["refund_id"].startswith("re_")
    full = get(client, f"/v1/payments/{pid}").json()
    assert [h["to_state"] for h in full["history"]] == [
        "created", "authorized", "partially_captured", "partially_refunded",
    ]  # fmt: skip
    assert [
        r["amount_minor"] for r in get(client, f"/v1/payments/{pid}/refunds").json()["data"]
    ] == [2_000]
    kinds = [j["kind"] for j in get(client, f"/v1/payments/{pid}/ledger").json()["data"]]
    assert kinds == ["authorization_hold", "capture", "refund"]
    assert get(client, "/v1/balance").json()["balances"]["EUR"]["available"] == 5_000
    assert get(client, "/v1/payments?order_id=o-1").json()["data"][0]["id"] == pid


def test_every_post_needs_an_idempotency_key(client: TestClient) -> None:
    response = post(client, "/v1/payments", PAYMENT, key=None)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("idempotency_key_missing", "idempotency_key")
    assert error["request_id"].startswith("req_")
    assert get(client, "/v1/payments").json()["data"] == []


def test_a_replay_gets_the_same_answer_and_another_body_is_refused(client: TestClient) -> None:
    first = post(client, "/v1/payments", PAYMENT, "same")
    again = post(client, "/v1/payments", PAYMENT, "same")
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    other = post(client, "/v1/payments", {**PAYMENT, "amount_minor": 1}, "same")
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (
            {**PAYMENT, "payment_method": "4242424242424242"},
            "raw_card_number_refused",
            "payment_method",
        ),
        (
            {**PAYMENT, "metadata": {"note": "4242 4242 4242 4242"}},
            "raw_card_number_refused",
            "metadata.note",
        ),
        ({**PAYMENT, "amount_minor": 0}, "amount_invalid", "amount_minor"),
        ({**PAYMENT, "amount_minor": "ten"}, "invalid_request", "amount_minor"),
        ({**PAYMENT, "currency": "XYZ"}, "currency_unknown", "currency"),
        ({**PAYMENT, "surprise": 1}, "invalid_request", "surprise"),
        ({k: v for k, v in PAYMENT.items() if k != "order_id"}, "invalid_request", "order_id"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    client: TestClient, body: dict[str, Any], code: str, field: str
) -> None:
    response = post(client, "/v1/payments", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert "Traceback" not in response.text
    assert get(client, "/v1/payments").json()["data"] == []


def test_keys_authenticate_and_restricted_keys_only_read(client: TestClient) -> None:
    assert get(client, "/v1/payments", auth="sk_test_wrong").status_code == 401
    assert client.get("/v1/payments").status_code == 401
    pid = create(client)["id"]
    assert get(client, f"/v1/payments/{pid}", auth=RESTRICTED).status_code == 200
    response = post(client, f"/v1/payments/{pid}/confirm", key="a", auth=RESTRICTED)
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"


def test_another_merchants_payment_is_not_found_not_forbidden(client: TestClient) -> None:
    pid = create(client)["id"]
    assert get(client, f"/v1/payments/{pid}", auth=OTHER).status_code == 404
    assert post(client, f"/v1/payments/{pid}/capture", key="x", auth=OTHER).status_code == 404
    assert get(client, f"/v1/payments/{pid}/ledger", auth=OTHER).status_code == 404


def test_a_key_over_its_rate_gets_429_with_retry_after(services: Services) -> None:
    services.rate_limit = TokenBucket(rate_per_s=1.0, burst=2.0)
    services.monotonic = lambda: 100.0
    client = TestClient(create_app(services))
    statuses = [get(client, "/v1/payments").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = get(client, "/v1/payments")
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"


def test_a_provider_that_does_not_answer_leaves_the_payment_processing(
    client: TestClient, psp: ProviderCore
) -> None:
    psp.set_faults({"api_rules": [{"endpoints": ["*"], "timeout_after_rate": 1.0}]})
    pid = create(client)["id"]
    response = post(client, f"/v1/payments/{pid}/confirm", key="a")
    assert (response.status_code, response.json()["state"]) == (202, "processing")


def signed(
    event: dict[str, Any], at: datetime, secret: str = WEBHOOK_SECRET
) -> tuple[bytes, dict[str, str]]:
    payload = json.dumps(event).encode()
    return payload, {"Stripe-Signature": sign(payload, secret, int(at.timestamp()))}


def test_webhooks_are_verified_stored_and_applied_once(
    client: TestClient, psp: ProviderCore, services: Services
) -> None:
    pid = create(client)["id"]
    post(client, f"/v1/payments/{pid}/confirm", key="a")
    intent = next(iter(psp.state.payment_intents.values()))
    event = {
        "id": "evt_1", "type": "payment_intent.canceled", "created": int(NOW.timestamp()),
        "data": {"object": {"id": intent.id, "object": "payment_intent", "status": "canceled",
                            "metadata": {"payment_id": pid}}},
    }  # fmt: skip
    payload, headers = signed(event, NOW, secret="whsec_forged")
    assert client.post("/v1/webhooks/psp", content=payload, headers=headers).status_code == 400
    payload, headers = signed(event, datetime(2026, 2, 1, tzinfo=UTC))
    refused = client.post("/v1/webhooks/psp", content=payload, headers=headers)
    assert refused.json()["error"]["code"] == "webhook_timestamp_out_of_tolerance"
    payload, headers = signed(event, NOW)
    first = client.post("/v1/webhooks/psp", content=payload, headers=headers)
    assert first.json()["outcome"] == "stored"
    assert get(client, f"/v1/payments/{pid}").json()["state"] == "canceled"
    again = client.post("/v1/webhooks/psp", content=payload, headers=headers)
    assert again.json()["outcome"] == "duplicate"
    with services.engine.db.engine.connect() as connection:
        inbox = connection.exec_driver_sql("SELECT provider_event_id, status FROM webhook_inbox")
        assert inbox.all() == [("evt_1", "applied")]


def test_operations_endpoints(client: TestClient, services: Services) -> None:
    create(client)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/metrics").status_code == 404  # only on the metrics listener's port
    text = services.metrics.render(services)[0].decode()
    for name in (
        "paychaos_http_request_duration_seconds", "paychaos_payments", "paychaos_unknown_attempts",
        "paychaos_provider_circuit_state", "paychaos_webhook_lag_seconds",
    ):  # fmt: skip
        assert name in text
    assert 'paychaos_payments{state="created"} 1.0' in text
    assert client.get("/openapi.json").json()["info"]["title"] == "paychaos engine"


def test_unknown_routes_and_unexpected_errors_answer_json_without_a_trace(
    client: TestClient, services: Services
) -> None:
    missing = get(client, "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    anonymous = client.get("/v1/nothing")  # who asks comes first, as everywhere under /v1
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"

    class Exploding(HttpProvider):
        def call(self, call: Any) -> Any:
            raise RuntimeError("secret internals")

    services.provider = Exploding("http://psp.test", "sk_test_x")
    pid = create(client)["id"]
    response = post(client, f"/v1/payments/{pid}/confirm", key="a")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret internals" not in response.text and "Traceback" not in response.text
    time.sleep(0)  # the attempt stays open for recovery: nothing was guessed
    assert get(client, f"/v1/payments/{pid}").json()["state"] == "created"


def test_keys_are_created_once_and_stored_hashed(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from engine.entrypoints.cli import app

    url = f"sqlite:///{tmp_path / 'keys.db'}"
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade", "--db", url]).exit_code == 0
    created = runner.invoke(app, ["keys", "create", "--db", url, "--merchant", "m_9"])
    assert created.exit_code == 0, created.output
    secret = created.output.split()[-1]
    assert secret.startswith("sk_")
    database = Database(url)
    with database.engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT key_hash, prefix FROM api_keys").one()
    assert secret not in stored and stored[1] == secret[:12]
    assert KeyStore(database).authenticate(secret) is not None
    bad = runner.invoke(app, ["keys", "create", "--db", url, "--merchant", "m_9", "--kind", "root"])
    assert bad.exit_code == 2 and "--kind" in bad.output


def test_serving_a_stale_schema_is_a_clear_error(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from engine.entrypoints.cli import app

    url = f"sqlite:///{tmp_path / 'stale.db'}"
    args = ["serve", "engine", "--db", url, "--webhook-secret", "whsec_x"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "paychaos db upgrade" in result.output and "Traceback" not in result.output


def test_logs_are_json_with_correlation_ids_and_never_a_secret(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.entrypoints.logs import configure, stop

    configure()
    try:
        create(client)
        post(client, "/v1/payments", {**PAYMENT, "payment_method": "4242424242424242"}, key="x")
    finally:
        stop()  # the writer thread writes what it holds
        logging.getLogger("paychaos").handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    requests = [line for line in lines if line.get("message") == "request"]
    assert requests and all(line["request_id"].startswith("req_") for line in requests)
    assert requests[0]["merchant_id"] == "m_one"
    text = json.dumps(lines)
    assert "4242424242424242" not in text and SECRET not in text


def test_a_request_id_never_passes_for_a_card_number(client: TestClient) -> None:
    """A random prefix that came out all decimal digits, run together with the counter,
    could (and the logs then masked the id); the underscore between them keeps every
    run of digits short."""
    from engine.domain.validation import contains_pan
    from engine.entrypoints.logs import mask

    request_id = get(client, "/v1/balance").headers[REQUEST_ID_HEADER]
    prefix, counter = request_id.removeprefix("req_").split("_")
    digits = "4" * len(prefix)
    counters = (f"{n:0{len(counter)}x}" for n in range(1, 100))
    luhn_valid = next(c for c in counters if contains_pan(digits + c))
    assert mask(f"req_{digits}{luhn_valid}") != f"req_{digits}{luhn_valid}"  # run together
    assert mask(f"req_{digits}_{luhn_valid}") == f"req_{digits}_{luhn_valid}"


def test_a_split_payment_shows_its_sellers_lines(client: TestClient) -> None:
    splits = [
        {"seller_id": "s_a", "amount_minor": 6_000},
        {"seller_id": "s_b", "amount_minor": 4_000},
    ]
    payment = create(client, splits=splits)
    pid = payment["id"]
    post(client, f"/v1/payments/{pid}/confirm", key="a")
    post(client, f"/v1/payments/{pid}/capture", {"amount_minor": 5_000}, "cap")
    lines = get(client, f"/v1/payments/{pid}").json()["lines"]
    assert [(ln["seller_id"], ln["captured_minor"]) for ln in lines] == [
        ("s_a", 3_000),
        ("s_b", 2_000),
    ]


def test_a_split_that_does_not_add_up_is_refused_naming_the_field(client: TestClient) -> None:
    response = post(
        client, "/v1/payments", {**PAYMENT, "splits": [{"seller_id": "s_a", "amount_minor": 1}]}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("splits_total_mismatch", "splits")
    assert get(client, "/v1/payments").json()["data"] == []
