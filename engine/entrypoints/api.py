"""The engine's HTTP API: thin FastAPI routers over ``PaymentEngine``'s steps.

Routers parse a pydantic schema, call a step, drive its provider call and map
the result; no business rule and no commit lives here. One exception handler
maps the engine's typed errors to HTTP with a stable ``code``, the ``field``
and the request id; nothing else (and never a stack trace) reaches a client.

A slow or unreachable provider never holds a checkout: the provider call is
made once, within ``provider_timeout_s``; when it gives no answer the payment
is answered ``processing`` (202) and the recovery worker finishes the job.

Before any route, ``RequestContext`` runs the gate of ``engine.entrypoints.
http_guard``: a body over its bound is 413 before it is read, a caller without a
valid key is 401 before its body is read or validated, an address that keeps
failing is 429, a query parameter the route does not take is 400. Bodies are
JSON, parsed by orjson and validated strictly. An exception that escapes a route
is a 500 of the same error shape, and the connection stays usable.

When ``Services.background`` holds the engine's workers, the app's lifespan
starts them with the server and stops them (bounded) when it shuts down, with
the metrics listener (``--metrics-port``), when there is one: ``/metrics`` is not
served on the API's port.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
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
    PayloadTooLarge,
    RateLimited,
)
from engine.domain.marketplace import LINES_MAX, Split
from engine.domain.money import AMOUNT_MINOR_MAX, CURRENCY_EXPONENTS
from engine.domain.ports import Clock
from engine.domain.validation import (
    ID_LENGTH_MAX,
    METADATA_KEY_CONTROLS,
    METADATA_KEY_LENGTH_MAX,
    METADATA_KEYS_MAX,
    METADATA_VALUE_CONTROLS,
    METADATA_VALUE_LENGTH_MAX,
    PAYMENT_METHOD_PATTERN,
    PRINTABLE_PATTERN,
)
from engine.entrypoints import api_schema as doc
from engine.entrypoints.http_guard import (
    API_BODY_BYTES_MAX,
    AUTH_FAILURES_BURST,
    AUTH_FAILURES_PER_S,
    WEBHOOK_BODY_BYTES_MAX,
    TokenBucket,
    bearer_secret,
    bounded,
    declared_length,
    invalid_field,
    parse_json_body,
    refuse_if_locked_out,
    refuse_unauthenticated,
    refuse_unknown_query,
)
from engine.entrypoints.metrics import Metrics, MetricsListener
from engine.service.driver import Done, Provider, advance, ask, finish
from engine.service.engine import EngineSettings, PaymentEngine
from engine.service.views import StepResult
from engine.workers.background import BackgroundWorker, WorkerState

log = logging.getLogger("paychaos.api")
REQUEST_ID_HEADER = "Request-Id"
WEBHOOK_PATH = doc.WEBHOOK_PATH
LATENCY_SERIES_MAX = 1_000  # routes x methods x statuses: a few dozen in practice
T = TypeVar("T")
RESTRICTED_WRITE_MESSAGE = "this write needs a secret key (sk_...), not a restricted one"


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
    # Failed authentications per client address.
    auth_failures: TokenBucket = field(
        default_factory=lambda: TokenBucket(AUTH_FAILURES_PER_S, AUTH_FAILURES_BURST)
    )
    monotonic: Callable[[], float] = time.monotonic
    background: BackgroundWorker | None = None  # the workers, when they run in this process
    # Threads for the engine's steps (one is enough on SQLite: it has one writer) and
    # for provider calls (a slow provider holds one of these, never a step's thread).
    step_threads: int = 1
    provider_threads: int = 32
    key_cache: KeyCache | None = None
    # Unsigned webhooks taken as genuine (serve engine --insecure-skip-webhook-verification):
    # anybody who reaches the intake can then move money. Off unless asked for by name.
    skip_webhook_verification: bool = False
    metrics_listener: MetricsListener | None = None  # /metrics apart from the API's port
    _pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None

    def __post_init__(self) -> None:
        assert 1 <= self.step_threads <= 64 and 1 <= self.provider_threads <= 256
        assert self.webhook_secret or self.skip_webhook_verification, "no webhook secret"
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
        """Pump the operation a ``begin_*`` step started (``driver.finish``): its provider
        requests on the provider threads, its steps on the step threads; answer."""
        operation = finish(self.engine, begun)
        turn = advance(operation, None)  # its first turn only asks: no step runs before
        loop = asyncio.get_running_loop()
        while not isinstance(turn, Done):
            outcome = await loop.run_in_executor(self.pools()[1], ask, self.provider, turn)
            turn = await self.step(advance, operation, outcome)
        return _respond(turn.value)

    async def principal(
        self, authorization: str | None, write: bool, address: str = ""
    ) -> Principal:
        """The caller's key (401 without one; 429 for an address that keeps failing), within
        its rate (429), allowed to write (403)."""
        secret = bearer_secret(authorization)
        assert self.key_cache is not None
        found = self.key_cache.cached(secret)
        if found is None:
            now_s = self.monotonic()
            refuse_if_locked_out(self.auth_failures, address, now_s)
            if secret:
                found = await self.step(self.key_cache.authenticate, secret)
            if found is None:
                refuse_unauthenticated(self.auth_failures, address, now_s)
        assert found is not None
        wait_s = self.rate_limit.take(found.key_id, self.monotonic())
        if wait_s > 0:
            raise RateLimited(wait_s)
        if write and not found.can_write:
            raise Forbidden(message=RESTRICTED_WRITE_MESSAGE)
        return found

    def close(self) -> None:
        if self._pools is not None:
            for pool in self._pools:
                pool.shutdown(wait=False, cancel_futures=True)
            self._pools = None


# -- request bodies ------------------------------------------------------------------
class _Body(BaseModel):
    # Strict: an amount is a JSON integer (never "100", true or 1000.0), a string a string.
    model_config = ConfigDict(extra="forbid", strict=True)


# The domain's rules (engine.domain.validation, .money), stated in the OpenAPI document.
# The domain checks them, whatever the entrypoint, and answers each with its own code
# (a card number in any field is raw_card_number_refused, never echoed): the models
# here check only the JSON types, strictly.
AmountMinor = Annotated[
    int,
    Field(strict=True),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": AMOUNT_MINOR_MAX}),
]
IDENTIFIER_PATTERN = f"^{PRINTABLE_PATTERN}$"
IDENTIFIER_SCHEMA = {"type": "string", "minLength": 1, "maxLength": ID_LENGTH_MAX,
                     "pattern": IDENTIFIER_PATTERN}  # fmt: skip
Identifier = Annotated[str, WithJsonSchema(IDENTIFIER_SCHEMA)]
Token = Annotated[str, WithJsonSchema({"type": "string", "pattern": f"^{PAYMENT_METHOD_PATTERN}$"})]
CURRENCIES = sorted(CURRENCY_EXPONENTS)  # in either case, as the domain takes them
Currency = Annotated[
    str, WithJsonSchema({"type": "string", "enum": CURRENCIES + [c.lower() for c in CURRENCIES]})
]
METADATA_SCHEMA = {
    "type": "object",
    "maxProperties": METADATA_KEYS_MAX,
    "propertyNames": {"minLength": 1, "maxLength": METADATA_KEY_LENGTH_MAX,
                      "pattern": f"^[^{METADATA_KEY_CONTROLS}]+$"},
    "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_LENGTH_MAX,
                             "pattern": f"^[^{METADATA_VALUE_CONTROLS}]*$"},
}  # fmt: skip
Metadata = Annotated[dict[str, str], WithJsonSchema(METADATA_SCHEMA)]


class SplitBody(_Body):
    seller_id: Identifier
    amount_minor: AmountMinor


class CreatePaymentBody(_Body):
    amount_minor: AmountMinor
    currency: Currency
    order_id: Identifier
    payment_method: Token
    capture_method: Literal["manual", "automatic"] = "manual"
    metadata: Metadata = Field(default_factory=dict)
    # A marketplace payment: one line per seller, adding up to amount_minor.
    splits: list[SplitBody] = Field(default_factory=list, max_length=LINES_MAX)


class AmountBody(_Body):
    amount_minor: AmountMinor | None = None


class RefundBody(_Body):
    amount_minor: AmountMinor | None = None
    reason: Identifier | None = None


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
    doc.install_openapi(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    background, listener = services.background, services.metrics_listener
    if listener is not None:
        listener.start()  # first: a port in use (not by a sibling) stops startup early
    if background is not None:
        background.start()
    try:
        yield
    finally:
        if background is not None:
            await asyncio.to_thread(background.stop)
        if listener is not None:
            await asyncio.to_thread(listener.stop)
        services.close()


# -- what every route reads from the request ------------------------------------------------
# Plain parameters, not dependencies: FastAPI documents them the same, and solving a
# tree of dependencies per request cost as much as the engine's step on a read.
Authorization = Annotated[str | None, Header()]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
# A list's query, bounded as the engine's default settings bound it.
OrderQuery = Annotated[
    str | None, Query(min_length=1, max_length=ID_LENGTH_MAX, pattern=IDENTIFIER_PATTERN)
]
LimitQuery = Annotated[int, Query(ge=1, le=EngineSettings().page_size_max)]
OffsetQuery = Annotated[int, Query(ge=0, le=EngineSettings().page_offset_max)]


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

    @app.post(CREATE.path, status_code=201, tags=["payments"], operation_id="createPayment",
              response_model=doc.Payment, responses=doc.CREATE)  # fmt: skip
    async def create_payment(
        request: Request, body: CreatePaymentBody, authorization: Authorization = None,
        key: IdempotencyKey = None,
    ) -> Response:  # fmt: skip
        return await CREATE(request, services, authorization, key, body=body)

    @app.get(GET.path, tags=["payments"], operation_id="getPayment",
             response_model=doc.Payment, responses=doc.READ)  # fmt: skip
    async def get_payment(
        request: Request, payment_id: str, authorization: Authorization = None
    ) -> Response:
        return await GET(request, services, authorization, payment_id=payment_id)

    @app.get("/v1/payments", tags=["payments"], operation_id="listPayments",
             response_model=doc.PaymentList, responses=doc.LIST)  # fmt: skip
    async def list_payments(
        request: Request,
        authorization: Authorization = None,
        order_id: OrderQuery = None,
        limit: LimitQuery = 20,
        offset: OffsetQuery = 0,
    ) -> Response:
        who = await _caller(request, services, authorization)
        views = await services.step(engine.list_payments, who.merchant_id, order_id, limit, offset)
        body = {"data": [view.as_dict() for view in views], "limit": limit, "offset": offset}
        return JSONResponse(body)

    @app.post(CONFIRM.path, tags=["payments"], operation_id="confirmPayment",
              response_model=doc.Payment, responses=doc.MOVE)  # fmt: skip
    async def confirm(
        request: Request, payment_id: str, authorization: Authorization = None,
        key: IdempotencyKey = None,
    ) -> Response:  # fmt: skip
        return await CONFIRM(request, services, authorization, key, payment_id)

    @app.post(CAPTURE.path, tags=["payments"], operation_id="capturePayment",
              response_model=doc.Payment, responses=doc.MOVE)  # fmt: skip
    async def capture(
        request: Request,
        payment_id: str,
        authorization: Authorization = None,
        key: IdempotencyKey = None,
        body: AmountBody | None = None,
    ) -> Response:
        return await CAPTURE(request, services, authorization, key, payment_id, body)

    @app.post(CANCEL.path, tags=["payments"], operation_id="cancelPayment",
              response_model=doc.Payment, responses=doc.CANCEL)  # fmt: skip
    async def cancel(
        request: Request, payment_id: str, authorization: Authorization = None,
        key: IdempotencyKey = None,
    ) -> Response:  # fmt: skip
        return await CANCEL(request, services, authorization, key, payment_id)

    @app.post(REFUND.path, tags=["refunds"], operation_id="refundPayment",
              response_model=doc.RefundAnswer, responses=doc.REFUND)  # fmt: skip
    async def refund(
        request: Request,
        payment_id: str,
        authorization: Authorization = None,
        key: IdempotencyKey = None,
        body: RefundBody | None = None,
    ) -> Response:
        return await REFUND(request, services, authorization, key, payment_id, body)

    @app.get(REFUNDS.path, tags=["refunds"], operation_id="listRefunds",
             response_model=doc.RefundList, responses=doc.READ)  # fmt: skip
    async def list_refunds(
        request: Request, payment_id: str, authorization: Authorization = None
    ) -> Response:
        return await REFUNDS(request, services, authorization, payment_id=payment_id)

    @app.get(LEDGER.path, tags=["ledger"], operation_id="getPaymentLedger",
             response_model=doc.Ledger, responses=doc.READ)  # fmt: skip
    async def payment_ledger(
        request: Request, payment_id: str, authorization: Authorization = None
    ) -> Response:
        return await LEDGER(request, services, authorization, payment_id=payment_id)

    @app.get("/v1/balance", tags=["ledger"], operation_id="getBalance",
             response_model=doc.Balance, responses=doc.LIST)  # fmt: skip
    async def balance(request: Request, authorization: Authorization = None) -> Response:
        who = await _caller(request, services, authorization)
        balances = await services.step(engine.merchant_balance, who.merchant_id)
        return JSONResponse({"merchant_id": who.merchant_id, "balances": balances})


async def _caller(
    request: Request, services: Services, authorization: str | None, write: bool = False
) -> Principal:
    """The caller ``RequestContext`` authenticated before the body was read; authenticated
    here only for an app served without it."""
    who: Principal | None = getattr(request.state, "principal", None)
    if who is None:
        who = await services.principal(authorization, write, _client_address(request.scope))
        request.state.merchant_id = who.merchant_id
    elif write and not who.can_write:
        raise Forbidden(message=RESTRICTED_WRITE_MESSAGE)
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
        if not services.skip_webhook_verification:
            verify(payload, signature, services.webhook_secret, now_s)
        event = orjson.loads(payload)
        translated = dialect.event_from_stripe(event)
    except WebhookRejected as exc:
        services.metrics.webhooks.labels(outcome=exc.code).inc()
        log.warning("webhook refused", extra={"code": exc.code})
        raise
    except (ValueError, KeyError, TypeError) as exc:
        services.metrics.webhooks.labels(outcome="malformed").inc()
        raise InvalidRequest("webhook_malformed", f"not a provider event: {exc}", "body") from exc
    services.metrics.webhook_lag.observe(max(0.0, now_s - int(event["created"])))
    # Kept in the inbox and applied in one unit of work, then answered; one whose
    # application fails is kept pending for the worker to retry (dead letters after
    # repeated failures). Either way it is durable before the 2xx.
    taken, _ = await services.step(services.engine.take_webhook, translated, payload.decode())
    stored = "duplicate" if taken == "duplicate" else "stored"
    services.metrics.webhooks.labels(outcome=stored).inc()
    return JSONResponse({"received": True, "outcome": stored})


# -- webhooks and health --------------------------------------------------------------------
def _operational_routes(app: FastAPI, services: Services) -> None:
    @app.post(WEBHOOK_PATH, tags=["webhooks"], operation_id="takeProviderWebhook",
              response_model=doc.WebhookReceipt, responses=doc.WEBHOOK,
              openapi_extra=doc.WEBHOOK_BODY)  # fmt: skip
    async def psp_webhook(request: Request) -> Response:
        return await take_webhook(
            services, await request.body(), request.headers.get("Stripe-Signature")
        )

    @app.get("/healthz", tags=["operations"], operation_id="healthz",
             response_model=doc.Health, responses=doc.HEALTH)  # fmt: skip
    async def healthz() -> JSONResponse:
        background = services.background
        if background is not None and background.state is WorkerState.FAILED:
            # Unknown attempts would stay open: let the supervisor restart this process.
            return JSONResponse({"status": "workers_failed"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["operations"], operation_id="readyz",
             response_model=doc.Readiness, responses=doc.READY)  # fmt: skip
    async def readyz() -> JSONResponse:
        try:
            await services.step(check_schema, services.engine.db.engine)
        except Exception as exc:
            return JSONResponse({"status": "not_ready", "reason": str(exc)[:200]}, 503)
        return JSONResponse({"status": "ready"})

    # No /metrics here: it is served apart (Services.metrics_listener, --metrics-port), so
    # whoever reaches the API cannot read volumes, backlogs and the provider's health.


# -- errors and request ids ------------------------------------------------------------------
INTERNAL_ERROR = {"code": "internal_error", "message": "an unexpected error; nothing was changed"}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The query parameters a route takes; any other is refused (400 parameter_unknown), as
# a body's unknown field is: a misspelt ?ofset= must not pass for the first page.
QUERY_PARAMETERS = {("GET", "/v1/payments"): ("order_id", "limit", "offset")}


def _error(request: Request, status: int, body: dict[str, Any]) -> JSONResponse:
    return _error_json(getattr(request.state, "request_id", None), status, body)


def _error_json(request_id: str | None, status: int, body: dict[str, Any]) -> JSONResponse:
    body.setdefault("field", None)  # one shape for every error: code, message, field, request_id
    body["request_id"] = request_id
    return JSONResponse({"error": body}, status_code=status)


def refusal(request_id: str | None, exc: PaychaosError) -> JSONResponse:
    """The answer to an engine's typed error: its status, code, field and the request id."""
    response = _error_json(request_id, exc.http_status, exc.as_dict())
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s + 0.5)))
    if isinstance(exc, PayloadTooLarge):
        # The rest of the body is not read: the connection cannot carry another request.
        response.headers["Connection"] = "close"
    return response


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(PaychaosError)
    async def paychaos_error(request: Request, exc: PaychaosError) -> JSONResponse:
        return refusal(getattr(request.state, "request_id", None), exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return refusal(getattr(request.state, "request_id", None), invalid_field(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = _error(request, exc.status_code, {"code": code, "message": str(exc.detail)})
        if exc.status_code == 405:  # RFC 9110: a 405 names what the path takes
            response.headers["Allow"] = doc.allowed_methods(request.app.routes, request.url.path)
        return response


class RequestContext:
    """Pure ASGI, in front of every route: a request id on every answer, the gate of
    ``engine.entrypoints.http_guard`` (body size, then the caller, before anything is
    read), the latency histogram and one log line.

    An exception that escapes a route is answered here, a 500 with the error shape,
    instead of going on to the server, which would reset the connection: the client's
    next request on it then fails too. (Starlette's ``BaseHTTPMiddleware`` ran each
    request through an extra task and memory streams; this only wraps ``send``.)
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
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self._route(scope, receive, send_with_id)
        except Exception:
            if status:
                raise  # the answer is under way: only the server can end it now
            log.exception("unexpected error", extra={"request_id": request_id})
            await _error_json(request_id, 500, dict(INTERNAL_ERROR))(scope, receive, send_with_id)
        finally:
            self._record(scope, state, status or 500, time.perf_counter() - started)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["state"]
        method: str = scope["method"]
        path: str = scope["path"]
        bytes_max = WEBHOOK_BODY_BYTES_MAX if path == WEBHOOK_PATH else API_BODY_BYTES_MAX
        try:
            declared_length(scope["headers"], bytes_max)
            if path.startswith("/v1/"):
                allowed = QUERY_PARAMETERS.get((method, path), ())
                refuse_unknown_query(scope["query_string"], allowed)
            if path.startswith("/v1/") and path != WEBHOOK_PATH:
                who = await self.services.principal(
                    _header(scope, b"authorization"), method not in SAFE_METHODS,
                    _client_address(scope),
                )  # fmt: skip
                state["principal"] = who
                state["merchant_id"] = who.merchant_id
        except PaychaosError as exc:
            await refusal(state["request_id"], exc)(scope, receive, send)
            return
        receive = bounded(receive, bytes_max)
        found = self.fast.match(method, path)
        if found is not None:
            state["route"] = found[0]
            await self.fast.serve(found, scope, receive, send)
            return
        await self.app(scope, receive, send)

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


def _header(scope: Scope, name: bytes) -> str | None:
    """The first ``name`` header, as Starlette reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


class FastPath:
    """The payment routes and the webhook intake without FastAPI's machinery per request.

    It answers every request whose method and path it knows: the operation FastAPI's
    route would run (the same ``Operation``), its body parsed and validated by
    ``http_guard.parse_json_body`` and its errors answered by the same ``refusal``.
    FastAPI still declares every route: it is the API's documentation, and it answers
    the paths and methods this does not know (404, 405).
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
    ) -> None:
        state = scope["state"]
        _, op, payment_id = found
        try:
            body = await _read_body(receive)
            if body is None:
                return  # the client left: nobody to answer
            if op is None:
                signature = _header(scope, b"stripe-signature")
                response = await take_webhook(self.services, body, signature)
            else:
                parsed = self._parse(op, body, _header(scope, b"content-type") or "")
                key = _header(scope, b"idempotency-key") or ""
                response = await op.run(Call(self.services, state["principal"], payment_id,
                                             key, parsed))  # fmt: skip
        except PaychaosError as exc:
            response = refusal(state["request_id"], exc)
        await response(scope, receive, send)

    @staticmethod
    def _parse(op: Operation, body: bytes, content_type: str) -> Any:
        if op.body is None:
            return None  # the route takes no body (FastAPI reads none for it either)
        if not body:
            if op.body_required:
                raise InvalidRequest("body_missing", "this request needs a JSON body", "body")
            return None
        return parse_json_body(op.body, body, content_type)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (``receive`` bounds it), or None if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
