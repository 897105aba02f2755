"""Reads: payments, their ledger, sellers' lines and wallets, balances and the outbox.

Each read is one unit of work and returns snapshots (``engine.service.views``)
or plain rows, never live entities. Also the outbox relay's two steps: the
events not yet published, and marking them published once the bus has them.
"""

from __future__ import annotations

from engine.adapters.store import Row, Store
from engine.domain import ledger
from engine.domain.errors import InvalidRequest
from engine.domain.validation import parse_identifier
from engine.service.steps import Steps
from engine.service.views import OutboxEvent, PaymentView, history_item, refund_item


class ReadSteps(Steps):
    def get_payment(
        self, payment_id: str, merchant_id: str | None = None, *, with_lines: bool = False
    ) -> PaymentView:
        """A payment with its history and refunds (and, ``with_lines``, a split payment's
        lines), read in one unit of work; another merchant's payment is not found."""
        parse_identifier(payment_id, "payment_id")

        def step(s: Store) -> PaymentView:
            payment = self._owned(s, payment_id, merchant_id)
            view = PaymentView.of(payment)
            history = tuple(history_item(row) for row in s.history(payment_id))
            refunds = tuple(refund_item(row) for row in s.refunds_of(payment_id))
            lines = tuple(s.lines_of(payment_id)) if with_lines and payment.lines_count else ()
            return PaymentView(view.body, history, refunds, lines)

        return self._run(step)

    def list_payments(
        self, merchant_id: str, order_id: str | None = None, limit: int = 20, offset: int = 0
    ) -> list[PaymentView]:
        if not 1 <= limit <= self.settings.page_size_max:
            raise InvalidRequest(
                "limit_invalid", f"limit is 1 to {self.settings.page_size_max}", field="limit"
            )
        if not 0 <= offset <= self.settings.page_offset_max:
            raise InvalidRequest(
                "offset_invalid", f"offset is 0 to {self.settings.page_offset_max}", field="offset"
            )
        if order_id is not None:
            parse_identifier(order_id, "order_id")

        def step(s: Store) -> list[PaymentView]:
            rows = s.payments(merchant_id, order_id, limit, offset)
            return [PaymentView.of_row(row) for row in rows]

        return self._run(step)

    def ledger_of(
        self, payment_id: str, merchant_id: str | None = None
    ) -> list[tuple[Row, list[Row]]]:
        """A payment's journals with their entries; another merchant's is not found."""
        parse_identifier(payment_id, "payment_id")

        def step(s: Store) -> list[tuple[Row, list[Row]]]:
            if merchant_id is not None:
                self._owned(s, payment_id, merchant_id)
            return s.journals_of(payment_id)

        return self._run(step)

    # -- marketplace ------------------------------------------------------------------------
    def lines_of(self, payment_id: str) -> list[Row]:
        """A split payment's lines (sellers, allocations, fees); empty for a plain payment."""
        return self._run(lambda s: s.lines_of(payment_id))

    def wallets(self) -> list[Row]:
        """Every seller's materialised balances, per currency."""
        return self._run(lambda s: s.wallets())

    def seller_ledger_balances(self) -> dict[tuple[str, str], dict[str, int]]:
        """Sellers' balances derived from the ledger alone: (seller, currency) -> buckets."""
        rows = self._run(lambda s: s.balances_with_prefix(ledger.SELLERS_PREFIX))
        balances: dict[tuple[str, str], dict[str, int]] = {}
        for account, currency, debits_minus_credits in rows:
            bucket, seller_id = ledger.seller_of(account)
            entry = balances.setdefault((seller_id, currency), {"pending": 0, "available": 0})
            entry[bucket] = -debits_minus_credits  # a seller's balance is credit-normal
        return balances

    def merchant_balance(self, merchant_id: str) -> dict[str, dict[str, int]]:
        """What the merchant is owed per currency: ``available`` (captured, net of
        refunds) and ``pending`` (authorizations held, not yet captured)."""
        available = ledger.merchant_payable(merchant_id)
        accounts = [available, ledger.holds_merchant_payable(merchant_id)]
        rows = self._run(lambda s: s.account_balances(accounts))
        balance: dict[str, dict[str, int]] = {}
        for account, currency, debits_minus_credits in rows:
            kind = "available" if account == available else "pending"
            entry = balance.setdefault(currency, {"available": 0, "pending": 0})
            entry[kind] = -debits_minus_credits  # payables are credit-normal
        return balance

    # -- outbox relay -------------------------------------------------------------------------
    def unpublished_events(self, limit: int = 100) -> list[OutboxEvent]:
        """Outbox events not yet published, oldest first (at-least-once relay)."""
        limit = min(limit, self.settings.page_size_max * 10)
        return self._run(
            lambda s: [
                OutboxEvent(row["id"], row["event_id"], row["type"], row["payment_id"],
                            row["history_seq"], dict(row["payload"]))
                for row in s.unpublished_outbox(limit)
            ]
        )  # fmt: skip

    def mark_published(self, events: list[OutboxEvent]) -> None:
        """Record that these events reached the bus; a crash before this republishes them."""
        self._run(lambda s: s.mark_outbox_published([e.sequence for e in events], self.clock.now()))
