"""The composition root of the HTTP service: settings in, a ready FastAPI app out.

``uvicorn --factory engine.entrypoints.serve:app_from_env`` builds one app per
worker process from ``PAYCHAOS_*`` environment variables; ``paychaos serve
engine`` sets them and starts uvicorn.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from fastapi import FastAPI

from engine.adapters.api_keys import PREFIXES, KeyStore
from engine.adapters.database import Database, check_schema
from engine.adapters.psp_http import HttpProvider, RetryPolicy
from engine.entrypoints.api import Services, TokenBucket, create_app
from engine.entrypoints.logs import configure as configure_logs
from engine.entrypoints.metrics import Metrics
from engine.entrypoints.system import RandomIds, SystemClock
from engine.service.engine import PaymentEngine

DEFAULT_DB_URL = "sqlite:///paychaos.db"
DEFAULT_PSP_URL = "http://127.0.0.1:12111"


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    db_url: str = DEFAULT_DB_URL
    psp_url: str = DEFAULT_PSP_URL
    psp_api_key: str = "sk_test_paychaos"
    webhook_secret: str = ""
    provider_timeout_s: float = 5.0
    rate_per_s: float = 100.0
    rate_burst: float = 200.0

    @classmethod
    def from_env(cls) -> ServiceSettings:
        env = os.environ
        return cls(
            db_url=env.get("PAYCHAOS_DB_URL", DEFAULT_DB_URL),
            psp_url=env.get("PAYCHAOS_PSP_URL", DEFAULT_PSP_URL),
            psp_api_key=env.get("PAYCHAOS_PSP_API_KEY", "sk_test_paychaos"),
            webhook_secret=env.get("PAYCHAOS_WEBHOOK_SECRET", ""),
            provider_timeout_s=float(env.get("PAYCHAOS_PROVIDER_TIMEOUT_S", "5")),
            rate_per_s=float(env.get("PAYCHAOS_RATE_PER_S", "100")),
            rate_burst=float(env.get("PAYCHAOS_RATE_BURST", "200")),
        )

    def to_env(self) -> dict[str, str]:
        return {
            "PAYCHAOS_DB_URL": self.db_url,
            "PAYCHAOS_PSP_URL": self.psp_url,
            "PAYCHAOS_PSP_API_KEY": self.psp_api_key,
            "PAYCHAOS_WEBHOOK_SECRET": self.webhook_secret,
            "PAYCHAOS_PROVIDER_TIMEOUT_S": str(self.provider_timeout_s),
            "PAYCHAOS_RATE_PER_S": str(self.rate_per_s),
            "PAYCHAOS_RATE_BURST": str(self.rate_burst),
        }


def build_services(settings: ServiceSettings) -> Services:
    """Wire the engine, its provider and its keys; a stale schema is refused here."""
    database = Database(settings.db_url)
    check_schema(database.engine)
    clock = SystemClock()
    engine = PaymentEngine(database, clock, RandomIds())
    # One try within the timeout: a checkout never waits on retries; recovery retries.
    provider = HttpProvider(
        settings.psp_url, settings.psp_api_key, timeout_s=settings.provider_timeout_s,
        retry=RetryPolicy(attempts_max=1),
    )  # fmt: skip
    return Services(
        engine, provider, KeyStore(database), clock, settings.webhook_secret, Metrics(),
        TokenBucket(settings.rate_per_s, settings.rate_burst),
    )  # fmt: skip


def app_from_env() -> FastAPI:
    configure_logs()
    return create_app(build_services(ServiceSettings.from_env()))


def new_api_key(database_url: str, merchant_id: str, kind: str) -> tuple[str, str]:
    """Create a key for a merchant; returns (key id, the key itself, shown only now)."""
    database = Database(database_url)
    check_schema(database.engine)
    secret = f"{PREFIXES[kind]}{secrets.token_hex(24)}"
    key_id = RandomIds().new_id("key")
    KeyStore(database).create(key_id, merchant_id, kind, secret, SystemClock().now())
    database.dispose()
    return key_id, secret
