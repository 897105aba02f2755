"""Planted defects that only the faults exposing stale or wrong answers catch (issue 17,
blind spot 5): each goes unseen by a harness without late arrivals, late replays or the
first-delivery check, and converges, or answers, well enough for every money invariant.

Each plant monkeypatches the engine (never a switch in engine code); ``DEFECTS`` says
which shipped scenario must catch it and by which invariant.
"""

from __future__ import annotations

from typing import Any

from engine.adapters.store import CommandReads, LoadedCommand, Row, Store
from engine.domain.entities import Payment
from engine.domain.lifecycles import KeyStatus
from engine.domain.provider import OutcomeStatus, ProviderEvent, ProviderOutcome
from engine.service.engine import PaymentEngine
from engine.service.views import PaymentView, StepResult
from loadtests.planted.catalogue import Defect, Patcher

BLIND_SPOT = "stale or wrong answers"


def not_found_taken_for_a_failure(mp: Patcher) -> None:
    """Recovery takes a lookup's "not found" for "it failed": the attempt is declined
    instead of sent again with its key. Right as long as a request the provider did not
    answer never reaches it later; a late arrival charges a payment the engine failed."""
    resolve = PaymentEngine.resolve_attempt

    def resolve_attempt(
        self: PaymentEngine, attempt_id: str, outcome: ProviderOutcome
    ) -> tuple[StepResult, Any]:
        if outcome.status is OutcomeStatus.NOT_FOUND:
            outcome = ProviderOutcome(OutcomeStatus.DECLINED, decline_code="not_found")
        return resolve(self, attempt_id, outcome)

    mp.setattr(PaymentEngine, "resolve_attempt", resolve_attempt)


def replay_answers_the_payment_as_it_is_now(mp: Patcher) -> None:
    """A replayed key answers its saved status with the payment as it is now, not as it
    was answered: the same answer right after, another once the payment moved on."""
    key_of = Store.idempotency_key
    load = Store.load

    def as_now(store: Store, row: Row | None) -> Row | None:
        if row is None or row["status"] != KeyStatus.COMPLETED.value:
            return row
        body = row["response_body"] or {}
        payment_id = (body.get("payment") or {}).get("id")
        current = store.payment(payment_id) if payment_id else None
        if current is None:
            return row
        view = PaymentView.of(Payment.from_row(current)).body
        return {**row, "response_body": {**body, "payment": view}}

    def idempotency_key(self: Store, merchant_id: str, scope: str, key: str) -> Row | None:
        return as_now(self, key_of(self, merchant_id, scope, key))

    def load_as_now(self: Store, reads: Any) -> Any:
        loaded = load(self, reads)
        if isinstance(reads, CommandReads) and isinstance(loaded, LoadedCommand):
            return LoadedCommand(
                as_now(self, loaded.key), loaded.payment, loaded.busy, loaded.order_holder
            )
        return loaded

    mp.setattr(Store, "idempotency_key", idempotency_key)
    mp.setattr(Store, "load", load_as_now)


def webhook_dedupe_keyed_on_type_and_payment(mp: Patcher) -> None:
    """The intake dedupes on the event's type and payment instead of its id: a second
    refund's events, or a dispute's second update, are answered "duplicate" and dropped.
    Recovery by lookup still settles the payments: nothing else shows the loss."""
    take = PaymentEngine.take_webhook
    taken: dict[tuple[str, str | None], str] = {}

    def take_webhook(self: PaymentEngine, event: ProviderEvent, payload: str) -> Any:
        seen = taken.get((event.type, event.payment_id))
        if seen is not None and seen != event.event_id:
            return "duplicate", None
        result = take(self, event, payload)
        if result[0] != "duplicate":
            taken.setdefault((event.type, event.payment_id), event.event_id)
        return result

    mp.setattr(PaymentEngine, "take_webhook", take_webhook)


DEFECTS = [
    Defect(
        not_found_taken_for_a_failure, "psp-timeouts", 300.0, frozenset({"I7"}),
        blind_spot=BLIND_SPOT,
    ),
    Defect(
        replay_answers_the_payment_as_it_is_now, "double-click", 120.0, frozenset({"I6"}),
        blind_spot=BLIND_SPOT,
    ),
    Defect(
        webhook_dedupe_keyed_on_type_and_payment, "webhook-storm", 120.0, frozenset({"W"}),
        blind_spot=BLIND_SPOT,
    ),
]  # fmt: skip
