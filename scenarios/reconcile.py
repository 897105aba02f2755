"""Reconciliation in the simulated world: the provider's settlement report on a schedule,
and the oracle R that checks what it found.

Schedule (a scenario's ``reconciliation:`` section): production's
``ReconciliationWorker`` on the world's clock, every ``interval_s``. Time is cut
into windows of ``interval_s`` from the start (the worker's ``origin``); window
k, ``[k*P, (k+1)*P)``, is reconciled once ``delay_s`` after it ends, so that
money the engine learns of late (a timeout resolved by recovery, a webhook) is
booked by then. At quiescence a closing pass (``run_once(closing=True)``)
reconciles every window not yet reconciled, one by one, and a last one up to
now; the runner asks again until a pass settles nothing new (its settlements'
events must be relayed before the world is quiet).

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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.domain.errors import StoreUnavailable
from engine.domain.ledger import Account
from engine.domain.ports import SeededIds
from engine.service.reconciliation import Reconciler, RunSummary
from engine.workers.reconciliation import ReconciliationWorker, ReconReport, ReportSource
from mock_psp.faultlog import FaultKind
from mock_psp.faults import SettlementFaultSpec
from mock_psp.records import BalanceTransaction
from scenarios.schema import Reconciliation
from scenarios.sut import PayoutRecord, ReconExceptionRecord, every
from scenarios.world import EPOCH, EPOCH_S, EngineDown, EngineFault, SimClock, Step, World

if TYPE_CHECKING:
    from scenarios.oracles import Facts, Invariant

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
    """One world's reconciliation: production's worker, and where its next window starts."""

    worker: ReconciliationWorker
    spec: SettlementFaultSpec
    next_start_s: int = 0
    runs: int = 0
    refused: list[str] = field(default_factory=list)


_DESKS: weakref.WeakKeyDictionary[World, Desk] = weakref.WeakKeyDictionary()


class WorldReport(ReportSource):
    """The provider's settlement report, from the world's ``ProviderCore`` in process."""

    def __init__(self, world: World, spec: SettlementFaultSpec):
        self.world, self.spec = world, spec

    def fetch(self, start_s: int, end_s: int) -> Mapping[str, Any]:
        return settlement_document(self.world, self.spec, start_s - EPOCH_INT_S,
                                   end_s - EPOCH_INT_S)  # fmt: skip


def desk(world: World) -> Desk:
    found = _DESKS.get(world)
    if found is None:
        config = world.scenario.reconciliation
        assert config is not None
        ids = SeededIds(random.Random(f"reconciliation:{world.seed}"))
        reconciler = Reconciler(world.db, SimClock(world.env), ids, world.engine)
        spec = world.scenario.fault_plan().settlement
        worker = ReconciliationWorker(
            reconciler, WorldReport(world, spec), interval_s=config.interval_s,
            delay_s=config.delay_s, lateness_s=int(config.lateness_s),
            windows_max=WINDOWS_PER_PASS_MAX, source_name=SOURCE,
            amount_tolerance_minor=config.amount_tolerance_minor, origin=EPOCH,
            first_start_at=EPOCH,
        )  # fmt: skip
        found = _DESKS[world] = Desk(worker, spec)
    return found


# --- the schedule: production's worker on the world's clock ---------------------------------


def settlement_document(
    world: World, spec: SettlementFaultSpec, start_s: int, end_s: int
) -> dict[str, Any]:
    """The provider's report for the periods covering ``[start_s, end_s)`` (seconds from
    the world's start, the lateness already added by the worker)."""
    config = world.scenario.reconciliation
    assert config is not None
    period_s = int(config.interval_s)
    psp = world.psp
    data: list[dict[str, Any]] = []
    for index in range(max(0, start_s // period_s), math.ceil(end_s / period_s)):
        begin_s = index * period_s
        if begin_s > world.env.now:
            break
        report = psp.reporter.build(
            psp.state, spec, start_s=EPOCH_INT_S + begin_s,
            end_s=EPOCH_INT_S + begin_s + period_s, now_s=psp.now(),
            order_ref_key=psp.config.order_ref_key,
        )  # fmt: skip
        data.extend(report.to_json()["data"])
    return {"object": "settlement_report", "data": data}


def _count(world: World, path: str, count: int) -> None:
    if count:
        world.coverage[path] += count


def _covered(world: World, d: Desk, summary: RunSummary) -> None:
    d.runs += 1
    world.hit("reconciliation run")
    _count(world, "settlement row matched", summary.matched_count)
    _count(world, "payout matched three ways (ledger, report, bank)", summary.landed_count)
    _count(world, "payment settled by reconciliation", summary.settled_count)
    for category, count in summary.counts().items():
        _count(world, f"reconciliation found {category}", count)


def run_due(world: World, *, final: bool) -> int:
    """One loop of ``ReconciliationWorker.run_once`` (at quiescence a closing one: every
    window that ended, and one up to now); returns how many payments it settled."""
    if world.scenario.reconciliation is None:
        return 0
    d = desk(world)
    try:
        world.node.check(world.env.now)
        report: ReconReport = world.guarded("reconcile", lambda: d.worker.run_once(closing=final))
    except (EngineDown, StoreUnavailable, EngineFault):
        # A run cut short is run again whole: each of its steps is idempotent.
        world.hit("reconciliation waited: engine unavailable")
        return 0
    finally:
        start_at = d.worker.next_start_at
        d.next_start_s = 0 if start_at is None else int((start_at - EPOCH).total_seconds())
    for summary in report.summaries:
        _covered(world, d, summary)
    if report.refusals:  # a report the engine cannot read: R names it
        d.refused.extend(refusal[:300] for refusal in report.refusals)
        world.hit("settlement report refused")
    return report.settled


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


# ("bt", id) for a report row, ("key", kind, ref) for a movement (as the engine names it:
# its parts may be missing, None, in what it shows)
Ident = tuple[Any, ...]


def _key(bt: BalanceTransaction) -> Ident:
    category = bt.reporting_category
    ref = bt.payment_intent_id if category in BY_INTENT else bt.source_id
    return ("key", category, ref or bt.source_id)


DISPUTE_CATEGORIES = {"dispute_withdrawal": "dispute", "dispute_reinstatement": "dispute_reversal"}
DISPUTE_ACCOUNTS = frozenset({Account.PSP_CLEARING, Account.PROVIDER_FEES})
PAYOUT_SENT = frozenset({"in_transit", "paid", "failed"})


def booked_movements(facts: Facts, payouts: Iterable[PayoutRecord]) -> dict[Ident, int]:
    """What the engine shows it booked at the provider (its read API): key -> size."""
    booked: dict[Ident, int] = defaultdict(int)
    for p in facts.payments:
        if p.captured_minor > 0:
            booked[("key", "charge", p.provider_payment_id)] += p.captured_minor
        for refund in p.refunds:
            if refund.status == "succeeded":
                booked[("key", "refund", refund.provider_refund_id)] += refund.amount_minor
    for payout in payouts:
        if payout.provider_payout_id is None:
            continue
        if payout.status in PAYOUT_SENT:
            booked[("key", "payout", payout.provider_payout_id)] += payout.amount_minor
        if payout.status == "failed":
            booked[("key", "payout_reversal", payout.provider_payout_id)] += payout.amount_minor
    # A dispute's size: what it moved on psp_clearing, its fee's own entries taken off.
    provider_ids = {p.id: p.provider_payment_id for p in facts.payments}
    for journal in facts.journals:
        category = DISPUTE_CATEGORIES.get(journal.kind)
        if category is None or journal.payment_id not in provider_ids:
            continue
        moved = [e.amount_minor if e.side == "D" else -e.amount_minor
                 for e in journal.entries if e.account in DISPUTE_ACCOUNTS]  # fmt: skip
        if moved:
            booked[("key", category, provider_ids[journal.payment_id])] += abs(sum(moved))
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


def expectation(world: World, d: Desk, booked: Mapping[Ident, int]) -> Expectation:
    e = Expectation()
    by_bt, _ = _faults(world)
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


def _found(exceptions: Iterable[ReconExceptionRecord]) -> Iterator[tuple[str, Ident, str]]:
    """The exceptions the engine's reconciliation stored, in the order it found them."""
    for x in sorted(exceptions, key=lambda x: (x.created_at, x.id)):
        ident: Ident = (
            ("key", x.kind, x.provider_ref) if x.category == MISSING_AT_PROVIDER
            else ("bt", x.balance_transaction_id or "-")
        )  # fmt: skip
        yield x.category, ident, x.detail


def check_reconciliation(world: World, facts: Facts | None = None) -> Invariant:
    """R, over what the engine shows (``world.sut.reads``; ``facts`` when already read)."""
    # oracles lists this check: not imported at the top
    from scenarios.oracles import Facts, Invariant

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
    reads = world.sut.reads
    facts = Facts.read(reads) if facts is None else facts
    e = expectation(world, d, booked_movements(facts, every(reads.payouts)))
    inv.checked = len(world.psp.state.balance_transactions)  # each judged, faulted or not
    seen: set[tuple[str, Ident]] = set()
    for category, ident, detail in _found(every(reads.recon_exceptions)):
        inv.checked += 1
        seen.add((category, ident))
        if (category, ident) not in e.wanted and len(inv.violations) < VIOLATIONS_MAX:
            inv.add(ident[-1], f"{category} that no fault or divergence explains: {detail}")
    for (category, ident), why in sorted(e.wanted.items()):
        if (category, ident) not in seen and len(inv.violations) < VIOLATIONS_MAX:
            inv.add(ident[-1], f"not found as {category}: {why}")
    return inv
