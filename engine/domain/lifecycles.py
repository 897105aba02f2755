"""The lifecycles beside the payment's: attempts, refunds, payouts, inbox rows and keys.

Each is a ``StrEnum`` (its values are what the database and the API hold) and a
table of legal moves, keyed by the status moved from (``None``: a row being
created). Only the engine's own code moves these rows, after checking what it
may do, so a move outside its table is a defect: ``moved`` asserts it (a
payment's moves, which a client's request can ask for, raise
``IllegalTransition`` in ``engine.domain.states`` instead). A self-move is in a
table where the engine writes the same status again (another "unknown", a
failed webhook counted and kept pending).

- attempt: ``pending`` until the provider answers; ``unknown`` (a timeout)
  until a lookup or a webhook answers; ``requires_action`` while the customer
  acts (3DS); ``succeeded`` and ``declined`` are final.
- refund: ``pending`` until its attempt is answered, then ``succeeded`` or
  ``failed``.
- payout: ``pending`` until the provider answers the call, ``unknown`` while
  nobody knows, ``in_transit`` once accepted; ``paid`` or ``failed`` by the
  provider's word (``failed`` at once when the call is refused).
- inbox row: stored ``pending`` (or ``applied`` with its event, or already
  ``dead`` when its first application was the last allowed); a failure keeps it
  ``pending`` or makes it ``dead``; a dead letter is put back ``pending`` by hand.
- idempotency key: ``in_flight`` while its request runs, ``completed`` with the
  saved answer (stored completed at once when the answer is known).
- reconciliation exception: ``open`` until a person resolves it, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar


class AttemptStatus(StrEnum):
    PENDING = "pending"
    UNKNOWN = "unknown"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class PayoutStatus(StrEnum):
    PENDING = "pending"
    UNKNOWN = "unknown"
    IN_TRANSIT = "in_transit"
    PAID = "paid"
    FAILED = "failed"


class InboxStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    DEAD = "dead"


class KeyStatus(StrEnum):
    IN_FLIGHT = "in_flight"
    COMPLETED = "completed"


class ExceptionStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


A, R, P, I, K = AttemptStatus, RefundStatus, PayoutStatus, InboxStatus, KeyStatus  # noqa: E741
_ANSWERED = frozenset({A.SUCCEEDED, A.DECLINED})

ATTEMPT_MOVES: dict[AttemptStatus | None, frozenset[AttemptStatus]] = {
    None: frozenset({A.PENDING}),
    A.PENDING: frozenset({A.UNKNOWN, A.REQUIRES_ACTION} | _ANSWERED),
    A.UNKNOWN: frozenset({A.UNKNOWN, A.REQUIRES_ACTION} | _ANSWERED),
    A.REQUIRES_ACTION: frozenset({A.REQUIRES_ACTION} | _ANSWERED),
    A.SUCCEEDED: frozenset(),
    A.DECLINED: frozenset(),
}
REFUND_MOVES: dict[RefundStatus | None, frozenset[RefundStatus]] = {
    None: frozenset({R.PENDING}),
    R.PENDING: frozenset({R.SUCCEEDED, R.FAILED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset(),
}
PAYOUT_MOVES: dict[PayoutStatus | None, frozenset[PayoutStatus]] = {
    None: frozenset({P.PENDING}),
    P.PENDING: frozenset({P.UNKNOWN, P.IN_TRANSIT, P.PAID, P.FAILED}),
    P.UNKNOWN: frozenset({P.UNKNOWN, P.IN_TRANSIT, P.PAID, P.FAILED}),
    P.IN_TRANSIT: frozenset({P.PAID, P.FAILED}),
    P.PAID: frozenset(),
    P.FAILED: frozenset(),
}
INBOX_MOVES: dict[InboxStatus | None, frozenset[InboxStatus]] = {
    None: frozenset({I.PENDING, I.APPLIED, I.DEAD}),
    I.PENDING: frozenset({I.PENDING, I.APPLIED, I.DEAD}),
    I.DEAD: frozenset({I.PENDING}),
    I.APPLIED: frozenset(),
}
KEY_MOVES: dict[KeyStatus | None, frozenset[KeyStatus]] = {
    None: frozenset({K.IN_FLIGHT, K.COMPLETED}),
    K.IN_FLIGHT: frozenset({K.COMPLETED}),
    K.COMPLETED: frozenset(),
}

EXCEPTION_MOVES: dict[ExceptionStatus | None, frozenset[ExceptionStatus]] = {
    None: frozenset({ExceptionStatus.OPEN}),
    ExceptionStatus.OPEN: frozenset({ExceptionStatus.RESOLVED}),
    ExceptionStatus.RESOLVED: frozenset(),
}

# Attempts whose provider call may still have an effect (a tuple: queries bind it in order).
OPEN_ATTEMPT = (A.PENDING, A.UNKNOWN)
# Payouts whose provider call has no answer yet.
OPEN_PAYOUT = (P.PENDING, P.UNKNOWN)

E = TypeVar("E", bound=StrEnum)


def moved(moves: Mapping[E | None, frozenset[E]], from_status: E | None, to_status: E) -> E:
    """``to_status``, asserted legal from ``from_status`` in ``moves``: the engine's own
    moves are invariants, not requests."""
    assert to_status in moves[from_status], f"illegal move {from_status} -> {to_status}"
    return to_status
