"""The oracles: after a run, prove or refute the invariants over both sides' truth.

The engine's side is its database (``engine.audit`` gives I1, I3, I4 and I8);
the provider's side is the mock PSP's ground truth (what money it really moved)
and its objects. A violation names the invariant, the payments and a short
trace of each: the engine's history next to the provider's events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from engine.adapters import schema as t
from engine.audit import CheckResult, audit
from mock_psp.truth import EffectKind, GroundTruth, MoneyEffect, MoneyTotals
from scenarios.marketplace import fee_violations
from scenarios.reconcile import check_reconciliation
from scenarios.world import World

# What the provider's PaymentIntent status must be for each engine state.
PROVIDER_STATUS: dict[str, set[str | None]] = {
    "created": {None, "requires_payment_method", "requires_confirmation", "canceled"},
    "requires_action": {"requires_action"},
    "authorized": {"requires_capture"},
    "partially_captured": {"succeeded"},
    "captured": {"succeeded"},
    "partially_refunded": {"succeeded"},
    "refunded": {"succeeded"},
    "settled": {"succeeded"},
    "disputed": {"succeeded"},
    "canceled": {None, "canceled"},
    "failed": {None, "requires_payment_method", "canceled"},
    "processing": set(),  # still unknown after quiescence: stuck
}


@dataclass(slots=True)
class Invariant:
    id: str
    name: str
    description: str
    checked: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    applicable: bool = True
    reason: str = ""  # why it is not applicable (or not checked in this mode)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, subject: str, detail: str) -> None:
        self.violations.append({"subject": subject, "detail": detail})

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id, "name": self.name, "description": self.description,
            "applicable": self.applicable, "checked": self.checked, "ok": self.ok,
            "violations": self.violations,
        }  # fmt: skip
        if self.reason:
            out["reason"] = self.reason
        return out


def _from_audit(result: CheckResult) -> Invariant:
    inv = Invariant(result.invariant, result.name, result.description, result.checked)
    for subject, detail in result.violations:
        inv.add(subject, detail)
    return inv


def _intents_by_payment(world: World) -> dict[str, list[Any]]:
    intents: dict[str, list[Any]] = defaultdict(list)
    for pi in world.psp.state.payment_intents.values():
        payment_id = pi.metadata.get("payment_id")
        if payment_id:
            intents[payment_id].append(pi)
    return intents


def check_no_double_charge(world: World) -> Invariant:
    amounts = {ref: order.amount_minor for ref, order in world.orders.items()}
    return no_double_charge(world.psp.truth, amounts, _intents_by_payment(world))


def no_double_charge(
    truth: GroundTruth, order_amounts: Mapping[str, int], intents: Mapping[str, list[Any]]
) -> Invariant:
    """Nobody is charged twice: per intent, per order, and per engine payment.

    An authorization that was released (voided) and replaced by another is not
    a double charge; two holds on one order at the same time, or two intents
    that both kept money, are. ``intents`` are the provider's intents per
    engine payment (objects with ``id``, ``amount_received_minor`` and
    ``amount_capturable_minor``).
    """
    inv = Invariant("I2", "no_double_charge", "one charge per payment and per order; net <= order")
    for pi_id, totals in sorted(truth.per_payment_intent().items()):
        inv.checked += 1
        if totals.successful_charge_count > 1:
            inv.add(pi_id, f"{totals.successful_charge_count} successful charges on one intent")
    for order_ref, by_currency in sorted(truth.per_order().items()):
        amount = order_amounts.get(order_ref)
        for currency, totals in sorted(by_currency.items()):
            if amount is not None and totals.net_captured_minor > amount:
                inv.add(
                    order_ref,
                    f"net captured {totals.net_captured_minor} {currency} exceeds the order's "
                    f"{amount}",
                )
    _check_holds(truth.effects(), inv)
    for payment_id, held_by in sorted(intents.items()):
        charged = [
            pi.id for pi in held_by if pi.amount_received_minor or pi.amount_capturable_minor
        ]
        if len(charged) > 1:
            inv.add(payment_id, f"one payment holds money on {len(charged)} provider intents")
    return inv


def _check_holds(effects: Iterable[MoneyEffect], inv: Invariant) -> None:
    """Per order: never two intents holding money at once, never two that kept it."""
    live: dict[str, dict[str, int]] = defaultdict(dict)  # order -> intent -> held
    kept: dict[str, set[str]] = defaultdict(set)
    reported: set[str] = set()
    for effect in effects:
        order, pi_id = effect.order_ref, effect.payment_intent_id
        if order is None or pi_id is None:
            continue
        held = live[order]
        if effect.kind is EffectKind.AUTHORIZED:
            held[pi_id] = held.get(pi_id, 0) + effect.amount_minor
            if sum(1 for amount in held.values() if amount > 0) > 1 and order not in reported:
                reported.add(order)
                inv.add(order, f"{len(held)} intents hold money for one order at once")
        elif effect.kind in {EffectKind.CAPTURED, EffectKind.RELEASED}:
            held[pi_id] = held.get(pi_id, 0) - effect.amount_minor
            if effect.kind is EffectKind.CAPTURED:
                kept[order].add(pi_id)
    for order, intents in sorted(kept.items()):
        if len(intents) > 1:
            inv.add(order, f"{len(intents)} intents captured money for one order")


def check_provider_amounts(world: World) -> Invariant:
    return provider_amounts(world.psp.truth)


def provider_amounts(truth: GroundTruth) -> Invariant:
    inv = Invariant("I3", "provider_amounts", "at the provider: refunded <= captured <= authorized")
    for pi_id, totals in sorted(truth.per_payment_intent().items()):
        inv.checked += 1
        if totals.captured_minor > totals.authorized_minor:
            inv.add(
                pi_id, f"captured {totals.captured_minor} > authorized {totals.authorized_minor}"
            )
        if totals.refunded_minor > totals.captured_minor:
            inv.add(pi_id, f"refunded {totals.refunded_minor} > captured {totals.captured_minor}")
    return inv


def check_idempotency(world: World) -> Invariant:
    inv = Invariant(
        "I6", "idempotency", "replays answer the same; other bodies are refused; events once"
    )
    inv.checked = (
        world.coverage["client replayed a finished request"]
        + world.coverage["key reused with another body: refused"]
    )
    for subject, detail in world.idempotency_violations:
        inv.add(subject, detail)
    return inv


def check_webhook_intake(world: World) -> Invariant:
    inv = Invariant("W", "webhook_intake", "genuine webhooks accepted; forged and stale refused")
    inv.checked = sum(v for k, v in world.coverage.items() if k.startswith("webhook"))
    for subject, detail in world.intake_violations:
        inv.add(subject, detail)
    return inv


def check_convergence(world: World) -> Invariant:
    p = t.payments.c
    with world.db.engine.connect() as c:
        open_attempts = {
            row[0]: row[1]
            for row in c.execute(
                sa.select(t.attempts.c.payment_id, sa.func.count())
                .where(t.attempts.c.status.in_(("pending", "unknown")))
                .group_by(t.attempts.c.payment_id)
            )
        }
        rows = c.execute(
            sa.select(p.id, p.state, p.authorized_minor, p.captured_minor, p.refunded_minor)
        ).all()
    payments = [tuple(row) for row in rows]
    truth = world.psp.truth.per_payment_intent()
    return convergence(payments, open_attempts, _intents_by_payment(world), truth)


def convergence(
    payments: Iterable[tuple[Any, ...]],
    open_attempts: Mapping[str, int],
    intents: Mapping[str, list[Any]],
    truth: Mapping[str, MoneyTotals],
) -> Invariant:
    """I7 over the engine's payments ``(id, state, authorized, captured, refunded)``,
    their open provider attempts, the provider's intents per payment (objects with
    ``id``, ``status``, ``amount_capturable_minor``, ``amount_received_minor``) and
    the provider's money totals per intent."""
    inv = Invariant("I7", "convergence", "after quiescence the engine agrees with the provider")
    seen: set[str] = set()
    for pid, state, authorized, captured, refunded in payments:
        inv.checked += 1
        seen.add(pid)
        if open_attempts.get(pid):
            inv.add(pid, f"{open_attempts[pid]} provider attempt(s) still unresolved ({state})")
        live = [pi for pi in intents.get(pid, []) if pi.status != "canceled"] or intents.get(
            pid, []
        )
        pi = live[-1] if live else None
        status = str(pi.status) if pi is not None else None
        if status not in PROVIDER_STATUS[state]:
            inv.add(pid, f"engine says {state}, provider says {status or 'no intent'}")
            continue
        if pi is None:
            continue
        totals = truth.get(pi.id)
        provider_captured = totals.captured_minor if totals else 0
        provider_refunded = totals.refunded_minor if totals else 0
        if state == "authorized" and pi.amount_capturable_minor != authorized:
            inv.add(
                pid, f"authorized {authorized} but the provider holds {pi.amount_capturable_minor}"
            )
        if (captured, refunded) != (provider_captured, provider_refunded):
            inv.add(
                pid,
                f"engine captured/refunded {captured}/{refunded}, provider "
                f"{provider_captured}/{provider_refunded}",
            )
    for payment_id, orphans in sorted(intents.items()):
        held = [pi for pi in orphans if pi.amount_received_minor or pi.amount_capturable_minor]
        if payment_id not in seen and held:
            inv.add(payment_id, "the provider holds money for a payment the engine does not know")
    return inv


def check_projection(world: World, inv: Invariant) -> None:
    """I8's consumer side: every event consumed once, the projection matches the engine."""
    projection = world.projection
    with world.db.engine.connect() as c:
        states = dict(c.execute(sa.select(t.payments.c.id, t.payments.c.state)).tuples().all())
        published = c.execute(sa.select(sa.func.count()).select_from(t.outbox)).scalar_one()
    if len(projection.seen) != published:
        inv.add("outbox", f"{len(projection.seen)} events consumed, {published} in the outbox")
    for payment_id, state in sorted(states.items()):
        projected = projection.states.get(payment_id, (0, None))[1]
        if projected != state:
            inv.add(payment_id, f"projection says {projected}, the engine says {state}")


def check_engine_errors(world: World) -> Invariant:
    inv = Invariant("E", "typed_outcomes", "every step ends in a typed outcome, never a crash")
    inv.checked = sum(world.coverage.values())
    for what, detail in world.engine_errors:
        inv.add(what, detail)
    return inv


def check_platform_fees(world: World) -> Invariant:
    inv = Invariant("F", "platform_fees", "each line's fee follows its seller's plan, half up")
    with world.db.engine.connect() as connection:
        inv.checked, violations = fee_violations(connection)
    for subject, detail in violations:
        inv.add(subject, detail)
    return _needs_splits(world, inv)


def check_money_conservation(world: World) -> Invariant:
    """I9: what the provider holds, by its own balance transactions, equals what the
    engine's ledger says it holds (the clearing account, less payouts the provider has
    sent but the bank has not confirmed). With I1 (a zero trial balance) this is the
    decomposition: provider settlement = merchant and seller payables + platform fees
    - provider fees - refunds - disputes - payouts, to the minor unit."""
    inv = Invariant("I9", "money_conservation",
                    "the provider's balance equals the engine's ledger, per currency")  # fmt: skip
    provider: dict[str, int] = defaultdict(int)
    for bt in world.psp.state.balance_transactions.values():
        provider[bt.currency.upper()] += bt.net_minor
    e = t.ledger_entries.c
    signed = sa.case((e.side == "D", e.amount_minor), else_=-e.amount_minor)
    query = (
        sa.select(e.account, e.currency, sa.func.sum(signed))
        .where(e.account.in_(("psp_clearing", "payouts_in_transit")))
        .group_by(e.account, e.currency)
    )
    engine: dict[str, int] = defaultdict(int)
    with world.db.engine.connect() as connection:
        for _account, currency, total in connection.execute(query):
            engine[str(currency)] += int(total)
    for currency in sorted(set(provider) | set(engine)):
        inv.checked += 1
        if provider[currency] != engine[currency]:
            inv.add(currency, f"the provider holds {provider[currency]}, the engine's ledger "
                              f"says {engine[currency]}")  # fmt: skip
    return inv


def _needs_splits(world: World, inv: Invariant) -> Invariant:
    """Not applicable to a scenario without split payments (and none was made)."""
    if inv.checked == 0 and inv.ok and world.scenario.workload.marketplace.split_rate == 0:
        inv.applicable = False
        inv.reason = "no split payments in this scenario"
    return inv


def run_oracles(world: World) -> list[Invariant]:
    with world.db.engine.connect() as connection:
        engine_checks = {result.invariant: _from_audit(result) for result in audit(connection)}
    provider_amounts = check_provider_amounts(world)
    amounts = engine_checks["I3"]
    amounts.checked += provider_amounts.checked
    amounts.violations.extend(provider_amounts.violations)
    check_projection(world, engine_checks["I8"])
    engine_checks[
        "I8"
    ].description = "one outbox event per change; consumers dedupe; projection matches"
    transitions = engine_checks["I4"]  # and the client side: illegal commands are refused
    transitions.checked += world.coverage["capture after void refused"]
    for subject, detail in world.transition_violations:
        transitions.add(subject, detail)
    return [
        engine_checks["I1"],
        check_no_double_charge(world),
        amounts,
        engine_checks["I4"],
        _needs_splits(world, engine_checks["I5"]),
        check_platform_fees(world),
        check_money_conservation(world),
        check_idempotency(world),
        check_convergence(world),
        engine_checks["I8"],
        check_webhook_intake(world),
        check_engine_errors(world),
        check_reconciliation(world),
    ]


def payment_trace(world: World, payment_id: str) -> dict[str, Any]:
    """The engine's history next to the provider's events for one payment."""
    with world.db.engine.connect() as c:
        history = [
            {"t": _t(row.at), "from": row.from_state, "to": row.to_state, "reason": row.reason}
            for row in c.execute(
                sa.select(t.payment_history)
                .where(t.payment_history.c.payment_id == payment_id)
                .order_by(t.payment_history.c.seq)
            )
        ]
    intents = {pi.id for pi in _intents_by_payment(world).get(payment_id, [])}
    provider_events = [
        {"t": stub.created_s, "type": stub.type, "id": stub.id}
        for stub in world.psp.state.event_log
        if stub.object_id in intents or stub.payment_intent_id in intents
    ]
    return {"payment_id": payment_id, "engine": history, "provider": provider_events}


def _t(moment: Any) -> str:
    return str(moment.isoformat())
