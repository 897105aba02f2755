"""The payment state machine: the only place that says which moves are legal.

Rules:
- A payment moves only along an edge of ``TRANSITIONS``; anything else raises
  ``IllegalTransition``. History rows are checked against the same table.
- ``processing`` means the provider was asked to authorize and has not yet told
  us what happened (a timeout). It is left only on the provider's word: a
  response, a webhook or a lookup; never by guessing.
- One capture per payment, as at Stripe: a capture of less than the authorized
  amount lands in ``partially_captured`` and releases the rest of the hold.
- Refunds may be several; each partial one is a ``partially_refunded`` edge
  (a self-edge after the first).
- ``canceled`` (voided) and ``failed`` are terminal. ``refunded`` is too, but for
  a dispute: a cardholder may dispute a charge already refunded in full (the
  refund has not reached them yet), and the provider withdraws the disputed
  amount all the same.
- A dispute that is won returns the payment to ``settled``, or to ``refunded``
  when it was refunded in full; a lost one stays ``disputed``.

The engine's other lifecycles (provider attempts, refunds, payouts, webhook
inbox rows, idempotency keys, reconciliation exceptions) are tables of the same
kind beside this one, in ``engine.domain.lifecycles``.
"""

from __future__ import annotations

from enum import StrEnum

from engine.domain.errors import IllegalTransition


class PaymentState(StrEnum):
    CREATED = "created"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    AUTHORIZED = "authorized"
    PARTIALLY_CAPTURED = "partially_captured"
    CAPTURED = "captured"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    CANCELED = "canceled"
    FAILED = "failed"
    SETTLED = "settled"
    DISPUTED = "disputed"


S = PaymentState

_AUTHORIZE_OUTCOMES = {S.REQUIRES_ACTION, S.PROCESSING, S.AUTHORIZED, S.CAPTURED, S.FAILED}
_CAPTURED = {S.PARTIALLY_CAPTURED, S.CAPTURED}
_AFTER_CAPTURE = {S.PARTIALLY_REFUNDED, S.REFUNDED, S.SETTLED, S.DISPUTED}

TRANSITIONS: dict[PaymentState, frozenset[PaymentState]] = {
    S.CREATED: frozenset(_AUTHORIZE_OUTCOMES | {S.CANCELED}),
    S.REQUIRES_ACTION: frozenset(_AUTHORIZE_OUTCOMES | {S.CANCELED}),
    S.PROCESSING: frozenset(_AUTHORIZE_OUTCOMES - {S.PROCESSING} | {S.CANCELED}),
    S.AUTHORIZED: frozenset(_CAPTURED | {S.CANCELED}),
    S.PARTIALLY_CAPTURED: frozenset(_AFTER_CAPTURE),
    S.CAPTURED: frozenset(_AFTER_CAPTURE),
    S.PARTIALLY_REFUNDED: frozenset(_AFTER_CAPTURE),
    S.SETTLED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED, S.DISPUTED}),
    S.DISPUTED: frozenset({S.SETTLED, S.REFUNDED}),
    S.REFUNDED: frozenset({S.DISPUTED}),
    S.CANCELED: frozenset(),
    S.FAILED: frozenset(),
}

TERMINAL = frozenset(state for state, targets in TRANSITIONS.items() if not targets)

# States in which the payment holds or has taken the customer's money: at most
# one payment per (merchant, order id) may be in one of these (or on its way).
HOLDS_ORDER = frozenset(set(S) - {S.CREATED, S.CANCELED, S.FAILED})


def is_legal(from_state: PaymentState | None, to_state: PaymentState) -> bool:
    if from_state is None:
        return to_state is S.CREATED
    return to_state in TRANSITIONS[from_state]


def transition(from_state: PaymentState, to_state: PaymentState) -> PaymentState:
    if not is_legal(from_state, to_state):
        raise IllegalTransition(from_state.value, to_state.value)
    return to_state
