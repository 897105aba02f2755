"""Reconciliation as service steps: the provider's settlement report against the ledger.

``Reconciler.run`` reads a report (CSV or JSON: ``engine.domain.settlement``),
the movements the engine booked around the window and those the report names
(``engine.adapters.recon_store``), matches them with the pure
``engine.domain.reconciliation.reconcile``, then records, in one unit of work,
the run, the rows it matched (a balance transaction once, ever) and the new
exceptions (one per discrepancy, ever: a second run over the same report adds
none), closes the open exceptions an earlier run raised about a row this run
matched (``missing_in_ledger``, ``outside_window``: the ledger booked the movement
after that run, as it does money it learns of late; resolved with no journal,
the reason naming this run), and
last settles each matched charge's payment (``settle_payment``, one
unit of work each, idempotent). A malformed report raises
``SettlementFileInvalid`` naming the line and column before anything is read or
written. Re-running a window is safe: that is how a run cut short is finished.

A ``missing_in_ledger`` keeps its row (``reported_row``). A run reads the open
ones about its window's movements and passes them to ``reconcile`` as owed
rows: the run of the window holding a booking pairs it with the row an earlier
run found missing, however late the ledger learned of the money (a dispute
webhook retried for hours), and closes that exception "booked late".

``Reconciler.resolve`` closes an open exception with a reason and, when the
discrepancy is money the ledger holds differently from the provider, posts a
corrective journal (``recon_adjustment``) in the same unit of work. The ledger
is never edited: the journal moves the difference between ``psp_clearing``
(what the provider holds for us) and ``recon_adjustments`` (a suspense account
where each difference waits, with its reason on the exception, for whoever
clears it against a merchant, a seller or a loss), or ``provider_fees``:

    category             (party ledger)      psp_clearing moves by (debit +)
    amount_mismatch      reported - ledger   x direction
    missing_in_ledger    reported            x direction (the report's own sign
                                               for a category the engine lacks)
    missing_at_provider  - ledger            x direction (undo the booking)
    duplicate, booked    - ledger            x direction (undo the extra booking)
    currency_mismatch    - ledger in the ledger's currency, + reported in the
                         report's, x direction (two pairs, each balanced)
    fee_mismatch         provider_fees debited by reported - ledger fee, against
                         psp_clearing
    duplicate, reported  no journal: the provider listed one movement twice
    outside_window       no journal: when, not how much
    missing_at_bank and every bank-party exception: no journal; the ledger agrees
                         with the provider, the difference is the bank's

"direction" is +1 for money into the provider balance (charge, dispute reversal,
payout reversal) and -1 for money out (refund, dispute, payout). Resolving a
reported charge's exception (amount, fee, currency, outside window) also settles
its payment, as a match would have. Resolving twice is refused
(``recon_exception_resolved``, 409).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from engine.adapters import recon_store
from engine.adapters.database import Database
from engine.adapters.direct import Direct
from engine.adapters.store import Row, Store
from engine.domain.errors import Conflict, InvalidRequest, NotFound, SettlementFileInvalid
from engine.domain.ledger import Account, Entry, Journal, Side
from engine.domain.lifecycles import EXCEPTION_MOVES, ExceptionStatus, moved
from engine.domain.ports import Clock, IdSource
from engine.domain.reconciliation import (
    BankPayout,
    ExceptionCategory,
    LedgerMovement,
    Match,
    MovementKind,
    Party,
    ReconciliationException,
    ReconciliationResult,
    ReconciliationWindow,
    Tolerances,
    reconcile,
    row_key,
)
from engine.domain.settlement import (
    SettlementReport,
    SettlementRow,
    parse_settlement_report,
    row_document,
    row_from_document,
)
from engine.domain.validation import contains_pan
from engine.service.engine import PaymentEngine

JOURNAL_KIND = "recon_adjustment"
SOURCE_CHARS_MAX = 255
REF_CHARS_MAX = 255  # the tables' reference columns
PAYMENT_ID_CHARS_MAX = 64
DETAIL_CHARS_MAX = 500
REASON_CHARS_MAX = 500
C = ExceptionCategory
K = MovementKind
INFLOWS = frozenset({K.CHARGE.value, K.DISPUTE_REVERSAL.value, K.PAYOUT_REVERSAL.value})
SETTLES_ON_RESOLVE = frozenset(
    {C.AMOUNT_MISMATCH, C.FEE_MISMATCH, C.CURRENCY_MISMATCH, C.OUTSIDE_WINDOW}
)
STATUSES = tuple(status.value for status in ExceptionStatus)
# What an earlier run said of a row the ledger had not booked yet (or booked far
# from it): closed when a later run matches that row.
CLOSED_BY_MATCH = frozenset({C.MISSING_IN_LEDGER.value, C.OUTSIDE_WINDOW.value})
BOOKED_LATE = "booked late"  # the resolution reason's prefix
RECON_ADJUSTMENTS = Account.RECON_ADJUSTMENTS  # the suspense account, by its old name
# The row's fields a reference is taken from (``payout_id`` is the report's automatic_payout_id).
REF_COLUMNS = ("balance_transaction_id", "payment_intent_id", "charge_id", "refund_id",
               "dispute_id", "source_id", "payout_id")  # fmt: skip
_WHERE = re.compile(r"line (\d+)|data\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run: what it read, matched, settled and found (``new_count`` of them new)."""

    run_id: str
    source: str
    format: str
    window_start_at: datetime
    window_end_at: datetime
    rows_count: int
    matched_count: int
    exceptions: tuple[ReconciliationException, ...]
    new_count: int
    payouts_in_transit: tuple[str, ...]
    landed_count: int = 0  # matched payouts the bank received too: three ways
    settled_count: int = 0
    closed_count: int = 0  # earlier runs' exceptions this run matched: booked late
    paired_late_count: int = 0  # owed rows (found missing by earlier runs) paired here

    @property
    def clean(self) -> bool:
        return not self.exceptions

    def counts(self) -> dict[str, int]:
        """Exceptions found per category, every category listed."""
        counts = {category.value: 0 for category in ExceptionCategory}
        for found in self.exceptions:
            counts[found.category.value] += 1
        return counts


@dataclass(frozen=True, slots=True)
class ExceptionItem:
    """A stored exception, as ``paychaos recon exceptions`` lists it."""

    id: str
    run_id: str
    category: str
    party: str
    kind: str | None
    provider_ref: str | None
    payment_id: str | None
    balance_transaction_id: str | None
    currency: str | None
    expected_minor: int | None
    reported_minor: int | None
    detail: str
    status: str
    resolution_reason: str | None
    journal_id: str | None
    created_at: datetime
    resolved_at: datetime | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> ExceptionItem:
        return cls(**{name: row[name] for name in cls.__slots__})


def dedupe_key(found: ReconciliationException) -> str:
    """One discrepancy, however many runs see it: what and where, never amounts."""
    kind = "-" if found.kind is None else found.kind.value
    parts = (found.category.value, found.party.value, kind, found.provider_ref,
             found.balance_transaction_id or "-")  # fmt: skip
    return "|".join(parts)


# --- corrective journals (pure) ---------------------------------------------------------


def _direction(kind: str | None) -> int:
    """+1 when the movement brings money into the provider balance, else -1; a
    category the engine does not know carries its own sign in the amount."""
    return 1 if kind is None or kind in INFLOWS else -1


def _against(account: str, other: str, delta_minor: int, currency: str) -> list[Entry]:
    """``account`` debited by ``delta_minor`` (credited when negative), ``other`` opposite."""
    if delta_minor == 0:
        return []
    debit, credit = (account, other) if delta_minor > 0 else (other, account)
    size = abs(delta_minor)
    return [Entry(debit, Side.DEBIT, size, currency), Entry(credit, Side.CREDIT, size, currency)]


def _clearing(delta_minor: int, currency: str) -> list[Entry]:
    return _against(Account.PSP_CLEARING, Account.RECON_ADJUSTMENTS, delta_minor, currency)


def correction(row: Mapping[str, Any], ledger_currency: str | None = None) -> Journal | None:
    """The corrective journal that resolving this exception posts, or None (see the
    module docstring). ``ledger_currency`` is needed for a currency mismatch only."""
    category, kind = C(row["category"]), row["kind"]
    if row["party"] == Party.BANK.value:
        return None
    expected, reported, currency = row["expected_minor"], row["reported_minor"], row["currency"]
    sign = _direction(kind)
    entries: list[Entry] = []
    if category is C.AMOUNT_MISMATCH:
        entries = _clearing(sign * (reported - expected), currency)
    elif category is C.MISSING_IN_LEDGER:
        entries = _clearing(sign * reported, currency)
    elif category is C.MISSING_AT_PROVIDER or (
        category is C.DUPLICATE and row["balance_transaction_id"] is None
    ):
        entries = _clearing(-sign * expected, currency)
    elif category is C.FEE_MISMATCH:
        entries = _against(Account.PROVIDER_FEES, Account.PSP_CLEARING, reported - expected,
                           currency)  # fmt: skip
    elif category is C.CURRENCY_MISMATCH:
        assert ledger_currency is not None, "a currency mismatch needs the ledger's currency"
        entries = _clearing(-sign * expected, ledger_currency) + _clearing(
            sign * reported, currency
        )
    return Journal(JOURNAL_KIND, tuple(entries)) if entries else None


# --- input checks ------------------------------------------------------------------------


def _where(row: SettlementRow) -> dict[str, int]:
    found = _WHERE.fullmatch(row.source)
    if found is None:
        return {}
    line, index = found.groups()
    return {"line": int(line)} if line is not None else {"row_index": int(index)}


def check_rows(rows: Iterable[SettlementRow]) -> None:
    """References longer than the engine keeps them are refused, naming the row."""
    for row in rows:
        for column in REF_COLUMNS:
            value = getattr(row, column)
            if value is not None and len(value) > REF_CHARS_MAX:
                named = "automatic_payout_id" if column == "payout_id" else column
                raise SettlementFileInvalid(
                    "too_long", f"a reference is at most {REF_CHARS_MAX} characters",
                    column=named, **_where(row),
                )  # fmt: skip


def parse_source(source: str) -> str:
    if not 0 < len(source) <= SOURCE_CHARS_MAX:
        raise InvalidRequest("source_invalid", f"1 to {SOURCE_CHARS_MAX} characters", "source")
    return source


def parse_reason(reason: str) -> str:
    text = reason.strip()
    if not 0 < len(text) <= REASON_CHARS_MAX:
        raise InvalidRequest(
            "reason_invalid", f"a reason is 1 to {REASON_CHARS_MAX} characters", "reason"
        )
    if contains_pan(text):
        raise InvalidRequest("reason_invalid", "a reason never holds a card number", "reason")
    return text


def parse_listing(status: str | None, category: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise InvalidRequest("status_invalid", "status is open or resolved", "status")
    if category is not None and category not in ExceptionCategory._value2member_map_:
        names = ", ".join(c.value for c in ExceptionCategory)
        raise InvalidRequest("category_invalid", f"category is one of {names}", "category")


def reach(window: ReconciliationWindow, tolerances: Tolerances) -> tuple[datetime, datetime]:
    """The span of time a run reads: its window widened by the lateness on each side,
    and before it by the booking lag (rows of money the ledger booked late)."""
    slack = timedelta(seconds=tolerances.lateness_s)
    lag = timedelta(seconds=tolerances.booking_lag_s)
    return window.start_at - slack - lag, window.end_at + slack


# --- the service ----------------------------------------------------------------------


class Reconciler:
    def __init__(self, database: Database, clock: Clock, ids: IdSource, engine: PaymentEngine):
        self.db = database
        self.clock = clock
        self.ids = ids
        self.engine = engine

    # -- run ----------------------------------------------------------------------------
    def run(
        self,
        report: str | bytes | Mapping[str, Any] | list[Any],
        source: str,
        window_start_at: datetime,
        window_end_at: datetime,
        tolerances: Tolerances | None = None,
        bank_payouts: Sequence[BankPayout] | None = None,
    ) -> RunSummary:
        """Reconcile ``report`` for ``[window_start_at, window_end_at)``; ``bank_payouts``
        None: the payouts the engine knows landed. Raises ``SettlementFileInvalid``
        (nothing written) or ``InvalidRequest`` (a bad window, tolerance or source)."""
        source = parse_source(source)
        window = ReconciliationWindow(window_start_at, window_end_at)
        tolerances = tolerances or Tolerances()
        parsed = parse_settlement_report(report)
        rows = self._report_rows(parsed)
        check_rows(rows)
        movements, bank, owed = self._read(rows, window, tolerances, bank_payouts)
        result = reconcile(movements, rows, bank, window, tolerances, owed)
        summary = self._record(source, parsed.format.value, window, len(rows), result)
        return replace(summary, settled_count=self._settle(result.matched))

    def _report_rows(self, report: SettlementReport) -> tuple[SettlementRow, ...]:
        """The rows to match: all of them (a seam for the harness's planted defects)."""
        return report.rows

    def _read(
        self,
        rows: Sequence[SettlementRow],
        window: ReconciliationWindow,
        tolerances: Tolerances,
        bank_payouts: Sequence[BankPayout] | None,
    ) -> tuple[list[LedgerMovement], list[BankPayout], list[SettlementRow]]:
        """The movements around the window and those the rows name, the payouts the bank
        received, and the rows earlier runs found missing that one of the window's
        movements may be (owed rows)."""
        refs: dict[MovementKind, set[str]] = defaultdict(set)
        for row in rows:
            kind, ref = row_key(row)
            if kind is not None:
                refs[kind].add(ref)
        start_at, end_at = reach(window, tolerances)
        with self.db.transaction() as c:
            movements = recon_store.movements(c, start_at, end_at, refs)
            if bank_payouts is None:
                payout_refs = refs[K.PAYOUT] | refs[K.PAYOUT_REVERSAL]
                bank_payouts = recon_store.bank_payouts(c, start_at, end_at, payout_refs)
            in_window = {(m.kind.value, m.provider_ref) for m in movements if window.holds(m.at)}
            owed = [row_from_document(row)
                    for row in recon_store.owed_rows(c, in_window, BOOKED_LATE)]  # fmt: skip
        return movements, list(bank_payouts), owed

    def _record(
        self,
        source: str,
        report_format: str,
        window: ReconciliationWindow,
        rows_count: int,
        result: ReconciliationResult,
    ) -> RunSummary:
        now = self.clock.now()
        run_id = self.ids.new_id("rcn")
        by_key = {dedupe_key(found): found for found in reversed(result.exceptions)}
        with self.db.transaction() as c:
            known = recon_store.existing_dedupe_keys(c, by_key.keys())
            fresh = [
                self._exception_row(run_id, key, found, now)
                for key, found in sorted(by_key.items())
                if key not in known
            ]
            recon_store.insert_run(c, {
                "id": run_id, "source": source, "format": report_format,
                "window_start_at": window.start_at, "window_end_at": window.end_at,
                "rows_count": rows_count, "matched_count": len(result.matched),
                "exceptions_count": len(result.exceptions), "created_at": now,
            })  # fmt: skip
            recon_store.insert_settlement_rows(c, [_matched_row(run_id, m) for m in result.matched])
            recon_store.insert_exceptions(c, fresh)
            closed = self._close_matched(c, run_id, result, now)
            c.commit()
        landed = sum(1 for match in result.matched if match.bank is not None)
        return RunSummary(
            run_id, source, report_format, window.start_at, window.end_at, rows_count,
            len(result.matched), result.exceptions, len(fresh), result.payouts_in_transit,
            landed, closed_count=closed, paired_late_count=len(result.paired_late),
        )  # fmt: skip

    @staticmethod
    def _close_matched(c: Direct, run_id: str, result: ReconciliationResult, now: datetime) -> int:
        """An earlier run's exception about a row this run matched, or paired late (an
        owed row), was the ledger booking late: closed, with no journal (a pair that
        differs has this run's exception on the row). How many."""
        matched = {match.row.balance_transaction_id for match in result.matched}
        resolved = moved(EXCEPTION_MOVES, ExceptionStatus.OPEN, ExceptionStatus.RESOLVED)
        closed = 0
        for bt_ids, reason in (
            (matched, f"{BOOKED_LATE}: matched by run {run_id}"),
            (set(result.paired_late) - matched,
             f"{BOOKED_LATE}: paired by run {run_id}, which found the pair differs"),
        ):  # fmt: skip
            closing = recon_store.open_exceptions_of_rows(c, bt_ids, CLOSED_BY_MATCH)
            for exception_id in closing:
                recon_store.resolve_exception(
                    c, exception_id, status=resolved.value, resolved_at=now,
                    resolution_reason=reason,
                )  # fmt: skip
            closed += len(closing)
        return closed

    def _exception_row(
        self, run_id: str, key: str, found: ReconciliationException, now: datetime
    ) -> Row:
        payment_id = found.payment_id
        if payment_id is not None and len(payment_id) > PAYMENT_ID_CHARS_MAX:
            payment_id = None  # metadata that cannot be an engine payment id
        return {
            "id": self.ids.new_id("rcx"), "run_id": run_id, "dedupe_key": key,
            "category": found.category.value, "party": found.party.value,
            "kind": None if found.kind is None else found.kind.value,
            "provider_ref": found.provider_ref, "payment_id": payment_id,
            "balance_transaction_id": found.balance_transaction_id,
            # The report's currency when it has a figure: the one a correction books.
            "currency": found.reported_currency or found.expected_currency or found.bank_currency,
            "expected_minor": found.expected_minor, "reported_minor": found.reported_minor,
            "detail": found.detail[:DETAIL_CHARS_MAX],
            "status": moved(EXCEPTION_MOVES, None, ExceptionStatus.OPEN).value,
            "resolution_reason": None, "journal_id": None, "created_at": now, "resolved_at": None,
            "reported_row": _owed(found),
        }  # fmt: skip

    def _settle(self, matched: Sequence[Match]) -> int:
        payment_ids = sorted(
            {
                m.movement.payment_id
                for m in matched
                if m.movement.kind is K.CHARGE and m.movement.payment_id is not None
            }
        )
        return sum(self.engine.settle_payment(payment_id) for payment_id in payment_ids)

    def last_window_end(self, source: str) -> datetime | None:
        """Where the last run from ``source`` stopped; a scheduled worker goes on there."""
        with self.db.transaction() as c:
            return recon_store.last_window_end(c, parse_source(source))

    # -- exceptions ---------------------------------------------------------------------------
    def exceptions(
        self,
        status: str | None = ExceptionStatus.OPEN.value,
        category: str | None = None,
        limit: int = 100,
    ) -> list[ExceptionItem]:
        """Stored exceptions, oldest first; ``status`` None lists every status."""
        parse_listing(status, category)
        if not 0 < limit <= recon_store.LIST_LIMIT_MAX:
            raise InvalidRequest(
                "limit_invalid", f"limit is 1 to {recon_store.LIST_LIMIT_MAX}", "limit"
            )
        with self.db.transaction() as c:
            rows = recon_store.exceptions(c, status, category, limit)
        return [ExceptionItem.of(row) for row in rows]

    def resolve(self, exception_id: str, reason: str) -> ExceptionItem:
        """Close an open exception with ``reason``, posting its correction (if any)."""
        reason = parse_reason(reason)
        with self.db.transaction() as c:
            row = recon_store.exception(c, exception_id, lock=True)
            if row is None:
                raise NotFound(
                    "recon_exception_not_found", f"no exception {exception_id}", "exception_id"
                )
            if row["status"] != ExceptionStatus.OPEN:
                raise Conflict(
                    "recon_exception_resolved",
                    f"exception {exception_id} was resolved at "
                    f"{row['resolved_at'].isoformat()} ({row['resolution_reason']}); "
                    "a resolution is never changed",
                    "exception_id",
                )
            resolved = self._resolve(c, row, reason)
        if resolved.category in SETTLES_ON_RESOLVE and _reported_charge(resolved):
            assert resolved.payment_id is not None
            self.engine.settle_payment(resolved.payment_id, "settlement_resolved")
        return resolved

    def _resolve(self, c: Direct, row: Row, reason: str) -> ExceptionItem:
        ledger_currency = None
        if row["category"] == C.CURRENCY_MISMATCH.value:
            ledger_currency = recon_store.ledger_currency(c, row["kind"], row["provider_ref"])
            if ledger_currency is None:
                raise Conflict(
                    "recon_correction_impossible",
                    f"the ledger no longer has {row['kind']} {row['provider_ref']}",
                    "exception_id",
                )
        journal = correction(row, ledger_currency)
        now = self.clock.now()
        journal_id = None if journal is None else self.ids.new_id("jnl")
        resolved = moved(EXCEPTION_MOVES, ExceptionStatus.OPEN, ExceptionStatus.RESOLVED)
        values = {"status": resolved.value, "resolution_reason": reason, "journal_id": journal_id,
                  "resolved_at": now}  # fmt: skip
        recon_store.resolve_exception(c, row["id"], **values)
        store = Store(c)
        if journal is not None:
            assert journal_id is not None
            store.insert_journal(journal_id, journal, row["payment_id"], None, now)
        store.commit()
        return ExceptionItem.of({**row, **values})


def _matched_row(run_id: str, match: Match) -> Row:
    movement, row = match.movement, match.row
    return {
        "balance_transaction_id": row.balance_transaction_id, "run_id": run_id,
        "kind": movement.kind.value, "provider_ref": movement.provider_ref,
        "payment_id": movement.payment_id, "currency": row.currency,
        "gross_minor": row.gross_minor, "fee_minor": row.fee_minor, "net_minor": row.net_minor,
        "created_at": row.created_at,
    }  # fmt: skip


def _owed(found: ReconciliationException) -> dict[str, Any] | None:
    """The row a ``missing_in_ledger`` about a known movement keeps, for a later run."""
    if found.row is None or found.party is not Party.LEDGER or found.kind is None:
        return None
    return row_document(found.row)


def _reported_charge(item: ExceptionItem) -> bool:
    return (
        item.kind == K.CHARGE.value
        and item.party == Party.LEDGER.value
        and item.balance_transaction_id is not None
        and item.payment_id is not None
    )
