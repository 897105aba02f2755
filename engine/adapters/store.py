"""The SQLAlchemy store: the rows a unit of work reads and writes.

Service steps speak to a ``Store`` opened on one transaction; they never build
SQL themselves. Payment rows are read ``FOR UPDATE`` on PostgreSQL, so steps on
one payment serialize; SQLite serializes every writer with BEGIN IMMEDIATE.

A store is opened on a unit of work's ``Direct`` (``engine.adapters.direct``),
the one path of its statements, on either dialect: SQLAlchemy compiles them, and
the driver runs them (SQLAlchemy's own execution cost several times what SQLite
did). The hot statements are built once, with bind parameters, and rows go in
as execution parameters: building a statement per call (``.values(**row)``) cost
more than running it. The others (listings, the workers' polls) are built per
call and run as ad-hoc statements (``Direct.execute``), on the same path. A
unique-index race raises ``RetryStep`` without a savepoint: the step's whole
transaction is rolled back and run again anyway. ``Store.commit`` is the unit's
commit (``Direct.commit``, where the database's fault port is asked).

A step's first reads are declared as data, a read set (``CommandReads``,
``AttemptReads``, ``EventReads``), and ``Store.load`` answers them by name
(``LoadedCommand``, ...): on PostgreSQL in one round trip, on SQLite one by
one. The step uses those answers; any later read goes to the database.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.adapters.direct import FAST_PROCESSORS, Direct, RaceLost, Result
from engine.domain import lifecycles
from engine.domain.ledger import Journal
from engine.domain.lifecycles import KEY_MOVES, OPEN_PAYOUT, AttemptStatus, InboxStatus, KeyStatus
from engine.domain.states import PaymentState

Row = dict[str, Any]
_Read = tuple[sa.Select[Any], Row]  # a prebuilt query and its parameters

FAST_PROCESSORS[t.UTCDateTime] = (t.UTCDateTime.sqlite_bind, t.UTCDateTime.sqlite_result)

# Attempt statuses whose provider call may still have an effect, as stored.
OPEN_ATTEMPT = tuple(status.value for status in lifecycles.OPEN_ATTEMPT)
# Finishing a key is its one move (the guard below: only a key in flight is finished).
assert KeyStatus.COMPLETED in KEY_MOVES[KeyStatus.IN_FLIGHT]


# A unique constraint raced with a concurrent transaction: run the step again.
RetryStep = RaceLost


def _unique_constraints(table: sa.Table) -> frozenset[str]:
    """The names of the table's unique constraints and unique indexes."""
    names = {
        str(c.name)
        for c in table.constraints
        if isinstance(c, sa.UniqueConstraint | sa.PrimaryKeyConstraint)
    }
    names.update(str(index.name) for index in table.indexes if index.unique)
    return frozenset(names)


def _by_id(table: sa.Table) -> sa.Select[Any]:
    return sa.select(table).where(table.c.id == sa.bindparam("b_id"))


_PAYMENT = _by_id(t.payments)
_PAYMENT_LOCKED = _PAYMENT.with_for_update()
_ATTEMPT = _by_id(t.attempts)
# An attempt's payment never changes, so one statement finds and locks it.
_PAYMENT_OF_ATTEMPT = sa.select(t.payments).where(
    t.payments.c.id
    == sa.select(t.attempts.c.payment_id)
    .where(t.attempts.c.id == sa.bindparam("b_attempt_id"))
    .scalar_subquery()
)
_PAYMENT_OF_ATTEMPT_LOCKED = _PAYMENT_OF_ATTEMPT.with_for_update(of=t.payments)
# Executed with the new values as parameters: their keys become the SET clause.
_UPDATE_PAYMENT = t.payments.update().where(
    t.payments.c.id == sa.bindparam("b_id"),
    t.payments.c.history_count == sa.bindparam("b_history_count"),
)
_UPDATE_ATTEMPT = t.attempts.update().where(t.attempts.c.id == sa.bindparam("b_id"))
_UPDATE_REFUND = t.refunds.update().where(t.refunds.c.id == sa.bindparam("b_id"))
_CLAIM_ORDER = t.payments.update().where(t.payments.c.id == sa.bindparam("b_id"))
_IDEMPOTENCY_KEY = sa.select(t.idempotency_keys).where(
    t.idempotency_keys.c.merchant_id == sa.bindparam("b_merchant_id"),
    t.idempotency_keys.c.scope == sa.bindparam("b_scope"),
    t.idempotency_keys.c.key == sa.bindparam("b_key"),
)
_FINISH_KEY = t.idempotency_keys.update().where(
    t.idempotency_keys.c.id == sa.bindparam("b_id"),
    # A saved response never changes: only a key still in flight is finished.
    t.idempotency_keys.c.status == KeyStatus.IN_FLIGHT.value,
)
# The payment holding the order a payment is for: readable before that payment is.
_ORDER_HOLDER_OF_PAYMENT = sa.select(t.payments.c.id, t.payments.c.state).where(
    t.payments.c.merchant_id == sa.bindparam("b_merchant_id"),
    t.payments.c.active_order_id
    == sa.select(t.payments.c.order_id)
    .where(t.payments.c.id == sa.bindparam("b_id"))
    .scalar_subquery(),
)
_INSERT = {
    table: table.insert()
    for table in (
        t.payments, t.payment_history, t.outbox, t.attempts, t.refunds, t.idempotency_keys,
        t.provider_events, t.ledger_entries, t.ledger_journals, t.webhook_inbox,
        t.payment_lines, t.payouts,
    )
}  # fmt: skip
_UNIQUE = {table: _unique_constraints(table) for table in _INSERT}
_PAYMENT_BY_PROVIDER_ID = sa.select(t.payments).where(
    t.payments.c.provider_payment_id == sa.bindparam("b_provider_payment_id")
)
_PAYMENT_BY_PROVIDER_ID_LOCKED = _PAYMENT_BY_PROVIDER_ID.with_for_update()
_HISTORY = (
    sa.select(t.payment_history)
    .where(t.payment_history.c.payment_id == sa.bindparam("b_payment_id"))
    .order_by(t.payment_history.c.seq)
)
_REFUND = _by_id(t.refunds)
_REFUNDS_OF = (
    sa.select(t.refunds)
    .where(t.refunds.c.payment_id == sa.bindparam("b_payment_id"))
    .order_by(t.refunds.c.created_at, t.refunds.c.id)
)
_KEY_RESPONSE = sa.select(
    t.idempotency_keys.c.response_code, t.idempotency_keys.c.response_body
).where(
    t.idempotency_keys.c.id == sa.bindparam("b_id"),
    t.idempotency_keys.c.status == KeyStatus.COMPLETED.value,
)
_PROVIDER_EVENT = sa.select(t.provider_events).where(
    t.provider_events.c.provider_event_id == sa.bindparam("b_provider_event_id")
)
_LINES_OF = (
    sa.select(t.payment_lines)
    .where(t.payment_lines.c.payment_id == sa.bindparam("b_payment_id"))
    .order_by(t.payment_lines.c.line_no)
)
_UPDATE_LINE = t.payment_lines.update().where(
    t.payment_lines.c.payment_id == sa.bindparam("b_payment_id"),
    t.payment_lines.c.line_no == sa.bindparam("b_line_no"),
)
_FEE_PLAN = sa.select(t.fee_plans).where(t.fee_plans.c.seller_id == sa.bindparam("b_seller_id"))
_WALLET_KEY = ("owner_id", "currency")


def _wallet_upsert(insert: Any) -> sa.Executable:
    """Add to a wallet's balances, creating it at zero first: one statement."""
    statement = insert(t.wallets)
    excluded = statement.excluded
    w = t.wallets.c
    upsert: sa.Executable = statement.on_conflict_do_update(
        index_elements=list(_WALLET_KEY),
        set_={
            "pending_minor": w.pending_minor + excluded.pending_minor,
            "available_minor": w.available_minor + excluded.available_minor,
            "updated_at": excluded.updated_at,
        },
    )
    return upsert


_WALLET_UPSERT = {
    "sqlite": _wallet_upsert(sqlite_insert),
    "postgresql": _wallet_upsert(postgresql_insert),
}
_WALLET = sa.select(t.wallets).where(
    t.wallets.c.owner_id == sa.bindparam("b_owner_id"),
    t.wallets.c.currency == sa.bindparam("b_currency"),
)
_WALLET_LOCKED = _WALLET.with_for_update()
_PAYOUT = _by_id(t.payouts)
_PAYOUT_LOCKED = _PAYOUT.with_for_update()
_UPDATE_PAYOUT = t.payouts.update().where(t.payouts.c.id == sa.bindparam("b_id"))
_PAYOUT_BY_PROVIDER_ID = sa.select(t.payouts).where(
    t.payouts.c.provider_payout_id == sa.bindparam("b_provider_payout_id")
)
_INBOX_BY_EVENT = sa.select(t.webhook_inbox).where(
    t.webhook_inbox.c.provider_event_id == sa.bindparam("b_provider_event_id")
)
_INBOX_BY_EVENT_LOCKED = _INBOX_BY_EVENT.with_for_update()
_INBOX_ROW = _by_id(t.webhook_inbox)
_INBOX_ROW_LOCKED = _INBOX_ROW.with_for_update()
_UPDATE_INBOX = t.webhook_inbox.update().where(t.webhook_inbox.c.id == sa.bindparam("b_id"))
_ATTEMPTS_OF_SHAPES: dict[tuple[int, int], sa.Select[Any]] = {}


def _attempts_of(kinds_count: int, statuses_count: int) -> sa.Select[Any]:
    """Open attempts of some kinds: one statement per list length, bound one by one."""
    shape = (kinds_count, statuses_count)
    query = _ATTEMPTS_OF_SHAPES.get(shape)
    if query is None:
        a = t.attempts.c
        query = (
            sa.select(t.attempts)
            .where(
                a.payment_id == sa.bindparam("b_payment_id"),
                a.kind.in_([sa.bindparam(f"b_kind_{i}") for i in range(kinds_count)]),
                a.status.in_([sa.bindparam(f"b_status_{i}") for i in range(statuses_count)]),
            )
            .order_by(a.created_at.desc(), a.id.desc())
        )
        _ATTEMPTS_OF_SHAPES[shape] = query
        _PREBUILT.add(id(query))
    return query


# Module-level statements live as long as the process: each is compiled once
# (``Direct``'s prebuilt statements); any other is an ad-hoc one (``Direct.execute``).
_PREBUILT: set[int] = {
    id(statement)
    for statement in (
        _PAYMENT, _PAYMENT_LOCKED, _ATTEMPT, _PAYMENT_OF_ATTEMPT, _PAYMENT_OF_ATTEMPT_LOCKED,
        _PAYMENT_BY_PROVIDER_ID_LOCKED, _UPDATE_PAYMENT, _UPDATE_ATTEMPT,
        _UPDATE_REFUND, _CLAIM_ORDER, _IDEMPOTENCY_KEY, _FINISH_KEY, _ORDER_HOLDER_OF_PAYMENT,
        *_INSERT.values(), _PAYMENT_BY_PROVIDER_ID, _HISTORY, _REFUND, _REFUNDS_OF,
        _KEY_RESPONSE, _PROVIDER_EVENT, _LINES_OF, _UPDATE_LINE, _FEE_PLAN,
        *_WALLET_UPSERT.values(), _WALLET, _WALLET_LOCKED, _PAYOUT, _PAYOUT_LOCKED, _UPDATE_PAYOUT,
        _PAYOUT_BY_PROVIDER_ID, _INBOX_BY_EVENT, _INBOX_BY_EVENT_LOCKED, _INBOX_ROW,
        _INBOX_ROW_LOCKED, _UPDATE_INBOX,
    )
}  # fmt: skip


def _recoverable() -> sa.ColumnElement[bool]:
    """Open attempts, and authorizations whose payment still waits for the customer (3DS):
    an abandoned one whose payment moved on (voided, failed) is never asked about again."""
    a = t.attempts.c
    waiting = sa.select(t.payments.c.id).where(
        t.payments.c.state == PaymentState.REQUIRES_ACTION.value
    )
    awaiting = sa.and_(a.status == AttemptStatus.REQUIRES_ACTION.value, a.payment_id.in_(waiting))
    return sa.or_(a.status.in_(OPEN_ATTEMPT), awaiting)


def _key_read(merchant_id: str, scope: str, key: str) -> tuple[sa.Select[Any], Row]:
    return _IDEMPOTENCY_KEY, {"b_merchant_id": merchant_id, "b_scope": scope, "b_key": key}


def _inbox_read(provider_event_id: str, lock: bool) -> tuple[sa.Select[Any], Row]:
    query = _INBOX_BY_EVENT_LOCKED if lock else _INBOX_BY_EVENT
    return query, {"b_provider_event_id": provider_event_id}


def _provider_event_read(provider_event_id: str) -> tuple[sa.Select[Any], Row]:
    return _PROVIDER_EVENT, {"b_provider_event_id": provider_event_id}


def _order_holder_read(merchant_id: str, payment_id: str) -> tuple[sa.Select[Any], Row]:
    return _ORDER_HOLDER_OF_PAYMENT, {"b_merchant_id": merchant_id, "b_id": payment_id}


def _attempt_read(attempt_id: str) -> tuple[sa.Select[Any], Row]:
    return _ATTEMPT, {"b_id": attempt_id}


_ATTEMPTS_BINDS: dict[tuple[tuple[str, ...], tuple[str, ...]], Row] = {}


def _attempts_read(
    payment_id: str, kinds: Sequence[str], statuses: Sequence[str]
) -> tuple[sa.Select[Any], Row]:
    shape = (tuple(kinds), tuple(statuses))
    binds = _ATTEMPTS_BINDS.get(shape)
    if binds is None:
        binds = {f"b_kind_{i}": kind for i, kind in enumerate(kinds)}
        binds.update((f"b_status_{i}", status) for i, status in enumerate(statuses))
        if len(_ATTEMPTS_BINDS) < 256:
            _ATTEMPTS_BINDS[shape] = binds
    return _attempts_of(len(kinds), len(statuses)), {"b_payment_id": payment_id, **binds}


# -- read sets: what a step reads first, declared as data --------------------------------------
@dataclass(frozen=True, slots=True)
class OpenAttempts:
    """Which of a payment's attempts a read set reads: of ``kinds``, in ``statuses``
    (stored strings), newest first."""

    kinds: tuple[str, ...]
    statuses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommandReads:
    """What a write on a payment reads first: its idempotency key, the payment under
    its lock, (``busy``) the payment's attempts that refuse the write and
    (``order_holder``) the payment holding its order. A key found (the write is a
    replay, or refused) needs nothing more: the other answers are then empty."""

    merchant_id: str
    scope: str
    key: str
    payment_id: str
    busy: OpenAttempts | None = None
    order_holder: bool = False


@dataclass(frozen=True, slots=True)
class LoadedCommand:
    key: Row | None
    payment: Row | None  # None too when the key was found
    busy: list[Row]  # empty when not asked for (or the key was found)
    order_holder: Row | None  # None when not asked for (or the key was found)


@dataclass(frozen=True, slots=True)
class AttemptReads:
    """An attempt's payment under its lock, then the attempt (an attempt's payment
    never changes, so one statement finds and locks it)."""

    attempt_id: str


@dataclass(frozen=True, slots=True)
class LoadedAttempt:
    payment: Row | None
    attempt: Row | None


@dataclass(frozen=True, slots=True)
class EventReads:
    """What taking a provider event reads first: the payment it names (``payment_id``)
    under its lock and (``attempts``) its attempts the event may answer, then
    (``inbox``) its inbox row and whether the event was taken. The lock comes first,
    so a copy of the event taken meanwhile by another transaction on the payment is
    seen as taken once that one commits. An inbox row found (a delivery kept
    already) needs nothing more: the other answers are then empty."""

    provider_event_id: str
    payment_id: str | None
    inbox: bool = False
    attempts: OpenAttempts | None = None


@dataclass(frozen=True, slots=True)
class LoadedEvent:
    """The answers of ``EventReads``; all but ``inbox`` empty when an inbox row was found."""

    payment: Row | None
    attempts: list[Row]  # empty without a payment, or when not asked for
    inbox: Row | None  # None when not asked for
    taken: Row | None  # the event's ``provider_events`` row, if it was taken


def _first(rows: list[Row]) -> Row | None:
    return rows[0] if rows else None


class StoreCore:
    """How a store reads and writes (prebuilt statements on the driver's connection,
    read sets loaded in one trip, deferred writes), and a payment's rows and first reads.
    The other aggregates' rows are the classes below it; ``Store`` composes them."""

    def __init__(self, unit: Direct):
        self._direct = unit
        self._dialect = unit.dialect.name
        self._lock = self._dialect == "postgresql"

    def commit(self) -> None:
        """The unit's one commit path (the database's fault port is asked there)."""
        self._direct.commit()

    def _execute(self, statement: sa.Executable) -> Result:
        """An ad-hoc statement, after any deferred write (statements run in order)."""
        return self._direct.execute(statement)

    def _rows(self, statement: sa.Executable) -> list[Row]:
        return self._direct.execute(statement).mappings().all()

    @property
    def locks_rows(self) -> bool:
        """Whether rows are locked one by one (else the whole database is, from BEGIN)."""
        return self._lock

    @overload
    def load(self, reads: CommandReads) -> LoadedCommand: ...
    @overload
    def load(self, reads: AttemptReads) -> LoadedAttempt: ...
    @overload
    def load(self, reads: EventReads) -> LoadedEvent: ...
    def load(
        self, reads: CommandReads | AttemptReads | EventReads
    ) -> LoadedCommand | LoadedAttempt | LoadedEvent:
        """A read set's answers, read in its order (the lock first where it says so): in
        one round trip where a trip costs (PostgreSQL, after any deferred write), one by
        one on SQLite. They are what the database said then: nothing is kept for later
        reads, which go to the database."""
        if isinstance(reads, CommandReads):
            return self._load_command(reads)
        if isinstance(reads, AttemptReads):
            payment, attempt = self._direct.all_together(
                [self._payment_of_attempt_read(reads.attempt_id, True),
                 _attempt_read(reads.attempt_id)]
            )  # fmt: skip
            return LoadedAttempt(_first(payment), _first(attempt))
        return self._load_event(reads)

    def _load_command(self, reads: CommandReads) -> LoadedCommand:
        r = reads
        queries = [_key_read(r.merchant_id, r.scope, r.key), self._payment_read(r.payment_id, True)]
        if r.busy is not None:
            queries.append(_attempts_read(r.payment_id, r.busy.kinds, r.busy.statuses))
        if r.order_holder:
            queries.append(_order_holder_read(r.merchant_id, r.payment_id))
        answers = iter(self._answers(queries, stop=0))
        key, payment = _first(next(answers)), _first(next(answers))
        busy = next(answers) if r.busy is not None else []
        holder = _first(next(answers)) if r.order_holder else None
        return LoadedCommand(key, payment, busy, holder)

    def _load_event(self, reads: EventReads) -> LoadedEvent:
        r = reads
        queries = []
        if r.payment_id is not None:
            queries.append(self._payment_read(r.payment_id, True))
            if r.attempts is not None:
                queries.append(_attempts_read(r.payment_id, r.attempts.kinds,
                                              r.attempts.statuses))  # fmt: skip
        stop = len(queries) if r.inbox else None
        if r.inbox:
            queries.append(_inbox_read(r.provider_event_id, False))
        queries.append(_provider_event_read(r.provider_event_id))
        answers = iter(self._answers(queries, stop))
        payment = _first(next(answers)) if r.payment_id is not None else None
        attempts = next(answers) if r.payment_id is not None and r.attempts is not None else []
        inbox = _first(next(answers)) if r.inbox else None
        return LoadedEvent(payment, attempts, inbox, _first(next(answers)))

    def _answers(self, queries: list[_Read], stop: int | None) -> list[list[Row]]:
        """The rows each of ``queries`` finds: in one round trip, in their order, where
        a trip costs (PostgreSQL); one by one on SQLite, whose whole database is locked
        from BEGIN (the order is free there), ``queries[stop]`` first. When
        ``queries[stop]`` finds a row the step needs nothing more: the others' answers
        are empty (on SQLite they are not read)."""
        if stop is None:
            return self._direct.all_together(queries)
        if self._direct.defers:
            answers = self._direct.all_together(queries)
            found = answers[stop]
        else:
            found = self._direct.all(*queries[stop])
            if not found:
                return [found if index == stop else self._direct.all(query, params)
                        for index, (query, params) in enumerate(queries)]  # fmt: skip
        if not found:
            return answers
        return [found if index == stop else [] for index in range(len(queries))]

    def _one(self, query: sa.Select[Any], params: Mapping[str, Any] | None = None) -> Row | None:
        if id(query) in _PREBUILT:
            return self._direct.one(query, params or {})
        return self._direct.execute(query, params).mappings().first()

    def _all(self, query: sa.Select[Any], params: Mapping[str, Any]) -> list[Row]:
        if id(query) in _PREBUILT:
            return self._direct.all(query, params)
        return self._direct.execute(query, params).mappings().all()

    def _write(
        self,
        statement: sa.Executable,
        params: Mapping[str, Any],
        rowcount_expected: int | None = None,
    ) -> None:
        """An INSERT or UPDATE with ``params`` as its values, deferred where it can be."""
        assert id(statement) in _PREBUILT, "hot writes are prebuilt"
        if self._direct.defers:
            self._direct.defer(statement, params, rowcount_expected)
            return
        rowcount = self._direct.write(statement, params)
        assert rowcount_expected is None or rowcount == rowcount_expected, (
            f"{rowcount} rows written, expected {rowcount_expected}"
        )

    def _write_racing(
        self, statement: sa.Executable, params: Mapping[str, Any], races: frozenset[str]
    ) -> None:
        """A write that may lose a race on one of the unique constraints ``races``; the
        loss raises ``RetryStep``: at once on SQLite, with the next round trip when deferred."""
        if self._direct.defers:
            self._direct.defer(statement, params, races=races)
            return
        try:
            self._direct.write(statement, params)
        except sa.exc.IntegrityError as exc:
            raise RetryStep from exc

    def _insert(self, table: sa.Table, row: Row) -> None:
        self._write(_INSERT[table], row)

    def _insert_unique(self, table: sa.Table, row: Row) -> None:
        self._write_racing(_INSERT[table], row, _UNIQUE[table])

    # payments -----------------------------------------------------------
    def payment(self, payment_id: str, *, lock: bool = False) -> Row | None:
        return self._one(*self._payment_read(payment_id, lock))

    def _payment_read(self, payment_id: str, lock: bool) -> tuple[sa.Select[Any], Row]:
        return (_PAYMENT_LOCKED if lock and self._lock else _PAYMENT), {"b_id": payment_id}

    def payment_of_attempt(self, attempt_id: str, *, lock: bool = False) -> Row | None:
        return self._one(*self._payment_of_attempt_read(attempt_id, lock))

    def _payment_of_attempt_read(self, attempt_id: str, lock: bool) -> tuple[sa.Select[Any], Row]:
        query = _PAYMENT_OF_ATTEMPT_LOCKED if lock and self._lock else _PAYMENT_OF_ATTEMPT
        return query, {"b_attempt_id": attempt_id}

    def payment_by_provider_id(self, provider_payment_id: str, *, lock: bool) -> Row | None:
        locked = lock and self._lock
        query = _PAYMENT_BY_PROVIDER_ID_LOCKED if locked else _PAYMENT_BY_PROVIDER_ID
        return self._one(query, {"b_provider_payment_id": provider_payment_id})

    def order_holder_of(self, merchant_id: str, payment_id: str) -> Row | None:
        """The merchant's payment holding the order that ``payment_id`` is for."""
        return self._one(*_order_holder_read(merchant_id, payment_id))

    def insert_payment(self, row: Row) -> None:
        self._insert(t.payments, row)

    def claim_order(self, payment_id: str, order_id: str) -> None:
        """Mark the payment as the order's one money holder (unique per merchant)."""
        self._write_racing(
            _CLAIM_ORDER, {"b_id": payment_id, "active_order_id": order_id},
            frozenset({"uq_payments_active_order"}),
        )  # fmt: skip

    def update_payment(self, payment_id: str, expected_history_count: int, **values: Any) -> None:
        """Update guarded by the history count: a lost update is a defect."""
        self._write(
            _UPDATE_PAYMENT,
            {"b_id": payment_id, "b_history_count": expected_history_count, **values},
            rowcount_expected=1,
        )

    def payments(
        self, merchant_id: str, order_id: str | None, limit: int, offset: int
    ) -> list[Row]:
        query = sa.select(t.payments).where(t.payments.c.merchant_id == merchant_id)
        if order_id is not None:
            query = query.where(t.payments.c.order_id == order_id)
        query = query.order_by(t.payments.c.created_at, t.payments.c.id).limit(limit).offset(offset)
        return self._rows(query)


class MarketRows(StoreCore):
    """Split payments' lines, sellers' fee plans and wallets, and payouts."""

    # marketplace: lines, fee plans, wallets ---------------------------------
    def insert_line(self, row: Row) -> None:
        self._insert(t.payment_lines, row)

    def lines_of(self, payment_id: str) -> list[Row]:
        return self._all(_LINES_OF, {"b_payment_id": payment_id})

    def update_line(self, payment_id: str, line_no: int, **values: Any) -> None:
        params = {"b_payment_id": payment_id, "b_line_no": line_no, **values}
        self._write(_UPDATE_LINE, params, rowcount_expected=1)

    def fee_plan(self, seller_id: str) -> Row | None:
        return self._one(_FEE_PLAN, {"b_seller_id": seller_id})

    def set_fee_plan(
        self, seller_id: str, percent_bps: int, fixed_minor: int, at: datetime
    ) -> None:
        f = t.fee_plans
        self._execute(f.delete().where(f.c.seller_id == seller_id))
        self._execute(f.insert().values(seller_id=seller_id, percent_bps=percent_bps,
                                        fixed_minor=fixed_minor, updated_at=at))  # fmt: skip

    def add_to_wallet(
        self, owner_id: str, currency: str, pending_minor: int, available_minor: int, at: datetime
    ) -> None:
        """Move a wallet's balances by the given amounts (the ledger moved them too)."""
        row = {"owner_id": owner_id, "currency": currency, "pending_minor": pending_minor,
               "available_minor": available_minor, "updated_at": at}  # fmt: skip
        self._write(_WALLET_UPSERT[self._dialect], row)

    def wallet(self, owner_id: str, currency: str, *, lock: bool = False) -> Row | None:
        query = _WALLET_LOCKED if lock and self._lock else _WALLET
        return self._one(query, {"b_owner_id": owner_id, "b_currency": currency})

    # payouts -----------------------------------------------------------------
    def insert_payout(self, row: Row) -> None:
        self._insert(t.payouts, row)

    def payout(self, payout_id: str, *, lock: bool = False) -> Row | None:
        return self._one(_PAYOUT_LOCKED if lock and self._lock else _PAYOUT, {"b_id": payout_id})

    def payout_by_provider_id(self, provider_payout_id: str) -> Row | None:
        return self._one(_PAYOUT_BY_PROVIDER_ID, {"b_provider_payout_id": provider_payout_id})

    def update_payout(self, payout_id: str, **values: Any) -> None:
        self._write(_UPDATE_PAYOUT, {"b_id": payout_id, **values}, rowcount_expected=1)

    def due_payouts(self, now: datetime, limit: int) -> list[Row]:
        """Payouts whose outcome is unknown and whose scheduled lookup is due."""
        p = t.payouts.c
        due_at = sa.func.coalesce(p.next_lookup_at, p.updated_at)
        query = (
            sa.select(t.payouts)
            .where(p.status.in_([status.value for status in OPEN_PAYOUT]),
                   p.needs_review == sa.false(),
                   due_at <= now)
            .order_by(due_at, p.id)
            .limit(limit)
        )  # fmt: skip
        return self._rows(query)

    def payouts_of(self, seller_id: str | None, limit: int) -> list[Row]:
        p = t.payouts
        query = sa.select(p).order_by(p.c.created_at, p.c.id).limit(limit)
        if seller_id is not None:
            query = query.where(p.c.seller_id == seller_id)
        return self._rows(query)

    def wallets(self) -> list[Row]:
        w = t.wallets
        return self._rows(sa.select(w).order_by(w.c.owner_id, w.c.currency))

    def fee_pending_payments(self, limit: int) -> list[Row]:
        pay = t.payments
        query = sa.select(pay).where(pay.c.fee_pending == sa.true()).order_by(pay.c.id).limit(limit)
        return self._rows(query)


class AttemptRows(StoreCore):
    """A payment's history and outbox rows, its provider attempts and its refunds."""

    # history and outbox -------------------------------------------------
    def insert_history(self, row: Row) -> None:
        self._insert(t.payment_history, row)

    def history(self, payment_id: str) -> list[Row]:
        return self._all(_HISTORY, {"b_payment_id": payment_id})

    def insert_outbox(self, row: Row) -> None:
        self._insert(t.outbox, row)

    # attempts and refunds -------------------------------------------------
    def insert_attempt(self, row: Row) -> None:
        self._insert(t.attempts, row)

    def attempt(self, attempt_id: str) -> Row | None:
        return self._one(*_attempt_read(attempt_id))

    def attempts_of(
        self, payment_id: str, kinds: Sequence[str], statuses: Sequence[str]
    ) -> list[Row]:
        return self._all(*_attempts_read(payment_id, kinds, statuses))

    def update_attempt(self, attempt_id: str, **values: Any) -> None:
        self._write(_UPDATE_ATTEMPT, {"b_id": attempt_id, **values})

    def unresolved_attempts(
        self, updated_before: datetime, limit: int, awaiting_customer: bool
    ) -> list[Row]:
        a = t.attempts.c
        unresolved = _recoverable() if awaiting_customer else a.status.in_(OPEN_ATTEMPT)
        query = (
            sa.select(t.attempts)
            .where(unresolved, a.updated_at <= updated_before)
            .order_by(t.attempts.c.updated_at, t.attempts.c.id)
            .limit(limit)
        )
        return self._rows(query)

    def due_attempts(self, now: datetime | None, limit: int) -> list[Row]:
        """Attempts recovery looks up whose scheduled lookup is due (an unscheduled one:
        from its last touch); ``now`` None: due or not."""
        a = t.attempts.c
        due_at = sa.func.coalesce(a.next_lookup_at, a.updated_at)
        due = [] if now is None else [due_at <= now]
        query = (
            sa.select(t.attempts)
            .where(_recoverable(), a.needs_review == sa.false(), *due)
            .order_by(due_at, a.id)
            .limit(limit)
        )
        return self._rows(query)

    def review_attempts(self, limit: int) -> list[Row]:
        a = t.attempts.c
        query = (
            sa.select(t.attempts)
            .where(_recoverable(), a.needs_review == sa.true())
            .order_by(a.updated_at, a.id)
            .limit(limit)
        )
        return self._rows(query)

    def insert_refund(self, row: Row) -> None:
        self._insert(t.refunds, row)

    def refund(self, refund_id: str) -> Row | None:
        return self._one(_REFUND, {"b_id": refund_id})

    def refunds_of(self, payment_id: str) -> list[Row]:
        return self._all(_REFUNDS_OF, {"b_payment_id": payment_id})

    def update_refund(self, refund_id: str, **values: Any) -> None:
        self._write(_UPDATE_REFUND, {"b_id": refund_id, **values})


class KeyRows(StoreCore):
    """Idempotency keys, the provider events taken and the webhook inbox."""

    # idempotency ----------------------------------------------------------
    def idempotency_key(self, merchant_id: str, scope: str, key: str) -> Row | None:
        return self._one(*_key_read(merchant_id, scope, key))

    def insert_idempotency_key(self, row: Row) -> None:
        self._insert_unique(t.idempotency_keys, row)

    def finish_idempotency_key(self, key_id: str, code: int, body: Mapping[str, Any]) -> None:
        values = {"status": KeyStatus.COMPLETED.value, "response_code": code,
                  "response_body": dict(body)}  # fmt: skip
        self._write(_FINISH_KEY, {"b_id": key_id, **values})

    def idempotency_response(self, key_id: str | None) -> tuple[int, dict[str, Any]] | None:
        """The saved (code, body) of a finished key, or None."""
        if key_id is None:
            return None
        row = self._one(_KEY_RESPONSE, {"b_id": key_id})
        if row is None:
            return None
        return int(row["response_code"]), dict(row["response_body"])

    def expire_idempotency_keys(self, now: datetime, limit: int) -> int:
        k = t.idempotency_keys.c
        doomed = (
            sa.select(k.id)
            .where(k.expires_at <= now, k.status == KeyStatus.COMPLETED.value)
            .limit(limit)
            .scalar_subquery()
        )
        result = self._execute(t.idempotency_keys.delete().where(k.id.in_(doomed)))
        return int(result.rowcount)

    # provider events --------------------------------------------------------
    def provider_event(self, provider_event_id: str) -> Row | None:
        return self._one(*_provider_event_read(provider_event_id))

    def event_seen(self, payment_id: str, event_type: str) -> bool:
        """Whether an event of this type about the payment was taken, whatever its outcome."""
        e = t.provider_events.c
        query = sa.select(e.id).where(e.payment_id == payment_id, e.type == event_type).limit(1)
        return self._execute(query).first() is not None

    def insert_provider_event(self, row: Row) -> None:
        self._insert_unique(t.provider_events, row)

    # webhook inbox ------------------------------------------------------------
    def inbox_row(self, inbox_id: int, *, lock: bool = False) -> Row | None:
        query = _INBOX_ROW_LOCKED if lock and self._lock else _INBOX_ROW
        return self._one(query, {"b_id": inbox_id})

    def inbox_by_event(self, provider_event_id: str, *, lock: bool = False) -> Row | None:
        return self._one(*_inbox_read(provider_event_id, lock and self._lock))

    def insert_inbox(self, row: Row) -> None:
        self._insert_unique(t.webhook_inbox, row)

    def pending_inbox(self, limit: int) -> list[int]:
        w = t.webhook_inbox.c
        pending = w.status == InboxStatus.PENDING.value
        query = sa.select(w.id).where(pending).order_by(w.id).limit(limit)
        return [int(inbox_id) for inbox_id in self._execute(query).scalars()]

    def dead_inbox(self, limit: int) -> list[Row]:
        w = t.webhook_inbox.c
        dead = w.status == InboxStatus.DEAD.value
        query = sa.select(t.webhook_inbox).where(dead).order_by(w.id).limit(limit)
        return self._rows(query)

    def update_inbox(self, inbox_id: int, **values: Any) -> None:
        self._write(_UPDATE_INBOX, {"b_id": inbox_id, **values}, rowcount_expected=1)


class LedgerRows(StoreCore):
    """Journals and their entries, balances derived from them, and the outbox relay's reads."""

    # ledger -------------------------------------------------------------------
    def insert_journal(
        self,
        journal_id: str,
        journal: Journal,
        payment_id: str | None,
        history_seq: int | None,
        at: datetime,
    ) -> None:
        """Entries first, the journal row last: the database checks the balance then."""
        entries = [
            {
                "journal_id": journal_id,
                "account": entry.account,
                "side": entry.side.value,
                "amount_minor": entry.amount_minor,
                "currency": entry.currency,
            }
            for entry in journal.entries
        ]
        if self._direct.defers:
            self._direct.defer_many(_INSERT[t.ledger_entries], entries)
        else:
            self._direct.write_many(_INSERT[t.ledger_entries], entries)
        self._insert(
            t.ledger_journals,
            {
                "id": journal_id,
                "kind": journal.kind,
                "payment_id": payment_id,
                "history_seq": history_seq,
                "created_at": at,
            },
        )

    def journals_of(self, payment_id: str) -> list[tuple[Row, list[Row]]]:
        j, e = t.ledger_journals, t.ledger_entries
        journals = self._rows(
            sa.select(j)
            .where(j.c.payment_id == payment_id)
            .order_by(j.c.created_at, j.c.history_seq, j.c.id)
        )
        entries: dict[str, list[Row]] = {journal["id"]: [] for journal in journals}
        if journals:
            query = sa.select(e).where(e.c.journal_id.in_(list(entries))).order_by(e.c.id)
            for row in self._rows(query):
                entries[row["journal_id"]].append(row)
        return [(journal, entries[journal["id"]]) for journal in journals]

    def account_balances(self, accounts: Sequence[str]) -> list[tuple[str, str, int]]:
        """(account, currency, debits - credits) for each of ``accounts``."""
        e = t.ledger_entries.c
        signed = sa.case((e.side == "D", e.amount_minor), else_=-e.amount_minor)
        query = (
            sa.select(e.account, e.currency, sa.func.sum(signed))
            .where(e.account.in_(list(accounts)))
            .group_by(e.account, e.currency)
            .order_by(e.account, e.currency)
        )
        return [(str(a), str(c), int(total)) for a, c, total in self._execute(query)]

    def balances_with_prefix(self, prefix: str) -> list[tuple[str, str, int]]:
        """(account, currency, debits - credits) of every account named ``prefix...``."""
        e = t.ledger_entries.c
        signed = sa.case((e.side == "D", e.amount_minor), else_=-e.amount_minor)
        query = (
            sa.select(e.account, e.currency, sa.func.sum(signed))
            .where(e.account.startswith(prefix, autoescape=True))
            .group_by(e.account, e.currency)
            .order_by(e.account, e.currency)
        )
        return [(str(a), str(c), int(total)) for a, c, total in self._execute(query)]

    # outbox relay -------------------------------------------------------------
    def unpublished_outbox(self, limit: int) -> list[Row]:
        o = t.outbox.c
        query = sa.select(t.outbox).where(o.published_at.is_(None)).order_by(o.id).limit(limit)
        return self._rows(query)

    def mark_outbox_published(self, ids: Sequence[int], at: datetime) -> None:
        if ids:
            o = t.outbox.c
            self._execute(t.outbox.update().where(o.id.in_(list(ids))).values(published_at=at))


class Store(AttemptRows, MarketRows, KeyRows, LedgerRows):
    """The rows one unit of work reads and writes, every aggregate's (``StoreCore`` below
    them all: one connection, one deferred-write queue)."""


@contextmanager
def unit_of_work(database: Database) -> Iterator[Store]:
    with database.transaction() as unit:
        yield Store(unit)
