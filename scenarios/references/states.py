"""The oracles' own payment state machine, and what the provider says a payment must show.

Written from the money story, not imported from the system under test (whose own
table, ``engine/domain/states.py``, is what is being judged); the state names are
the ones paychaos's API shows, as plain strings.

The story, edge by edge:
- A payment is ``created`` first. Asking the provider to authorize ends in a hold
  (``authorized``, manual capture), money taken (``captured``, automatic
  capture), a customer step (``requires_action``: 3DS), a decline (``failed``) or
  no answer yet (``processing``, left only on the provider's word). Before any
  hold, the payment may be abandoned (``canceled``). Asked again, 3DS may be
  asked again (``requires_action`` to itself).
- A hold is captured once, all of it (``captured``) or part of it
  (``partially_captured``, the rest released), or released whole (``canceled``).
- Captured money is refunded in part (``partially_refunded``, again and again)
  or in full (``refunded``), confirmed by the provider's settlement
  (``settled``), or withdrawn by a chargeback (``disputed``).
- ``settled`` money may still be refunded or disputed. A ``refunded`` payment
  may still be disputed: the cardholder disputes before the refund reaches them.
  Nothing else leaves ``refunded``: there is no money left to settle.
- A dispute is left only by its decision: won, the money comes back and the
  payment is ``settled``, or ``refunded`` if it was refunded in full meanwhile;
  lost, it stays ``disputed`` for good.
- ``canceled`` and ``failed`` are terminal: no money was ever kept.

The provider's side (after quiescence): the intent's status says which phase the
payment is in; once it succeeded, the charge's captured and refunded amounts and
its dispute say which state (``expected``). A chargeback withdraws its amount
when it opens and reinstates it when it is won; an inquiry (``warning_*``)
moves no money and is no dispute of the payment's.
"""

from __future__ import annotations

from dataclasses import dataclass

CREATED = "created"
REQUIRES_ACTION = "requires_action"
PROCESSING = "processing"
AUTHORIZED = "authorized"
PARTIALLY_CAPTURED = "partially_captured"
CAPTURED = "captured"
PARTIALLY_REFUNDED = "partially_refunded"
REFUNDED = "refunded"
SETTLED = "settled"
DISPUTED = "disputed"
CANCELED = "canceled"
FAILED = "failed"

_ASKED = frozenset({REQUIRES_ACTION, PROCESSING, AUTHORIZED, CAPTURED, FAILED, CANCELED})
_MONEY_TAKEN = frozenset({PARTIALLY_REFUNDED, REFUNDED, SETTLED, DISPUTED})

# from-state (None: the first row) -> the states it may move to.
MOVES: dict[str | None, frozenset[str]] = {
    None: frozenset({CREATED}),
    CREATED: _ASKED,
    REQUIRES_ACTION: _ASKED,
    PROCESSING: _ASKED - {PROCESSING},
    AUTHORIZED: frozenset({PARTIALLY_CAPTURED, CAPTURED, CANCELED}),
    PARTIALLY_CAPTURED: _MONEY_TAKEN,
    CAPTURED: _MONEY_TAKEN,
    PARTIALLY_REFUNDED: _MONEY_TAKEN,
    SETTLED: _MONEY_TAKEN - {SETTLED},
    REFUNDED: frozenset({DISPUTED}),
    DISPUTED: frozenset({SETTLED, REFUNDED}),
    CANCELED: frozenset(),
    FAILED: frozenset(),
}
STATES = frozenset(state for state in MOVES if state is not None)


def legal(from_state: str | None, to_state: str) -> bool:
    """Whether a history row ``from_state -> to_state`` is a move the money allows."""
    return from_state in MOVES and to_state in MOVES[from_state]


# -- the provider's objects -> what the payment must show ----------------------------------
CHARGEBACK_OPEN = frozenset({"needs_response", "under_review"})
INQUIRY = frozenset({"warning_needs_response", "warning_under_review", "warning_closed"})
DISPUTE_OPEN, DISPUTE_WON, DISPUTE_LOST = "open", "won", "lost"


@dataclass(frozen=True, slots=True)
class DisputeView:
    """A provider dispute: its status, amount, and whether funds moved each way."""

    status: str
    amount_minor: int
    funds_withdrawn: bool
    funds_reinstated: bool


@dataclass(frozen=True, slots=True)
class ProviderView:
    """One payment's intent at the provider, its charge's amounts and its dispute."""

    status: str | None  # the intent's, None: the provider has no intent for it
    amount_minor: int = 0
    amount_capturable_minor: int = 0
    captured_minor: int = 0
    refunded_minor: int = 0
    dispute: DisputeView | None = None


@dataclass(frozen=True, slots=True)
class Expected:
    """The states a payment may show, and the amounts it must (None: not said)."""

    states: frozenset[str]
    authorized_minor: int | None = None
    disputed_minor: int = 0
    dispute_status: str | None = None  # open | won | lost: a chargeback's canonical status


# Before money is taken: the intent's status alone says the state.
BY_INTENT_STATUS: dict[str | None, frozenset[str]] = {
    None: frozenset({CREATED, CANCELED, FAILED}),
    "requires_payment_method": frozenset({CREATED, FAILED}),
    "requires_confirmation": frozenset({CREATED}),
    "requires_action": frozenset({REQUIRES_ACTION}),
    "processing": frozenset(),  # still unknown after quiescence: stuck
    "requires_capture": frozenset({AUTHORIZED}),
    "canceled": frozenset({CREATED, CANCELED, FAILED}),
}


def dispute_status(dispute: DisputeView | None) -> str | None:
    """A chargeback's canonical status; None for no dispute or an inquiry (no money)."""
    if dispute is None or dispute.status in INQUIRY or not dispute.funds_withdrawn:
        return None
    if dispute.status in CHARGEBACK_OPEN:
        return DISPUTE_OPEN
    return DISPUTE_WON if dispute.funds_reinstated else DISPUTE_LOST


def expected(view: ProviderView) -> Expected:
    """What a payment must show after quiescence, given the provider's objects."""
    if view.status != "succeeded":
        states = BY_INTENT_STATUS.get(view.status, frozenset())
        held = view.amount_capturable_minor if view.status == "requires_capture" else None
        return Expected(states, authorized_minor=held)
    status = dispute_status(view.dispute)
    if status in {DISPUTE_OPEN, DISPUTE_LOST}:
        assert view.dispute is not None
        return Expected(frozenset({DISPUTED}), None, view.dispute.amount_minor, status)
    states = _captured_states(view)
    if status == DISPUTE_WON:  # decided: the payment came back from disputed
        states = states - {CAPTURED, PARTIALLY_CAPTURED}
    return Expected(states, None, 0, status)


def _captured_states(view: ProviderView) -> frozenset[str]:
    """A succeeded intent's state by its charge's amounts (no chargeback withdrawn)."""
    if view.refunded_minor and view.refunded_minor >= view.captured_minor:
        return frozenset({REFUNDED})
    if view.refunded_minor:
        return frozenset({PARTIALLY_REFUNDED, SETTLED})
    if view.captured_minor < view.amount_minor:
        return frozenset({PARTIALLY_CAPTURED, SETTLED})
    return frozenset({CAPTURED, SETTLED})
