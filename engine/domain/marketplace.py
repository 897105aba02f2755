"""Marketplace money: split payments, platform fees and how money is allocated.

A split payment is one provider charge for the total and one internal payment
order (a *line*) per seller. The rules, all in integer minor units:

- **Platform fee** of a line: ``percent_bps`` basis points of the line's
  captured amount, rounded half up to the minor unit (``(a * bps + 5_000) //
  10_000``: a half unit goes to the platform), plus ``fixed_minor``, never
  more than the captured amount. Fee terms are copied onto each line when the
  payment is created: a later change of plan does not reprice it.
- **Capture** (full or partial) is allocated to lines in proportion to their
  amounts by the largest-remainder method: each line gets the floor of its
  exact share, and the minor units left over go one each to the lines with the
  largest remainders, ties to the earlier line. Shares always sum to the total.
- **Refunds and disputes** are allocated the same way, in proportion to what
  each line still holds (captured minus refunded). A refund reverses the
  platform fee in proportion (``fee * refunded / captured``, rounded half up);
  the last refund of a line reverses whatever fee is left, so a fully refunded
  line keeps no fee. A dispute reverses no fee: the seller bears the disputed
  amount and the platform keeps its fee.
- **Negative balances**: a refund or dispute is debited from the seller even
  when the wallet holds less (for example after a payout). The balance goes
  negative, a debt the seller's next earnings repay; no payout is made while
  the available balance is below the payout amount.

The provider's own fee on the charge is the platform's cost: it is booked on
the provider-fees account, never split among sellers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.domain.errors import InvalidRequest
from engine.domain.validation import parse_identifier

LINES_MAX = 50
BPS_MAX = 10_000
FIXED_FEE_MINOR_MAX = 10**9


@dataclass(frozen=True, slots=True)
class FeePlan:
    """A seller's platform fee: basis points of the amount plus a fixed part."""

    percent_bps: int = 0
    fixed_minor: int = 0

    def __post_init__(self) -> None:
        if (
            isinstance(self.percent_bps, bool)
            or not isinstance(self.percent_bps, int)
            or not (0 <= self.percent_bps <= BPS_MAX)
        ):
            raise InvalidRequest(
                "fee_plan_invalid", f"percent_bps must be an integer 0..{BPS_MAX}", "percent_bps"
            )
        if (
            isinstance(self.fixed_minor, bool)
            or not isinstance(self.fixed_minor, int)
            or not (0 <= self.fixed_minor <= FIXED_FEE_MINOR_MAX)
        ):
            raise InvalidRequest(
                "fee_plan_invalid", "fixed_minor must be a non-negative integer", "fixed_minor"
            )

    def fee_minor(self, amount_minor: int) -> int:
        """The platform fee on ``amount_minor`` (see the module's rounding rule)."""
        assert amount_minor >= 0, amount_minor
        if amount_minor == 0:
            return 0
        percent = (amount_minor * self.percent_bps + 5_000) // 10_000
        return min(amount_minor, percent + self.fixed_minor)


@dataclass(frozen=True, slots=True)
class Split:
    """One seller's part of a payment, as the client asks for it."""

    seller_id: str
    amount_minor: int


def parse_splits(value: object, total_minor: int) -> tuple[Split, ...]:
    """Splits from a request: distinct sellers, positive amounts adding up to the total."""
    if value is None or value == () or value == []:
        return ()
    if not isinstance(value, list | tuple) or len(value) > LINES_MAX:
        raise InvalidRequest(
            "splits_invalid", f"splits is a list of at most {LINES_MAX} lines", "splits"
        )
    splits = []
    for index, item in enumerate(value):
        field = f"splits[{index}]"
        seller_id: object
        amount: object
        if isinstance(item, Split):
            seller_id, amount = item.seller_id, item.amount_minor
        elif isinstance(item, dict):
            seller_id, amount = item.get("seller_id"), item.get("amount_minor")
        else:
            raise InvalidRequest("splits_invalid", "each split has seller_id and amount_minor",
                                 field)  # fmt: skip
        parse_identifier(seller_id, f"{field}.seller_id")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise InvalidRequest("splits_invalid", "a split's amount_minor is a positive integer",
                                 f"{field}.amount_minor")  # fmt: skip
        splits.append(Split(str(seller_id), int(amount)))
    if len({split.seller_id for split in splits}) != len(splits):
        raise InvalidRequest("splits_invalid", "each seller appears once in splits", "splits")
    total = sum(split.amount_minor for split in splits)
    if total != total_minor:
        raise InvalidRequest(
            "splits_total_mismatch",
            f"splits add up to {total} minor units, the payment is {total_minor}",
            "splits",
        )
    return tuple(splits)


def allocate(total_minor: int, weights: Sequence[int]) -> list[int]:
    """``total_minor`` in proportion to ``weights`` by the largest remainder; sums exactly."""
    assert total_minor >= 0 and weights and all(weight >= 0 for weight in weights), weights
    weight_sum = sum(weights)
    assert weight_sum > 0 or total_minor == 0, (total_minor, weights)
    if total_minor == 0:
        return [0] * len(weights)
    assert total_minor <= weight_sum, (total_minor, weight_sum)
    shares = [total_minor * weight // weight_sum for weight in weights]
    remainders = [total_minor * weight % weight_sum for weight in weights]
    left = total_minor - sum(shares)
    # Largest remainder first; on a tie, the earlier line.
    for index in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        shares[index] += 1
    assert sum(shares) == total_minor and all(
        share <= weight for share, weight in zip(shares, weights, strict=True)
    ), (shares, weights)
    return shares


def fee_reversal_minor(fee_minor: int, fee_reversed_minor: int, captured_minor: int,
                       refunded_before_minor: int, refund_minor: int) -> int:  # fmt: skip
    """The platform fee a refund of ``refund_minor`` on a line gives back."""
    fee_left = fee_minor - fee_reversed_minor
    assert 0 <= fee_left <= fee_minor and refund_minor >= 0
    if refund_minor == 0:
        return 0
    if refunded_before_minor + refund_minor >= captured_minor:
        return min(fee_left, refund_minor)  # the line's last refund: no fee stays behind
    proportional = (fee_minor * refund_minor * 2 + captured_minor) // (captured_minor * 2)
    return min(fee_left, proportional, refund_minor)
