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
exception must be expected (none invented). An exception reconciliation closed
itself as "booked late" (the engine booked the movement after the run that
missed it, and a later run matched the pair) is not a finding, but its row must
then be matched.

R also checks what reconciliation did, from the report rows it matched and the
payments' histories and journals (the read API):

- a payment whose charge has an open amount, fee or currency exception was
  never settled (no ``settlement_*`` move, no ``settlement`` journal);
- no matched row is also an exception (but one closed as booked late);
- every matched row agrees with the ledger: its gross with what the engine
  booked (within the amount tolerance), its fee with the fees the ledger holds
  for that movement, and its net with gross less fee.

Not applicable without reconciliation.
"""

from __future__ import annotations

import json
import math
import random
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.domain.errors import ReportUnavailable, StoreUnavailable
from engine.domain.ledger import Account
from engine.domain.ports import SeededIds
from engine.service.reconciliation import Reconciler, RunSummary
from engine.workers.reconciliation import ReconciliationWorker, ReconReport, ReportSource
from mock_psp.faultlog import FaultKind
from mock_psp.faults import SettlementFaultSpec
from mock_psp.records import BalanceTransaction
from scenarios.schema import Reconciliation
from scenarios.sut import PayoutRecord, ReconExceptionRecord, SettlementRowRecord, every
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
    unavailable: int = 0  # downloads the provider answered "not ready"
    # (window start, window end, when it ran), seconds from the world's start: what
    # the world saw as it pumped the worker, in the order it ran them.
    ran: list[tuple[float, float, float]] = field(default_factory=list)


_DESKS: weakref.WeakKeyDictionary[World, Desk] = weakref.WeakKeyDictionary()


class WorldReport(ReportSource):
    """The provider's settlement report, from the world's ``ProviderCore`` in process."""

    def __init__(self, world: World, spec: SettlementFaultSpec):
        self.world, self.spec = world, spec

    def fetch(self, start_s: int, end_s: int) -> str | Mapping[str, Any]:
        """One download, with the plan's download faults: garbled text, or not ready
        (without them, the document itself: nothing to encode and read back)."""
        document = settlement_document(self.world, self.spec, start_s - EPOCH_INT_S,
                                       end_s - EPOCH_INT_S)  # fmt: skip
        if self.spec.garbled_rate == 0 and self.spec.unavailable_rate == 0:
            return document
        psp = self.world.psp
        served = psp.reporter.serve(json.dumps(document), len(document["data"]), self.spec,
                                    f"{start_s}:{end_s}", psp.now())  # fmt: skip
        if served.status != 200:
            raise ReportUnavailable(message=f"settlement report: HTTP {served.status}")
        return served.text


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
            first_start_at=EPOCH, booking_lag_s=int(config.booking_lag_s),
        )  # fmt: skip
        found = _DESKS[world] = Desk(worker, spec)
    return found


# --- the schedule: production's worker on the world's clock ---------------------------------


def settlement_document(
    world: World, spec: SettlementFaultSpec, start_s: int, end_s: int
) -> dict[str, Any]:
    """The provider's report of ``[start_s, end_s)`` (seconds from the world's start, the
    lateness already added by the worker), as ``/_admin/settlement`` gives it: built
    in whole periods (a period's unexpected rows are the same in every download), and
    only the rows created in the span kept (a row of the same period outside it would
    reach a run that, over HTTP, never reads it)."""
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
        low_s, high_s = EPOCH_INT_S + start_s, EPOCH_INT_S + end_s
        data.extend(row for row in report.to_json()["data"] if low_s <= row["created"] < high_s)
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
    _count(world, "reconciliation matched a row booked late, closing its exception",
           summary.closed_count)  # fmt: skip
    _count(world, "reconciliation paired a row found missing with its later booking",
           summary.paired_late_count)  # fmt: skip
    for category, count in summary.counts().items():
        _count(world, f"reconciliation found {category}", count)


def run_due(world: World, *, final: bool) -> ReconReport | None:
    """One loop of ``ReconciliationWorker.run_once`` (at quiescence a closing one: every
    window that ended, and one up to now); None when the engine was away."""
    if world.scenario.reconciliation is None:
        return ReconReport()
    d = desk(world)
    try:
        world.node.check(world.env.now)
        report: ReconReport = world.guarded("reconcile", lambda: d.worker.run_once(closing=final))
    except (EngineDown, StoreUnavailable, EngineFault):
        # A run cut short is run again whole: each of its steps is idempotent.
        world.hit("reconciliation waited: engine unavailable")
        return None
    finally:
        start_at = d.worker.next_start_at
        d.next_start_s = 0 if start_at is None else int((start_at - EPOCH).total_seconds())
    if report.unavailable:
        d.unavailable += report.unavailable
        world.hit("reconciliation waited: the provider's report not ready")
    for summary in report.summaries:
        _covered(world, d, summary)
        window = (summary.window_start_at - EPOCH, summary.window_end_at - EPOCH)
        d.ran.append((window[0].total_seconds(), window[1].total_seconds(), world.env.now))
    if report.refusals:  # a report the engine cannot read: R judges it against the faults
        d.refused.extend(refusal[:300] for refusal in report.refusals)
        world.hit("garbled settlement report refused, its window downloaded again")
    return report


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
    """Reconcile up to now; True when there is more to wait for: payments it settled
    (their events to relay), or a window left for later (the engine away, a report
    garbled or not ready: downloaded again on the next poll)."""
    report = run_due(world, final=True)
    return report is None or bool(report.settled or report.refused or report.unavailable)


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


@dataclass(frozen=True, slots=True)
class Timing:
    """When the provider reported a row and when the engine booked its movement, in
    seconds from the world's start, and the reconciliation's tolerances."""

    reported_by_s: float  # where the last reconciled window ended
    late_by_s: float
    lateness_s: float
    booking_lag_s: float
    period_s: float
    booked_at_s: Mapping[Ident, float]  # the engine's first booking of a movement
    ran: Sequence[tuple[float, float, float]]  # Desk.ran

    def ran_at(self, at_s: float) -> float | None:
        """When the run of the window holding ``at_s`` ran (its first), or None."""
        first = None
        for start_s, end_s, ran_s in self.ran:
            if start_s <= at_s < end_s and (first is None or ran_s < first):
                first = ran_s
        return first

    def near(self, booked_s: float, reported_s: float) -> bool:
        """The engine's one matching rule, as documented: the row at most
        ``lateness_s`` after the booking, or before it by up to lateness and lag."""
        lag_s = booked_s - reported_s
        return -self.lateness_s <= lag_s <= self.lateness_s + self.booking_lag_s

    def reported_to_bookings_run(self, booked_s: float, reported_s: float) -> bool:
        """Whether the run of the window holding the booking read the row: it reads
        up to ``lateness_s`` past its end, and only rows the provider had reported."""
        window_end_s = (booked_s // self.period_s + 1) * self.period_s
        return reported_s < min(window_end_s + self.lateness_s, self.reported_by_s)


def _booked_after_its_rows_run(
    e: Expectation, bt: BalanceTransaction, reported_s: float, mismatch: str | None,
    timing: Timing,
) -> bool:  # fmt: skip
    """Whether the engine booked the movement after the run of its row's window, which
    then found it missing in the ledger; if so, what that leaves: the run of the
    booking's window pairs the row with its movement however late (a difference of
    amounts is that run's exception), or, if that window was not reconciled yet, the
    ``missing_in_ledger`` is still open."""
    row_ran_s = timing.ran_at(reported_s)
    booked_s = timing.booked_at_s.get(_key(bt), bt.created_s - EPOCH_S)
    if row_ran_s is None or booked_s < row_ran_s:
        return False
    row = _row(bt)
    if timing.ran_at(booked_s) is None:
        e.want(MISSING_IN_LEDGER, row, "booked after its row's run; its own window not yet run")
    elif mismatch is not None:
        e.want(AMOUNT_MISMATCH, row, f"booked after its row's run, then paired: {mismatch}")
    return True


def _expect_late_row(
    e: Expectation, bt: BalanceTransaction, booked: bool, mismatch: str | None, timing: Timing
) -> None:
    """A row the provider reported ``late_by_s`` after it moved the money: judged, as
    the engine judges it, against when the engine booked the movement."""
    key, row = _key(bt), _row(bt)
    reported_s = bt.created_s - EPOCH_S + timing.late_by_s
    in_run = reported_s < timing.reported_by_s
    if not booked:
        if in_run:
            e.want(MISSING_IN_LEDGER, row, "its row came late, in a later window")
        return
    if _booked_after_its_rows_run(e, bt, reported_s, mismatch, timing):
        return
    booked_s = timing.booked_at_s.get(key, bt.created_s - EPOCH_S)
    if timing.near(booked_s, reported_s) and in_run:
        if mismatch is not None:  # late, but near its late booking: one movement, compared
            e.want(AMOUNT_MISMATCH, row, mismatch)
        return
    if timing.reported_to_bookings_run(booked_s, reported_s):
        e.want(OUTSIDE_WINDOW, row, "its row came late, too far from its booking")
        return
    e.want(MISSING_AT_PROVIDER, key, "its row came late: absent from its booking's window")
    if in_run:
        e.want(OUTSIDE_WINDOW, row, "its row came late, in a later window")


def _expect_row(
    e: Expectation, bt: BalanceTransaction, kinds: set[FaultKind], booked_minor: int | None,
    timing: Timing,
) -> None:  # fmt: skip
    """What one real balance transaction, with the faults planted in its row, gives."""
    key, row, booked = _key(bt), _row(bt), booked_minor is not None
    mismatch = None
    if FaultKind.SETTLEMENT_AMOUNT_MISMATCH in kinds:
        mismatch = "its row's amount was changed"
    elif booked and booked_minor != abs(bt.amount_minor):
        mismatch = f"the engine booked {booked_minor}, the provider moved {abs(bt.amount_minor)}"
    if FaultKind.SETTLEMENT_MISSING_ROW in kinds:
        if booked:
            e.want(MISSING_AT_PROVIDER, key, "its row was left out of the report")
    elif FaultKind.SETTLEMENT_LATE_ROW in kinds:
        _expect_late_row(e, bt, booked, mismatch, timing)
    elif not booked:
        e.want(MISSING_IN_LEDGER, row, "the provider moved money the engine did not book")
    elif _booked_after_its_rows_run(e, bt, bt.created_s - EPOCH_S, mismatch, timing):
        return
    elif mismatch is not None:
        e.want(AMOUNT_MISMATCH, row, mismatch)


def booked_at(facts: Facts) -> dict[Ident, float]:
    """When the engine first booked each payment's movement (its journal), in seconds
    from the world's start; refunds and payouts are judged at the provider's time."""
    provider_ids = {p.id: p.provider_payment_id for p in facts.payments}
    kinds = {"capture": "charge", **DISPUTE_CATEGORIES}
    found: dict[Ident, float] = {}
    for journal in facts.journals:
        category = kinds.get(journal.kind)
        ref = provider_ids.get(journal.payment_id or "")
        if category is None or ref is None:
            continue
        at_s = (journal.created_at - EPOCH).total_seconds()
        key: Ident = ("key", category, ref)
        found[key] = min(at_s, found.get(key, at_s))
    return found


def expectation(world: World, d: Desk, booked: Mapping[Ident, int], facts: Facts) -> Expectation:
    e = Expectation()
    by_bt, _ = _faults(world)
    provider_keys: set[Ident] = set()
    config = world.scenario.reconciliation
    assert config is not None
    timing = Timing(float(d.next_start_s), float(int(d.spec.late_by_s)),
                    float(int(config.lateness_s)), float(int(config.booking_lag_s)),
                    float(config.interval_s), booked_at(facts), tuple(d.ran))  # fmt: skip
    for bt in world.psp.state.balance_transactions.values():
        key = _key(bt)
        provider_keys.add(key)
        _expect_row(e, bt, by_bt.get(bt.id, set()), booked.get(key), timing)
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


# --- R: what reconciliation did ------------------------------------------------------------

BOOKED_LATE = "booked late"  # how reconciliation names an exception a later run matched
HOLDS_SETTLEMENT = frozenset({"amount_mismatch", "fee_mismatch", "currency_mismatch"})
PAIR_DIFFERS = HOLDS_SETTLEMENT | {"missing_at_bank"}  # a pair compared, and not matched
SETTLED_REASONS = frozenset({"settlement_matched", "settlement_resolved"})
SETTLEMENT_JOURNAL = "settlement"
# Journals whose provider_fees entries are a movement's fee, by the movement's kind.
FEE_JOURNALS = {
    "capture": "charge",
    "provider_fee": "charge",
    "dispute_withdrawal": "dispute",
    "dispute_reinstatement": "dispute_reversal",
}
# The sign of a row's gross for its category: money into the provider balance is positive.
GROSS_SIGN = {"charge": 1, "refund": -1, "dispute": -1, "dispute_reversal": 1, "payout": -1,
              "payout_reversal": 1}  # fmt: skip


def _booked_late(x: ReconExceptionRecord) -> bool:
    return x.status == "resolved" and (x.resolution_reason or "").startswith(BOOKED_LATE)


def ledger_fees(facts: Facts) -> dict[Ident, int]:
    """The provider fee the ledger holds per movement (debits of provider_fees less
    credits), keyed as ``booked_movements`` keys them."""
    provider_ids = {p.id: p.provider_payment_id for p in facts.payments}
    fees: dict[Ident, int] = defaultdict(int)
    for journal in facts.journals:
        category = FEE_JOURNALS.get(journal.kind)
        if category is None or provider_ids.get(journal.payment_id or "") is None:
            continue
        key = ("key", category, provider_ids[journal.payment_id or ""])
        for e in journal.entries:
            if e.account == Account.PROVIDER_FEES:
                fees[key] += e.amount_minor if e.side == "D" else -e.amount_minor
    return dict(fees)


def settled_payments(facts: Facts) -> set[str]:
    """Payments reconciliation settled: a ``settlement_*`` move or a settlement journal."""
    settled = {p.id for p in facts.payments
               if any(h.reason in SETTLED_REASONS for h in p.history)}  # fmt: skip
    settled |= {j.payment_id for j in facts.journals
                if j.kind == SETTLEMENT_JOURNAL and j.payment_id is not None}  # fmt: skip
    return settled


def check_settled(inv: Invariant, facts: Facts, exceptions: list[ReconExceptionRecord]) -> None:
    """No payment whose charge has an open amount, fee or currency exception is settled."""
    by_provider_id = {p.provider_payment_id: p.id for p in facts.payments if p.provider_payment_id}
    settled = settled_payments(facts)
    for x in exceptions:
        if x.status != "open" or x.kind != "charge" or x.category not in HOLDS_SETTLEMENT:
            continue
        inv.checked += 1
        payment_id = by_provider_id.get(x.provider_ref or "")
        if payment_id in settled and len(inv.violations) < VIOLATIONS_MAX:
            inv.add(payment_id, f"settled although its charge has an open {x.category} "
                                f"({x.balance_transaction_id})")  # fmt: skip


def _row_disagrees(
    row: SettlementRowRecord, booked: Mapping[Ident, int], fees: Mapping[Ident, int],
    tolerance_minor: int,
) -> str | None:  # fmt: skip
    key: Ident = ("key", row.kind, row.provider_ref)
    sign = GROSS_SIGN.get(row.kind, 1)
    if key not in booked:
        return "the ledger booked no such movement"
    if abs(row.gross_minor * sign - booked[key]) > tolerance_minor:
        return f"gross {row.gross_minor}, the ledger booked {booked[key]}"
    if row.fee_minor != fees.get(key, 0):
        return f"fee {row.fee_minor}, the ledger holds {fees.get(key, 0)}"
    if row.net_minor != row.gross_minor - row.fee_minor:
        return f"net {row.net_minor} is not gross {row.gross_minor} less fee {row.fee_minor}"
    return None


def check_matched(
    inv: Invariant, facts: Facts, booked: Mapping[Ident, int],
    exceptions: list[ReconExceptionRecord], rows: list[SettlementRowRecord], tolerance_minor: int,
) -> None:  # fmt: skip
    """Matched rows agree with the ledger and are no exception; one closed as booked late
    was matched, or paired with a difference that is an exception of its own."""
    fees = ledger_fees(facts)
    matched = {row.balance_transaction_id for row in rows}
    differs = {x.balance_transaction_id for x in exceptions if x.category in PAIR_DIFFERS}
    for row in rows:
        inv.checked += 1
        why = _row_disagrees(row, booked, fees, tolerance_minor)
        if why is not None and len(inv.violations) < VIOLATIONS_MAX:
            inv.add(row.balance_transaction_id, f"matched {row.kind} {row.provider_ref}: {why}")
    for x in exceptions:
        bt = x.balance_transaction_id
        if len(inv.violations) >= VIOLATIONS_MAX:
            break
        if _booked_late(x) and bt not in matched and bt not in differs:
            inv.add(bt or x.id, f"{x.category} closed as booked late, its row never matched")
        elif bt in matched and not _booked_late(x):
            inv.add(bt, f"matched and also {x.category} ({x.status})")


def _check_downloads(inv: Invariant, world: World, d: Desk) -> None:
    """Every garbled download refused, and nothing else: a report read as far as it
    goes, or a whole one refused, is the engine's defect."""
    garbled = world.psp.fault_log.counts().get(str(FaultKind.SETTLEMENT_GARBLED), 0)
    inv.checked += garbled
    refused = len(d.refused)
    if refused > garbled:
        inv.add("report", f"{refused - garbled} whole report(s) refused (of {refused} refused): "
                          f"{d.refused[0]}")  # fmt: skip
    elif refused < garbled:
        inv.add("report", f"{garbled - refused} garbled report(s) read as if whole: "
                          f"{refused} refused of {garbled} the provider garbled")  # fmt: skip


def _paths(world: World, facts: Facts) -> None:
    """Paths only the final facts show: split payments settled and disputed."""
    split = {p.id for p in facts.payments if p.lines_count}
    for kind, path in (("settlement", "split payment settled by reconciliation"),
                       ("dispute_withdrawal", "split payment disputed")):  # fmt: skip
        _count(world, path, sum(1 for j in facts.journals
                                if j.kind == kind and j.payment_id in split))  # fmt: skip


def check_reconciliation(world: World, facts: Facts | None = None) -> Invariant:
    """R, over what the engine shows (``world.sut.reads``; ``facts`` when already read)."""
    # oracles lists this check: not imported at the top
    from scenarios.oracles import Facts, Invariant

    what = (
        "every settlement fault found in its category, none invented; nothing settled "
        "or matched against an exception; matched rows agree with the ledger"
    )
    inv = Invariant("R", "reconciliation", what)
    d = _DESKS.get(world)
    if world.scenario.reconciliation is None:
        inv.applicable = False
        inv.reason = "reconciliation is not enabled in this scenario"
        return inv
    if d is None or d.runs == 0:
        inv.add("reconciliation", "never ran")
        return inv
    _check_downloads(inv, world, d)
    if not _faults(world)[1]:
        inv.add("fault_log", "the fault log dropped settlement records: faults cannot be checked")
    reads = world.sut.reads
    facts = Facts.read(reads) if facts is None else facts
    booked = booked_movements(facts, every(reads.payouts))
    e = expectation(world, d, booked, facts)
    inv.checked = len(world.psp.state.balance_transactions)  # each judged, faulted or not
    exceptions = list(every(reads.recon_exceptions))
    _paths(world, facts)
    check_settled(inv, facts, exceptions)
    tolerance_minor = world.scenario.reconciliation.amount_tolerance_minor
    check_matched(inv, facts, booked, exceptions, list(every(reads.settlement_rows)),
                  tolerance_minor)  # fmt: skip
    seen: set[tuple[str, Ident]] = set()
    for category, ident, detail in _found(x for x in exceptions if not _booked_late(x)):
        inv.checked += 1
        seen.add((category, ident))
        if (category, ident) not in e.wanted and len(inv.violations) < VIOLATIONS_MAX:
            inv.add(ident[-1], f"{category} that no fault or divergence explains: {detail}")
    for (category, ident), why in sorted(e.wanted.items()):
        if (category, ident) not in seen and len(inv.violations) < VIOLATIONS_MAX:
            inv.add(ident[-1], f"not found as {category}: {why}")
    return inv
