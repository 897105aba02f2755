"""Defects the engine's own definitions hide: a state the money does not allow.

Each plant keeps the ledger right and moves a payment to a state that its own
transition table accepts, so an oracle that judges by the engine's table (I4) or
that takes ``settled`` and ``disputed`` for the same provider status (I7) sees
nothing. The oracles' reference (``scenarios.references.states``) maps the
provider's intent, charge and dispute to the state the payment must show.
"""

from __future__ import annotations

from engine.adapters.store import Store
from engine.domain.entities import Payment
from engine.domain.provider import EventType, ProviderEvent
from engine.domain.states import TRANSITIONS, PaymentState
from engine.service.events import EventSteps
from loadtests.planted.catalogue import Defect, Patcher

S = PaymentState


def lost_dispute_returns_to_settled(mp: Patcher) -> None:
    """A dispute's closing event ends the dispute whatever its outcome: a lost one puts
    the payment back to ``settled`` (no money moves: the withdrawal stands)."""
    apply = EventSteps._apply_dispute

    def apply_dispute(self: EventSteps, s: Store, p: Payment, event: ProviderEvent) -> str:
        if event.type == EventType.DISPUTE_LOST and p.state is S.DISPUTED:
            self._move(s, p, S.SETTLED, "dispute_closed_by_event", event_id=event.event_id)
            return "applied"
        return apply(self, s, p, event)

    mp.setattr(EventSteps, "_apply_dispute", apply_dispute)


def won_dispute_forgets_a_full_refund(mp: Patcher) -> None:
    """A won dispute always returns the payment to ``settled``, even when the charge
    was refunded in full while it was open (the money is right, the state is not)."""

    mp.setattr(EventSteps, "_state_after_won_dispute", staticmethod(lambda s, p: S.SETTLED))


def won_dispute_restores_the_state_before_it(mp: Patcher) -> None:
    """A won dispute puts the payment back in the state it had before the dispute
    (``captured``, say), and the engine's table was widened to let it: the money is
    right, but ``disputed -> captured`` is no move the money allows."""
    mp.setitem(TRANSITIONS, S.DISPUTED, TRANSITIONS[S.DISPUTED] | {S.CAPTURED,
               S.PARTIALLY_CAPTURED, S.PARTIALLY_REFUNDED})  # fmt: skip

    def state_before_the_dispute(s: Store, p: Payment) -> S:
        opened = [row for row in s.history(p.id) if row["reason"] == "dispute_created_by_event"]
        return S(opened[-1]["from_state"])

    mp.setattr(EventSteps, "_state_after_won_dispute", staticmethod(state_before_the_dispute))


BLIND_SPOT = "reference states"
DEFECTS = [
    Defect(lost_dispute_returns_to_settled, "dispute-storm", 600.0, frozenset({"I7"}), BLIND_SPOT),
    Defect(
        won_dispute_forgets_a_full_refund, "dispute-storm", 600.0, frozenset({"I7"}), BLIND_SPOT
    ),
    Defect(
        won_dispute_restores_the_state_before_it,
        "dispute-storm",
        600.0,
        frozenset({"I4"}),
        BLIND_SPOT,
    ),
]
