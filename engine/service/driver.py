"""A synchronous driver: performs a step's provider call and completes the step.

The demo, the benchmark and the tests use it; the simulation and the HTTP
workers have drivers of their own around the same ``begin_*``/``complete_*``.
"""

from __future__ import annotations

from typing import Protocol

from engine.domain.provider import CallKind, ProviderCall, ProviderOutcome
from engine.service.engine import PaymentEngine
from engine.service.views import StepResult


class Provider(Protocol):
    def call(self, call: ProviderCall) -> ProviderOutcome: ...

    def lookup(self, call: ProviderCall) -> ProviderOutcome: ...


def perform(engine: PaymentEngine, provider: Provider, begun: StepResult) -> StepResult:
    """Make the call a ``begin_*`` step asked for (if any) and apply its outcome."""
    if begun.call is None:
        return begun
    outcome = provider.call(begun.call)
    complete = {
        CallKind.AUTHORIZE: engine.complete_authorize,
        CallKind.CAPTURE: engine.complete_capture,
        CallKind.VOID: engine.complete_void,
        CallKind.REFUND: engine.complete_refund,
    }[begun.call.kind]
    result = complete(begun.call.attempt_id, outcome)
    return StepResult(result.payment, result.status_code, None, False, begun.refund_id)


def recover(engine: PaymentEngine, provider: Provider, calls: list[ProviderCall]) -> int:
    """Look up each open attempt by its key and apply the answer; resend the unseen.

    Returns how many attempts were resolved.
    """
    resolved = 0
    for call in calls:
        result, resend = engine.resolve_attempt(call.attempt_id, provider.lookup(call))
        if resend is not None:
            result, _ = engine.resolve_attempt(call.attempt_id, provider.call(resend))
        resolved += result.status_code != 202
    return resolved
