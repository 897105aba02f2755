"""The mock PSP's HTTP surface is bounded and answers bad input 4xx, never 500 (issue 15).

In process, requests go straight to the ASGI app (``_asgi``), so that query strings and
headers can carry any bytes; over a real socket, uvicorn serves the app from a thread
on a port chosen at run time (``serve_in_thread``), for what only a socket shows: a
body refused while it streams, and connections that stay usable after an error.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message

from mock_psp.background import serve_in_thread
from mock_psp.clock import ManualClock
from mock_psp.core import ApiRequest, ApiResult, ProviderCore
from mock_psp.server import BODY_BYTES_MAX, JSON_DEPTH_MAX, PspServer, build_core

AUTH = (b"authorization", b"Bearer sk_test_paychaos_hardening")
FORM = (b"content-type", b"application/x-www-form-urlencoded")
SOCKET_TIMEOUT_S = 10.0
CHUNK_BYTES = 64 * 1024
# A streamed body far past the limit: the server must answer long before its end.
STREAM_BYTES_MAX = 100 * BODY_BYTES_MAX
ERROR_KEYS = {"type", "code", "message", "param"}

Answer = tuple[int, dict[str, str], bytes]


def _asgi(
    server: PspServer,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
) -> Answer:
    """One request through the ASGI interface, bytes as given: status, headers, body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"psp.test"), *headers],
        "client": ("127.0.0.1", 50_000),
        "server": ("psp.test", 80),
    }
    incoming: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop() if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(server.app(scope, receive, send))
    start, *chunks = sent
    answer_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], answer_headers, b"".join(c.get("body", b"") for c in chunks)


def _error(answer: Answer) -> dict[str, Any]:
    """The Stripe-shaped error of a 4xx or 5xx answer."""
    status, _, body = answer
    assert status >= 400, answer
    error: dict[str, Any] = orjson.loads(body)["error"]
    assert error.keys() >= ERROR_KEYS, error
    return error


def _faults(server: PspServer) -> bytes:
    status, _, body = _asgi(server, "GET", "/_admin/faults")
    assert status == 200
    return body


# --- 1. JSON depth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000],
    ids=["lists", "objects"],
)
def test_an_admin_body_nested_100000_deep_is_refused_and_changes_nothing(body: bytes) -> None:
    server = PspServer(build_core(1))
    before = _faults(server)
    refused = _asgi(server, "POST", "/_admin/faults", body=body)
    assert refused[0] == 400
    assert _error(refused)["code"] == "json_too_deep"
    assert _faults(server) == before


def _nested(depth: int) -> bytes:
    """An object holding ``api_rules`` nested ``depth`` levels deep, the object included."""
    return b'{"api_rules":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_json_depth_is_bounded_at_json_depth_max_and_brackets_in_strings_do_not_count() -> None:
    server = PspServer(build_core(1))
    at_bound = _error(_asgi(server, "POST", "/_admin/faults", body=_nested(JSON_DEPTH_MAX)))
    assert at_bound["code"] == "fault_config_invalid"  # parsed, then refused by the plan
    past = _error(_asgi(server, "POST", "/_admin/faults", body=_nested(JSON_DEPTH_MAX + 1)))
    assert past["code"] == "json_too_deep"
    quoted = json.dumps({"url": "https://a.test/" + "[{" * 1_000 + '\\"'}).encode()
    registered = _asgi(server, "POST", "/_admin/webhook_endpoints", body=quoted)
    assert registered[0] == 200, registered


# --- 2. body size --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/_admin/faults", "/v1/payment_intents"])
def test_the_body_limit_is_exact_and_refuses_with_413(path: str) -> None:
    server = PspServer(build_core(1))
    at_limit = _asgi(server, "POST", path, headers=(AUTH, FORM), body=b" " * BODY_BYTES_MAX)
    assert at_limit[0] != 413
    past = b" " * (BODY_BYTES_MAX + 1)
    refused = _asgi(server, "POST", path, headers=(AUTH, FORM), body=past)
    assert refused[0] == 413
    error = _error(refused)
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert refused[1]["connection"] == "close"


@pytest.fixture
def base_url() -> Iterator[str]:
    with serve_in_thread(PspServer(build_core(3)).app) as url:
        yield url


def _connection(base_url: str) -> http.client.HTTPConnection:
    host, port = base_url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=SOCKET_TIMEOUT_S)


@pytest.mark.parametrize("path", ["/_admin/faults", "/v1/payment_intents"])
def test_a_declared_length_past_the_limit_is_refused_before_any_byte_is_sent(
    base_url: str, path: str
) -> None:
    conn = _connection(base_url)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/x-www-form-urlencoded")
    conn.putheader("Content-Length", str(BODY_BYTES_MAX + 1))
    conn.endheaders()  # and not one byte of the body: the answer cannot wait for it
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    assert answer.status == 413
    assert answer.getheader("connection") == "close"
    assert _error((answer.status, {}, body))["code"] == "request_too_large"
    assert httpx.get(f"{base_url}/_admin/faults", timeout=SOCKET_TIMEOUT_S).status_code == 200


@pytest.mark.parametrize("path", ["/_admin/faults", "/v1/payment_intents"])
def test_a_streamed_body_past_the_limit_is_refused_while_it_streams(
    base_url: str, path: str
) -> None:
    sent_bytes = 0

    def body() -> Iterator[bytes]:
        nonlocal sent_bytes
        while sent_bytes < STREAM_BYTES_MAX:
            sent_bytes += CHUNK_BYTES
            yield b"a" * CHUNK_BYTES

    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=base_url, timeout=SOCKET_TIMEOUT_S) as client:
        refused = client.post(path, content=body(), headers=headers)
        assert "content-length" not in refused.request.headers  # chunked: no length given
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "request_too_large"
        # The server stopped reading near the limit; the client noticed soon after.
        assert sent_bytes < STREAM_BYTES_MAX // 4
        assert client.get("/_admin/faults").status_code == 200


# --- 3. bad input of every kind is a 4xx in Stripe's shape --------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "code"),
    [
        ("POST", "/v1/payment_intents", b"", b"amount=\xff\xfe", "body_invalid"),
        ("POST", "/v1/payment_intents", b"", b"amount=%ff", "body_invalid"),
        ("GET", "/v1/payment_intents", b"limit=\xff", b"", "query_invalid"),
        ("GET", "/_admin/settlement", b"start=\xff&end=2", b"", "query_invalid"),
        ("POST", "/v1/payment_intents", b"", b"&" * 600, "parameters_too_many"),
        ("POST", "/_admin/webhook_endpoints", b"", b'{"url": "https://a.test/\\ud800"}',
         "body_invalid"),
        ("POST", "/_admin/faults", b"", b"[]", "body_invalid"),
        ("POST", "/_admin/faults", b"", b"null", "body_invalid"),
        ("POST", "/_admin/clock/advance", b"", b'{"seconds": 1e309}', "body_invalid"),
        ("POST", "/_admin/clock/advance", b"", b'{"seconds": NaN}', "body_invalid"),
        ("POST", "/_admin/clock/advance", b"", b'{"seconds": -1}', "parameter_invalid_integer"),
        ("POST", "/_admin/clock/advance", b"", b'{"seconds": 1' + b"0" * 5_000 + b"}",
         "body_invalid"),
        ("GET", "/v1/payment_intents/pi_\x00", b"", b"", None),
        ("GET", "/v1/payment_intents/pi_\x00x/confirm", b"", b"", None),
    ],
)  # fmt: skip
def test_bad_input_is_a_stripe_error_and_changes_nothing(
    method: str, path: str, query: bytes, body: bytes, code: str | None
) -> None:
    server = PspServer(build_core(1))
    before = _asgi(server, "GET", "/_admin/ground_truth")
    answer = _asgi(server, method, path, query=query, headers=(AUTH, FORM), body=body)
    assert 400 <= answer[0] < 500, answer
    assert _error(answer)["code"] == code
    assert _asgi(server, "GET", "/_admin/ground_truth") == before


ADMIN_ROUTES = [
    ("GET", "/_admin/faults"),
    ("POST", "/_admin/faults"),
    ("PUT", "/_admin/faults"),
    ("GET", "/_admin/settlement"),
    ("POST", "/_admin/clock/advance"),
    ("POST", "/_admin/webhook_endpoints"),
    ("POST", "/_admin/disputes"),
    ("POST", "/_admin/payment_intents/pi_x/authenticate"),
    ("POST", "/_admin/disputes/dp_x/close"),
    ("GET", "/_admin/idempotency/key-1"),
]
API_ROUTES = [
    ("POST", "/v1/payment_intents"),
    ("GET", "/v1/payment_intents"),
    ("POST", "/v1/payment_intents/pi_x/confirm"),
    ("POST", "/v1/refunds"),
]
PARAM_NAMES = [
    "seconds",
    "url",
    "api_rules",
    "amount",
    "currency",
    "payment_intent",
    "start",
    "end",
    "outcome",
    "enabled_events",
    "metadata",
    "payment_method",
    "limit",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
admin_bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda value: json.dumps(value).encode()),  # NaN, Infinity, huge ints
    st.dictionaries(st.sampled_from(PARAM_NAMES), json_values, max_size=4).map(
        lambda value: json.dumps(value).encode()
    ),
    st.sampled_from([b'{"url": "\\ud800"}', b'{"\\udfff": 1}', b'"\\u0000"']),
    st.integers(0, 3 * JSON_DEPTH_MAX).map(lambda n: b"[" * n + b"]" * n),
)
form_values = st.one_of(
    st.binary(max_size=12),
    st.text(max_size=12).map(str.encode),
    st.binary(max_size=12).map(lambda raw: quote_from_bytes(raw).encode()),  # %ff, %00
)
form_names = st.sampled_from(PARAM_NAMES).map(str.encode) | form_values
form_bodies = st.one_of(
    st.binary(max_size=64),
    st.lists(st.tuples(form_names, form_values), max_size=6).map(
        lambda pairs: b"&".join(name + b"=" + value for name, value in pairs)
    ),
)


# What an HTTP server lets through in a header value: no CR, LF or NUL.
header_values = st.binary(max_size=24).filter(lambda value: not set(value) & set(b"\r\n\0"))


def _assert_answered_in_shape(answer: Answer) -> None:
    status, _, body = answer
    assert status < 500, answer
    if status >= 400:
        _error(answer)
    else:
        orjson.loads(body)


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(route=st.sampled_from(ADMIN_ROUTES), query=st.binary(max_size=24), body=admin_bodies)
def test_arbitrary_admin_requests_never_answer_5xx(
    route: tuple[str, str], query: bytes, body: bytes
) -> None:
    method, path = route
    answer = _asgi(PspServer(build_core(1)), method, path, query=query, body=body)
    _assert_answered_in_shape(answer)


@settings(derandomize=True, database=None, deadline=None, max_examples=300)
@given(
    route=st.sampled_from(API_ROUTES),
    query=st.binary(max_size=24),
    body=form_bodies,
    idempotency_key=st.none() | header_values,
)
def test_arbitrary_api_requests_never_answer_5xx(
    route: tuple[str, str], query: bytes, body: bytes, idempotency_key: bytes | None
) -> None:
    method, path = route
    headers: tuple[tuple[bytes, bytes], ...] = (AUTH, FORM)
    if idempotency_key is not None:
        headers += ((b"idempotency-key", idempotency_key),)
    answer = _asgi(PspServer(build_core(1)), method, path, query=query, headers=headers, body=body)
    _assert_answered_in_shape(answer)


# --- 4. connections stay usable after an error --------------------------------------------


class BrokenCore(ProviderCore):
    """A core with a bug: every API call raises."""

    def handle(self, request: ApiRequest) -> ApiResult:
        raise RuntimeError("a bug in the mock")


def test_errors_answer_in_stripes_shape_on_a_connection_that_stays_open() -> None:
    server = PspServer(BrokenCore(ManualClock(), random.Random(1)))
    with serve_in_thread(server.app) as url:
        conn = _connection(url)
        headers = {"Authorization": "Bearer sk_test_x", "Content-Type": FORM[1].decode()}
        conn.request("POST", "/v1/payment_intents", body=b"amount=1&currency=usd", headers=headers)
        bug = conn.getresponse()
        assert bug.status == 500
        assert _error((500, {}, bug.read()))["type"] == "api_error"
        sock = conn.sock
        assert sock is not None  # not closed by the server after the bug
        conn.request("POST", "/_admin/faults", body=b"[" * 100_000 + b"]" * 100_000)
        deep = conn.getresponse()
        assert _error((deep.status, {}, deep.read()))["code"] == "json_too_deep"
        conn.request("GET", "/_admin/faults")
        after = conn.getresponse()
        assert after.status == 200
        after.read()
        assert conn.sock is sock  # the same connection all along
        conn.close()
