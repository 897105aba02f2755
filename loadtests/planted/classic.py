"""The first planted defects: the engine's classic payment bugs, each a small change.

Each plant monkeypatches the engine (never a switch in engine code); ``DEFECTS``
says which shipped scenario must catch it and by which invariant.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

from engine.adapters import stripe_dialect
from engine.adapters.store import EventReads, LoadedEvent, Row, Store
from engine.domain import ledger
from engine.domain.commands import Authorize, Capture
from engine.domain.entities import Payment
from engine.domain.errors import IllegalTransition, PaychaosError
from engine.domain.marketplace import FeePlan
from engine.domain.provider import (
    CallKind,
    EventType,
    OutcomeStatus,
    ProviderEvent,
    ProviderOutcome,
)
from engine.domain.settlement import SettlementReport, SettlementRow
from engine.service.engine import PaymentEngine
from engine.service.reconciliation import Reconciler
from engine.service.views import PaymentView, StepResult
from loadtests.planted.catalogue import Defect, Patcher
from scenarios.clients import Clients
from scenarios.world import EngineDown, Order, Step


# -- the defects ----------------------------------------------------------------------------
def idempotency_keys_ignored(mp: Patcher) -> None:
    """Keys are stored but never looked up, and their unique index never bites."""
    mp.setattr(PaymentEngine, "_replay", lambda self, command, key: None)
    insert = Store.insert_idempotency_key

    def insert_unmatched(self: Store, row: Row) -> None:
        insert(self, {**row, "key": f"{row['key']}#{row['id']}"})

    mp.setattr(Store, "insert_idempotency_key", insert_unmatched)


def inbox_dedupe_skipped(mp: Patcher, event_type: str | None = None) -> None:
    """The webhook inbox keeps every delivery (of ``event_type``, or all) as a new one:
    the intake's first dedupe, ahead of the provider-event record."""
    kept = Store.inbox_by_event
    load = Store.load
    insert = Store.insert_inbox
    numbers = itertools.count()

    def inbox_by_event(self: Store, provider_event_id: str, *, lock: bool = False) -> Row | None:
        row = kept(self, provider_event_id, lock=lock)
        return None if row is not None and event_type in (None, row["type"]) else row

    def load_without_inbox(self: Store, reads: Any) -> Any:
        loaded = load(self, reads)
        if (
            isinstance(loaded, LoadedEvent)
            and loaded.inbox is not None
            and event_type in (None, loaded.inbox["type"])
        ):  # read the rest as for a delivery not kept
            return load(self, dataclasses.replace(reads, inbox=False))
        return loaded

    def insert_inbox(self: Store, row: Row) -> None:
        if event_type in (None, row["type"]):  # under a name of its own: no unique index bites
            row = {**row, "provider_event_id": f"{row['provider_event_id']}#{next(numbers)}"}
        insert(self, row)

    mp.setattr(Store, "inbox_by_event", inbox_by_event)
    mp.setattr(Store, "load", load_without_inbox)
    mp.setattr(Store, "insert_inbox", insert_inbox)


def events_taken_forgotten(mp: Patcher, forget: Callable[[Row], bool]) -> None:
    """Event read sets answer as if the events taken that ``forget`` picks were not."""
    load = Store.load

    def load_forgetting(self: Store, reads: Any) -> Any:
        loaded = load(self, reads)
        if isinstance(reads, EventReads) and loaded.taken is not None and forget(loaded.taken):
            return dataclasses.replace(loaded, taken=None)
        return loaded

    mp.setattr(Store, "load", load_forgetting)


def webhook_dedupe_skipped(mp: Patcher) -> None:
    """The intake neither checks nor records provider event ids (inbox included)."""
    inbox_dedupe_skipped(mp)
    events_taken_forgotten(mp, lambda row: True)
    mp.setattr(Store, "provider_event", lambda self, event_id: None)
    mp.setattr(Store, "insert_provider_event", lambda self, row: None)


def ledger_outside_the_transaction(mp: Patcher) -> None:
    """The authorization hold is posted in a transaction of its own when the call begins.

    The classic dual write: ledger first, provider call, state change later in
    another transaction. Whenever the state change does not follow (a decline,
    an abandoned 3DS), the ledger keeps a hold the payment does not have.
    """
    begin = PaymentEngine.begin_authorize
    post = PaymentEngine._post

    def begin_authorize(self: PaymentEngine, command: Authorize) -> StepResult:
        result = begin(self, command)
        if result.call is not None and result.call.capture_method == "manual":

            def post_hold(s: Store) -> None:
                p = self._locked(s, command.payment_id)
                hold = ledger.authorization_hold(p.merchant_id, self._money(p, p.amount_minor))
                post(self, s, p, hold, None)

            self._run(post_hold)
        return result

    def post_except_holds(
        self: PaymentEngine, s: Store, p: Payment, journal: ledger.Journal, seq: int | None
    ) -> None:
        if journal.kind != "authorization_hold":  # already posted when the call began
            post(self, s, p, journal, seq)

    mp.setattr(PaymentEngine, "begin_authorize", begin_authorize)
    mp.setattr(PaymentEngine, "_post", post_except_holds)


def ledger_written_after_the_state_change(mp: Patcher) -> None:
    """Journals are written in a transaction of their own, after the state change commits.

    The other dual write: whenever the second transaction fails (a database that
    fails a commit), the payment has moved and its money has not.
    """
    post = PaymentEngine._post
    run = PaymentEngine._run
    stash: list[tuple[Payment, ledger.Journal, int | None]] = []

    def stash_journal(
        self: PaymentEngine, s: Store, p: Payment, journal: ledger.Journal, seq: int | None
    ) -> None:
        stash.append((dataclasses.replace(p), journal, seq))

    def run_then_post(self: PaymentEngine, step: Callable[[Store], object]) -> object:
        stash.clear()
        result = run(self, step)
        journals = list(stash)
        stash.clear()
        if journals:

            def write(s: Store) -> None:
                for p, journal, seq in journals:
                    post(self, s, p, journal, seq)

            run(self, write)
        return result

    mp.setattr(PaymentEngine, "_post", stash_journal)
    mp.setattr(PaymentEngine, "_run", run_then_post)


def timeout_treated_as_decline(mp: Patcher) -> None:
    """A timed-out authorization fails the payment; the shop then retries the checkout.

    The engine's half: ``unknown`` becomes ``declined`` (the order is released).
    The client's half, as a shop would: a checkout whose payment failed is
    tried again once, with a new payment, so a new provider key.
    """
    complete = PaymentEngine.complete_authorize

    def complete_authorize(
        self: PaymentEngine, attempt_id: str, outcome: ProviderOutcome
    ) -> StepResult:
        if outcome.status is OutcomeStatus.UNKNOWN:
            outcome = ProviderOutcome(OutcomeStatus.DECLINED, decline_code="provider_timeout")
        return complete(self, attempt_id, outcome)

    checkout = Clients._checkout

    def checkout_again_after_a_decline(self: Clients, order: Order, key_prefix: str) -> Step:
        yield from checkout(self, order, key_prefix)
        if not key_prefix.endswith("-a"):
            return
        try:
            self.w.node.check(self.w.env.now)
            payments = self.w.engine.list_payments(order.merchant_id, order.order_id)
        except (EngineDown, PaychaosError):
            return
        if payments and all(p.state == "failed" for p in payments):
            self.w.hit("shop retried a failed checkout with a new payment")
            yield from checkout(self, order, f"{order.order_id}-r")

    mp.setattr(PaymentEngine, "complete_authorize", complete_authorize)
    mp.setattr(Clients, "_checkout", checkout_again_after_a_decline)


def capture_allowed_after_void(mp: Patcher) -> None:
    """``begin_capture``'s guard lets a canceled payment through to the provider."""

    def begin_capture(self: PaymentEngine, command: Capture) -> StepResult:
        def step(s: Store) -> StepResult:
            loaded = s.load(self._command_reads(command, (CallKind.CAPTURE, CallKind.VOID)))
            replay = self._replay(command, loaded.key)
            if replay is not None:
                return replay
            payment = self._found(loaded.payment, command.payment_id, command.merchant_id)
            if payment.state not in {"authorized", "canceled"}:  # the defect: canceled
                raise IllegalTransition(payment.state, "captured")
            self._refuse_if_busy(loaded.busy)
            amount = command.amount_minor or payment.authorized_minor
            key_id = self._new_key(s, command)
            attempt = self._new_attempt(s, payment, CallKind.CAPTURE, amount, key_id)
            return StepResult(PaymentView.of(payment), 202, self._call(payment, attempt))

        return self._run(step)

    mp.setattr(PaymentEngine, "begin_capture", begin_capture)


def refund_posted_twice_on_a_duplicate_webhook(mp: Patcher) -> None:
    """Refund events skip the dedupe, and a repeated one posts the refund again.

    The database's own check (refunded <= captured) still refuses a repost that
    would exceed the capture; the defect posts only those it lets through.
    """
    seen = Store.provider_event
    insert = Store.insert_provider_event
    apply = PaymentEngine._apply_event

    def provider_event(self: Store, event_id: str) -> Row | None:
        row = seen(self, event_id)
        if row is not None and row["type"] == EventType.REFUND_SUCCEEDED.value:
            return None
        return row

    def insert_provider_event(self: Store, row: Row) -> None:
        if seen(self, row["provider_event_id"]) is None:
            insert(self, row)

    def apply_event(
        self: PaymentEngine, s: Store, p: Payment, event: ProviderEvent, attempts: list[Row]
    ) -> str:
        again = seen(s, event.event_id) is not None
        outcome = apply(self, s, p, event, attempts)
        refund = s.refund(event.refund_id) if again and event.refund_id else None
        if refund is None or refund["status"] != "succeeded":
            return outcome
        amount = refund["amount_minor"]
        if p.refunded_minor + amount > p.captured_minor:
            return outcome
        refunded, now = p.refunded_minor + amount, self.clock.now()
        self._update(s, p, refunded_minor=refunded, updated_at=now)
        self._post(s, p, ledger.refund(p.merchant_id, self._money(p, amount)), None)
        return "applied"

    inbox_dedupe_skipped(mp, EventType.REFUND_SUCCEEDED.value)
    events_taken_forgotten(mp, lambda row: row["type"] == EventType.REFUND_SUCCEEDED.value)
    mp.setattr(Store, "provider_event", provider_event)
    mp.setattr(Store, "insert_provider_event", insert_provider_event)
    mp.setattr(PaymentEngine, "_apply_event", apply_event)


def platform_fee_rounded_down(mp: Patcher) -> None:
    """The percentage part of a platform fee truncated instead of rounded half up."""

    def fee_minor(self: FeePlan, amount_minor: int) -> int:
        if amount_minor == 0:
            return 0
        return min(amount_minor, amount_minor * self.percent_bps // 10_000 + self.fixed_minor)

    mp.setattr(FeePlan, "fee_minor", fee_minor)


def wallet_moved_outside_the_ledger(mp: Patcher) -> None:
    """A refund's seller debit reaches the ledger but not the wallet."""
    add_to_wallet = Store.add_to_wallet

    def skip_debits(self: Store, owner_id: str, currency: str, pending_minor: int,
                    available_minor: int, at: Any) -> None:  # fmt: skip
        if pending_minor + available_minor >= 0:
            add_to_wallet(self, owner_id, currency, pending_minor, available_minor, at)

    mp.setattr(Store, "add_to_wallet", skip_debits)


def settlement_row_silently_ignored(mp: Patcher) -> None:
    """The reconciler loses a report's last row before matching (an off-by-one)."""

    def all_but_the_last(self: Reconciler, report: SettlementReport) -> tuple[SettlementRow, ...]:
        return report.rows[:-1]

    mp.setattr(Reconciler, "_report_rows", all_but_the_last)


def dispute_debited_twice(mp: Patcher) -> None:
    """The dispute's withdrawal is posted again by its funds_withdrawn webhook."""
    translate = stripe_dialect.event_from_stripe

    def withdrawal_as_opening(event: Any) -> ProviderEvent:
        parsed = translate(event)
        if parsed.type == "charge.dispute.funds_withdrawn":
            return dataclasses.replace(parsed, type=EventType.DISPUTE_CREATED.value)
        return parsed

    apply_dispute = PaymentEngine._apply_dispute

    def post_again(self: PaymentEngine, s: Store, p: Payment, event: ProviderEvent) -> str:
        if event.type == EventType.DISPUTE_CREATED and p.state == "disputed":
            money = self._money(p, event.amount_minor or p.disputed_minor)
            self._post(s, p, ledger.dispute_withdrawal(money), None)
            return "applied"
        return apply_dispute(self, s, p, event)

    mp.setattr(stripe_dialect, "event_from_stripe", withdrawal_as_opening)
    mp.setattr(PaymentEngine, "_apply_dispute", post_again)


def payout_beyond_the_available_balance(mp: Patcher) -> None:
    """The payout check reads the seller's whole balance, pending included."""
    wallet = Store.wallet

    def whole_balance(self: Store, owner_id: str, currency: str, *, lock: bool = False) -> Any:
        row = wallet(self, owner_id, currency, lock=lock)
        if row is not None:
            row = {**row, "available_minor": row["available_minor"] + row["pending_minor"]}
        return row

    mp.setattr(Store, "wallet", whole_balance)


DEFECTS = [
    Defect(idempotency_keys_ignored, "double-click", 120.0, frozenset({"I6"})),
    Defect(ledger_outside_the_transaction, "happy-path", 120.0, frozenset({"I3"})),
    Defect(timeout_treated_as_decline, "psp-timeouts", 120.0, frozenset({"I2", "I7"})),
    Defect(capture_allowed_after_void, "happy-path", 120.0, frozenset({"I4"})),
    Defect(refund_posted_twice_on_a_duplicate_webhook, "webhook-storm", 120.0, frozenset({"I7"})),
    Defect(webhook_dedupe_skipped, "webhook-storm", 120.0, frozenset({"I6"})),
    Defect(ledger_written_after_the_state_change, "crash-recovery", 600.0, frozenset({"I3"})),
    Defect(platform_fee_rounded_down, "marketplace-split", 120.0, frozenset({"F"})),
    Defect(wallet_moved_outside_the_ledger, "marketplace-split", 120.0, frozenset({"I5"})),
    Defect(settlement_row_silently_ignored, "settlement-mismatch", 120.0, frozenset({"R"})),
    Defect(dispute_debited_twice, "dispute-storm", 300.0, frozenset({"I9"})),
    Defect(payout_beyond_the_available_balance, "payout-failure", 1_200.0, frozenset({"I5"})),
]
