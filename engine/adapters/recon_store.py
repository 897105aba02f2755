"""The reconciler's rows: what the ledger says the provider did, and the recon tables.

Reads (one connection, inside the caller's unit of work):

- ``movements``: what the engine booked at the provider, as ``LedgerMovement``s.
  A charge, a dispute and a won dispute are their journals (``capture``,
  ``dispute_withdrawal``, ``dispute_reinstatement``): the size is what the
  journal moved on ``psp_clearing`` (debits for money in, credits for money
  out), the fee what it debited to ``provider_fees`` less what it credited
  there, plus a ``provider_fee`` journal booked for a charge when its fee was
  learned later (a movement with no fee booked yet compares no fee), the
  reference the payment's ``provider_payment_id``, the time the journal's (a
  fee's own pair of entries on ``psp_clearing`` is taken off the size). A
  refund is its ``refunds`` row once succeeded (reference ``provider_refund_id``,
  fee 0: the engine books none and expects none, time of the last update). A
  payout is its ``payouts`` row once the provider took it (in transit, paid or
  failed; timed when the engine learned the provider took it, ``taken_at``, which
  a payout resent after a timeout reaches minutes after its creation), and a
  failed one is also a payout reversal (time of the failure).
- ``bank_payouts``: payouts the engine knows landed (``paid`` with ``arrived_at``).

Each is read for a span of time and for the provider references a report names,
so a row reported long after its movement still finds it. References are looked
up in batches of ``REF_BATCH_MAX``.

Writes: a run, the settlement rows it matched (a balance transaction once,
ever) and its exceptions (one per ``dedupe_key``, ever); both inserts ignore a
row that is already there, so two runs racing over one report cannot fail each
other. An exception is changed only to resolve it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from engine.adapters import schema as t
from engine.adapters.direct import Direct
from engine.domain.ledger import PROVIDER_FEES, PSP_CLEARING
from engine.domain.reconciliation import BankPayout, LedgerMovement, MovementKind

Row = dict[str, Any]
REF_BATCH_MAX = 500
LIST_LIMIT_MAX = 1_000
K = MovementKind

# Journal kinds that are money moved at the provider for a payment.
JOURNAL_KINDS: dict[str, MovementKind] = {
    "capture": K.CHARGE,
    "dispute_withdrawal": K.DISPUTE,
    "dispute_reinstatement": K.DISPUTE_REVERSAL,
}
PAYOUT_TAKEN = ("in_transit", "paid", "failed")
LATE_FEE_KIND = "provider_fee"  # a capture's fee the engine learned after the capture
_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}

Condition = sa.ColumnElement[bool]


def _batches(refs: Collection[str]) -> Iterable[list[str]]:
    ordered = sorted(refs)
    for start in range(0, len(ordered), REF_BATCH_MAX):
        yield ordered[start : start + REF_BATCH_MAX]


def _span(column: sa.ColumnElement[Any], start_at: datetime, end_at: datetime) -> Condition:
    return sa.and_(column >= start_at, column < end_at)


# --- movements ------------------------------------------------------------------------


def _journal_movements(c: Direct, condition: Condition) -> dict[tuple[str, str], LedgerMovement]:
    j, e, p = t.ledger_journals.c, t.ledger_entries.c, t.payments.c

    def total(account: str, side: str) -> sa.ColumnElement[Any]:
        matches = sa.and_(e.account == account, e.side == side)
        return sa.func.sum(sa.case((matches, e.amount_minor), else_=0))

    query = (
        sa.select(
            j.id,
            j.kind,
            j.payment_id,
            j.created_at,
            p.provider_payment_id,
            p.currency,
            total(PSP_CLEARING, "D"),
            total(PSP_CLEARING, "C"),
            total(PROVIDER_FEES, "D"),
            total(PROVIDER_FEES, "C"),
        )
        .join(t.payments, p.id == j.payment_id)
        .join(t.ledger_entries, e.journal_id == j.id)
        .where(j.kind.in_(list(JOURNAL_KINDS)), p.provider_payment_id.is_not(None), condition)
        .group_by(j.id, j.kind, j.payment_id, j.created_at, p.provider_payment_id, p.currency)
    )
    found: dict[tuple[str, str], LedgerMovement] = {}
    for journal_id, kind, payment_id, at, ref, currency, *totals in c.execute(query):
        psp_debit, psp_credit, fee_debit, fee_credit = (int(total) for total in totals)
        movement_kind = JOURNAL_KINDS[kind]
        # A fee moves psp_clearing too (against provider_fees): it is not the movement.
        out = movement_kind is K.DISPUTE
        gross = psp_credit - fee_debit if out else psp_debit - fee_credit
        fee = fee_debit - fee_credit
        found[("journal", journal_id)] = LedgerMovement(
            ref, payment_id, movement_kind, currency, gross, fee or None, at
        )
    return found


def _refund_movements(c: Direct, condition: Condition) -> dict[tuple[str, str], LedgerMovement]:
    r = t.refunds.c
    query = sa.select(
        r.id, r.payment_id, r.provider_refund_id, r.currency, r.amount_minor, r.updated_at
    ).where(r.status == "succeeded", condition)
    found: dict[tuple[str, str], LedgerMovement] = {}
    for refund_id, payment_id, ref, currency, amount, at in c.execute(query):
        # Without the provider's id nothing can match it: reported as the engine's own.
        found[("refund", refund_id)] = LedgerMovement(
            ref or refund_id, payment_id, K.REFUND, currency, int(amount), 0, at
        )
    return found


def _payout_movements(c: Direct, condition: Condition) -> dict[tuple[str, str], LedgerMovement]:
    po = t.payouts.c
    query = sa.select(
        po.id, po.provider_payout_id, po.currency, po.amount_minor, po.status,
        _payout_taken_at(), po.updated_at,
    ).where(po.provider_payout_id.is_not(None), po.status.in_(PAYOUT_TAKEN), condition)  # fmt: skip
    found: dict[tuple[str, str], LedgerMovement] = {}
    for payout_id, ref, currency, amount, status, taken_at, updated_at in c.execute(query):
        found[("payout", payout_id)] = LedgerMovement(
            ref, None, K.PAYOUT, currency, int(amount), None, taken_at
        )
        if status == "failed":
            found[("payout_reversal", payout_id)] = LedgerMovement(
                ref, None, K.PAYOUT_REVERSAL, currency, int(amount), None, updated_at
            )
    return found


def _payout_taken_at() -> sa.ColumnElement[Any]:
    """When the engine learned the provider took a payout (its creation for payouts
    from before that was kept)."""
    po = t.payouts.c
    return sa.func.coalesce(po.taken_at, po.created_at).label("taken_at")


Reader = Callable[[Direct, Condition], dict[tuple[str, str], LedgerMovement]]


def _readers(start_at: datetime, end_at: datetime) -> list[tuple[Reader, Condition, Any, set[K]]]:
    """(reader, its span condition, the column a reference is, the kinds it serves)."""
    j, r, po, p = t.ledger_journals.c, t.refunds.c, t.payouts.c, t.payments.c
    taken_at = sa.func.coalesce(po.taken_at, po.created_at)
    payout_span = sa.or_(_span(taken_at, start_at, end_at),
                         _span(po.updated_at, start_at, end_at))  # fmt: skip
    return [
        (_journal_movements, _span(j.created_at, start_at, end_at), p.provider_payment_id,
         {K.CHARGE, K.DISPUTE, K.DISPUTE_REVERSAL}),
        (_refund_movements, _span(r.updated_at, start_at, end_at), r.provider_refund_id,
         {K.REFUND}),
        (_payout_movements, payout_span, po.provider_payout_id,
         {K.PAYOUT, K.PAYOUT_REVERSAL}),
    ]  # fmt: skip


def _fees_learned_later(c: Direct, payment_ids: Collection[str]) -> dict[str, int]:
    """Fees booked after their capture (``provider_fee`` journals), per payment."""
    j, e = t.ledger_journals.c, t.ledger_entries.c
    signed = sa.case((e.side == "D", e.amount_minor), else_=-e.amount_minor)
    fees: dict[str, int] = {}
    for batch in _batches(payment_ids):
        query = (
            sa.select(j.payment_id, sa.func.sum(signed))
            .join(t.ledger_entries, e.journal_id == j.id)
            .where(j.kind == LATE_FEE_KIND, e.account == PROVIDER_FEES, j.payment_id.in_(batch))
            .group_by(j.payment_id)
        )
        fees.update((str(payment_id), int(total)) for payment_id, total in c.execute(query))
    return fees


def _with_later_fees(c: Direct, found: dict[tuple[str, str], LedgerMovement]) -> None:
    charges = {key: m for key, m in found.items() if m.kind is K.CHARGE and m.payment_id}
    later = _fees_learned_later(c, {str(m.payment_id) for m in charges.values()})
    for key, movement in charges.items():
        extra = later.get(str(movement.payment_id), 0)
        if extra:
            found[key] = replace(movement, fee_minor=(movement.fee_minor or 0) + extra)


def movements(
    c: Direct,
    start_at: datetime,
    end_at: datetime,
    refs: Mapping[MovementKind, Collection[str]],
) -> list[LedgerMovement]:
    """Movements booked in ``[start_at, end_at)`` and those with a reference in ``refs``;
    each engine row once, in a deterministic order."""
    found: dict[tuple[str, str], LedgerMovement] = {}
    for reader, span, ref_column, kinds in _readers(start_at, end_at):
        found.update(reader(c, span))
        named = set().union(*(refs.get(kind, ()) for kind in kinds))
        for batch in _batches(named):
            found.update(reader(c, ref_column.in_(batch)))
    _with_later_fees(c, found)
    return [found[key] for key in sorted(found)]


def bank_payouts(
    c: Direct, start_at: datetime, end_at: datetime, refs: Collection[str]
) -> list[BankPayout]:
    """Payouts that landed in ``[start_at, end_at)`` or carry one of ``refs``."""
    po = t.payouts.c
    base = sa.select(po.id, po.provider_payout_id, po.currency, po.amount_minor, po.arrived_at)
    base = base.where(
        po.status == "paid", po.arrived_at.is_not(None), po.provider_payout_id.is_not(None)
    )
    rows = {row[0]: row for row in c.execute(base.where(_span(po.arrived_at, start_at, end_at)))}
    for batch in _batches(refs):
        rows.update(
            (row[0], row) for row in c.execute(base.where(po.provider_payout_id.in_(batch)))
        )
    return [
        BankPayout(ref, currency, int(amount), arrived_at)
        for _, ref, currency, amount, arrived_at in (rows[key] for key in sorted(rows))
    ]


def ledger_currency(c: Direct, kind: str | None, provider_ref: str) -> str | None:
    """The currency the engine booked a movement in, found by its provider reference."""
    if kind in (K.REFUND, K.REFUND.value):
        r = t.refunds.c
        query = sa.select(r.currency).where(r.provider_refund_id == provider_ref)
    elif kind in (K.PAYOUT.value, K.PAYOUT_REVERSAL.value):
        po = t.payouts.c
        query = sa.select(po.currency).where(po.provider_payout_id == provider_ref)
    else:
        p = t.payments.c
        query = sa.select(p.currency).where(p.provider_payment_id == provider_ref)
    found = c.execute(query.limit(1)).scalar()
    return None if found is None else str(found)


# --- runs, matched rows, exceptions -----------------------------------------------------


def _insert_ignoring_existing(c: Direct, table: sa.Table, rows: Sequence[Row]) -> None:
    if rows:
        insert: Any = _INSERTS[c.dialect.name](table)
        c.execute(insert.on_conflict_do_nothing(), list(rows))


def insert_run(c: Direct, row: Row) -> None:
    c.execute(t.recon_runs.insert(), row)


def insert_settlement_rows(c: Direct, rows: Sequence[Row]) -> None:
    _insert_ignoring_existing(c, t.settlement_rows, rows)


def insert_exceptions(c: Direct, rows: Sequence[Row]) -> None:
    _insert_ignoring_existing(c, t.recon_exceptions, rows)


def existing_dedupe_keys(c: Direct, keys: Collection[str]) -> set[str]:
    x = t.recon_exceptions.c
    found: set[str] = set()
    for batch in _batches(keys):
        found.update(c.execute(sa.select(x.dedupe_key).where(x.dedupe_key.in_(batch))).scalars())
    return found


def last_window_end(c: Direct, source: str) -> datetime | None:
    """Where the last run from ``source`` stopped: the next one starts there."""
    r = t.recon_runs.c
    found: datetime | None = c.execute(
        sa.select(sa.func.max(r.window_end_at)).where(r.source == source)
    ).scalar()
    return found


def exception(c: Direct, exception_id: str, *, lock: bool = False) -> Row | None:
    query = sa.select(t.recon_exceptions).where(t.recon_exceptions.c.id == exception_id)
    if lock and c.dialect.name == "postgresql":
        query = query.with_for_update()
    row = c.execute(query).mappings().first()
    return None if row is None else dict(row)


def resolve_exception(c: Direct, exception_id: str, **values: Any) -> None:
    x = t.recon_exceptions
    statement = x.update().where(x.c.id == exception_id, x.c.status == "open").values(**values)
    assert c.execute(statement).rowcount == 1, f"exception {exception_id} was not open"


def exceptions(c: Direct, status: str | None, category: str | None, limit: int) -> list[Row]:
    """Oldest first; ``status``/``category`` None: any."""
    assert 0 < limit <= LIST_LIMIT_MAX, limit
    x = t.recon_exceptions.c
    query = sa.select(t.recon_exceptions)
    if status is not None:
        query = query.where(x.status == status)
    if category is not None:
        query = query.where(x.category == category)
    query = query.order_by(x.created_at, x.category, x.id).limit(limit)
    return [dict(row) for row in c.execute(query).mappings()]


def runs(c: Direct, limit: int) -> list[Row]:
    assert 0 < limit <= LIST_LIMIT_MAX, limit
    r = t.recon_runs.c
    query = sa.select(t.recon_runs).order_by(r.created_at, r.id).limit(limit)
    return [dict(row) for row in c.execute(query).mappings()]


def owed_rows(c: Direct, keys: Collection[tuple[str, str]], paired_reason: str) -> list[Row]:
    """The rows (``reported_row``) of ``missing_in_ledger`` exceptions about one of
    ``keys`` (kind, provider reference), open or closed by a pairing (their reason
    starts with ``paired_reason``: a window run again pairs them again): what earlier
    runs found the ledger lacked."""
    x = t.recon_exceptions.c
    wanted = set(keys)
    found: list[Row] = []
    paired = x.resolution_reason.startswith(paired_reason, autoescape=True)
    owed = sa.or_(x.status == "open", paired)
    for batch in _batches({ref for _, ref in wanted}):
        query = sa.select(x.kind, x.provider_ref, x.reported_row).where(
            x.provider_ref.in_(batch), owed, x.category == "missing_in_ledger",
            x.party == "ledger", x.reported_row.is_not(None),
        ).order_by(x.id)  # fmt: skip
        found.extend(
            row for kind, ref, row in c.execute(query) if (kind, ref) in wanted and row is not None
        )
    return found


def open_exceptions_of_rows(
    c: Direct, balance_transaction_ids: Collection[str], categories: Collection[str]
) -> list[str]:
    """Ids of the open exceptions of ``categories`` raised about these report rows."""
    x = t.recon_exceptions.c
    found: list[str] = []
    for batch in _batches(balance_transaction_ids):
        query = sa.select(x.id).where(
            x.balance_transaction_id.in_(batch), x.status == "open",
            x.category.in_(sorted(categories)),
        ).order_by(x.id)  # fmt: skip
        found.extend(c.execute(query).scalars())
    return found
