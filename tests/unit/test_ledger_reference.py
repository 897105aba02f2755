"""The oracles' posting table (``scenarios.references.ledger``) against the engine's
posting rules: every journal the engine's rules write is allowed, a wrong one is named."""

from __future__ import annotations

from datetime import UTC, datetime

from engine.domain import ledger
from engine.domain.ledger import LineShare
from engine.domain.money import Money
from engine.service.read_api import EntryRecord, JournalRecord
from scenarios.references.ledger import POSTINGS, posting_violations

USD = "USD"


def record(journal: ledger.Journal, payment_id: str | None = "pay_1") -> JournalRecord:
    entries = tuple(
        EntryRecord(n, e.account, e.side.value, e.amount_minor, e.currency)
        for n, e in enumerate(journal.entries)
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return JournalRecord(f"jnl_{journal.kind}", journal.kind, payment_id, None, at, entries)


def engine_journals() -> list[ledger.Journal]:
    money, fee = Money(1_000, USD), Money(59, USD)
    shares = [LineShare("s_1", "pending", 600, 60), LineShare("s_2", "pending", 300, 40)]
    withdrawal = ledger.dispute_withdrawal(money)
    return [
        ledger.authorization_hold("m_1", money),
        ledger.capture("m_1", money, money, fee),
        ledger.split_capture("m_1", money, money, fee, shares),
        ledger.void("m_1", money),
        ledger.refund("m_1", Money(400, USD)),
        ledger.split_refund("m_1", money, shares),
        ledger.Journal(
            withdrawal.kind, withdrawal.entries + ledger.dispute_fee(fee, returned=False)
        ),
        ledger.split_dispute_withdrawal("m_1", money, shares),
        ledger.dispute_reinstatement(money),
        ledger.split_dispute_reinstatement("m_1", money, shares),
        ledger.Journal("provider_fee", tuple(ledger.provider_fee(fee))),
        ledger.split_settlement(USD, [("s_1", 600), ("s_2", -300)]),
        ledger.payout_reserve("s_1", money),
        ledger.payout_paid(money),
        ledger.payout_returned("s_1", money),
    ]


def test_every_journal_the_engines_rules_write_is_allowed_by_the_table() -> None:
    journals = [record(journal) for journal in engine_journals()]
    assert {journal.kind for journal in journals} <= set(POSTINGS)
    assert posting_violations(journals, {"pay_1": "m_1"}) == []


def test_a_landed_payout_booked_the_wrong_way_round_is_named() -> None:
    money = Money(1_000, USD)
    wrong = ledger.Journal(
        "payout_paid", tuple(ledger._pair(ledger.PSP_CLEARING, ledger.PAYOUTS_IN_TRANSIT, money))
    )
    found = posting_violations([record(wrong, None)], {})
    assert [detail.split(" entry ")[1] for _, detail in found] == [
        "0 debits psp_clearing 1000 USD", "1 credits payouts_in_transit 1000 USD",
    ]  # fmt: skip


def test_a_capture_credited_to_another_merchant_is_named() -> None:
    capture = record(ledger.capture("m_2", None, Money(1_000, USD), Money(59, USD)))
    found = posting_violations([capture], {"pay_1": "m_1"})
    assert len(found) == 1 and "merchant_payable:m_2 for a payment of m_1" in found[0][1]


def test_a_kind_the_table_does_not_know_is_named() -> None:
    odd = ledger.Journal("bonus", tuple(ledger._pair(ledger.PSP_CLEARING, ledger.DISPUTES,
                                                     Money(1, USD))))  # fmt: skip
    assert posting_violations([record(odd)], {}) == [
        ("jnl_bonus", "journal kind 'bonus' is not in the table")
    ]
