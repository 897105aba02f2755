"""A payment's own steps: create, authorize, capture, void and refund, begin and complete.

Money operations are split around the provider call (the sans-IO seam):
``begin_*`` records the attempt and its provider idempotency key and returns
the ``ProviderCall`` to make; the caller makes it; ``complete_*`` applies the
``ProviderOutcome`` (``engine.service.outcomes``). Also here: settling a
payment the provider's report matched, and a seller's fee plan for the
payments made from now on.
"""

from __future__ import annotations

from engine.adapters.store import Row, Store
from engine.domain import ledger
from engine.domain.commands import Authorize, Capture, CreatePayment, Refund, Void
from engine.domain.entities import Attempt, Payment
from engine.domain.errors import (
    AmountExceeded,
    IllegalTransition,
    OperationInProgress,
    OrderAlreadyActive,
)
from engine.domain.lifecycles import OPEN_ATTEMPT, RefundStatus
from engine.domain.marketplace import FeePlan
from engine.domain.provider import CallKind, OutcomeStatus, ProviderOutcome
from engine.domain.states import PaymentState, is_legal
from engine.domain.validation import parse_identifier
from engine.service import splits
from engine.service.outcomes import OutcomeSteps
from engine.service.views import PaymentView, StepResult

S = PaymentState

CAPTURED_STATES = frozenset({S.PARTIALLY_CAPTURED, S.CAPTURED, S.PARTIALLY_REFUNDED, S.SETTLED})
# The attempts in flight that refuse a new authorization, capture or void.
AUTHORIZE_BUSY = (CallKind.AUTHORIZE, CallKind.VOID)
CAPTURE_BUSY = (CallKind.CAPTURE, CallKind.VOID)
VOID_BUSY = (CallKind.AUTHORIZE, CallKind.CAPTURE, CallKind.VOID)


class PaymentSteps(OutcomeSteps):
    # -- create ---------------------------------------------------------------
    def create_payment(self, command: CreatePayment) -> StepResult:
        def step(s: Store) -> StepResult:
            replay = self._replay(command, self._key_of(s, command))
            if replay is not None:
                return replay
            now = self.clock.now()
            payment = Payment(
                id=self.ids.new_id("pay"), merchant_id=command.merchant_id,
                order_id=command.order_id, active_order_id=None,
                amount_minor=command.amount_minor, currency=command.currency,
                payment_method=command.payment_method, capture_method=command.capture_method,
                state=S.CREATED, authorized_minor=0, captured_minor=0, refunded_minor=0,
                refund_reserved_minor=0, fee_minor=0, disputed_minor=0,
                provider_payment_id=None, decline_code=None, metadata=command.metadata,
                history_count=1, created_at=now, updated_at=now,
                lines_count=len(command.splits), fee_pending=False,
            )  # fmt: skip
            s.insert_payment(payment.as_row())
            if command.splits:
                splits.create_lines(s, payment.id, command.splits,
                                    self.settings.default_fee_plan)  # fmt: skip
            self._record(s, payment, None, "created", None, None, command.amount_minor)
            view = PaymentView.of(payment)
            self._new_key(s, command, (201, view))
            return StepResult(view, 201)

        return self._run(step)

    # -- authorize ----------------------------------------------------------------
    def begin_authorize(self, command: Authorize) -> StepResult:
        def step(s: Store) -> StepResult:
            loaded = s.load(self._command_reads(command, AUTHORIZE_BUSY, order_holder=True))
            replay = self._replay(command, loaded.key)
            if replay is not None:
                return replay
            payment = self._found(loaded.payment, command.payment_id, command.merchant_id)
            if payment.state not in {S.CREATED, S.REQUIRES_ACTION}:
                raise IllegalTransition(payment.state.value, S.AUTHORIZED.value)
            # A void in doubt too: the provider may have canceled the intent already.
            self._refuse_if_busy(loaded.busy)
            self._claim_order(s, payment, loaded.order_holder)
            key_id = self._new_key(s, command)
            attempt = self._new_attempt(s, payment, CallKind.AUTHORIZE, payment.amount_minor,
                                        key_id)  # fmt: skip
            return StepResult(PaymentView.of(payment), 202, self._call(payment, attempt))

        return self._run(step)

    @staticmethod
    def _claim_order(s: Store, payment: Payment, holder: Row | None) -> None:
        """Claim the payment's order, unless ``holder`` (the payment holding it, as read)
        is another payment."""
        if holder is not None and holder["id"] != payment.id:
            raise OrderAlreadyActive(
                message=f"order {payment.order_id} is already paid or being paid by "
                f"{holder['id']} ({holder['state']})",
                field="order_id",
            )
        if holder is None:
            s.claim_order(payment.id, payment.order_id)
            payment.active_order_id = payment.order_id

    def complete_authorize(self, attempt_id: str, outcome: ProviderOutcome) -> StepResult:
        return self._complete(attempt_id, outcome, CallKind.AUTHORIZE)

    def complete_capture(self, attempt_id: str, outcome: ProviderOutcome) -> StepResult:
        return self._complete(attempt_id, outcome, CallKind.CAPTURE)

    def complete_void(self, attempt_id: str, outcome: ProviderOutcome) -> StepResult:
        return self._complete(attempt_id, outcome, CallKind.VOID)

    def complete_refund(self, attempt_id: str, outcome: ProviderOutcome) -> StepResult:
        return self._complete(attempt_id, outcome, CallKind.REFUND)

    def _complete(self, attempt_id: str, outcome: ProviderOutcome, kind: CallKind) -> StepResult:
        not_found = outcome.status is OutcomeStatus.NOT_FOUND
        assert not not_found, "not_found answers a lookup, not a call"

        def step(s: Store) -> StepResult:
            payment, attempt = self._locked_attempt(s, attempt_id)
            assert attempt.kind is kind, (attempt.kind, kind)
            if attempt.status not in OPEN_ATTEMPT:
                # A webhook or a lookup got there first: answer what the key saved,
                # so the client's first answer and every replay are the same.
                return self._saved_answer(s, payment, attempt)
            code = self._apply(s, payment, attempt, outcome, f"{kind.value}_{outcome.status}")
            view = self._finish_key(s, attempt.idempotency_id, code, payment, attempt.refund_id)
            return StepResult(view, code, refund_id=attempt.refund_id)

        return self._run(step)

    @staticmethod
    def _saved_answer(s: Store, payment: Payment, attempt: Attempt) -> StepResult:
        saved = s.idempotency_response(attempt.idempotency_id)
        if saved is None:
            return StepResult(PaymentView.of(payment), 200, refund_id=attempt.refund_id)
        code, body = saved
        return StepResult(PaymentView(body["payment"]), code, refund_id=body.get("refund_id"))

    # -- capture, void, refund -------------------------------------------------------
    def begin_capture(self, command: Capture) -> StepResult:
        def step(s: Store) -> StepResult:
            loaded = s.load(self._command_reads(command, CAPTURE_BUSY))
            replay = self._replay(command, loaded.key)
            if replay is not None:
                return replay
            payment = self._found(loaded.payment, command.payment_id, command.merchant_id)
            if payment.state is not S.AUTHORIZED:
                raise IllegalTransition(payment.state.value, S.CAPTURED.value)
            self._refuse_if_busy(loaded.busy)
            amount = command.amount_minor or payment.authorized_minor
            if amount > payment.authorized_minor:
                raise AmountExceeded(
                    "capture_exceeds_authorized",
                    f"capture of {amount} exceeds the authorized {payment.authorized_minor}",
                    field="amount_minor",
                )
            key_id = self._new_key(s, command)
            attempt = self._new_attempt(s, payment, CallKind.CAPTURE, amount, key_id)
            return StepResult(PaymentView.of(payment), 202, self._call(payment, attempt))

        return self._run(step)

    @staticmethod
    def _refuse_if_busy(busy: list[Row]) -> None:
        """Refuse the write while one of ``busy`` (the payment's attempts in flight that
        refuse it, as read) is."""
        if busy:
            raise OperationInProgress(
                message=f"a {busy[0]['kind']} of this payment is in progress ({busy[0]['id']})"
            )

    def begin_void(self, command: Void) -> StepResult:
        def step(s: Store) -> StepResult:
            loaded = s.load(self._command_reads(command, VOID_BUSY))
            replay = self._replay(command, loaded.key)
            if replay is not None:
                return replay
            payment = self._found(loaded.payment, command.payment_id, command.merchant_id)
            state = payment.state
            if state is S.PROCESSING:
                raise OperationInProgress(
                    message="the authorization's outcome is not known yet; retry after recovery"
                )
            if not is_legal(state, S.CANCELED):
                raise IllegalTransition(state.value, S.CANCELED.value)
            self._refuse_if_busy(loaded.busy)
            if state is S.CREATED:  # the provider never heard of it: nothing to release
                self._move(s, payment, S.CANCELED, "canceled_before_authorization")
                view = PaymentView.of(payment)
                self._new_key(s, command, (200, view))
                return StepResult(view, 200)
            key_id = self._new_key(s, command)
            attempt = self._new_attempt(s, payment, CallKind.VOID, payment.authorized_minor,
                                        key_id)  # fmt: skip
            return StepResult(PaymentView.of(payment), 202, self._call(payment, attempt))

        return self._run(step)

    def begin_refund(self, command: Refund) -> StepResult:
        def step(s: Store) -> StepResult:
            loaded = s.load(self._command_reads(command))
            replay = self._replay(command, loaded.key)
            if replay is not None:
                return replay
            payment = self._found(loaded.payment, command.payment_id, command.merchant_id)
            if payment.state not in CAPTURED_STATES:
                raise IllegalTransition(payment.state.value, S.REFUNDED.value)
            available = payment.open_to_refund_minor
            amount = command.amount_minor or available
            if amount <= 0 or amount > available:
                raise AmountExceeded(
                    "refund_exceeds_available",
                    f"refund of {amount} exceeds the {available} left to refund",
                    field="amount_minor",
                )
            return self._start_refund(s, payment, command, amount)

        return self._run(step)

    def _start_refund(self, s: Store, payment: Payment, command: Refund, amount: int) -> StepResult:
        now = self.clock.now()
        refund_id = self.ids.new_id("re")
        s.insert_refund(
            {
                "id": refund_id, "payment_id": payment.id, "amount_minor": amount,
                "currency": payment.currency, "status": RefundStatus.PENDING.value,
                "reason": command.reason, "created_at": now, "updated_at": now,
            }
        )  # fmt: skip
        reserved = payment.refund_reserved_minor + amount
        self._update(s, payment, refund_reserved_minor=reserved, updated_at=now)
        key_id = self._new_key(s, command)
        attempt = self._new_attempt(s, payment, CallKind.REFUND, amount, key_id, refund_id)
        call = self._call(payment, attempt)
        return StepResult(PaymentView.of(payment), 202, call, refund_id=refund_id)

    # -- settlement and fee plans ---------------------------------------------------------
    def settle_payment(self, payment_id: str, reason: str = "settlement_matched") -> bool:
        """The provider's settlement report matched the charge: the payment is settled and
        its sellers' shares move from pending to available. Idempotent: False if nothing moved."""

        def step(s: Store) -> bool:
            p = self._locked(s, payment_id)
            changed = False
            seq: int | None = None
            if self._settles(p):
                seq = self._move(s, p, S.SETTLED, reason)
                changed = True
            if p.lines_count:
                moves = splits.settlement_moves(s, p, self.clock.now())
                if any(amount for _, amount in moves):
                    self._post(s, p, ledger.split_settlement(p.currency, moves), seq)
                changed = changed or bool(moves)
            return changed

        return self._run(step)

    @staticmethod
    def _settles(p: Payment) -> bool:
        """Whether a matched settlement moves the payment to settled: not while its
        dispute is open (only the dispute's decision moves it on from there)."""
        return is_legal(p.state, S.SETTLED) and p.state is not S.DISPUTED

    def set_fee_plan(self, seller_id: str, plan: FeePlan) -> None:
        """A seller's platform fee for payments made from now on (lines keep theirs)."""
        parse_identifier(seller_id, "seller_id")
        now = self.clock.now()

        def step(s: Store) -> None:
            s.set_fee_plan(seller_id, plan.percent_bps, plan.fixed_minor, now)

        self._run(step)
