"""Fixtures for the mock PSP core: a manual clock, a seeded core and a tiny client."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

# Submodule imports on purpose: they work whether or not the editable install maps
# ``mock_psp`` as a namespace package.
from mock_psp.clock import ManualClock
from mock_psp.core import ApiRequest, ApiResult, ProviderCore
from mock_psp.world import ProviderConfig

API_KEY = "sk_test_paychaos"


class PspClient:
    """Speaks to the core as a Stripe SDK would, minus the network."""

    def __init__(self, core: ProviderCore, clock: ManualClock) -> None:
        self.core = core
        self.clock = clock

    def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        api_key: str | None = API_KEY,
    ) -> ApiResult:
        headers = {}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.core.handle(ApiRequest(method, path, dict(params or {}), headers))

    def post(self, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> ApiResult:
        return self.call("POST", path, params, **kw)

    def get(self, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> ApiResult:
        return self.call("GET", path, params, **kw)

    def ok(self, method: str, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        result = self.call(method, path, params, **kw)
        assert result.response is not None, result
        assert result.response.status == 200, result.response.body
        return result.response.body

    def error(self, result: ApiResult) -> dict[str, Any]:
        assert result.response is not None, result
        assert result.response.status >= 400, result.response.body
        body: dict[str, Any] = result.response.body["error"]
        return body

    def pay(self, amount: int = 1000, pm: str = "pm_card_visa", **extra: Any) -> Any:
        params = {"amount": amount, "currency": "usd", "payment_method": pm, "confirm": "true"}
        params.update(extra)
        return self.ok("POST", "/v1/payment_intents", params)

    def event_types(self) -> list[str]:
        return [event.type for event in self.core.state.events.values()]


def make_core(
    seed: int = 7, faults: Mapping[str, Any] | None = None, **config: Any
) -> tuple[ProviderCore, ManualClock]:
    clock = ManualClock()
    core = ProviderCore(clock, random.Random(seed), ProviderConfig(**config), faults)
    return core, clock


@pytest.fixture
def psp() -> PspClient:
    core, clock = make_core()
    return PspClient(core, clock)


@pytest.fixture
def make_psp() -> Any:
    def factory(seed: int = 7, faults: Mapping[str, Any] | None = None, **config: Any) -> PspClient:
        core, clock = make_core(seed, faults, **config)
        return PspClient(core, clock)

    return factory
