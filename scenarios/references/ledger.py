"""The oracles' reference for the ledger: where each kind of journal may post, and what
each account must hold according to the provider.

Two references, both written from the money story, neither taken from the engine:

- ``POSTINGS``: per journal kind, the (account, side) pairs it may post, and the side
  its net movement on an account must be on (a capture's clearing entries net to a
  debit: the money captured exceeds the provider's fee). A journal of a kind not in
  the table, or an entry on a pair the kind does not allow, is a violation; so is a
  merchant's account posted by a journal of another merchant's payment.
- ``expected_balances``: an independent model of the provider's movements, read
  from the mock PSP's own records (balance transactions, payouts, intents) and the
  workload's orders (which are split among sellers). Per currency, to the minor unit,
  with a balance being debits minus credits as the chart says:

  ============================  ==========================================================
  account                       what the provider says it must hold
  ============================  ==========================================================
  psp_clearing                  the provider's balance (every balance transaction's net)
                                plus the payouts it has sent that have not landed (the
                                engine books those on payouts_in_transit)
  payouts_in_transit            minus the payouts the provider holds as pending
  provider_fees                 every fee the provider kept: charges' and disputes', less
                                dispute fees it returned
  disputes                      withdrawals less reinstatements on plain (unsplit) orders
  holds:psp_clearing            what the provider holds authorised and uncaptured
  merchant_payable:<m>          minus captured less refunded, on m's plain orders
  holds:merchant_payable:<m>    minus what the provider holds authorised for m
  sellers and platform fees     minus captured less refunded, withdrawn and reinstated on
  (one sum)                     split orders, plus the payouts that left (pending or paid)
  ============================  ==========================================================

  There is no refunds account in the chart: a refund debits the payable it came from
  (checked by the payables' lines). Each seller's pending and available balances and
  the platform's fees per merchant are the engine's split of money by its fee plans and
  line shares; the provider cannot tell them apart, so they are checked as one sum (F
  and I5 check the split). ``recon_adjustments`` is the engine's suspense account for
  its own corrections: the provider says nothing of it.

Timing: the engine learns some movements late (a fee looked up after a capture learned
by webhook, a payout's landing, a dispute's withdrawal); the check runs after
quiescence, when every one of them must have been booked.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.domain.ledger import Account

if TYPE_CHECKING:
    from mock_psp.core import ProviderCore
    from scenarios.sut import JournalRecord, PaymentRecord

DEBIT, CREDIT = "D", "C"
A = Account


@dataclass(frozen=True, slots=True)
class Posting:
    """What a journal kind may do: the (account, side) pairs it may post, and for some
    accounts the side its net movement in one journal must be on (or none)."""

    story: str
    allowed: frozenset[tuple[Account, str]]
    net: Mapping[Account, str] = field(default_factory=dict)


def _posting(
    story: str, *legs: tuple[Account, str], net: Mapping[Account, str] | None = None
) -> Posting:
    return Posting(story, frozenset(legs), dict(net or {}))


_HOLD = ((A.HOLDS_PSP_CLEARING, DEBIT), (A.HOLDS_MERCHANT_PAYABLE, CREDIT))
_RELEASE = ((A.HOLDS_MERCHANT_PAYABLE, DEBIT), (A.HOLDS_PSP_CLEARING, CREDIT))
_FEE = ((A.PROVIDER_FEES, DEBIT), (A.PSP_CLEARING, CREDIT))
_OWED = (A.MERCHANT_PAYABLE, A.SELLER_PENDING, A.SELLER_AVAILABLE, A.PLATFORM_FEES)

POSTINGS: dict[str, Posting] = {
    "authorization_hold": _posting("the provider holds the amount on the card", *_HOLD),
    "void": _posting("the hold is released", *_RELEASE),
    "capture": _posting(
        "the hold is released; the provider holds the captured money, owed to the merchant "
        "or to the sellers and the platform; the provider keeps its fee",
        *_RELEASE, (A.PSP_CLEARING, DEBIT), *((owed, CREDIT) for owed in _OWED), *_FEE,
        net={A.PSP_CLEARING: DEBIT, A.PROVIDER_FEES: DEBIT},
    ),
    "provider_fee": _posting("a fee learned late: the provider kept it", *_FEE),
    "refund": _posting(
        "the provider gives money back to the card, out of what was owed for it",
        *((owed, DEBIT) for owed in _OWED), (A.PSP_CLEARING, CREDIT),
    ),
    "dispute_withdrawal": _posting(
        "the provider withdraws the disputed amount (the platform bears a plain order's, "
        "the sellers and the platform a split's) and keeps a dispute fee",
        (A.DISPUTES, DEBIT), (A.SELLER_PENDING, DEBIT), (A.SELLER_AVAILABLE, DEBIT),
        (A.PLATFORM_FEES, DEBIT), *_FEE,
        net={A.PSP_CLEARING: CREDIT},
    ),
    "dispute_reinstatement": _posting(
        "a won dispute: the withdrawal comes back, and the dispute fee if returned",
        (A.PSP_CLEARING, DEBIT), (A.DISPUTES, CREDIT), (A.SELLER_PENDING, CREDIT),
        (A.SELLER_AVAILABLE, CREDIT), (A.PLATFORM_FEES, CREDIT), (A.PROVIDER_FEES, CREDIT),
        net={A.PSP_CLEARING: DEBIT},
    ),
    "settlement": _posting(
        "the provider settled the charge: sellers' shares move from pending to available "
        "(a disputed line's debt the other way)",
        (A.SELLER_PENDING, DEBIT), (A.SELLER_PENDING, CREDIT),
        (A.SELLER_AVAILABLE, DEBIT), (A.SELLER_AVAILABLE, CREDIT),
    ),
    "payout": _posting(
        "a payout leaves the seller's available balance for the money in transit",
        (A.SELLER_AVAILABLE, DEBIT), (A.PAYOUTS_IN_TRANSIT, CREDIT),
    ),
    "payout_paid": _posting(
        "the payout landed: it has left the provider's balance",
        (A.PAYOUTS_IN_TRANSIT, DEBIT), (A.PSP_CLEARING, CREDIT),
    ),
    "payout_returned": _posting(
        "the payout failed: the money goes back to the seller",
        (A.PAYOUTS_IN_TRANSIT, DEBIT), (A.SELLER_AVAILABLE, CREDIT),
    ),
    "recon_adjustment": _posting(
        "reconciliation corrects clearing (or a fee) against its suspense account",
        (A.PSP_CLEARING, DEBIT), (A.PSP_CLEARING, CREDIT),
        (A.RECON_ADJUSTMENTS, DEBIT), (A.RECON_ADJUSTMENTS, CREDIT),
        (A.PROVIDER_FEES, DEBIT), (A.PROVIDER_FEES, CREDIT),
    ),
}  # fmt: skip
# Per-owner accounts a payment's journal may touch only for the payment's own merchant.
MERCHANT_OWNED = frozenset({A.MERCHANT_PAYABLE, A.HOLDS_MERCHANT_PAYABLE, A.PLATFORM_FEES})


def _parse(name: str) -> tuple[Account | None, str | None]:
    """(account, owner) of the chart, or (None, None): a name the chart does not have."""
    try:
        return Account.parse(name)
    except AssertionError:
        return None, None


def _signed(side: str, amount_minor: int) -> int:
    return amount_minor if side == DEBIT else -amount_minor


def posting_violations(
    journals: Iterable[JournalRecord], merchants: Mapping[str, str]
) -> list[tuple[str, str]]:
    """[(journal id, detail)]: every entry its kind does not allow, every net movement on
    the wrong side, every merchant account not of the journal's payment's merchant
    (``merchants``: payment id -> merchant id)."""
    found: list[tuple[str, str]] = []
    for journal in journals:
        posting = POSTINGS.get(journal.kind)
        if posting is None:
            found.append((journal.id, f"journal kind {journal.kind!r} is not in the table"))
            continue
        merchant = merchants.get(journal.payment_id or "")
        net: dict[tuple[Account, str], int] = defaultdict(int)
        for entry in journal.entries:
            where = f"{journal.kind} {journal.id} entry {entry.id}"
            account, owner = _parse(entry.account)
            if account is None:
                found.append((journal.id, f"{where} posts {entry.account}: not in the chart"))
                continue
            if (account, entry.side) not in posting.allowed:
                side = "debits" if entry.side == DEBIT else "credits"
                found.append((journal.id, f"{where} {side} {entry.account} "
                                          f"{entry.amount_minor} {entry.currency}"))  # fmt: skip
            if account in MERCHANT_OWNED and merchant is not None and owner != merchant:
                found.append((journal.id, f"{where} posts {entry.account} for a payment of "
                                          f"{merchant}"))  # fmt: skip
            net[(account, entry.currency)] += _signed(entry.side, entry.amount_minor)
        for (account, currency), total in sorted(net.items()):
            want = posting.net.get(account)
            if want is not None and total != 0 and (total > 0) != (want == DEBIT):
                found.append((journal.id, f"{journal.kind} {journal.id} moves {account.value} "
                                          f"by {total} {currency}, not a net "
                                          f"{'debit' if want == DEBIT else 'credit'}"))  # fmt: skip
    return found


# -- the provider's movements, per account ----------------------------------------------
SELLERS_AND_PLATFORM = "sellers+platform_fees"  # the one sum the provider can predict
PLATFORM_ACCOUNTS = (
    A.PSP_CLEARING, A.PAYOUTS_IN_TRANSIT, A.PROVIDER_FEES, A.DISPUTES, A.HOLDS_PSP_CLEARING,
)  # fmt: skip
SPLIT_SUM = frozenset({A.SELLER_PENDING, A.SELLER_AVAILABLE, A.PLATFORM_FEES})
PER_MERCHANT = frozenset({A.MERCHANT_PAYABLE, A.HOLDS_MERCHANT_PAYABLE})
CAPTURED, REFUNDED = "charge", "refund"
WITHDRAWN, REINSTATED = "dispute", "dispute_reversal"
PAYOUT_OUT, PAYOUT_BACK = "payout", "payout_reversal"
KNOWN_CATEGORIES = frozenset({CAPTURED, REFUNDED, WITHDRAWN, REINSTATED, PAYOUT_OUT, PAYOUT_BACK})


@dataclass(frozen=True, slots=True)
class Owner:
    """Whom an intent's money is owed to: its merchant, and whether its order is split."""

    merchant_id: str | None
    split: bool


@dataclass(slots=True)
class Expected:
    """What each account (or sum of accounts) must hold, per currency, and what the model
    could not place (a movement it does not know)."""

    balances: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    unknown: list[str] = field(default_factory=list)

    def add(self, name: str, currency: str, amount_minor: int) -> None:
        self.balances[(name, currency)] += amount_minor


def owners(psp: ProviderCore, splits: Mapping[str, bool]) -> dict[str, Owner]:
    """Per provider intent: its merchant (the intent's metadata) and whether the order it
    pays is split among sellers (``splits``: the workload's order id -> split)."""
    order_key = psp.config.order_ref_key
    return {
        pi.id: Owner(pi.metadata.get("merchant_id"), splits.get(pi.metadata.get(order_key, ""),
                                                                False))
        for pi in psp.state.payment_intents.values()
    }  # fmt: skip


def expected_balances(psp: ProviderCore, owner_of: Mapping[str, Owner]) -> Expected:
    out = Expected()
    for bt in psp.state.balance_transactions.values():
        currency = bt.currency.upper()
        out.add(A.PSP_CLEARING, currency, bt.net_minor)
        out.add(A.PROVIDER_FEES, currency, bt.fee_minor)
        if bt.reporting_category not in KNOWN_CATEGORIES:
            out.unknown.append(f"{bt.id} ({bt.reporting_category})")
            continue
        if bt.reporting_category in (PAYOUT_OUT, PAYOUT_BACK):
            continue  # payouts: by their status below
        owner = owner_of.get(bt.payment_intent_id or "", Owner(None, False))
        _owed(out, owner, bt.reporting_category, -bt.amount_minor, currency)
    for payout in psp.state.payouts.values():
        currency = payout.currency.upper()
        if payout.status == "pending":
            out.add(A.PSP_CLEARING, currency, payout.amount_minor)
            out.add(A.PAYOUTS_IN_TRANSIT, currency, -payout.amount_minor)
        if payout.status in ("pending", "paid"):
            out.add(SELLERS_AND_PLATFORM, currency, payout.amount_minor)
    for pi in psp.state.payment_intents.values():
        if str(pi.status) == "requires_capture" and pi.amount_capturable_minor:
            currency, held = pi.currency.upper(), pi.amount_capturable_minor
            out.add(A.HOLDS_PSP_CLEARING, currency, held)
            merchant = owner_of[pi.id].merchant_id
            out.add(A.HOLDS_MERCHANT_PAYABLE.of(merchant or "?"), currency, -held)
    return out


def _owed(out: Expected, owner: Owner, category: str, signed_minor: int, currency: str) -> None:
    """A charge, refund or dispute movement of ``signed_minor`` (negative: money in) on the
    accounts that owe it: a plain order's merchant (the platform's disputes account for
    its disputes), or the split sum."""
    if owner.split:
        out.add(SELLERS_AND_PLATFORM, currency, signed_minor)
    elif category in (WITHDRAWN, REINSTATED):
        out.add(A.DISPUTES, currency, signed_minor)
    else:
        out.add(A.MERCHANT_PAYABLE.of(owner.merchant_id or "?"), currency, signed_minor)


def ledger_balances(journals: Iterable[JournalRecord]) -> dict[tuple[str, str], int]:
    """The ledger's balances under the model's names: platform accounts, per-merchant
    payables and holds, and the split sum; other accounts (suspense) by name."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for journal in journals:
        for entry in journal.entries:
            account, _ = _parse(entry.account)
            name = SELLERS_AND_PLATFORM if account in SPLIT_SUM else entry.account
            out[(name, entry.currency)] += _signed(entry.side, entry.amount_minor)
    return out


def balance_violations(
    expected: Expected, actual: Mapping[tuple[str, str], int]
) -> tuple[int, list[tuple[str, str]]]:
    """(balances checked, [(account, detail)]) for every account the model predicts."""
    checked, found = 0, []
    keys = set(expected.balances) | {key for key in actual if key[0] != A.RECON_ADJUSTMENTS}
    for name, currency in sorted(keys):
        checked += 1
        want, have = expected.balances.get((name, currency), 0), actual.get((name, currency), 0)
        if want != have:
            found.append((str(name), f"{currency}: the ledger holds {have}, the provider's "
                                f"movements say {want} (off by {have - want})"))  # fmt: skip
    for what in expected.unknown[:5]:
        found.append(("provider", f"a balance transaction the model does not know: {what}"))
    return checked, found


def splits_of(orders: Mapping[str, Any]) -> dict[str, bool]:
    """The workload's order id -> whether it is split among sellers."""
    return {order_id: bool(order.splits) for order_id, order in orders.items()}


def merchants_of(payments: Iterable[PaymentRecord]) -> dict[str, str]:
    return {p.id: p.merchant_id for p in payments}
