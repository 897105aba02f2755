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

No payout exceeds the available balance at the moment it is asked for. A
payout's statuses move along the payout lifecycle's table
(``engine.domain.lifecycles``). ``PayoutSteps`` holds the engine's payout steps;
the functions below run inside their units of work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from engine.adapters.store import Row, Store
from engine.domain import ledger
from engine.domain.commands import CreatePayout
from engine.domain.errors import InsufficientFunds, NotFound
from engine.domain.lifecycles import OPEN_PAYOUT, PAYOUT_MOVES, PayoutStatus, moved
from engine.domain.money import Money
from engine.domain.provider import (
    CallKind,
    EventType,
    OutcomeStatus,
    ProviderCall,
    ProviderEvent,
    ProviderOutcome,
)
from engine.service.steps import Steps

P = PayoutStatus
OPEN = OPEN_PAYOUT
FAR_AHEAD = timedelta(days=36_500)  # "due by then" takes every open payout


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


def begin(e: Steps, s: Store, command: CreatePayout, key_id: str) -> PayoutResult:
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
        "amount_minor": command.amount_minor, "status": moved(PAYOUT_MOVES, None, P.PENDING).value,
        "provider_payout_id": None,
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


def complete(e: Steps, s: Store, payout_id: str, outcome: ProviderOutcome, looked_up: bool) -> Row:
    """Apply the provider's answer to a payout call (or, ``looked_up``, to a lookup by its key)."""
    row = s.payout(payout_id, lock=True)
    if row is None:
        raise NotFound("payout_not_found", f"no payout {payout_id}", field="payout_id")
    if row["status"] not in OPEN:
        return row  # a webhook or a lookup answered first
    now = e.clock.now()
    status = outcome.status
    if status is OutcomeStatus.SUCCEEDED:
        _update(s, row, now, status=P.IN_TRANSIT, provider_payout_id=outcome.provider_payout_id,
                taken_at=now)  # fmt: skip
    elif status in (OutcomeStatus.DECLINED, OutcomeStatus.NOT_FOUND):
        # NOT_FOUND comes from a lookup: the provider never saw the request, and the
        # caller resends it under its key before giving up (as for payments).
        if status is OutcomeStatus.DECLINED:
            _return_money(e, s, row, now, outcome.decline_code or "declined")
    elif looked_up:  # the provider could not tell: ask again later, then a person
        _schedule_lookup(e, s, row, now)
    else:  # the call went unanswered: its first lookup stays as begin scheduled it
        _update(s, row, now, status=P.UNKNOWN)
    return row


def apply_event(e: Steps, s: Store, row: Row, event: ProviderEvent) -> str:
    """``payout.paid`` or ``payout.failed`` from the provider: exactly once."""
    if row["status"] in (P.PAID, P.FAILED):
        return "stale"
    now = e.clock.now()
    paid = event.type == EventType.PAYOUT_PAID
    if row["provider_payout_id"] is None and event.provider_payout_id is not None:
        _update(s, row, now, provider_payout_id=event.provider_payout_id, taken_at=now)
    if paid:
        money = Money(row["amount_minor"], row["currency"])
        _post(e, s, ledger.payout_paid(money), now)
        _update(s, row, now, status=P.PAID, arrived_at=now)
    else:
        _return_money(e, s, row, now, event.decline_code or "payout_failed")
    return "applied"


def _return_money(e: Steps, s: Store, row: Row, now: datetime, code: str) -> None:
    money = Money(row["amount_minor"], row["currency"])
    _post(e, s, ledger.payout_returned(row["seller_id"], money), now)
    s.add_to_wallet(row["seller_id"], row["currency"], 0, row["amount_minor"], now)
    _update(s, row, now, status=P.FAILED, failure_code=code[:64])


def _schedule_lookup(e: Steps, s: Store, row: Row, now: datetime) -> None:
    """The recovery schedule of payment attempts, then review: the engine's own rule."""
    lookups = int(row["lookups"]) + 1
    _update(s, row, now, status=P.UNKNOWN, lookups=lookups, **e._next_lookup(lookups))


def _update(
    s: Store, row: Row, now: datetime, status: PayoutStatus | None = None, **values: Any
) -> None:
    """Write a payout's changes (a status move checked against its table) to the row too."""
    if status is not None:
        values["status"] = moved(PAYOUT_MOVES, P(row["status"]), status).value
    s.update_payout(row["id"], updated_at=now, **values)
    row.update(values, updated_at=now)


def _post(e: Steps, s: Store, journal: ledger.Journal, at: datetime) -> None:
    s.insert_journal(e.ids.new_id("jnl"), journal, None, None, at)


class PayoutSteps(Steps):
    def begin_payout(self, command: CreatePayout) -> PayoutResult:
        """Reserve a payout from the seller's available balance: the call to make, or a replay."""

        def step(s: Store) -> PayoutResult:
            key = self._saved_key(s, command)
            if key is not None:
                body = key["response_body"]
                return PayoutResult(dict(body["payout"]), key["response_code"], None, True)
            key_id = self._new_key(s, command)
            return begin(self, s, command, key_id)

        return self._run(step)

    def complete_payout(
        self, payout_id: str, outcome: ProviderOutcome, *, looked_up: bool = False
    ) -> PayoutResult:
        """Apply a payout call's answer, or (``looked_up``) a lookup's by its key."""

        def step(s: Store) -> PayoutResult:
            row = complete(self, s, payout_id, outcome, looked_up)
            code = 202 if row["status"] in OPEN else 200
            if row["idempotency_id"] is not None and code == 200:
                s.finish_idempotency_key(row["idempotency_id"], code,
                                         {"payout": view(row)})  # fmt: skip
            return PayoutResult(view(row), code)

        return self._run(step)

    def due_payouts(self, limit: int = 100) -> list[ProviderCall]:
        """Payout calls whose outcome is unknown and whose lookup is due."""
        now = self.clock.now()
        return self._run(lambda s: [call_of(row) for row in s.due_payouts(now, limit)])

    def open_payouts(self, limit: int = 100) -> list[dict[str, Any]]:
        """Payouts whose provider call has no answer yet (pending or unknown)."""
        far = self.clock.now() + FAR_AHEAD
        return self._run(lambda s: [view(row) for row in s.due_payouts(far, limit)])

    def payouts(self, seller_id: str | None = None, limit: int = 1_000) -> list[dict[str, Any]]:
        return self._run(lambda s: [view(row) for row in s.payouts_of(seller_id, limit)])
