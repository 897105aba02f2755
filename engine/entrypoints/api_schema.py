"""The engine API's OpenAPI document: what each route answers, and how routes chain.

FastAPI derives the request side (paths, parameters, bodies) from the routes and
their pydantic body models. Every route answers with a ``JSONResponse`` it builds
itself (and ``FastPath`` answers most requests without FastAPI at all), so FastAPI
cannot see the answers; this module states them:

- the answer models (``Payment``, the lists, the error shape), named on each route
  by ``response_model`` and ``responses=`` in ``api.py``;
- ``install_openapi``: a hook that finishes FastAPI's document with what a route
  decorator cannot say: the bearer security scheme, the required ``Idempotency-Key``
  and ``Stripe-Signature`` headers, the identifiers' pattern, OpenAPI links between
  operations (create -> confirm -> capture -> refund, ...), and no FastAPI 422
  ``HTTPValidationError`` (validation errors are answered 400 with the error shape).

The answer models forbid extra fields, so a field the API starts sending without
documenting it fails the schemathesis run in ``tests/e2e``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import AwareDatetime, BaseModel, ConfigDict
from starlette.routing import BaseRoute, Route

from engine.adapters.webhook_signature import HEADER_LENGTH_MAX
from engine.domain.commands import CaptureMethod
from engine.domain.states import PaymentState
from engine.domain.validation import (
    ID_LENGTH_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    PRINTABLE_PATTERN,
)

BEARER = "bearerAuth"
WEBHOOK_PATH = "/v1/webhooks/psp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_HEADER = "Stripe-Signature"
# A payment id in a path: the characters the engine's ids use. Others cannot name a
# payment, and some ("/", "." and "..") would name another route once decoded.
PATH_ID_PATTERN = f"^[A-Za-z0-9_-]{{1,{ID_LENGTH_MAX}}}$"


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- answers --------------------------------------------------------------------------
class HistoryItem(_Answer):
    seq: int
    from_state: PaymentState | None
    to_state: PaymentState
    reason: str
    amount_minor: int | None
    attempt_id: str | None
    provider_event_id: str | None
    at: AwareDatetime


class RefundItem(_Answer):
    id: str
    amount_minor: int
    currency: str
    status: Literal["pending", "succeeded", "failed"]
    reason: str | None
    provider_refund_id: str | None
    created_at: AwareDatetime


class PaymentLine(_Answer):
    """One seller's line of a split payment (``GET /v1/payments/{id}`` only)."""

    line_no: int
    seller_id: str
    amount_minor: int
    captured_minor: int
    fee_minor: int
    refunded_minor: int
    fee_reversed_minor: int
    disputed_minor: int
    bucket: Literal["pending", "available"]


class Payment(_Answer):
    """A payment (``engine.service.views.PaymentView.as_dict``). ``history`` and
    ``refunds`` come with a full read and only when not empty; ``lines`` with a
    split payment's full read."""

    id: str
    merchant_id: str
    order_id: str
    amount_minor: int
    currency: str
    payment_method: str
    capture_method: CaptureMethod
    state: PaymentState
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    refund_reserved_minor: int
    fee_minor: int
    disputed_minor: int
    provider_payment_id: str | None
    decline_code: str | None
    metadata: dict[str, str]
    created_at: AwareDatetime
    updated_at: AwareDatetime
    history: list[HistoryItem] | None = None
    refunds: list[RefundItem] | None = None
    lines: list[PaymentLine] | None = None


class RefundAnswer(Payment):
    """A refund's answer: the payment, and the refund this request made."""

    refund_id: str | None = None


class PaymentList(_Answer):
    data: list[Payment]
    limit: int
    offset: int


class RefundList(_Answer):
    data: list[RefundItem]


class Entry(_Answer):
    account: str
    side: Literal["D", "C"]
    amount_minor: int
    currency: str


class Journal(_Answer):
    id: str
    kind: str
    created_at: AwareDatetime
    entries: list[Entry]


class Ledger(_Answer):
    data: list[Journal]


class CurrencyBalance(_Answer):
    available: int
    pending: int


class Balance(_Answer):
    merchant_id: str
    balances: dict[str, CurrencyBalance]


class WebhookReceipt(_Answer):
    received: Literal[True]
    outcome: Literal["stored", "duplicate"]


class Health(_Answer):
    status: Literal["ok", "workers_failed"]


class Readiness(_Answer):
    status: Literal["ready", "not_ready"]
    reason: str | None = None


class ErrorDetail(_Answer):
    code: str
    message: str
    field: str | None
    request_id: str | None


class Error(_Answer):
    """Every refusal: a stable machine-readable ``code``, the ``field`` at fault (or
    null) and the request's id (also in the ``Request-Id`` header)."""

    error: ErrorDetail


# -- responses= for the route decorators -----------------------------------------------
_ERROR_TEXT = {
    400: "Invalid request: a parameter, header or body field is malformed or refused",
    401: "No API key, or an unknown one",
    403: "A restricted key (rk_...) asked for a write",
    404: "No such payment for this merchant, or no such path",
    405: "The path does not take this method (the Allow header lists those it takes)",
    409: "Conflict: the payment's state does not allow this, an operation on it is in "
    "progress, its order is being paid by another payment, or the idempotency key's "
    "first request is still in flight",
    413: "The body is larger than the route takes",
    415: "The body is not JSON",
    422: "The idempotency key was used with a different request",
    429: "Too many requests for this key, or too many failed authentications from this "
    "address; retry after Retry-After seconds",
    500: "An unexpected error; nothing was changed",
    503: "The database is unavailable; retry later",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}}
}
_ALLOW = {"Allow": {"description": "The methods the path takes", "schema": {"type": "string"}}}


_HEADERS = {405: {"headers": _ALLOW}, 429: {"headers": _RETRY_AFTER}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": Error, "description": _ERROR_TEXT[status], **_HEADERS.get(status, {})}
        for status in statuses
    }


def _payment_answers(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        200: "Done: the provider answered",
        202: "Processing: the provider did not answer in time; the recovery worker finishes "
        "the operation (read the payment again)",
        402: "Declined by the provider: the payment, with its decline_code",
    }
    return {status: {"model": model, "description": text[status]} for status in statuses}


_ANY = (401, 405, 413, 429, 500, 503)  # every authenticated route
READ = _errors(400, 404, *_ANY)
LIST = _errors(400, *_ANY)
WRITE_ERRORS = (400, 403, 404, 409, 415, 422, *_ANY)
CREATE = _errors(*WRITE_ERRORS)
MOVE = {**_payment_answers(Payment, 202, 402), **_errors(*WRITE_ERRORS)}
REFUND = {**_payment_answers(RefundAnswer, 202, 402), **_errors(*WRITE_ERRORS)}
CANCEL = {**_payment_answers(Payment, 202), **_errors(*WRITE_ERRORS)}
WEBHOOK = _errors(400, 405, 413, 500, 503)
Responses = dict[int | str, dict[str, Any]]
HEALTH: Responses = {503: {"model": Health, "description": "The workers failed: restart"}}
READY: Responses = {503: {"model": Readiness, "description": "The database is not ready"}}
# The intake reads its body raw (its signature covers the exact bytes), so FastAPI
# cannot see it: a provider event as Stripe sends it.
WEBHOOK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["id", "type", "created", "data"],
                    "properties": {
                        "id": {"type": "string", "minLength": 1, "maxLength": ID_LENGTH_MAX},
                        "type": {"type": "string", "minLength": 1, "maxLength": 64},
                        "created": {"type": "integer", "minimum": 0},
                        "data": {
                            "type": "object",
                            "required": ["object"],
                            "properties": {"object": {"type": "object"}},
                        },
                    },
                }
            }
        },
    }
}


# -- the document's finishing touches ---------------------------------------------------
# Which operations follow which: {operation id: [(link name, target operation id)]}.
# Each passes the payment's id from the answer's body into the next path.
_FOLLOW_UPS = {
    "createPayment": ["getPayment", "confirmPayment", "cancelPayment"],
    "confirmPayment": ["getPayment", "capturePayment", "cancelPayment", "getPaymentLedger"],
    "capturePayment": ["getPayment", "refundPayment", "getPaymentLedger"],
    "refundPayment": ["listRefunds", "refundPayment", "getPaymentLedger"],
    "cancelPayment": ["getPayment", "getPaymentLedger"],
}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi`` FastAPI's document, finished by ``finish`` (once, cached)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(document: dict[str, Any]) -> dict[str, Any]:
    document.setdefault("components", {})["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "description": "An API key: sk_... or rk_..."}
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            _finish_operation(path, method, operation)
    schemas = document["components"].get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def _finish_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    if _is_fastapi_422(operation):
        del operation["responses"]["422"]
    parameters = [
        p for p in operation.get("parameters", []) if p["name"].lower() != "authorization"
    ]
    for parameter in parameters:
        if parameter["in"] == "path":
            parameter["schema"] = {"type": "string", "pattern": PATH_ID_PATTERN}
        elif parameter["name"] == IDEMPOTENCY_HEADER:
            parameter.update(required=True, schema=_idempotency_key_schema())
    if path == WEBHOOK_PATH:
        parameters.append(_signature_header())
        operation["security"] = []
    elif path.startswith("/v1/"):
        operation["security"] = [{BEARER: []}]
    else:
        operation["security"] = []
    operation["parameters"] = parameters
    if not parameters:
        del operation["parameters"]
    _no_null_body(operation)
    _add_links(operation)


def _no_null_body(operation: dict[str, Any]) -> None:
    """An optional body (capture's, refund's) may be left out, but one that is sent is an
    object: FastAPI writes ``X | None`` as "X or JSON null", and the API refuses ``null``."""
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    branches = content.get("schema", {}).get("anyOf", [])
    kept = [branch for branch in branches if branch != {"type": "null"}]
    if len(kept) == 1 and len(branches) == 2:
        content["schema"] = kept[0]


def _is_fastapi_422(operation: dict[str, Any]) -> bool:
    answer = operation["responses"].get("422", {})
    schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _idempotency_key_schema() -> dict[str, Any]:
    # engine.domain.validation.parse_idempotency_key: printable ASCII, no spaces.
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_LENGTH_MAX,
        "pattern": f"^{PRINTABLE_PATTERN}$",
        "description": "One per operation attempt: a retry with the same key and body gets "
        "the first answer again; the same key with another body is refused (422)",
    }


def _signature_header() -> dict[str, Any]:
    return {
        "name": SIGNATURE_HEADER,
        "in": "header",
        "required": True,
        "description": "t=<unix seconds>,v1=<HMAC-SHA256 of '<t>.<body>' under the endpoint's "
        "secret>, within 5 minutes of now: the intake's authentication",
        "schema": {"type": "string", "minLength": 1, "maxLength": HEADER_LENGTH_MAX},
    }


def _add_links(operation: dict[str, Any]) -> None:
    follow_ups = _FOLLOW_UPS.get(operation.get("operationId", ""), [])
    if not follow_ups:
        return
    links = {
        target: {"operationId": target, "parameters": {"payment_id": "$response.body#/id"}}
        for target in follow_ups
    }
    for status, answer in operation["responses"].items():
        if status.startswith("2") or status == "402":
            answer["links"] = links


def allowed_methods(routes: Sequence[BaseRoute], path: str) -> str:
    """The ``Allow`` header of a 405: every method of every route on ``path``. (Starlette's
    own names only the first route that matched the path, one method of several.)"""
    methods = {
        method
        for route in routes
        if isinstance(route, Route) and route.path_regex.match(path)
        for method in route.methods or ()
    }
    return ", ".join(sorted(methods))
