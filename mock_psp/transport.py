"""An in-process httpx transport over the core: HTTP clients without a network.

An ``httpx.Client(transport=CoreTransport(core))`` speaks to the provider core
exactly as it would to ``paychaos serve psp``: Stripe's form-encoded requests
in, JSON out, ``/_admin`` included. A lost response (a timeout fault) raises
``httpx.ReadTimeout``, as a real client would see it. Latency is handed to
``sleep`` (by default not slept at all), so tests run at full speed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qsl

import httpx

from mock_psp.core import ApiRequest, ProviderCore


class CoreTransport(httpx.BaseTransport):
    def __init__(self, core: ProviderCore, sleep: Callable[[float], None] | None = None):
        self.core = core
        self.sleep = sleep
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        path = request.url.path
        pairs: list[tuple[str, object]] = list(parse_qsl(request.url.query.decode()))
        body = request.read()
        if body:
            pairs += parse_qsl(body.decode())
        if path.startswith("/_admin/"):
            params = dict(pairs)
            answer = self.core.admin.handle(request.method, path, params)
            if answer.text is not None:
                return httpx.Response(answer.status, text=answer.text, headers=answer.headers)
            return httpx.Response(answer.status, json=answer.body, headers=answer.headers)
        headers = {name.title(): value for name, value in request.headers.items()}
        result = self.core.handle(ApiRequest(request.method, path, pairs, headers))
        if self.sleep is not None and result.latency_s > 0:
            self.sleep(result.latency_s)
        if result.response is None:
            raise httpx.ReadTimeout("the provider's response was lost", request=request)
        return httpx.Response(
            result.response.status,
            content=json.dumps(result.response.body).encode(),
            headers={**result.response.headers, "Content-Type": "application/json"},
        )
