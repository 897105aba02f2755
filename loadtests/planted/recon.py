"""Planted defects in what reconciliation *does* (issue 17, blind spots 2 and 4).

Each leaves the set of exceptions a run stores as it was, so an oracle that only
compares that set (R before issue 17) passes them all; R's checks of what was
settled and matched catch them: a payment settled despite an open exception on
its charge, and a row both matched and an exception.
"""

from __future__ import annotations

from typing import Any

from engine.domain import reconciliation as domain
from engine.domain.reconciliation import ExceptionCategory, Match, MovementKind
from engine.service.reconciliation import Reconciler, RunSummary
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


SPOT = "recon-actions"
DEFECTS = [
    Defect(settled_despite_an_open_amount_exception, "settlement-mismatch", 300.0,
           frozenset({"R"}), blind_spot=SPOT),
    Defect(matched_and_an_exception, "settlement-mismatch", 300.0, frozenset({"R"}),
           blind_spot=SPOT),
]  # fmt: skip
