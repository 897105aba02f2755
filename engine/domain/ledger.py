"""Double-entry posting rules, two-phase like TigerBeetle's pending/post/void.

An authorization is a *pending hold*: it lives on the ``holds:`` twins of the
clearing and payable accounts. A capture releases the whole hold and posts the
captured part on the real accounts (so a partial capture releases the rest); a
void releases the hold; a refund reverses part of a posted capture; provider
fees are entries of their own. Balances are derived from entries: an account's
balance is its debits minus its credits, per currency.

Every journal balances per currency; ``Journal`` asserts it on construction,
before anything is written, and the database refuses an unbalanced one again.

The chart of accounts is ``Account``, one enum: the platform's own accounts by
name, and per-owner ones (a merchant's payable, a seller's pending and available
balances, the platform's fees per merchant) as ``<account>:<owner id>``
(``Account.MERCHANT_PAYABLE.of("m_1")``; ``Account.parse`` reads one back). The
``holds:`` twins carry authorizations (pending) until a capture or void.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from engine.domain.money import Money


class Side(StrEnum):
    DEBIT = "D"
    CREDIT = "C"


class Account(StrEnum):
    """The chart of accounts; the values are the names the entries carry."""

    PSP_CLEARING = "psp_clearing"  # what the provider holds for the platform
    HOLDS_PSP_CLEARING = "holds:psp_clearing"  # authorizations held at the provider
    PROVIDER_FEES = "provider_fees"  # the provider's fees: the platform's cost
    DISPUTES = "disputes"  # amounts the provider withdrew for open or lost disputes
    PAYOUTS_IN_TRANSIT = "payouts_in_transit"  # sent to sellers' banks, not yet landed
    RECON_ADJUSTMENTS = "recon_adjustments"  # reconciliation's suspense account
    # Per owner: "<name>:<owner id>".
    MERCHANT_PAYABLE = "merchant_payable"  # what a (plain) merchant is owed
    HOLDS_MERCHANT_PAYABLE = "holds:merchant_payable"  # a merchant's held authorizations
    PLATFORM_FEES = "platform_fees"  # the platform's fees on a merchant's split payments
    SELLER_PENDING = "seller_pending"  # a seller's share until its payment settles
    SELLER_AVAILABLE = "seller_available"  # a seller's share once settled: payable out

    def of(self, owner_id: str) -> str:
        """This per-owner account of ``owner_id``."""
        assert self in PER_OWNER, self
        return f"{self.value}:{owner_id}"

    @classmethod
    def parse(cls, account: str) -> tuple[Account, str | None]:
        """An entry's account name: (account, owner id or None)."""
        if account in _BY_NAME:
            return _BY_NAME[account], None
        for owned in _PER_OWNER_LONGEST_FIRST:  # "holds:merchant_payable:" before others
            if account.startswith(f"{owned.value}:"):
                return owned, account[len(owned.value) + 1 :]
        raise AssertionError(f"not an account of the chart: {account}")


PER_OWNER = frozenset({
    Account.MERCHANT_PAYABLE, Account.HOLDS_MERCHANT_PAYABLE, Account.PLATFORM_FEES,
    Account.SELLER_PENDING, Account.SELLER_AVAILABLE,
})  # fmt: skip
_BY_NAME: dict[str, Account] = {account.value: account for account in Account}
_PER_OWNER_LONGEST_FIRST = sorted(PER_OWNER, key=lambda account: -len(account.value))
# Every seller account's name starts so: the sellers' balances are read by it.
SELLERS_PREFIX = "seller_"
assert all(a.value.startswith(SELLERS_PREFIX) == a.name.startswith("SELLER_") for a in Account)

# The platform's accounts by their old names (adapters and checkers import these).
PSP_CLEARING = Account.PSP_CLEARING
PROVIDER_FEES = Account.PROVIDER_FEES
DISPUTES = Account.DISPUTES
HOLDS_PSP_CLEARING = Account.HOLDS_PSP_CLEARING
PAYOUTS_IN_TRANSIT = Account.PAYOUTS_IN_TRANSIT
RECON_ADJUSTMENTS = Account.RECON_ADJUSTMENTS


def merchant_payable(merchant_id: str) -> str:
    return Account.MERCHANT_PAYABLE.of(merchant_id)


def holds_merchant_payable(merchant_id: str) -> str:
    return Account.HOLDS_MERCHANT_PAYABLE.of(merchant_id)


@dataclass(frozen=True, slots=True)
class Entry:
    account: str
    side: Side
    amount_minor: int
    currency: str

    def signed_minor(self) -> int:
        return self.amount_minor if self.side is Side.DEBIT else -self.amount_minor


@dataclass(frozen=True, slots=True)
class Journal:
    kind: str
    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        assert len(self.entries) >= 2, "a journal has at least two entries"
        assert all(entry.amount_minor > 0 for entry in self.entries), self.entries
        assert journal_balances(self.entries), f"unbalanced journal {self}"


def journal_balances(entries: tuple[Entry, ...] | list[Entry]) -> bool:
    totals: dict[str, int] = defaultdict(int)
    for entry in entries:
        totals[entry.currency] += entry.signed_minor()
    return all(total == 0 for total in totals.values())


def _pair(debit: str, credit: str, money: Money) -> list[Entry]:
    if money.amount_minor == 0:
        return []
    assert money.amount_minor > 0, money
    return [
        Entry(debit, Side.DEBIT, money.amount_minor, money.currency),
        Entry(credit, Side.CREDIT, money.amount_minor, money.currency),
    ]


def authorization_hold(merchant_id: str, authorized: Money) -> Journal:
    entries = _pair(HOLDS_PSP_CLEARING, holds_merchant_payable(merchant_id), authorized)
    return Journal("authorization_hold", tuple(entries))


def hold_release(merchant_id: str, held: Money) -> list[Entry]:
    return _pair(holds_merchant_payable(merchant_id), HOLDS_PSP_CLEARING, held)


def capture(merchant_id: str, held: Money | None, captured: Money, fee: Money) -> Journal:
    """Post ``captured``; release the whole hold (if any); book the provider fee."""
    entries = hold_release(merchant_id, held) if held is not None else []
    entries += _pair(PSP_CLEARING, merchant_payable(merchant_id), captured)
    entries += _pair(PROVIDER_FEES, PSP_CLEARING, fee)
    return Journal("capture", tuple(entries))


def void(merchant_id: str, held: Money) -> Journal:
    return Journal("void", tuple(hold_release(merchant_id, held)))


def refund(merchant_id: str, refunded: Money) -> Journal:
    return Journal("refund", tuple(_pair(merchant_payable(merchant_id), PSP_CLEARING, refunded)))


def dispute_withdrawal(disputed: Money) -> Journal:
    return Journal("dispute_withdrawal", tuple(_pair(DISPUTES, PSP_CLEARING, disputed)))


def provider_fee(fee: Money) -> list[Entry]:
    """A provider fee learned after its capture: the provider kept it from the balance."""
    return _pair(PROVIDER_FEES, PSP_CLEARING, fee)


def dispute_fee(fee: Money, *, returned: bool) -> tuple[Entry, ...]:
    """The provider's dispute fee (a provider fee, the platform's cost), or its return on a win."""
    pair = (
        _pair(PSP_CLEARING, PROVIDER_FEES, fee)
        if returned
        else _pair(PROVIDER_FEES, PSP_CLEARING, fee)
    )
    return tuple(pair)


def dispute_reinstatement(disputed: Money) -> Journal:
    return Journal("dispute_reinstatement", tuple(_pair(PSP_CLEARING, DISPUTES, disputed)))


# -- marketplace (split payments) ----------------------------------------------------
# A seller's money sits on ``seller_pending:`` until the payment settles, then on
# ``seller_available:``; the platform's fees on ``platform_fees:<merchant>``.
SELLER_BUCKETS = {"pending": Account.SELLER_PENDING, "available": Account.SELLER_AVAILABLE}


def seller_account(seller_id: str, bucket: str) -> str:
    return SELLER_BUCKETS[bucket].of(seller_id)


def seller_of(account: str) -> tuple[str, str]:
    """A seller account's (bucket, seller id)."""
    kind, seller_id = Account.parse(account)
    assert seller_id is not None and kind in (Account.SELLER_PENDING, Account.SELLER_AVAILABLE)
    return kind.value.removeprefix(SELLERS_PREFIX), seller_id


def platform_fees(merchant_id: str) -> str:
    return Account.PLATFORM_FEES.of(merchant_id)


@dataclass(frozen=True, slots=True)
class LineShare:
    """One line's part of a money movement: the seller's amount and the platform's."""

    seller_id: str
    bucket: str
    seller_minor: int
    platform_minor: int


def split_capture(
    merchant_id: str, held: Money | None, captured: Money, fee: Money, shares: list[LineShare]
) -> Journal:
    """Post ``captured`` to the sellers (net of platform fees) and the platform."""
    currency = captured.currency
    assert sum(sh.seller_minor + sh.platform_minor for sh in shares) == captured.amount_minor
    entries = hold_release(merchant_id, held) if held is not None else []
    entries += _debit(PSP_CLEARING, captured)
    for share in shares:
        entries += _credit(seller_account(share.seller_id, share.bucket),
                           Money(share.seller_minor, currency))  # fmt: skip
    platform = sum(share.platform_minor for share in shares)
    entries += _credit(platform_fees(merchant_id), Money(platform, currency))
    entries += _pair(PROVIDER_FEES, PSP_CLEARING, fee)
    return Journal("capture", tuple(entries))


def split_refund(merchant_id: str, refunded: Money, shares: list[LineShare]) -> Journal:
    """Take a refund back from the sellers and, for the fee it reverses, the platform."""
    return Journal("refund", tuple(_from_lines(merchant_id, refunded, shares)))


def split_dispute_withdrawal(merchant_id: str, disputed: Money, shares: list[LineShare]) -> Journal:
    """The provider withdraws a disputed amount; the sellers bear it."""
    return Journal("dispute_withdrawal", tuple(_from_lines(merchant_id, disputed, shares)))


def split_dispute_reinstatement(
    merchant_id: str, reinstated: Money, shares: list[LineShare]
) -> Journal:
    """A won dispute: the mirror of the withdrawal."""
    withdrawal = _from_lines(merchant_id, reinstated, shares)
    mirrored = [Entry(e.account, _other(e.side), e.amount_minor, e.currency) for e in withdrawal]
    return Journal("dispute_reinstatement", tuple(mirrored))


def _from_lines(merchant_id: str, total: Money, shares: list[LineShare]) -> list[Entry]:
    currency = total.currency
    assert sum(sh.seller_minor + sh.platform_minor for sh in shares) == total.amount_minor
    entries: list[Entry] = []
    for share in shares:
        entries += _debit(seller_account(share.seller_id, share.bucket),
                          Money(share.seller_minor, currency))  # fmt: skip
    platform = sum(share.platform_minor for share in shares)
    entries += _debit(platform_fees(merchant_id), Money(platform, currency))
    entries += _credit(PSP_CLEARING, total)
    return entries


def _other(side: Side) -> Side:
    return Side.CREDIT if side is Side.DEBIT else Side.DEBIT


def _debit(account: str, money: Money) -> list[Entry]:
    assert money.amount_minor >= 0, money
    return (
        [Entry(account, Side.DEBIT, money.amount_minor, money.currency)]
        if money.amount_minor
        else []
    )


def _credit(account: str, money: Money) -> list[Entry]:
    assert money.amount_minor >= 0, money
    return (
        [Entry(account, Side.CREDIT, money.amount_minor, money.currency)]
        if money.amount_minor
        else []
    )


def split_settlement(currency: str, moves: list[tuple[str, int]]) -> Journal:
    """The provider settled the charge: each seller's share becomes available.

    ``moves`` are (seller, amount) with the amount the line holds on pending,
    which a dispute can make negative (then the debt moves to available).
    """
    entries: list[Entry] = []
    for seller_id, amount_minor in moves:
        pending, available = (
            seller_account(seller_id, "pending"),
            seller_account(seller_id, "available"),
        )
        if amount_minor > 0:
            entries += _pair(pending, available, Money(amount_minor, currency))
        elif amount_minor < 0:
            entries += _pair(available, pending, Money(-amount_minor, currency))
    return Journal("settlement", tuple(entries))


# -- payouts --------------------------------------------------------------------------
def payout_reserve(seller_id: str, amount: Money) -> Journal:
    """A payout leaves the seller's available balance the moment it is asked for."""
    return Journal(
        "payout", tuple(_pair(seller_account(seller_id, "available"), PAYOUTS_IN_TRANSIT, amount))
    )


def payout_paid(amount: Money) -> Journal:
    """The money landed in the bank: it has left the provider's balance."""
    return Journal("payout_paid", tuple(_pair(PAYOUTS_IN_TRANSIT, PSP_CLEARING, amount)))


def payout_returned(seller_id: str, amount: Money) -> Journal:
    """A payout that failed (or was refused) gives the money back to the seller."""
    available = seller_account(seller_id, "available")
    return Journal("payout_returned", tuple(_pair(PAYOUTS_IN_TRANSIT, available, amount)))
