"""Applying the provider's answers: what an outcome does to a payment and its money.

One place for every path an answer comes by (the call's own response, a lookup
by idempotency key, a webhook): ``_apply`` closes (or keeps open) the attempt
and hands the outcome to its kind's rule, which moves the payment and posts the
journal in the same unit of work. A rule is given ``attempt=None`` when the
provider moved on its own (3DS completed, an intent expired): only
authorizations and voids can.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.adapters.store import Store
from engine.domain import ledger
from engine.domain.entities import Attempt, Payment
from engine.domain.lifecycles import AttemptStatus as A
from engine.domain.lifecycles import RefundStatus
from engine.domain.provider import CallKind, OutcomeStatus, ProviderOutcome
from engine.domain.states import PaymentState, is_legal
from engine.service import splits
from engine.service.steps import Steps

S = PaymentState
O = OutcomeStatus  # noqa: E741

ATTEMPT_STATUS = {
    O.SUCCEEDED: A.SUCCEEDED,
    O.DECLINED: A.DECLINED,
    O.REQUIRES_ACTION: A.REQUIRES_ACTION,
    O.UNKNOWN: A.UNKNOWN,
}
RESPONSE_CODE = {O.SUCCEEDED: 200, O.DECLINED: 402, O.REQUIRES_ACTION: 200, O.UNKNOWN: 202}


class OutcomeSteps(Steps):
    def _apply(
        self,
        s: Store,
        payment: Payment,
        attempt: Attempt,
        outcome: ProviderOutcome,
        reason: str,
        event_id: str | None = None,
    ) -> int:
        """Apply a provider's answer to an open attempt; return the response code."""
        status = outcome.status
        if status is O.REQUIRES_ACTION and attempt.kind is not CallKind.AUTHORIZE:
            status = O.UNKNOWN  # not an answer a capture, void or refund can have
        now = self.clock.now()
        self._update_attempt(
            s,
            attempt,
            status=ATTEMPT_STATUS[status].value,
            decline_code=outcome.decline_code,
            updated_at=now,
            resolved_at=None if status is O.UNKNOWN else now,
            **self._schedule_after(status, now),
        )
        apply = {
            CallKind.AUTHORIZE: self._apply_authorize,
            CallKind.CAPTURE: self._apply_capture,
            CallKind.VOID: self._apply_void,
            CallKind.REFUND: self._apply_refund,
        }[attempt.kind]
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
        p: Payment,
        attempt: Attempt | None,
        outcome: ProviderOutcome,
        status: O,
        reason: str,
        event_id: str | None,
    ) -> None:
        attempt_id = attempt.id if attempt else None
        ids: dict[str, Any] = {
            "provider_payment_id": outcome.provider_payment_id or p.provider_payment_id
        }
        if status is O.SUCCEEDED:
            amount = outcome.amount_minor or p.amount_minor
            assert 0 < amount <= p.amount_minor, (amount, p.amount_minor)
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
                journal = ledger.authorization_hold(p.merchant_id, self._money(p, amount))
            self._post(s, p, journal, seq)
        elif status is O.DECLINED:
            self._move(
                s, p, S.FAILED, reason, attempt_id=attempt_id, event_id=event_id,
                active_order_id=None, decline_code=outcome.decline_code, **ids,
            )  # fmt: skip
        elif status is O.REQUIRES_ACTION and p.state is not S.REQUIRES_ACTION:
            self._move(s, p, S.REQUIRES_ACTION, reason, attempt_id=attempt_id, event_id=event_id,
                       **ids)  # fmt: skip
        elif status is O.UNKNOWN and p.state is not S.PROCESSING:
            self._move(s, p, S.PROCESSING, reason, attempt_id=attempt_id, event_id=event_id)

    def _apply_capture(
        self,
        s: Store,
        p: Payment,
        attempt: Attempt | None,
        outcome: ProviderOutcome,
        status: O,
        reason: str,
        event_id: str | None,
    ) -> None:
        if status is not O.SUCCEEDED:
            return  # a failed or unknown capture leaves the authorization as it was
        assert attempt is not None
        captured = outcome.amount_minor or attempt.amount_minor
        assert 0 < captured <= p.authorized_minor, (captured, p.authorized_minor)
        to_state = S.CAPTURED if captured == p.authorized_minor else S.PARTIALLY_CAPTURED
        seq = self._move(
            s, p, to_state, reason, attempt_id=attempt.id, event_id=event_id,
            amount_minor=captured, captured_minor=captured, fee_minor=outcome.fee_minor,
            fee_pending=not outcome.fee_known,
        )  # fmt: skip
        journal = self._capture_journal(s, p, p.authorized_minor, captured, outcome.fee_minor)
        self._post(s, p, journal, seq)

    def _capture_journal(
        self, s: Store, p: Payment, held_minor: int | None, captured_minor: int, fee_minor: int
    ) -> ledger.Journal:
        """The capture's journal; a split payment's lines and wallets move with it."""
        held = None if held_minor is None else self._money(p, held_minor)
        money, fee = self._money(p, captured_minor), self._money(p, fee_minor)
        if not p.lines_count:
            return ledger.capture(p.merchant_id, held, money, fee)
        shares = splits.capture_shares(s, p, captured_minor, self.clock.now())
        return ledger.split_capture(p.merchant_id, held, money, fee, shares)

    def _apply_void(
        self,
        s: Store,
        p: Payment,
        attempt: Attempt | None,
        outcome: ProviderOutcome,
        status: O,
        reason: str,
        event_id: str | None,
    ) -> None:
        if status is not O.SUCCEEDED:
            return
        if not is_legal(p.state, S.CANCELED):
            return  # it ended first (3DS failed while the void was in doubt): nothing is held
        held = p.authorized_minor if p.state is S.AUTHORIZED else 0
        seq = self._move(
            s, p, S.CANCELED, reason, attempt_id=attempt.id if attempt else None,
            event_id=event_id, amount_minor=held or None, active_order_id=None,
        )  # fmt: skip
        if held:
            self._post(s, p, ledger.void(p.merchant_id, self._money(p, held)), seq)

    def _apply_refund(
        self,
        s: Store,
        p: Payment,
        attempt: Attempt | None,
        outcome: ProviderOutcome,
        status: O,
        reason: str,
        event_id: str | None,
    ) -> None:
        assert attempt is not None and attempt.refund_id is not None
        amount = attempt.amount_minor
        now = self.clock.now()
        if status is O.UNKNOWN:
            return  # the reservation stays until the provider answers
        reserved = p.refund_reserved_minor - amount
        assert reserved >= 0, (p.refund_reserved_minor, amount)
        if status is O.DECLINED:
            self._update(s, p, refund_reserved_minor=reserved, updated_at=now)
            s.update_refund(attempt.refund_id, status=RefundStatus.FAILED.value, updated_at=now)
            return
        refunded = p.refunded_minor + amount
        changes = {"refunded_minor": refunded, "refund_reserved_minor": reserved}
        to_state = S.REFUNDED if refunded == p.captured_minor else S.PARTIALLY_REFUNDED
        seq: int | None = None
        # A dispute is left only by its decision (which lands on refunded if the money
        # came back in full meanwhile): refunded while disputed, money moves, state stays.
        if p.state is not S.DISPUTED and is_legal(p.state, to_state):
            seq = self._move(s, p, to_state, reason, attempt_id=attempt.id, event_id=event_id,
                             amount_minor=amount, **changes)  # fmt: skip
        else:
            self._update(s, p, updated_at=now, **changes)
        s.update_refund(attempt.refund_id, status=RefundStatus.SUCCEEDED.value, updated_at=now,
                        provider_refund_id=outcome.provider_refund_id)  # fmt: skip
        money = self._money(p, amount)
        if p.lines_count:
            shares = splits.refund_shares(s, p, amount, now)
            self._post(s, p, ledger.split_refund(p.merchant_id, money, shares), seq)
        else:
            self._post(s, p, ledger.refund(p.merchant_id, money), seq)
