"""Small builders shared by the integration tests."""

from __future__ import annotations

from engine.adapters.fake_provider import FakeProvider
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund
from engine.service.driver import perform
from engine.service.engine import PaymentEngine
from engine.service.views import StepResult

MERCHANT = "m_1"


def create(
    engine: PaymentEngine,
    key: str = "create-1",
    order_id: str = "order-1",
    amount_minor: int = 10_000,
    currency: str = "USD",
    payment_method: str = "pm_card_visa",
    capture_method: str = "manual",
    merchant_id: str = MERCHANT,
) -> StepResult:
    return engine.create_payment(
        CreatePayment(
            merchant_id, key, order_id, amount_minor, currency, payment_method, capture_method
        )
    )


def authorized(engine: PaymentEngine, provider: FakeProvider, **kwargs: object) -> str:
    payment_id = create(engine, **kwargs).payment.id  # type: ignore[arg-type]
    result = perform(
        engine,
        provider,
        engine.begin_authorize(Authorize(MERCHANT, f"auth-{payment_id}", payment_id)),
    )
    assert result.payment.state == "authorized", result
    return payment_id


def captured(
    engine: PaymentEngine, provider: FakeProvider, amount_minor: int | None = None, **kwargs: object
) -> str:
    payment_id = authorized(engine, provider, **kwargs)
    begun = engine.begin_capture(Capture(MERCHANT, f"cap-{payment_id}", payment_id, amount_minor))
    result = perform(engine, provider, begun)
    assert result.payment.state in {"captured", "partially_captured"}, result
    return payment_id


def refund(
    engine: PaymentEngine, provider: FakeProvider, payment_id: str, key: str, amount: int | None
) -> StepResult:
    return perform(engine, provider, engine.begin_refund(Refund(MERCHANT, key, payment_id, amount)))
