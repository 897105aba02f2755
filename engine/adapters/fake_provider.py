"""An in-process provider for the demo and the tests: deterministic, no I/O.

It keeps its own truth (what it authorized, captured and refunded per
payment), honours provider idempotency keys (a replayed key returns the first
answer and never a second effect) and can be told to lose a request before or
after doing the work, which is the ambiguous case the engine must survive.

Payment methods pick behaviour, after Stripe's test tokens:
``pm_card_visa`` succeeds; ``pm_card_chargeDeclined*`` declines;
``pm_card_authenticationRequired`` asks for 3DS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.domain.provider import CallKind, OutcomeStatus, ProviderCall, ProviderOutcome

FEE_BASIS_POINTS = 290
FEE_FIXED_MINOR = 30


def provider_fee_minor(amount_minor: int) -> int:
    """2.9 % + 30 minor units, rounded half up, never more than the amount."""
    percent = (amount_minor * FEE_BASIS_POINTS + 5_000) // 10_000
    return min(amount_minor, percent + FEE_FIXED_MINOR)


@dataclass(slots=True)
class Truth:
    """What the provider really did to one payment."""

    authorized_minor: int = 0
    captured_minor: int = 0
    refunded_minor: int = 0
    canceled: bool = False
    charges: int = 0  # successful authorizations: more than one is a double charge


@dataclass(slots=True)
class FakeProvider:
    fail_next: list[str] = field(default_factory=list)  # "before" | "after", consumed in order
    truth: dict[str, Truth] = field(default_factory=dict)
    _answers: dict[str, ProviderOutcome] = field(default_factory=dict)
    calls: int = 0

    def call(self, call: ProviderCall) -> ProviderOutcome:
        self.calls += 1
        fault = self.fail_next.pop(0) if self.fail_next else None
        if fault == "before":
            return ProviderOutcome(OutcomeStatus.UNKNOWN, message="timeout before processing")
        answer = self._answers.get(call.idempotency_key)
        if answer is None:
            answer = self._perform(call)
            self._answers[call.idempotency_key] = answer
        if fault == "after":
            return ProviderOutcome(OutcomeStatus.UNKNOWN, message="timeout after processing")
        return answer

    def lookup(self, call: ProviderCall) -> ProviderOutcome:
        """What happened to the request with this idempotency key, if anything."""
        answer = self._answers.get(call.idempotency_key)
        return answer if answer is not None else ProviderOutcome(OutcomeStatus.NOT_FOUND)

    def _perform(self, call: ProviderCall) -> ProviderOutcome:
        if call.kind is CallKind.PAYOUT:  # accepted: in transit until its webhook
            return ProviderOutcome(OutcomeStatus.SUCCEEDED, amount_minor=call.amount_minor,
                                   provider_payout_id=f"po_{call.attempt_id}")  # fmt: skip
        truth = self.truth.setdefault(call.payment_id, Truth())
        provider_id = f"pi_{call.payment_id}"
        if call.kind is CallKind.AUTHORIZE:
            return self._authorize(call, truth, provider_id)
        if call.kind is CallKind.CAPTURE:
            if truth.canceled or truth.captured_minor or call.amount_minor > truth.authorized_minor:
                return ProviderOutcome(OutcomeStatus.DECLINED, decline_code="capture_refused")
            truth.captured_minor = call.amount_minor
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED, provider_id, amount_minor=call.amount_minor,
                fee_minor=provider_fee_minor(call.amount_minor), fee_known=True,
            )  # fmt: skip
        if call.kind is CallKind.VOID:
            if truth.captured_minor:
                return ProviderOutcome(OutcomeStatus.DECLINED, decline_code="already_captured")
            truth.canceled = True
            return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_id)
        if truth.refunded_minor + call.amount_minor > truth.captured_minor:
            return ProviderOutcome(OutcomeStatus.DECLINED, decline_code="refund_exceeds_charge")
        truth.refunded_minor += call.amount_minor
        return ProviderOutcome(
            OutcomeStatus.SUCCEEDED, provider_id, provider_refund_id=f"re_{call.refund_id}",
            amount_minor=call.amount_minor,
        )  # fmt: skip

    def _authorize(self, call: ProviderCall, truth: Truth, provider_id: str) -> ProviderOutcome:
        method = call.payment_method
        if method.startswith("pm_card_chargeDeclined") or "Declined" in method:
            return ProviderOutcome(
                OutcomeStatus.DECLINED, provider_id, decline_code="card_declined"
            )
        if method == "pm_card_authenticationRequired":
            return ProviderOutcome(OutcomeStatus.REQUIRES_ACTION, provider_id)
        truth.authorized_minor = call.amount_minor
        truth.charges += 1
        if call.capture_method == "automatic":
            truth.captured_minor = call.amount_minor
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED, provider_id, amount_minor=call.amount_minor,
                captured=True, fee_minor=provider_fee_minor(call.amount_minor), fee_known=True,
            )  # fmt: skip
        return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_id, amount_minor=call.amount_minor)
