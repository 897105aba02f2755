"""The provider adapter's HTTP/1.1 transport against a scripted server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from engine.adapters.http11 import KeepAliveTransport

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
CHUNKED = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n")  # fmt: skip
CUT_SHORT = b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"a"'


class Scripted:
    """Answers each connection's requests with the next answers of a script; ``None``
    closes the connection unanswered, ``"hang"`` never answers, ``"then close"`` closes
    the connection after the answer before it."""

    def __init__(self, script: list[bytes | str | None]) -> None:
        self.script = list(script)
        self.connections = 0
        self.closed = threading.Event()  # the server has closed a connection
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def __enter__(self) -> Scripted:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.thread.join(5.0)
        self.server.close()

    def _serve(self) -> None:
        while self.script:
            conn, _ = self.server.accept()
            self.connections += 1
            with conn:
                while self.script:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        request += chunk
                    if not request:
                        break
                    self.requests.append(request)
                    answer = self.script.pop(0)
                    if answer is None:
                        break
                    if answer == "hang":
                        conn.recv(1)  # until the client gives up
                        break
                    assert isinstance(answer, bytes)
                    conn.sendall(answer)
                    if self.script and self.script[0] == "then close":
                        self.script.pop(0)
                        break
            self.closed.set()


def test_answers_are_read_whole_and_the_connection_is_kept() -> None:
    with (
        Scripted([OK, CHUNKED, OK]) as server,
        httpx.Client(transport=KeepAliveTransport(), timeout=5.0) as client,
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
    assert server.requests[1].startswith(b"GET /v1/payment_intents/pi_1?expand=x HTTP/1.1")


def test_an_answer_cut_short_is_a_protocol_error_and_the_next_call_reconnects() -> None:
    with (
        Scripted([CUT_SHORT, "then close", OK]) as server,
        httpx.Client(transport=KeepAliveTransport(), timeout=5.0) as client,
    ):
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{url}/one")
        assert client.get(f"{url}/two").json() == {"ok": True}
    assert server.connections == 2


def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    with (
        Scripted([OK, "then close", OK]) as server,
        httpx.Client(transport=KeepAliveTransport(), timeout=5.0) as client,
    ):
        url = f"http://127.0.0.1:{server.port}"
        assert client.get(f"{url}/one").status_code == 200
        assert server.closed.wait(5.0)
        assert client.get(f"{url}/two").status_code == 200  # not an error: a new connection
    assert server.connections == 2


def test_no_answer_in_time_is_a_read_timeout_and_nobody_listening_a_connect_error() -> None:
    with (
        Scripted(["hang"]) as server,
        httpx.Client(transport=KeepAliveTransport(), timeout=0.3) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"http://127.0.0.1:{server.port}/slow", data={"a": "1"})
        closed = socket.create_server(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:{port}/")
