"""The one driver of the begin/complete seam: operations that ask, pumps that answer.

An operation is a generator. Engine steps run inside it, between its yields;
it yields what it needs from the provider and is sent back the
``ProviderOutcome``; its return value is the operation's result:

    Call(call)     perform the call (with the attempt's provider key)
    Lookup(call)   what became of a call (by its key; a 3DS one: the object now)

It never talks to the provider itself. Each driver pumps it on its own clock:

    pump(operation, provider)     the synchronous pump: demo, bench, tests, workers
    Services.drive (entrypoints)  provider calls on the provider threads, steps on the step threads
    World.pump (scenarios)        ``yield from provider_call(...)`` on virtual time

So the kind -> ``complete_*`` dispatch, the lookup -> resend -> resolve of an
attempt, and a payout's and a fee's turns exist once, here; the recovery policy
that chooses which of them to run is ``engine.workers.recovery``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from engine.domain.provider import CallKind, OutcomeStatus, ProviderCall, ProviderOutcome
from engine.service.engine import PaymentEngine
from engine.service.payouts import PayoutResult
from engine.service.views import StepResult

T = TypeVar("T")


class Provider(Protocol):
    def call(self, call: ProviderCall) -> ProviderOutcome: ...

    def lookup(self, call: ProviderCall) -> ProviderOutcome: ...


@dataclass(frozen=True, slots=True)
class Call:
    """Perform this call: the outcome is the provider's answer (or ``unknown``)."""

    call: ProviderCall


@dataclass(frozen=True, slots=True)
class Lookup:
    """Ask what became of this call: ``not_found`` if the provider never saw it."""

    call: ProviderCall


Request = Call | Lookup
# Sent None first (to start it), then each request's outcome.
Operation = Generator[Request, ProviderOutcome | None, T]


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """An operation's result: nothing more to ask the provider."""

    value: T


def advance(operation: Operation[T], outcome: ProviderOutcome | None) -> Request | Done[T]:
    """One turn: send the last outcome (None to start); the next request, or the result.

    A value, not StopIteration, so that a turn can run on an executor thread.
    """
    try:
        return operation.send(outcome)
    except StopIteration as stop:
        return Done(stop.value)


def ask(provider: Provider, request: Request) -> ProviderOutcome:
    if isinstance(request, Call):
        return provider.call(request.call)
    return provider.lookup(request.call)


def pump(operation: Operation[T], provider: Provider) -> T:
    """Run an operation to its end, asking ``provider`` synchronously."""
    turn = advance(operation, None)
    while not isinstance(turn, Done):
        turn = advance(operation, ask(provider, turn))
    return turn.value


def _answer(outcome: ProviderOutcome | None) -> ProviderOutcome:
    assert outcome is not None, "a pump sends each request's outcome back"
    return outcome


# -- a client's operation: the call a begin_* step asked for, then its completion ----------
def complete(engine: PaymentEngine, call: ProviderCall, outcome: ProviderOutcome) -> StepResult:
    """Apply a call's answer with the step of its kind (the one kind -> complete_* map)."""
    step = {
        CallKind.AUTHORIZE: engine.complete_authorize,
        CallKind.CAPTURE: engine.complete_capture,
        CallKind.VOID: engine.complete_void,
        CallKind.REFUND: engine.complete_refund,
    }[call.kind]
    return step(call.attempt_id, outcome)


def finish(engine: PaymentEngine, begun: StepResult) -> Operation[StepResult]:
    """Make the call a ``begin_*`` step asked for (if any) and apply its outcome."""
    if begun.call is None:
        return begun
    outcome = _answer((yield Call(begun.call)))
    result = complete(engine, begun.call, outcome)
    return StepResult(result.payment, result.status_code, None, False, begun.refund_id)


def perform(engine: PaymentEngine, provider: Provider, begun: StepResult) -> StepResult:
    return pump(finish(engine, begun), provider)


def pay_out(engine: PaymentEngine, begun: PayoutResult) -> Operation[PayoutResult]:
    """A payout's call and completion; a replayed or refused one asks nothing."""
    if begun.call is None:
        return begun
    outcome = _answer((yield Call(begun.call)))
    return engine.complete_payout(begun.call.attempt_id, outcome)


# -- recovery's turns: one attempt, one payout, one fee ----------------------------------
@dataclass(frozen=True, slots=True)
class Recovered:
    """What one attempt's lookup came to (the policy counts these)."""

    result: StepResult
    outcome: ProviderOutcome  # the last answer: the lookup's, or the resent call's
    resent: bool


def recover_attempt(engine: PaymentEngine, call: ProviderCall) -> Operation[Recovered]:
    """Look an attempt up by its key and apply the answer; one the provider never
    received is sent again with the same key (``resolve_attempt`` says which)."""
    outcome = _answer((yield Lookup(call)))
    result, resend = engine.resolve_attempt(call.attempt_id, outcome)
    if resend is None:
        return Recovered(result, outcome, False)
    outcome = _answer((yield Call(resend)))
    result, _ = engine.resolve_attempt(call.attempt_id, outcome)
    return Recovered(result, outcome, True)


def recover_payout(
    engine: PaymentEngine, call: ProviderCall
) -> Operation[tuple[PayoutResult, bool]]:
    """A payout without an answer: looked up by key; one the provider never saw, resent
    (the flag says so)."""
    outcome = _answer((yield Lookup(call)))
    resent = outcome.status is OutcomeStatus.NOT_FOUND
    if resent:
        outcome = _answer((yield Call(call)))
    return engine.complete_payout(call.attempt_id, outcome, looked_up=True), resent


def learn_fee(engine: PaymentEngine, call: ProviderCall) -> Operation[bool]:
    """A capture learned by webhook carries no fee: ask the provider (a read)."""
    outcome = _answer((yield Call(call)))
    return engine.complete_fee(call.payment_id, outcome)


def recover(engine: PaymentEngine, provider: Provider, calls: Iterable[ProviderCall]) -> int:
    """Look these attempts up now, whatever their schedule (the demo's and tests' tool;
    the scheduled policy is ``engine.workers.recovery``). Returns how many resolved."""
    return sum(pump(recover_attempt(engine, c), provider).result.status_code != 202 for c in calls)
