"""/v1/refunds: partial and repeated refunds of a captured charge; over-refunds refused."""

from __future__ import annotations

from dataclasses import dataclass

from mock_psp.errors import InvalidRequestError, ParameterMissing, UnexpectedState
from mock_psp.handlers.common import PAGE_PARAMS, JsonDict, get_or_404, page, read_expand, read_page
from mock_psp.handlers.payment_intents import merge_metadata, read_amount
from mock_psp.params import ParamReader, ParamTree
from mock_psp.records import Charge, Refund
from mock_psp.serialize import charge_json, refund_json
from mock_psp.truth import EffectKind
from mock_psp.world import World

REASONS = ("duplicate", "fraudulent", "requested_by_customer")
CREATE_PARAMS = (
    "payment_intent",
    "charge",
    "amount",
    "reason",
    "metadata",
    "expand",
    "instructions_email",
    "refund_application_fee",
    "reverse_transfer",
)


@dataclass(frozen=True, slots=True)
class CreateRefund:
    payment_intent: str | None
    charge: str | None
    amount_minor: int | None
    reason: str | None
    metadata: dict[str, str]


def parse_create(tree: ParamTree) -> CreateRefund:
    reader = ParamReader(tree, CREATE_PARAMS)
    reader.string("instructions_email", length_max=800)
    reader.boolean("refund_application_fee", default=False)
    reader.boolean("reverse_transfer", default=False)
    read_expand(reader, ())
    command = CreateRefund(
        payment_intent=reader.string("payment_intent", length_max=255),
        charge=reader.string("charge", length_max=255),
        amount_minor=read_amount(reader, "amount", required=False),
        reason=reader.string("reason", choices=REASONS),
        metadata=reader.metadata() or {},
    )
    if command.payment_intent is None and command.charge is None:
        raise ParameterMissing("payment_intent")
    return command


def _refundable_charge(world: World, command: CreateRefund) -> Charge:
    state = world.state
    if command.charge is not None:
        charge = get_or_404(state.charges, command.charge, "charge", "charge")
        if (
            command.payment_intent is not None
            and charge.payment_intent_id != command.payment_intent
        ):
            raise InvalidRequestError(
                f"Charge {charge.id} does not belong to PaymentIntent {command.payment_intent}.",
                param="charge",
            )
    else:
        assert command.payment_intent is not None
        pi = get_or_404(
            state.payment_intents, command.payment_intent, "payment_intent", "payment_intent"
        )
        if pi.latest_charge_id is None:
            raise UnexpectedState(
                f"PaymentIntent {pi.id} does not have a successful charge to refund.",
                code="charge_not_refundable",
                param="payment_intent",
            )
        charge = state.charges[pi.latest_charge_id]
    if not charge.captured:
        raise UnexpectedState(
            f"Charge {charge.id} has not been captured; cancel its PaymentIntent instead.",
            code="charge_not_refundable",
            param="charge",
        )
    if charge.dispute_id is not None and not state.disputes[charge.dispute_id].is_inquiry:
        raise UnexpectedState(
            f"Charge {charge.id} has been charged back; cannot issue a refund.",
            code="charge_disputed",
            param="charge",
        )
    return charge


def create(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    command = parse_create(tree)
    charge = _refundable_charge(world, command)
    remaining_minor = charge.amount_captured_minor - charge.amount_refunded_minor
    amount = remaining_minor if command.amount_minor is None else command.amount_minor
    if remaining_minor <= 0:
        raise UnexpectedState(
            f"Charge {charge.id} has already been refunded.",
            code="charge_already_refunded",
            param="charge",
        )
    if amount > remaining_minor:
        raise InvalidRequestError(
            f"Refund amount ({amount}) is greater than unrefunded amount on charge "
            f"({remaining_minor}).",
            param="amount",
            code="amount_too_large",
        )
    refund = _perform(world, charge, amount, command)
    return refund_json(refund)


def _perform(world: World, charge: Charge, amount: int, command: CreateRefund) -> Refund:
    delay_s = world.config.refund_settle_delay_s
    refund = Refund(
        id=world.new_id("re"),
        created_s=world.now_int,
        amount_minor=amount,
        currency=charge.currency,
        charge_id=charge.id,
        payment_intent_id=charge.payment_intent_id,
        status="pending" if delay_s > 0 else "succeeded",
        reason=command.reason,
        metadata=dict(command.metadata),
    )
    bt = world.post_balance(
        amount_minor=-amount,
        fee_minor=0,
        currency=charge.currency,
        type_="refund",
        category="refund",
        source_id=refund.id,
        description="REFUND FOR CHARGE",
        payment_intent_id=charge.payment_intent_id,
        charge_id=charge.id,
    )
    refund.balance_transaction_id = bt.id
    world.state.refunds[refund.id] = refund
    charge.amount_refunded_minor += amount
    pi = world.state.payment_intents[charge.payment_intent_id]
    world.record_effect(EffectKind.REFUNDED, amount, charge.currency, refund.id, pi)
    world.emit("refund.created", refund_json(refund))
    world.emit("charge.refunded", charge_json(charge))
    if delay_s > 0:
        refund.settles_at_s = world.now_s + delay_s
        world.add_timer(refund.settles_at_s, "refund", refund.id)
    return refund


def settle(world: World, refund: Refund) -> None:
    """A pending refund reaching the card network (timer)."""
    if refund.status != "pending":
        return
    refund.status = "succeeded"
    world.emit("refund.updated", refund_json(refund), {"status": "pending"})


def update(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, ("metadata", "expand"))
    metadata = reader.metadata()
    read_expand(reader, ())
    refund = get_or_404(world.state.refunds, args["id"], "refund", "refund")
    if metadata is not None:
        previous = {"metadata": dict(refund.metadata)}
        merge_metadata(refund.metadata, metadata)
        world.emit("refund.updated", refund_json(refund), previous)
    return refund_json(refund)


def retrieve(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    read_expand(ParamReader(tree, ("expand",)), ())
    return refund_json(get_or_404(world.state.refunds, args["id"], "refund", "refund"))


def list_(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, (*PAGE_PARAMS, "payment_intent", "charge"))
    request = read_page(reader)
    pi_id = reader.string("payment_intent", length_max=255)
    charge_id = reader.string("charge", length_max=255)
    read_expand(reader, ())
    items = [
        r
        for r in world.state.refunds.values()
        if (pi_id is None or r.payment_intent_id == pi_id)
        and (charge_id is None or r.charge_id == charge_id)
    ]
    return page(items, request, lambda r: r.id, refund_json, "/v1/refunds")
