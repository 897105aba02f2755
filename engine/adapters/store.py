"""The SQLAlchemy store: the rows a unit of work reads and writes.

Service steps speak to a ``Store`` opened on one transaction; they never build
SQL themselves. Payment rows are read ``FOR UPDATE`` on PostgreSQL, so steps on
one payment serialize; SQLite serializes every writer with BEGIN IMMEDIATE.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from engine.adapters import schema as t
from engine.adapters.database import Database
from engine.domain.ledger import Journal

Row = dict[str, Any]

# Attempt statuses whose provider call may still have an effect.
OPEN_ATTEMPT = ("pending", "unknown")


class RetryStep(Exception):
    """A unique constraint raced with a concurrent transaction: run the step again."""


class Store:
    def __init__(self, connection: Connection):
        self.c = connection
        self._lock = connection.dialect.name == "postgresql"

    def commit(self) -> None:
        self.c.commit()

    def _one(self, query: sa.Select[Any]) -> Row | None:
        row = self.c.execute(query).mappings().first()
        return dict(row) if row is not None else None

    # payments -----------------------------------------------------------
    def payment(self, payment_id: str, *, lock: bool = False) -> Row | None:
        query = sa.select(t.payments).where(t.payments.c.id == payment_id)
        if lock and self._lock:
            query = query.with_for_update()
        return self._one(query)

    def payment_by_provider_id(self, provider_payment_id: str, *, lock: bool) -> Row | None:
        query = sa.select(t.payments).where(t.payments.c.provider_payment_id == provider_payment_id)
        if lock and self._lock:
            query = query.with_for_update()
        return self._one(query)

    def order_holder(self, merchant_id: str, order_id: str) -> Row | None:
        return self._one(
            sa.select(t.payments.c.id, t.payments.c.state).where(
                t.payments.c.merchant_id == merchant_id,
                t.payments.c.active_order_id == order_id,
            )
        )

    def insert_payment(self, row: Row) -> None:
        self.c.execute(t.payments.insert().values(**row))

    def claim_order(self, payment_id: str, order_id: str) -> None:
        """Mark the payment as the order's one money holder (unique per merchant)."""
        try:
            with self.c.begin_nested():
                self.c.execute(
                    t.payments.update()
                    .where(t.payments.c.id == payment_id)
                    .values(active_order_id=order_id)
                )
        except sa.exc.IntegrityError as exc:
            raise RetryStep from exc

    def update_payment(self, payment_id: str, expected_history_count: int, **values: Any) -> None:
        """Update guarded by the history count: a lost update is a defect."""
        result = self.c.execute(
            t.payments.update()
            .where(
                t.payments.c.id == payment_id,
                t.payments.c.history_count == expected_history_count,
            )
            .values(**values)
        )
        assert result.rowcount == 1, f"payment {payment_id} changed under a lock"

    def payments(
        self, merchant_id: str, order_id: str | None, limit: int, offset: int
    ) -> list[Row]:
        query = sa.select(t.payments).where(t.payments.c.merchant_id == merchant_id)
        if order_id is not None:
            query = query.where(t.payments.c.order_id == order_id)
        query = query.order_by(t.payments.c.created_at, t.payments.c.id).limit(limit).offset(offset)
        return [dict(row) for row in self.c.execute(query).mappings()]

    # history and outbox -------------------------------------------------
    def insert_history(self, row: Row) -> None:
        self.c.execute(t.payment_history.insert().values(**row))

    def history(self, payment_id: str) -> list[Row]:
        query = (
            sa.select(t.payment_history)
            .where(t.payment_history.c.payment_id == payment_id)
            .order_by(t.payment_history.c.seq)
        )
        return [dict(row) for row in self.c.execute(query).mappings()]

    def insert_outbox(self, row: Row) -> None:
        self.c.execute(t.outbox.insert().values(**row))

    # attempts and refunds -------------------------------------------------
    def insert_attempt(self, row: Row) -> None:
        self.c.execute(t.attempts.insert().values(**row))

    def attempt(self, attempt_id: str) -> Row | None:
        return self._one(sa.select(t.attempts).where(t.attempts.c.id == attempt_id))

    def attempts_of(
        self, payment_id: str, kinds: Sequence[str], statuses: Sequence[str]
    ) -> list[Row]:
        query = (
            sa.select(t.attempts)
            .where(
                t.attempts.c.payment_id == payment_id,
                t.attempts.c.kind.in_(kinds),
                t.attempts.c.status.in_(statuses),
            )
            .order_by(t.attempts.c.created_at.desc(), t.attempts.c.id.desc())
        )
        return [dict(row) for row in self.c.execute(query).mappings()]

    def update_attempt(self, attempt_id: str, **values: Any) -> None:
        self.c.execute(t.attempts.update().where(t.attempts.c.id == attempt_id).values(**values))

    def unresolved_attempts(self, updated_before: datetime, limit: int) -> list[Row]:
        query = (
            sa.select(t.attempts)
            .where(
                t.attempts.c.status.in_(OPEN_ATTEMPT),
                t.attempts.c.updated_at <= updated_before,
            )
            .order_by(t.attempts.c.updated_at, t.attempts.c.id)
            .limit(limit)
        )
        return [dict(row) for row in self.c.execute(query).mappings()]

    def insert_refund(self, row: Row) -> None:
        self.c.execute(t.refunds.insert().values(**row))

    def refund(self, refund_id: str) -> Row | None:
        return self._one(sa.select(t.refunds).where(t.refunds.c.id == refund_id))

    def refunds_of(self, payment_id: str) -> list[Row]:
        query = (
            sa.select(t.refunds)
            .where(t.refunds.c.payment_id == payment_id)
            .order_by(t.refunds.c.created_at, t.refunds.c.id)
        )
        return [dict(row) for row in self.c.execute(query).mappings()]

    def update_refund(self, refund_id: str, **values: Any) -> None:
        self.c.execute(t.refunds.update().where(t.refunds.c.id == refund_id).values(**values))

    # idempotency ----------------------------------------------------------
    def idempotency_key(self, merchant_id: str, scope: str, key: str) -> Row | None:
        k = t.idempotency_keys.c
        return self._one(
            sa.select(t.idempotency_keys).where(
                k.merchant_id == merchant_id, k.scope == scope, k.key == key
            )
        )

    def insert_idempotency_key(self, row: Row) -> None:
        try:
            with self.c.begin_nested():
                self.c.execute(t.idempotency_keys.insert().values(**row))
        except sa.exc.IntegrityError as exc:
            raise RetryStep from exc

    def finish_idempotency_key(self, key_id: str, code: int, body: Mapping[str, Any]) -> None:
        self.c.execute(
            t.idempotency_keys.update()
            # A saved response never changes: only a key still in flight is finished.
            .where(t.idempotency_keys.c.id == key_id, t.idempotency_keys.c.status == "in_flight")
            .values(status="completed", response_code=code, response_body=dict(body))
        )

    def expire_idempotency_keys(self, now: datetime, limit: int) -> int:
        k = t.idempotency_keys.c
        doomed = (
            sa.select(k.id)
            .where(k.expires_at <= now, k.status == "completed")
            .limit(limit)
            .scalar_subquery()
        )
        result = self.c.execute(t.idempotency_keys.delete().where(k.id.in_(doomed)))
        return int(result.rowcount)

    # provider events --------------------------------------------------------
    def provider_event(self, provider_event_id: str) -> Row | None:
        e = t.provider_events.c
        return self._one(
            sa.select(t.provider_events).where(e.provider_event_id == provider_event_id)
        )

    def insert_provider_event(self, row: Row) -> None:
        try:
            with self.c.begin_nested():
                self.c.execute(t.provider_events.insert().values(**row))
        except sa.exc.IntegrityError as exc:
            raise RetryStep from exc

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
        self.c.execute(
            t.ledger_entries.insert(),
            [
                {
                    "journal_id": journal_id,
                    "account": entry.account,
                    "side": entry.side.value,
                    "amount_minor": entry.amount_minor,
                    "currency": entry.currency,
                }
                for entry in journal.entries
            ],
        )
        self.c.execute(
            t.ledger_journals.insert().values(
                id=journal_id,
                kind=journal.kind,
                payment_id=payment_id,
                history_seq=history_seq,
                created_at=at,
            )
        )

    def journals_of(self, payment_id: str) -> list[tuple[Row, list[Row]]]:
        j, e = t.ledger_journals, t.ledger_entries
        journals = [
            dict(row)
            for row in self.c.execute(
                sa.select(j)
                .where(j.c.payment_id == payment_id)
                .order_by(j.c.created_at, j.c.history_seq, j.c.id)
            ).mappings()
        ]
        entries: dict[str, list[Row]] = {journal["id"]: [] for journal in journals}
        if journals:
            query = sa.select(e).where(e.c.journal_id.in_(list(entries))).order_by(e.c.id)
            for row in self.c.execute(query).mappings():
                entries[row["journal_id"]].append(dict(row))
        return [(journal, entries[journal["id"]]) for journal in journals]


@contextmanager
def unit_of_work(database: Database) -> Iterator[Store]:
    with database.transaction() as connection:
        yield Store(connection)
