"""The engine's HTTP API: thin FastAPI routers over ``PaymentEngine``'s steps.

Routers parse a pydantic schema, call a step, drive its provider call and map
the result; no business rule and no commit lives here. One exception handler
maps the engine's typed errors to HTTP with a stable ``code``, the ``field``
and the request id; nothing else (and never a stack trace) reaches a client.

A slow or unreachable provider never holds a checkout: the provider call is
made once, within ``provider_timeout_s``; when it gives no answer the payment
is answered ``processing`` (202) and the recovery worker finishes the job.

When ``Services.background`` holds the engine's workers, the app's lifespan
starts them with the server and stops them (bounded) when it shuts down.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.adapters import stripe_dialect as dialect
from engine.adapters.api_keys import KeyCache, KeyStore, Principal
from engine.adapters.database import check_schema
from engine.adapters.webhook_signature import WebhookRejected, verify
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund, Void
from engine.domain.errors import (
    Forbidden,
    InvalidRequest,
    PaychaosError,
    RateLimited,
    Unauthorized,
)
from engine.domain.marketplace import LINES_MAX, Split
from engine.domain.ports import Clock
from engine.domain.provider import ProviderCall, ProviderOutcome
from engine.entrypoints.metrics import Metrics
from engine.service.driver import Provider, perform
from engine.service.engine import PaymentEngine
from engine.service.views import StepResult
from engine.workers.background import BackgroundWorker, WorkerState

log = logging.getLogger("paychaos.api")
REQUEST_ID_HEADER = "Request-Id"
WEBHOOK_PATH = "/v1/webhooks/psp"
LATENCY_SERIES_MAX = 1_000  # routes x methods x statuses: a few dozen in practice
T = TypeVar("T")


@dataclass(slots=True)
class TokenBucket:
    """Per-key rate limiting: ``burst`` requests at once, refilled at ``rate_per_s``."""

    rate_per_s: float
    burst: float
    tokens: dict[str, tuple[float, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key: str, now_s: float) -> float:
        """0 when allowed, else the seconds until a token is back."""
        with self.lock:
            tokens, last_s = self.tokens.get(key, (self.burst, now_s))
            tokens = min(self.burst, tokens + (now_s - last_s) * self.rate_per_s)
            if tokens >= 1.0:
                self.tokens[key] = (tokens - 1.0, now_s)
                return 0.0
            self.tokens[key] = (tokens, now_s)
            return (1.0 - tokens) / self.rate_per_s


@dataclass(slots=True)
class Services:
    """What the API needs; the composition root (``serve engine``) builds it."""

    engine: PaymentEngine
    provider: Provider
    keys: KeyStore
    clock: Clock
    webhook_secret: str
    metrics: Metrics
    rate_limit: TokenBucket = field(default_factory=lambda: TokenBucket(100.0, 200.0))
    monotonic: Callable[[], float] = time.monotonic
    background: BackgroundWorker | None = None  # the workers, when they run in this process
    # Threads for the engine's steps (one is enough on SQLite: it has one writer) and
    # for provider calls (a slow provider holds one of these, never a step's thread).
    step_threads: int = 1
    provider_threads: int = 32
    key_cache: KeyCache | None = None
    _pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None

    def __post_init__(self) -> None:
        assert 1 <= self.step_threads <= 64 and 1 <= self.provider_threads <= 256
        if self.key_cache is None:
            self.key_cache = KeyCache(self.keys, self.monotonic)

    def pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        if self._pools is None:
            self._pools = (
                ThreadPoolExecutor(self.step_threads, thread_name_prefix="paychaos-step"),
                ThreadPoolExecutor(self.provider_threads, thread_name_prefix="paychaos-psp"),
            )
        return self._pools

    async def step(self, function: Callable[..., T], *args: Any) -> T:
        """Run an engine step (or any database read) on the step threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pools()[0], function, *args)

    async def drive(self, begun: StepResult) -> JSONResponse:
        """Make the provider call a ``begin_*`` step asked for, complete it, answer."""
        call = begun.call
        if call is None:
            return _respond(begun)
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self.pools()[1], self.provider.call, call)
        return _respond(await self.step(perform, self.engine, Answered(outcome), begun))

    async def principal(self, authorization: str | None, write: bool) -> Principal:
        """The caller's key (401 without one), within its rate (429), allowed to write (403)."""
        secret = (authorization or "").removeprefix("Bearer ").strip()
        assert self.key_cache is not None
        found = self.key_cache.cached(secret)
        if found is None:
            found = await self.step(self.key_cache.authenticate, secret)
        if found is None:
            raise Unauthorized(message="a valid API key is required: Authorization: Bearer sk_...")
        wait_s = self.rate_limit.take(found.key_id, self.monotonic())
        if wait_s > 0:
            raise RateLimited(wait_s)
        if write and not found.can_write:
            raise Forbidden(message="this write needs a secret key (sk_...), not a restricted one")
        return found

    def close(self) -> None:
        if self._pools is not None:
            for pool in self._pools:
                pool.shutdown(wait=False, cancel_futures=True)
            self._pools = None


@dataclass(frozen=True, slots=True)
class Answered:
    """A provider whose answer is already in: completes a step off the event loop."""

    outcome: ProviderOutcome

    def call(self, call: ProviderCall) -> ProviderOutcome:
        return self.outcome

    def lookup(self, call: ProviderCall) -> ProviderOutcome:
        return self.outcome


# -- request bodies ------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitBody(_Body):
    seller_id: str = Field(max_length=255)
    amount_minor: int


class CreatePaymentBody(_Body):
    amount_minor: int
    currency: str = Field(max_length=3)
    order_id: str = Field(max_length=255)
    payment_method: str = Field(max_length=128)
    capture_method: str = "manual"
    metadata: dict[str, str] = Field(default_factory=dict)
    # A marketplace payment: one line per seller, adding up to amount_minor.
    splits: list[SplitBody] = Field(default_factory=list, max_length=LINES_MAX)


class AmountBody(_Body):
    amount_minor: int | None = None


class RefundBody(_Body):
    amount_minor: int | None = None
    reason: str | None = Field(default=None, max_length=255)


def payment_body(result: StepResult) -> dict[str, Any]:
    body = result.payment.as_dict()
    if result.refund_id is not None:
        body["refund_id"] = result.refund_id
    return body


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="paychaos engine",
        version="1",
        description="Payments with idempotency on every write and a double-entry ledger.",
        lifespan=_lifespan,
    )
    app.state.services = services
    _install_handlers(app)
    app.add_middleware(RequestContext, services=services)
    _payment_routes(app, services)
    _operational_routes(app, services)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    background = services.background
    if background is not None:
        background.start()
    try:
        yield
    finally:
        if background is not None:
            await asyncio.to_thread(background.stop)
        services.close()


# -- what every route reads from the request ------------------------------------------------
# Plain parameters, not dependencies: FastAPI documents them the same, and solving a
# tree of dependencies per request cost as much as the engine's step on a read.
Authorization = Annotated[str | None, Header()]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _respond(result: StepResult) -> JSONResponse:
    return JSONResponse(payment_body(result), status_code=result.status_code)


# -- payments: one operation per route, shared by FastAPI's routes and the fast path ----------
@dataclass(frozen=True, slots=True)
class Call:
    """What a payment operation takes from its request, parsed and authenticated."""

    services: Services
    who: Principal
    payment_id: str = ""
    key: str = ""
    body: Any = None


async def _create(c: Call) -> Response:
    body: CreatePaymentBody = c.body
    command = CreatePayment(
        c.who.merchant_id, c.key, body.order_id, body.amount_minor, body.currency,
        body.payment_method, body.capture_method, body.metadata,
        tuple(Split(line.seller_id, line.amount_minor) for line in body.splits),
    )  # fmt: skip
    return _respond(await c.services.step(c.services.engine.create_payment, command))


async def _get(c: Call) -> Response:
    body = await c.services.step(_payment_json, c.services.engine, c.payment_id, c.who)
    return JSONResponse(body)


async def _confirm(c: Call) -> Response:
    command = Authorize(c.who.merchant_id, c.key, c.payment_id)
    return await c.services.drive(await c.services.step(c.services.engine.begin_authorize, command))


async def _capture(c: Call) -> Response:
    amount = c.body.amount_minor if c.body else None
    command = Capture(c.who.merchant_id, c.key, c.payment_id, amount)
    return await c.services.drive(await c.services.step(c.services.engine.begin_capture, command))


async def _cancel(c: Call) -> Response:
    command = Void(c.who.merchant_id, c.key, c.payment_id)
    return await c.services.drive(await c.services.step(c.services.engine.begin_void, command))


async def _refund(c: Call) -> Response:
    amount, reason = (c.body.amount_minor, c.body.reason) if c.body else (None, None)
    command = Refund(c.who.merchant_id, c.key, c.payment_id, amount, reason)
    return await c.services.drive(await c.services.step(c.services.engine.begin_refund, command))


async def _refunds(c: Call) -> Response:
    payment = await c.services.step(c.services.engine.get_payment, c.payment_id, c.who.merchant_id)
    return JSONResponse({"data": [dict(item) for item in payment.refunds]})


async def _ledger(c: Call) -> Response:
    journals = await c.services.step(_ledger_of, c.services.engine, c.payment_id, c.who)
    return JSONResponse({"data": [_journal_json(journal, rows) for journal, rows in journals]})


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str  # FastAPI's template: the route's name in metrics and logs
    run: Callable[[Call], Awaitable[Response]]
    write: bool = False
    body: type[BaseModel] | None = None
    body_required: bool = False

    async def __call__(
        self, request: Request, services: Services, authorization: str | None,
        key: str | None = None, payment_id: str = "", body: Any = None,
    ) -> Response:  # fmt: skip
        who = await _caller(request, services, authorization, write=self.write)
        return await self.run(Call(services, who, payment_id, key or "", body))


PAY = "/v1/payments/{payment_id}"
CREATE = Operation("POST", "/v1/payments", _create, True, CreatePaymentBody, body_required=True)
GET = Operation("GET", PAY, _get)
CONFIRM = Operation("POST", f"{PAY}/confirm", _confirm, True)
CAPTURE = Operation("POST", f"{PAY}/capture", _capture, True, AmountBody)
CANCEL = Operation("POST", f"{PAY}/cancel", _cancel, True)
REFUND = Operation("POST", f"{PAY}/refunds", _refund, True, RefundBody)
REFUNDS = Operation("GET", f"{PAY}/refunds", _refunds)
LEDGER = Operation("GET", f"{PAY}/ledger", _ledger)
OPERATIONS = (CREATE, GET, CONFIRM, CAPTURE, CANCEL, REFUND, REFUNDS, LEDGER)


def _payment_routes(app: FastAPI, services: Services) -> None:
    engine = services.engine

    @app.post(CREATE.path, status_code=201, tags=["payments"])
    async def create_payment(
        request: Request, body: CreatePaymentBody, authorization: Authorization = None,
        key: IdempotencyKey = None,
    ) -> Response:  # fmt: skip
        return await CREATE(request, services, authorization, key, body=body)

    @app.get(GET.path, tags=["payments"])
    async def get_payment(
        request: Request, payment_id: str, authorization: Authorization = None
    ) -> Response:
        return await GET(request, services, authorization, payment_id=payment_id)

    @app.get("/v1/payments", tags=["payments"])
    async def list_payments(
        request: Request,
        authorization: Authorization = None,
        order_id: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> Response:
        who = await _caller(request, services, authorization)
        views = await services.step(engine.list_payments, who.merchant_id, order_id, limit, offset)
        body = {"data": [view.as_dict() for view in views], "limit": limit, "offset": offset}
        return JSONResponse(body)

    @app.post(CONFIRM.path, tags=["payments"])
    async def confirm(
        request: Request, payment_id: str, authorization: Authorization = None,
        key: IdempotencyKey = None,
    ) -> Response:  # fmt: skip
        return await CONFIRM(request, services, authorization, key, payment_id)

    @app.post(CAPTURE.path, tags=["payments"])
    async def capture(
        request: Request,
        payment_id: str,
        authorization: Authorization = None,
        key: IdempotencyKey = None,
        body: AmountBody | None = None,
    ) -> Response:
        return await CAPTURE(request, services, authorization, key, payment_id, body)

    @app.post(CANCEL.path, tags=["payments"])
    async def cancel(
        request: Request, payment_id: str, authorization: Authorization = None,
        key: IdempotencyKey = None,
    ) -> Response:  # fmt: skip
        return await CANCEL(request, services, authorization, key, payment_id)

    @app.post(REFUND.path, tags=["refunds"])
    async def refund(
        request: Request,
        payment_id: str,
        authorization: Authorization = None,
        key: IdempotencyKey = None,
        body: RefundBody | None = None,
    ) -> Response:
        return await REFUND(request, services, authorization, key, payment_id, body)

    @app.get(REFUNDS.path, tags=["refunds"])
    async def list_refunds(
        request: Request, payment_id: str, authorization: Authorization = None
    ) -> Response:
        return await REFUNDS(request, services, authorization, payment_id=payment_id)

    @app.get(LEDGER.path, tags=["ledger"])
    async def payment_ledger(
        request: Request, payment_id: str, authorization: Authorization = None
    ) -> Response:
        return await LEDGER(request, services, authorization, payment_id=payment_id)

    @app.get("/v1/balance", tags=["ledger"])
    async def balance(request: Request, authorization: Authorization = None) -> Response:
        who = await _caller(request, services, authorization)
        balances = await services.step(engine.merchant_balance, who.merchant_id)
        return JSONResponse({"merchant_id": who.merchant_id, "balances": balances})


async def _caller(
    request: Request, services: Services, authorization: str | None, write: bool = False
) -> Principal:
    who = await services.principal(authorization, write)
    request.state.merchant_id = who.merchant_id
    return who


LINE_KEYS = ("line_no", "seller_id", "amount_minor", "captured_minor", "fee_minor",
             "refunded_minor", "fee_reversed_minor", "disputed_minor", "bucket")  # fmt: skip


def _payment_json(engine: PaymentEngine, payment_id: str, who: Principal) -> dict[str, Any]:
    """A payment with its history (and a split payment's lines): one trip to the step threads."""
    payment = engine.get_payment(payment_id, who.merchant_id, with_lines=True)
    body = payment.as_dict()
    if payment.lines:
        body["lines"] = [{key: line[key] for key in LINE_KEYS} for line in payment.lines]
    return body


def _ledger_of(
    engine: PaymentEngine, payment_id: str, who: Principal
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    return engine.ledger_of(payment_id, who.merchant_id)  # 404 for another merchant


def _journal_json(journal: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": journal["id"],
        "kind": journal["kind"],
        "created_at": journal["created_at"].isoformat().replace("+00:00", "Z"),
        "entries": [
            {k: entry[k] for k in ("account", "side", "amount_minor", "currency")}
            for entry in entries
        ],
    }


async def take_webhook(services: Services, payload: bytes, signature: str | None) -> Response:
    """Verify a delivery, keep it, apply it, answer 2xx; ``PaychaosError`` if it is refused."""
    now_s = services.clock.now().timestamp()
    try:
        verify(payload, signature, services.webhook_secret, now_s)
        event = orjson.loads(payload)
        translated = dialect.event_from_stripe(event)
    except WebhookRejected as exc:
        services.metrics.webhooks.labels(outcome=exc.code).inc()
        log.warning("webhook refused", extra={"code": exc.code})
        raise
    except (ValueError, KeyError, TypeError) as exc:
        services.metrics.webhooks.labels(outcome="malformed").inc()
        raise InvalidRequest("webhook_malformed", "not a provider event", "body") from exc
    services.metrics.webhook_lag.observe(max(0.0, now_s - int(event["created"])))
    # Kept in the inbox and applied in one unit of work, then answered; one whose
    # application fails is kept pending for the worker to retry (dead letters after
    # repeated failures). Either way it is durable before the 2xx.
    taken, _ = await services.step(services.engine.take_webhook, translated, payload.decode())
    stored = "duplicate" if taken == "duplicate" else "stored"
    services.metrics.webhooks.labels(outcome=stored).inc()
    return JSONResponse({"received": True, "outcome": stored})


# -- webhooks, health, metrics --------------------------------------------------------------
def _operational_routes(app: FastAPI, services: Services) -> None:
    @app.post(WEBHOOK_PATH, tags=["webhooks"])
    async def psp_webhook(request: Request) -> Response:
        return await take_webhook(
            services, await request.body(), request.headers.get("Stripe-Signature")
        )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> JSONResponse:
        background = services.background
        if background is not None and background.state is WorkerState.FAILED:
            # Unknown attempts would stay open: let the supervisor restart this process.
            return JSONResponse({"status": "workers_failed"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        try:
            await services.step(check_schema, services.engine.db.engine)
        except Exception as exc:
            return JSONResponse({"status": "not_ready", "reason": str(exc)[:200]}, 503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        body, content_type = await services.step(services.metrics.render, services)
        return Response(body, media_type=content_type)


# -- errors and request ids ------------------------------------------------------------------
def _error(request: Request, status: int, body: dict[str, Any]) -> JSONResponse:
    return _error_json(getattr(request.state, "request_id", None), status, body)


def _error_json(request_id: str | None, status: int, body: dict[str, Any]) -> JSONResponse:
    body["request_id"] = request_id
    return JSONResponse({"error": body}, status_code=status)


def refusal(request_id: str | None, exc: PaychaosError) -> JSONResponse:
    """The answer to an engine's typed error: its status, code, field and the request id."""
    response = _error_json(request_id, exc.http_status, exc.as_dict())
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s + 0.5)))
    return response


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(PaychaosError)
    async def paychaos_error(request: Request, exc: PaychaosError) -> JSONResponse:
        return refusal(getattr(request.state, "request_id", None), exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = [str(part) for part in first["loc"] if part not in {"body", "query", "path"}]
        body = {"code": "invalid_request", "message": str(first["msg"]), "field": ".".join(where)}
        return _error(request, 400, body)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(request, exc.status_code, {"code": code, "message": str(exc.detail)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"request_id": request.state.request_id})
        body = {"code": "internal_error", "message": "an unexpected error; nothing was changed"}
        return _error(request, 500, body)


class RequestContext:
    """Pure ASGI: a request id on every answer, the latency histogram and one log line.

    (Starlette's ``BaseHTTPMiddleware`` ran each request through an extra task and
    memory streams; this only wraps ``send``.)
    """

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.fast = FastPath(services)
        # Request ids: unique, not secret. A random prefix per process and a counter
        # cost nothing per request (a fresh random id was a system call each). The
        # underscore between them keeps any run of digits under 13: an all-digit
        # prefix and counter would otherwise pass for a card number, and the logs
        # would mask the id.
        self._ids = itertools.count(1)
        self._id_prefix = f"req_{secrets.token_hex(4)}_"
        self._latency: dict[tuple[str, str, int], Any] = {}  # histogram children by labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"{self._id_prefix}{next(self._ids):08x}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            found = self.fast.match(scope["method"], scope["path"])
            if found is not None:
                state["route"] = found[0]
                instead = await self.fast.serve(found, scope, receive, send_with_id)
                if instead is None:
                    return  # answered
                receive = instead
                del state["route"]
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, state, status, time.perf_counter() - started)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, elapsed_s: float) -> None:
        path = str(state.get("route") or getattr(scope.get("route"), "path", "unmatched"))
        method: str = scope["method"]
        histogram = self._latency.get((method, path, status))
        if histogram is None:
            histogram = self.services.metrics.requests.labels(method, path, str(status))
            if len(self._latency) < LATENCY_SERIES_MAX:
                self._latency[method, path, status] = histogram
        histogram.observe(elapsed_s)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request",
                extra={
                    "request_id": state["request_id"], "method": method, "route": path,
                    "status": status, "merchant_id": state.get("merchant_id"),
                    "elapsed_ms": round(elapsed_s * 1000, 2),
                },
            )  # fmt: skip


FAST_BODY_BYTES_MAX = 64 * 1024  # larger bodies (none of the API's) go the long way


class FastPath:
    """The payment routes and the webhook intake without FastAPI's machinery per request.

    It serves only what it is sure of: a matching method and path, and a body that is
    absent (where the route allows that) or JSON that the route's pydantic model takes.
    Anything else (a body to refuse, another content type, a large body) goes on to
    FastAPI with its body, so refusals and their wording stay FastAPI's. The answers
    are the same operations the FastAPI routes run, and typed errors get the same
    ``refusal``. FastAPI still declares every route: it is the API's documentation.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self.exact = {(op.method, op.path): op for op in OPERATIONS if "{" not in op.path}
        self.under_payment = {
            (op.method, op.path.removeprefix(PAY)): op
            for op in OPERATIONS
            if op.path.startswith(PAY)
        }

    def match(self, method: str, path: str) -> tuple[str, Operation | None, str] | None:
        """(route template, operation or None for the webhook intake, payment id)."""
        if method == "POST" and path == WEBHOOK_PATH:
            return WEBHOOK_PATH, None, ""
        op = self.exact.get((method, path))
        if op is not None:
            return op.path, op, ""
        rest = path.removeprefix("/v1/payments/")
        if rest == path:
            return None
        payment_id, slash, tail = rest.partition("/")
        op = self.under_payment.get((method, f"/{tail}" if slash else ""))
        if op is None or not payment_id:
            return None
        return op.path, op, payment_id

    async def serve(
        self, found: tuple[str, Operation | None, str], scope: Scope, receive: Receive, send: Send
    ) -> Receive | None:
        """Answer, and return None; or return what FastAPI should receive instead."""
        body, complete = await _read_body(receive, FAST_BODY_BYTES_MAX)
        if not complete:
            return None if body is None else _replay(body, receive, more_body=True)
        assert body is not None
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value.decode("latin-1"))  # the first, as Starlette reads
        state = scope["state"]
        _, op, payment_id = found
        try:
            if op is None:
                response = await take_webhook(self.services, body, headers.get(b"stripe-signature"))
            else:
                parsed = self._parse(op, body, headers.get(b"content-type", ""))
                if parsed is _LONG_WAY:
                    return _replay(body, receive)
                who = await self.services.principal(headers.get(b"authorization"), op.write)
                state["merchant_id"] = who.merchant_id
                key = headers.get(b"idempotency-key") or ""
                response = await op.run(Call(self.services, who, payment_id, key, parsed))
        except PaychaosError as exc:
            response = refusal(state["request_id"], exc)
        await response(scope, receive, send)
        return None

    @staticmethod
    def _parse(op: Operation, body: bytes, content_type: str) -> Any:
        if op.body is None:
            return None  # FastAPI reads no body for these routes either
        if not body:
            return _LONG_WAY if op.body_required else None
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            return _LONG_WAY
        try:
            return op.body.model_validate(json.loads(body))
        except ValueError:  # pydantic's ValidationError and JSON's errors alike
            return _LONG_WAY


_LONG_WAY = object()


async def _read_body(receive: Receive, bytes_max: int) -> tuple[bytes | None, bool]:
    """(the body, True); or (what was read, False) past ``bytes_max``; (None, False) if
    the client disconnected first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, False
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > bytes_max:
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive, more_body: bool = False) -> Receive:
    """``receive`` as it was before ``body`` was read from it."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": more_body}

    return again
