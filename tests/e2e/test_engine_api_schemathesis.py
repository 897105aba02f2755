"""Schemathesis against the engine's own OpenAPI document, in process, every check on.

Two phases per database (SQLite, and PostgreSQL under the ``postgres`` mark):

- every operation, 100 generated examples (valid and not) each, derandomized; a
  payment id in a path names a real payment, made up front in the state the
  operation needs (a capture gets a fresh authorized payment, a refund a fresh
  captured one), so valid requests reach the engine rather than a 404;
- a stateful run through the document's links (create -> confirm -> capture ->
  refund, ...), bounded in scenarios and steps.

The test plays three parts a real client would: it holds an API key, it uses one
idempotency key per request (a key reused with another body is a documented 422,
not what a generated request means), and, as the provider, it signs the webhook
deliveries it sends as valid. Nothing else is steered: what a request carries is
schemathesis's own, and every check (``-c all``) judges every answer.

Rate limits are off (a limiter's 429 is tested in test_engine_api): thousands of
requests a second from one key and one address are this test, not an attack.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.adapters.api_keys import KeyStore
from engine.adapters.database import Database
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.adapters.webhook_signature import sign
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.api import Services, TokenBucket, create_app
from engine.entrypoints.api_schema import PATH_ID_PATTERN
from engine.entrypoints.metrics import Metrics
from engine.service.engine import PaymentEngine
from mock_psp.clock import ManualClock
from mock_psp.core import ProviderCore
from mock_psp.transport import CoreTransport
from tests.conftest import fresh_postgres

NOW = datetime(2026, 3, 1, tzinfo=UTC)
SECRET = "sk_test_schemathesis_0123456789"
AUTH = {"Authorization": f"Bearer {SECRET}"}
WEBHOOK_SECRET = "whsec_schemathesis"
SIGN_ME = "sign-me"  # a valid delivery's signature, computed by SigningProvider
PSP_AMOUNT_MAX = 99_999_999  # the mock PSP's (Stripe's) largest card payment
EXAMPLES_PER_OPERATION = 100
SCENARIOS_MAX = 60
STEPS_PER_SCENARIO_MAX = 8
PATH_ID = re.compile(PATH_ID_PATTERN)
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")

PAYMENT = {"currency": "EUR", "payment_method": "pm_card_visa"}


class SigningProvider:
    """ASGI, in front of the app: a webhook delivery whose ``Stripe-Signature`` is
    ``sign-me`` gets the real signature of its body, as the provider would send it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", [])
        if scope["type"] != "http" or (b"stripe-signature", SIGN_ME.encode()) not in headers:
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        signature = sign(body, WEBHOOK_SECRET, int(NOW.timestamp())).encode()
        signed = [(k, signature if k == b"stripe-signature" else v) for k, v in headers]

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": signed}, replay, send)


@dataclass
class World:
    """One engine (one database), its app, and payments made through its API."""

    database: Database
    app: Any
    client: TestClient
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    reads: list[str] = field(default_factory=list)  # payments in many states, for reads

    def post(self, path: str, body: Any = None) -> dict[str, Any]:
        key = f"setup-{next(self.counter)}"
        answer = self.client.post(path, json=body, headers={**AUTH, "Idempotency-Key": key})
        assert answer.status_code in {200, 201}, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def payment(self, state: str, amount_minor: int = PSP_AMOUNT_MAX, **extra: Any) -> str:
        """A new payment in ``state`` (created, authorized, captured, refunded)."""
        order = f"order-{next(self.counter)}"
        body = {**PAYMENT, "amount_minor": amount_minor, "order_id": order, **extra}
        payment_id = str(self.post("/v1/payments", body)["id"])
        steps = {"created": [], "authorized": ["confirm"], "captured": ["confirm", "capture"]}
        steps["refunded"] = [*steps["captured"], "refunds"]
        for step in steps[state]:
            self.post(f"/v1/payments/{payment_id}/{step}", {} if step != "confirm" else None)
        return payment_id

    def target(self, operation_id: str) -> str:
        """The payment a generated request on ``operation_id`` acts on."""
        if operation_id == "confirmPayment":
            return self.payment("created")
        if operation_id in {"capturePayment", "cancelPayment"}:
            return self.payment("authorized")
        if operation_id == "refundPayment":
            return self.payment("captured")
        return self.reads[next(self.counter) % len(self.reads)]


def _parts(database: Database, seed: int) -> tuple[Any, Any, KeyStore, FixedClock]:
    clock = FixedClock(NOW)
    engine = PaymentEngine(database, clock, SeededIds(random.Random(seed)))
    psp = ProviderCore(ManualClock(NOW.timestamp()), random.Random(seed))
    provider = HttpProvider(
        "http://psp.test", "sk_test_engine", transport=CoreTransport(psp),
        retry=RetryPolicy(attempts_max=1), sleep=lambda _s: None,
    )  # fmt: skip
    return engine, provider, KeyStore(database), clock


def build_world(database: Database) -> World:
    engine, provider, keys, clock = _parts(database, 5)
    keys.create("key_1", "m_one", "secret", SECRET, NOW)
    services = Services(
        engine, provider, keys, clock, WEBHOOK_SECRET, Metrics(),
        rate_limit=TokenBucket(1e9, 1e9), auth_failures=TokenBucket(1e9, 1e9),
    )  # fmt: skip
    app = SigningProvider(create_app(services))
    world = World(database, app, TestClient(app, raise_server_exceptions=False))
    lines = [{"seller_id": "s-1", "amount_minor": 600}, {"seller_id": "s-2", "amount_minor": 400}]
    world.reads = [
        world.payment("created", 1_000),
        world.payment("authorized", 1_000),
        world.payment("refunded", 1_000),
        world.payment("captured", 1_000, splits=lines),
    ]
    return world


class Target:
    """ASGI: the app of the world under test. The document is the same for every
    world, so the schema is loaded once (at import) and each world plugs in here."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None
        await self.app(scope, receive, send)


def _document_app() -> ASGIApp:
    """The routes, for the document only: its database is never migrated nor asked."""
    engine, provider, keys, clock = _parts(Database("sqlite://"), 0)
    return create_app(Services(engine, provider, keys, clock, WEBHOOK_SECRET, Metrics()))


TARGET = Target()
TARGET.app = _document_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", TARGET)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "sqlite":
        database = Database("sqlite://", migrate=True)
    else:
        database = fresh_postgres(request.getfixturevalue("postgres_url"))
    built = build_world(database)
    TARGET.app = built.app
    yield built
    TARGET.app = None
    database.dispose()


# -- what a client does to a generated request -----------------------------------------------
def _positive(case: Any) -> bool:
    return case.meta is not None and case.meta.generation.mode.is_positive


def _operation_id(case: Any) -> str:
    return str(case.operation.definition.raw.get("operationId", ""))


def as_client(case: Any, world: World, real_payment: bool) -> None:
    """One idempotency key per request; a consistent split; a signed delivery; and, for
    ``real_payment``, the path's payment one in the state the operation needs."""
    if case.headers is None:
        case.headers = {}
    headers = case.headers
    if "Authorization" not in headers and not _negative_headers(case):
        headers.update(AUTH)  # a client's key, in the case itself: checks that drop it see it
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and IDEMPOTENCY_KEY.fullmatch(key):
        headers["Idempotency-Key"] = f"{next(world.counter)}-{key}"[:255]
    path = case.path_parameters or {}
    payment_id = path.get("payment_id")
    if real_payment and isinstance(payment_id, str) and PATH_ID.fullmatch(payment_id):
        path["payment_id"] = world.target(_operation_id(case))
    if _positive(case) and _operation_id(case) == "createPayment":
        if not real_payment:
            _chainable(case.body, next(world.counter))
        _consistent_splits(case.body)
    if _positive(case) and _operation_id(case) == "takeProviderWebhook":
        headers["Stripe-Signature"] = SIGN_ME


def _negative_headers(case: Any) -> bool:
    """Whether the case's headers are generated to be wrong (a missing key among them)."""
    if case.meta is None:
        return False
    header = case.meta.components.get(ParameterLocation.HEADER)
    return header is not None and not header.mode.is_positive


def _chainable(body: dict[str, Any], number: int) -> None:
    """A payment a chain can take further: a card and an amount the provider takes, so
    that confirm can succeed; and an order of its own, so that what a step answers does
    not depend on the scenarios before it (Hypothesis replays a scenario's beginning and
    must see the same answers)."""
    body.update(payment_method="pm_card_visa", order_id=f"{number}-{body['order_id']}"[:255])
    body["amount_minor"] = min(body["amount_minor"], PSP_AMOUNT_MAX)


def _consistent_splits(body: dict[str, Any]) -> None:
    """Split lines adding up to the payment, one per seller: rules a JSON schema cannot
    state (the document says them in words)."""
    lines = body.get("splits") or []
    if not lines:
        return
    body["amount_minor"] = total = max(body["amount_minor"], len(lines))
    share, rest = divmod(total, len(lines))
    for index, line in enumerate(lines):
        line["amount_minor"] = share + (rest if index == 0 else 0)
        line["seller_id"] = f"{index}{line['seller_id']}"[:255]


# Refusals that depend on the payment's state, which no schema can state: a capture
# above the authorization, a refund above what is left. The API answers them 400, as
# Stripe does, and positive_data_acceptance (schema-valid data is never a 400) cannot
# know better; every other check still judges these answers.
STATE_BOUND_REFUSALS = {"capture_exceeds_authorized", "refund_exceeds_available"}


# JSON Schema 2020-12 (OpenAPI 3.1) counts 1000.0 as an integer, and schemathesis sends
# such numbers as valid data. The API refuses them on purpose: an amount is a JSON
# integer, never 1000.0 (a float in a money field is a client's bug to surface), and a
# provider's event is held to the same rule. No schema keyword can say "an integer not
# spelled with .0", so this refusal alone is excluded, here only.
WHOLE_FLOAT_REFUSALS = ("Input should be a valid integer", "is not an integer")


def validate(case: Any, response: Any) -> None:
    excluded = []
    if _not_a_refusal_of_the_data(case, response):
        excluded.append(positive_data_acceptance)
    case.validate_response(response, excluded_checks=excluded)


def _not_a_refusal_of_the_data(case: Any, response: Any) -> bool:
    """Answers positive_data_acceptance (valid data is never refused) would take for a
    refusal of the request's data, and are not. A 402 is a payment the provider
    declined (Stripe's convention; documented, with the payment and its decline_code)."""
    if response.status_code == 402:
        return True
    if response.status_code != 400:
        return False
    if _error_code(response) in STATE_BOUND_REFUSALS:
        return True
    refused_float = any(message in response.text for message in WHOLE_FLOAT_REFUSALS)
    return refused_float and _has_whole_float(case.body)


def _has_whole_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_has_whole_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_whole_float(item) for item in value)
    return False


def _error_code(response: Any) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION, derandomize=True, database=None, deadline=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip


@schema.parametrize()
@SETTINGS
def test_every_operation_answers_as_documented(case: Any, world: World) -> None:
    as_client(case, world, real_payment=True)
    response = case.call()
    validate(case, response)


def test_chained_operations_answer_as_documented(world: World) -> None:
    class Client(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            as_client(case, world, real_payment=False)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            validate(case, response)

    run_state_machine_as_test(
        Client,
        settings=settings(
            SETTINGS, max_examples=SCENARIOS_MAX, stateful_step_count=STEPS_PER_SCENARIO_MAX
        ),
    )
