"""The invariants of a live run, from what the engine's API and the provider showed.

The same invariants as the simulation's oracles (``scenarios.oracles``), with
the same ``Invariant`` type and, where the evidence has the same shape, the same
functions (I2, the provider's side of I3, I7):

- I1 each journal of each payment (``GET /v1/payments/{id}/ledger``) has two
  entries or more and balances per currency; the run's entries sum to zero per
  currency; each merchant's ``GET /v1/balance`` moved by exactly what the run's
  journals say (so use a merchant of the run's own).
- I2 from the provider's ground truth over the run's orders and its intents.
- I3 0 <= refunded <= captured <= authorized <= amount per payment, the ledger
  says the same (hold, capture, refunds), and the same at the provider.
- I4 each history (``GET /v1/payments/{id}``) is a contiguous walk along the
  oracles' own state machine (``scenarios.references.states``, not the
  engine's table) ending in the payment's state; a capture sent after a void
  was refused.
- I6 replays of finished requests answered the same; keys reused with another
  body were refused.
- I7 each payment agrees with the provider's intent (state and amounts), none
  is processing and no refund is pending. An open capture or void attempt is
  not visible through the API: only its effect is, and that is compared.
- W the provider's delivery statistics: no forged or stale-signed delivery
  was accepted.
- E every error the engine answered was typed (never a 500, always a code).

Not checked over HTTP, each with its reason in the report: I5 (wallets are not
in the API) and I8 (the outbox is inside the engine; read with ``--db``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from engine.domain.ledger import (
    HOLDS_PSP_CLEARING,
    PSP_CLEARING,
    Entry,
    Side,
    holds_merchant_payable,
    journal_balances,
    merchant_payable,
)
from loadtests.live.clients import Evidence
from loadtests.live.settle import Snapshot
from scenarios.oracles import Invariant, convergence, no_double_charge, provider_amounts
from scenarios.references import states as canon

STATES = canon.STATES


@dataclass(frozen=True, slots=True)
class IntentView:
    """A provider intent as the oracles read it, from its Stripe JSON."""

    id: str
    status: str
    amount_capturable_minor: int
    amount_received_minor: int
    amount_minor: int = 0

    @classmethod
    def of(cls, body: dict[str, Any]) -> IntentView:
        return cls(
            str(body["id"]), str(body["status"]), int(body.get("amount_capturable") or 0),
            int(body.get("amount_received") or 0), int(body.get("amount") or 0),
        )  # fmt: skip


def live_invariants(
    shot: Snapshot,
    evidence: Evidence,
    balances_before: list[dict[str, Any]],
    webhooks_before: dict[str, Any],
    outbox: Invariant | None = None,
) -> list[Invariant]:
    intents = intents_by_payment(shot)
    amounts = check_amounts(shot)
    at_provider = provider_amounts(shot.truth)
    amounts.checked += at_provider.checked
    amounts.violations.extend(at_provider.violations)
    order_amounts = {ref: order.amount_minor for ref, order in evidence.orders.items()}
    return [
        check_ledgers(shot, balances_before),
        no_double_charge(shot.truth, order_amounts, intents),
        amounts,
        check_transitions(shot, evidence),
        not_checked(
            "I5",
            "wallets",
            "wallets equal the ledger; no payout beyond the balance",
            "wallets are not in the engine's public API",
        ),
        check_idempotency(evidence),
        check_convergence(shot, intents),
        outbox
        or not_checked(
            "I8",
            "outbox_complete",
            "one outbox event per state change",
            "the outbox is inside the engine, not in its API (give --db to read it)",
        ),
        check_webhook_intake(shot, webhooks_before),
        check_typed(evidence),
    ]


def not_checked(id_: str, name: str, description: str, why: str) -> Invariant:
    return Invariant(id_, name, description, applicable=False, reason=f"not in live mode: {why}")


def intents_by_payment(shot: Snapshot) -> dict[str, list[IntentView]]:
    """The provider's intents per engine payment (by the metadata the engine sent, or its id)."""
    owner = {
        str(p["provider_payment_id"]): pid
        for pid, p in shot.payments.items()
        if p.get("provider_payment_id")
    }
    intents: dict[str, list[IntentView]] = defaultdict(list)
    for pi_id, body in sorted(shot.intents.items()):
        payment_id = (body.get("metadata") or {}).get("payment_id") or owner.get(pi_id)
        if payment_id:
            intents[str(payment_id)].append(IntentView.of(body))
    return intents


def _entries(journal: dict[str, Any]) -> list[Entry]:
    return [
        Entry(str(e["account"]), Side(e["side"]), int(e["amount_minor"]), str(e["currency"]))
        for e in journal["entries"]
    ]


def _readable_entries(journals: list[dict[str, Any]]) -> list[Entry]:
    """Every entry that can be read (an unreadable one is reported by I1)."""
    entries = []
    for journal in journals:
        try:
            entries.extend(_entries(journal))
        except (KeyError, ValueError, TypeError):
            continue
    return entries


def check_ledgers(shot: Snapshot, balances_before: list[dict[str, Any]]) -> Invariant:
    inv = Invariant("I1", "ledger_balanced", "journals balance; the run's entries sum to zero")
    trial: dict[str, int] = defaultdict(int)
    for pid, journals in sorted(shot.ledgers.items()):
        for journal in journals:
            inv.checked += 1
            try:
                entries = _entries(journal)
            except (KeyError, ValueError, TypeError):
                inv.add(pid, f"journal {journal.get('id')} has an unreadable entry")
                continue
            if len(entries) < 2 or any(entry.amount_minor <= 0 for entry in entries):
                inv.add(pid, f"journal {journal['id']} has fewer than two positive entries")
            if not journal_balances(entries):
                inv.add(pid, f"journal {journal['id']} ({journal['kind']}) does not balance")
            for entry in entries:
                trial[entry.currency] += entry.signed_minor()
    for currency, total in sorted(trial.items()):
        if total:
            inv.add("trial_balance", f"the run's entries sum to {total} {currency}, not zero")
    _check_balances(shot, balances_before, inv)
    return inv


def _check_balances(shot: Snapshot, before: list[dict[str, Any]], inv: Invariant) -> None:
    """Each merchant's balance moved by what the run's journals posted to its payables."""
    expected: dict[tuple[str, str, str], int] = defaultdict(int)
    for pid, journals in shot.ledgers.items():
        merchant = str(shot.payments[pid]["merchant_id"])
        accounts = {merchant_payable(merchant): "available",
                    holds_merchant_payable(merchant): "pending"}  # fmt: skip
        for entry in _readable_entries(journals):
            if entry.account in accounts:  # payables are credit-normal
                where = (merchant, entry.currency, accounts[entry.account])
                expected[where] -= entry.signed_minor()
    moved: dict[tuple[str, str, str], int] = defaultdict(int)
    for sign, documents in ((1, shot.balances), (-1, before)):
        for document in {str(d["merchant_id"]): d for d in documents}.values():
            for currency, kinds in document["balances"].items():
                for kind, amount in kinds.items():
                    moved[(str(document["merchant_id"]), currency, kind)] += sign * int(amount)
    for where in sorted(set(expected) | set(moved)):
        inv.checked += 1
        if expected[where] != moved[where]:
            merchant, currency, kind = where
            inv.add(
                f"balance:{merchant}",
                f"{kind} {currency} moved by {moved[where]}, the run's journals say "
                f"{expected[where]}",
            )


def _ledger_totals(journals: list[dict[str, Any]]) -> dict[str, int]:
    """Per payment, as ``engine.audit`` derives it: the hold still open, captured, refunded."""
    totals = {"held": 0, "captured": 0, "refunded": 0}
    for journal in journals:
        for entry in _entries(journal):
            if entry.account == HOLDS_PSP_CLEARING:
                totals["held"] += entry.signed_minor()
            elif entry.account == PSP_CLEARING and journal["kind"] == "capture":
                totals["captured"] += entry.amount_minor if entry.side is Side.DEBIT else 0
            elif entry.account == PSP_CLEARING and journal["kind"] == "refund":
                totals["refunded"] += entry.amount_minor
    return totals


def check_amounts(shot: Snapshot) -> Invariant:
    inv = Invariant("I3", "amounts_consistent", "refunded <= captured <= authorized")
    for pid, p in sorted(shot.payments.items()):
        inv.checked += 1
        refunded, captured = p["refunded_minor"], p["captured_minor"]
        authorized, amount = p["authorized_minor"], p["amount_minor"]
        if not 0 <= refunded <= captured <= authorized <= amount:
            inv.add(pid, f"amounts out of order: {refunded=} {captured=} {authorized=} {amount=}")
        try:
            ledger = _ledger_totals(shot.ledgers.get(pid, []))
        except (KeyError, ValueError, TypeError):
            continue  # an unreadable ledger is I1's finding
        held = authorized if p["state"] == canon.AUTHORIZED else 0
        expected = {"held": held, "captured": captured, "refunded": refunded}
        for name, value in expected.items():
            if ledger[name] != value:
                inv.add(pid, f"ledger {name} {ledger[name]} != payment {name} {value}")
    return inv


def history_breaks(history: list[dict[str, Any]], state: str) -> list[str]:
    """What is wrong with one payment's history (empty: a legal walk ending in ``state``)."""
    problems, previous_seq, previous = [], 0, None
    for item in history:
        seq, from_state, to_state = item["seq"], item["from_state"], item["to_state"]
        if seq != previous_seq + 1 or from_state != previous:
            problems.append(f"history breaks at seq {seq}: from {from_state} after {previous}")
        elif to_state not in STATES or (from_state is not None and from_state not in STATES):
            problems.append(f"unknown state in {from_state} -> {to_state} at seq {seq}")
        elif not canon.legal(from_state, to_state):
            problems.append(f"illegal transition {from_state} -> {to_state} at seq {seq}")
        previous_seq, previous = seq, to_state
    if not history:
        problems.append("payment without history")
    elif previous != state:
        problems.append(f"history ends in {previous} but the payment is {state}")
    return problems


def check_transitions(shot: Snapshot, evidence: Evidence) -> Invariant:
    inv = Invariant("I4", "legal_transitions", "histories follow the state machine")
    for pid, payment in sorted(shot.payments.items()):
        history = list(payment.get("history") or [])
        inv.checked += len(history)
        try:
            problems = history_breaks(history, str(payment["state"]))
        except (KeyError, TypeError, ValueError):
            problems = ["the history cannot be read (items need seq, from_state, to_state)"]
        for problem in problems:
            inv.add(pid, problem)
    inv.checked += evidence.coverage["capture after void refused"]
    for subject, detail in evidence.transition_violations:
        inv.add(subject, detail)
    return inv


def check_idempotency(evidence: Evidence) -> Invariant:
    inv = Invariant("I6", "idempotency", "replays answer the same; other bodies are refused")
    inv.checked = (
        evidence.coverage["client replayed a finished request"]
        + evidence.coverage["key reused with another body: refused"]
    )
    for subject, detail in evidence.idempotency_violations:
        inv.add(subject, detail)
    return inv


def check_convergence(shot: Snapshot, intents: dict[str, list[IntentView]]) -> Invariant:
    open_attempts = dict(shot.unresolved)
    rows = []
    for pid, p in sorted(shot.payments.items()):
        pending = sum(1 for refund in p.get("refunds", []) if refund.get("status") == "pending")
        if pending:
            open_attempts[pid] = open_attempts.get(pid, 0) + pending
        state = str(p["state"])
        if state not in STATES:
            state = "processing"  # no provider status answers an unknown state
        rows.append((pid, state, p["authorized_minor"], p["captured_minor"], p["refunded_minor"]))
    return convergence(rows, open_attempts, intents, shot.truth.per_payment_intent())


def check_webhook_intake(shot: Snapshot, before: dict[str, Any]) -> Invariant:
    """From the provider's delivery outcomes during the run (all its endpoints)."""
    inv = Invariant("W", "webhook_intake", "forged and stale-signed webhooks refused")
    earlier = before.get("outcomes", {})
    for outcome, count in sorted(shot.webhooks.get("outcomes", {}).items()):
        delta = int(count) - int(earlier.get(outcome, 0))
        kind, _, verdict = outcome.partition(".")
        if verdict not in {"accepted", "rejected"} or delta <= 0:
            continue
        inv.checked += delta
        if kind in {"forged", "old_timestamp"} and verdict == "accepted":
            inv.add(f"webhook.{kind}", f"{delta} {kind} deliveries were accepted")
    return inv


def check_typed(evidence: Evidence) -> Invariant:
    inv = Invariant("E", "typed_outcomes", "every error is typed: never a 500, always a code")
    inv.checked = len(evidence.latencies_s) + sum(
        count for path, count in evidence.coverage.items() if path.startswith("client retried")
    )
    for what, detail in evidence.engine_errors:
        inv.add(what, detail)
    return inv
