"""The oracles: after a run, prove or refute the invariants over both sides' truth.

The engine's side is what the system under test shows through its read API
(``world.sut.reads``: payments with their history and attempts, journals with
their entries, the outbox, wallets), read once into ``Facts``; the oracles
recompute I1, I3, I4, I5 and I8 from it themselves, and import nothing of the
engine's storage. The provider's side is the mock PSP's ground truth (what money
it really moved) and its objects. A violation names the invariant, the payments
and a short trace of each: the engine's history next to the provider's events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.domain.ledger import Account
from mock_psp.truth import EffectKind, GroundTruth, MoneyEffect, MoneyTotals
from scenarios.marketplace import fee_violations
from scenarios.reconcile import check_reconciliation
from scenarios.references import ledger as reference
from scenarios.references import states as canon
from scenarios.sut import (
    JournalRecord,
    OutboxRecord,
    PaymentRecord,
    Reads,
    WalletRecord,
    every,
)
from scenarios.world import World

EXAMPLES_MAX = 20  # wallet and payout violations listed per run, as the engine's audit lists

# The engine's accounts for money the provider holds for it (I9).
PROVIDER_HELD = frozenset({Account.PSP_CLEARING, Account.PAYOUTS_IN_TRANSIT})
# A seller's two accounts (the chart's), by the wallet bucket each one is.
SELLER_ACCOUNTS = {Account.SELLER_PENDING: "pending", Account.SELLER_AVAILABLE: "available"}


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


@dataclass(frozen=True, slots=True)
class Facts:
    """What the system under test shows, read once after quiescence, in key order."""

    payments: tuple[PaymentRecord, ...]
    journals: tuple[JournalRecord, ...]
    outbox: tuple[OutboxRecord, ...]
    wallets: tuple[WalletRecord, ...]

    @classmethod
    def read(cls, reads: Reads) -> Facts:
        return cls(
            tuple(every(reads.payments)), tuple(every(reads.journals)),
            tuple(every(reads.outbox)), tuple(every(reads.wallets)),
        )  # fmt: skip


def _signed(side: str, amount_minor: int) -> int:
    return amount_minor if side == "D" else -amount_minor


def check_ledger(facts: Facts) -> Invariant:
    """I1: every journal balances per currency and has two entries; the trial balance is
    zero; each journal posts only to the accounts and sides its kind allows (the oracle's
    own table, ``scenarios.references.ledger.POSTINGS``)."""
    inv = Invariant("I1", "ledger_balanced",
                    "journals balance and post only where their kind allows; trial balance "
                    "is zero")  # fmt: skip
    inv.checked = len(facts.journals)
    trial: dict[str, int] = defaultdict(int)
    for journal in facts.journals:
        totals: dict[str, int] = defaultdict(int)
        for entry in journal.entries:
            totals[entry.currency] += _signed(entry.side, entry.amount_minor)
        for currency, total in sorted(totals.items()):
            trial[currency] += total
            if total != 0:
                inv.add(journal.id, f"journal off by {total} {currency}")
    for journal in facts.journals:
        if len(journal.entries) < 2:
            inv.add(journal.payment_id or journal.id,
                    f"journal {journal.id} has fewer than two entries")  # fmt: skip
    for currency, total in sorted(trial.items()):
        if total != 0:
            inv.add("trial_balance", f"trial balance is {total} {currency}, not zero")
    merchants = reference.merchants_of(facts.payments)
    wrong = reference.posting_violations(facts.journals, merchants)
    for journal_id, detail in wrong[:EXAMPLES_MAX]:
        inv.add(journal_id, detail)
    if len(wrong) > EXAMPLES_MAX:
        inv.add("postings", f"{len(wrong) - EXAMPLES_MAX} more entries against the table")
    return inv


def _ledger_by_payment(facts: Facts) -> dict[str | None, dict[str, int]]:
    """Per payment: the hold still open, what was captured and what was refunded."""
    derived: dict[str | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for journal in facts.journals:
        totals = derived[journal.payment_id]
        for entry in journal.entries:
            if entry.account == Account.HOLDS_PSP_CLEARING:
                totals["held"] += _signed(entry.side, entry.amount_minor)
            elif entry.account != Account.PSP_CLEARING:
                continue
            elif journal.kind == "capture" and entry.side == "D":
                totals["captured"] += entry.amount_minor
            elif journal.kind == "refund":
                totals["refunded"] += entry.amount_minor
    return derived


def check_amounts(facts: Facts) -> Invariant:
    """I3, the engine's side: refunded <= captured <= authorized <= amount per payment, and
    the ledger says the same (the hold open while authorized, captures, refunds)."""
    inv = Invariant("I3", "amounts_consistent", "refunded <= captured <= authorized")
    derived = _ledger_by_payment(facts)
    for p in facts.payments:
        inv.checked += 1
        refunded, captured, authorized = p.refunded_minor, p.captured_minor, p.authorized_minor
        if not 0 <= refunded <= captured <= authorized <= p.amount_minor:
            inv.add(p.id, f"amounts out of order: {refunded=} {captured=} {authorized=}")
        ledger = derived.get(p.id, {})
        held = authorized if p.state == "authorized" else 0
        expected = {"held": held, "captured": captured, "refunded": refunded}
        for name, value in expected.items():
            if ledger.get(name, 0) != value:
                inv.add(p.id, f"ledger {name} {ledger.get(name, 0)} != payment {name} {value}")
    return inv


def check_transitions(facts: Facts) -> Invariant:
    """I4: each history is a contiguous walk of legal moves ending in the payment's state;
    legal by the oracle's own state machine (``scenarios.references.states``), not the
    system's."""
    inv = Invariant("I4", "legal_transitions", "histories follow the state machine")
    last: dict[str, tuple[int, str]] = {}
    for p in facts.payments:
        for h in p.history:
            inv.checked += 1
            previous_seq, previous_state = last.get(p.id, (0, None))
            if h.seq != previous_seq + 1 or h.from_state != previous_state:
                inv.add(p.id, f"history breaks at seq {h.seq}: from {h.from_state} after "
                              f"{previous_state}")  # fmt: skip
            elif not canon.legal(h.from_state, h.to_state):
                inv.add(p.id, f"illegal transition {h.from_state} -> {h.to_state} at seq {h.seq}")
            last[p.id] = (h.seq, h.to_state)
    for p in facts.payments:
        if p.id not in last:
            inv.add(p.id, "payment without history")
        elif last[p.id][1] != p.state:
            inv.add(p.id, f"history ends in {last[p.id][1]} but the payment is {p.state}")
    return inv


def check_outbox(facts: Facts) -> Invariant:
    """I8, the engine's side: every state change has exactly one outbox event."""
    inv = Invariant("I8", "outbox_complete", "one outbox event per state change")
    events: dict[tuple[str, int | None], int] = defaultdict(int)
    for event in facts.outbox:
        events[(event.payment_id, event.history_seq)] += 1
    for p in facts.payments:
        for h in p.history:
            inv.checked += 1
            count = events.pop((p.id, h.seq), 0)
            if count != 1:
                inv.add(p.id, f"state change {h.seq} has {count} outbox events")
    for (payment_id, seq), count in events.items():
        inv.add(payment_id, f"{count} outbox events for a state change {seq} that is not in "
                            "history")  # fmt: skip
    return inv


def _zero() -> dict[str, int]:
    return {"pending": 0, "available": 0}


def wallet_violations(facts: Facts) -> tuple[int, list[tuple[str, str]]]:
    """(wallets checked, [(seller, detail)]): each wallet equals its ledger balances."""
    sums: dict[tuple[str, str], int] = defaultdict(int)
    for journal in facts.journals:
        for entry in journal.entries:
            kind, seller = Account.parse(entry.account)
            if seller is not None and kind in SELLER_ACCOUNTS:
                sums[(entry.account, entry.currency)] += _signed(entry.side, entry.amount_minor)
    derived: dict[tuple[str, str], dict[str, int]] = defaultdict(_zero)
    for (name, currency), total in sorted(sums.items()):
        kind, seller = Account.parse(name)
        assert seller is not None
        derived[(seller, currency)][SELLER_ACCOUNTS[kind]] = -total
    wallets = {
        (w.owner_id, w.currency): {"pending": w.pending_minor, "available": w.available_minor}
        for w in facts.wallets
    }
    violations = []
    for key in sorted(set(derived) | set(wallets)):
        have, want = wallets.get(key, _zero()), derived.get(key, _zero())
        if have != want:
            violations.append((key[0], f"{key[1]} wallet {have} but the ledger says {want}"))
    return len(wallets), violations[:EXAMPLES_MAX]


def payout_violations(facts: Facts) -> tuple[int, list[tuple[str, str]]]:
    """(payouts checked, [(seller, detail)]): replaying the ledger in the order it was
    written, no payout took more than the seller's available balance just before it."""
    moves = sorted(
        (entry.id, entry, journal)
        for journal in facts.journals
        for entry in journal.entries
        if Account.parse(entry.account)[0] is Account.SELLER_AVAILABLE
    )  # fmt: skip
    balances: dict[tuple[str, str], int] = defaultdict(int)
    checked, violations = 0, []
    for _, entry, journal in moves:
        key = (entry.account.split(":", 1)[1], entry.currency)
        if journal.kind == "payout" and entry.side == "D":
            checked += 1
            if entry.amount_minor > balances[key]:
                detail = (f"payout {journal.id} of {entry.amount_minor} {entry.currency} with "
                          f"{balances[key]} available")  # fmt: skip
                violations.append((key[0], detail))
        balances[key] += entry.amount_minor if entry.side == "C" else -entry.amount_minor
    return checked, violations[:EXAMPLES_MAX]


def check_wallets(facts: Facts) -> Invariant:
    """I5: wallets equal the ledger; no payout beyond the available balance."""
    inv = Invariant("I5", "wallets", "wallets equal the ledger; no payout beyond available")
    wallets_checked, wallet_problems = wallet_violations(facts)
    payouts_checked, payout_problems = payout_violations(facts)
    inv.checked = wallets_checked + payouts_checked
    for subject, detail in wallet_problems + payout_problems:
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
        + world.coverage["client replayed a finished request later"]
        + world.coverage["client replayed a finished request at quiescence"]
        + world.coverage["key reused with another body: refused"]
    )
    for subject, detail in world.idempotency_violations:
        inv.add(subject, detail)
    return inv


def check_webhook_intake(world: World) -> Invariant:
    inv = Invariant(
        "W",
        "webhook_intake",
        "genuine webhooks accepted, each event's first delivery taken as new; forged and "
        "stale refused",
    )
    inv.checked = sum(v for k, v in world.coverage.items() if k.startswith("webhook"))
    for subject, detail in world.intake_violations:
        inv.add(subject, detail)
    # A dedupe keyed on anything but the event id drops new events as duplicates; the
    # provider's recovery by lookup may hide the loss, so no money invariant need fire.
    # An event the catch-up fetched before its first delivery may be kept already: only
    # by what the provider's list answers carried (the world saw them), never the engine's word.
    inv.checked += len(world.first_takes)
    for event_id, (kind, answer) in world.first_takes.items():
        if answer == "duplicate" and not _fetched_before(world, event_id):
            inv.add(event_id, f"the event's first delivery ({kind}) was taken as a duplicate")
    return inv


def _fetched_before(world: World, event_id: str) -> bool:
    """Whether an answer of the provider's event list carried the event to the engine
    before its first delivery was taken."""
    fetched, taken = world.fetched_at.get(event_id), world.first_take_at.get(event_id)
    return fetched is not None and taken is not None and fetched < taken


OPEN_ATTEMPT = frozenset({"pending", "unknown"})  # sent, the provider's answer not yet known


def check_convergence(world: World, facts: Facts) -> Invariant:
    open_attempts = {}
    for p in facts.payments:
        count = sum(1 for attempt in p.attempts if attempt.status in OPEN_ATTEMPT)
        if count:
            open_attempts[p.id] = count
    payments = [
        (p.id, p.state, p.authorized_minor, p.captured_minor, p.refunded_minor,
         p.disputed_minor, p.dispute_status)
        for p in facts.payments
    ]  # fmt: skip
    truth = world.psp.truth.per_payment_intent()
    disputes = _disputes_by_intent(world)
    return convergence(payments, open_attempts, _intents_by_payment(world), truth, disputes)


def _disputes_by_intent(world: World) -> dict[str, canon.DisputeView]:
    """The provider's disputes by intent (one per charge, one charge kept per intent),
    with the funds each moved by its own balance transactions."""
    state = world.psp.state
    disputes = {}
    for dispute in state.disputes.values():
        moved = [state.balance_transactions[bt].amount_minor
                 for bt in dispute.balance_transaction_ids]  # fmt: skip
        disputes[dispute.payment_intent_id] = canon.DisputeView(
            dispute.status, dispute.amount_minor, any(amount < 0 for amount in moved),
            any(amount > 0 for amount in moved),
        )  # fmt: skip
    return disputes


def convergence(
    payments: Iterable[tuple[Any, ...]],
    open_attempts: Mapping[str, int],
    intents: Mapping[str, list[Any]],
    truth: Mapping[str, MoneyTotals],
    disputes: Mapping[str, canon.DisputeView] | None = None,
) -> Invariant:
    """I7 over the engine's payments ``(id, state, authorized, captured, refunded)``,
    optionally followed by ``(disputed, dispute_status)``, their open provider attempts,
    the provider's intents per payment (objects with ``id``, ``status``,
    ``amount_minor``, ``amount_capturable_minor``, ``amount_received_minor``), the
    provider's money totals per intent and its disputes per intent. The state and
    amounts a payment must show are the oracle's reference mapping of those objects
    (``scenarios.references.states.expected``). ``disputes`` None: the provider's
    disputes were not read, so a succeeded intent may also be ``disputed``."""
    inv = Invariant("I7", "convergence", "after quiescence the engine agrees with the provider")
    seen: set[str] = set()
    for pid, state, authorized, captured, refunded, *shown in payments:
        inv.checked += 1
        seen.add(pid)
        if open_attempts.get(pid):
            inv.add(pid, f"{open_attempts[pid]} provider attempt(s) still unresolved ({state})")
        live = [pi for pi in intents.get(pid, []) if pi.status != "canceled"] or intents.get(
            pid, []
        )
        pi = live[-1] if live else None
        view = _provider_view(pi, truth, disputes)
        want = canon.expected(view)
        states = want.states
        if disputes is None and view.status == "succeeded":
            states = states | {canon.DISPUTED}
        if state not in states:
            inv.add(pid, f"engine says {state}, provider says {_said(view)}")
            continue
        if pi is None:
            continue
        if want.authorized_minor is not None and want.authorized_minor != authorized:
            inv.add(pid, f"authorized {authorized} but the provider holds {want.authorized_minor}")
        if (captured, refunded) != (view.captured_minor, view.refunded_minor):
            inv.add(
                pid,
                f"engine captured/refunded {captured}/{refunded}, provider "
                f"{view.captured_minor}/{view.refunded_minor}",
            )
        if disputes is not None and shown:
            _check_dispute(inv, pid, tuple(shown), want)
    for payment_id, orphans in sorted(intents.items()):
        held = [pi for pi in orphans if pi.amount_received_minor or pi.amount_capturable_minor]
        if payment_id not in seen and held:
            inv.add(payment_id, "the provider holds money for a payment the engine does not know")
    return inv


def _provider_view(
    pi: Any, truth: Mapping[str, MoneyTotals], disputes: Mapping[str, canon.DisputeView] | None
) -> canon.ProviderView:
    """The reference's view of one payment's intent: its money by the ground truth."""
    if pi is None:
        return canon.ProviderView(None)
    totals = truth.get(pi.id)
    return canon.ProviderView(
        str(pi.status), int(pi.amount_minor), int(pi.amount_capturable_minor),
        totals.captured_minor if totals else 0, totals.refunded_minor if totals else 0,
        (disputes or {}).get(pi.id),
    )  # fmt: skip


def _said(view: canon.ProviderView) -> str:
    if view.status is None:
        return "no intent"
    if view.status != "succeeded":
        return view.status
    said = f"succeeded, captured/refunded {view.captured_minor}/{view.refunded_minor}"
    if view.dispute is not None:
        said += f", dispute {view.dispute.status} of {view.dispute.amount_minor}"
    return said


def _check_dispute(inv: Invariant, pid: str, shown: tuple[Any, ...], want: canon.Expected) -> None:
    """The chargeback the payment shows: its withdrawn amount and its status."""
    disputed, status = shown
    if disputed != want.disputed_minor:
        inv.add(pid, f"engine shows {disputed} disputed, the provider's dispute withdrew "
                     f"{want.disputed_minor}")  # fmt: skip
    if status != want.dispute_status:
        inv.add(pid, f"engine shows dispute {status or 'none'}, the provider's is "
                     f"{want.dispute_status or 'none'}")  # fmt: skip


def check_projection(world: World, facts: Facts, inv: Invariant) -> None:
    """I8's consumer side: every event consumed once, the projection matches the engine."""
    projection = world.projection
    published = len(facts.outbox)
    if len(projection.seen) != published:
        inv.add("outbox", f"{len(projection.seen)} events consumed, {published} in the outbox")
    for p in facts.payments:
        projected = projection.states.get(p.id, (0, None))[1]
        if projected != p.state:
            inv.add(p.id, f"projection says {projected}, the engine says {p.state}")


def check_engine_errors(world: World) -> Invariant:
    inv = Invariant("E", "typed_outcomes", "every step ends in a typed outcome, never a crash")
    inv.checked = sum(world.coverage.values())
    for what, detail in world.engine_errors:
        inv.add(what, detail)
    return inv


def check_platform_fees(world: World, facts: Facts) -> Invariant:
    inv = Invariant("F", "platform_fees", "each line's fee follows its seller's plan, half up")
    inv.checked, violations = fee_violations(facts.payments)
    for subject, detail in violations:
        inv.add(subject, detail)
    return _needs_splits(world, inv)


def check_money_conservation(world: World, facts: Facts) -> Invariant:
    """I9: what the provider holds, by its own balance transactions, equals what the
    engine's ledger says it holds (the clearing account, less payouts the provider has
    sent but the bank has not confirmed); and, per account, each balance equals what an
    independent model of the provider's movements says (``scenarios.references.ledger``:
    clearing, payouts in transit, provider fees, disputes, holds, each merchant's payable
    and holds, the sellers' and platform fees' sum), per currency, to the minor unit."""
    inv = Invariant("I9", "money_conservation",
                    "the provider's balance equals the engine's ledger, per currency and per "
                    "account")  # fmt: skip
    owners = reference.owners(world.psp, reference.splits_of(world.orders))
    expected = reference.expected_balances(world.psp, owners)
    checked, wrong = reference.balance_violations(
        expected, reference.ledger_balances(facts.journals)
    )
    inv.checked += checked
    for subject, detail in wrong[:EXAMPLES_MAX]:
        inv.add(subject, detail)
    inv.reason = _conservation_reason(world, facts)
    provider: dict[str, int] = defaultdict(int)
    for bt in world.psp.state.balance_transactions.values():
        provider[bt.currency.upper()] += bt.net_minor
    engine: dict[str, int] = defaultdict(int)
    for journal in facts.journals:
        for entry in journal.entries:
            if entry.account in PROVIDER_HELD:
                engine[entry.currency] += _signed(entry.side, entry.amount_minor)
    for currency in sorted(set(provider) | set(engine)):
        inv.checked += 1
        if provider[currency] != engine[currency]:
            inv.add(currency, f"the provider holds {provider[currency]}, the engine's ledger "
                              f"says {engine[currency]}")  # fmt: skip
    return inv


def _conservation_reason(world: World, facts: Facts) -> str:
    """What I9's per-account model cannot know from the provider alone, in this run."""
    unknowable = []
    if any(order.splits for order in world.orders.values()):
        unknowable.append(
            "each seller's pending and available balances and the platform's fees per "
            "merchant are the engine's split by fee plans and lines: the provider knows only "
            "their sum, checked as one (F and I5 check the split)"
        )
    if any(journal.kind == "recon_adjustment" for journal in facts.journals):
        unknowable.append(
            "recon_adjustments is the engine's own suspense account: the provider says "
            "nothing of it"
        )
    return "; ".join(unknowable)


def _needs_splits(world: World, inv: Invariant) -> Invariant:
    """Not applicable to a scenario without split payments (and none was made)."""
    if inv.checked == 0 and inv.ok and world.scenario.workload.marketplace.split_rate == 0:
        inv.applicable = False
        inv.reason = "no split payments in this scenario"
    return inv


def run_oracles(world: World) -> list[Invariant]:
    facts = Facts.read(world.sut.reads)
    amounts = check_amounts(facts)
    provider_amounts = check_provider_amounts(world)
    amounts.checked += provider_amounts.checked
    amounts.violations.extend(provider_amounts.violations)
    outbox = check_outbox(facts)
    check_projection(world, facts, outbox)
    outbox.description = "one outbox event per change; consumers dedupe; projection matches"
    transitions = check_transitions(facts)  # and the client side: illegal commands are refused
    transitions.checked += world.coverage["capture after void refused"]
    for subject, detail in world.transition_violations:
        transitions.add(subject, detail)
    return [
        check_ledger(facts),
        check_no_double_charge(world),
        amounts,
        transitions,
        _needs_splits(world, check_wallets(facts)),
        check_platform_fees(world, facts),
        check_money_conservation(world, facts),
        check_idempotency(world),
        check_convergence(world, facts),
        outbox,
        check_webhook_intake(world),
        check_engine_errors(world),
        check_reconciliation(world, facts),
    ]


def payment_trace(world: World, payment_id: str) -> dict[str, Any]:
    """The engine's history next to the provider's events for one payment."""
    payment = world.sut.reads.payment(payment_id)
    history = [
        {"t": _t(h.at), "from": h.from_state, "to": h.to_state, "reason": h.reason}
        for h in (payment.history if payment is not None else ())
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
