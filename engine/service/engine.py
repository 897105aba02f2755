"""The payment engine's steps. Each public method is one unit of work.

Money operations are split around the provider call (the sans-IO seam):
``begin_*`` records the attempt and its provider idempotency key and returns
the ``ProviderCall`` to make; the caller makes it; ``complete_*`` applies the
``ProviderOutcome``. An ``unknown`` outcome leaves the attempt open until
``resolve_attempt`` gets the provider's answer: the engine never guesses.

Every state change writes, in the same transaction, a history row, an outbox
event and (when money moves) a balanced ledger journal. Every write is
idempotent per (merchant, operation, key).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from engine.adapters.database import Database, LedgerGuardRefused
from engine.adapters.store import OPEN_ATTEMPT, RetryStep, Row, Store, unit_of_work
from engine.domain import ledger
from engine.domain.commands import Authorize, Capture, CreatePayment, CreatePayout, Refund, Void
from engine.domain.errors import (
    AmountExceeded,
    Conflict,
    EventTooEarly,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    OperationInProgress,
    OrderAlreadyActive,
    PaychaosError,
    StoreUnavailable,
)
from engine.domain.marketplace import FeePlan
from engine.domain.money import Money
from engine.domain.ports import Clock, IdSource
from engine.domain.provider import (
    CallKind,
    EventType,
    OutcomeStatus,
    ProviderCall,
    ProviderEvent,
    ProviderOutcome,
)
from engine.domain.states import PaymentState, is_legal, transition
from engine.domain.validation import PAN_SEPARATORS, parse_identifier
from engine.service import payouts, splits
from engine.service.views import (
    EventResult,
    InboxItem,
    InboxResult,
    OutboxEvent,
    PaymentView,
    StepResult,
    history_item,
    refund_item,
)

T = TypeVar("T")
S = PaymentState
O = OutcomeStatus  # noqa: E741

PRE_AUTHORIZATION = frozenset({S.CREATED, S.REQUIRES_ACTION, S.PROCESSING})
CAPTURED_STATES = frozenset({S.PARTIALLY_CAPTURED, S.CAPTURED, S.PARTIALLY_REFUNDED, S.SETTLED})
ATTEMPT_STATUS = {
    O.SUCCEEDED: "succeeded",
    O.DECLINED: "declined",
    O.REQUIRES_ACTION: "requires_action",
    O.UNKNOWN: "unknown",
}
EVENT_CALL_KINDS = {
    EventType.REQUIRES_ACTION: CallKind.AUTHORIZE,
    EventType.AUTHORIZED: CallKind.AUTHORIZE,
    EventType.PAYMENT_FAILED: CallKind.AUTHORIZE,
    EventType.CANCELED: CallKind.VOID,
    EventType.REFUND_SUCCEEDED: CallKind.REFUND,
    EventType.REFUND_FAILED: CallKind.REFUND,
}  # payment_intent.succeeded is an authorization before one, else a capture
DISPUTE_EVENTS = frozenset(
    {EventType.DISPUTE_CREATED, EventType.DISPUTE_WON, EventType.DISPUTE_LOST}
)
BEFORE_CAPTURE = frozenset({S.CREATED, S.REQUIRES_ACTION, S.PROCESSING, S.AUTHORIZED})
# The attempts in flight that refuse a new authorization, capture or void.
AUTHORIZE_BUSY = (CallKind.AUTHORIZE, CallKind.VOID)
CAPTURE_BUSY = (CallKind.CAPTURE, CallKind.VOID)
VOID_BUSY = (CallKind.AUTHORIZE, CallKind.CAPTURE, CallKind.VOID)
# The attempts a provider event may answer: of any kind, open or awaiting the customer
# (read with the event's first reads, and sorted out by kind in Python).
EVENT_ATTEMPT_KINDS = tuple(k.value for k in (CallKind.AUTHORIZE, CallKind.CAPTURE,
                                              CallKind.VOID, CallKind.REFUND))  # fmt: skip
EVENT_ATTEMPT_STATUSES = (*OPEN_ATTEMPT, "requires_action")
EVENT_ATTEMPTS = (EVENT_ATTEMPT_KINDS, EVENT_ATTEMPT_STATUSES)
# What polling an authorization that waits for the customer answers until the customer acts.
CUSTOMER_TO_ACT = frozenset({O.UNKNOWN, O.NOT_FOUND, O.REQUIRES_ACTION})
RESPONSE_CODE = {O.SUCCEEDED: 200, O.DECLINED: 402, O.REQUIRES_ACTION: 200, O.UNKNOWN: 202}
# When recovery asks the provider about an open attempt: the first lookup one step
# after the attempt began, each further one a step after the last "unknown"; after
# the last step the attempt is flagged for review (and stays open: never guessed).
RECOVERY_SCHEDULE = (
    timedelta(minutes=1), timedelta(minutes=5), timedelta(hours=1),
    timedelta(days=1), timedelta(days=1), timedelta(days=1),
)  # fmt: skip
# Failures of a webhook's application that count against it (then dead-letter it).
# A database outage is nobody's fault and a defect must stop the world: neither counts.
Translate = Callable[[Mapping[str, Any]], ProviderEvent]
# Keys, and any 13-19 digit run in the separators a card number may be printed with
# (engine.domain.validation.PAN_SEPARATORS): stored error text keeps none of them.
_SECRET = re.compile(
    rf"\b(?:sk|rk|pk|whsec)_[A-Za-z0-9_]+|(?<!\d)\d(?:[{re.escape(PAN_SEPARATORS)}]?\d){{12,18}}(?!\d)"
)
ERROR_TEXT_MAX = 500


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


class PaymentEngine:
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

    # -- plumbing ---------------------------------------------------------
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

    @staticmethod
    def _locked(s: Store, payment_id: str, merchant_id: str | None = None) -> Row:
        return PaymentEngine._owned(s, payment_id, merchant_id, lock=True)

    @staticmethod
    def _owned(s: Store, payment_id: str, merchant_id: str | None, *, lock: bool = False) -> Row:
        """The payment, or not found (also when it is another merchant's)."""
        payment = s.payment(payment_id, lock=lock)
        if payment is None or (merchant_id is not None and payment["merchant_id"] != merchant_id):
            raise NotFound("payment_not_found", f"no payment {payment_id}", field="payment_id")
        return payment

    @staticmethod
    def _read_ahead(
        s: Store, command: Any, busy: tuple[CallKind, ...] = (), *, order_holder: bool = False
    ) -> None:
        """The first reads of a write on a payment (its key, the payment locked, its
        ``busy`` attempts in flight, the holder of its order), sent in one trip: the
        step asks for them next."""
        s.read_ahead_command(
            command.merchant_id, command.operation.value, command.idempotency_key,
            command.payment_id, [kind.value for kind in busy], OPEN_ATTEMPT if busy else (),
            order_holder=order_holder,
        )  # fmt: skip

    @staticmethod
    def _locked_attempt(s: Store, attempt_id: str) -> tuple[Row, Row]:
        """An attempt and its payment, the attempt read under the payment's lock."""
        s.read_ahead_attempt(attempt_id)
        payment = s.payment_of_attempt(attempt_id, lock=True)
        attempt = s.attempt(attempt_id) if payment is not None else None
        if payment is None or attempt is None:
            raise NotFound("attempt_not_found", f"no attempt {attempt_id}")
        return payment, attempt

    def _replay(self, s: Store, command: Any) -> StepResult | None:
        row = self._saved_key(s, command)
        if row is None:
            return None
        body = row["response_body"]
        return StepResult(
            PaymentView(body["payment"]), row["response_code"], None, True, body.get("refund_id")
        )

    @staticmethod
    def _saved_key(s: Store, command: Any) -> Row | None:
        """The finished key this command replays, or None for a new key; a key used with
        another request, or still in flight, is refused."""
        row = s.idempotency_key(
            command.merchant_id, command.operation.value, command.idempotency_key
        )
        if row is None:
            return None
        if row["fingerprint"] != command.fingerprint():
            raise IdempotencyKeyReused(
                message="this idempotency key was used with a different request",
                field="idempotency_key",
            )
        if row["status"] != "completed":
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
        row: Row = {
            "id": key_id,
            "merchant_id": command.merchant_id,
            "scope": command.operation.value,
            "key": command.idempotency_key,
            "fingerprint": command.fingerprint(),
            "status": "in_flight",
            "created_at": now,
            "expires_at": now + self.settings.idempotency_retention,
        }
        if answer is not None:  # one INSERT instead of an INSERT and an UPDATE
            code, view = answer
            row.update(status="completed", response_code=code,
                       response_body={"payment": view.body, "refund_id": None})  # fmt: skip
        s.insert_idempotency_key(row)
        return key_id

    @staticmethod
    def _finish_key(
        s: Store, key_id: str | None, code: int, payment: Row, refund_id: str | None = None
    ) -> PaymentView:
        """Save the answer under the key, if any; the payment's view, for the result."""
        view = PaymentView.of(payment)
        if key_id is not None:
            s.finish_idempotency_key(key_id, code, {"payment": view.body, "refund_id": refund_id})
        return view

    def _move(
        self,
        s: Store,
        payment: Row,
        to_state: S,
        reason: str,
        *,
        attempt_id: str | None = None,
        event_id: str | None = None,
        amount_minor: int | None = None,
        **changes: Any,
    ) -> int:
        """Apply one legal transition: payment row, history row and outbox event."""
        from_state = S(payment["state"])
        transition(from_state, to_state)
        now = self.clock.now()
        seq = payment["history_count"] + 1
        s.update_payment(
            payment["id"],
            payment["history_count"],
            state=to_state.value,
            history_count=seq,
            updated_at=now,
            **changes,
        )
        payment.update(changes, state=to_state.value, history_count=seq, updated_at=now)
        self._record(s, payment, from_state.value, reason, attempt_id, event_id, amount_minor)
        return int(seq)

    def _record(
        self,
        s: Store,
        payment: Row,
        from_state: str | None,
        reason: str,
        attempt_id: str | None,
        event_id: str | None,
        amount_minor: int | None,
    ) -> None:
        seq, now = payment["history_count"], payment["updated_at"]
        s.insert_history(
            {
                "payment_id": payment["id"], "seq": seq, "from_state": from_state,
                "to_state": payment["state"], "reason": reason, "attempt_id": attempt_id,
                "provider_event_id": event_id, "amount_minor": amount_minor, "at": now,
            }
        )  # fmt: skip
        s.insert_outbox(
            {
                "event_id": self.ids.new_id("evt"),
                "type": f"payment.{payment['state']}",
                "payment_id": payment["id"],
                "history_seq": seq,
                "created_at": now,
                "payload": {
                    "payment_id": payment["id"], "merchant_id": payment["merchant_id"],
                    "order_id": payment["order_id"], "seq": seq, "from_state": from_state,
                    "to_state": payment["state"], "reason": reason,
                    "amount_minor": amount_minor, "currency": payment["currency"],
                    "captured_minor": payment["captured_minor"],
                    "refunded_minor": payment["refunded_minor"],
                },
            }
        )  # fmt: skip

    def _post(self, s: Store, payment: Row, journal: ledger.Journal, seq: int | None) -> None:
        s.insert_journal(self.ids.new_id("jnl"), journal, payment["id"], seq, self.clock.now())

    @staticmethod
    def _money(payment: Row, amount_minor: int) -> Money:
        return Money(amount_minor, payment["currency"])

    def _call(self, payment: Row, attempt: Row) -> ProviderCall:
        return ProviderCall(
            attempt_id=attempt["id"],
            kind=CallKind(attempt["kind"]),
            idempotency_key=attempt["provider_idempotency_key"],
            payment_id=payment["id"],
            merchant_id=payment["merchant_id"],
            order_id=payment["order_id"],
            amount_minor=attempt["amount_minor"],
            currency=payment["currency"],
            payment_method=payment["payment_method"],
            capture_method=payment["capture_method"],
            provider_payment_id=payment["provider_payment_id"],
            refund_id=attempt["refund_id"],
            awaiting_action=attempt["status"] == "requires_action",
        )

    def _new_attempt(
        self,
        s: Store,
        payment: Row,
        kind: CallKind,
        amount_minor: int,
        key_id: str,
        refund_id: str | None = None,
    ) -> Row:
        attempt_id = self.ids.new_id("att")
        now = self.clock.now()
        attempt = {
            "id": attempt_id,
            "payment_id": payment["id"],
            "kind": kind.value,
            "status": "pending",
            "amount_minor": amount_minor,
            # One provider key per attempt, reused on every retry and lookup.
            "provider_idempotency_key": f"paychaos-{attempt_id}",
            "refund_id": refund_id,
            "idempotency_id": key_id,
            "next_lookup_at": now + self.settings.recovery_schedule[0],
            "created_at": now,
            "updated_at": now,
        }
        s.insert_attempt(attempt)
        return attempt

    # -- create ---------------------------------------------------------------
    def create_payment(self, command: CreatePayment) -> StepResult:
        def step(s: Store) -> StepResult:
            replay = self._replay(s, command)
            if replay is not None:
                return replay
            now = self.clock.now()
            payment: Row = {
                "id": self.ids.new_id("pay"),
                "merchant_id": command.merchant_id,
                "order_id": command.order_id,
                "active_order_id": None,
                "amount_minor": command.amount_minor,
                "currency": command.currency,
                "payment_method": command.payment_method,
                "capture_method": command.capture_method,
                "state": S.CREATED.value,
                "authorized_minor": 0, "captured_minor": 0, "refunded_minor": 0,
                "refund_reserved_minor": 0, "fee_minor": 0, "disputed_minor": 0,
                "provider_payment_id": None, "decline_code": None,
                "metadata": command.metadata,
                "history_count": 1, "created_at": now, "updated_at": now,
                "lines_count": len(command.splits),
            }  # fmt: skip
            s.insert_payment(payment)
            if command.splits:
                splits.create_lines(s, payment["id"], command.splits,
                                    self.settings.default_fee_plan)  # fmt: skip
            self._record(s, payment, None, "created", None, None, command.amount_minor)
            view = PaymentView.of(payment)
            self._new_key(s, command, (201, view))
            return StepResult(view, 201)

        return self._run(step)

    # -- authorize ----------------------------------------------------------------
    def begin_authorize(self, command: Authorize) -> StepResult:
        def step(s: Store) -> StepResult:
            self._read_ahead(s, command, AUTHORIZE_BUSY, order_holder=True)
            replay = self._replay(s, command)
            if replay is not None:
                return replay
            payment = self._locked(s, command.payment_id, command.merchant_id)
            state = S(payment["state"])
            if state not in {S.CREATED, S.REQUIRES_ACTION}:
                raise IllegalTransition(state.value, S.AUTHORIZED.value)
            # A void in doubt too: the provider may have canceled the intent already.
            self._refuse_if_busy(s, payment, AUTHORIZE_BUSY)
            self._claim_order(s, payment)
            key_id = self._new_key(s, command)
            attempt = self._new_attempt(
                s, payment, CallKind.AUTHORIZE, payment["amount_minor"], key_id
            )
            return StepResult(PaymentView.of(payment), 202, self._call(payment, attempt))

        return self._run(step)

    def _claim_order(self, s: Store, payment: Row) -> None:
        holder = s.order_holder_of(payment["merchant_id"], payment["id"])
        if holder is not None and holder["id"] != payment["id"]:
            raise OrderAlreadyActive(
                message=f"order {payment['order_id']} is already paid or being paid by "
                f"{holder['id']} ({holder['state']})",
                field="order_id",
            )
        if holder is None:
            s.claim_order(payment["id"], payment["order_id"])
            payment["active_order_id"] = payment["order_id"]

    def complete_authorize(self, attempt_id: str, outcome: ProviderOutcome) -> StepResult:
        return self._complete(attempt_id, outcome, CallKind.AUTHORIZE)

    def complete_capture(self, attempt_id: str, outcome: ProviderOutcome) -> StepResult:
        return self._complete(attempt_id, outcome, CallKind.CAPTURE)

    def complete_void(self, attempt_id: str, outcome: ProviderOutcome) -> StepResult:
        return self._complete(attempt_id, outcome, CallKind.VOID)

    def complete_refund(self, attempt_id: str, outcome: ProviderOutcome) -> StepResult:
        return self._complete(attempt_id, outcome, CallKind.REFUND)

    def _complete(self, attempt_id: str, outcome: ProviderOutcome, kind: CallKind) -> StepResult:
        assert outcome.status is not O.NOT_FOUND, "not_found answers a lookup, not a call"

        def step(s: Store) -> StepResult:
            payment, attempt = self._locked_attempt(s, attempt_id)
            assert attempt["kind"] == kind.value, (attempt["kind"], kind)
            if attempt["status"] not in OPEN_ATTEMPT:
                # A webhook or a lookup got there first: answer what the key saved,
                # so the client's first answer and every replay are the same.
                return self._saved_answer(s, payment, attempt)
            code = self._apply(s, payment, attempt, outcome, f"{kind.value}_{outcome.status}")
            view = self._finish_key(s, attempt["idempotency_id"], code, payment,
                                    attempt["refund_id"])  # fmt: skip
            return StepResult(view, code, refund_id=attempt["refund_id"])

        return self._run(step)

    @staticmethod
    def _saved_answer(s: Store, payment: Row, attempt: Row) -> StepResult:
        saved = s.idempotency_response(attempt["idempotency_id"])
        if saved is None:
            return StepResult(PaymentView.of(payment), 200, refund_id=attempt["refund_id"])
        code, body = saved
        return StepResult(PaymentView(body["payment"]), code, refund_id=body.get("refund_id"))

    def _apply(
        self,
        s: Store,
        payment: Row,
        attempt: Row,
        outcome: ProviderOutcome,
        reason: str,
        event_id: str | None = None,
    ) -> int:
        """Apply a provider's answer to an open attempt; return the response code."""
        status = outcome.status
        if status is O.REQUIRES_ACTION and attempt["kind"] != CallKind.AUTHORIZE.value:
            status = O.UNKNOWN  # not an answer a capture, void or refund can have
        now = self.clock.now()
        s.update_attempt(
            attempt["id"],
            status=ATTEMPT_STATUS[status],
            decline_code=outcome.decline_code,
            updated_at=now,
            resolved_at=None if status is O.UNKNOWN else now,
            **self._schedule_after(status, now),
        )
        apply = {
            CallKind.AUTHORIZE.value: self._apply_authorize,
            CallKind.CAPTURE.value: self._apply_capture,
            CallKind.VOID.value: self._apply_void,
            CallKind.REFUND.value: self._apply_refund,
        }[attempt["kind"]]
        apply(s, payment, attempt, outcome, status, reason, event_id)
        return RESPONSE_CODE[status]

    def _schedule_after(self, status: O, now: datetime) -> dict[str, Any]:
        """Recovery's schedule after an answer: unchanged while unknown; none once
        settled; a fresh one for the customer's turn (3DS), whose answer may only
        reach the engine by a webhook that can be lost, so recovery polls it too."""
        if status is O.UNKNOWN:
            return {}
        if status is O.REQUIRES_ACTION:
            first = now + self.settings.recovery_schedule[0]
            return {"next_lookup_at": first, "lookup_count": 0, "needs_review": False}
        return {"next_lookup_at": None, "needs_review": False}

    def _apply_authorize(
        self,
        s: Store,
        p: Row,
        attempt: Row | None,
        outcome: ProviderOutcome,
        status: O,
        reason: str,
        event_id: str | None,
    ) -> None:
        attempt_id = attempt["id"] if attempt else None
        ids: dict[str, Any] = {
            "provider_payment_id": outcome.provider_payment_id or p["provider_payment_id"]
        }
        if status is O.SUCCEEDED:
            amount = outcome.amount_minor or p["amount_minor"]
            assert 0 < amount <= p["amount_minor"], (amount, p["amount_minor"])
            if outcome.captured:
                seq = self._move(
                    s, p, S.CAPTURED, reason, attempt_id=attempt_id, event_id=event_id,
                    amount_minor=amount, authorized_minor=amount, captured_minor=amount,
                    fee_minor=outcome.fee_minor, fee_pending=not outcome.fee_known, **ids,
                )  # fmt: skip
                journal = self._capture_journal(s, p, None, amount, outcome.fee_minor)
            else:
                seq = self._move(
                    s, p, S.AUTHORIZED, reason, attempt_id=attempt_id, event_id=event_id,
                    amount_minor=amount, authorized_minor=amount, **ids,
                )  # fmt: skip
                journal = ledger.authorization_hold(p["merchant_id"], self._money(p, amount))
            self._post(s, p, journal, seq)
        elif status is O.DECLINED:
            self._move(
                s, p, S.FAILED, reason, attempt_id=attempt_id, event_id=event_id,
                active_order_id=None, decline_code=outcome.decline_code, **ids,
            )  # fmt: skip
        elif status is O.REQUIRES_ACTION and p["state"] != S.REQUIRES_ACTION:
            self._move(s, p, S.REQUIRES_ACTION, reason, attempt_id=attempt_id, event_id=event_id,
                       **ids)  # fmt: skip
        elif status is O.UNKNOWN and p["state"] != S.PROCESSING:
            self._move(s, p, S.PROCESSING, reason, attempt_id=attempt_id, event_id=event_id)

    def _apply_capture(
        self,
        s: Store,
        p: Row,
        attempt: Row | None,
        outcome: ProviderOutcome,
        status: O,
        reason: str,
        event_id: str | None,
    ) -> None:
        if status is not O.SUCCEEDED:
            return  # a failed or unknown capture leaves the authorization as it was
        assert attempt is not None
        captured = outcome.amount_minor or attempt["amount_minor"]
        assert 0 < captured <= p["authorized_minor"], (captured, p["authorized_minor"])
        to_state = S.CAPTURED if captured == p["authorized_minor"] else S.PARTIALLY_CAPTURED
        seq = self._move(
            s, p, to_state, reason, attempt_id=attempt["id"], event_id=event_id,
            amount_minor=captured, captured_minor=captured, fee_minor=outcome.fee_minor,
            fee_pending=not outcome.fee_known,
        )  # fmt: skip
        journal = self._capture_journal(s, p, p["authorized_minor"], captured, outcome.fee_minor)
        self._post(s, p, journal, seq)

    def _capture_journal(
        self, s: Store, p: Row, held_minor: int | None, captured_minor: int, fee_minor: int
    ) -> ledger.Journal:
        """The capture's journal; a split payment's lines and wallets move with it."""
        held = None if held_minor is None else self._money(p, held_minor)
        money, fee = self._money(p, captured_minor), self._money(p, fee_minor)
        if not p["lines_count"]:
            return ledger.capture(p["merchant_id"], held, money, fee)
        shares = splits.capture_shares(s, p, captured_minor, self.clock.now())
        return ledger.split_capture(p["merchant_id"], held, money, fee, shares)

    def _apply_void(
        self,
        s: Store,
        p: Row,
        attempt: Row | None,
        outcome: ProviderOutcome,
        status: O,
        reason: str,
        event_id: str | None,
    ) -> None:
        if status is not O.SUCCEEDED:
            return
        if not is_legal(S(p["state"]), S.CANCELED):
            return  # it ended first (3DS failed while the void was in doubt): nothing is held
        held = p["authorized_minor"] if p["state"] == S.AUTHORIZED else 0
        seq = self._move(
            s, p, S.CANCELED, reason, attempt_id=attempt["id"] if attempt else None,
            event_id=event_id, amount_minor=held or None, active_order_id=None,
        )  # fmt: skip
        if held:
            self._post(s, p, ledger.void(p["merchant_id"], self._money(p, held)), seq)

    def _apply_refund(
        self,
        s: Store,
        p: Row,
        attempt: Row | None,
        outcome: ProviderOutcome,
        status: O,
        reason: str,
        event_id: str | None,
    ) -> None:
        assert attempt is not None and attempt["refund_id"] is not None
        amount = attempt["amount_minor"]
        now = self.clock.now()
        if status is O.UNKNOWN:
            return  # the reservation stays until the provider answers
        reserved = p["refund_reserved_minor"] - amount
        assert reserved >= 0, (p["refund_reserved_minor"], amount)
        if status is O.DECLINED:
            s.update_payment(p["id"], p["history_count"], refund_reserved_minor=reserved,
                             updated_at=now)  # fmt: skip
            p.update(refund_reserved_minor=reserved, updated_at=now)
            s.update_refund(attempt["refund_id"], status="failed", updated_at=now)
            return
        refunded = p["refunded_minor"] + amount
        changes = {"refunded_minor": refunded, "refund_reserved_minor": reserved}
        to_state = S.REFUNDED if refunded == p["captured_minor"] else S.PARTIALLY_REFUNDED
        seq: int | None = None
        # A dispute is left only by its decision (which lands on refunded if the money
        # came back in full meanwhile): refunded while disputed, money moves, state stays.
        state = S(p["state"])
        if state is not S.DISPUTED and is_legal(state, to_state):
            seq = self._move(s, p, to_state, reason, attempt_id=attempt["id"], event_id=event_id,
                             amount_minor=amount, **changes)  # fmt: skip
        else:
            s.update_payment(p["id"], p["history_count"], updated_at=now, **changes)
            p.update(changes, updated_at=now)
        s.update_refund(attempt["refund_id"], status="succeeded", updated_at=now,
                        provider_refund_id=outcome.provider_refund_id)  # fmt: skip
        money = self._money(p, amount)
        if p["lines_count"]:
            shares = splits.refund_shares(s, p, amount, now)
            self._post(s, p, ledger.split_refund(p["merchant_id"], money, shares), seq)
        else:
            self._post(s, p, ledger.refund(p["merchant_id"], money), seq)

    # -- capture, void, refund -------------------------------------------------------
    def begin_capture(self, command: Capture) -> StepResult:
        def step(s: Store) -> StepResult:
            self._read_ahead(s, command, CAPTURE_BUSY)
            replay = self._replay(s, command)
            if replay is not None:
                return replay
            payment = self._locked(s, command.payment_id, command.merchant_id)
            if payment["state"] != S.AUTHORIZED:
                raise IllegalTransition(payment["state"], S.CAPTURED.value)
            self._refuse_if_busy(s, payment, CAPTURE_BUSY)
            amount = command.amount_minor or payment["authorized_minor"]
            if amount > payment["authorized_minor"]:
                raise AmountExceeded(
                    "capture_exceeds_authorized",
                    f"capture of {amount} exceeds the authorized {payment['authorized_minor']}",
                    field="amount_minor",
                )
            key_id = self._new_key(s, command)
            attempt = self._new_attempt(s, payment, CallKind.CAPTURE, amount, key_id)
            return StepResult(PaymentView.of(payment), 202, self._call(payment, attempt))

        return self._run(step)

    def _refuse_if_busy(self, s: Store, payment: Row, kinds: tuple[CallKind, ...]) -> None:
        busy = s.attempts_of(payment["id"], [kind.value for kind in kinds], OPEN_ATTEMPT)
        if busy:
            raise OperationInProgress(
                message=f"a {busy[0]['kind']} of this payment is in progress ({busy[0]['id']})"
            )

    def begin_void(self, command: Void) -> StepResult:
        def step(s: Store) -> StepResult:
            self._read_ahead(s, command, VOID_BUSY)
            replay = self._replay(s, command)
            if replay is not None:
                return replay
            payment = self._locked(s, command.payment_id, command.merchant_id)
            state = S(payment["state"])
            if state is S.PROCESSING:
                raise OperationInProgress(
                    message="the authorization's outcome is not known yet; retry after recovery"
                )
            if not is_legal(state, S.CANCELED):
                raise IllegalTransition(state.value, S.CANCELED.value)
            self._refuse_if_busy(s, payment, VOID_BUSY)
            if state is S.CREATED:  # the provider never heard of it: nothing to release
                self._move(s, payment, S.CANCELED, "canceled_before_authorization")
                view = PaymentView.of(payment)
                self._new_key(s, command, (200, view))
                return StepResult(view, 200)
            key_id = self._new_key(s, command)
            attempt = self._new_attempt(s, payment, CallKind.VOID, payment["authorized_minor"],
                                        key_id)  # fmt: skip
            return StepResult(PaymentView.of(payment), 202, self._call(payment, attempt))

        return self._run(step)

    def begin_refund(self, command: Refund) -> StepResult:
        def step(s: Store) -> StepResult:
            self._read_ahead(s, command)
            replay = self._replay(s, command)
            if replay is not None:
                return replay
            payment = self._locked(s, command.payment_id, command.merchant_id)
            state = S(payment["state"])
            if state not in CAPTURED_STATES:
                raise IllegalTransition(state.value, S.REFUNDED.value)
            available = (
                payment["captured_minor"] - payment["refunded_minor"]
                - payment["refund_reserved_minor"]
            )  # fmt: skip
            amount = command.amount_minor or available
            if amount <= 0 or amount > available:
                raise AmountExceeded(
                    "refund_exceeds_available",
                    f"refund of {amount} exceeds the {available} left to refund",
                    field="amount_minor",
                )
            return self._start_refund(s, payment, command, amount)

        return self._run(step)

    def _start_refund(self, s: Store, payment: Row, command: Refund, amount: int) -> StepResult:
        now = self.clock.now()
        refund_id = self.ids.new_id("re")
        s.insert_refund(
            {
                "id": refund_id, "payment_id": payment["id"], "amount_minor": amount,
                "currency": payment["currency"], "status": "pending", "reason": command.reason,
                "created_at": now, "updated_at": now,
            }
        )  # fmt: skip
        reserved = payment["refund_reserved_minor"] + amount
        s.update_payment(payment["id"], payment["history_count"], refund_reserved_minor=reserved,
                         updated_at=now)  # fmt: skip
        payment.update(refund_reserved_minor=reserved, updated_at=now)
        key_id = self._new_key(s, command)
        attempt = self._new_attempt(s, payment, CallKind.REFUND, amount, key_id, refund_id)
        call = self._call(payment, attempt)
        return StepResult(PaymentView.of(payment), 202, call, refund_id=refund_id)

    # -- provider fees learned after the capture -------------------------------------------
    def fee_lookups(self, limit: int = 100) -> list[ProviderCall]:
        """Captures learned without their fee (by a webhook): ask the provider for it."""

        def step(s: Store) -> list[ProviderCall]:
            return [self._fee_call(p) for p in s.fee_pending_payments(limit)]

        return self._run(step)

    @staticmethod
    def _fee_call(p: Row) -> ProviderCall:
        return ProviderCall(
            attempt_id=p["id"], kind=CallKind.FEE, idempotency_key=f"paychaos-fee-{p['id']}",
            payment_id=p["id"], merchant_id=p["merchant_id"], order_id=p["order_id"],
            amount_minor=p["captured_minor"], currency=p["currency"],
            payment_method=p["payment_method"], capture_method=p["capture_method"],
            provider_payment_id=p["provider_payment_id"],
        )  # fmt: skip

    def complete_fee(self, payment_id: str, outcome: ProviderOutcome) -> bool:
        """Book the fee the provider says it took on the capture, once; False if not known."""

        def step(s: Store) -> bool:
            p = self._locked(s, payment_id)
            if not p["fee_pending"] or outcome.status is not O.SUCCEEDED or not outcome.fee_known:
                return False
            extra = outcome.fee_minor - p["fee_minor"]
            assert extra >= 0, (payment_id, outcome.fee_minor, p["fee_minor"])
            s.update_payment(p["id"], p["history_count"], fee_minor=outcome.fee_minor,
                             fee_pending=False, updated_at=self.clock.now())  # fmt: skip
            if extra:
                fee = ledger.Journal(
                    "provider_fee", tuple(ledger.provider_fee(self._money(p, extra)))
                )
                self._post(s, p, fee, None)
            return True

        return self._run(step)

    # -- recovery -----------------------------------------------------------------------
    def unresolved_attempts(
        self, older_than: timedelta, limit: int = 100, *, awaiting_customer: bool = True
    ) -> list[ProviderCall]:
        """Open attempts last touched before ``now - older_than``, whatever their schedule
        (for tools that look everything up now: the demo, a load test's settling).

        With ``awaiting_customer``, authorizations waiting for 3DS come too. The
        recovery policy asks ``due_attempts`` instead.
        """
        limit = min(limit, self.settings.page_size_max)

        def step(s: Store) -> list[ProviderCall]:
            rows = s.unresolved_attempts(self.clock.now() - older_than, limit, awaiting_customer)
            calls = []
            for attempt in rows:
                payment = s.payment(attempt["payment_id"])
                assert payment is not None
                calls.append(self._call(payment, attempt))
            return calls

        return self._run(step)

    def resolve_attempt(
        self, attempt_id: str, outcome: ProviderOutcome
    ) -> tuple[StepResult, ProviderCall | None]:
        """Apply what a lookup by provider idempotency key said.

        Authorizations waiting for the customer (3DS) are looked up by the
        provider's object instead, and stay waiting until it moves on.
        ``unknown`` (the provider could not tell) keeps the attempt open;
        ``not_found`` (the provider never received it) returns the same call,
        with the same key, to send again; anything else is applied as an answer.
        Each ``unknown`` (and each poll of a customer still to act) moves the
        attempt along ``settings.recovery_schedule`` (``next_lookup_at``); after
        its last step the attempt is flagged ``needs_review`` and stays open.
        """

        def step(s: Store) -> tuple[StepResult, ProviderCall | None]:
            payment, attempt = self._locked_attempt(s, attempt_id)
            view = PaymentView.of(payment)
            awaiting = attempt["status"] == "requires_action"
            if awaiting and payment["state"] != S.REQUIRES_ACTION:
                awaiting = False  # the payment moved on by another path
            if attempt["status"] not in OPEN_ATTEMPT and not awaiting:
                return StepResult(view, 200), None
            lookups = attempt["lookup_count"] + 1
            waiting = awaiting and outcome.status in CUSTOMER_TO_ACT
            unknown = outcome.status is O.UNKNOWN and not awaiting
            schedule = self._next_lookup(lookups) if unknown or waiting else {}
            s.update_attempt(attempt_id, lookup_count=lookups, updated_at=self.clock.now(),
                             **schedule)  # fmt: skip
            if waiting:
                return StepResult(view, 200), None  # still waiting for the customer
            if outcome.status is O.NOT_FOUND:
                return StepResult(view, 202), self._call(payment, attempt)
            reason = f"{attempt['kind']}_{outcome.status}_by_lookup"
            code = self._apply(s, payment, attempt, outcome, reason)
            view = self._finish_key(s, attempt["idempotency_id"], code, payment,
                                    attempt["refund_id"])  # fmt: skip
            return StepResult(view, code), None

        return self._run(step)

    def _next_lookup(self, lookups: int) -> dict[str, Any]:
        """After ``lookups`` answers of "unknown": when to ask again, or flag for review."""
        schedule = self.settings.recovery_schedule
        if lookups < len(schedule):
            return {"next_lookup_at": self.clock.now() + schedule[lookups]}
        return {"next_lookup_at": None, "needs_review": True}

    def due_attempts(self, limit: int = 100) -> list[ProviderCall]:
        """Attempts whose scheduled lookup is due and that are not flagged for review:
        the open ones, and authorizations whose payment still waits for the customer
        (3DS), whose answer may come only by a webhook that can be lost."""
        limit = min(limit, self.settings.page_size_max)
        return self._run(lambda s: self._calls(s, s.due_attempts(self.clock.now(), limit)))

    def attempts_to_recover(self, limit: int = 100) -> list[ProviderCall]:
        """What recovery will still look up, due now or later (the review flag ends it)."""
        limit = min(limit, self.settings.page_size_max)
        return self._run(lambda s: self._calls(s, s.due_attempts(None, limit)))

    def attempts_for_review(self, limit: int = 100) -> list[ProviderCall]:
        """Attempts the provider could not explain by the schedule's end (or whose
        customer never acted): a person's job."""
        limit = min(limit, self.settings.page_size_max)
        return self._run(lambda s: self._calls(s, s.review_attempts(limit)))

    def _calls(self, s: Store, attempts: list[Row]) -> list[ProviderCall]:
        calls = []
        for attempt in attempts:
            payment = s.payment(attempt["payment_id"])
            assert payment is not None
            calls.append(self._call(payment, attempt))
        return calls

    # -- provider events --------------------------------------------------------------
    def apply_provider_event(self, event: ProviderEvent) -> EventResult:
        def step(s: Store) -> EventResult:
            s.read_ahead_event(
                event.event_id, event.payment_id, inbox=False, attempts=EVENT_ATTEMPTS
            )
            return self._take_event(s, event)

        return self._run(step)

    def _take_event(self, s: Store, event: ProviderEvent) -> EventResult:
        if event.type in (EventType.PAYOUT_PAID, EventType.PAYOUT_FAILED):
            return self._take_payout_event(s, event)
        payment = self._event_payment(s, event)
        if s.provider_event(event.event_id) is not None:
            return EventResult("duplicate", payment["id"] if payment else None)
        outcome = "unmatched"
        if payment is not None:
            before = payment["history_count"]
            outcome = self._apply_event(s, payment, event)
            if outcome == "applied" and payment["history_count"] == before:
                outcome = "applied_no_change"
        s.insert_provider_event(
            {
                "id": self.ids.new_id("pev"), "provider_event_id": event.event_id,
                "type": event.type, "payment_id": payment["id"] if payment else None,
                "outcome": outcome, "received_at": self.clock.now(),
            }
        )  # fmt: skip
        return EventResult(outcome, payment["id"] if payment else None)

    def _take_payout_event(self, s: Store, event: ProviderEvent) -> EventResult:
        if s.provider_event(event.event_id) is not None:
            return EventResult("duplicate")
        row = s.payout(event.payout_id, lock=True) if event.payout_id else None
        if row is None and event.provider_payout_id is not None:
            found = s.payout_by_provider_id(event.provider_payout_id)
            row = s.payout(found["id"], lock=True) if found else None
        outcome = "unmatched" if row is None else payouts.apply_event(self, s, row, event)
        s.insert_provider_event({
            "id": self.ids.new_id("pev"), "provider_event_id": event.event_id,
            "type": event.type, "payment_id": None, "outcome": outcome,
            "received_at": self.clock.now(),
        })  # fmt: skip
        return EventResult(outcome)

    # -- payouts ------------------------------------------------------------------------
    def begin_payout(self, command: CreatePayout) -> payouts.PayoutResult:
        """Reserve a payout from the seller's available balance: the call to make, or a replay."""

        def step(s: Store) -> payouts.PayoutResult:
            key = self._saved_key(s, command)
            if key is not None:
                body = key["response_body"]
                return payouts.PayoutResult(dict(body["payout"]), key["response_code"], None, True)
            key_id = self._new_key(s, command)
            return payouts.begin(self, s, command, key_id)

        return self._run(step)

    def complete_payout(
        self, payout_id: str, outcome: ProviderOutcome, *, looked_up: bool = False
    ) -> payouts.PayoutResult:
        """Apply a payout call's answer, or (``looked_up``) a lookup's by its key."""

        def step(s: Store) -> payouts.PayoutResult:
            row = payouts.complete(self, s, payout_id, outcome, looked_up)
            code = 202 if row["status"] in payouts.OPEN else 200
            if row["idempotency_id"] is not None and code == 200:
                s.finish_idempotency_key(row["idempotency_id"], code,
                                         {"payout": payouts.view(row)})  # fmt: skip
            return payouts.PayoutResult(payouts.view(row), code)

        return self._run(step)

    def due_payouts(self, limit: int = 100) -> list[ProviderCall]:
        """Payout calls whose outcome is unknown and whose lookup is due."""
        now = self.clock.now()
        return self._run(lambda s: [payouts.call_of(row) for row in s.due_payouts(now, limit)])

    def open_payouts(self, limit: int = 100) -> list[dict[str, Any]]:
        """Payouts whose provider call has no answer yet (pending or unknown)."""
        far = self.clock.now() + timedelta(days=36_500)
        return self._run(lambda s: [payouts.view(row) for row in s.due_payouts(far, limit)])

    def payouts(self, seller_id: str | None = None, limit: int = 1_000) -> list[dict[str, Any]]:
        return self._run(lambda s: [payouts.view(row) for row in s.payouts_of(seller_id, limit)])

    # -- webhook inbox and its dead letters ----------------------------------------------
    def store_webhook(self, provider_event_id: str, event_type: str, payload: str) -> str:
        """Keep a verified delivery durably before answering 2xx: ``stored`` or ``duplicate``."""
        self._check_webhook(provider_event_id, event_type, payload)
        return self._run(lambda s: self._keep_webhook(s, provider_event_id, event_type, payload))

    def take_webhook(self, event: ProviderEvent, payload: str) -> tuple[str, str | None]:
        """Keep a verified delivery and apply it, in one transaction where it applies.

        ``("duplicate", None)`` for an event already kept; ``("applied", outcome)``
        with the event's outcome when the row and the application committed as one
        unit of work; ``("pending", error)`` when the application failed (an event
        too early, for one): the row alone is kept with the failure counted, for the
        inbox worker to retry, exactly as a failed ``apply_webhook`` leaves it.
        """
        self._check_webhook(event.event_id, event.type, payload)

        def step(s: Store) -> tuple[str, str | None]:
            s.read_ahead_event(
                event.event_id, event.payment_id, inbox=True, attempts=EVENT_ATTEMPTS
            )
            if self._keep_webhook(s, event.event_id, event.type, payload, applied=True) != "stored":
                return "duplicate", None
            return "applied", self._take_event(s, event).outcome

        try:
            return self._run(step)
        except (StoreUnavailable, LedgerGuardRefused):
            raise
        except PaychaosError as exc:
            error = _error_text(exc)
        kept = self._run(
            lambda s: self._keep_webhook(s, event.event_id, event.type, payload, error=error)
        )
        return ("pending", error) if kept == "stored" else ("duplicate", None)

    def _check_webhook(self, provider_event_id: str, event_type: str, payload: str) -> None:
        if not 0 < len(provider_event_id) <= 255 or not 0 < len(event_type) <= 64:
            raise InvalidRequest("webhook_malformed", "event id or type is missing or too long")
        if len(payload.encode()) > self.settings.webhook_payload_bytes_max:
            raise InvalidRequest("webhook_too_large", "webhook payload is too large", "body")

    def _keep_webhook(
        self,
        s: Store,
        provider_event_id: str,
        event_type: str,
        payload: str,
        *,
        applied: bool = False,
        error: str | None = None,
    ) -> str:
        """The inbox row: pending, applied (its event applied in this unit) or pending
        after one failed application (``error``); ``duplicate`` if the event is kept."""
        if s.inbox_by_event(provider_event_id) is not None:
            return "duplicate"
        now = self.clock.now()
        attempts = int(applied or error is not None)
        status = "applied" if applied else "pending"
        if error is not None:
            status = self._status_after_failure(attempts)
        s.insert_inbox(
            {
                "provider_event_id": provider_event_id, "type": event_type,
                "payload": payload, "status": status, "attempts": attempts,
                "last_error": error, "received_at": now,
                "applied_at": now if applied else None,
            }
        )  # fmt: skip
        return "stored"

    def pending_webhooks(self, limit: int = 100) -> list[int]:
        """Inbox rows waiting to be applied, oldest first."""
        return self._run(lambda s: s.pending_inbox(min(limit, self.settings.page_size_max)))

    def apply_webhook(self, inbox_id: int, translate: Translate) -> InboxResult:
        """Translate and apply one pending inbox row in one transaction, or count a failure."""

        def step(s: Store) -> InboxResult:
            row = s.inbox_row(inbox_id, lock=True)
            if row is None or row["status"] != "pending":
                return InboxResult(inbox_id, row["provider_event_id"] if row else None, "skipped")
            result = self._take_event(s, translate(json.loads(row["payload"])))
            s.update_inbox(inbox_id, status="applied", attempts=row["attempts"] + 1,
                           applied_at=self.clock.now())  # fmt: skip
            return InboxResult(inbox_id, row["provider_event_id"], "applied", result.outcome)

        try:
            return self._run(step)
        except (StoreUnavailable, LedgerGuardRefused):
            raise
        except (PaychaosError, ValueError, KeyError, TypeError) as exc:
            error = _error_text(exc)
        return self._run(lambda s: self._webhook_failed(s, inbox_id, error))

    def _status_after_failure(self, attempts: int) -> str:
        """A webhook whose ``attempts``-th application failed: tried again, or dead."""
        return "dead" if attempts >= self.settings.webhook_attempts_max else "pending"

    def _webhook_failed(self, s: Store, inbox_id: int, error: str) -> InboxResult:
        row = s.inbox_row(inbox_id, lock=True)
        assert row is not None
        attempts = row["attempts"] + 1
        status = self._status_after_failure(attempts)
        s.update_inbox(inbox_id, status=status, attempts=attempts, last_error=error)
        return InboxResult(inbox_id, row["provider_event_id"], status, error=error)

    def dead_letters(self, limit: int = 100) -> list[InboxItem]:
        limit = min(limit, self.settings.page_size_max)
        return self._run(lambda s: [InboxItem.of(row) for row in s.dead_inbox(limit)])

    def retry_dead_letter(self, provider_event_id: str) -> InboxItem:
        """Put a dead letter back in line, with a fresh count of attempts."""

        def step(s: Store) -> InboxItem:
            row = s.inbox_by_event(provider_event_id, lock=True)
            if row is None:
                raise NotFound("dead_letter_not_found", f"no webhook {provider_event_id} in "
                               "the inbox", field="event_id")  # fmt: skip
            if row["status"] != "dead":
                state = row["status"]
                raise Conflict("not_a_dead_letter", f"webhook {provider_event_id} is {state}")
            s.update_inbox(row["id"], status="pending", attempts=0)
            row.update(status="pending", attempts=0)
            return InboxItem.of(row)

        return self._run(step)

    def _event_payment(self, s: Store, event: ProviderEvent) -> Row | None:
        if event.payment_id is not None:
            payment = s.payment(event.payment_id, lock=True)
            if payment is not None:
                return payment
        if event.provider_payment_id is not None:
            return s.payment_by_provider_id(event.provider_payment_id, lock=True)
        return None

    def _apply_event(self, s: Store, p: Row, event: ProviderEvent) -> str:
        """Bring the payment forward to what the event says, or call the event stale."""
        if event.type not in EventType._value2member_map_:
            return "ignored"
        event_type = EventType(event.type)
        if event_type in DISPUTE_EVENTS:
            return self._apply_dispute(s, p, event)
        state = S(p["state"])
        kind = EVENT_CALL_KINDS.get(event_type) or (
            CallKind.AUTHORIZE if state in PRE_AUTHORIZATION else CallKind.CAPTURE
        )
        if not self._event_is_current(state, kind):
            return "stale"
        outcome = self._event_outcome(event, kind)
        reason = f"{kind.value}_{outcome.status}_by_event"
        attempt = self._event_attempt(s, p, event, kind)
        if attempt is not None:
            code = self._apply(s, p, attempt, outcome, reason, event.event_id)
            self._finish_key(s, attempt["idempotency_id"], code, p, attempt["refund_id"])
            return "applied"
        if kind in {CallKind.CAPTURE, CallKind.REFUND}:
            return "stale"  # the engine alone starts these: nothing open means done
        # The provider moved on its own (3DS completed, an intent expired).
        apply = self._apply_authorize if kind is CallKind.AUTHORIZE else self._apply_void
        apply(s, p, None, outcome, outcome.status, reason, event.event_id)
        return "applied"

    @staticmethod
    def _event_outcome(event: ProviderEvent, kind: CallKind) -> ProviderOutcome:
        status = {
            EventType.REQUIRES_ACTION: O.REQUIRES_ACTION,
            EventType.PAYMENT_FAILED: O.DECLINED,
            EventType.REFUND_FAILED: O.DECLINED,
        }.get(EventType(event.type), O.SUCCEEDED)
        return ProviderOutcome(
            status=status,
            provider_payment_id=event.provider_payment_id,
            provider_refund_id=event.provider_refund_id,
            amount_minor=event.amount_minor,
            captured=event.type == EventType.SUCCEEDED and kind is CallKind.AUTHORIZE,
            fee_minor=event.fee_minor,
            decline_code=event.decline_code,
            # A Stripe intent event never carries the fee: zero means "not said".
            fee_known=event.fee_minor > 0,
        )

    @staticmethod
    def _event_is_current(state: S, kind: CallKind) -> bool:
        if kind is CallKind.AUTHORIZE:
            return state in PRE_AUTHORIZATION
        if kind is CallKind.CAPTURE:
            return state is S.AUTHORIZED
        if kind is CallKind.VOID:
            return is_legal(state, S.CANCELED)
        return True  # refunds are matched by refund id below

    def _event_attempt(self, s: Store, p: Row, event: ProviderEvent, kind: CallKind) -> Row | None:
        statuses = EVENT_ATTEMPT_STATUSES if kind is CallKind.AUTHORIZE else OPEN_ATTEMPT
        candidates = [
            a for a in s.attempts_of(p["id"], *EVENT_ATTEMPTS)
            if a["kind"] == kind.value and a["status"] in statuses
        ]  # fmt: skip
        if kind is CallKind.REFUND:
            candidates = [a for a in candidates if a["refund_id"] == event.refund_id]
        return candidates[0] if candidates else None

    def _apply_dispute(self, s: Store, p: Row, event: ProviderEvent) -> str:
        state = S(p["state"])
        if event.type == EventType.DISPUTE_CREATED and state in BEFORE_CAPTURE:
            # The provider captured (the dispute proves it) but the engine has not
            # learned it yet: refuse the delivery, the provider sends it again.
            raise EventTooEarly(message=f"payment {p['id']} is {state.value}: not captured yet")
        amount = event.amount_minor or (p["captured_minor"] - p["refunded_minor"])
        if event.type == EventType.DISPUTE_CREATED:
            if not is_legal(state, S.DISPUTED) or amount <= 0:
                return "stale"
            seq = self._move(s, p, S.DISPUTED, "dispute_created_by_event",
                             event_id=event.event_id, amount_minor=amount,
                             disputed_minor=amount)  # fmt: skip
            money = self._money(p, amount)
            if p["lines_count"]:
                shares = splits.dispute_shares(s, p, amount, self.clock.now())
                journal = ledger.split_dispute_withdrawal(p["merchant_id"], money, shares)
            else:
                journal = ledger.dispute_withdrawal(money)
            fee = ledger.dispute_fee(self._money(p, event.fee_minor), returned=False)
            self._post(s, p, ledger.Journal(journal.kind, journal.entries + fee), seq)
            return "applied"
        if state is not S.DISPUTED:
            opened = any(row["reason"] == "dispute_created_by_event" for row in s.history(p["id"]))
            # An opening taken as stale (e.g. the charge was refunded in full before it)
            # makes its decision stale too; one not seen yet is on its way: take it first.
            if not opened and not s.event_seen(p["id"], EventType.DISPUTE_CREATED.value):
                raise EventTooEarly(message=f"payment {p['id']} has no dispute open yet")
            return "stale"
        if event.type == EventType.DISPUTE_WON:
            disputed = p["disputed_minor"]
            won = S.REFUNDED if p["refunded_minor"] == p["captured_minor"] else S.SETTLED
            seq = self._move(s, p, won, "dispute_won_by_event", event_id=event.event_id,
                             amount_minor=disputed, disputed_minor=0)  # fmt: skip
            money = self._money(p, disputed)
            if p["lines_count"]:
                shares = splits.reinstatement_shares(s, p, disputed, self.clock.now())
                journal = ledger.split_dispute_reinstatement(p["merchant_id"], money, shares)
            else:
                journal = ledger.dispute_reinstatement(money)
            fee = ledger.dispute_fee(self._money(p, event.fee_minor), returned=True)
            self._post(s, p, ledger.Journal(journal.kind, journal.entries + fee), seq)
        return "applied"

    # -- reads ------------------------------------------------------------------------------
    def get_payment(
        self, payment_id: str, merchant_id: str | None = None, *, with_lines: bool = False
    ) -> PaymentView:
        """A payment with its history and refunds (and, ``with_lines``, a split payment's
        lines), read in one unit of work; another merchant's payment is not found."""
        parse_identifier(payment_id, "payment_id")

        def step(s: Store) -> PaymentView:
            payment = self._owned(s, payment_id, merchant_id)
            view = PaymentView.of(payment)
            history = tuple(history_item(row) for row in s.history(payment_id))
            refunds = tuple(refund_item(row) for row in s.refunds_of(payment_id))
            lines = tuple(s.lines_of(payment_id)) if with_lines and payment["lines_count"] else ()
            return PaymentView(view.body, history, refunds, lines)

        return self._run(step)

    def list_payments(
        self, merchant_id: str, order_id: str | None = None, limit: int = 20, offset: int = 0
    ) -> list[PaymentView]:
        if not 1 <= limit <= self.settings.page_size_max:
            raise InvalidRequest(
                "limit_invalid", f"limit is 1 to {self.settings.page_size_max}", field="limit"
            )
        if not 0 <= offset <= self.settings.page_offset_max:
            raise InvalidRequest(
                "offset_invalid", f"offset is 0 to {self.settings.page_offset_max}", field="offset"
            )
        if order_id is not None:
            parse_identifier(order_id, "order_id")

        def step(s: Store) -> list[PaymentView]:
            rows = s.payments(merchant_id, order_id, limit, offset)
            return [PaymentView.of(row) for row in rows]

        return self._run(step)

    def ledger_of(
        self, payment_id: str, merchant_id: str | None = None
    ) -> list[tuple[Row, list[Row]]]:
        """A payment's journals with their entries; another merchant's is not found."""
        parse_identifier(payment_id, "payment_id")

        def step(s: Store) -> list[tuple[Row, list[Row]]]:
            if merchant_id is not None:
                self._owned(s, payment_id, merchant_id)
            return s.journals_of(payment_id)

        return self._run(step)

    # -- settlement -------------------------------------------------------------------------
    def settle_payment(self, payment_id: str, reason: str = "settlement_matched") -> bool:
        """The provider's settlement report matched the charge: the payment is settled and
        its sellers' shares move from pending to available. Idempotent: False if nothing moved."""

        def step(s: Store) -> bool:
            p = self._locked(s, payment_id)
            changed = False
            seq: int | None = None
            if is_legal(S(p["state"]), S.SETTLED) and S(p["state"]) is not S.DISPUTED:
                seq = self._move(s, p, S.SETTLED, reason)
                changed = True
            if p["lines_count"]:
                moves = splits.settlement_moves(s, p, self.clock.now())
                if any(amount for _, amount in moves):
                    self._post(s, p, ledger.split_settlement(p["currency"], moves), seq)
                changed = changed or bool(moves)
            return changed

        return self._run(step)

    # -- marketplace ------------------------------------------------------------------------
    def set_fee_plan(self, seller_id: str, plan: FeePlan) -> None:
        """A seller's platform fee for payments made from now on (lines keep theirs)."""
        parse_identifier(seller_id, "seller_id")
        now = self.clock.now()

        def step(s: Store) -> None:
            s.set_fee_plan(seller_id, plan.percent_bps, plan.fixed_minor, now)

        self._run(step)

    def lines_of(self, payment_id: str) -> list[Row]:
        """A split payment's lines (sellers, allocations, fees); empty for a plain payment."""
        return self._run(lambda s: s.lines_of(payment_id))

    def wallets(self) -> list[Row]:
        """Every seller's materialised balances, per currency."""
        return self._run(lambda s: s.wallets())

    def seller_ledger_balances(self) -> dict[tuple[str, str], dict[str, int]]:
        """Sellers' balances derived from the ledger alone: (seller, currency) -> buckets."""
        rows = self._run(lambda s: s.balances_with_prefix("seller_"))
        balances: dict[tuple[str, str], dict[str, int]] = {}
        for account, currency, debits_minus_credits in rows:
            bucket_account, seller_id = account.split(":", 1)
            bucket = bucket_account.removeprefix("seller_")
            entry = balances.setdefault((seller_id, currency), {"pending": 0, "available": 0})
            entry[bucket] = -debits_minus_credits  # a seller's balance is credit-normal
        return balances

    def merchant_balance(self, merchant_id: str) -> dict[str, dict[str, int]]:
        """What the merchant is owed per currency: ``available`` (captured, net of
        refunds) and ``pending`` (authorizations held, not yet captured)."""
        accounts = [
            ledger.merchant_payable(merchant_id),
            ledger.holds_merchant_payable(merchant_id),
        ]
        rows = self._run(lambda s: s.account_balances(accounts))
        balance: dict[str, dict[str, int]] = {}
        for account, currency, debits_minus_credits in rows:
            kind = "pending" if account.startswith("holds:") else "available"
            entry = balance.setdefault(currency, {"available": 0, "pending": 0})
            entry[kind] = -debits_minus_credits  # payables are credit-normal
        return balance

    # -- outbox relay -------------------------------------------------------------------------
    def unpublished_events(self, limit: int = 100) -> list[OutboxEvent]:
        """Outbox events not yet published, oldest first (at-least-once relay)."""
        limit = min(limit, self.settings.page_size_max * 10)
        return self._run(
            lambda s: [
                OutboxEvent(row["id"], row["event_id"], row["type"], row["payment_id"],
                            row["history_seq"], dict(row["payload"]))
                for row in s.unpublished_outbox(limit)
            ]
        )  # fmt: skip

    def mark_published(self, events: list[OutboxEvent]) -> None:
        """Record that these events reached the bus; a crash before this republishes them."""
        self._run(lambda s: s.mark_outbox_published([e.sequence for e in events], self.clock.now()))

    # -- housekeeping -------------------------------------------------------------------------
    def expire_idempotency_keys(self) -> int:
        """Forget completed keys past their retention; returns how many went."""
        return self._run(
            lambda s: s.expire_idempotency_keys(self.clock.now(), self.settings.expiry_batch_max)
        )


def _error_text(exc: Exception) -> str:
    """An error as kept in the inbox: short, and with anything like a key or card blanked."""
    if isinstance(exc, PaychaosError):
        text = f"{exc.code}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return _SECRET.sub("[redacted]", text)[:ERROR_TEXT_MAX]
