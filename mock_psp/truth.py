"""Ground truth for oracles: every money effect the provider really performed.

The engine's view of a payment may be wrong (that is what chaos testing looks for);
this log is what the provider actually did, recorded at the moment it did it, per
PaymentIntent and per merchant order reference (the ``order_id`` metadata key by
default). Oracles compare the engine against it (invariants I2, I3, I7, I9).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

EFFECTS_MAX = 5_000_000


class EffectKind(StrEnum):
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    RELEASED = "released"  # authorised but given back uncaptured (cancel or partial capture)
    REFUNDED = "refunded"
    DISPUTE_WITHDRAWN = "dispute_withdrawn"
    DISPUTE_REINSTATED = "dispute_reinstated"
    PAID_OUT = "paid_out"
    PAYOUT_REVERSED = "payout_reversed"


@dataclass(frozen=True, slots=True)
class MoneyEffect:
    at_s: float
    kind: EffectKind
    amount_minor: int
    currency: str
    object_id: str  # the charge, refund, dispute or payout that carries the effect
    payment_intent_id: str | None = None
    order_ref: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at_s,
            "kind": str(self.kind),
            "amount": self.amount_minor,
            "currency": self.currency,
            "object_id": self.object_id,
            "payment_intent": self.payment_intent_id,
            "order_ref": self.order_ref,
        }


@dataclass(slots=True)
class MoneyTotals:
    """Sums of effects for one PaymentIntent or one order (minor units, one currency)."""

    currency: str
    authorized_minor: int = 0
    captured_minor: int = 0
    released_minor: int = 0
    refunded_minor: int = 0
    disputed_minor: int = 0
    reinstated_minor: int = 0
    successful_charge_count: int = 0
    payment_intent_ids: list[str] = field(default_factory=list)

    @property
    def net_captured_minor(self) -> int:
        """What the customer is out of pocket: captured - refunded - disputes not reinstated."""
        return (
            self.captured_minor - self.refunded_minor - self.disputed_minor + self.reinstated_minor
        )

    def add(self, effect: MoneyEffect) -> None:
        assert effect.currency == self.currency, (effect.currency, self.currency)
        kind = effect.kind
        if kind is EffectKind.AUTHORIZED:
            self.authorized_minor += effect.amount_minor
            self.successful_charge_count += 1
        elif kind is EffectKind.CAPTURED:
            self.captured_minor += effect.amount_minor
        elif kind is EffectKind.RELEASED:
            self.released_minor += effect.amount_minor
        elif kind is EffectKind.REFUNDED:
            self.refunded_minor += effect.amount_minor
        elif kind is EffectKind.DISPUTE_WITHDRAWN:
            self.disputed_minor += effect.amount_minor
        elif kind is EffectKind.DISPUTE_REINSTATED:
            self.reinstated_minor += effect.amount_minor
        pi_id = effect.payment_intent_id
        if pi_id is not None and pi_id not in self.payment_intent_ids:
            self.payment_intent_ids.append(pi_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "authorized": self.authorized_minor,
            "captured": self.captured_minor,
            "released": self.released_minor,
            "refunded": self.refunded_minor,
            "disputed": self.disputed_minor,
            "reinstated": self.reinstated_minor,
            "net_captured": self.net_captured_minor,
            "successful_charge_count": self.successful_charge_count,
            "payment_intents": list(self.payment_intent_ids),
        }


class GroundTruth:
    __slots__ = ("_effects",)

    def __init__(self) -> None:
        self._effects: list[MoneyEffect] = []

    def record(self, effect: MoneyEffect) -> None:
        assert effect.amount_minor >= 0, effect
        assert len(self._effects) < EFFECTS_MAX, "ground truth is full"
        self._effects.append(effect)

    def effects(self) -> list[MoneyEffect]:
        return list(self._effects)

    def per_payment_intent(self) -> dict[str, MoneyTotals]:
        totals: dict[str, MoneyTotals] = {}
        for effect in self._effects:
            if effect.payment_intent_id is None:
                continue
            entry = totals.setdefault(effect.payment_intent_id, MoneyTotals(effect.currency))
            entry.add(effect)
        return totals

    def per_order(self) -> dict[str, dict[str, MoneyTotals]]:
        """order ref -> currency -> totals (one order may, wrongly, be paid in two currencies)."""
        totals: dict[str, dict[str, MoneyTotals]] = defaultdict(dict)
        for effect in self._effects:
            if effect.order_ref is None:
                continue
            by_currency = totals[effect.order_ref]
            by_currency.setdefault(effect.currency, MoneyTotals(effect.currency)).add(effect)
        return dict(totals)

    def paid_out_minor(self) -> dict[str, int]:
        result: dict[str, int] = defaultdict(int)
        for effect in self._effects:
            if effect.kind is EffectKind.PAID_OUT:
                result[effect.currency] += effect.amount_minor
            elif effect.kind is EffectKind.PAYOUT_REVERSED:
                result[effect.currency] -= effect.amount_minor
        return dict(result)

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "ground_truth",
            "payment_intents": {k: v.to_json() for k, v in self.per_payment_intent().items()},
            "orders": {
                ref: {cur: t.to_json() for cur, t in by_cur.items()}
                for ref, by_cur in self.per_order().items()
            },
            "paid_out": self.paid_out_minor(),
            "effects": [effect.to_json() for effect in self._effects],
        }

    def clear(self) -> None:
        self._effects.clear()
