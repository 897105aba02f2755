"""Issue 15's findings, without I/O: an empty webhook secret verifies nothing, a server
without one is not built, and a revoked API key is forgotten by every cache within a
second."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from engine.adapters.api_keys import (
    CACHE_TTL_S,
    REVOCATION_S_MAX,
    KeyCache,
    KeyStore,
    Principal,
    Revoked,
    key_hash,
)
from engine.adapters.webhook_signature import WebhookSecretMissing, sign, verify
from engine.entrypoints.serve import InsecureSettings, ServiceSettings, build_services

NOW_S = 1_772_323_200
DISPUTE = b'{"id": "evt_forged", "type": "charge.dispute.created"}'
SECRET = "sk_test_revoked_0123456789abcdef"


def test_an_empty_secret_verifies_nothing_not_even_its_own_signature() -> None:
    forged = sign(DISPUTE, "", NOW_S)  # HMAC under the empty key: anybody can compute it
    with pytest.raises(WebhookSecretMissing) as refused:
        verify(DISPUTE, forged, "", NOW_S)
    assert refused.value.code == "webhook_secret_missing"
    assert refused.value.http_status == 503  # the server is set up wrong; the provider retries
    with pytest.raises(WebhookSecretMissing):
        verify(DISPUTE, None, "", NOW_S)
    verify(DISPUTE, sign(DISPUTE, "whsec_real", NOW_S), "whsec_real", NOW_S)  # still works


def test_services_are_not_built_without_a_webhook_secret() -> None:
    """Refused before the database is opened: the uvicorn factory path fails closed too."""
    settings = ServiceSettings(db_url="sqlite:///never-opened.db")
    assert settings.webhook_problem() is not None
    with pytest.raises(InsecureSettings, match="webhook_secret"):
        build_services(settings)
    insecure = ServiceSettings(skip_webhook_verification=True)
    assert insecure.webhook_problem() is None
    assert ServiceSettings(webhook_secret="whsec_x").webhook_problem() is None


def test_the_insecure_flag_and_the_metrics_listener_travel_by_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = ServiceSettings(
        skip_webhook_verification=True, metrics_host="0.0.0.0", metrics_port=9464,
        api_processes=4,
    )  # fmt: skip
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert ServiceSettings.from_env() == settings
    monkeypatch.delenv("PAYCHAOS_INSECURE_SKIP_WEBHOOK_VERIFICATION")
    assert ServiceSettings.from_env().skip_webhook_verification is False
    assert ServiceSettings(metrics_port=70_000).problem() == (
        "metrics_port", "0 (off) or a TCP port up to 65535"
    )  # fmt: skip


class MemoryKeyStore(KeyStore):
    """Keys in a dict: the store's answers without a database."""

    def __init__(self) -> None:
        self.found: dict[str, Principal] = {}
        self.reads = 0

    def revoke(self, key_id: str, at: datetime) -> Revoked:
        for digest, principal in list(self.found.items()):
            if principal.key_id == key_id:
                del self.found[digest]
                return Revoked.NOW
        return Revoked.UNKNOWN

    def authenticate(self, secret: str) -> Principal | None:
        self.reads += 1
        return self.found.get(key_hash(secret))


class FakeMonotonic:
    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


def test_a_revoked_key_is_refused_once_the_cache_forgets_it_within_a_second() -> None:
    store, clock = MemoryKeyStore(), FakeMonotonic()
    store.found[key_hash(SECRET)] = Principal("key_1", "m_one", "secret")
    cache = KeyCache(store, clock)
    assert cache.ttl_s == CACHE_TTL_S <= REVOCATION_S_MAX <= 1.0
    assert cache.authenticate(SECRET) is not None
    assert store.revoke("key_1", datetime(2026, 3, 1, tzinfo=UTC)) is Revoked.NOW
    clock.now_s += CACHE_TTL_S / 2
    assert cache.cached(SECRET) is not None  # the staleness the TTL allows, no more
    clock.now_s += REVOCATION_S_MAX - CACHE_TTL_S / 2  # the promise's bound, from caching
    assert cache.cached(SECRET) is None
    assert cache.authenticate(SECRET) is None  # asked the store, which refuses it
    assert cache.cached(SECRET) is None  # and a refusal is never cached


def test_a_cache_that_would_remember_a_key_longer_than_a_second_is_refused() -> None:
    with pytest.raises(AssertionError):
        KeyCache(MemoryKeyStore(), time.monotonic, ttl_s=REVOCATION_S_MAX + 0.1)
