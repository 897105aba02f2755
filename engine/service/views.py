"""What steps return: plain, JSON-able snapshots, never live rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.domain.entities import Payment
from engine.domain.provider import ProviderCall

PAYMENT_FIELDS = (
    "id", "merchant_id", "order_id", "amount_minor", "currency", "payment_method",
    "capture_method", "state", "authorized_minor", "captured_minor", "refunded_minor",
    "refund_reserved_minor", "fee_minor", "disputed_minor", "provider_payment_id",
    "decline_code", "metadata",
)  # fmt: skip


def _iso(moment: datetime) -> str:
    """``2026-01-01T00:00:00Z``; the last moment's text is kept: a step's answer names
    its one "now" (``updated_at``) again and again."""
    global _last_iso
    last = _last_iso
    if last[0] is moment:
        return last[1]
    text = moment.isoformat().replace("+00:00", "Z")
    _last_iso = (moment, text)
    return text


_last_iso: tuple[datetime | None, str] = (None, "")


@dataclass(frozen=True, slots=True)
class PaymentView:
    """A payment as a client sees it; ``history`` and ``refunds`` on full reads."""

    body: dict[str, Any]
    history: tuple[dict[str, Any], ...] = ()
    refunds: tuple[dict[str, Any], ...] = ()
    lines: tuple[dict[str, Any], ...] = ()  # a split payment's lines, when asked for

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def state(self) -> str:
        return str(self.body["state"])

    def __getitem__(self, name: str) -> Any:
        return self.body[name]

    @classmethod
    def of(cls, p: Payment) -> PaymentView:
        """A payment's view; the body's keys in ``PAYMENT_FIELDS`` order, then its times."""
        return cls({
            "id": p.id, "merchant_id": p.merchant_id, "order_id": p.order_id,
            "amount_minor": p.amount_minor, "currency": p.currency,
            "payment_method": p.payment_method, "capture_method": p.capture_method,
            "state": p.state.value, "authorized_minor": p.authorized_minor,
            "captured_minor": p.captured_minor, "refunded_minor": p.refunded_minor,
            "refund_reserved_minor": p.refund_reserved_minor, "fee_minor": p.fee_minor,
            "disputed_minor": p.disputed_minor, "provider_payment_id": p.provider_payment_id,
            "decline_code": p.decline_code, "metadata": dict(p.metadata),
            "created_at": _iso(p.created_at), "updated_at": _iso(p.updated_at),
        })  # fmt: skip

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> PaymentView:
        """A listed payment's view, straight from its row (no entity needed to show it)."""
        body = {name: row[name] for name in PAYMENT_FIELDS}
        body["metadata"] = dict(row["metadata"])
        body["created_at"] = _iso(row["created_at"])
        body["updated_at"] = _iso(row["updated_at"])
        return cls(body)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.body)
        if self.history:
            out["history"] = [dict(item) for item in self.history]
        if self.refunds:
            out["refunds"] = [dict(item) for item in self.refunds]
        return out


def history_item(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "from_state": row["from_state"],
        "to_state": row["to_state"],
        "reason": row["reason"],
        "amount_minor": row["amount_minor"],
        "attempt_id": row["attempt_id"],
        "provider_event_id": row["provider_event_id"],
        "at": _iso(row["at"]),
    }


def refund_item(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "amount_minor": row["amount_minor"],
        "currency": row["currency"],
        "status": row["status"],
        "reason": row["reason"],
        "provider_refund_id": row["provider_refund_id"],
        "created_at": _iso(row["created_at"]),
    }


@dataclass(frozen=True, slots=True)
class StepResult:
    """A write's answer: the payment, the provider call to make (if any), and
    whether this is a replay of a stored response."""

    payment: PaymentView
    status_code: int
    call: ProviderCall | None = None
    replayed: bool = False
    refund_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventResult:
    """How a provider event was taken: applied, stale, duplicate, unmatched or ignored."""

    outcome: str
    payment_id: str | None = None
    transitions: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A state change as published: consumers dedupe by ``event_id``."""

    sequence: int
    event_id: str
    type: str
    payment_id: str
    history_seq: int | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A stored webhook delivery, as the dead-letter queue shows it."""

    inbox_id: int
    provider_event_id: str
    type: str
    status: str
    attempts: int
    last_error: str | None
    received_at: datetime
    applied_at: datetime | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> InboxItem:
        return cls(
            row["id"], row["provider_event_id"], row["type"], row["status"], row["attempts"],
            row["last_error"], row["received_at"], row["applied_at"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class InboxResult:
    """One inbox row's processing: ``applied``, ``pending`` (failed, will retry),
    ``dead`` (failed for the last time) or ``skipped`` (already taken)."""

    inbox_id: int
    provider_event_id: str | None
    status: str
    event_outcome: str | None = None
    error: str | None = None
