"""The provider adapter's urllib3 transport against a scripted server on 127.0.0.1: what
urllib3 does is translated into the httpx errors ``HttpProvider`` sorts by kind."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.adapters.urllib3_transport import Urllib3Transport
from engine.domain.provider import CallKind, OutcomeStatus, ProviderCall
from mock_psp.background import serve_in_thread
from mock_psp.server import PspServer, ServerSettings, build_core
from tests.e2e.scripted_server import CHUNKED, CUT_SHORT, OK, Scripted


def test_answers_are_read_whole_and_the_connection_is_kept() -> None:
    with (
        Scripted([OK, CHUNKED, OK]) as server,
        httpx.Client(transport=Urllib3Transport(), timeout=5.0) as client,
    ):
        url = f"http://127.0.0.1:{server.port}"
        first = client.post(f"{url}/v1/payment_intents", data={"amount": "100"},
                            headers={"Idempotency-Key": "k1"})  # fmt: skip
        assert (first.status_code, first.json()) == (200, {"ok": True})
        second = client.get(f"{url}/v1/payment_intents/pi_1?expand=x")
        assert (second.status_code, second.json()) == (201, {"a": 1})
        assert client.get(f"{url}/again").json() == {"ok": True}
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /v1/payment_intents HTTP/1.1\r\n")
    assert b"idempotency-key: k1\r\n" in server.requests[0].lower()
    assert server.requests[0].endswith(b"\r\n\r\namount=100")
    assert server.requests[1].startswith(b"GET /v1/payment_intents/pi_1?expand=x HTTP/1.1")


def test_an_answer_cut_short_is_a_protocol_error_and_the_next_call_reconnects() -> None:
    with (
        Scripted([CUT_SHORT, "then close", OK]) as server,
        httpx.Client(transport=Urllib3Transport(), timeout=5.0) as client,
    ):
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{url}/one")
        assert client.get(f"{url}/two").json() == {"ok": True}
    assert server.connections == 2
    assert len(server.requests) == 2  # the cut-short request was not sent again


def test_a_connection_closed_before_the_answer_is_a_protocol_error_and_not_resent() -> None:
    with (
        Scripted([OK, None]) as server,
        httpx.Client(transport=Urllib3Transport(), timeout=5.0) as client,
    ):
        url = f"http://127.0.0.1:{server.port}"
        assert client.get(f"{url}/one").status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(f"{url}/two", data={"a": "1"}, headers={"Idempotency-Key": "k2"})
    assert (server.connections, len(server.requests)) == (1, 2)


def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    with (
        Scripted([OK, "then close", OK]) as server,
        httpx.Client(transport=Urllib3Transport(), timeout=5.0) as client,
    ):
        url = f"http://127.0.0.1:{server.port}"
        assert client.get(f"{url}/one").status_code == 200
        assert server.closed.wait(5.0)
        assert client.get(f"{url}/two").status_code == 200  # not an error: a new connection
    assert server.connections == 2


def test_no_answer_in_time_is_a_read_timeout_and_nobody_listening_a_connect_error() -> None:
    with (
        Scripted(["hang"]) as server,
        httpx.Client(transport=Urllib3Transport(), timeout=0.3) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"http://127.0.0.1:{server.port}/slow", data={"a": "1"})
        closed = socket.create_server(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{port}/")


def test_a_server_that_reads_nothing_is_a_write_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # never accepts, never reads
    port = listener.getsockname()[1]
    body = b"x" * (64 * 1024 * 1024)  # more than the kernel buffers on both sides
    with (
        listener,
        httpx.Client(transport=Urllib3Transport(), timeout=httpx.Timeout(5.0, write=0.3)) as client,
        pytest.raises(httpx.WriteTimeout),
    ):
        client.post(f"http://127.0.0.1:{port}/big", content=body)


def test_a_server_whose_backlog_is_full_is_a_connect_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    where = listener.getsockname()
    waiting: list[socket.socket] = []
    try:
        for _ in range(16):  # fill the accept queue: the kernel then drops new handshakes
            try:
                waiting.append(socket.create_connection(where, timeout=0.2))
            except TimeoutError:
                break
        else:
            pytest.fail("the listener's accept queue never filled")
        with (
            httpx.Client(transport=Urllib3Transport(), timeout=0.3) as client,
            pytest.raises(httpx.ConnectTimeout),
        ):
            client.get(f"http://{where[0]}:{where[1]}/")
    finally:
        for conn in waiting:
            conn.close()
        listener.close()


def test_only_plain_http_is_spoken() -> None:
    with (
        httpx.Client(transport=Urllib3Transport(), timeout=1.0) as client,
        pytest.raises(httpx.UnsupportedProtocol),
    ):
        client.get("https://127.0.0.1:1/")


# --- the provider adapter over this transport, against the mock PSP -----------------------

LOST = {"api_rules": [{"endpoints": ["payment_intents.create"], "timeout_after_rate": 1}]}


@pytest.fixture
def psp_url() -> Iterator[str]:
    server = PspServer(build_core(5), ServerSettings(timeout_hold_s=0.3))
    with serve_in_thread(server.app) as base_url:
        yield base_url


def authorize(provider: HttpProvider, key: str) -> OutcomeStatus:
    call = ProviderCall(f"att_{key}", CallKind.AUTHORIZE, key, f"pay_{key}", "m_1",
                        f"order_{key}", 1_000, "EUR", "pm_card_visa", "automatic")  # fmt: skip
    return provider.call(call).status


@pytest.mark.parametrize(("timeout_s", "failure"), [(5.0, "RemoteProtocolError"), (0.1, "timeout")])
def test_a_lost_response_is_an_unknown_outcome_for_the_adapter_never_a_decline(
    psp_url: str, timeout_s: float, failure: str
) -> None:
    provider = HttpProvider(
        psp_url, "sk_test_transport", timeout_s=timeout_s, retry=RetryPolicy(attempts_max=1),
        transport=Urllib3Transport(),
    )  # fmt: skip
    with httpx.Client(base_url=psp_url) as admin:
        assert admin.post("/_admin/faults", json=LOST).status_code == 200
    try:
        assert authorize(provider, "lost") is OutcomeStatus.UNKNOWN
        assert provider.stats.failures == {failure: 1}
    finally:
        provider.close()


def test_the_adapter_gets_the_providers_answers_over_kept_connections(psp_url: str) -> None:
    provider = HttpProvider(psp_url, "sk_test_transport", transport=Urllib3Transport())
    try:
        assert authorize(provider, "k1") is OutcomeStatus.SUCCEEDED
        assert authorize(provider, "k2") is OutcomeStatus.SUCCEEDED
        assert provider.stats.failures == {}
    finally:
        provider.close()
