"""The engine's HTTP surface refuses what it must before it reads or changes anything.

Each test here was a finding of a probe of the API: it failed before the gate of
``engine.entrypoints.http_guard`` and the strict bodies, on SQLite and PostgreSQL
where the database mattered. The property test at the end sends arbitrary methods,
paths, headers and bodies to every route: never a 5xx, and a refused request
leaves the ledger as it was.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.adapters import schema as t
from engine.adapters.api_keys import KeyCache, KeyStore
from engine.adapters.database import Database
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.adapters.webhook_signature import sign
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.api import Services, create_app
from engine.entrypoints.http_guard import (
    API_BODY_BYTES_MAX,
    AUTH_FAILURES_BURST,
    JSON_DEPTH_MAX,
    WEBHOOK_BODY_BYTES_MAX,
    TokenBucket,
)
from engine.entrypoints.metrics import Metrics
from engine.service.engine import PaymentEngine
from loadtests.load import free_socket
from mock_psp.clock import ManualClock
from mock_psp.core import ProviderCore
from mock_psp.transport import CoreTransport

SECRET = "sk_test_hardening_0123456789abcdef"
RESTRICTED = "rk_test_hardening_0123456789abcdef"
WEBHOOK_SECRET = "whsec_hardening"
NOW = datetime(2026, 3, 1, tzinfo=UTC)
AUTH = {"Authorization": f"Bearer {SECRET}"}
PAYMENT = {"amount_minor": 10_000, "currency": "EUR", "order_id": "o-1",
           "payment_method": "pm_card_visa"}  # fmt: skip
SERVER_READY_S_MAX = 10.0


def build_services(database: Database) -> Services:
    clock = FixedClock(NOW)
    engine = PaymentEngine(database, clock, SeededIds(random.Random(8)))
    psp = ProviderCore(ManualClock(NOW.timestamp()), random.Random(2))
    provider = HttpProvider(
        "http://psp.test", "sk_test_engine", transport=CoreTransport(psp),
        retry=RetryPolicy(attempts_max=1), sleep=lambda _s: None,
    )  # fmt: skip
    keys = KeyStore(database)
    keys.create("key_1", "m_one", "secret", SECRET, NOW)
    keys.create("key_2", "m_one", "restricted", RESTRICTED, NOW)
    return Services(engine, provider, keys, clock, WEBHOOK_SECRET, Metrics())


@pytest.fixture
def services(database: Database) -> Iterator[Services]:
    built = build_services(database)
    yield built
    built.provider.close()  # type: ignore[attr-defined]


@pytest.fixture
def client(services: Services) -> TestClient:
    return TestClient(create_app(services), raise_server_exceptions=False)


def post(client: TestClient, path: str, body: Any = None, key: str = "k") -> Any:
    return client.post(path, json=body, headers={**AUTH, "Idempotency-Key": key})


def ledger_rows(database: Database) -> tuple[int, int]:
    with database.engine.connect() as c:
        journals = c.execute(sa.select(sa.func.count()).select_from(t.ledger_journals)).scalar()
        entries = c.execute(sa.select(sa.func.count()).select_from(t.ledger_entries)).scalar()
    return int(journals or 0), int(entries or 0)


def payments(database: Database) -> int:
    with database.engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(t.payments)).scalar() or 0)


def captured(client: TestClient) -> str:
    created = post(client, "/v1/payments", PAYMENT, "create")
    assert created.status_code == 201, created.text
    pid = str(created.json()["id"])
    assert post(client, f"/v1/payments/{pid}/confirm", key="confirm").status_code == 200
    assert post(client, f"/v1/payments/{pid}/capture", key="capture").status_code == 200
    return pid


def refused(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert error["field"] == field, error
    assert set(error) == {"code", "message", "field", "request_id"}
    return error


# -- bounded bodies ----------------------------------------------------------------------------
def test_a_body_declared_too_large_is_refused_before_the_key_or_signature_is_looked_at(
    client: TestClient,
) -> None:
    big = b"x" * (API_BODY_BYTES_MAX + 1)
    anonymous = client.post("/v1/payments", content=big)  # no key: still 413, not 401
    refused(anonymous, 413, "request_too_large")
    assert anonymous.headers["Connection"] == "close"
    huge = b"x" * (WEBHOOK_BODY_BYTES_MAX + 1)
    unsigned = client.post("/v1/webhooks/psp", content=huge)  # no signature: 413, not 400
    refused(unsigned, 413, "request_too_large")


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_bound(services: Services) -> None:
    """No Content-Length (chunked): the body is counted as it is read, never buffered whole."""
    app = create_app(services)
    chunk_bytes = 16 * 1024
    chunks_max = 200 * 1024 * 1024 // chunk_bytes  # a 200 MB upload
    sent = 0
    answer: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        sent += 1
        return {"type": "http.request", "body": b"x" * chunk_bytes, "more_body": sent < chunks_max}

    async def send(message: dict[str, Any]) -> None:
        answer.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/webhooks/psp", "raw_path": b"/v1/webhooks/psp",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000), "headers": [(b"content-type", b"application/json")],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert answer[0]["type"] == "http.response.start" and answer[0]["status"] == 413
    assert sent * chunk_bytes <= WEBHOOK_BODY_BYTES_MAX + chunk_bytes  # stopped at the bound


def test_json_nested_past_the_bound_is_a_400_not_a_500(client: TestClient) -> None:
    deep = b'{"amount_minor": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    response = client.post(
        "/v1/payments", content=deep,
        headers={**AUTH, "Idempotency-Key": "deep", "Content-Type": "application/json"},
    )  # fmt: skip
    refused(response, 400, "body_invalid_json", "body")
    nested: Any = 1
    for _ in range(JSON_DEPTH_MAX):  # the body's own object makes it one deeper than the bound
        nested = [nested]
    refused(post(client, "/v1/payments", {**PAYMENT, "x": nested}, "deeper"), 400,
            "body_too_deep", "body")  # fmt: skip


def test_a_body_that_is_not_json_is_refused_with_415(client: TestClient) -> None:
    response = client.post(
        "/v1/payments", content=b"amount_minor=1",
        headers={**AUTH, "Idempotency-Key": "form",
                 "Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    refused(response, 415, "content_type_unsupported", "Content-Type")


# -- no 500 from input -------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/payments/pay_%00x", "/v1/payments/pay_%00x/ledger",
                                  "/v1/payments/pay_%00x/refunds"])  # fmt: skip
def test_a_control_character_in_a_payment_id_is_a_400(client: TestClient, path: str) -> None:
    refused(client.get(path, headers=AUTH), 400, "payment_id_invalid", "payment_id")
    capture = post(client, path.removesuffix("/ledger").removesuffix("/refunds") + "/capture")
    refused(capture, 400, "payment_id_invalid", "payment_id")


@pytest.mark.parametrize(
    ("query", "field"),
    [("order_id=a%00b", "order_id"), ("offset=100000000000000000000", "offset"),
     ("offset=-1", "offset"), ("limit=0", "limit"), ("limit=abc", "limit")],
)  # fmt: skip
def test_a_list_query_out_of_bounds_is_a_400(client: TestClient, query: str, field: str) -> None:
    response = client.get(f"/v1/payments?{query}", headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field, error


def test_a_lone_surrogate_in_metadata_is_a_400_and_writes_nothing(
    client: TestClient, database: Database
) -> None:
    body = b'{"amount_minor": 100, "currency": "EUR", "order_id": "o-s", ' \
           b'"payment_method": "pm_card_visa", "metadata": {"note": "\\ud800"}}'  # fmt: skip
    response = client.post(
        "/v1/payments", content=body,
        headers={**AUTH, "Idempotency-Key": "s", "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 400, response.text
    assert payments(database) == 0


def test_after_an_unexpected_error_the_connection_still_serves(services: Services) -> None:
    class Exploding(HttpProvider):
        def call(self, call: Any) -> Any:
            raise RuntimeError("secret internals")

    services.provider = Exploding("http://psp.test", "sk_test_x")
    with served(create_app(services)) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {**AUTH, "Content-Type": "application/json"}
        connection.request("POST", "/v1/payments", body=_json(PAYMENT),
                           headers={**headers, "Idempotency-Key": "c"})  # fmt: skip
        pid = _read(connection, 201)["id"]
        first_socket = connection.sock
        connection.request("POST", f"/v1/payments/{pid}/confirm",
                           headers={**headers, "Idempotency-Key": "a"})  # fmt: skip
        assert _read(connection, 500)["error"]["code"] == "internal_error"
        connection.request("GET", f"/v1/payments/{pid}", headers=AUTH)
        assert _read(connection, 200)["id"] == pid
        assert connection.sock is first_socket  # kept alive, not reset
        connection.close()


# -- strict money ------------------------------------------------------------------------------
@pytest.mark.parametrize("amount", ["100", True, 1000.0, None, [100], {"v": 1}])
def test_an_amount_is_a_json_integer_only(
    client: TestClient, database: Database, amount: Any
) -> None:
    refused(post(client, "/v1/payments", {**PAYMENT, "amount_minor": amount}, "a"), 400,
            "invalid_request", "amount_minor")  # fmt: skip
    assert payments(database) == 0


@pytest.mark.parametrize("amount", ["1", True, 1.0])
def test_a_capture_or_refund_of_a_loose_amount_moves_no_money(
    client: TestClient, database: Database, amount: Any
) -> None:
    pid = captured(client)
    before = ledger_rows(database)
    refused(post(client, f"/v1/payments/{pid}/refunds", {"amount_minor": amount}, "r"), 400,
            "invalid_request", "amount_minor")  # fmt: skip
    created = post(client, "/v1/payments", {**PAYMENT, "order_id": "o-2"}, "c2").json()["id"]
    assert post(client, f"/v1/payments/{created}/confirm", key="a2").status_code == 200
    held = ledger_rows(database)
    refused(post(client, f"/v1/payments/{created}/capture", {"amount_minor": amount}, "p"), 400,
            "invalid_request", "amount_minor")  # fmt: skip
    assert ledger_rows(database) == held and held[0] == before[0] + 1  # only the new hold


@pytest.mark.parametrize(
    ("field", "value"),
    [("payment_method", "pm_card_visa\n"), ("payment_method", " pm_card_visa"),
     ("order_id", "o-1\n"), ("order_id", "o 1"), ("order_id", "o\x00"), ("currency", "EUR\n")],
)  # fmt: skip
def test_identifiers_with_whitespace_or_control_characters_are_refused(
    client: TestClient, database: Database, field: str, value: str
) -> None:
    response = post(client, "/v1/payments", {**PAYMENT, field: value}, "w")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
    assert payments(database) == 0


# -- authentication first ----------------------------------------------------------------------
def test_a_request_without_a_key_is_401_before_its_body_is_validated(client: TestClient) -> None:
    refused(client.post("/v1/payments", json={}), 401, "unauthorized")
    refused(client.post("/v1/payments", content=b"{not json"), 401, "unauthorized")
    restricted = client.post("/v1/payments", json={},
                             headers={"Authorization": f"Bearer {RESTRICTED}"})  # fmt: skip
    refused(restricted, 403, "forbidden")  # who may write, before what is written


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_auth_scheme_is_case_insensitive(client: TestClient, scheme: str) -> None:
    response = client.get("/v1/payments", headers={"Authorization": f"{scheme} {SECRET}"})
    assert response.status_code == 200, response.text


def test_failed_authentications_are_rate_limited_per_address(services: Services) -> None:
    now_s = [1_000.0]
    services.monotonic = lambda: now_s[0]
    services.key_cache = KeyCache(services.keys, services.monotonic)
    client = TestClient(create_app(services), raise_server_exceptions=False)
    assert client.get("/v1/payments", headers=AUTH).status_code == 200
    statuses = [
        client.get("/v1/payments", headers={"Authorization": f"Bearer sk_guess_{n}"}).status_code
        for n in range(int(AUTH_FAILURES_BURST) + 5)
    ]
    assert statuses[: int(AUTH_FAILURES_BURST)] == [401] * int(AUTH_FAILURES_BURST)
    assert set(statuses[int(AUTH_FAILURES_BURST) :]) == {429}
    limited = client.get("/v1/payments", headers={"Authorization": "Bearer sk_guess"})
    error = refused(limited, 429, "rate_limited")
    assert "failed authentications" in error["message"]
    assert int(limited.headers["Retry-After"]) >= 1
    # A key this process found lately still passes (no database read); any other key
    # from this address waits, as the guesses do.
    assert client.get("/v1/payments", headers=AUTH).status_code == 200
    refused(client.get("/v1/payments", headers={"Authorization": f"Bearer {RESTRICTED}"}),
            429, "rate_limited")  # fmt: skip
    now_s[0] += 60.0  # the address's attempts come back with time
    assert client.get("/v1/payments", headers={"Authorization": "Bearer x"}).status_code == 401


def test_the_failure_limiter_forgets_the_oldest_addresses_past_its_bound() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1.0, entries_max=3)
    for address in ("a", "b", "c", "d"):
        assert bucket.take(address, 0.0) == 0.0
    assert list(bucket.tokens) == ["b", "c", "d"]
    assert bucket.take("d", 0.0) > 0


# -- arbitrary input on every route --------------------------------------------------------------
ROUTES = [
    ("POST", "/v1/payments"), ("GET", "/v1/payments"), ("GET", "/v1/payments/{id}"),
    ("POST", "/v1/payments/{id}/confirm"), ("POST", "/v1/payments/{id}/capture"),
    ("POST", "/v1/payments/{id}/cancel"), ("POST", "/v1/payments/{id}/refunds"),
    ("GET", "/v1/payments/{id}/refunds"), ("GET", "/v1/payments/{id}/ledger"),
    ("GET", "/v1/balance"), ("POST", "/v1/webhooks/psp"), ("GET", "/healthz"),
    ("GET", "/readyz"), ("DELETE", "/v1/payments/{id}"), ("PUT", "/v1/payments"),
]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
bodies = st.one_of(
    st.binary(max_size=256),
    json_values.map(lambda value: _json(value)),
    st.fixed_dictionaries({}, optional={
        "amount_minor": json_values, "currency": st.sampled_from(["EUR", "eur", "XYZ", ""]),
        "order_id": st.text(max_size=12), "payment_method": st.sampled_from(
            ["pm_card_visa", "pm_card_visa\n", "pm_card_chargeDeclined", "x"]),
        "metadata": json_values, "reason": json_values, "splits": json_values,
    }).map(lambda value: _json(value)),
)  # fmt: skip
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@st.composite
def requests(draw: st.DrawFn, payment_ids: list[str]) -> tuple[str, str, dict[str, str], bytes]:
    method, template = draw(st.sampled_from(ROUTES))
    payment_id = draw(st.sampled_from(payment_ids) | st.text(max_size=12).map(_quote))
    path = template.replace("{id}", payment_id or "x")
    query = draw(st.sampled_from(["", "?limit=5", "?offset=9e99", "?order_id=%00", "?limit=-1"]))
    headers = {"Content-Type": draw(st.sampled_from(
        ["application/json", "text/plain", "application/json; charset=utf-8", ""]))}  # fmt: skip
    auth = draw(st.sampled_from([f"Bearer {SECRET}", f"bearer {RESTRICTED}", "", "Bearer"])
                | header_values)  # fmt: skip
    if auth:
        headers["Authorization"] = auth
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(header_values)
    if draw(st.booleans()):
        headers["Stripe-Signature"] = draw(header_values)
    return method, path + query, headers, draw(bodies)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres",
                         marks=pytest.mark.postgres)], indirect=True)  # fmt: skip
def test_no_input_gets_a_5xx_and_a_refused_request_changes_no_money(database: Database) -> None:
    services = build_services(database)
    services.auth_failures = TokenBucket(1e9, 1e9)  # here every guess must reach the gate
    client = TestClient(create_app(services), raise_server_exceptions=False)
    pid = captured(client)

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(request=requests([pid, "pay_missing"]))
    def check(request: tuple[str, str, dict[str, str], bytes]) -> None:
        method, path, headers, body = request
        before = ledger_rows(database)
        response = client.request(method, path, headers=headers, content=body)
        assert response.status_code < 500, (method, path, headers, body, response.text)
        assert response.headers["content-type"].startswith("application/json")
        if response.status_code >= 400:
            assert ledger_rows(database) == before, (method, path, response.text)
            assert set(response.json()["error"]) == {"code", "message", "field", "request_id"}

    check()
    services.provider.close()  # type: ignore[attr-defined]


EVENT_TYPES = [
    "payment_intent.amount_capturable_updated",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "refund.updated",
    "charge.dispute.created",
    "charge.dispute.closed",
    "payout.paid",
    "x" * 70,
]
provider_objects = st.fixed_dictionaries({}, optional={
    "id": json_values, "payment_intent": json_values, "status": json_values,
    "amount": json_values, "amount_received": json_values, "amount_capturable": json_values,
    "metadata": json_values | st.fixed_dictionaries({"payment_id": json_values}),
    "last_payment_error": json_values, "balance_transactions": json_values,
})  # fmt: skip
provider_events = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=8) | json_values, "type": st.sampled_from(EVENT_TYPES) | json_values,
    "created": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
    "data": json_values | st.fixed_dictionaries({"object": provider_objects | json_values}),
})  # fmt: skip


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres",
                         marks=pytest.mark.postgres)], indirect=True)  # fmt: skip
def test_a_signed_event_of_any_shape_is_taken_or_refused_never_a_5xx(database: Database) -> None:
    """The provider's signature vouches for who sent an event, not for its shape."""
    services = build_services(database)
    client = TestClient(create_app(services), raise_server_exceptions=False)
    pid = captured(client)

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(event=provider_events, payment_id=st.sampled_from([pid, "pay_missing"]))
    def check(event: dict[str, Any], payment_id: str) -> None:
        data = event.get("data")
        if isinstance(data, dict) and isinstance(data.get("object"), dict):
            metadata = data["object"].get("metadata")
            if isinstance(metadata, dict) and "payment_id" in metadata:
                metadata["payment_id"] = payment_id
        payload = _json(event)
        signature = sign(payload, WEBHOOK_SECRET, int(NOW.timestamp()))
        before = ledger_rows(database)
        response = client.post("/v1/webhooks/psp", content=payload,
                               headers={"Stripe-Signature": signature})  # fmt: skip
        assert response.status_code < 500, (event, response.text)
        if response.status_code >= 400:
            assert ledger_rows(database) == before, (event, response.text)

    check()
    services.provider.close()  # type: ignore[attr-defined]


# -- helpers -----------------------------------------------------------------------------------
def _json(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _read(connection: http.client.HTTPConnection, status: int) -> dict[str, Any]:
    import json

    response = connection.getresponse()
    body = response.read()
    assert response.status == status, body
    found: dict[str, Any] = json.loads(body)
    return found


@contextmanager
def served(app: FastAPI) -> Iterator[int]:
    """The app on uvicorn on a free port, in a thread; stopped at the end."""
    sock = free_socket()
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_READY_S_MAX
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(SERVER_READY_S_MAX)
        sock.close()
