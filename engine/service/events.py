"""Provider events: what a webhook's event does to a payment (or a payout), exactly once.

``_take_event`` dedupes by the provider's event id (the ``provider_events``
row, written in the same unit of work as the event's effect), finds the payment
(by the engine's id in the event's metadata, else the provider's id) and brings
it forward to what the event says: the open attempt it answers is applied as
any answer is (``engine.service.outcomes``); an event about a state the payment
already left is ``stale``. Disputes open, win and lose here too. How the
delivery itself is kept and retried is ``engine.service.webhooks``.
"""

from __future__ import annotations

from engine.adapters.store import EventReads, LoadedEvent, OpenAttempts, Row, Store
from engine.domain import ledger
from engine.domain.entities import Attempt, Payment
from engine.domain.errors import EventTooEarly
from engine.domain.lifecycles import AttemptStatus
from engine.domain.provider import (
    CallKind,
    EventType,
    OutcomeStatus,
    ProviderEvent,
    ProviderOutcome,
)
from engine.domain.states import PaymentState, is_legal
from engine.service import payouts, splits
from engine.service.outcomes import OutcomeSteps
from engine.service.steps import OPEN_STATUSES
from engine.service.views import EventResult

S = PaymentState
O = OutcomeStatus  # noqa: E741

PRE_AUTHORIZATION = frozenset({S.CREATED, S.REQUIRES_ACTION, S.PROCESSING})
BEFORE_CAPTURE = frozenset({S.CREATED, S.REQUIRES_ACTION, S.PROCESSING, S.AUTHORIZED})
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
# An authorization's attempt is answered open or awaiting the customer (3DS).
AUTHORIZE_ANSWERABLE = (*OPEN_STATUSES, AttemptStatus.REQUIRES_ACTION.value)
# The attempts a provider event may answer, read with its first reads: of any kind,
# open or awaiting the customer (sorted out by kind and status in Python).
EVENT_ANSWERABLE = OpenAttempts(
    tuple(k.value for k in (CallKind.AUTHORIZE, CallKind.CAPTURE, CallKind.VOID, CallKind.REFUND)),
    AUTHORIZE_ANSWERABLE,
)
# What an event's type says happened, where it is not success.
EVENT_STATUS = {
    EventType.REQUIRES_ACTION: O.REQUIRES_ACTION,
    EventType.PAYMENT_FAILED: O.DECLINED,
    EventType.REFUND_FAILED: O.DECLINED,
}


class EventSteps(OutcomeSteps):
    def apply_provider_event(self, event: ProviderEvent) -> EventResult:
        return self._run(lambda s: self._take_event(s, event, s.load(self._event_reads(event))))

    @staticmethod
    def _event_reads(event: ProviderEvent, *, inbox: bool = False) -> EventReads:
        """What taking ``event`` reads first: the payment it names, locked, and the
        attempts the event may answer; (``inbox``) its inbox row; whether it was taken."""
        return EventReads(event.event_id, event.payment_id, inbox=inbox,
                          attempts=EVENT_ANSWERABLE)  # fmt: skip

    def _take_event(self, s: Store, event: ProviderEvent, loaded: LoadedEvent) -> EventResult:
        """Take ``event`` once; ``loaded``: its read set (``_event_reads``), loaded first
        in the step."""
        if event.type in (EventType.PAYOUT_PAID, EventType.PAYOUT_FAILED):
            return self._take_payout_event(s, event, loaded.taken)
        if loaded.payment is None and event.provider_payment_id is not None:
            loaded = self._by_provider_id(s, event) or loaded
        payment = None if loaded.payment is None else Payment.from_row(loaded.payment)
        if loaded.taken is not None:
            return EventResult("duplicate", payment.id if payment else None)
        outcome = "unmatched"
        if payment is not None:
            before = payment.history_count
            outcome = self._apply_event(s, payment, event, loaded.attempts)
            if outcome == "applied" and payment.history_count == before:
                outcome = "applied_no_change"
        s.insert_provider_event(
            {
                "id": self.ids.new_id("pev"), "provider_event_id": event.event_id,
                "type": event.type, "payment_id": payment.id if payment else None,
                "outcome": outcome, "received_at": self.clock.now(),
            }
        )  # fmt: skip
        return EventResult(outcome, payment.id if payment else None)

    def _take_payout_event(self, s: Store, event: ProviderEvent, taken: Row | None) -> EventResult:
        if taken is not None:
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

    @staticmethod
    def _by_provider_id(s: Store, event: ProviderEvent) -> LoadedEvent | None:
        """The event's reads again, on the payment the provider's id finds (locked by
        that read, before whether the event was taken is read), for an event whose
        engine id finds none."""
        assert event.provider_payment_id is not None
        row = s.payment_by_provider_id(event.provider_payment_id, lock=True)
        if row is None:
            return None
        return s.load(EventReads(event.event_id, row["id"], attempts=EVENT_ANSWERABLE))

    def _apply_event(self, s: Store, p: Payment, event: ProviderEvent, attempts: list[Row]) -> str:
        """Bring the payment forward to what the event says, or call the event stale;
        ``attempts``: those the event may answer (``EVENT_ANSWERABLE``), as read."""
        if event.type not in EventType._value2member_map_:
            return "ignored"
        event_type = EventType(event.type)
        if event_type in DISPUTE_EVENTS:
            return self._apply_dispute(s, p, event)
        state = p.state
        kind = EVENT_CALL_KINDS.get(event_type) or (
            CallKind.AUTHORIZE if state in PRE_AUTHORIZATION else CallKind.CAPTURE
        )
        if not self._event_is_current(state, kind):
            return "stale"
        outcome = self._event_outcome(event, kind)
        reason = f"{kind.value}_{outcome.status}_by_event"
        attempt = self._event_attempt(attempts, event, kind)
        if attempt is not None:
            code = self._apply(s, p, attempt, outcome, reason, event.event_id)
            self._finish_key(s, attempt.idempotency_id, code, p, attempt.refund_id)
            return "applied"
        if kind in {CallKind.CAPTURE, CallKind.REFUND}:
            return "stale"  # the engine alone starts these: nothing open means done
        # The provider moved on its own (3DS completed, an intent expired).
        apply = self._apply_authorize if kind is CallKind.AUTHORIZE else self._apply_void
        apply(s, p, None, outcome, outcome.status, reason, event.event_id)
        return "applied"

    @staticmethod
    def _event_outcome(event: ProviderEvent, kind: CallKind) -> ProviderOutcome:
        return ProviderOutcome(
            status=EVENT_STATUS.get(EventType(event.type), O.SUCCEEDED),
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

    @staticmethod
    def _event_attempt(attempts: list[Row], event: ProviderEvent, kind: CallKind) -> Attempt | None:
        """The newest of the payment's ``attempts`` (as read) the event answers."""
        statuses = AUTHORIZE_ANSWERABLE if kind is CallKind.AUTHORIZE else OPEN_STATUSES
        candidates = [a for a in attempts if a["kind"] == kind.value and a["status"] in statuses]
        if kind is CallKind.REFUND:
            candidates = [a for a in candidates if a["refund_id"] == event.refund_id]
        return Attempt.from_row(candidates[0]) if candidates else None

    def _apply_dispute(self, s: Store, p: Payment, event: ProviderEvent) -> str:
        state = p.state
        if event.type == EventType.DISPUTE_CREATED and state in BEFORE_CAPTURE:
            # The provider captured (the dispute proves it) but the engine has not
            # learned it yet: refuse the delivery, the provider sends it again.
            raise EventTooEarly(message=f"payment {p.id} is {state.value}: not captured yet")
        if event.type == EventType.DISPUTE_CREATED:
            amount = event.amount_minor or (p.captured_minor - p.refunded_minor)
            if not is_legal(state, S.DISPUTED) or amount <= 0:
                return "stale"
            self._open_dispute(s, p, event, amount)
            return "applied"
        if state is not S.DISPUTED:
            opened = any(row["reason"] == "dispute_created_by_event" for row in s.history(p.id))
            # An opening taken as stale (e.g. the charge was refunded in full before it)
            # makes its decision stale too; one not seen yet is on its way: take it first.
            if not opened and not s.event_seen(p.id, EventType.DISPUTE_CREATED.value):
                raise EventTooEarly(message=f"payment {p.id} has no dispute open yet")
            return "stale"
        if event.type == EventType.DISPUTE_WON:
            self._win_dispute(s, p, event)
        return "applied"

    def _open_dispute(self, s: Store, p: Payment, event: ProviderEvent, amount: int) -> None:
        """The provider withdraws the disputed amount (the sellers of a split bear it)."""
        seq = self._move(s, p, S.DISPUTED, "dispute_created_by_event",
                         event_id=event.event_id, amount_minor=amount,
                         disputed_minor=amount)  # fmt: skip
        money = self._money(p, amount)
        if p.lines_count:
            shares = splits.dispute_shares(s, p, amount, self.clock.now())
            journal = ledger.split_dispute_withdrawal(p.merchant_id, money, shares)
        else:
            journal = ledger.dispute_withdrawal(money)
        fee = ledger.dispute_fee(self._money(p, event.fee_minor), returned=False)
        self._post(s, p, ledger.Journal(journal.kind, journal.entries + fee), seq)

    @staticmethod
    def _state_after_won_dispute(s: Store, p: Payment) -> S:
        """Where a won dispute leaves the payment: refunded if its charge was refunded in
        full meanwhile, else settled."""
        return S.REFUNDED if p.refunded_minor == p.captured_minor else S.SETTLED

    def _win_dispute(self, s: Store, p: Payment, event: ProviderEvent) -> None:
        """A won dispute gives the withdrawn amount (and the dispute fee) back."""
        disputed = p.disputed_minor
        won = self._state_after_won_dispute(s, p)
        seq = self._move(s, p, won, "dispute_won_by_event", event_id=event.event_id,
                         amount_minor=disputed, disputed_minor=0)  # fmt: skip
        money = self._money(p, disputed)
        if p.lines_count:
            shares = splits.reinstatement_shares(s, p, disputed, self.clock.now())
            journal = ledger.split_dispute_reinstatement(p.merchant_id, money, shares)
        else:
            journal = ledger.dispute_reinstatement(money)
        fee = ledger.dispute_fee(self._money(p, event.fee_minor), returned=True)
        self._post(s, p, ledger.Journal(journal.kind, journal.entries + fee), seq)
