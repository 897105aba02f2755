"""Marketplace money in the simulation: sellers, their fee plans, split orders, and
the oracles that check them.

The oracles read the engine's tables directly and recompute from scratch, with
their own arithmetic (``decimal``, half up), never with the engine's helpers:

- **I5** (wallets) is ``engine.audit``'s own check, run here too: each seller's
  wallet equals its ledger balances, and no payout took more than was available.
- **F** (platform fees): each line's fee is its fee plan applied to its
  captured amount; fees given back never exceed fees charged, and a fully
  refunded line keeps none; the lines' captured and refunded amounts add up to
  the payment's.
"""

from __future__ import annotations

import random
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa

from engine.adapters import schema as t
from engine.domain.marketplace import FeePlan, Split
from scenarios.schema import Marketplace

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


def fee_violations(connection: sa.Connection) -> tuple[int, list[tuple[str, str]]]:
    """(lines checked, [(payment, detail)]) for F."""
    lines: dict[str, list[Any]] = defaultdict(list)
    for line in connection.execute(sa.select(t.payment_lines)):
        lines[line.payment_id].append(line)
    payments = {
        row.id: row
        for row in connection.execute(
            sa.select(
                t.payments.c.id, t.payments.c.captured_minor, t.payments.c.refunded_minor
            ).where(t.payments.c.lines_count > 0)
        )
    }
    violations: list[tuple[str, str]] = []
    checked = 0
    for payment_id in sorted(lines):
        payment = payments.get(payment_id)
        if payment is None:
            violations.append((payment_id, "lines of a payment that is not split"))
            continue
        checked += len(lines[payment_id])
        violations += _line_violations(payment, lines[payment_id])
    return checked, violations[:VIOLATIONS_MAX]


def _line_violations(payment: Any, lines: list[Any]) -> list[tuple[str, str]]:
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
