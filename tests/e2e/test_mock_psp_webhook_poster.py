"""The mock PSP's webhook client (aiohttp) against a scripted endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mock_psp.server import BODY_BYTES_MAX, WebhookPoster
from tests.e2e.scripted_server import OK, Scripted

HEADERS = {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": "t=1,v1=ab"}
PAYLOAD = b'{"id":"evt_1"}'


def posting(
    url: str, timeout_s: float, steps: Callable[[WebhookPoster, str], Awaitable[object]]
) -> object:
    async def run() -> object:
        async with WebhookPoster.opened(timeout_s, connections_max=4) as poster:
            return await steps(poster, url)

    return asyncio.run(run())


async def post_twice(poster: WebhookPoster, url: str) -> list[int]:
    return [await poster.post(url, PAYLOAD, HEADERS) for _ in range(2)]


def test_deliveries_share_a_kept_connection_and_carry_their_headers() -> None:
    with Scripted([OK, OK]) as server:
        assert posting(f"http://127.0.0.1:{server.port}/hook", 5.0, post_twice) == [200, 200]
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /hook HTTP/1.1\r\n")
    assert b"stripe-signature: t=1,v1=ab\r\n" in first.lower()
    assert first.endswith(b"\r\n\r\n" + PAYLOAD)


def test_a_kept_connection_closed_unanswered_is_posted_once_more_on_a_new_one() -> None:
    with Scripted([OK, None, OK]) as server:
        assert posting(f"http://127.0.0.1:{server.port}/", 5.0, post_twice) == [200, 200]
    assert (server.connections, len(server.requests)) == (2, 3)


def test_a_connection_the_endpoint_closed_while_idle_is_replaced() -> None:
    async def steps(poster: WebhookPoster, url: str) -> list[int]:
        first = await poster.post(url, PAYLOAD, HEADERS)
        assert await asyncio.to_thread(server.closed.wait, 5.0)
        return [first, await poster.post(url, PAYLOAD, HEADERS)]

    with Scripted([OK, "then close", OK]) as server:
        assert posting(f"http://127.0.0.1:{server.port}/", 5.0, steps) == [200, 200]
    assert (server.connections, len(server.requests)) == (2, 2)


def test_no_answer_in_time_is_a_failure_not_a_status() -> None:
    with Scripted(["hang"]) as server, pytest.raises(WebhookPoster.FAILURES):
        posting(f"http://127.0.0.1:{server.port}/", 0.3, post_twice)


def test_an_answer_larger_than_the_bound_is_a_failure() -> None:
    size = BODY_BYTES_MAX + 1
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    with Scripted([huge]) as server, pytest.raises(ValueError):
        posting(f"http://127.0.0.1:{server.port}/", 5.0, post_twice)
