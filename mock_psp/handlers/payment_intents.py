"""/v1/payment_intents: create, update, confirm, capture, cancel, retrieve, list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mock_psp.errors import (
    CardError,
    InvalidRequestError,
    ParameterInvalid,
    ParameterMissing,
    ResourceMissing,
    UnexpectedState,
)
from mock_psp.handlers import flows
from mock_psp.handlers.common import PAGE_PARAMS, JsonDict, get_or_404, page, read_expand, read_page
from mock_psp.money import AMOUNT_MINOR_MAX, SUPPORTED_CURRENCIES
from mock_psp.params import ParamReader, ParamTree
from mock_psp.records import PaymentIntent, PaymentMethod
from mock_psp.serialize import balance_transaction_json, charge_json, payment_intent_json
from mock_psp.states import CANCELABLE, CONFIRMABLE, PiStatus
from mock_psp.testcards import CardProfile, find_test_card
from mock_psp.world import World

CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
CANCEL_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")
SETUP_USAGES = ("on_session", "off_session")
EXPANDABLE = ("latest_charge", "latest_charge.balance_transaction")
_CONFIRM_PARAMS = (
    "payment_method",
    "return_url",
    "off_session",
    "payment_method_options",
    "error_on_requires_action",
    "setup_future_usage",
    "receipt_email",
    "use_stripe_sdk",
    "mandate_data",
    "capture_method",
)
CREATE_PARAMS = frozenset(
    {
        "amount",
        "currency",
        "capture_method",
        "confirm",
        "metadata",
        "description",
        "customer",
        "statement_descriptor",
        "statement_descriptor_suffix",
        "payment_method_types",
        "automatic_payment_methods",
        "confirmation_method",
        "expand",
        *_CONFIRM_PARAMS,
    }
)
CONFIRM_PARAMS = frozenset({*_CONFIRM_PARAMS, "expand"})
UPDATE_PARAMS = frozenset(
    {
        "amount",
        "currency",
        "metadata",
        "description",
        "receipt_email",
        "payment_method",
        "capture_method",
        "statement_descriptor",
        "setup_future_usage",
        "expand",
    }
)


@dataclass(frozen=True, slots=True)
class CreatePaymentIntent:
    amount_minor: int
    currency: str
    capture_method: str
    confirm: bool
    payment_method: str | None
    metadata: dict[str, str]
    description: str | None
    customer: str | None
    receipt_email: str | None
    statement_descriptor: str | None
    return_url: str | None
    setup_future_usage: str | None
    payment_method_types: list[str]
    payment_method_options: Any
    automatic_payment_methods: JsonDict | None
    expand: frozenset[str]


@dataclass(frozen=True, slots=True)
class ConfirmPaymentIntent:
    payment_method: str | None
    return_url: str | None
    capture_method: str | None
    receipt_email: str | None
    expand: frozenset[str]


@dataclass(frozen=True, slots=True)
class CapturePaymentIntent:
    amount_to_capture_minor: int | None
    metadata: dict[str, str] | None
    expand: frozenset[str]


def read_amount(reader: ParamReader, key: str, *, required: bool) -> int | None:
    amount = reader.integer(key, required=required, minimum=-(2**53))
    if amount is None:
        return None
    if amount < 1:
        raise ParameterInvalid(
            reader.name(key),
            f"This value must be greater than or equal to 1 ({key}).",
            code="amount_too_small",
        )
    if amount > AMOUNT_MINOR_MAX:
        raise ParameterInvalid(
            reader.name(key),
            f"Amount must be no more than {AMOUNT_MINOR_MAX} ({key}).",
            code="amount_too_large",
        )
    return amount


def read_currency(reader: ParamReader, *, required: bool) -> str | None:
    currency = reader.string("currency", required=required, length_max=3)
    if currency is None:
        return None
    if currency.lower() not in SUPPORTED_CURRENCIES:
        raise ParameterInvalid("currency", f"Invalid currency: {currency}.")
    return currency.lower()


def _read_automatic_pm(reader: ParamReader) -> JsonDict | None:
    sub = reader.sub("automatic_payment_methods", ("enabled", "allow_redirects"))
    if sub is None:
        return None
    allow = sub.string("allow_redirects", choices=("always", "never"))
    return {"enabled": sub.boolean("enabled", default=False), "allow_redirects": allow or "always"}


def parse_create(tree: ParamTree) -> CreatePaymentIntent:
    reader = ParamReader(tree, CREATE_PARAMS)
    amount = read_amount(reader, "amount", required=True)
    currency = read_currency(reader, required=True)
    assert amount is not None and currency is not None
    reader.string("confirmation_method", choices=("automatic", "manual"))
    reader.string("statement_descriptor_suffix", length_max=22)
    reader.boolean("off_session", default=False)
    reader.boolean("error_on_requires_action", default=False)
    reader.boolean("use_stripe_sdk", default=False)
    command = CreatePaymentIntent(
        amount_minor=amount,
        currency=currency,
        capture_method=reader.string("capture_method", choices=CAPTURE_METHODS) or "automatic",
        confirm=reader.boolean("confirm", default=False),
        payment_method=reader.string("payment_method", length_max=255),
        metadata=reader.metadata() or {},
        description=reader.string("description", length_max=1_000),
        customer=reader.string("customer", length_max=255),
        receipt_email=reader.string("receipt_email", length_max=800),
        statement_descriptor=reader.string("statement_descriptor", length_max=22),
        return_url=reader.string("return_url", length_max=2_048),
        setup_future_usage=reader.string("setup_future_usage", choices=SETUP_USAGES),
        payment_method_types=reader.string_list("payment_method_types", choices=("card",))
        or ["card"],
        payment_method_options=reader.any_value("payment_method_options"),
        automatic_payment_methods=_read_automatic_pm(reader),
        expand=read_expand(reader, EXPANDABLE),
    )
    if command.confirm and command.payment_method is None:
        raise ParameterMissing("payment_method")
    return command


def resolve_card(world: World, value: str, param: str = "payment_method") -> CardProfile:
    """Validate a payment method reference without creating anything."""
    existing = world.state.payment_methods.get(value)
    if existing is not None:
        return existing.card
    card = find_test_card(value)
    if card is None:
        raise ResourceMissing("PaymentMethod", value, param=param)
    return card


def materialize(world: World, value: str) -> PaymentMethod:
    """Like Stripe, a test token becomes a fresh ``pm_...`` object once used."""
    existing = world.state.payment_methods.get(value)
    if existing is not None:
        return existing
    card = find_test_card(value)
    assert card is not None, "resolve_card validated the token first"
    pm = PaymentMethod(id=world.new_id("pm"), card=card, created_s=world.now_int)
    world.state.payment_methods[pm.id] = pm
    return pm


def render(world: World, pi: PaymentIntent, expand: frozenset[str]) -> JsonDict:
    body = payment_intent_json(pi)
    nested = "latest_charge.balance_transaction" in expand
    if ("latest_charge" in expand or nested) and pi.latest_charge_id is not None:
        charge = world.state.charges[pi.latest_charge_id]
        body["latest_charge"] = charge_json(charge)
        if nested and charge.balance_transaction_id is not None:
            bt = world.state.balance_transactions[charge.balance_transaction_id]
            body["latest_charge"]["balance_transaction"] = balance_transaction_json(bt, world.now_s)
    return body


def create(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    command = parse_create(tree)
    if command.payment_method is not None:
        resolve_card(world, command.payment_method)
    pi = PaymentIntent(
        id=world.new_id("pi"),
        created_s=world.now_int,
        amount_minor=command.amount_minor,
        currency=command.currency,
        capture_method=command.capture_method,
        client_secret="",
        metadata=dict(command.metadata),
        description=command.description,
        customer=command.customer,
        receipt_email=command.receipt_email,
        statement_descriptor=command.statement_descriptor,
        return_url=command.return_url,
        setup_future_usage=command.setup_future_usage,
        payment_method_types=list(command.payment_method_types),
        payment_method_options=command.payment_method_options,
        automatic_payment_methods=command.automatic_payment_methods,
    )
    pi.client_secret = world.ids.secret(f"{pi.id}_secret")
    world.state.payment_intents[pi.id] = pi
    if command.payment_method is not None:
        pi.payment_method_id = materialize(world, command.payment_method).id
        flows.set_status(pi, PiStatus.REQUIRES_CONFIRMATION)
    world.emit("payment_intent.created", payment_intent_json(pi))
    if command.confirm:
        _run_confirmation(world, pi)
    return render(world, pi, command.expand)


def parse_confirm(tree: ParamTree) -> ConfirmPaymentIntent:
    reader = ParamReader(tree, CONFIRM_PARAMS)
    reader.boolean("off_session", default=False)
    reader.boolean("error_on_requires_action", default=False)
    reader.boolean("use_stripe_sdk", default=False)
    reader.string("setup_future_usage", choices=SETUP_USAGES)
    reader.any_value("payment_method_options")
    reader.any_value("mandate_data")
    return ConfirmPaymentIntent(
        payment_method=reader.string("payment_method", length_max=255),
        return_url=reader.string("return_url", length_max=2_048),
        capture_method=reader.string("capture_method", choices=CAPTURE_METHODS),
        receipt_email=reader.string("receipt_email", length_max=800),
        expand=read_expand(reader, EXPANDABLE),
    )


def confirm(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    command = parse_confirm(tree)
    pi = get_or_404(world.state.payment_intents, args["id"], "payment_intent", "intent")
    if pi.status not in CONFIRMABLE:
        raise UnexpectedState(
            f"You cannot confirm this PaymentIntent because it has a status of {pi.status}.",
            payment_intent=payment_intent_json(pi),
        )
    if command.payment_method is not None:
        resolve_card(world, command.payment_method)
    elif pi.payment_method_id is None:
        raise UnexpectedState(
            "You cannot confirm this PaymentIntent because it's missing a payment method. "
            "Update the PaymentIntent with a payment method and then confirm it again.",
            payment_intent=payment_intent_json(pi),
        )
    if command.payment_method is not None:
        pi.payment_method_id = materialize(world, command.payment_method).id
    pi.return_url = command.return_url or pi.return_url
    pi.capture_method = command.capture_method or pi.capture_method
    pi.receipt_email = command.receipt_email or pi.receipt_email
    _run_confirmation(world, pi)
    return render(world, pi, command.expand)


def _run_confirmation(world: World, pi: PaymentIntent) -> None:
    assert pi.payment_method_id is not None
    pm = world.state.payment_methods[pi.payment_method_id]
    forced = world.forced_decline
    decline = flows.attempt_payment(world, pi, pm, forced)
    if decline is None:
        return
    world.forced_decline_used = decline is forced
    raise CardError(
        decline.message,
        code=decline.code,
        decline_code=decline.decline_code,
        param=decline.param,
        charge_id=pi.latest_charge_id,
        payment_intent=payment_intent_json(pi),
    )


def parse_capture(tree: ParamTree) -> CapturePaymentIntent:
    reader = ParamReader(
        tree,
        (
            "amount_to_capture",
            "metadata",
            "final_capture",
            "statement_descriptor",
            "statement_descriptor_suffix",
            "expand",
        ),
    )
    reader.boolean("final_capture", default=True)
    reader.string("statement_descriptor", length_max=22)
    reader.string("statement_descriptor_suffix", length_max=22)
    return CapturePaymentIntent(
        amount_to_capture_minor=read_amount(reader, "amount_to_capture", required=False),
        metadata=reader.metadata(),
        expand=read_expand(reader, EXPANDABLE),
    )


def capture(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    command = parse_capture(tree)
    pi = get_or_404(world.state.payment_intents, args["id"], "payment_intent", "intent")
    if pi.status is not PiStatus.REQUIRES_CAPTURE:
        raise UnexpectedState(
            f"This PaymentIntent could not be captured because it has a status of {pi.status}. "
            "Only a PaymentIntent with one of the following statuses may be captured: "
            "requires_capture.",
            payment_intent=payment_intent_json(pi),
        )
    amount = command.amount_to_capture_minor
    if amount is None:
        amount = pi.amount_capturable_minor
    if amount > pi.amount_capturable_minor:
        raise InvalidRequestError(
            f"The amount_to_capture ({amount}) must be less than or equal to the "
            f"amount_capturable ({pi.amount_capturable_minor}).",
            param="amount_to_capture",
            code="amount_too_large",
        )
    if command.metadata is not None:
        merge_metadata(pi.metadata, command.metadata)
    flows.capture(world, pi, amount)
    return render(world, pi, command.expand)


def merge_metadata(target: dict[str, str], update: dict[str, str]) -> None:
    """Stripe's metadata update: keys merge, an empty value deletes its key."""
    if not update:
        target.clear()
        return
    for key, value in update.items():
        if value == "":
            target.pop(key, None)
        else:
            target[key] = value


def cancel(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, ("cancellation_reason", "expand"))
    reason = reader.string("cancellation_reason", choices=CANCEL_REASONS)
    expand = read_expand(reader, EXPANDABLE)
    pi = get_or_404(world.state.payment_intents, args["id"], "payment_intent", "intent")
    if pi.status not in CANCELABLE:
        raise UnexpectedState(
            f"You cannot cancel this PaymentIntent because it has a status of {pi.status}. "
            "Only a PaymentIntent with one of the following statuses may be canceled: "
            "requires_payment_method, requires_capture, requires_confirmation, requires_action.",
            payment_intent=payment_intent_json(pi),
        )
    flows.cancel(world, pi, reason)
    return render(world, pi, expand)


def update(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, UPDATE_PARAMS)
    amount = read_amount(reader, "amount", required=False)
    currency = read_currency(reader, required=False)
    metadata = reader.metadata()
    description = reader.string("description", length_max=1_000)
    receipt_email = reader.string("receipt_email", length_max=800)
    payment_method = reader.string("payment_method", length_max=255)
    capture_method = reader.string("capture_method", choices=CAPTURE_METHODS)
    reader.string("statement_descriptor", length_max=22)
    reader.string("setup_future_usage", choices=SETUP_USAGES)
    expand = read_expand(reader, EXPANDABLE)
    pi = get_or_404(world.state.payment_intents, args["id"], "payment_intent", "intent")
    money_change = amount is not None or currency is not None or payment_method is not None
    if money_change and pi.status not in CONFIRMABLE:
        raise UnexpectedState(
            f"You cannot update this PaymentIntent's amount, currency or payment method "
            f"because it has a status of {pi.status}.",
            payment_intent=payment_intent_json(pi),
        )
    if payment_method is not None:
        resolve_card(world, payment_method)
        pi.payment_method_id = materialize(world, payment_method).id
        if pi.status is PiStatus.REQUIRES_PAYMENT_METHOD:
            flows.set_status(pi, PiStatus.REQUIRES_CONFIRMATION)
    pi.amount_minor = amount or pi.amount_minor
    pi.currency = currency or pi.currency
    pi.capture_method = capture_method or pi.capture_method
    pi.description = description if description is not None else pi.description
    pi.receipt_email = receipt_email if receipt_email is not None else pi.receipt_email
    if metadata is not None:
        merge_metadata(pi.metadata, metadata)
    return render(world, pi, expand)


def retrieve(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, ("client_secret", "expand"))
    reader.string("client_secret", length_max=500)
    expand = read_expand(reader, EXPANDABLE)
    pi = get_or_404(world.state.payment_intents, args["id"], "payment_intent", "intent")
    return render(world, pi, expand)


def list_(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, (*PAGE_PARAMS, "customer"))
    request = read_page(reader)
    customer = reader.string("customer", length_max=255)
    expand = read_expand(reader, tuple(f"data.{name}" for name in EXPANDABLE))
    items = [
        pi
        for pi in world.state.payment_intents.values()
        if customer is None or pi.customer == customer
    ]
    inner = frozenset(name.removeprefix("data.") for name in expand)
    return page(
        items, request, lambda pi: pi.id, lambda pi: render(world, pi, inner), "/v1/payment_intents"
    )


def authenticate(world: World, pi_id: str, succeed: bool) -> JsonDict:
    """The customer finishing (or failing) 3D Secure: an admin call, like a test clock."""
    pi = get_or_404(world.state.payment_intents, pi_id, "payment_intent", "intent")
    if pi.status is not PiStatus.REQUIRES_ACTION or pi.payment_method_id is None:
        raise UnexpectedState(
            f"This PaymentIntent has a status of {pi.status}; only one that requires_action "
            "can be authenticated.",
            payment_intent=payment_intent_json(pi),
        )
    if not succeed:
        flows.fail_authentication(world, pi)
        return payment_intent_json(pi)
    pm = world.state.payment_methods[pi.payment_method_id]
    decline = pm.card.decline
    if decline is not None:
        flows.fail_payment(world, pi, pm, decline)
    else:
        flows.authorize(world, pi, pm)
    return payment_intent_json(pi)
