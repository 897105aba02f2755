"""Schemathesis against the engine's own OpenAPI document, in process.

Generated requests (valid and not) across every operation must never get a 5xx:
bad input is always a clear 4xx. The budget is small and derandomized for CI.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from engine.adapters.api_keys import KeyStore
from engine.adapters.database import Database
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.domain.ports import FixedClock, SeededIds
from engine.entrypoints.api import Services, TokenBucket, create_app
from engine.entrypoints.metrics import Metrics
from engine.service.engine import PaymentEngine
from mock_psp.clock import ManualClock
from mock_psp.core import ProviderCore
from mock_psp.transport import CoreTransport

NOW = datetime(2026, 3, 1, tzinfo=UTC)
SECRET = "sk_test_schemathesis_0123456789"


def build_app() -> Any:
    database = Database("sqlite://", migrate=True)
    clock = FixedClock(NOW)
    engine = PaymentEngine(database, clock, SeededIds(random.Random(5)))
    psp = ProviderCore(ManualClock(NOW.timestamp()), random.Random(5))
    provider = HttpProvider(
        "http://psp.test", "sk_test_engine", transport=CoreTransport(psp),
        retry=RetryPolicy(attempts_max=1), sleep=lambda _s: None,
    )  # fmt: skip
    keys = KeyStore(database)
    keys.create("key_1", "m_one", "secret", SECRET, NOW)
    services = Services(
        engine, provider, keys, clock, "whsec_test", Metrics(), TokenBucket(1e9, 1e9)
    )
    return create_app(services)


APP = build_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=25, derandomize=True, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)  # fmt: skip
def test_no_request_gets_a_server_error(case: Any) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {SECRET}"}, checks=[not_a_server_error]
    )
