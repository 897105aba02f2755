"""Split payments' pure rules: fee rounding, allocations, and refusing bad splits."""

from __future__ import annotations

import hashlib
import json
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain.commands import CreatePayment
from engine.domain.errors import InvalidRequest
from engine.domain.marketplace import FeePlan, Split, allocate, fee_reversal_minor, parse_splits


def test_a_half_minor_unit_of_fee_goes_to_the_platform() -> None:
    # 2.5% of 1.00 is 2.5 cents: half up gives 3
    assert FeePlan(percent_bps=250).fee_minor(100) == 3
    # 2.5% of 0.20 is 0.5 cents: half up gives 1
    assert FeePlan(percent_bps=250).fee_minor(20) == 1
    assert FeePlan(percent_bps=250).fee_minor(19) == 0


def test_the_fixed_part_adds_and_the_fee_never_exceeds_the_amount() -> None:
    assert FeePlan(percent_bps=1_000, fixed_minor=30).fee_minor(1_000) == 130
    assert FeePlan(percent_bps=1_000, fixed_minor=30).fee_minor(20) == 20
    assert FeePlan(percent_bps=1_000, fixed_minor=30).fee_minor(0) == 0


@given(st.integers(0, 10**12), st.integers(0, 10_000), st.integers(0, 1_000))
def test_fee_matches_decimal_half_up(amount: int, bps: int, fixed: int) -> None:
    exact = (Decimal(amount) * bps / 10_000).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    expected = 0 if amount == 0 else min(amount, int(exact) + fixed)
    assert FeePlan(bps, fixed).fee_minor(amount) == expected


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**9), min_size=1, max_size=20))
def test_allocation_sums_exactly_and_stays_within_each_weight(
    total: int, weights: list[int]
) -> None:
    total = min(total, sum(weights))
    shares = allocate(total, weights)
    assert sum(shares) == total
    assert all(0 <= share <= weight for share, weight in zip(shares, weights, strict=True))
    exact = [Decimal(total) * w / sum(weights) if sum(weights) else 0 for w in weights]
    assert all(abs(share - e) < 1 for share, e in zip(shares, exact, strict=True))


def test_leftover_units_go_to_the_largest_remainders_then_the_earlier_line() -> None:
    assert allocate(10, [4, 4, 4]) == [4, 3, 3]
    assert allocate(100, [333, 333, 334]) == [33, 33, 34]
    assert allocate(7, [5, 5]) == [4, 3]


def test_the_last_refund_of_a_line_reverses_all_the_fee_left() -> None:
    assert fee_reversal_minor(30, 0, 1_000, 0, 500) == 15
    assert fee_reversal_minor(30, 15, 1_000, 500, 500) == 15
    assert fee_reversal_minor(31, 0, 1_000, 0, 500) == 16  # 15.5 rounds half up
    assert fee_reversal_minor(31, 16, 1_000, 500, 500) == 15


def test_splits_that_do_not_add_up_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as refused:
        CreatePayment("m_1", "k1", "o1", 1_000, "USD", "pm_card_visa",
                      splits=(Split("s_1", 600), Split("s_2", 300)))  # fmt: skip
    assert refused.value.code == "splits_total_mismatch"
    assert refused.value.field == "splits"


@pytest.mark.parametrize(
    ("splits", "field"),
    [
        ([{"seller_id": "s_1", "amount_minor": 0}], "splits[0].amount_minor"),
        ([{"seller_id": "", "amount_minor": 100}], "splits[0].seller_id"),
        ([{"seller_id": "s_1", "amount_minor": 50}, {"seller_id": "s_1", "amount_minor": 50}],
         "splits"),
        ([{"seller_id": "s_1", "amount_minor": "100"}], "splits[0].amount_minor"),
        ("s_1", "splits"),
    ],
)  # fmt: skip
def test_malformed_splits_are_refused(splits: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_splits(splits, 100)
    assert refused.value.field == field


def test_a_plain_payment_keeps_its_fingerprint_and_a_split_changes_it() -> None:
    plain = CreatePayment("m_1", "k1", "o1", 1_000, "USD", "pm_card_visa")
    split = CreatePayment("m_1", "k1", "o1", 1_000, "USD", "pm_card_visa",
                          splits=(Split("s_1", 1_000),))  # fmt: skip
    assert plain.fingerprint() != split.fingerprint()
    body = {
        "merchant_id": "m_1",
        "order_id": "o1",
        "amount_minor": 1_000,
        "currency": "USD",
        "payment_method": "pm_card_visa",
        "capture_method": "manual",
        "metadata": {},
    }
    canonical = json.dumps(["create_payment", body], sort_keys=True, separators=(",", ":"))
    assert plain.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()
