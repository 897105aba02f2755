"""Planted defects in what reconciliation *does* (issue 17, blind spots 2, 4 and 5).

- Actions: each leaves the set of exceptions a run stores as it was, so an oracle
  that only compares that set (R before issue 17) passes them all; R's checks of
  what was settled and matched catch them: a payment settled despite an open
  exception on its charge, and a row both matched and an exception.
- Disputes reconciled: a dispute the ledger booked after its row's window ran,
  never paired with the row; a payment settled while its dispute is open.
- Garbled reports: a report that will not parse taken as empty, and a refused
  window passed by. R holds the provider's count of garbled downloads against
  the refusals, and the exceptions each window must give.
"""

from __future__ import annotations

from typing import Any

from engine.domain import reconciliation as domain
from engine.domain import settlement
from engine.domain.errors import SettlementFileInvalid
from engine.domain.reconciliation import ExceptionCategory, Match, MovementKind
from engine.domain.settlement import ReportFormat, SettlementReport
from engine.domain.states import PaymentState as S
from engine.domain.states import is_legal
from engine.service import reconciliation as service
from engine.service.payments import PaymentSteps
from engine.service.reconciliation import Reconciler, RunSummary
from engine.workers.reconciliation import ReconciliationWorker, ReconReport, window_end
from loadtests.planted.catalogue import Defect, Patcher

HOLDS = frozenset(
    {
        ExceptionCategory.AMOUNT_MISMATCH,
        ExceptionCategory.FEE_MISMATCH,
        ExceptionCategory.CURRENCY_MISMATCH,
    }
)


def settled_despite_an_open_amount_exception(mp: Patcher) -> None:
    """A charge's amount, fee or currency exception does not hold its settlement."""
    run = Reconciler.run

    def settling_run(self: Reconciler, *args: Any, **kwargs: Any) -> RunSummary:
        summary = run(self, *args, **kwargs)
        for found in summary.exceptions:
            if found.kind is MovementKind.CHARGE and found.category in HOLDS and found.payment_id:
                self.engine.settle_payment(found.payment_id)
        return summary

    mp.setattr(Reconciler, "run", settling_run)


def matched_and_an_exception(mp: Patcher) -> None:
    """A pair with a discrepancy is recorded as matched as well as found."""
    pair = domain._Run._pair

    def pair_always_matched(self: Any, movement: Any, row: Any) -> None:
        before = len(self.matched)
        pair(self, movement, row)
        if len(self.matched) == before:
            self.matched.append(Match(movement, row, None))

    mp.setattr(domain._Run, "_pair", pair_always_matched)


def late_booking_never_paired(mp: Patcher) -> None:
    """The rows earlier runs found missing are not read again: a dispute the ledger
    booked after its row's window ran is never paired, its exception never closed."""
    read = Reconciler._read

    def forgetting_read(self: Reconciler, *args: Any, **kwargs: Any) -> Any:
        movements, bank, _owed = read(self, *args, **kwargs)
        return movements, bank, []

    mp.setattr(Reconciler, "_read", forgetting_read)


def disputed_payment_settled(mp: Patcher) -> None:
    """A matched charge settles its payment although a dispute on it is open: the
    dispute's later loss then leaves a payment the engine shows as settled."""
    mp.setattr(PaymentSteps, "_settles", staticmethod(lambda p: is_legal(p.state, S.SETTLED)))


def garbled_report_read_as_empty(mp: Patcher) -> None:
    """A report that will not parse is taken as one with no rows (``except: rows = []``):
    the window is marked reconciled, every movement in it missing at the provider."""
    parse = settlement.parse_settlement_report

    def lenient(report: Any, *args: Any, **kwargs: Any) -> SettlementReport:
        try:
            return parse(report, *args, **kwargs)
        except SettlementFileInvalid:
            return SettlementReport(ReportFormat.JSON, ())

    mp.setattr(service, "parse_settlement_report", lenient)


def refused_window_passed_by(mp: Patcher) -> None:
    """A window whose report was refused is passed by: the worker goes on to the next
    one, and that window's discrepancies are never looked for."""
    run_once = ReconciliationWorker.run_once

    def passing_by(self: ReconciliationWorker, *args: Any, **kwargs: Any) -> ReconReport:
        report = run_once(self, *args, **kwargs)
        if report.refused and self._next_start_at is not None:
            self._next_start_at = window_end(self._next_start_at, self.interval, self.origin)
        return report

    mp.setattr(ReconciliationWorker, "run_once", passing_by)


SPOT = "recon-actions"
DISPUTES = "disputes-reconciled"
GARBLED = "garbled-reports"
DEFECTS = [
    Defect(settled_despite_an_open_amount_exception, "settlement-mismatch", 300.0,
           frozenset({"R"}), blind_spot=SPOT),
    Defect(matched_and_an_exception, "settlement-mismatch", 300.0, frozenset({"R"}),
           blind_spot=SPOT),
    Defect(late_booking_never_paired, "disputes-and-settlement", None, frozenset({"R"}),
           blind_spot=DISPUTES),
    Defect(disputed_payment_settled, "disputes-and-settlement", None, frozenset({"I7"}),
           blind_spot=DISPUTES),
    Defect(garbled_report_read_as_empty, "settlement-mismatch", 300.0, frozenset({"R"}),
           blind_spot=GARBLED),
    Defect(refused_window_passed_by, "settlement-mismatch", 300.0, frozenset({"R"}),
           blind_spot=GARBLED),
]  # fmt: skip
