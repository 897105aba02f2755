"""Reconciliation: what the ledger says happened at the provider, against its report.

A pure function of its inputs: the engine's ``LedgerMovement``s, the report's
``SettlementRow``s (``engine.domain.settlement``), the ``BankPayout``s the bank
says landed, a window ``[start_at, end_at)`` and ``Tolerances``. It returns the
matched pairs and the exceptions, both in a deterministic order, and never
invents an exception: a faithful report gives none, and each discrepancy gives
exactly one.

Matching rules
--------------
1. Keys. A movement is keyed by ``(kind, provider_ref)``. A row's kind is its
   ``reporting_category`` (charge, refund, dispute, dispute_reversal, payout,
   payout_reversal; any other category has no engine counterpart) and its
   ``provider_ref`` is what the engine knows it by: the payment intent for a
   charge, dispute and dispute_reversal (the engine's ``provider_payment_id``;
   one intent has one captured charge and at most one dispute); the refund for a
   refund; the payout for payout rows; else the row's ``source_id``.
2. Scope. A movement is in scope when ``start_at <= at < end_at``; a row when its
   ``created_at`` is. A row matches an in-scope movement when it was created
   at most ``lateness_s`` after the movement, or before it by up to
   ``lateness_s + booking_lag_s`` (one rule, ``_near``, used by the movement's
   run and by any other run holding the row; the caller passes rows for
   ``[start - lateness - booking_lag, end + lateness)`` and movements for a
   wider span: extra inputs never hurt). A pair belongs to the run whose window
   holds the movement, so each discrepancy is reported by one run only.
   The ledger learns of money after the provider moves it (a dispute or its
   reversal by webhook, retried for minutes; a capture by recovery), so a row
   *earlier* than its movement by up to ``booking_lag_s`` is the engine learning
   late, not a report out of time: it is compared as a pair, never
   ``outside_window``. A row *later* than its movement by more than
   ``lateness_s`` is the report's lateness.
3. Duplicates. Rows are taken in ``(created_at, balance transaction, input
   order)``, so the outcome does not hang on the file's order; a row whose
   balance transaction or key was already seen is a ``duplicate`` (one per extra
   row, reported when the extra row is in scope) and takes no further part.
   Likewise a movement booked twice, and a payout landing twice at the bank.
4. Per in-scope movement: no row -> ``missing_at_provider``; a row created out
   of reach -> ``outside_window`` (once, never also as missing); otherwise
   ``currency_mismatch`` (then amounts are not compared), ``amount_mismatch``
   when the report's gross (as a size) and ``gross_minor`` differ by more than
   ``amount_tolerance_minor``, ``fee_mismatch`` when fees differ by more than
   ``fee_tolerance_minor`` (not checked when the engine books no fee:
   ``fee_minor=None``); net is not compared (the parser holds net = gross -
   fee, so a net difference is one of the two). No exception: a
   ``Match``. An out-of-scope movement claims its row silently, unless the row
   is in scope and further than ``lateness_s`` from it: ``outside_window``.
5. An in-scope row no movement claimed -> ``missing_in_ledger``.
6. Payouts, three-way. A reported payout matched to the ledger is also looked
   up at the bank by payout id: not landed ``payout_arrival_s`` after it was
   reported (by ``end_at``) -> ``missing_at_bank`` (unless reversed: a
   payout_reversal row for it); not yet due -> in transit. A bank amount or
   currency that differs from the report is an exception with party ``bank``,
   except when the bank agrees with the ledger: then the report is the odd one
   and its exception against the ledger says so. A reported payout the ledger
   lacks is one ``missing_in_ledger`` whatever the bank says; a landed payout
   neither reported nor booked (arrived in the window) is ``missing_in_ledger``
   with party ``bank``.
7. Owed rows. A row an earlier run found ``missing_in_ledger``, still open, is
   passed in ``owed`` (the service keeps the row with its exception). The run
   of the window holding its movement pairs the two, however long after the row
   the ledger booked it: compared as rule 4 says (never ``outside_window``: the
   distance is known, it is how late the ledger learned), a ``Match`` when they
   agree. Either way the row's balance transaction is in ``paired_late``, and
   the service closes the earlier ``missing_in_ledger`` ("booked late"). An
   owed row wins over a row of this report with its key and another balance
   transaction (that one is a duplicate). Owed rows raise nothing themselves.

Tolerances
----------
- ``amount_tolerance_minor`` (0): the largest gross difference, ledger against
  report and report against bank, that still matches.
- ``fee_tolerance_minor`` (0): the same for fees.
- ``lateness_s`` (0): how far outside the window a row may be created and
  still match an in-scope movement; also how far apart a row and a movement
  on either side of the window's edge may be before it is ``outside_window``.
- ``payout_arrival_s`` (3 days): how long after its report row a payout must
  have landed, judged at ``end_at``.
- ``booking_lag_s`` (0): how long after the provider moved money the ledger may
  book it (see rule 2); a movement booked later than that after its row is
  ``outside_window``, unless its row's window ran before the booking: that run
  said ``missing_in_ledger``, and the row is owed (rule 7).

Categories are the seven of issue 6 plus ``missing_at_bank``, which only the
three-way payout check gives.

Amounts: ``LedgerMovement.gross_minor`` is the movement's size (>= 0), as the
ledger books it; a row's signed gross is turned into a size by the sign its
category implies. ``fee_minor`` is what the provider kept, negative when it
gave a fee back (a won dispute). Every exception names its category, the party
the report disagrees with, the provider reference, the payment id when known,
the ledger's, report's and bank's amounts and currencies, and a short detail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from engine.domain.errors import InvalidRequest
from engine.domain.money import CURRENCY_EXPONENTS, Money
from engine.domain.settlement import GROSS_SIGN_BY_CATEGORY, SettlementRow

INPUTS_MAX = 1_000_000  # per list: movements, rows, bank payouts
WINDOW_SPAN_MAX = timedelta(days=400)
TOLERANCE_MINOR_MAX = 1_000_000
TOLERANCE_S_MAX = 60 * 86_400
PAYMENT_ID_METADATA_KEY = "payment_id"  # the engine sends its payment id as metadata


class MovementKind(StrEnum):
    CHARGE = "charge"
    REFUND = "refund"
    DISPUTE = "dispute"
    DISPUTE_REVERSAL = "dispute_reversal"
    PAYOUT = "payout"
    PAYOUT_REVERSAL = "payout_reversal"


class ExceptionCategory(StrEnum):
    MISSING_IN_LEDGER = "missing_in_ledger"
    MISSING_AT_PROVIDER = "missing_at_provider"
    AMOUNT_MISMATCH = "amount_mismatch"
    FEE_MISMATCH = "fee_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    DUPLICATE = "duplicate"
    OUTSIDE_WINDOW = "outside_window"
    MISSING_AT_BANK = "missing_at_bank"  # three-way: reported paid out, never landed


class Party(StrEnum):
    """Whom the provider's report was compared with when the discrepancy showed."""

    LEDGER = "ledger"
    BANK = "bank"


Key = tuple[MovementKind | None, str]


@dataclass(frozen=True, slots=True)
class LedgerMovement:
    """What the engine's ledger says happened at the provider."""

    provider_ref: str
    payment_id: str | None
    kind: MovementKind
    currency: str
    gross_minor: int  # the size of the movement, >= 0
    fee_minor: int | None  # what the provider kept; None: the engine books no fee here
    at: datetime

    def __post_init__(self) -> None:
        assert self.provider_ref, "a movement names its provider reference"
        assert self.currency in CURRENCY_EXPONENTS, self.currency
        assert self.gross_minor >= 0, self
        assert self.at.tzinfo is not None, "times are aware"

    @property
    def key(self) -> Key:
        return (self.kind, self.provider_ref)


@dataclass(frozen=True, slots=True)
class BankPayout:
    """A payout the bank says landed."""

    payout_id: str
    currency: str
    amount_minor: int
    arrived_at: datetime

    def __post_init__(self) -> None:
        assert self.payout_id and self.currency in CURRENCY_EXPONENTS, self
        assert self.amount_minor >= 0 and self.arrived_at.tzinfo is not None, self


@dataclass(frozen=True, slots=True)
class ReconciliationWindow:
    start_at: datetime
    end_at: datetime

    def __post_init__(self) -> None:
        assert self.start_at.tzinfo is not None and self.end_at.tzinfo is not None
        if not self.start_at < self.end_at <= self.start_at + WINDOW_SPAN_MAX:
            raise InvalidRequest(
                "window_invalid", f"a window ends after it starts, within {WINDOW_SPAN_MAX}", "end"
            )

    def holds(self, at: datetime) -> bool:
        return self.start_at <= at < self.end_at

    def reaches(self, at: datetime, lateness_s: int) -> bool:
        slack = timedelta(seconds=lateness_s)
        return self.start_at - slack <= at < self.end_at + slack


@dataclass(frozen=True, slots=True)
class Tolerances:
    amount_tolerance_minor: int = 0
    fee_tolerance_minor: int = 0
    lateness_s: int = 0
    payout_arrival_s: int = 3 * 86_400
    booking_lag_s: int = 0

    def __post_init__(self) -> None:
        for name in ("amount_tolerance_minor", "fee_tolerance_minor"):
            if not 0 <= getattr(self, name) <= TOLERANCE_MINOR_MAX:
                raise InvalidRequest("tolerance_invalid", f"0 <= {name} <= 1000000", name)
        for name in ("lateness_s", "payout_arrival_s", "booking_lag_s"):
            if not 0 <= getattr(self, name) <= TOLERANCE_S_MAX:
                raise InvalidRequest("tolerance_invalid", f"0 <= {name} <= 60 days", name)


@dataclass(frozen=True, slots=True)
class ReconciliationException:
    category: ExceptionCategory
    party: Party
    provider_ref: str
    kind: MovementKind | None
    payment_id: str | None
    expected_minor: int | None  # the ledger's (a fee for fee_mismatch)
    reported_minor: int | None  # the report's, as a size like the ledger's
    expected_currency: str | None
    reported_currency: str | None
    detail: str
    balance_transaction_id: str | None = None
    bank_minor: int | None = None
    bank_currency: str | None = None
    # The report's row, kept with a ``missing_in_ledger`` so a later run can pair it.
    row: SettlementRow | None = field(default=None, compare=False, repr=False)

    @property
    def currency(self) -> str | None:
        return self.expected_currency or self.reported_currency or self.bank_currency

    def sort_key(self) -> tuple[str, str, str, str, str, str]:
        kind = "" if self.kind is None else self.kind.value
        bt_id = self.balance_transaction_id or ""
        return (self.category, self.party, self.provider_ref, kind, bt_id, self.detail)


@dataclass(frozen=True, slots=True)
class Match:
    movement: LedgerMovement
    row: SettlementRow
    bank: BankPayout | None = None


@dataclass(frozen=True, slots=True)
class ReconciliationResult:
    matched: tuple[Match, ...]
    exceptions: tuple[ReconciliationException, ...]
    payouts_in_transit: tuple[str, ...]  # reported, booked, not yet due at the bank
    # Owed rows (rule 7) this run paired with their late booking, by balance transaction.
    paired_late: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not self.exceptions

    def counts(self) -> dict[str, int]:
        counts = {category.value: 0 for category in ExceptionCategory}
        for found in self.exceptions:
            counts[found.category] += 1
        return counts


# --- keys -----------------------------------------------------------------------------


def row_kind(row: SettlementRow) -> MovementKind | None:
    try:
        return MovementKind(row.reporting_category)
    except ValueError:
        return None


def row_provider_ref(row: SettlementRow) -> str:
    kind = row_kind(row)
    if kind in (MovementKind.CHARGE, MovementKind.DISPUTE, MovementKind.DISPUTE_REVERSAL):
        ref = row.payment_intent_id or row.dispute_id or row.charge_id
    elif kind is MovementKind.REFUND:
        ref = row.refund_id
    elif kind in (MovementKind.PAYOUT, MovementKind.PAYOUT_REVERSAL):
        ref = row.payout_id
    else:
        ref = None
    return ref or row.source_id or row.balance_transaction_id


def row_key(row: SettlementRow) -> Key:
    return (row_kind(row), row_provider_ref(row))


def reported_size_minor(row: SettlementRow) -> int:
    """The row's gross as a size, like the ledger's: its category's sign taken off."""
    return row.gross_minor * GROSS_SIGN_BY_CATEGORY.get(row.reporting_category, 1)


def _money(amount_minor: int | None, currency: str | None) -> str:
    if amount_minor is None or currency is None:
        return "nothing"
    return Money(amount_minor, currency).format()


def _exception(
    category: ExceptionCategory,
    detail: str,
    *,
    movement: LedgerMovement | None = None,
    row: SettlementRow | None = None,
    bank: BankPayout | None = None,
    party: Party = Party.LEDGER,
    fees: bool = False,
) -> ReconciliationException:
    if movement is not None:
        kind: MovementKind | None = movement.kind
        ref = movement.provider_ref
    elif row is not None:
        kind, ref = row_key(row)
    else:
        assert bank is not None, "an exception is about something"
        kind, ref = MovementKind.PAYOUT, bank.payout_id
    payment_id = None if movement is None else movement.payment_id
    if payment_id is None and row is not None:
        payment_id = row.payment_metadata_value(PAYMENT_ID_METADATA_KEY)
    expected = None if movement is None else movement.fee_minor if fees else movement.gross_minor
    reported = None if row is None else row.fee_minor if fees else reported_size_minor(row)
    return ReconciliationException(
        category=category,
        party=party,
        provider_ref=ref,
        kind=kind,
        payment_id=payment_id,
        expected_minor=expected,
        reported_minor=reported,
        expected_currency=None if movement is None else movement.currency,
        reported_currency=None if row is None else row.currency,
        detail=detail,
        balance_transaction_id=None if row is None else row.balance_transaction_id,
        bank_minor=None if bank is None else bank.amount_minor,
        bank_currency=None if bank is None else bank.currency,
        row=row if category is ExceptionCategory.MISSING_IN_LEDGER else None,
    )


def _what(kind: MovementKind | None, ref: str) -> str:
    return f"{kind or 'unknown category'} {ref}"


# --- duplicates -----------------------------------------------------------------------


def _primary_rows(
    rows: Sequence[SettlementRow], window: ReconciliationWindow
) -> tuple[dict[Key, SettlementRow], list[SettlementRow], list[ReconciliationException]]:
    """The first row per balance transaction and per key; later ones are duplicates."""
    by_key: dict[Key, SettlementRow] = {}
    uncategorised: list[SettlementRow] = []
    by_bt_id: dict[str, SettlementRow] = {}
    found: list[ReconciliationException] = []
    ordered = sorted(
        enumerate(rows),
        key=lambda pair: (pair[1].created_at, pair[1].balance_transaction_id, pair[0]),
    )
    for _, row in ordered:
        key = row_key(row)
        first = by_bt_id.get(row.balance_transaction_id) or (
            by_key.get(key) if key[0] is not None else None
        )
        if first is not None:
            if window.holds(row.created_at):
                detail = (
                    f"{_what(*key)} is reported again by {row.balance_transaction_id} "
                    f"({row.source or 'row'}); first by {first.balance_transaction_id}"
                )
                found.append(_exception(ExceptionCategory.DUPLICATE, detail, row=row))
            continue
        by_bt_id[row.balance_transaction_id] = row
        if key[0] is None:
            uncategorised.append(row)
        else:
            by_key[key] = row
    return by_key, uncategorised, found


def _primary_movements(
    movements: Sequence[LedgerMovement], window: ReconciliationWindow
) -> tuple[list[LedgerMovement], list[ReconciliationException]]:
    def order(pair: tuple[int, LedgerMovement]) -> tuple[datetime, str, str, str, int, int]:
        m = pair[1]
        return (m.at, m.provider_ref, m.kind.value, m.currency, m.gross_minor, pair[0])

    ordered = sorted(enumerate(movements), key=order)
    seen: set[Key] = set()
    primary: list[LedgerMovement] = []
    found: list[ReconciliationException] = []
    for _, movement in ordered:
        if movement.key in seen:
            if window.holds(movement.at):
                detail = f"the ledger books {_what(*movement.key)} twice"
                found.append(_exception(ExceptionCategory.DUPLICATE, detail, movement=movement))
            continue
        seen.add(movement.key)
        primary.append(movement)
    return primary, found


def _primary_bank(
    payouts: Sequence[BankPayout], window: ReconciliationWindow
) -> tuple[dict[str, BankPayout], list[ReconciliationException]]:
    ordered = sorted(
        enumerate(payouts),
        key=lambda pair: (pair[1].arrived_at, pair[1].currency, pair[1].amount_minor, pair[0]),
    )
    by_id: dict[str, BankPayout] = {}
    found: list[ReconciliationException] = []
    for _, payout in ordered:
        if payout.payout_id in by_id:
            if window.holds(payout.arrived_at):
                detail = f"payout {payout.payout_id} landed at the bank twice"
                found.append(
                    _exception(ExceptionCategory.DUPLICATE, detail, bank=payout, party=Party.BANK)
                )
            continue
        by_id[payout.payout_id] = payout
    return by_id, found


# --- comparing one pair ---------------------------------------------------------------


def _compare(
    movement: LedgerMovement, row: SettlementRow, bank: BankPayout | None, tolerances: Tolerances
) -> list[ReconciliationException]:
    """Ledger against report; when the bank agrees with the ledger, the detail says so."""
    what = _what(*movement.key)
    if movement.currency != row.currency:
        agrees = bank is not None and bank.currency == movement.currency
        detail = f"{what}: the ledger says {movement.currency}, the report {row.currency}"
        detail += ", the bank as the ledger" if agrees else ""
        return [
            _exception(
                ExceptionCategory.CURRENCY_MISMATCH, detail, movement=movement, row=row, bank=bank
            )
        ]
    found: list[ReconciliationException] = []
    reported = reported_size_minor(row)
    if abs(reported - movement.gross_minor) > tolerances.amount_tolerance_minor:
        detail = (
            f"{what}: the ledger says {_money(movement.gross_minor, movement.currency)}, "
            f"the report {_money(reported, row.currency)}"
        )
        if bank is not None and bank.amount_minor == movement.gross_minor:
            detail += ", the bank as the ledger"
        found.append(
            _exception(
                ExceptionCategory.AMOUNT_MISMATCH, detail, movement=movement, row=row, bank=bank
            )
        )
    fee = movement.fee_minor
    if fee is not None and abs(row.fee_minor - fee) > tolerances.fee_tolerance_minor:
        detail = (
            f"{what}: the ledger books a fee of {_money(fee, movement.currency)}, "
            f"the report {_money(row.fee_minor, row.currency)}"
        )
        found.append(
            _exception(
                ExceptionCategory.FEE_MISMATCH, detail, movement=movement, row=row, fees=True
            )
        )
    return found


def _compare_bank(
    movement: LedgerMovement, row: SettlementRow, bank: BankPayout, tolerances: Tolerances
) -> list[ReconciliationException]:
    """Report against bank, unless the bank agrees with the ledger (then the report
    is the odd one, and ``_compare`` has already said so)."""
    what = _what(*movement.key)
    if bank.currency != row.currency:
        if bank.currency == movement.currency:
            return []
        detail = f"{what}: the report says {row.currency}, the bank received {bank.currency}"
        return [
            _exception(
                ExceptionCategory.CURRENCY_MISMATCH,
                detail,
                movement=movement,
                row=row,
                bank=bank,
                party=Party.BANK,
            )
        ]
    reported = reported_size_minor(row)
    tolerance = tolerances.amount_tolerance_minor
    if abs(bank.amount_minor - reported) <= tolerance:
        return []
    if movement.currency == bank.currency and abs(movement.gross_minor - bank.amount_minor) <= (
        tolerance
    ):
        return []
    detail = (
        f"{what}: the report says {_money(reported, row.currency)} was paid out, "
        f"the bank received {_money(bank.amount_minor, bank.currency)}"
    )
    return [
        _exception(
            ExceptionCategory.AMOUNT_MISMATCH,
            detail,
            movement=movement,
            row=row,
            bank=bank,
            party=Party.BANK,
        )
    ]


def _near(movement: LedgerMovement, row: SettlementRow, tolerances: Tolerances) -> bool:
    """Close enough in time to be one movement: the row at most ``lateness_s`` after
    the booking, or before it by up to ``lateness_s + booking_lag_s`` (learned late)."""
    lag = movement.at - row.created_at
    lateness = timedelta(seconds=tolerances.lateness_s)
    return -lateness <= lag <= lateness + timedelta(seconds=tolerances.booking_lag_s)


# --- one run --------------------------------------------------------------------------


class _Run:
    """The accumulating outputs of one ``reconcile`` call; never outlives it."""

    __slots__ = (
        "bank_by_id", "exceptions", "in_transit", "matched", "owed", "paired_late", "reversed",
        "tol", "window",
    )  # fmt: skip

    def __init__(
        self,
        window: ReconciliationWindow,
        tolerances: Tolerances,
        bank_by_id: dict[str, BankPayout],
        reversed_payouts: set[str],
        owed: dict[Key, SettlementRow],
    ) -> None:
        self.window = window
        self.tol = tolerances
        self.bank_by_id = bank_by_id
        self.reversed = reversed_payouts
        self.owed = owed
        self.matched: list[Match] = []
        self.exceptions: list[ReconciliationException] = []
        self.in_transit: list[str] = []
        self.paired_late: list[str] = []

    def movement(self, movement: LedgerMovement, row: SettlementRow | None) -> None:
        window = self.window
        owed = self.owed.get(movement.key)
        if owed is not None and window.holds(movement.at):
            # Found missing by the run of its row's window, booked since: one movement.
            self.paired_late.append(owed.balance_transaction_id)
            self._pair(movement, owed)
            if (
                row is not None
                and row.balance_transaction_id != owed.balance_transaction_id
                and window.holds(row.created_at)
            ):
                detail = (
                    f"{_what(*movement.key)} is reported again by {row.balance_transaction_id} "
                    f"({row.source or 'row'}); first by {owed.balance_transaction_id}"
                )
                self.exceptions.append(_exception(ExceptionCategory.DUPLICATE, detail, row=row))
            return
        if (
            owed is not None
            and row is not None
            and (row.balance_transaction_id == owed.balance_transaction_id)
        ):
            return  # an owed row read again: its movement's run pairs it
        if not window.holds(movement.at):
            # Its own run compares the pair; this one speaks only of a row in this
            # window that the ledger booked far from it.
            if (
                row is not None
                and window.holds(row.created_at)
                and not _near(movement, row, self.tol)
            ):
                self._outside(movement, row, "booked by the ledger outside this window")
            return
        if row is None:
            self._missing_at_provider(movement)
        elif not _near(movement, row, self.tol):
            # The one rule both branches use: the out-of-scope one cannot know the
            # movement's window, so a window's reach never makes a pair.
            self._outside(movement, row, "reported outside this window")
        else:
            self._pair(movement, row)

    def _outside(self, movement: LedgerMovement, row: SettlementRow, why: str) -> None:
        detail = (
            f"{_what(*movement.key)} {why}: booked at {movement.at.isoformat()}, "
            f"reported at {row.created_at.isoformat()}"
        )
        self.exceptions.append(
            _exception(ExceptionCategory.OUTSIDE_WINDOW, detail, movement=movement, row=row)
        )

    def _missing_at_provider(self, movement: LedgerMovement) -> None:
        bank = self.bank_by_id.get(movement.provider_ref)
        if movement.kind is not MovementKind.PAYOUT:
            bank = None
        detail = f"{_what(*movement.key)} is in the ledger, not in the report"
        detail += "; the bank received it" if bank is not None else ""
        self.exceptions.append(
            _exception(ExceptionCategory.MISSING_AT_PROVIDER, detail, movement=movement, bank=bank)
        )

    def _pair(self, movement: LedgerMovement, row: SettlementRow) -> None:
        payout = movement.kind is MovementKind.PAYOUT
        bank = self.bank_by_id.get(movement.provider_ref) if payout else None
        found = _compare(movement, row, bank, self.tol)
        if bank is not None:
            found += _compare_bank(movement, row, bank, self.tol)
        elif payout and movement.provider_ref not in self.reversed:
            due_at = row.created_at + timedelta(seconds=self.tol.payout_arrival_s)
            if due_at <= self.window.end_at:
                detail = f"payout {movement.provider_ref} was reported paid, never landed"
                found.append(
                    _exception(
                        ExceptionCategory.MISSING_AT_BANK,
                        detail,
                        movement=movement,
                        row=row,
                        party=Party.BANK,
                    )
                )
            else:
                self.in_transit.append(movement.provider_ref)
        self.exceptions.extend(found)
        if not found:
            self.matched.append(Match(movement, row, bank))

    def missing_in_ledger(self, row: SettlementRow) -> None:
        kind, ref = row_key(row)
        what = _what(kind, ref) if kind is not None else f"{row.reporting_category} {ref}"
        detail = f"{what} is in the report ({row.source or 'row'}), not in the ledger"
        bank = self.bank_by_id.get(ref) if kind is MovementKind.PAYOUT else None
        if kind is MovementKind.PAYOUT:
            detail += "; the bank received it" if bank is not None else "; nor did it land"
        self.exceptions.append(
            _exception(ExceptionCategory.MISSING_IN_LEDGER, detail, row=row, bank=bank)
        )

    def unknown_bank_payout(self, bank: BankPayout) -> None:
        detail = f"payout {bank.payout_id} landed at the bank; neither reported nor booked"
        self.exceptions.append(
            _exception(ExceptionCategory.MISSING_IN_LEDGER, detail, bank=bank, party=Party.BANK)
        )


# --- the entry point ------------------------------------------------------------------


def _check_sizes(**inputs: Sequence[object]) -> None:
    for name, items in inputs.items():
        if len(items) > INPUTS_MAX:
            raise InvalidRequest(
                "reconciliation_too_large", f"at most {INPUTS_MAX} {name} per run", name
            )


def reconcile(
    movements: Sequence[LedgerMovement],
    rows: Sequence[SettlementRow],
    bank_payouts: Sequence[BankPayout],
    window: ReconciliationWindow,
    tolerances: Tolerances | None = None,
    owed: Sequence[SettlementRow] = (),
) -> ReconciliationResult:
    """Match the ledger against the report (and payouts against the bank), pairing
    ``owed`` rows with their late bookings; see the module docstring for the rules.
    Pure and deterministic."""
    _check_sizes(movements=movements, rows=rows, bank_payouts=bank_payouts, owed=owed)
    rows_by_key, uncategorised, row_duplicates = _primary_rows(rows, window)
    primary, movement_duplicates = _primary_movements(movements, window)
    bank_by_id, bank_duplicates = _primary_bank(bank_payouts, window)
    reversed_payouts = {ref for kind, ref in rows_by_key if kind is MovementKind.PAYOUT_REVERSAL}
    owed_by_key = {
        row_key(row): row
        for row in sorted(owed, key=lambda row: (row.created_at, row.balance_transaction_id))
        if row_kind(row) is not None
    }
    run = _Run(window, tolerances or Tolerances(), bank_by_id, reversed_payouts, owed_by_key)
    run.exceptions += row_duplicates + movement_duplicates + bank_duplicates
    for movement in primary:
        run.movement(movement, rows_by_key.get(movement.key))
    booked = {movement.key for movement in primary}
    for key, row in rows_by_key.items():
        owed_row = owed_by_key.get(key)
        if owed_row is not None and owed_row.balance_transaction_id == row.balance_transaction_id:
            continue  # found missing already, still open: nothing new to say
        if key not in booked and window.holds(row.created_at):
            run.missing_in_ledger(row)
    for row in uncategorised:
        if window.holds(row.created_at):
            run.missing_in_ledger(row)
    known = {ref for kind, ref in (*rows_by_key, *booked) if kind is MovementKind.PAYOUT}
    for bank in bank_by_id.values():
        if bank.payout_id not in known and window.holds(bank.arrived_at):
            run.unknown_bank_payout(bank)
    matched = sorted(
        run.matched,
        key=lambda m: (m.movement.at, m.movement.provider_ref, m.movement.kind.value),
    )
    exceptions = sorted(run.exceptions, key=ReconciliationException.sort_key)
    return ReconciliationResult(
        tuple(matched), tuple(exceptions), tuple(sorted(run.in_transit)),
        tuple(sorted(run.paired_late)),
    )  # fmt: skip
