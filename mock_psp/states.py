"""The PaymentIntent state machine, as data.

Rules: a PaymentIntent starts in requires_payment_method (or requires_confirmation
when created with a payment method). Confirming moves it to requires_action (3DS),
processing, requires_capture (manual capture) or succeeded (automatic capture); a
decline sends it back to requires_payment_method. Capture moves requires_capture to
succeeded. Cancel is allowed from the states in ``CANCELABLE`` (never while
processing); succeeded and canceled are terminal. Anything not in the table raises
``IllegalTransition``: handlers check preconditions first and answer the client with
Stripe's ``payment_intent_unexpected_state``, so reaching the assert is a bug.
"""

from __future__ import annotations

from enum import StrEnum

from mock_psp.errors import IllegalTransition


class PiStatus(StrEnum):
    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    CANCELED = "canceled"
    SUCCEEDED = "succeeded"


S = PiStatus

TRANSITIONS: frozenset[tuple[PiStatus, PiStatus]] = frozenset(
    {
        (S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_CONFIRMATION),
        (S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_ACTION),
        (S.REQUIRES_PAYMENT_METHOD, S.PROCESSING),
        (S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_CAPTURE),
        (S.REQUIRES_PAYMENT_METHOD, S.SUCCEEDED),
        (S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_PAYMENT_METHOD),  # declined again
        (S.REQUIRES_PAYMENT_METHOD, S.CANCELED),
        (S.REQUIRES_CONFIRMATION, S.REQUIRES_ACTION),
        (S.REQUIRES_CONFIRMATION, S.PROCESSING),
        (S.REQUIRES_CONFIRMATION, S.REQUIRES_CAPTURE),
        (S.REQUIRES_CONFIRMATION, S.SUCCEEDED),
        (S.REQUIRES_CONFIRMATION, S.REQUIRES_PAYMENT_METHOD),
        (S.REQUIRES_CONFIRMATION, S.CANCELED),
        (S.REQUIRES_ACTION, S.PROCESSING),
        (S.REQUIRES_ACTION, S.REQUIRES_CAPTURE),
        (S.REQUIRES_ACTION, S.SUCCEEDED),
        (S.REQUIRES_ACTION, S.REQUIRES_PAYMENT_METHOD),
        (S.REQUIRES_ACTION, S.CANCELED),
        (S.PROCESSING, S.REQUIRES_CAPTURE),
        (S.PROCESSING, S.SUCCEEDED),
        (S.PROCESSING, S.REQUIRES_PAYMENT_METHOD),
        (S.REQUIRES_CAPTURE, S.SUCCEEDED),
        (S.REQUIRES_CAPTURE, S.CANCELED),
    }
)

TERMINAL: frozenset[PiStatus] = frozenset({S.SUCCEEDED, S.CANCELED})
CONFIRMABLE: frozenset[PiStatus] = frozenset(
    {S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_CONFIRMATION, S.REQUIRES_ACTION}
)
CANCELABLE: frozenset[PiStatus] = frozenset(
    {S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_CONFIRMATION, S.REQUIRES_ACTION, S.REQUIRES_CAPTURE}
)


def check_transition(current: PiStatus, target: PiStatus) -> PiStatus:
    if (current, target) not in TRANSITIONS:
        raise IllegalTransition(f"payment_intent {current} -> {target} is not allowed")
    return target
