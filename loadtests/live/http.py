"""What live mode says over HTTP: the engine's public API and the PSP's admin API.

Nothing else: no import of the engine's internals, so any engine that speaks
the API can be checked. Every call is bounded by a timeout; a call that gets no
answer (timeout, refused or reset connection) is an ``Answer`` with status
``None``, never an exception, so callers decide what "no answer" means.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

CONNECTIONS_MAX = 64
ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None  # None: no answer at all
    body: Any
    latency_s: float
    retry_after_s: float = 0.0
    request_id: str | None = None

    @property
    def code(self) -> str | None:
        """The error's machine-readable code, when the answer is an error."""
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code")) if isinstance(error, dict) else None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def payment(self) -> dict[str, Any] | None:
        """The payment the answer carries, if it is one (an id and a state)."""
        body = self.body
        return body if isinstance(body, dict) and "id" in body and "state" in body else None


class EngineApi:
    """The engine's public API, one merchant per API key (``key`` is its index)."""

    def __init__(self, base_url: str, api_keys: list[str], timeout_s: float):
        assert api_keys
        self.api_keys = api_keys
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=CONNECTIONS_MAX),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def send(
        self,
        key: int,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Answer:
        headers = {"Authorization": f"Bearer {self.api_keys[key]}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        started = time.monotonic()
        try:
            response = await self.http.request(
                method, path, json=body, headers=headers, params=params
            )
        except httpx.HTTPError:
            return Answer(None, None, time.monotonic() - started)
        return _answer(response, time.monotonic() - started)

    async def ready(self) -> Answer:
        started = time.monotonic()
        try:
            response = await self.http.get("/readyz")
        except httpx.HTTPError:
            return Answer(None, None, time.monotonic() - started)
        return _answer(response, time.monotonic() - started)


def _answer(response: httpx.Response, latency_s: float) -> Answer:
    try:
        body = response.json()
    except ValueError:
        body = None
    retry_after = response.headers.get("Retry-After", "")
    return Answer(
        response.status_code, body, latency_s,
        float(retry_after) if retry_after.isdigit() else 0.0,
        response.headers.get("Request-Id"),
    )  # fmt: skip


class PspAdminError(Exception):
    """The PSP's admin API did not answer as expected."""


class PspAdmin:
    """The mock PSP's ``/_admin`` (faults, ground truth, clock) and its intents, read-only."""

    def __init__(self, base_url: str, psp_key: str):
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(ADMIN_TIMEOUT_S),
            headers={"Authorization": f"Bearer {psp_key}"},
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = await self.http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise PspAdminError(f"{method} {path}: no answer ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise PspAdminError(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response.json()

    async def faults(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/_admin/faults"))

    async def set_faults(self, plan: dict[str, Any]) -> None:
        await self._call("PUT", "/_admin/faults", plan)

    async def fault_counts(self) -> dict[str, int]:
        log = await self._call("GET", "/_admin/fault_log")
        return {str(kind): int(count) for kind, count in log["counts"].items()}

    async def fault_records(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/_admin/fault_log"))["records"])

    async def webhooks(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/_admin/webhooks"))

    async def ground_truth(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/_admin/ground_truth"))

    async def now_s(self) -> float:
        return await self.advance_clock(0)

    async def advance_clock(self, seconds: int) -> float:
        return float(
            (await self._call("POST", "/_admin/clock/advance", {"seconds": seconds}))["now"]
        )

    async def authenticate(self, payment_intent_id: str) -> None:
        """The customer completes 3D Secure at the provider."""
        path = f"/_admin/payment_intents/{quote(payment_intent_id)}/authenticate"
        await self._call("POST", path, {"outcome": "succeed"})

    async def payment_intent(self, payment_intent_id: str) -> dict[str, Any] | None:
        """The provider's intent as its Stripe API shows it (None when it does not exist)."""
        try:
            response = await self.http.get(f"/v1/payment_intents/{quote(payment_intent_id)}")
        except httpx.HTTPError as exc:
            raise PspAdminError(f"GET intent {payment_intent_id}: {type(exc).__name__}") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PspAdminError(f"GET intent {payment_intent_id}: {response.status_code}")
        return dict(response.json())
