"""Recovery's steps: the attempts to ask the provider about, and applying what it says.

An attempt whose outcome is unknown stays open; recovery looks it up by its
provider idempotency key on ``settings.recovery_schedule`` (``due_attempts``)
and applies the answer (``resolve_attempt``); past the schedule's end the
attempt is flagged for review and stays open: never guessed. Authorizations
waiting for the customer (3DS) are polled on the same schedule. Which of these
steps run when is the recovery policy's business (``engine.workers.recovery``).
Also here: fees the provider did not say at capture, and expiring old keys.
"""

from __future__ import annotations

from datetime import timedelta

from engine.adapters.store import Store
from engine.domain import ledger
from engine.domain.entities import Payment
from engine.domain.lifecycles import OPEN_ATTEMPT, AttemptStatus
from engine.domain.provider import CallKind, OutcomeStatus, ProviderCall, ProviderOutcome
from engine.domain.states import PaymentState
from engine.service.outcomes import OutcomeSteps
from engine.service.views import PaymentView, StepResult

O = OutcomeStatus  # noqa: E741

# What polling an authorization that waits for the customer answers until the customer acts.
CUSTOMER_TO_ACT = frozenset({O.UNKNOWN, O.NOT_FOUND, O.REQUIRES_ACTION})


class RecoverySteps(OutcomeSteps):
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
            before = self.clock.now() - older_than
            return self._calls(s, s.unresolved_attempts(before, limit, awaiting_customer))

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
            awaiting = attempt.status is AttemptStatus.REQUIRES_ACTION
            if awaiting and payment.state is not PaymentState.REQUIRES_ACTION:
                awaiting = False  # the payment moved on by another path
            if attempt.status not in OPEN_ATTEMPT and not awaiting:
                return StepResult(view, 200), None
            lookups = attempt.lookup_count + 1
            waiting = awaiting and outcome.status in CUSTOMER_TO_ACT
            unknown = outcome.status is O.UNKNOWN and not awaiting
            schedule = self._next_lookup(lookups) if unknown or waiting else {}
            self._update_attempt(s, attempt, lookup_count=lookups, updated_at=self.clock.now(),
                                 **schedule)  # fmt: skip
            if waiting:
                return StepResult(view, 200), None  # still waiting for the customer
            if outcome.status is O.NOT_FOUND:
                return StepResult(view, 202), self._call(payment, attempt)
            reason = f"{attempt.kind.value}_{outcome.status}_by_lookup"
            code = self._apply(s, payment, attempt, outcome, reason)
            view = self._finish_key(s, attempt.idempotency_id, code, payment, attempt.refund_id)
            return StepResult(view, code), None

        return self._run(step)

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

    # -- provider fees learned after the capture -------------------------------------------
    def fee_lookups(self, limit: int = 100) -> list[ProviderCall]:
        """Captures learned without their fee (by a webhook): ask the provider for it."""

        def step(s: Store) -> list[ProviderCall]:
            return [self._fee_call(Payment.from_row(p)) for p in s.fee_pending_payments(limit)]

        return self._run(step)

    @staticmethod
    def _fee_call(p: Payment) -> ProviderCall:
        return ProviderCall(
            attempt_id=p.id, kind=CallKind.FEE, idempotency_key=f"paychaos-fee-{p.id}",
            payment_id=p.id, merchant_id=p.merchant_id, order_id=p.order_id,
            amount_minor=p.captured_minor, currency=p.currency,
            payment_method=p.payment_method, capture_method=p.capture_method,
            provider_payment_id=p.provider_payment_id,
        )  # fmt: skip

    def complete_fee(self, payment_id: str, outcome: ProviderOutcome) -> bool:
        """Book the fee the provider says it took on the capture, once; False if not known."""

        def step(s: Store) -> bool:
            p = self._locked(s, payment_id)
            if not p.fee_pending or outcome.status is not O.SUCCEEDED or not outcome.fee_known:
                return False
            extra = outcome.fee_minor - p.fee_minor
            assert extra >= 0, (payment_id, outcome.fee_minor, p.fee_minor)
            self._update(s, p, fee_minor=outcome.fee_minor, fee_pending=False,
                         updated_at=self.clock.now())  # fmt: skip
            if extra:
                fee = ledger.Journal(
                    "provider_fee", tuple(ledger.provider_fee(self._money(p, extra)))
                )
                self._post(s, p, fee, None)
            return True

        return self._run(step)

    # -- housekeeping -------------------------------------------------------------------------
    def expire_idempotency_keys(self) -> int:
        """Forget completed keys past their retention; returns how many went."""
        return self._run(
            lambda s: s.expire_idempotency_keys(self.clock.now(), self.settings.expiry_batch_max)
        )
