"""Split payments inside the engine's steps: lines, their allocations and wallets.

Each function runs inside the caller's unit of work, next to the payment's
state change and its journal: it updates the lines, moves the sellers'
wallets, and returns the shares the journal posts, so the wallet and the
ledger move in the same transaction by the same amounts. The allocation rules
are in ``engine/domain/marketplace.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.adapters.store import Store
from engine.domain.entities import Payment
from engine.domain.ledger import LineShare
from engine.domain.marketplace import FeePlan, Split, allocate, fee_reversal_minor

Row = dict[str, Any]


def create_lines(
    s: Store, payment_id: str, splits: tuple[Split, ...], default_plan: FeePlan
) -> None:
    """One line per seller, each with the seller's fee plan as it is now."""
    for line_no, split in enumerate(splits):
        plan = s.fee_plan(split.seller_id)
        bps = default_plan.percent_bps if plan is None else int(plan["percent_bps"])
        fixed = default_plan.fixed_minor if plan is None else int(plan["fixed_minor"])
        s.insert_line({
            "payment_id": payment_id, "line_no": line_no, "seller_id": split.seller_id,
            "amount_minor": split.amount_minor, "fee_bps": bps, "fee_fixed_minor": fixed,
            "captured_minor": 0, "fee_minor": 0, "refunded_minor": 0,
            "fee_reversed_minor": 0, "disputed_minor": 0, "bucket": "pending",
        })  # fmt: skip


def _move_wallet(s: Store, line: Row, currency: str, delta_minor: int, at: datetime) -> None:
    if delta_minor:
        pending = delta_minor if line["bucket"] == "pending" else 0
        s.add_to_wallet(line["seller_id"], currency, pending, delta_minor - pending, at)


def capture_shares(s: Store, p: Payment, captured_minor: int, at: datetime) -> list[LineShare]:
    """Allocate a capture to the lines; each seller's net goes to its pending balance."""
    lines = s.lines_of(p.id)
    assert lines and len(lines) == p.lines_count, (p.id, len(lines))
    parts = allocate(captured_minor, [line["amount_minor"] for line in lines])
    shares = []
    for line, part in zip(lines, parts, strict=True):
        fee = FeePlan(line["fee_bps"], line["fee_fixed_minor"]).fee_minor(part)
        s.update_line(p.id, line["line_no"], captured_minor=part, fee_minor=fee)
        _move_wallet(s, line, p.currency, part - fee, at)
        shares.append(LineShare(line["seller_id"], line["bucket"], part - fee, fee))
    return shares


def refund_shares(s: Store, p: Payment, refund_minor: int, at: datetime) -> list[LineShare]:
    """Allocate a refund to what the lines still hold; reverse fees in proportion."""
    lines = s.lines_of(p.id)
    parts = allocate(
        refund_minor, [line["captured_minor"] - line["refunded_minor"] for line in lines]
    )
    shares = []
    for line, part in zip(lines, parts, strict=True):
        if part == 0:
            continue
        reversed_fee = fee_reversal_minor(
            line["fee_minor"], line["fee_reversed_minor"], line["captured_minor"],
            line["refunded_minor"], part,
        )  # fmt: skip
        s.update_line(p.id, line["line_no"], refunded_minor=line["refunded_minor"] + part,
                      fee_reversed_minor=line["fee_reversed_minor"] + reversed_fee)  # fmt: skip
        _move_wallet(s, line, p.currency, -(part - reversed_fee), at)
        shares.append(LineShare(line["seller_id"], line["bucket"], part - reversed_fee,
                                reversed_fee))  # fmt: skip
    return shares


def dispute_shares(s: Store, p: Payment, amount_minor: int, at: datetime) -> list[LineShare]:
    """The sellers bear a disputed amount, in proportion to what their lines hold.

    The platform keeps its fee; a dispute for more than the lines still hold
    (the provider's amount is the truth) leaves the excess to the platform.
    """
    lines = s.lines_of(p.id)
    held = [_held(line) for line in lines]
    borne = min(amount_minor, sum(held))
    parts = allocate(borne, held) if borne else [0] * len(lines)
    shares = []
    for line, part in zip(lines, parts, strict=True):
        if part:
            s.update_line(p.id, line["line_no"], disputed_minor=line["disputed_minor"] + part)
            _move_wallet(s, line, p.currency, -part, at)
            shares.append(LineShare(line["seller_id"], line["bucket"], part, 0))
    if amount_minor > borne:
        shares.append(LineShare(lines[0]["seller_id"], lines[0]["bucket"], 0, amount_minor - borne))
    return shares


def reinstatement_shares(
    s: Store, p: Payment, disputed_minor: int, at: datetime
) -> list[LineShare]:
    """A won dispute gives each seller back exactly what the withdrawal took."""
    shares = []
    for line in s.lines_of(p.id):
        part = line["disputed_minor"]
        if part:
            s.update_line(p.id, line["line_no"], disputed_minor=0)
            _move_wallet(s, line, p.currency, part, at)
            shares.append(LineShare(line["seller_id"], line["bucket"], part, 0))
    excess = disputed_minor - sum(share.seller_minor for share in shares)
    if excess > 0:
        first = s.lines_of(p.id)[0]
        shares.append(LineShare(first["seller_id"], first["bucket"], 0, excess))
    return shares


def _held(line: Row) -> int:
    """What a line still holds: captured, less refunded and disputed."""
    return int(line["captured_minor"] - line["refunded_minor"] - line["disputed_minor"])


def settlement_moves(s: Store, p: Payment, at: datetime) -> list[tuple[str, int]]:
    """Move each pending line to available: (seller, amount moved) per line moved."""
    moves = []
    for line in s.lines_of(p.id):
        if line["bucket"] != "pending":
            continue
        amount = _net_on_bucket(line)
        s.update_line(p.id, line["line_no"], bucket="available")
        if amount:
            s.add_to_wallet(line["seller_id"], p.currency, -amount, amount, at)
        moves.append((line["seller_id"], amount))
    return moves


def _net_on_bucket(line: Row) -> int:
    """What a line's seller holds for it: net captured, less net refunds and disputes."""
    captured_net = line["captured_minor"] - line["fee_minor"]
    refunded_net = line["refunded_minor"] - line["fee_reversed_minor"]
    return int(captured_net - refunded_net - line["disputed_minor"])
