"""Payouts: a seller's available money sent to its bank through the provider.

The same seam as a payment's calls. ``begin`` checks the seller's available
balance under a lock, takes the amount off it (ledger and wallet, one
transaction: the payouts-in-transit account holds it) and returns the provider
call; ``complete`` applies the provider's answer. The money is never guessed:

- accepted by the provider: ``in_transit`` until the provider says it landed
  (``payout.paid``: it leaves the provider's balance) or failed
  (``payout.failed``: it goes back to the seller's available balance);
- refused by the provider (for example its balance is short): ``failed`` at
  once, the money back to the seller;
- no answer: ``unknown``, looked up by its idempotency key on the recovery
  schedule, like any payment call.

No payout exceeds the available balance at the moment it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine.adapters.store import Row, Store
from engine.domain import ledger
from engine.domain.commands import CreatePayout
from engine.domain.errors import InsufficientFunds, NotFound
from engine.domain.money import Money
from engine.domain.provider import (
    CallKind,
    EventType,
    OutcomeStatus,
    ProviderCall,
    ProviderEvent,
    ProviderOutcome,
)

if TYPE_CHECKING:
    from engine.service.engine import PaymentEngine

OPEN = ("pending", "unknown")


@dataclass(frozen=True, slots=True)
class PayoutResult:
    payout: dict[str, Any]
    status_code: int
    call: ProviderCall | None = None
    replayed: bool = False


def view(row: Row) -> dict[str, Any]:
    keys = ("id", "seller_id", "currency", "amount_minor", "status", "provider_payout_id",
            "failure_code", "needs_review")  # fmt: skip
    return {key: row[key] for key in keys}


def call_of(row: Row) -> ProviderCall:
    return ProviderCall(
        attempt_id=row["id"], kind=CallKind.PAYOUT, idempotency_key=row["provider_idempotency_key"],
        payment_id="", merchant_id=row["seller_id"], order_id="",
        amount_minor=row["amount_minor"], currency=row["currency"],
        payment_method="", capture_method="",
    )  # fmt: skip


def begin(e: PaymentEngine, s: Store, command: CreatePayout, key_id: str) -> PayoutResult:
    """Reserve the amount from the available balance and ask for the provider call."""
    wallet = s.wallet(command.seller_id, command.currency, lock=True)
    available = 0 if wallet is None else int(wallet["available_minor"])
    if command.amount_minor > available:
        raise InsufficientFunds(
            message=f"{command.amount_minor} is more than the available {available}",
            field="amount_minor",
        )
    now = e.clock.now()
    payout_id = e.ids.new_id("po")
    row: Row = {
        "id": payout_id, "seller_id": command.seller_id, "currency": command.currency,
        "amount_minor": command.amount_minor, "status": "pending", "provider_payout_id": None,
        "provider_idempotency_key": f"paychaos-{payout_id}", "idempotency_id": key_id,
        "failure_code": None, "lookups": 0, "needs_review": False,
        "next_lookup_at": now + e.settings.recovery_schedule[0],
        "created_at": now, "updated_at": now, "arrived_at": None,
    }  # fmt: skip
    s.insert_payout(row)
    money = Money(command.amount_minor, command.currency)
    _post(e, s, ledger.payout_reserve(command.seller_id, money), now)
    s.add_to_wallet(command.seller_id, command.currency, 0, -command.amount_minor, now)
    return PayoutResult(view(row), 202, call_of(row))


def complete(
    e: PaymentEngine, s: Store, payout_id: str, outcome: ProviderOutcome, looked_up: bool
) -> Row:
    """Apply the provider's answer to a payout call (or, ``looked_up``, to a lookup by its key)."""
    row = s.payout(payout_id, lock=True)
    if row is None:
        raise NotFound("payout_not_found", f"no payout {payout_id}", field="payout_id")
    if row["status"] not in OPEN:
        return row  # a webhook or a lookup answered first
    now = e.clock.now()
    status = outcome.status
    if status is OutcomeStatus.SUCCEEDED:
        _update(s, row, now, status="in_transit", provider_payout_id=outcome.provider_payout_id)
    elif status in (OutcomeStatus.DECLINED, OutcomeStatus.NOT_FOUND):
        # NOT_FOUND comes from a lookup: the provider never saw the request, and the
        # caller resends it under its key before giving up (as for payments).
        if status is OutcomeStatus.DECLINED:
            _return_money(e, s, row, now, outcome.decline_code or "declined")
    elif looked_up:  # the provider could not tell: ask again later, then a person
        _schedule_lookup(e, s, row, now)
    else:  # the call went unanswered: its first lookup stays as begin scheduled it
        _update(s, row, now, status="unknown")
    return row


def apply_event(e: PaymentEngine, s: Store, row: Row, event: ProviderEvent) -> str:
    """``payout.paid`` or ``payout.failed`` from the provider: exactly once."""
    if row["status"] in ("paid", "failed"):
        return "stale"
    now = e.clock.now()
    paid = event.type == EventType.PAYOUT_PAID
    if row["provider_payout_id"] is None and event.provider_payout_id is not None:
        _update(s, row, now, provider_payout_id=event.provider_payout_id)
    if paid:
        money = Money(row["amount_minor"], row["currency"])
        _post(e, s, ledger.payout_paid(money), now)
        _update(s, row, now, status="paid", arrived_at=now)
    else:
        _return_money(e, s, row, now, event.decline_code or "payout_failed")
    return "applied"


def _return_money(e: PaymentEngine, s: Store, row: Row, now: datetime, code: str) -> None:
    money = Money(row["amount_minor"], row["currency"])
    _post(e, s, ledger.payout_returned(row["seller_id"], money), now)
    s.add_to_wallet(row["seller_id"], row["currency"], 0, row["amount_minor"], now)
    _update(s, row, now, status="failed", failure_code=code[:64])


def _schedule_lookup(e: PaymentEngine, s: Store, row: Row, now: datetime) -> None:
    """The recovery schedule of payment attempts, then review: the engine's own rule."""
    lookups = int(row["lookups"]) + 1
    _update(s, row, now, status="unknown", lookups=lookups, **e._next_lookup(lookups))


def _update(s: Store, row: Row, now: datetime, **values: Any) -> None:
    s.update_payout(row["id"], updated_at=now, **values)
    row.update(values, updated_at=now)


def _post(e: PaymentEngine, s: Store, journal: ledger.Journal, at: datetime) -> None:
    s.insert_journal(e.ids.new_id("jnl"), journal, None, None, at)
