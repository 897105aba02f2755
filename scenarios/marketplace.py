"""Marketplace money in the simulation: sellers, their fee plans, split orders, and
the oracles that check them.

The oracles read what the system under test shows (its read API: payments with
their split lines, journals, wallets) and recompute from scratch, with their own
arithmetic (``decimal``, half up), never with the engine's helpers:

- **I5** (wallets, ``scenarios.oracles.check_wallets``): each seller's wallet
  equals its ledger balances, and no payout took more than was available.
- **F** (platform fees): each line's fee is its fee plan applied to its
  captured amount; fees given back never exceed fees charged, and a fully
  refunded line keeps none; the lines' captured and refunded amounts add up to
  the payment's.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

from engine.domain.marketplace import FeePlan, Split
from scenarios.schema import Marketplace

if TYPE_CHECKING:  # what the system under test shows; the world itself imports this module
    from scenarios.sut import LineRecord, PaymentRecord

VIOLATIONS_MAX = 50


def seller_ids(marketplace: Marketplace) -> list[str]:
    return [f"seller_{n:04d}" for n in range(marketplace.sellers)]


def fee_plans(marketplace: Marketplace) -> dict[str, FeePlan]:
    """Each seller's plan: the scenario's plans dealt out in turn."""
    plans = [FeePlan(plan.percent_bps, plan.fixed_minor) for plan in marketplace.fee_plans]
    return {seller: plans[n % len(plans)] for n, seller in enumerate(seller_ids(marketplace))}


def draw_splits(
    rng: random.Random, marketplace: Marketplace, amount_minor: int
) -> tuple[Split, ...]:
    """A split for an order, or none: 2..lines_max distinct sellers, random weights."""
    if rng.random() >= marketplace.split_rate:
        return ()
    lines = min(rng.randint(2, marketplace.lines_max), amount_minor, marketplace.sellers)
    if lines < 2:
        return ()
    sellers = rng.sample(seller_ids(marketplace), lines)
    cuts = sorted(rng.sample(range(1, amount_minor), lines - 1))
    bounds = [0, *cuts, amount_minor]
    return tuple(Split(seller, bounds[i + 1] - bounds[i]) for i, seller in enumerate(sellers))


def _half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def expected_fee_minor(captured_minor: int, bps: int, fixed_minor: int) -> int:
    if captured_minor == 0:
        return 0
    percent = _half_up(Decimal(captured_minor) * bps / 10_000)
    return min(captured_minor, percent + fixed_minor)


def fee_violations(payments: Iterable[PaymentRecord]) -> tuple[int, list[tuple[str, str]]]:
    """(lines checked, [(payment, detail)]) for F, over the payments with their lines."""
    violations: list[tuple[str, str]] = []
    checked = 0
    for payment in sorted(payments, key=lambda p: p.id):
        if not payment.lines:
            continue
        if payment.lines_count <= 0:
            violations.append((payment.id, "lines of a payment that is not split"))
            continue
        checked += len(payment.lines)
        violations += _line_violations(payment, payment.lines)
    return checked, violations[:VIOLATIONS_MAX]


def _line_violations(payment: PaymentRecord, lines: Sequence[LineRecord]) -> list[tuple[str, str]]:
    out = []
    captured = sum(line.captured_minor for line in lines)
    refunded = sum(line.refunded_minor for line in lines)
    if (captured, refunded) != (payment.captured_minor, payment.refunded_minor):
        detail = (f"lines hold captured {captured} refunded {refunded}, the payment "
                  f"{payment.captured_minor} and {payment.refunded_minor}")  # fmt: skip
        out.append((payment.id, detail))
    for line in lines:
        want = expected_fee_minor(line.captured_minor, line.fee_bps, line.fee_fixed_minor)
        if line.fee_minor != want:
            detail = (f"line {line.line_no} ({line.seller_id}): fee {line.fee_minor} on "
                      f"{line.captured_minor}, the plan says {want}")  # fmt: skip
            out.append((payment.id, detail))
        fully_refunded = line.captured_minor and line.refunded_minor == line.captured_minor
        if line.fee_reversed_minor > line.fee_minor or (
            fully_refunded and line.fee_reversed_minor != line.fee_minor
        ):
            out.append((payment.id, f"line {line.line_no}: {line.fee_reversed_minor} of fee "
                                    f"{line.fee_minor} given back after refunding "
                                    f"{line.refunded_minor} of {line.captured_minor}"))  # fmt: skip
    return out
