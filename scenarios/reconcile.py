"""Reconciliation in the simulated world: the provider's settlement report on a schedule,
and the oracle R that checks what it found.

Schedule (a scenario's ``reconciliation:`` section). Time is cut into windows of
``interval_s`` from the start; window k, ``[k*P, (k+1)*P)``, is reconciled once
``delay_s`` after it ends, so that money the engine learns of late (a timeout
resolved by recovery, a webhook) is booked by then. At quiescence every window
not yet reconciled is, one by one, and a last one up to now; the runner asks
again until a pass settles nothing new (its settlements' events must be
relayed before the world is quiet).

The report comes from the world's ``ProviderCore`` in process, built as the
admin API's ``/_admin/settlement`` builds it, in whole periods of ``interval_s``
(the provider's unexpected rows are drawn per period, so each stays in the
window it belongs to) covering the window widened by ``lateness_s``, merged
into one JSON document. One difference: the report is built with the
scenario's settlement faults throughout, also after quiescence has cleared
the fault plan. A provider's report of a closed period does not heal when its
API does; otherwise a fault planted in a row would vanish before the window
holding it was reconciled.

Nothing here draws from the world's random streams (the reconciler's ids come
from a source seeded apart), and nothing runs in a scenario without the
section: those run byte for byte as before.

R, after quiescence. The oracle recomputes, from the provider's balance
transactions, the engine's own tables (not the reconciler's reads) and the
fault log, which exceptions a correct reconciliation finds, and compares:

- a missing row of a movement the engine booked: ``missing_at_provider``;
- a late row: ``missing_at_provider`` (its window ran without it) and, once
  reported within the run, ``outside_window``;
- an amount mismatch: ``amount_mismatch``; an unexpected row: ``missing_in_ledger``;
- real divergences count too: a provider movement the engine lacks is
  ``missing_in_ledger``, an engine movement the provider never made
  ``missing_at_provider``, different amounts ``amount_mismatch``.

Every expected exception must exist (none silently ignored) and every stored
exception must be expected (none invented). Not applicable without
reconciliation.
"""

from __future__ import annotations

import math
import random
import weakref
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.adapters import schema as t
from engine.domain.errors import InvalidRequest, StoreUnavailable
from engine.domain.ports import SeededIds
from engine.domain.reconciliation import Tolerances
from engine.service.reconciliation import Reconciler, RunSummary
from mock_psp.faultlog import FaultKind
from mock_psp.faults import SettlementFaultSpec
from mock_psp.records import BalanceTransaction
from scenarios.schema import Reconciliation
from scenarios.world import EPOCH, EPOCH_S, EngineDown, EngineFault, SimClock, Step, World

if TYPE_CHECKING:
    from scenarios.oracles import Invariant

SOURCE = "simulation"
WINDOWS_PER_PASS_MAX = 10_000
VIOLATIONS_MAX = 50
EPOCH_INT_S = int(EPOCH_S)
MISSING_AT_PROVIDER = "missing_at_provider"
MISSING_IN_LEDGER = "missing_in_ledger"
AMOUNT_MISMATCH = "amount_mismatch"
OUTSIDE_WINDOW = "outside_window"
SETTLEMENT_FAULTS = frozenset(
    {
        FaultKind.SETTLEMENT_MISSING_ROW,
        FaultKind.SETTLEMENT_AMOUNT_MISMATCH,
        FaultKind.SETTLEMENT_LATE_ROW,
        FaultKind.SETTLEMENT_UNEXPECTED_ROW,
    }
)
# What the engine knows a provider movement by: the intent for a payment's
# money, the refund or payout itself otherwise.
BY_INTENT = frozenset({"charge", "dispute", "dispute_reversal"})


@dataclass(slots=True)
class Desk:
    """One world's reconciliation: its reconciler and where the next window starts."""

    reconciler: Reconciler
    spec: SettlementFaultSpec
    next_start_s: int = 0
    runs: int = 0
    refused: list[str] = field(default_factory=list)


_DESKS: weakref.WeakKeyDictionary[World, Desk] = weakref.WeakKeyDictionary()


def desk(world: World) -> Desk:
    found = _DESKS.get(world)
    if found is None:
        ids = SeededIds(random.Random(f"reconciliation:{world.seed}"))
        reconciler = Reconciler(world.db, SimClock(world.env), ids, world.engine)
        found = _DESKS[world] = Desk(reconciler, world.scenario.fault_plan().settlement)
    return found


# --- the schedule --------------------------------------------------------------------------


def due_windows(
    next_start_s: int, period_s: int, now_s: float, delay_s: float, final: bool
) -> list[tuple[int, int]]:
    """The windows to run now, in order: whole ones whose delay has passed (at
    quiescence, whole ones that ended), then at quiescence one up to now."""
    windows: list[tuple[int, int]] = []
    start_s = next_start_s
    while len(windows) < WINDOWS_PER_PASS_MAX:
        end_s = (start_s // period_s + 1) * period_s
        if end_s + (0.0 if final else delay_s) > now_s:
            break
        windows.append((start_s, end_s))
        start_s = end_s
    tail_end_s = math.floor(now_s) + 1  # the provider's rows are whole seconds
    if final and start_s < tail_end_s and len(windows) < WINDOWS_PER_PASS_MAX:
        windows.append((start_s, tail_end_s))
    return windows


def settlement_document(world: World, d: Desk, start_s: int, end_s: int) -> dict[str, Any]:
    """The provider's report for the periods covering ``[start_s, end_s)`` and its lateness."""
    config = world.scenario.reconciliation
    assert config is not None
    period_s, lateness_s = int(config.interval_s), int(config.lateness_s)
    psp = world.psp
    data: list[dict[str, Any]] = []
    first = max(0, (start_s - lateness_s) // period_s)
    for index in range(first, math.ceil((end_s + lateness_s) / period_s)):
        begin_s = index * period_s
        if begin_s > world.env.now:
            break
        report = psp.reporter.build(
            psp.state, d.spec, start_s=EPOCH_INT_S + begin_s,
            end_s=EPOCH_INT_S + begin_s + period_s, now_s=psp.now(),
            order_ref_key=psp.config.order_ref_key,
        )  # fmt: skip
        data.extend(report.to_json()["data"])
    return {"object": "settlement_report", "data": data}


def _count(world: World, path: str, count: int) -> None:
    if count:
        world.coverage[path] += count


def run_window(world: World, d: Desk, start_s: int, end_s: int) -> RunSummary | None:
    """One run; None when the provider's report was refused (the window is passed by)."""
    config = world.scenario.reconciliation
    assert config is not None
    tolerances = Tolerances(config.amount_tolerance_minor, 0, int(config.lateness_s))
    document = settlement_document(world, d, start_s, end_s)
    start_at, end_at = EPOCH + timedelta(seconds=start_s), EPOCH + timedelta(seconds=end_s)
    try:
        summary: RunSummary = world.guarded(
            "reconcile", d.reconciler.run, document, SOURCE, start_at, end_at, tolerances
        )
    except InvalidRequest as exc:  # a report the engine cannot read: R names it
        d.refused.append(f"[{start_s}, {end_s}): {exc.code}: {exc.message}"[:300])
        world.hit("settlement report refused")
        return None
    d.runs += 1
    world.hit("reconciliation run")
    _count(world, "settlement row matched", summary.matched_count)
    _count(world, "payout matched three ways (ledger, report, bank)", summary.landed_count)
    _count(world, "payment settled by reconciliation", summary.settled_count)
    for category, count in summary.counts().items():
        _count(world, f"reconciliation found {category}", count)
    return summary


def run_due(world: World, *, final: bool) -> int:
    """Run the windows that are due; returns how many payments they settled."""
    config = world.scenario.reconciliation
    if config is None:
        return 0
    d = desk(world)
    settled = 0
    try:
        world.node.check(world.env.now)
        windows = due_windows(d.next_start_s, int(config.interval_s), world.env.now,
                              config.delay_s, final)  # fmt: skip
        for start_s, end_s in windows:
            summary = run_window(world, d, start_s, end_s)
            d.next_start_s = end_s
            settled += 0 if summary is None else summary.settled_count
    except (EngineDown, StoreUnavailable, EngineFault):
        # A run cut short is run again whole: each of its steps is idempotent.
        world.hit("reconciliation waited: engine unavailable")
    return settled


def reconciliation_worker(world: World, config: Reconciliation) -> Step:
    while world.quiescent_at_s is None:
        yield world.env.timeout(config.interval_s)
        run_due(world, final=False)


def start_reconciliation(world: World) -> None:
    """The worker, when the scenario asks for reconciliation (else nothing at all)."""
    config = world.scenario.reconciliation
    if config is not None:
        world.env.process(reconciliation_worker(world, config))


def reconcile_at_quiescence(world: World) -> bool:
    """Reconcile up to now; True when that settled payments (their events to relay)."""
    return run_due(world, final=True) > 0


# --- R -------------------------------------------------------------------------------------


Ident = tuple[str, ...]  # ("bt", id) for a report row, ("key", kind, ref) for a movement


def _key(bt: BalanceTransaction) -> Ident:
    category = bt.reporting_category
    ref = bt.payment_intent_id if category in BY_INTENT else bt.source_id
    return ("key", category, ref or bt.source_id)


def booked_movements(world: World) -> dict[Ident, int]:
    """What the engine's own tables say it booked at the provider: key -> size."""
    p, r, j, e, po = (t.payments.c, t.refunds.c, t.ledger_journals.c, t.ledger_entries.c,
                      t.payouts.c)  # fmt: skip
    disputes = {"dispute_withdrawal": "dispute", "dispute_reinstatement": "dispute_reversal"}
    queries: list[tuple[str, Any]] = [
        ("charge", sa.select(p.provider_payment_id, p.captured_minor).where(p.captured_minor > 0)),
        ("refund", sa.select(r.provider_refund_id, r.amount_minor).where(r.status == "succeeded")),
        ("payout", sa.select(po.provider_payout_id, po.amount_minor).where(
            po.provider_payout_id.is_not(None), po.status.in_(("in_transit", "paid", "failed")))),
        ("payout_reversal", sa.select(po.provider_payout_id, po.amount_minor).where(
            po.provider_payout_id.is_not(None), po.status == "failed")),
    ]  # fmt: skip
    # A dispute's size: what it moved on psp_clearing, its fee's own entries taken off.
    signed = sa.case((e.side == "D", e.amount_minor), else_=-e.amount_minor)
    for kind, category in disputes.items():
        moved = (
            sa.select(p.provider_payment_id, sa.func.abs(sa.func.sum(signed)))
            .join(t.ledger_journals, j.payment_id == p.id)
            .join(t.ledger_entries, e.journal_id == j.id)
            .where(j.kind == kind, e.account.in_(("psp_clearing", "provider_fees")))
            .group_by(j.id, p.provider_payment_id)
        )
        queries.append((category, moved))
    booked: dict[Ident, int] = defaultdict(int)
    with world.db.engine.connect() as c:
        for category, query in queries:
            for ref, amount in c.execute(query):
                booked[("key", category, ref)] += int(amount)
    return dict(booked)


@dataclass(slots=True)
class Expectation:
    """The exceptions a correct reconciliation finds, each with why."""

    wanted: dict[tuple[str, Ident], str] = field(default_factory=dict)

    def want(self, category: str, ident: Ident, why: str) -> None:
        self.wanted[(category, ident)] = why


def _faults(world: World) -> tuple[dict[str, set[FaultKind]], bool]:
    """Settlement faults per balance transaction, and whether the log kept them all."""
    log = world.psp.fault_log
    by_bt: dict[str, set[FaultKind]] = defaultdict(set)
    for record in log.records():
        if record.kind in SETTLEMENT_FAULTS:
            by_bt[record.target].add(record.kind)
    counts = log.counts()
    total = sum(counts[str(kind)] for kind in SETTLEMENT_FAULTS)
    return dict(by_bt), total == sum(len(kinds) for kinds in by_bt.values())


def _row(bt: BalanceTransaction) -> Ident:
    return ("bt", bt.id)


def _expect_row(
    e: Expectation, bt: BalanceTransaction, kinds: set[FaultKind], booked_minor: int | None,
    reported_by_s: float, late_by_s: float,
) -> None:  # fmt: skip
    """What one real balance transaction, with the faults planted in its row, gives."""
    key, row, booked = _key(bt), _row(bt), booked_minor is not None
    if FaultKind.SETTLEMENT_MISSING_ROW in kinds:
        if booked:
            e.want(MISSING_AT_PROVIDER, key, "its row was left out of the report")
    elif FaultKind.SETTLEMENT_LATE_ROW in kinds:
        if booked:
            e.want(MISSING_AT_PROVIDER, key, "its row came late: absent from its window")
        if bt.created_s - EPOCH_S + late_by_s < reported_by_s:
            category = OUTSIDE_WINDOW if booked else MISSING_IN_LEDGER
            e.want(category, row, "its row came late, in a later window")
    elif not booked:
        e.want(MISSING_IN_LEDGER, row, "the provider moved money the engine did not book")
    elif FaultKind.SETTLEMENT_AMOUNT_MISMATCH in kinds:
        e.want(AMOUNT_MISMATCH, row, "its row's amount was changed")
    elif booked_minor != abs(bt.amount_minor):
        e.want(AMOUNT_MISMATCH, row, f"the engine booked {booked_minor}, the provider moved "
                                     f"{abs(bt.amount_minor)}")  # fmt: skip


def expectation(world: World, d: Desk) -> Expectation:
    e = Expectation()
    by_bt, _ = _faults(world)
    booked = booked_movements(world)
    provider_keys: set[Ident] = set()
    late_by_s = float(int(d.spec.late_by_s))
    for bt in world.psp.state.balance_transactions.values():
        key = _key(bt)
        provider_keys.add(key)
        _expect_row(e, bt, by_bt.get(bt.id, set()), booked.get(key), d.next_start_s, late_by_s)
    for bt_id, kinds in by_bt.items():
        if FaultKind.SETTLEMENT_UNEXPECTED_ROW in kinds:
            e.want(MISSING_IN_LEDGER, ("bt", bt_id), "the provider reported a row it never made")
    for key in sorted(set(booked) - provider_keys):
        e.want(MISSING_AT_PROVIDER, key, "the engine booked money the provider never moved")
    return e


def _found(world: World) -> Iterator[tuple[str, Ident, str]]:
    x = t.recon_exceptions.c
    query = sa.select(x.category, x.kind, x.provider_ref, x.balance_transaction_id, x.detail)
    with world.db.engine.connect() as c:
        for category, kind, ref, bt_id, detail in c.execute(query.order_by(x.created_at, x.id)):
            ident: Ident = (
                ("key", kind, ref) if category == MISSING_AT_PROVIDER else ("bt", bt_id or "-")
            )
            yield category, ident, detail


def check_reconciliation(world: World) -> Invariant:
    from scenarios.oracles import Invariant  # oracles lists this check: not imported at the top

    what = "every settlement fault found in its category; none invented"
    inv = Invariant("R", "reconciliation", what)
    d = _DESKS.get(world)
    if world.scenario.reconciliation is None:
        inv.applicable = False
        inv.reason = "reconciliation is not enabled in this scenario"
        return inv
    if d is None or d.runs == 0:
        inv.add("reconciliation", "never ran")
        return inv
    for refusal in d.refused:
        inv.add("report", f"the provider's report was refused: {refusal}")
    if not _faults(world)[1]:
        inv.add("fault_log", "the fault log dropped settlement records: faults cannot be checked")
    e = expectation(world, d)
    inv.checked = len(world.psp.state.balance_transactions)  # each judged, faulted or not
    seen: set[tuple[str, Ident]] = set()
    for category, ident, detail in _found(world):
        inv.checked += 1
        seen.add((category, ident))
        if (category, ident) not in e.wanted and len(inv.violations) < VIOLATIONS_MAX:
            inv.add(ident[-1], f"{category} that no fault or divergence explains: {detail}")
    for (category, ident), why in sorted(e.wanted.items()):
        if (category, ident) not in seen and len(inv.violations) < VIOLATIONS_MAX:
            inv.add(ident[-1], f"not found as {category}: {why}")
    return inv
