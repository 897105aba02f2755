"""Audit a stored engine database: the invariants that must hold over its rows.

Each check reads the database afresh and names the payments that break it:

- ``ledger_balanced`` (I1): every journal balances per currency, has at least
  two entries, and the trial balance is zero.
- ``amounts_consistent`` (I3): 0 <= refunded <= captured <= authorized <= amount
  per payment, and the ledger says the same (holds, captures, refunds).
- ``legal_transitions`` (I4): each history is a contiguous walk along the state
  machine's table, ending in the payment's current state.
- ``outbox_complete`` (I8): every state change has exactly one outbox event.
- ``wallets`` (I5): each seller's wallet equals its ledger balances (pending and
  available, per currency), and replaying the ledger in order no payout took
  more than the seller's available balance just before it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.adapters import schema as t
from engine.domain.ledger import SELLERS_PREFIX, Account, seller_of
from engine.domain.states import PaymentState, is_legal

EXAMPLES_MAX = 20


@dataclass(slots=True)
class CheckResult:
    name: str
    invariant: str
    description: str
    checked: int = 0
    violations: list[tuple[str, str]] = field(default_factory=list)  # (subject, detail)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, subject: str, detail: str) -> None:
        self.violations.append((subject, detail))


def _signed() -> Any:
    e = t.ledger_entries.c
    return sa.case((e.side == "D", e.amount_minor), else_=-e.amount_minor)


def check_ledger(c: Connection) -> CheckResult:
    result = CheckResult("ledger_balanced", "I1", "journals balance; trial balance is zero")
    e, j = t.ledger_entries.c, t.ledger_journals.c
    result.checked = c.execute(
        sa.select(sa.func.count()).select_from(t.ledger_journals)
    ).scalar_one()
    unbalanced = c.execute(
        sa.select(e.journal_id, e.currency, sa.func.sum(_signed()))
        .group_by(e.journal_id, e.currency)
        .having(sa.func.sum(_signed()) != 0)
    )
    for journal_id, currency, total in unbalanced:
        result.add(journal_id, f"journal off by {total} {currency}")
    thin = c.execute(
        sa.select(j.id, j.payment_id)
        .outerjoin(t.ledger_entries, e.journal_id == j.id)
        .group_by(j.id, j.payment_id)
        .having(sa.func.count(e.id) < 2)
    )
    for journal_id, payment_id in thin:
        result.add(payment_id or journal_id, f"journal {journal_id} has fewer than two entries")
    orphans = c.execute(
        sa.select(e.journal_id).where(~sa.exists().where(j.id == e.journal_id)).distinct()
    )
    for (journal_id,) in orphans:
        result.add(journal_id, "entries without a journal")
    trial = c.execute(sa.select(e.currency, sa.func.sum(_signed())).group_by(e.currency))
    for currency, total in trial:
        if total != 0:
            result.add("trial_balance", f"trial balance is {total} {currency}, not zero")
    return result


def _ledger_by_payment(c: Connection) -> dict[str, dict[str, int]]:
    """Per payment: the hold still open, what was captured and what was refunded."""
    e, j = t.ledger_entries.c, t.ledger_journals.c
    derived: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    rows = c.execute(
        sa.select(j.payment_id, j.kind, e.account, e.side, e.amount_minor).join(
            t.ledger_journals, e.journal_id == j.id
        )
    )
    for payment_id, kind, account, side, amount in rows:
        signed = amount if side == "D" else -amount
        totals = derived[payment_id]
        if account == Account.HOLDS_PSP_CLEARING:
            totals["held"] += signed
        elif account == Account.PSP_CLEARING and kind == "capture" and side == "D":
            totals["captured"] += amount
        elif account == Account.PSP_CLEARING and kind == "refund":
            totals["refunded"] += amount
    return derived


def check_amounts(c: Connection) -> CheckResult:
    result = CheckResult("amounts_consistent", "I3", "refunded <= captured <= authorized")
    derived = _ledger_by_payment(c)
    p = t.payments.c
    query = sa.select(
        p.id, p.state, p.amount_minor, p.authorized_minor, p.captured_minor, p.refunded_minor
    )
    for pid, state, amount, authorized, captured, refunded in c.execute(query):
        result.checked += 1
        if not 0 <= refunded <= captured <= authorized <= amount:
            result.add(pid, f"amounts out of order: {refunded=} {captured=} {authorized=}")
        ledger = derived.get(pid, {})
        held = authorized if state == PaymentState.AUTHORIZED else 0
        expected = {"held": held, "captured": captured, "refunded": refunded}
        for name, value in expected.items():
            if ledger.get(name, 0) != value:
                result.add(pid, f"ledger {name} {ledger.get(name, 0)} != payment {name} {value}")
    return result


def check_transitions(c: Connection) -> CheckResult:
    result = CheckResult("legal_transitions", "I4", "histories follow the state machine")
    states = {
        pid: state for pid, state in c.execute(sa.select(t.payments.c.id, t.payments.c.state))
    }
    h = t.payment_history.c
    query = sa.select(h.payment_id, h.seq, h.from_state, h.to_state).order_by(h.payment_id, h.seq)
    last: dict[str, tuple[int, str]] = {}
    for pid, seq, from_state, to_state in c.execute(query):
        result.checked += 1
        previous_seq, previous_state = last.get(pid, (0, None))
        if seq != previous_seq + 1 or from_state != previous_state:
            result.add(
                pid, f"history breaks at seq {seq}: from {from_state} after {previous_state}"
            )
        elif to_state not in PaymentState.__members__.values() or not is_legal(
            PaymentState(from_state) if from_state else None, PaymentState(to_state)
        ):
            result.add(pid, f"illegal transition {from_state} -> {to_state} at seq {seq}")
        last[pid] = (seq, to_state)
    for pid, state in states.items():
        if pid not in last:
            result.add(pid, "payment without history")
        elif last[pid][1] != state:
            result.add(pid, f"history ends in {last[pid][1]} but the payment is {state}")
    return result


def check_outbox(c: Connection) -> CheckResult:
    result = CheckResult("outbox_complete", "I8", "one outbox event per state change")
    h, o = t.payment_history.c, t.outbox.c
    events: dict[tuple[str, int], int] = defaultdict(int)
    for pid, seq in c.execute(sa.select(o.payment_id, o.history_seq)):
        events[(pid, seq)] += 1
    for pid, seq in c.execute(sa.select(h.payment_id, h.seq)):
        result.checked += 1
        count = events.pop((pid, seq), 0)
        if count != 1:
            result.add(pid, f"state change {seq} has {count} outbox events")
    for (pid, seq), count in events.items():
        result.add(pid, f"{count} outbox events for a state change {seq} that is not in history")
    return result


def _zero() -> dict[str, int]:
    return {"pending": 0, "available": 0}


def wallet_violations(connection: sa.Connection) -> tuple[int, list[tuple[str, str]]]:
    """(wallets checked, [(seller, detail)]) for I5."""
    e = t.ledger_entries.c
    signed = sa.case((e.side == "D", e.amount_minor), else_=-e.amount_minor)
    query = (
        sa.select(e.account, e.currency, sa.func.sum(signed))
        .where(e.account.startswith(SELLERS_PREFIX))
        .group_by(e.account, e.currency)
    )
    derived: dict[tuple[str, str], dict[str, int]] = defaultdict(_zero)
    for account, currency, total in connection.execute(query):
        bucket, seller = seller_of(str(account))
        derived[(seller, str(currency))][bucket] = -int(total)
    wallets = {
        (row.owner_id, row.currency): {
            "pending": row.pending_minor,
            "available": row.available_minor,
        }
        for row in connection.execute(sa.select(t.wallets))
    }
    violations = []
    for key in sorted(set(derived) | set(wallets)):
        zero = {"pending": 0, "available": 0}
        have, want = wallets.get(key, zero), derived.get(key, zero)
        if have != want:
            violations.append((key[0], f"{key[1]} wallet {have} but the ledger says {want}"))
    return len(wallets), violations[:EXAMPLES_MAX]


def payout_violations(connection: sa.Connection) -> tuple[int, list[tuple[str, str]]]:
    """(payouts checked, [(seller, detail)]): the available balance before each payout."""
    e, j = t.ledger_entries.c, t.ledger_journals.c
    query = (
        sa.select(e.account, e.currency, e.side, e.amount_minor, j.kind, j.id)
        .join(t.ledger_journals, j.id == e.journal_id)
        .where(e.account.startswith(f"{Account.SELLER_AVAILABLE.value}:"))
        .order_by(e.id)
    )
    balances: dict[tuple[str, str], int] = defaultdict(int)
    checked, violations = 0, []
    for account, currency, side, amount, kind, journal_id in connection.execute(query):
        key = (seller_of(str(account))[1], str(currency))
        if kind == "payout" and side == "D":
            checked += 1
            if amount > balances[key]:
                violations.append((key[0], f"payout {journal_id} of {amount} {currency} with "
                                           f"{balances[key]} available"))  # fmt: skip
        balances[key] += amount if side == "C" else -amount
    return checked, violations[:EXAMPLES_MAX]


def check_wallets(c: Connection) -> CheckResult:
    result = CheckResult("wallets", "I5", "wallets equal the ledger; no payout beyond available")
    wallets_checked, wallet_problems = wallet_violations(c)
    payouts_checked, payout_problems = payout_violations(c)
    result.checked = wallets_checked + payouts_checked
    for subject, detail in wallet_problems + payout_problems:
        result.add(subject, detail)
    return result


CHECKS = (check_ledger, check_amounts, check_transitions, check_outbox, check_wallets)


def audit(connection: Connection) -> list[CheckResult]:
    return [check(connection) for check in CHECKS]
