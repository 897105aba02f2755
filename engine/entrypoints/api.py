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
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.adapters import stripe_dialect as dialect
from engine.adapters.api_keys import KeyStore, Principal
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
from engine.entrypoints.metrics import Metrics
from engine.service.driver import Provider, perform
from engine.service.engine import PaymentEngine
from engine.service.views import StepResult
from engine.workers.background import BackgroundWorker, WorkerState
from engine.workers.inbox import InboxProcessor

log = logging.getLogger("paychaos.api")
REQUEST_ID_HEADER = "Request-Id"
INBOX_BATCH_MAX = 20


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
    _install_middleware(app, services)
    _payment_routes(app)
    _operational_routes(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    background: BackgroundWorker | None = app.state.services.background
    if background is not None:
        background.start()
    try:
        yield
    finally:
        if background is not None:
            await asyncio.to_thread(background.stop)


# -- dependencies ------------------------------------------------------------------------
def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def principal(
    request: Request, services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    secret = (authorization or "").removeprefix("Bearer ").strip()
    found = services.keys.authenticate(secret)
    if found is None:
        raise Unauthorized(message="a valid API key is required: Authorization: Bearer sk_...")
    wait_s = services.rate_limit.take(found.key_id, services.monotonic())
    if wait_s > 0:
        raise RateLimited(wait_s)
    request.state.merchant_id = found.merchant_id
    return found


def writer(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.can_write:
        raise Forbidden(message="this write needs a secret key (sk_...), not a restricted one")
    return who


Reader = Annotated[Principal, Depends(principal)]
Writer = Annotated[Principal, Depends(writer)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _respond(result: StepResult) -> JSONResponse:
    return JSONResponse(payment_body(result), status_code=result.status_code)


def _drive(services: Services, begun: StepResult) -> JSONResponse:
    """Make the provider call a ``begin_*`` step asked for, complete it, answer."""
    return _respond(perform(services.engine, services.provider, begun))


# -- payments -----------------------------------------------------------------------------
def _payment_routes(app: FastAPI) -> None:
    @app.post("/v1/payments", status_code=201, tags=["payments"])
    def create_payment(
        body: CreatePaymentBody, who: Writer, services: ServicesDep, key: IdempotencyKey = None
    ) -> JSONResponse:
        command = CreatePayment(
            who.merchant_id, key or "", body.order_id, body.amount_minor, body.currency,
            body.payment_method, body.capture_method, body.metadata,
            tuple(Split(line.seller_id, line.amount_minor) for line in body.splits),
        )  # fmt: skip
        return _respond(services.engine.create_payment(command))

    @app.get("/v1/payments/{payment_id}", tags=["payments"])
    def get_payment(payment_id: str, who: Reader, services: ServicesDep) -> dict[str, Any]:
        body = services.engine.get_payment(payment_id, who.merchant_id).as_dict()
        lines = services.engine.lines_of(payment_id)
        if lines:
            keys = ("line_no", "seller_id", "amount_minor", "captured_minor", "fee_minor",
                    "refunded_minor", "fee_reversed_minor", "disputed_minor", "bucket")  # fmt: skip
            body["lines"] = [{key: line[key] for key in keys} for line in lines]
        return body

    @app.get("/v1/payments", tags=["payments"])
    def list_payments(
        who: Reader,
        services: ServicesDep,
        order_id: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> dict[str, Any]:
        views = services.engine.list_payments(who.merchant_id, order_id, limit, offset)
        return {"data": [view.as_dict() for view in views], "limit": limit, "offset": offset}

    @app.post("/v1/payments/{payment_id}/confirm", tags=["payments"])
    def confirm(
        payment_id: str, who: Writer, services: ServicesDep, key: IdempotencyKey = None
    ) -> JSONResponse:
        command = Authorize(who.merchant_id, key or "", payment_id)
        begun = services.engine.begin_authorize(command)
        return _drive(services, begun)

    @app.post("/v1/payments/{payment_id}/capture", tags=["payments"])
    def capture(
        payment_id: str,
        who: Writer,
        services: ServicesDep,
        key: IdempotencyKey = None,
        body: AmountBody | None = None,
    ) -> JSONResponse:
        amount = body.amount_minor if body else None
        begun = services.engine.begin_capture(
            Capture(who.merchant_id, key or "", payment_id, amount)
        )
        return _drive(services, begun)

    @app.post("/v1/payments/{payment_id}/cancel", tags=["payments"])
    def cancel(
        payment_id: str, who: Writer, services: ServicesDep, key: IdempotencyKey = None
    ) -> JSONResponse:
        begun = services.engine.begin_void(Void(who.merchant_id, key or "", payment_id))
        return _drive(services, begun)

    @app.post("/v1/payments/{payment_id}/refunds", tags=["refunds"])
    def refund(
        payment_id: str,
        who: Writer,
        services: ServicesDep,
        key: IdempotencyKey = None,
        body: RefundBody | None = None,
    ) -> JSONResponse:
        amount, reason = (body.amount_minor, body.reason) if body else (None, None)
        command = Refund(who.merchant_id, key or "", payment_id, amount, reason)
        begun = services.engine.begin_refund(command)
        return _drive(services, begun)

    @app.get("/v1/payments/{payment_id}/refunds", tags=["refunds"])
    def list_refunds(payment_id: str, who: Reader, services: ServicesDep) -> dict[str, Any]:
        payment = services.engine.get_payment(payment_id, who.merchant_id)
        return {"data": [dict(item) for item in payment.refunds]}

    @app.get("/v1/payments/{payment_id}/ledger", tags=["ledger"])
    def payment_ledger(payment_id: str, who: Reader, services: ServicesDep) -> dict[str, Any]:
        services.engine.get_payment(payment_id, who.merchant_id)  # 404 for another merchant
        journals = services.engine.ledger_of(payment_id)
        return {"data": [_journal_json(journal, entries) for journal, entries in journals]}

    @app.get("/v1/balance", tags=["ledger"])
    def balance(who: Reader, services: ServicesDep) -> dict[str, Any]:
        return {"merchant_id": who.merchant_id, "balances": services.engine.merchant_balance(
            who.merchant_id
        )}  # fmt: skip


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


# -- webhooks, health, metrics --------------------------------------------------------------
def _operational_routes(app: FastAPI) -> None:
    @app.post("/v1/webhooks/psp", tags=["webhooks"])
    async def psp_webhook(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        payload = await request.body()
        signature = request.headers.get("Stripe-Signature")
        now_s = services.clock.now().timestamp()
        try:
            verify(payload, signature, services.webhook_secret, now_s)
            event = json.loads(payload)
            translated = dialect.event_from_stripe(event)
        except WebhookRejected as exc:
            services.metrics.webhooks.labels(outcome=exc.code).inc()
            log.warning("webhook refused", extra={"code": exc.code})
            raise
        except (ValueError, KeyError, TypeError) as exc:
            services.metrics.webhooks.labels(outcome="malformed").inc()
            raise InvalidRequest("webhook_malformed", "not a provider event", "body") from exc
        services.metrics.webhook_lag.observe(max(0.0, now_s - int(event["created"])))
        # Durable first (the inbox), then answered; applied here when it can be,
        # else by the worker, with dead letters after repeated failures.
        stored = services.engine.store_webhook(
            translated.event_id, translated.type, payload.decode()
        )
        services.metrics.webhooks.labels(outcome=stored).inc()
        if stored == "stored":
            InboxProcessor(services.engine, batch_max=INBOX_BATCH_MAX).run_once()
        return JSONResponse({"received": True, "outcome": stored})

    @app.get("/healthz", tags=["operations"])
    def healthz(services: ServicesDep) -> JSONResponse:
        background = services.background
        if background is not None and background.state is WorkerState.FAILED:
            # Unknown attempts would stay open: let the supervisor restart this process.
            return JSONResponse({"status": "workers_failed"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["operations"])
    def readyz(services: ServicesDep) -> JSONResponse:
        try:
            check_schema(services.engine.db.engine)
        except Exception as exc:
            return JSONResponse({"status": "not_ready", "reason": str(exc)[:200]}, 503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["operations"])
    def metrics(services: ServicesDep) -> Response:
        body, content_type = services.metrics.render(services)
        return Response(body, media_type=content_type)


# -- errors and request ids ------------------------------------------------------------------
def _error(request: Request, status: int, body: dict[str, Any]) -> JSONResponse:
    body["request_id"] = getattr(request.state, "request_id", None)
    return JSONResponse({"error": body}, status_code=status)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(PaychaosError)
    async def paychaos_error(request: Request, exc: PaychaosError) -> JSONResponse:
        response = _error(request, exc.http_status, exc.as_dict())
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s + 0.5)))
        return response

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


def _install_middleware(app: FastAPI, services: Services) -> None:
    @app.middleware("http")
    async def request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.request_id = f"req_{secrets.token_hex(8)}"
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        elapsed_s = time.perf_counter() - started
        services.metrics.requests.labels(request.method, path, str(response.status_code)).observe(
            elapsed_s
        )
        response.headers[REQUEST_ID_HEADER] = request.state.request_id
        log.info(
            "request",
            extra={
                "request_id": request.state.request_id, "method": request.method,
                "route": path, "status": response.status_code,
                "merchant_id": getattr(request.state, "merchant_id", None),
                "elapsed_ms": round(elapsed_s * 1000, 2),
            },
        )  # fmt: skip
        return response
