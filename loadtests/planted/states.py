"""Defects the engine's own definitions hide: a state the money does not allow.

Each plant keeps the ledger right and moves a payment to a state that its own
transition table accepts, so an oracle that judges by the engine's table (I4) or
that takes ``settled`` and ``disputed`` for the same provider status (I7) sees
nothing. The oracles' reference (``scenarios.references.states``) maps the
provider's intent, charge and dispute to the state the payment must show.
"""

from __future__ import annotations

from engine.adapters.store import Store
from engine.domain import ledger
from engine.domain.entities import Payment
from engine.domain.provider import EventType, ProviderEvent
from engine.domain.states import TRANSITIONS, PaymentState
from engine.service import splits
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

    def win_dispute(self: EventSteps, s: Store, p: Payment, event: ProviderEvent) -> None:
        _reinstate(self, s, p, event, S.SETTLED)

    mp.setattr(EventSteps, "_win_dispute", win_dispute)


def won_dispute_restores_the_state_before_it(mp: Patcher) -> None:
    """A won dispute puts the payment back in the state it had before the dispute
    (``captured``, say), and the engine's table was widened to let it: the money is
    right, but ``disputed -> captured`` is no move the money allows."""
    mp.setitem(TRANSITIONS, S.DISPUTED, TRANSITIONS[S.DISPUTED] | {S.CAPTURED,
               S.PARTIALLY_CAPTURED, S.PARTIALLY_REFUNDED})  # fmt: skip

    def win_dispute(self: EventSteps, s: Store, p: Payment, event: ProviderEvent) -> None:
        opened = [row for row in s.history(p.id) if row["reason"] == "dispute_created_by_event"]
        _reinstate(self, s, p, event, S(opened[-1]["from_state"]))

    mp.setattr(EventSteps, "_win_dispute", win_dispute)


def _reinstate(self: EventSteps, s: Store, p: Payment, event: ProviderEvent, won: S) -> None:
    """The engine's ``_win_dispute``, landing on ``won`` (the plants' change)."""
    disputed = p.disputed_minor
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
