"""The plumbing every use case's steps share: ``Steps``, over one database.

``Steps`` holds the database, the clock, the id source and the settings, and
the moves every step makes the same way: run a unit of work (again, when a
unique index raced); take, replay and finish idempotency keys; read a payment
(or an attempt and its payment) under the payment's lock, as entities; move a
payment along its state machine, recording the history row and the outbox
event in the same transaction (``_move``, ``_record``); post a journal
(``_post``); start an attempt and say the provider call it stands for.

A step's first reads are a read set the store loads in one go
(``engine.adapters.store``): a write on a payment declares its
``CommandReads`` (``_command_reads``) and takes the key, the payment, its busy
attempts and its order's holder from the answers.

The use cases build on it, one module each (``payments``, ``outcomes``,
``webhooks``, ``recovery``, ``payouts``, ``reads``); ``engine.service.engine``
composes them into ``PaymentEngine``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from engine.adapters.database import Database
from engine.adapters.store import (
    AttemptReads,
    CommandReads,
    OpenAttempts,
    RetryStep,
    Row,
    Store,
    unit_of_work,
)
from engine.domain import ledger
from engine.domain.entities import Attempt, Payment
from engine.domain.errors import Conflict, IdempotencyKeyInFlight, IdempotencyKeyReused, NotFound
from engine.domain.lifecycles import ATTEMPT_MOVES, KEY_MOVES, OPEN_ATTEMPT, KeyStatus, moved
from engine.domain.lifecycles import AttemptStatus as A
from engine.domain.marketplace import FeePlan
from engine.domain.money import Money
from engine.domain.ports import Clock, IdSource
from engine.domain.provider import CallKind, ProviderCall
from engine.domain.states import PaymentState, transition
from engine.service.views import PaymentView, StepResult

T = TypeVar("T")
S = PaymentState

# Open attempts as the store binds them (their stored strings).
OPEN_STATUSES = tuple(status.value for status in OPEN_ATTEMPT)
# When recovery asks the provider about an open attempt: the first lookup one step
# after the attempt began, each further one a step after the last "unknown"; after
# the last step the attempt is flagged for review (and stays open: never guessed).
RECOVERY_SCHEDULE = (
    timedelta(minutes=1), timedelta(minutes=5), timedelta(hours=1),
    timedelta(days=1), timedelta(days=1), timedelta(days=1),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EngineSettings:
    idempotency_retention: timedelta = timedelta(hours=24)
    step_retry_max: int = 8
    page_size_max: int = 100
    # Past this a list is paged by order_id, not by position; the bound also keeps an
    # offset inside the 64-bit integers every database takes.
    page_offset_max: int = 1_000_000
    expiry_batch_max: int = 1000
    recovery_schedule: tuple[timedelta, ...] = RECOVERY_SCHEDULE
    webhook_attempts_max: int = 5
    webhook_payload_bytes_max: int = 256 * 1024
    # The platform fee of a seller without a plan of its own.
    default_fee_plan: FeePlan = field(default_factory=FeePlan)


class Steps:
    def __init__(
        self,
        database: Database,
        clock: Clock,
        ids: IdSource,
        settings: EngineSettings | None = None,
    ):
        self.db = database
        self.clock = clock
        self.ids = ids
        self.settings = settings or EngineSettings()

    # -- units of work ----------------------------------------------------
    def _run(self, step: Callable[[Store], T]) -> T:
        """Run a step in its own transaction; retry it when a unique index raced."""
        for _ in range(self.settings.step_retry_max):
            try:
                with unit_of_work(self.db) as store:
                    result = step(store)
                    store.commit()
                    return result
            except RetryStep:
                continue
        raise Conflict("contention", "too many concurrent writers; retry the request")

    # -- reading payments and attempts --------------------------------------
    @staticmethod
    def _locked(s: Store, payment_id: str, merchant_id: str | None = None) -> Payment:
        return Steps._owned(s, payment_id, merchant_id, lock=True)

    @staticmethod
    def _owned(
        s: Store, payment_id: str, merchant_id: str | None, *, lock: bool = False
    ) -> Payment:
        """The payment, or not found (also when it is another merchant's)."""
        return Steps._found(s.payment(payment_id, lock=lock), payment_id, merchant_id)

    @staticmethod
    def _found(row: Row | None, payment_id: str, merchant_id: str | None) -> Payment:
        """A payment row as read, or not found (also when it is another merchant's)."""
        if row is None or (merchant_id is not None and row["merchant_id"] != merchant_id):
            raise NotFound("payment_not_found", f"no payment {payment_id}", field="payment_id")
        return Payment.from_row(row)

    @staticmethod
    def _command_reads(
        command: Any, busy: tuple[CallKind, ...] = (), *, order_holder: bool = False
    ) -> CommandReads:
        """The first reads of a write on a payment: its key, the payment locked, its
        ``busy`` attempts in flight (which refuse the write) and the holder of its order."""
        return CommandReads(
            command.merchant_id, command.operation.value, command.idempotency_key,
            command.payment_id,
            busy=OpenAttempts(tuple(kind.value for kind in busy), OPEN_STATUSES) if busy else None,
            order_holder=order_holder,
        )  # fmt: skip

    @staticmethod
    def _locked_attempt(s: Store, attempt_id: str) -> tuple[Payment, Attempt]:
        """An attempt and its payment, the attempt read under the payment's lock."""
        loaded = s.load(AttemptReads(attempt_id))
        if loaded.payment is None or loaded.attempt is None:
            raise NotFound("attempt_not_found", f"no attempt {attempt_id}")
        return Payment.from_row(loaded.payment), Attempt.from_row(loaded.attempt)

    def _calls(self, s: Store, attempts: list[Row]) -> list[ProviderCall]:
        """The provider calls of attempt rows, each with its payment."""
        calls = []
        for row in attempts:
            payment = s.payment(row["payment_id"])
            assert payment is not None
            calls.append(self._call(Payment.from_row(payment), Attempt.from_row(row)))
        return calls

    # -- idempotency keys ----------------------------------------------------
    def _replay(self, command: Any, key: Row | None) -> StepResult | None:
        """The saved answer of the command's key as read (``key``), or None for a new key."""
        row = self._checked_key(command, key)
        if row is None:
            return None
        body = row["response_body"]
        return StepResult(
            PaymentView(body["payment"]), row["response_code"], None, True, body.get("refund_id")
        )

    @staticmethod
    def _key_of(s: Store, command: Any) -> Row | None:
        """The command's idempotency key row, read now."""
        return s.idempotency_key(
            command.merchant_id, command.operation.value, command.idempotency_key
        )

    @staticmethod
    def _saved_key(s: Store, command: Any) -> Row | None:
        """The finished key this command replays, read now (``_checked_key``)."""
        return Steps._checked_key(command, Steps._key_of(s, command))

    @staticmethod
    def _checked_key(command: Any, row: Row | None) -> Row | None:
        """The finished key (``row``, as read) this command replays, or None for a new
        key; a key used with another request, or still in flight, is refused."""
        if row is None:
            return None
        if row["fingerprint"] != command.fingerprint():
            raise IdempotencyKeyReused(
                message="this idempotency key was used with a different request",
                field="idempotency_key",
            )
        if row["status"] != KeyStatus.COMPLETED:
            raise IdempotencyKeyInFlight(
                message="a request with this idempotency key is still in progress",
                field="idempotency_key",
            )
        return row

    def _new_key(
        self, s: Store, command: Any, answer: tuple[int, PaymentView] | None = None
    ) -> str:
        """Store the key in flight, or with its ``(code, payment)`` answer when already known."""
        key_id = self.ids.new_id("idk")
        now = self.clock.now()
        status = moved(KEY_MOVES, None, KeyStatus.IN_FLIGHT if answer is None
                       else KeyStatus.COMPLETED)  # fmt: skip
        row: Row = {
            "id": key_id,
            "merchant_id": command.merchant_id,
            "scope": command.operation.value,
            "key": command.idempotency_key,
            "fingerprint": command.fingerprint(),
            "status": status.value,
            "created_at": now,
            "expires_at": now + self.settings.idempotency_retention,
        }
        if answer is not None:  # one INSERT instead of an INSERT and an UPDATE
            code, view = answer
            row.update(response_code=code,
                       response_body={"payment": view.body, "refund_id": None})  # fmt: skip
        s.insert_idempotency_key(row)
        return key_id

    @staticmethod
    def _finish_key(
        s: Store, key_id: str | None, code: int, payment: Payment, refund_id: str | None = None
    ) -> PaymentView:
        """Save the answer under the key, if any (only a key in flight is finished: the
        store's guard); the payment's view, for the result."""
        view = PaymentView.of(payment)
        if key_id is not None:
            s.finish_idempotency_key(key_id, code, {"payment": view.body, "refund_id": refund_id})
        return view

    # -- moving a payment -----------------------------------------------------
    def _move(
        self,
        s: Store,
        payment: Payment,
        to_state: S,
        reason: str,
        *,
        attempt_id: str | None = None,
        event_id: str | None = None,
        amount_minor: int | None = None,
        **changes: Any,
    ) -> int:
        """Apply one legal transition: payment row, history row and outbox event."""
        from_state = payment.state
        transition(from_state, to_state)
        now = self.clock.now()
        seq = payment.history_count + 1
        s.update_payment(
            payment.id,
            payment.history_count,
            state=to_state.value,
            history_count=seq,
            updated_at=now,
            **changes,
        )
        payment.change(changes)
        payment.state, payment.history_count, payment.updated_at = to_state, seq, now
        self._record(s, payment, from_state.value, reason, attempt_id, event_id, amount_minor)
        return seq

    def _record(
        self,
        s: Store,
        payment: Payment,
        from_state: str | None,
        reason: str,
        attempt_id: str | None,
        event_id: str | None,
        amount_minor: int | None,
    ) -> None:
        seq, now, to_state = payment.history_count, payment.updated_at, payment.state.value
        s.insert_history(
            {
                "payment_id": payment.id, "seq": seq, "from_state": from_state,
                "to_state": to_state, "reason": reason, "attempt_id": attempt_id,
                "provider_event_id": event_id, "amount_minor": amount_minor, "at": now,
            }
        )  # fmt: skip
        s.insert_outbox(
            {
                "event_id": self.ids.new_id("evt"),
                "type": f"payment.{to_state}",
                "payment_id": payment.id,
                "history_seq": seq,
                "created_at": now,
                "payload": {
                    "payment_id": payment.id, "merchant_id": payment.merchant_id,
                    "order_id": payment.order_id, "seq": seq, "from_state": from_state,
                    "to_state": to_state, "reason": reason,
                    "amount_minor": amount_minor, "currency": payment.currency,
                    "captured_minor": payment.captured_minor,
                    "refunded_minor": payment.refunded_minor,
                },
            }
        )  # fmt: skip

    def _update(self, s: Store, payment: Payment, **changes: Any) -> None:
        """Change a payment's columns without a state change (guarded by its history)."""
        s.update_payment(payment.id, payment.history_count, **changes)
        payment.change(changes)

    def _post(self, s: Store, payment: Payment, journal: ledger.Journal, seq: int | None) -> None:
        s.insert_journal(self.ids.new_id("jnl"), journal, payment.id, seq, self.clock.now())

    @staticmethod
    def _money(payment: Payment, amount_minor: int) -> Money:
        return Money(amount_minor, payment.currency)

    # -- attempts ---------------------------------------------------------------
    def _call(self, payment: Payment, attempt: Attempt) -> ProviderCall:
        return ProviderCall(
            attempt_id=attempt.id,
            kind=attempt.kind,
            idempotency_key=attempt.provider_idempotency_key,
            payment_id=payment.id,
            merchant_id=payment.merchant_id,
            order_id=payment.order_id,
            amount_minor=attempt.amount_minor,
            currency=payment.currency,
            payment_method=payment.payment_method,
            capture_method=payment.capture_method,
            provider_payment_id=payment.provider_payment_id,
            refund_id=attempt.refund_id,
            awaiting_action=attempt.status is A.REQUIRES_ACTION,
        )

    def _new_attempt(
        self,
        s: Store,
        payment: Payment,
        kind: CallKind,
        amount_minor: int,
        key_id: str,
        refund_id: str | None = None,
    ) -> Attempt:
        attempt_id = self.ids.new_id("att")
        now = self.clock.now()
        attempt = Attempt(
            id=attempt_id, payment_id=payment.id, kind=kind,
            status=moved(ATTEMPT_MOVES, None, A.PENDING), amount_minor=amount_minor,
            provider_idempotency_key=f"paychaos-{attempt_id}", refund_id=refund_id,
            idempotency_id=key_id, decline_code=None, lookup_count=0,
            next_lookup_at=now + self.settings.recovery_schedule[0], needs_review=False,
            created_at=now, updated_at=now, resolved_at=None,
        )  # fmt: skip
        s.insert_attempt(attempt.as_row())
        return attempt

    @staticmethod
    def _update_attempt(s: Store, attempt: Attempt, **changes: Any) -> None:
        """Write an attempt's changes (a status move checked against its table)."""
        if "status" in changes:
            moved(ATTEMPT_MOVES, attempt.status, A(changes["status"]))
        s.update_attempt(attempt.id, **changes)
        attempt.change(changes)

    def _next_lookup(self, lookups: int) -> dict[str, Any]:
        """After ``lookups`` answers of "unknown": when to ask again, or flag for review."""
        schedule = self.settings.recovery_schedule
        if lookups < len(schedule):
            return {"next_lookup_at": self.clock.now() + schedule[lookups]}
        return {"next_lookup_at": None, "needs_review": True}
