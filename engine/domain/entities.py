"""The engine's entities: a payment and a provider attempt, typed, built from rows here.

A step reads a row from the store, makes it an entity (``from_row``: the one
place a payment's or an attempt's row is read by column name), decides with its
typed fields and writes every change back through the store's update methods,
then applies the same change to the entity (``change``), so what the step reads
next is what the database holds. Entities are slotted, not frozen: a step holds
its payment under the payment's lock and moves it several times in one unit of
work (a state change, then the journal that reads the new amounts).

Values as the database holds them: states and statuses as their enums (whose
values are the stored strings), amounts in minor units, timestamps aware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.domain.lifecycles import AttemptStatus
from engine.domain.provider import CallKind
from engine.domain.states import PaymentState

# Stored string -> member, without the enum call's cost on every row read.
_STATES: dict[str, PaymentState] = PaymentState._value2member_map_  # type: ignore[assignment]
_STATUSES: dict[str, AttemptStatus] = AttemptStatus._value2member_map_  # type: ignore[assignment]
_KINDS: dict[str, CallKind] = CallKind._value2member_map_  # type: ignore[assignment]


@dataclass(slots=True, eq=False)
class Payment:
    id: str
    merchant_id: str
    order_id: str
    active_order_id: str | None  # set while it holds (or may hold) the order's money
    amount_minor: int
    currency: str
    payment_method: str
    capture_method: str
    state: PaymentState
    authorized_minor: int
    captured_minor: int
    refunded_minor: int
    refund_reserved_minor: int  # refunds asked for, not yet answered
    fee_minor: int
    disputed_minor: int
    provider_payment_id: str | None
    decline_code: str | None
    metadata: dict[str, Any]
    history_count: int
    created_at: datetime
    updated_at: datetime
    lines_count: int  # sellers of a split payment; 0 for a plain one
    fee_pending: bool  # captured without the provider's fee known yet

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Payment:
        return cls(
            row["id"], row["merchant_id"], row["order_id"], row["active_order_id"],
            row["amount_minor"], row["currency"], row["payment_method"], row["capture_method"],
            _STATES[row["state"]],
            row["authorized_minor"], row["captured_minor"], row["refunded_minor"],
            row["refund_reserved_minor"], row["fee_minor"], row["disputed_minor"],
            row["provider_payment_id"], row["decline_code"], row["metadata"],
            row["history_count"], row["created_at"], row["updated_at"], row["lines_count"],
            bool(row["fee_pending"]),
        )  # fmt: skip

    def as_row(self) -> dict[str, Any]:
        """The row to insert (the state as its stored string)."""
        return {
            "id": self.id, "merchant_id": self.merchant_id, "order_id": self.order_id,
            "active_order_id": self.active_order_id, "amount_minor": self.amount_minor,
            "currency": self.currency, "payment_method": self.payment_method,
            "capture_method": self.capture_method, "state": self.state.value,
            "authorized_minor": self.authorized_minor, "captured_minor": self.captured_minor,
            "refunded_minor": self.refunded_minor,
            "refund_reserved_minor": self.refund_reserved_minor, "fee_minor": self.fee_minor,
            "disputed_minor": self.disputed_minor,
            "provider_payment_id": self.provider_payment_id, "decline_code": self.decline_code,
            "metadata": self.metadata, "history_count": self.history_count,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "lines_count": self.lines_count, "fee_pending": self.fee_pending,
        }  # fmt: skip

    def change(self, values: Mapping[str, Any]) -> None:
        """Apply column values the store was just told to write (state as its string)."""
        for name, value in values.items():
            setattr(self, name, _STATES[value] if name == "state" else value)

    @property
    def open_to_refund_minor(self) -> int:
        """Captured, less refunded and less refunds still in flight."""
        return self.captured_minor - self.refunded_minor - self.refund_reserved_minor


@dataclass(slots=True, eq=False)
class Attempt:
    """One provider call of a payment (authorize, capture, void or refund) and its fate."""

    id: str
    payment_id: str
    kind: CallKind
    status: AttemptStatus
    amount_minor: int
    provider_idempotency_key: str  # one per attempt, reused on every retry and lookup
    refund_id: str | None
    idempotency_id: str | None  # the client's key whose answer this attempt finishes
    decline_code: str | None
    lookup_count: int
    next_lookup_at: datetime | None
    needs_review: bool
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Attempt:
        return cls(
            row["id"], row["payment_id"],
            _KINDS[row["kind"]], _STATUSES[row["status"]],
            row["amount_minor"], row["provider_idempotency_key"], row["refund_id"],
            row["idempotency_id"], row["decline_code"], row["lookup_count"],
            row["next_lookup_at"], bool(row["needs_review"]), row["created_at"],
            row["updated_at"], row["resolved_at"],
        )  # fmt: skip

    def as_row(self) -> dict[str, Any]:
        """The row to insert (kind and status as their stored strings)."""
        return {
            "id": self.id, "payment_id": self.payment_id, "kind": self.kind.value,
            "status": self.status.value, "amount_minor": self.amount_minor,
            "provider_idempotency_key": self.provider_idempotency_key,
            "refund_id": self.refund_id, "idempotency_id": self.idempotency_id,
            "decline_code": self.decline_code, "lookup_count": self.lookup_count,
            "next_lookup_at": self.next_lookup_at, "needs_review": self.needs_review,
            "created_at": self.created_at, "updated_at": self.updated_at,
            "resolved_at": self.resolved_at,
        }  # fmt: skip

    def change(self, values: Mapping[str, Any]) -> None:
        """Apply column values the store was just told to write (status as its string)."""
        for name, value in values.items():
            setattr(self, name, _STATUSES[value] if name == "status" else value)
