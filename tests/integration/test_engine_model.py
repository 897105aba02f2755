"""The engine against a small reference model, driven by random sequences.

The world of this test: the engine on in-memory SQLite with a fixed clock and
seeded ids; a ``FakeProvider`` that also sends the webhooks a PSP would send
(``WebhookProvider``) and whose customers complete or abandon 3DS and open
disputes; and clients that retry with the same key, double-click with a new
one, hit timeouts before or after the provider did the work, and crash
between the steps of an operation; the recovery worker looks attempts in
doubt up by key and polls 3DS authorizations. ``Model`` says what every step
must answer (or refuse, changing nothing) and what every payment must then look
like; the invariants check the ledger, the amounts, the provider's truth and,
after recovery, that the engine and the provider agree. The paths a run reached
are counted: ``pytest --hypothesis-show-statistics`` lists them.

The model follows the engine's documented rules (the state table in
``engine.domain.states`` is the specification it shares with the engine); the
one simplification is that a client never retries an authorization with a
fault while a 3DS challenge is open, because webhooks carry no attempt id and
the engine cannot (and the model would have to guess how it does) tell two
authorization attempts of one payment apart.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import currently_in_test_context, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from typer.testing import CliRunner

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider, Truth, provider_fee_minor
from engine.audit import audit
from engine.domain.commands import (
    Authorize,
    Capture,
    CreatePayment,
    Operation,
    Refund,
    Void,
)
from engine.domain.errors import (
    AmountExceeded,
    EventTooEarly,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    IllegalTransition,
    NotFound,
    OperationInProgress,
    OrderAlreadyActive,
    PaychaosError,
)
from engine.domain.ports import FixedClock, SeededIds
from engine.domain.provider import (
    CallKind,
    EventType,
    OutcomeStatus,
    ProviderCall,
    ProviderEvent,
    ProviderOutcome,
)
from engine.domain.states import HOLDS_ORDER, PaymentState, is_legal
from engine.entrypoints.cli import app
from engine.service.driver import perform, recover
from engine.service.engine import PaymentEngine
from engine.service.views import StepResult

S = PaymentState
O = OutcomeStatus  # noqa: E741

MERCHANTS = ("m_alpha", "m_beta")
ORDERS = ("order-1", "order-2", "order-3")
CURRENCIES = ("USD", "JPY", "KWD")
VISA = "pm_card_visa"
THREE_DS = "pm_card_authenticationRequired"
DECLINED = "pm_card_chargeDeclined"
FAULTS = ("none", "none", "before", "after", "crash_before_call", "crash_after_call")
AMOUNT_CHOICES = ("all", "part", "exact", "over")
PICK = st.integers(0, 4_000)

PRE_AUTHORIZATION = {S.CREATED, S.REQUIRES_ACTION, S.PROCESSING}
REFUNDABLE = {S.PARTIALLY_CAPTURED, S.CAPTURED, S.PARTIALLY_REFUNDED, S.SETTLED}
CAPTURED_AT_PROVIDER = REFUNDABLE | {S.REFUNDED, S.DISPUTED}
RESPONSE_CODE = {O.SUCCEEDED: 200, O.DECLINED: 402, O.REQUIRES_ACTION: 200, O.UNKNOWN: 202}
EVENT_KINDS = {
    EventType.REQUIRES_ACTION: CallKind.AUTHORIZE,
    EventType.AUTHORIZED: CallKind.AUTHORIZE,
    EventType.PAYMENT_FAILED: CallKind.AUTHORIZE,
    EventType.CANCELED: CallKind.VOID,
    EventType.REFUND_SUCCEEDED: CallKind.REFUND,
    EventType.REFUND_FAILED: CallKind.REFUND,
}
EVENT_STATUS = {
    EventType.REQUIRES_ACTION: O.REQUIRES_ACTION,
    EventType.PAYMENT_FAILED: O.DECLINED,
    EventType.REFUND_FAILED: O.DECLINED,
}
DISPUTE_EVENTS = {EventType.DISPUTE_CREATED, EventType.DISPUTE_WON, EventType.DISPUTE_LOST}
Command = CreatePayment | Authorize | Capture | Void | Refund


def path(name: str) -> None:
    """Count an interesting path (``pytest --hypothesis-show-statistics`` lists them)."""
    if currently_in_test_context():
        event(name)


# -- the provider's side of the world -------------------------------------------------


@dataclass(slots=True)
class ThreeDSChallenge:
    amount_minor: int
    capture_method: str
    answer: ProviderOutcome | None = None  # set once the customer completes or abandons it


class WebhookProvider(FakeProvider):
    """The fake PSP plus its webhooks, its 3DS customers and their disputes.

    Every time the provider really does something it queues the webhook a PSP
    would send; the test decides when (and how often, in which order) each one
    is delivered.
    """

    def __init__(self, clock: FixedClock) -> None:
        super().__init__()
        self.clock = clock
        self.sent: list[ProviderEvent] = []
        self.challenges: dict[str, ThreeDSChallenge] = {}
        self.disputes: dict[str, str] = {}  # payment id -> "open" | "decided"
        self._settled_answer = False

    def _perform(self, call: ProviderCall) -> ProviderOutcome:
        self._settled_answer = False
        outcome = FakeProvider._perform(self, call)
        if not self._settled_answer:
            self._announce(call.kind, call.payment_id, outcome, call.refund_id)
        return outcome

    def lookup(self, call: ProviderCall) -> ProviderOutcome:
        """By key; a 3DS authorization by the intent as it is now (the customer may have acted)."""
        challenge = self.challenges.get(call.payment_id)
        if call.awaiting_action and challenge is not None and challenge.answer is not None:
            return challenge.answer
        return FakeProvider.lookup(self, call)

    def _authorize(self, call: ProviderCall, truth: Truth, provider_id: str) -> ProviderOutcome:
        if call.payment_method == THREE_DS:
            challenge = self.challenges.setdefault(
                call.payment_id, ThreeDSChallenge(call.amount_minor, call.capture_method)
            )
            if challenge.answer is not None:  # the intent already has its outcome
                self._settled_answer = True
                return challenge.answer
        return FakeProvider._authorize(self, call, truth, provider_id)

    def _announce(
        self, kind: CallKind, payment_id: str, outcome: ProviderOutcome, refund_id: str | None
    ) -> None:
        types = {
            (CallKind.AUTHORIZE, O.SUCCEEDED): (
                EventType.SUCCEEDED if outcome.captured else EventType.AUTHORIZED
            ),
            (CallKind.AUTHORIZE, O.DECLINED): EventType.PAYMENT_FAILED,
            (CallKind.AUTHORIZE, O.REQUIRES_ACTION): EventType.REQUIRES_ACTION,
            (CallKind.CAPTURE, O.SUCCEEDED): EventType.SUCCEEDED,
            (CallKind.VOID, O.SUCCEEDED): EventType.CANCELED,
            (CallKind.REFUND, O.SUCCEEDED): EventType.REFUND_SUCCEEDED,
            (CallKind.REFUND, O.DECLINED): EventType.REFUND_FAILED,
        }
        event_type = types.get((kind, outcome.status))
        if event_type is None:
            return  # a refused capture or void changes nothing a webhook would tell
        self.send(
            event_type,
            payment_id,
            refund_id=refund_id,
            provider_refund_id=outcome.provider_refund_id,
            amount_minor=outcome.amount_minor,
            fee_minor=outcome.fee_minor,
            decline_code=outcome.decline_code,
        )

    def send(self, event_type: EventType, payment_id: str, **fields: Any) -> None:
        self.sent.append(
            ProviderEvent(
                event_id=f"evt_psp_{len(self.sent) + 1}",
                type=event_type.value,
                created_at=self.clock.now(),
                payment_id=payment_id,
                provider_payment_id=f"pi_{payment_id}",
                **fields,
            )
        )

    def open_challenges(self) -> list[str]:
        return [
            payment_id
            for payment_id, challenge in self.challenges.items()
            if challenge.answer is None and not self.truth_of(payment_id).canceled
        ]

    def customer_answers_challenge(self, payment_id: str, passes: bool) -> None:
        challenge = self.challenges[payment_id]
        truth = self.truth.setdefault(payment_id, Truth())
        amount = challenge.amount_minor
        if not passes:
            challenge.answer = ProviderOutcome(
                O.DECLINED, f"pi_{payment_id}", decline_code="authentication_failed"
            )
        elif challenge.capture_method == "automatic":
            truth.authorized_minor = truth.captured_minor = amount
            truth.charges += 1
            challenge.answer = ProviderOutcome(
                O.SUCCEEDED, f"pi_{payment_id}", amount_minor=amount, captured=True,
                fee_minor=provider_fee_minor(amount),
            )  # fmt: skip
        else:
            truth.authorized_minor = amount
            truth.charges += 1
            challenge.answer = ProviderOutcome(O.SUCCEEDED, f"pi_{payment_id}", amount_minor=amount)
        self._announce(CallKind.AUTHORIZE, payment_id, challenge.answer, None)

    def truth_of(self, payment_id: str) -> Truth:
        return self.truth.get(payment_id) or Truth()

    def disputable(self) -> list[str]:
        return [
            payment_id
            for payment_id, truth in self.truth.items()
            if truth.captured_minor > 0 and payment_id not in self.disputes
        ]

    def open_disputes(self) -> list[str]:
        return [payment_id for payment_id, status in self.disputes.items() if status == "open"]


# -- the reference model --------------------------------------------------------------


@dataclass(slots=True)
class ModelPayment:
    id: str
    merchant_id: str
    order_id: str
    amount_minor: int
    currency: str
    payment_method: str
    capture_method: str
    state: S = S.CREATED
    authorized_minor: int = 0
    captured_minor: int = 0
    refunded_minor: int = 0
    refund_reserved_minor: int = 0
    fee_minor: int = 0
    disputed_minor: int = 0
    history_count: int = 1
    dispute_seen: bool = False

    @property
    def refundable_minor(self) -> int:
        return self.captured_minor - self.refunded_minor - self.refund_reserved_minor


@dataclass(slots=True)
class ModelAttempt:
    id: str
    payment_id: str
    kind: CallKind
    amount_minor: int
    key: tuple[str, str, str]
    refund_id: str | None = None


@dataclass(slots=True)
class ModelKey:
    command: Command
    status: str = "in_flight"  # "in_flight" | "completed"
    code: int | None = None
    response: StepResult | None = None  # what the client was told, when it was told


def key_of(command: Command) -> tuple[str, str, str]:
    operation: Operation = command.operation
    return command.merchant_id, operation.value, command.idempotency_key


@dataclass
class Model:
    payments: dict[str, ModelPayment] = field(default_factory=dict)
    attempts: dict[str, ModelAttempt] = field(default_factory=dict)  # the open ones
    keys: dict[tuple[str, str, str], ModelKey] = field(default_factory=dict)
    order_holders: dict[tuple[str, str], str] = field(default_factory=dict)
    delivered: set[str] = field(default_factory=set)
    # Authorizations the provider answered with a 3DS challenge, by attempt id.
    challenged: dict[str, str] = field(default_factory=dict)

    def awaiting_customer(self) -> set[str]:
        """Challenged attempts whose payment still waits: recovery polls them."""
        return {
            attempt_id
            for attempt_id, payment_id in self.challenged.items()
            if self.payments[payment_id].state is S.REQUIRES_ACTION
        }

    def poll(self, p: ModelPayment, answer: ProviderOutcome) -> None:
        """What polling a 3DS authorization teaches: the customer's answer, once given."""
        if p.state is S.REQUIRES_ACTION and answer.status in {O.SUCCEEDED, O.DECLINED}:
            self._learn_authorize(p, None, answer, answer.status)

    # -- moves ------------------------------------------------------------------------
    @staticmethod
    def move(p: ModelPayment, to_state: S) -> None:
        assert is_legal(p.state, to_state), f"model: {p.id} cannot go {p.state} -> {to_state}"
        p.state = to_state
        p.history_count += 1

    def release_order(self, p: ModelPayment) -> None:
        if self.order_holders.get((p.merchant_id, p.order_id)) == p.id:
            del self.order_holders[(p.merchant_id, p.order_id)]

    def open_attempts(self, payment_id: str, *kinds: CallKind) -> list[ModelAttempt]:
        return [a for a in self.attempts.values() if a.payment_id == payment_id and a.kind in kinds]

    # -- what a begin step must refuse ------------------------------------------------
    def authorize_refusal(self, p: ModelPayment) -> type[PaychaosError] | None:
        if p.state not in {S.CREATED, S.REQUIRES_ACTION}:
            return IllegalTransition
        if self.open_attempts(p.id, CallKind.AUTHORIZE, CallKind.VOID):
            return OperationInProgress
        holder = self.order_holders.get((p.merchant_id, p.order_id))
        if holder is not None and holder != p.id:
            return OrderAlreadyActive
        return None

    def capture_refusal(self, p: ModelPayment, amount: int | None) -> type[PaychaosError] | None:
        if p.state is not S.AUTHORIZED:
            return IllegalTransition
        if self.open_attempts(p.id, CallKind.CAPTURE, CallKind.VOID):
            return OperationInProgress
        if (amount or p.authorized_minor) > p.authorized_minor:
            return AmountExceeded
        return None

    def void_refusal(self, p: ModelPayment) -> type[PaychaosError] | None:
        if p.state is S.PROCESSING:
            return OperationInProgress
        if not is_legal(p.state, S.CANCELED):
            return IllegalTransition
        if self.open_attempts(p.id, CallKind.AUTHORIZE, CallKind.CAPTURE, CallKind.VOID):
            return OperationInProgress
        return None

    def refund_refusal(self, p: ModelPayment, amount: int | None) -> type[PaychaosError] | None:
        if p.state not in REFUNDABLE:
            return IllegalTransition
        wanted = amount or p.refundable_minor
        if wanted <= 0 or wanted > p.refundable_minor:
            return AmountExceeded
        return None

    # -- begin steps that went through ------------------------------------------------
    def begin(self, command: Command, begun: StepResult) -> None:
        assert not isinstance(command, CreatePayment)
        p = self.payments[command.payment_id]
        record = ModelKey(command)
        self.keys[key_of(command)] = record
        if begun.call is None:  # a void before any authorization: done at once
            assert isinstance(command, Void) and p.state is S.CREATED, (command, p)
            self.move(p, S.CANCELED)
            record.status, record.code, record.response = "completed", 200, begun
            return
        call = begun.call
        kind = CallKind(command.operation.value)
        assert call.kind is kind and call.payment_id == p.id, call
        if kind is CallKind.AUTHORIZE:
            expected = p.amount_minor
            self.order_holders[(p.merchant_id, p.order_id)] = p.id
        elif kind is CallKind.CAPTURE:
            assert isinstance(command, Capture)
            expected = command.amount_minor or p.authorized_minor
        elif kind is CallKind.VOID:
            expected = p.authorized_minor
        else:
            assert isinstance(command, Refund)
            expected = command.amount_minor or p.refundable_minor
            p.refund_reserved_minor += expected
            assert call.refund_id is not None and call.refund_id == begun.refund_id
        assert call.amount_minor == expected, (call, expected)
        self.attempts[call.attempt_id] = ModelAttempt(
            call.attempt_id, p.id, kind, expected, key_of(command), call.refund_id
        )

    # -- learning what the provider did -----------------------------------------------
    def learn(self, attempt: ModelAttempt, outcome: ProviderOutcome) -> int:
        """Apply a provider's answer to an open attempt; return the response code."""
        p = self.payments[attempt.payment_id]
        status = outcome.status
        if status is O.REQUIRES_ACTION and attempt.kind is not CallKind.AUTHORIZE:
            status = O.UNKNOWN
        if status is not O.UNKNOWN:
            del self.attempts[attempt.id]
        learn = {
            CallKind.AUTHORIZE: self._learn_authorize,
            CallKind.CAPTURE: self._learn_capture,
            CallKind.VOID: self._learn_void,
            CallKind.REFUND: self._learn_refund,
        }[attempt.kind]
        learn(p, attempt, outcome, status)
        if attempt.kind is CallKind.AUTHORIZE and status is O.REQUIRES_ACTION:
            self.challenged[attempt.id] = p.id
        code = RESPONSE_CODE[status]
        record = self.keys[attempt.key]
        if record.status == "in_flight":
            record.status, record.code = "completed", code
        return code

    def _learn_authorize(
        self, p: ModelPayment, _: ModelAttempt | None, outcome: ProviderOutcome, status: O
    ) -> None:
        if status is O.SUCCEEDED:
            amount = outcome.amount_minor or p.amount_minor
            p.authorized_minor = amount
            if outcome.captured:
                self.move(p, S.CAPTURED)
                p.captured_minor, p.fee_minor = amount, outcome.fee_minor
            else:
                self.move(p, S.AUTHORIZED)
        elif status is O.DECLINED:
            self.move(p, S.FAILED)
            self.release_order(p)
        elif status is O.REQUIRES_ACTION and p.state is not S.REQUIRES_ACTION:
            self.move(p, S.REQUIRES_ACTION)
        elif status is O.UNKNOWN and p.state is not S.PROCESSING:
            self.move(p, S.PROCESSING)

    def _learn_capture(
        self, p: ModelPayment, attempt: ModelAttempt | None, outcome: ProviderOutcome, status: O
    ) -> None:
        if status is O.SUCCEEDED:
            assert attempt is not None
            captured = outcome.amount_minor or attempt.amount_minor
            full = captured == p.authorized_minor
            self.move(p, S.CAPTURED if full else S.PARTIALLY_CAPTURED)
            p.captured_minor, p.fee_minor = captured, outcome.fee_minor

    def _learn_void(
        self, p: ModelPayment, _: ModelAttempt | None, outcome: ProviderOutcome, status: O
    ) -> None:
        if status is O.SUCCEEDED and is_legal(p.state, S.CANCELED):  # else it failed first
            self.move(p, S.CANCELED)
            self.release_order(p)

    def _learn_refund(
        self, p: ModelPayment, attempt: ModelAttempt | None, outcome: ProviderOutcome, status: O
    ) -> None:
        assert attempt is not None
        if status is O.UNKNOWN:
            return
        p.refund_reserved_minor -= attempt.amount_minor
        if status is O.SUCCEEDED:
            p.refunded_minor += attempt.amount_minor
            full = p.refunded_minor == p.captured_minor
            to_state = S.REFUNDED if full else S.PARTIALLY_REFUNDED
            if p.state is not S.DISPUTED and is_legal(p.state, to_state):
                self.move(p, to_state)

    # -- webhooks -----------------------------------------------------------------------
    def deliver(self, event: ProviderEvent) -> str:
        """What the engine must say about an event: applied, stale, duplicate, or
        too_early (refused, not recorded: the provider delivers it again later)."""
        if event.event_id in self.delivered:
            return "duplicate"
        p = self.payments[event.payment_id] if event.payment_id else None
        if p is not None and self._dispute_too_early(p, EventType(event.type)):
            return "too_early"
        self.delivered.add(event.event_id)
        if p is None:
            return "unmatched"
        before = p.history_count
        outcome = self._event(p, event)
        if outcome == "applied" and p.history_count == before:
            return "applied_no_change"
        return outcome

    def _event(self, p: ModelPayment, event: ProviderEvent) -> str:
        event_type = EventType(event.type)
        if event_type in DISPUTE_EVENTS:
            return self._dispute(p, event_type, event.amount_minor)
        kind = EVENT_KINDS.get(event_type) or (
            CallKind.AUTHORIZE if p.state in PRE_AUTHORIZATION else CallKind.CAPTURE
        )
        current = {
            CallKind.AUTHORIZE: p.state in PRE_AUTHORIZATION,
            CallKind.CAPTURE: p.state is S.AUTHORIZED,
            CallKind.VOID: is_legal(p.state, S.CANCELED),
            CallKind.REFUND: True,
        }[kind]
        if not current:
            return "stale"
        status = EVENT_STATUS.get(event_type, O.SUCCEEDED)
        outcome = ProviderOutcome(
            status, event.provider_payment_id, event.provider_refund_id, event.amount_minor,
            captured=event_type is EventType.SUCCEEDED and kind is CallKind.AUTHORIZE,
            fee_minor=event.fee_minor, decline_code=event.decline_code,
        )  # fmt: skip
        candidates = [
            a
            for a in self.open_attempts(p.id, kind)
            if kind is not CallKind.REFUND or a.refund_id == event.refund_id
        ]
        assert len(candidates) <= 1, candidates
        if candidates:
            self.learn(candidates[0], outcome)
            return "applied"
        if kind is CallKind.AUTHORIZE and p.state is S.REQUIRES_ACTION:
            # The attempt that asked for 3DS takes the answer.
            self._learn_authorize(p, None, outcome, status)
            return "applied"
        if kind in {CallKind.CAPTURE, CallKind.REFUND}:
            return "stale"
        raise AssertionError(f"the test's provider never moves {p.id} on its own by {event}")

    @staticmethod
    def _dispute_too_early(p: ModelPayment, event_type: EventType) -> bool:
        """A dispute on a charge whose capture the engine has not learned yet, or its
        decision before its opening."""
        if event_type is EventType.DISPUTE_CREATED:
            return p.state in {S.CREATED, S.REQUIRES_ACTION, S.PROCESSING, S.AUTHORIZED}
        decided = event_type in {EventType.DISPUTE_WON, EventType.DISPUTE_LOST}
        return decided and p.state is not S.DISPUTED and not p.dispute_seen

    def _dispute(self, p: ModelPayment, event_type: EventType, amount: int | None) -> str:
        if event_type is EventType.DISPUTE_CREATED:
            p.dispute_seen = True  # opened, or taken as stale: its decision is not early
            amount = amount or p.captured_minor - p.refunded_minor
            if not is_legal(p.state, S.DISPUTED) or amount <= 0:
                return "stale"
            self.move(p, S.DISPUTED)
            p.disputed_minor = amount
            return "applied"
        if p.state is not S.DISPUTED:
            return "stale"
        if event_type is EventType.DISPUTE_WON:
            self.move(p, S.REFUNDED if p.refunded_minor == p.captured_minor else S.SETTLED)
            p.disputed_minor = 0
        return "applied"


# -- the machine ----------------------------------------------------------------------

AMOUNT_FIELDS = (
    "authorized_minor", "captured_minor", "refunded_minor", "refund_reserved_minor",
    "fee_minor", "disputed_minor",
)  # fmt: skip
COUNTED_TABLES = (
    t.payment_history, t.attempts, t.refunds, t.idempotency_keys, t.provider_events,
    t.outbox, t.ledger_journals, t.ledger_entries,
)  # fmt: skip


class EngineAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.db = Database("sqlite://", migrate=True)
        self.clock = FixedClock()
        self.engine = PaymentEngine(self.db, self.clock, SeededIds(random.Random(0)))
        self.psp = WebhookProvider(self.clock)
        self.model = Model()
        self.keys_made = 0

    def teardown(self) -> None:
        self.db.dispose()

    # -- helpers ------------------------------------------------------------------------
    def new_key(self) -> str:
        self.keys_made += 1
        return f"key-{self.keys_made}"

    def begin_step(self, command: Command) -> Callable[[Any], StepResult]:
        steps: dict[type, Callable[[Any], StepResult]] = {
            CreatePayment: self.engine.create_payment,
            Authorize: self.engine.begin_authorize,
            Capture: self.engine.begin_capture,
            Void: self.engine.begin_void,
            Refund: self.engine.begin_refund,
        }
        return steps[type(command)]

    def snapshot(self) -> tuple[object, ...]:
        """Every payment row and the size of every other table: "nothing changed"."""
        with self.db.engine.connect() as c:
            payments = c.execute(sa.select(t.payments).order_by(t.payments.c.id)).all()
            counts = [
                c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for table in COUNTED_TABLES
            ]
        return tuple(map(tuple, payments)), tuple(counts)

    def refused(self, attempt: Callable[[], object], error: type[PaychaosError]) -> None:
        before = self.snapshot()
        with pytest.raises(PaychaosError) as raised:
            attempt()
        assert type(raised.value) is error, (raised.value, error)
        path(f"refused: {error.__name__}")
        assert raised.value.code, raised.value
        assert self.snapshot() == before, f"a refused request ({error.__name__}) wrote something"

    def matches_model(self, view: Any) -> None:
        p = self.model.payments[view["id"]]
        assert view["state"] == p.state.value, (view["id"], view["state"], p)
        for name in AMOUNT_FIELDS:
            assert view[name] == getattr(p, name), (name, view[name], p)

    def run_operation(
        self, command: Command, refusal: type[PaychaosError] | None, fault: str
    ) -> None:
        begin = self.begin_step(command)
        if refusal is not None:
            self.refused(lambda: begin(command), refusal)
            return
        begun = begin(command)
        assert not begun.replayed and begun.status_code in {200, 202}, begun
        self.model.begin(command, begun)
        call = begun.call
        if call is None:
            self.matches_model(begun.payment)
            return
        if fault.startswith("crash"):
            path(f"{call.kind}: {fault}")
        if fault == "crash_before_call":
            return  # the process died with the attempt recorded and the call never made
        if fault == "crash_after_call":
            self.psp.call(call)  # the provider did it; the process died before hearing
            return
        if fault in {"before", "after"}:
            self.psp.fail_next.append(fault)
        result = perform(self.engine, self.psp, begun)
        assert not self.psp.fail_next
        outcome = ProviderOutcome(O.UNKNOWN) if fault != "none" else self.psp.lookup(call)
        code = self.model.learn(self.model.attempts[call.attempt_id], outcome)
        path(f"{call.kind} answered {outcome.status} (fault: {fault})")
        assert result.status_code == code, (result, outcome)
        assert result.refund_id == begun.refund_id
        self.model.keys[key_of(command)].response = result
        self.matches_model(result.payment)

    def choose(self, pick: int, refusal: Callable[[ModelPayment], object]) -> ModelPayment:
        """Mostly (3 picks in 4) a payment the operation suits, else any payment."""
        everyone = list(self.model.payments.values())
        suited = [p for p in everyone if refusal(p) is None]
        among = suited if suited and pick % 4 else everyone
        return among[(pick // 4) % len(among)]

    def deliver(self, webhook: ProviderEvent) -> None:
        expected = self.model.deliver(webhook)
        if expected == "too_early":
            with pytest.raises(EventTooEarly):
                self.engine.apply_provider_event(webhook)
            path(f"webhook {webhook.type}: refused until the engine catches up")
            return
        result = self.engine.apply_provider_event(webhook)
        assert result.outcome == expected, (webhook, result, expected)
        path(f"webhook {webhook.type}: {expected}")
        assert result.payment_id == webhook.payment_id

    def undelivered(self) -> list[ProviderEvent]:
        return [e for e in self.psp.sent if e.event_id not in self.model.delivered]

    def recover_once(self) -> None:
        assert not self.psp.fail_next, "faults stop before recovery"
        calls = self.engine.unresolved_attempts(timedelta(seconds=30))
        polled = self.model.awaiting_customer()
        assert {call.attempt_id for call in calls} == set(self.model.attempts) | polled
        resolved = recover(self.engine, self.psp, calls)
        assert resolved == len(calls), "a provider that answers answers every lookup"
        for call in calls:
            answer = self.psp.lookup(call)
            if call.awaiting_action:
                path(f"recovery polled a 3DS authorization: {answer.status}")
                self.model.poll(self.model.payments[call.payment_id], answer)
                continue
            path(f"recovery resolved a {call.kind} in doubt: {answer.status}")
            self.model.learn(self.model.attempts[call.attempt_id], answer)

    # -- clients ------------------------------------------------------------------------
    @initialize(
        payments=st.lists(
            st.tuples(
                st.sampled_from(MERCHANTS),
                st.sampled_from(ORDERS),
                st.integers(1, 1_000_000),
                st.sampled_from(CURRENCIES),
                st.sampled_from((VISA, VISA, THREE_DS, DECLINED)),
                st.sampled_from(("manual", "manual", "automatic")),
                st.sampled_from(("created", "authorized", "authorized", "captured")),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def shoppers_start_paying(self, payments: list[tuple[Any, ...]]) -> None:
        """A head start, without faults, so that short runs reach captures and refunds."""
        for merchant_id, order_id, amount, currency, method, capture_method, goal in payments:
            create = CreatePayment(
                merchant_id, self.new_key(), order_id, amount, currency, method, capture_method
            )
            payment_id = self.create(create)
            p = self.model.payments[payment_id]
            if goal != "created" and self.model.authorize_refusal(p) is None:
                authorize = Authorize(merchant_id, self.new_key(), payment_id)
                self.run_operation(authorize, None, "none")
            if goal == "captured" and self.model.capture_refusal(p, None) is None:
                capture = Capture(merchant_id, self.new_key(), payment_id)
                self.run_operation(capture, None, "none")

    @rule(
        merchant_id=st.sampled_from(MERCHANTS),
        order_id=st.sampled_from(ORDERS),
        amount_minor=st.one_of(st.integers(1, 200), st.integers(1, 10_000_000)),
        currency=st.sampled_from(CURRENCIES),
        payment_method=st.sampled_from((VISA, VISA, THREE_DS, DECLINED)),
        capture_method=st.sampled_from(("manual", "manual", "automatic")),
    )
    def create_payment(
        self,
        merchant_id: str,
        order_id: str,
        amount_minor: int,
        currency: str,
        payment_method: str,
        capture_method: str,
    ) -> None:
        command = CreatePayment(
            merchant_id, self.new_key(), order_id, amount_minor, currency, payment_method,
            capture_method, {"cart": "c-1"},
        )  # fmt: skip
        self.create(command)

    def create(self, command: CreatePayment) -> str:
        result = self.engine.create_payment(command)
        assert result.status_code == 201 and not result.replayed, result
        payment_id = result.payment.id
        assert payment_id not in self.model.payments
        self.model.payments[payment_id] = ModelPayment(
            payment_id, command.merchant_id, command.order_id, command.amount_minor,
            command.currency, command.payment_method, command.capture_method,
        )  # fmt: skip
        self.model.keys[key_of(command)] = ModelKey(command, "completed", 201, result)
        self.matches_model(result.payment)
        return payment_id

    @precondition(lambda self: self.model.payments)
    @rule(pick=PICK)
    def double_click_creates_another_payment_for_the_same_order(self, pick: int) -> None:
        p = self.choose(pick, lambda p: None if p.state is not S.CREATED else "")
        command = CreatePayment(
            p.merchant_id, self.new_key(), p.order_id, p.amount_minor, p.currency,
            p.payment_method, p.capture_method, {"cart": "c-1"},
        )  # fmt: skip
        self.create(command)

    @precondition(lambda self: self.model.payments)
    @rule(pick=PICK, fault=st.sampled_from(FAULTS))
    def authorize(self, pick: int, fault: str) -> None:
        p = self.choose(pick, self.model.authorize_refusal)
        if p.state is not S.CREATED:
            fault = "none"  # see the module docstring: one authorization in doubt at a time
        command = Authorize(p.merchant_id, self.new_key(), p.id)
        self.run_operation(command, self.model.authorize_refusal(p), fault)

    @precondition(lambda self: self.model.payments)
    @rule(pick=PICK, amount=st.sampled_from(AMOUNT_CHOICES), fault=st.sampled_from(FAULTS))
    def capture(self, pick: int, amount: str, fault: str) -> None:
        p = self.choose(pick, lambda p: self.model.capture_refusal(p, None))
        amount_minor = {
            "all": None,
            "part": max(1, p.authorized_minor // 3),
            "exact": max(1, p.authorized_minor),
            "over": p.authorized_minor + 1,
        }[amount]
        command = Capture(p.merchant_id, self.new_key(), p.id, amount_minor)
        self.run_operation(command, self.model.capture_refusal(p, amount_minor), fault)

    @precondition(lambda self: self.model.payments)
    @rule(pick=PICK, fault=st.sampled_from(FAULTS))
    def void(self, pick: int, fault: str) -> None:
        p = self.choose(pick, self.model.void_refusal)
        command = Void(p.merchant_id, self.new_key(), p.id)
        self.run_operation(command, self.model.void_refusal(p), fault)

    @precondition(lambda self: self.model.payments)
    @rule(pick=PICK, amount=st.sampled_from(AMOUNT_CHOICES), fault=st.sampled_from(FAULTS))
    def refund(self, pick: int, amount: str, fault: str) -> None:
        p = self.choose(pick, lambda p: self.model.refund_refusal(p, None))
        left = p.refundable_minor
        amount_minor = {
            "all": None,
            "part": max(1, left // 3),
            "exact": max(1, left),
            "over": left + 1,
        }[amount]
        command = Refund(p.merchant_id, self.new_key(), p.id, amount_minor)
        self.run_operation(command, self.model.refund_refusal(p, amount_minor), fault)

    @precondition(lambda self: self.model.payments)
    @rule(pick=PICK, operation=st.sampled_from(("authorize", "capture", "void", "refund")))
    def another_merchant_cannot_touch_a_payment(self, pick: int, operation: str) -> None:
        p = self.choose(pick, lambda p: None)
        other, key = next(m for m in MERCHANTS if m != p.merchant_id), self.new_key()
        commands: dict[str, Command] = {
            "authorize": Authorize(other, key, p.id),
            "capture": Capture(other, key, p.id),
            "void": Void(other, key, p.id),
            "refund": Refund(other, key, p.id, 1),
        }
        command = commands[operation]
        self.refused(lambda: self.begin_step(command)(command), NotFound)

    @precondition(lambda self: self.model.keys)
    @rule(pick=st.integers(0, 1_000))
    def replay_with_the_same_key_and_body_repeats_the_answer(self, pick: int) -> None:
        records = list(self.model.keys.values())
        record = records[pick % len(records)]
        command = record.command
        begin = self.begin_step(command)
        if record.status == "in_flight":
            self.refused(lambda: begin(command), IdempotencyKeyInFlight)
            return
        before = self.snapshot()
        replay = begin(command)
        assert replay.replayed and replay.call is None, replay
        assert replay.status_code == record.code, (replay, record)
        if record.response is not None:
            assert replay.payment.body == record.response.payment.body
            assert replay.refund_id == record.response.refund_id
        assert self.snapshot() == before, "a replay had a second effect"

    @precondition(lambda self: self.model.attempts)
    @rule(pick=PICK, operation=st.sampled_from(("authorize", "capture", "void", "refund")))
    def client_acts_again_while_an_attempt_is_in_doubt(self, pick: int, operation: str) -> None:
        attempts = list(self.model.attempts.values())
        attempt = attempts[pick % len(attempts)]
        record = self.model.keys[attempt.key]
        if record.status == "in_flight" and pick % 2:  # the same request, retried
            self.refused(lambda: self.begin_step(record.command)(record.command),
                         IdempotencyKeyInFlight)  # fmt: skip
            return
        p = self.model.payments[attempt.payment_id]
        if operation == "authorize":
            command: Command = Authorize(p.merchant_id, self.new_key(), p.id)
            refusal = self.model.authorize_refusal(p)
        elif operation == "capture":
            command = Capture(p.merchant_id, self.new_key(), p.id)
            refusal = self.model.capture_refusal(p, None)
        elif operation == "void":
            command = Void(p.merchant_id, self.new_key(), p.id)
            refusal = self.model.void_refusal(p)
        else:
            command = Refund(p.merchant_id, self.new_key(), p.id, 1)
            refusal = self.model.refund_refusal(p, 1)
        self.run_operation(command, refusal, "none")

    @precondition(lambda self: self.model.keys)
    @rule(pick=st.integers(0, 1_000))
    def reusing_a_key_with_another_body_is_refused(self, pick: int) -> None:
        records = list(self.model.keys.values())
        command = records[pick % len(records)].command
        changed: Command
        if isinstance(command, CreatePayment):
            changed = dataclasses.replace(command, amount_minor=command.amount_minor + 1)
        elif isinstance(command, Capture):
            changed = dataclasses.replace(command, amount_minor=(command.amount_minor or 0) + 1)
        elif isinstance(command, Refund):
            changed = dataclasses.replace(command, reason="changed_mind")
        else:
            changed = dataclasses.replace(command, payment_id="pay_someone_else")
        self.refused(lambda: self.begin_step(changed)(changed), IdempotencyKeyReused)

    # -- the provider's side ------------------------------------------------------------
    @precondition(lambda self: self.undelivered())
    @rule(pick=st.integers(0, 1_000))
    def provider_delivers_a_webhook_in_any_order(self, pick: int) -> None:
        pending = self.undelivered()
        self.deliver(pending[pick % len(pending)])

    @precondition(lambda self: self.model.delivered)
    @rule(pick=st.integers(0, 1_000))
    def provider_delivers_a_webhook_again(self, pick: int) -> None:
        delivered = [e for e in self.psp.sent if e.event_id in self.model.delivered]
        self.deliver(delivered[pick % len(delivered)])

    @precondition(lambda self: self.psp.open_challenges())
    @rule(pick=st.integers(0, 1_000), passes=st.booleans())
    def customer_answers_a_3ds_challenge(self, pick: int, passes: bool) -> None:
        challenges = self.psp.open_challenges()
        self.psp.customer_answers_challenge(challenges[pick % len(challenges)], passes)

    @precondition(lambda self: self.psp.disputable())
    @rule(pick=st.integers(0, 1_000))
    def customer_disputes_a_charge(self, pick: int) -> None:
        charges = self.psp.disputable()
        payment_id = charges[pick % len(charges)]
        self.psp.disputes[payment_id] = "open"
        truth = self.psp.truth_of(payment_id)
        # What the charge still holds; on a charge refunded in full, all of it (the
        # cardholder disputes before the refund reaches them).
        amount = truth.captured_minor - truth.refunded_minor or truth.captured_minor
        self.psp.send(EventType.DISPUTE_CREATED, payment_id, amount_minor=amount)

    @precondition(lambda self: self.psp.open_disputes())
    @rule(pick=st.integers(0, 1_000), won=st.booleans())
    def dispute_is_decided(self, pick: int, won: bool) -> None:
        disputes = self.psp.open_disputes()
        payment_id = disputes[pick % len(disputes)]
        self.psp.disputes[payment_id] = "decided"
        self.psp.send(EventType.DISPUTE_WON if won else EventType.DISPUTE_LOST, payment_id)

    # -- recovery -----------------------------------------------------------------------
    @rule()
    def recovery_worker_resolves_every_attempt_in_doubt(self) -> None:
        self.clock.advance(timedelta(minutes=1))
        self.recover_once()
        assert not self.model.attempts

    @rule(newest_first=st.booleans())
    def after_faults_stop_engine_and_provider_agree(self, newest_first: bool) -> None:
        for _ in range(4):  # resent calls send webhooks of their own: a few rounds at most
            pending = self.undelivered()
            for webhook in reversed(pending) if newest_first else pending:
                self.deliver(webhook)
            if not self.model.attempts and not self.undelivered():
                break
            self.clock.advance(timedelta(minutes=1))
            self.recover_once()
        assert not self.model.attempts and not self.undelivered()
        with self.db.engine.connect() as c:
            rows = c.execute(sa.select(t.payments)).mappings().all()
        for row in rows:
            agrees_with_provider(dict(row), self.psp.truth_of(row["id"]))

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def ledger_balances_and_every_audit_check_holds(self) -> None:
        with self.db.engine.connect() as c:
            results = audit(c)
        failed = {r.name: r.violations for r in results if not r.ok}
        assert not failed, failed

    @invariant()
    def engine_amounts_and_states_equal_the_model(self) -> None:
        with self.db.engine.connect() as c:
            rows = c.execute(sa.select(t.payments)).mappings().all()
            open_ids = c.execute(
                sa.select(t.attempts.c.id).where(t.attempts.c.status.in_(("pending", "unknown")))
            ).scalars()
            assert set(open_ids) == set(self.model.attempts)
        assert len(rows) == len(self.model.payments)
        holders: Counter[tuple[str, str]] = Counter()
        for row in rows:
            self.matches_model(row)
            assert row["history_count"] == self.model.payments[row["id"]].history_count
            assert 0 <= row["captured_minor"] <= row["authorized_minor"] <= row["amount_minor"]
            assert 0 <= row["refunded_minor"] <= row["captured_minor"]
            if S(row["state"]) in HOLDS_ORDER:
                holders[(row["merchant_id"], row["order_id"])] += 1
        assert all(count <= 1 for count in holders.values()), holders

    @invariant()
    def provider_never_charges_twice_nor_refunds_more_than_it_captured(self) -> None:
        live_charges: Counter[tuple[str, str]] = Counter()
        for payment_id, truth in self.psp.truth.items():
            assert truth.charges <= 1, (payment_id, truth)
            assert 0 <= truth.refunded_minor <= truth.captured_minor <= truth.authorized_minor
            p = self.model.payments[payment_id]
            if truth.charges and not truth.canceled:
                live_charges[(p.merchant_id, p.order_id)] += 1
        assert all(count <= 1 for count in live_charges.values()), live_charges


def agrees_with_provider(row: dict[str, Any], truth: Truth) -> None:
    """Once every webhook is in and every attempt resolved: the engine says what the PSP did."""
    state = S(row["state"])
    assert row["refund_reserved_minor"] == 0, row
    where = (row["id"], state, truth)
    if state in {S.CREATED, S.REQUIRES_ACTION}:
        assert truth.charges == 0 and not truth.canceled, where
    elif state is S.FAILED:  # declined, perhaps canceled too by a void in doubt meanwhile
        assert truth.charges == 0, where
    elif state is S.CANCELED:
        assert truth.captured_minor == 0 and (truth.canceled or truth.charges == 0), where
    elif state is S.AUTHORIZED:
        assert not truth.canceled and truth.captured_minor == 0, where
        assert truth.authorized_minor == row["authorized_minor"], where
    else:
        assert state in CAPTURED_AT_PROVIDER, where
        assert truth.authorized_minor == row["authorized_minor"], where
        assert truth.captured_minor == row["captured_minor"], where
        assert truth.refunded_minor == row["refunded_minor"], where


# Inherits the loaded profile (derandomized "ci" by default): one run, one sequence.
EngineAgainstModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40)
test_engine_follows_the_reference_model_under_faults = EngineAgainstModel.TestCase


# -- regressions the machine found ------------------------------------------------------


def three_ds_payment_awaiting_the_customer() -> tuple[PaymentEngine, WebhookProvider, str]:
    clock = FixedClock()
    engine = PaymentEngine(Database("sqlite://", migrate=True), clock, SeededIds(random.Random(5)))
    provider = WebhookProvider(clock)
    created = engine.create_payment(CreatePayment("m_1", "k-1", "order-1", 900, "KWD", THREE_DS))
    payment_id = created.payment.id
    begun = engine.begin_authorize(Authorize("m_1", "k-2", payment_id))
    assert perform(engine, provider, begun).payment.state == "requires_action"
    return engine, provider, payment_id


def test_authorize_is_refused_while_a_void_is_in_doubt() -> None:
    engine, _, payment_id = three_ds_payment_awaiting_the_customer()
    assert engine.begin_void(Void("m_1", "k-3", payment_id)).call is not None  # then a crash
    with pytest.raises(OperationInProgress):
        engine.begin_authorize(Authorize("m_1", "k-4", payment_id))
    engine.db.dispose()


def test_a_void_in_doubt_resolved_after_3ds_failed_leaves_the_payment_failed() -> None:
    engine, provider, payment_id = three_ds_payment_awaiting_the_customer()
    provider.customer_answers_challenge(payment_id, passes=False)
    begun = engine.begin_void(Void("m_1", "k-3", payment_id))
    assert begun.call is not None
    provider.call(begun.call)  # the provider cancels the intent; the engine never hears back
    failed_3ds = next(e for e in provider.sent if e.type == EventType.PAYMENT_FAILED)
    failed = engine.apply_provider_event(failed_3ds)
    assert failed.outcome == "applied" and engine.get_payment(payment_id).state == "failed"
    provider.clock.advance(timedelta(minutes=1))
    calls = engine.unresolved_attempts(timedelta(seconds=30))
    assert recover(engine, provider, calls) == 1
    assert engine.get_payment(payment_id).state == "failed"
    assert engine.unresolved_attempts(timedelta(0)) == []
    engine.db.dispose()


# -- paychaos audit over a stored database ----------------------------------------------


def stored_database(path: Path) -> tuple[str, str]:
    """A small SQLite file with one payment's life on it: (url, payment id)."""
    url = f"sqlite:///{path}"
    database = Database(url, migrate=True)
    clock = FixedClock()
    engine = PaymentEngine(database, clock, SeededIds(random.Random(3)))
    provider = FakeProvider()
    created = engine.create_payment(CreatePayment("m_1", "k-create", "order-9", 5_000, "JPY", VISA))
    payment_id = created.payment.id
    perform(engine, provider, engine.begin_authorize(Authorize("m_1", "k-auth", payment_id)))
    perform(engine, provider, engine.begin_capture(Capture("m_1", "k-cap", payment_id, 4_000)))
    perform(engine, provider, engine.begin_refund(Refund("m_1", "k-ref", payment_id, 1_000)))
    database.dispose()
    return url, payment_id


def test_audit_of_a_sound_database_exits_zero(tmp_path: Path) -> None:
    url, _ = stored_database(tmp_path / "sound.db")
    result = CliRunner().invoke(app, ["audit", "--db", url])
    assert result.exit_code == 0, result.output
    assert "VIOLATED" not in result.output


def test_audit_names_the_payment_whose_state_change_lost_its_outbox_event(
    tmp_path: Path,
) -> None:
    url, payment_id = stored_database(tmp_path / "tampered.db")
    database = Database(url)
    with database.engine.begin() as c:  # the outbox is not append-only: a lost event is possible
        deleted = c.execute(
            t.outbox.delete().where(
                t.outbox.c.payment_id == payment_id, t.outbox.c.history_seq == 3
            )
        )
        assert deleted.rowcount == 1
    database.dispose()
    result = CliRunner().invoke(app, ["audit", "--db", url])
    assert result.exit_code == 1, result.output
    assert "outbox_complete" in result.output and payment_id in result.output


def test_audit_names_the_payment_whose_history_has_an_illegal_step(tmp_path: Path) -> None:
    url, payment_id = stored_database(tmp_path / "forged.db")
    database = Database(url)
    with database.engine.begin() as c:  # history refuses UPDATE and DELETE, not a forged INSERT
        c.execute(
            t.payment_history.insert().values(
                payment_id=payment_id, seq=5, from_state="partially_refunded",
                to_state="authorized", reason="forged", at=FixedClock().now(),
            )
        )  # fmt: skip
    database.dispose()
    result = CliRunner().invoke(app, ["audit", "--db", url])
    assert result.exit_code == 1, result.output
    assert "legal_transitions" in result.output and payment_id in result.output


def test_audit_with_a_bad_url_exits_two_naming_the_option_without_a_traceback() -> None:
    result = CliRunner().invoke(app, ["audit", "--db", "nosuchdriver://nowhere/db"])
    assert result.exit_code == 2, result.output
    assert "--db" in result.output
    assert "Traceback" not in result.output
