"""The smaller resources: charges, disputes, balance, balance transactions, payouts, events
and webhook endpoints."""

from __future__ import annotations

from mock_psp.errors import InvalidRequestError, ParameterInvalid, ResourceMissing, UnexpectedState
from mock_psp.handlers import flows
from mock_psp.handlers.common import PAGE_PARAMS, JsonDict, get_or_404, page, read_expand, read_page
from mock_psp.handlers.payment_intents import merge_metadata, read_amount, read_currency
from mock_psp.params import ParamReader, ParamTree
from mock_psp.records import Dispute, Payout, WebhookEndpoint
from mock_psp.serialize import (
    balance_transaction_json,
    charge_json,
    payout_json,
    webhook_endpoint_json,
)
from mock_psp.truth import EffectKind
from mock_psp.world import World, day_start_s

WEBHOOK_ENDPOINTS_MAX = 16
EVENT_TYPES_MAX = 20  # Stripe's bound on GET /v1/events?types[]=...
EVIDENCE_FIELDS = (
    "uncategorized_text",
    "product_description",
    "customer_email_address",
    "customer_name",
    "receipt",
    "shipping_tracking_number",
    "service_date",
    "access_activity_log",
)
# Stripe's test-mode magic values: submitting them settles the dispute at once.
WINNING_EVIDENCE = "winning_evidence"
LOSING_EVIDENCE = "losing_evidence"


# --- charges --------------------------------------------------------------------------


def charge_retrieve(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    read_expand(ParamReader(tree, ("expand",)), ())
    return charge_json(get_or_404(world.state.charges, args["id"], "charge", "charge"))


def charge_list(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, (*PAGE_PARAMS, "payment_intent"))
    request = read_page(reader)
    pi_id = reader.string("payment_intent", length_max=255)
    read_expand(reader, ())
    items = [
        c for c in world.state.charges.values() if pi_id is None or c.payment_intent_id == pi_id
    ]
    return page(items, request, lambda c: c.id, charge_json, "/v1/charges")


# --- disputes -------------------------------------------------------------------------


def dispute_retrieve(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    read_expand(ParamReader(tree, ("expand",)), ())
    dispute = get_or_404(world.state.disputes, args["id"], "dispute", "dispute")
    return flows.dispute_view(world, dispute)


def dispute_list(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, (*PAGE_PARAMS, "payment_intent", "charge"))
    request = read_page(reader)
    pi_id = reader.string("payment_intent", length_max=255)
    charge_id = reader.string("charge", length_max=255)
    read_expand(reader, ())
    items = [
        d
        for d in world.state.disputes.values()
        if (pi_id is None or d.payment_intent_id == pi_id)
        and (charge_id is None or d.charge_id == charge_id)
    ]
    return page(
        items, request, lambda d: d.id, lambda d: flows.dispute_view(world, d), "/v1/disputes"
    )


def _open_dispute_or_400(world: World, dispute_id: str) -> Dispute:
    dispute = get_or_404(world.state.disputes, dispute_id, "dispute", "dispute")
    if dispute.status in ("won", "lost", "warning_closed"):
        raise UnexpectedState(
            f"This dispute is already closed ({dispute.status}).",
            code="dispute_already_closed",
        )
    return dispute


def dispute_update(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, ("evidence", "metadata", "submit", "expand"))
    evidence_reader = reader.sub("evidence", EVIDENCE_FIELDS)
    evidence = {}
    if evidence_reader is not None:
        for name in EVIDENCE_FIELDS:
            value = evidence_reader.string(name, length_max=20_000)
            if value is not None:
                evidence[name] = value
    metadata = reader.metadata()
    submit = reader.boolean("submit", default=True)
    read_expand(reader, ())
    dispute = _open_dispute_or_400(world, args["id"])
    previous = {"status": dispute.status}
    dispute.evidence.update(evidence)
    if metadata is not None:
        merge_metadata(dispute.metadata, metadata)
    if submit:
        dispute.submission_count += 1
        dispute.status = "warning_under_review" if dispute.is_inquiry else "under_review"
    world.emit("charge.dispute.updated", flows.dispute_view(world, dispute), previous)
    text = dispute.evidence.get("uncategorized_text")
    if submit and text in (WINNING_EVIDENCE, LOSING_EVIDENCE):
        flows.close_dispute(world, dispute, won=text == WINNING_EVIDENCE)
    return flows.dispute_view(world, dispute)


def dispute_close(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    """Accepting a dispute: the merchant gives up and loses it."""
    read_expand(ParamReader(tree, ("expand",)), ())
    dispute = _open_dispute_or_400(world, args["id"])
    flows.close_dispute(world, dispute, won=False)
    return flows.dispute_view(world, dispute)


# --- balance and balance transactions -------------------------------------------------


def balance_retrieve(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    ParamReader(tree, ())
    available, pending = world.balances()
    currencies = sorted(set(available) | set(pending))

    def entries(bucket: dict[str, int]) -> list[JsonDict]:
        return [
            {
                "amount": bucket.get(cur, 0),
                "currency": cur,
                "source_types": {"card": bucket.get(cur, 0)},
            }
            for cur in currencies
        ]

    return {
        "object": "balance",
        "available": entries(available),
        "livemode": False,
        "pending": entries(pending),
    }


def balance_transaction_retrieve(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    read_expand(ParamReader(tree, ("expand",)), ())
    bt = get_or_404(world.state.balance_transactions, args["id"], "balance transaction", "id")
    return balance_transaction_json(bt, world.now_s)


def balance_transaction_list(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, (*PAGE_PARAMS, "type", "source", "currency"))
    request = read_page(reader)
    type_ = reader.string("type", length_max=64)
    source = reader.string("source", length_max=255)
    currency = read_currency(reader, required=False)
    read_expand(reader, ())
    items = [
        bt
        for bt in world.state.balance_transactions.values()
        if (type_ is None or bt.type == type_)
        and (source is None or bt.source_id == source)
        and (currency is None or bt.currency == currency)
    ]
    return page(
        items,
        request,
        lambda bt: bt.id,
        lambda bt: balance_transaction_json(bt, world.now_s),
        "/v1/balance_transactions",
    )


# --- payouts --------------------------------------------------------------------------


def payout_create(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(
        tree,
        (
            "amount",
            "currency",
            "description",
            "metadata",
            "method",
            "statement_descriptor",
            "destination",
            "source_type",
            "expand",
        ),
    )
    amount = read_amount(reader, "amount", required=True)
    currency = read_currency(reader, required=True)
    assert amount is not None and currency is not None
    description = reader.string("description", length_max=1_000)
    metadata = reader.metadata() or {}
    reader.string("method", choices=("standard", "instant"))
    reader.string("statement_descriptor", length_max=22)
    reader.string("destination", length_max=255)
    reader.string("source_type", choices=("card", "bank_account", "fpx"))
    read_expand(reader, ())
    available, _ = world.balances()
    if amount > available.get(currency, 0):
        raise InvalidRequestError(
            "You have insufficient funds in your Stripe account for this transfer. Your "
            f"available balance is {available.get(currency, 0)} {currency}.",
            param="amount",
            code="balance_insufficient",
        )
    payout = Payout(
        id=world.new_id("po"),
        created_s=world.now_int,
        amount_minor=amount,
        currency=currency,
        arrival_date_s=day_start_s(world.now_s + world.config.payout_arrival_delay_s),
        status="pending",
        metadata=metadata,
        description=description,
    )
    bt = world.post_balance(
        amount_minor=-amount,
        fee_minor=0,
        currency=currency,
        type_="payout",
        category="payout",
        source_id=payout.id,
        description=description or "STRIPE PAYOUT",
    )
    payout.balance_transaction_id = bt.id
    world.state.payouts[payout.id] = payout
    world.record_effect(EffectKind.PAID_OUT, amount, currency, payout.id)
    world.add_timer(max(payout.arrival_date_s, world.now_s), "payout", payout.id)
    world.emit("payout.created", payout_json(payout))
    return payout_json(payout)


def payout_arrive(world: World, payout: Payout) -> None:
    if payout.status != "pending":
        return
    payout.status = "paid"
    world.emit("payout.updated", payout_json(payout), {"status": "pending"})
    world.emit("payout.paid", payout_json(payout))


def payout_fail(world: World, payout: Payout, failure_code: str) -> None:
    """The bank refused the payout: the money returns to the provider balance."""
    if payout.status != "pending":
        return
    payout.status = "failed"
    payout.failure_code = failure_code
    world.post_balance(
        amount_minor=payout.amount_minor,
        fee_minor=0,
        currency=payout.currency,
        type_="payout_failure",
        category="payout_reversal",
        source_id=payout.id,
        description="Payout failed",
    )
    world.record_effect(EffectKind.PAYOUT_REVERSED, payout.amount_minor, payout.currency, payout.id)
    world.emit("payout.updated", payout_json(payout), {"status": "pending"})
    world.emit("payout.failed", payout_json(payout))


def payout_cancel(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    read_expand(ParamReader(tree, ("expand",)), ())
    payout = get_or_404(world.state.payouts, args["id"], "payout", "payout")
    if payout.status != "pending":
        raise UnexpectedState(
            f"Payout {payout.id} has a status of {payout.status} and can no longer be canceled.",
            code="payout_not_cancelable",
        )
    payout.status = "canceled"
    world.post_balance(
        amount_minor=payout.amount_minor,
        fee_minor=0,
        currency=payout.currency,
        type_="payout_cancel",
        category="payout_reversal",
        source_id=payout.id,
        description="Payout canceled",
    )
    world.record_effect(EffectKind.PAYOUT_REVERSED, payout.amount_minor, payout.currency, payout.id)
    world.emit("payout.canceled", payout_json(payout))
    return payout_json(payout)


def payout_retrieve(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    read_expand(ParamReader(tree, ("expand",)), ())
    return payout_json(get_or_404(world.state.payouts, args["id"], "payout", "payout"))


def payout_list(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, (*PAGE_PARAMS, "status"))
    request = read_page(reader)
    status = reader.string("status", choices=("pending", "paid", "failed", "canceled"))
    read_expand(reader, ())
    items = [p for p in world.state.payouts.values() if status is None or p.status == status]
    return page(items, request, lambda p: p.id, payout_json, "/v1/payouts")


# --- events ---------------------------------------------------------------------------


def event_retrieve(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    read_expand(ParamReader(tree, ("expand",)), ())
    return get_or_404(world.state.events, args["id"], "event", "id").to_json()


def event_list(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    """Stripe's ``GET /v1/events``: newest first, by ``type`` (``*`` a wildcard) or by
    ``types`` (at most 20 exact names, not with ``type``), and ``created`` (a time, or a
    range of ``gt``/``gte``/``lt``/``lte``), paged by ``starting_after``/``ending_before``."""
    reader = ParamReader(tree, (*PAGE_PARAMS, "type", "types", "created"))
    request = read_page(reader)
    type_ = reader.string("type", length_max=100)
    types = reader.string_list("types")
    if types is not None and len(types) > EVENT_TYPES_MAX:
        raise ParameterInvalid("types", f"types takes at most {EVENT_TYPES_MAX} event names.")
    if type_ is not None and types:
        raise ParameterInvalid("types", "You may pass either type or types, but not both.")
    bounds = _created_bounds(reader, tree)
    read_expand(reader, ())
    wanted = set(types or [])

    def keep(event_type: str, created_s: int) -> bool:
        if type_ is not None and not _type_matches(type_, event_type):
            return False
        if wanted and event_type not in wanted:
            return False
        return _within(created_s, bounds)

    items = [e for e in world.state.events.values() if keep(e.type, e.created_s)]
    return page(items, request, lambda e: e.id, lambda e: e.to_json(), "/v1/events")


def _type_matches(pattern: str, event_type: str) -> bool:
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def _created_bounds(reader: ParamReader, tree: ParamTree) -> dict[str, int]:
    """``created``: an exact time (``created=1700000000``) or a range (``created[gte]=...``)."""
    if isinstance(tree.get("created"), str) and tree["created"] != "":
        exact = reader.integer("created", minimum=0)
        return {} if exact is None else {"gte": exact, "lte": exact}
    created = reader.sub("created", ("gt", "gte", "lt", "lte"))
    bounds = {}
    if created is not None:
        for op in ("gt", "gte", "lt", "lte"):
            value = created.integer(op, minimum=0)
            if value is not None:
                bounds[op] = value
    return bounds


def _within(created_s: int, bounds: dict[str, int]) -> bool:
    return (
        created_s > bounds.get("gt", -1)
        and created_s >= bounds.get("gte", -1)
        and created_s < bounds.get("lt", 2**62)
        and created_s <= bounds.get("lte", 2**62)
    )


# --- webhook endpoints ----------------------------------------------------------------


def webhook_endpoint_create(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(
        tree,
        ("url", "enabled_events", "description", "metadata", "api_version", "connect", "expand"),
    )
    url = reader.string("url", required=True, length_max=2_048)
    events = reader.string_list("enabled_events")
    if not events:
        raise ParameterInvalid(
            "enabled_events", "Missing required param: enabled_events.", code="parameter_missing"
        )
    description = reader.string("description", length_max=5_000)
    metadata = reader.metadata() or {}
    reader.string("api_version", length_max=32)
    reader.boolean("connect", default=False)
    read_expand(reader, ())
    assert url is not None
    if not url.startswith(("http://", "https://")):
        raise ParameterInvalid("url", "Invalid URL: must start with http:// or https://.")
    if len(world.state.webhook_endpoints) >= WEBHOOK_ENDPOINTS_MAX:
        raise InvalidRequestError(
            f"You have reached the maximum of {WEBHOOK_ENDPOINTS_MAX} test webhook endpoints.",
            param="url",
            code="webhook_endpoints_limit",
        )
    endpoint = WebhookEndpoint(
        id=world.new_id("we"),
        created_s=world.now_int,
        url=url,
        secret=world.ids.secret("whsec"),
        enabled_events=events,
        description=description,
        metadata=metadata,
    )
    world.state.webhook_endpoints[endpoint.id] = endpoint
    return webhook_endpoint_json(endpoint, with_secret=True)


def webhook_endpoint_update(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(
        tree, ("url", "enabled_events", "description", "metadata", "disabled", "expand")
    )
    url = reader.string("url", length_max=2_048)
    events = reader.string_list("enabled_events")
    description = reader.string("description", length_max=5_000)
    metadata = reader.metadata()
    disabled = reader.boolean("disabled", default=False) if reader.has("disabled") else None
    read_expand(reader, ())
    endpoint = get_or_404(world.state.webhook_endpoints, args["id"], "webhook_endpoint", "id")
    if url is not None and not url.startswith(("http://", "https://")):
        raise ParameterInvalid("url", "Invalid URL: must start with http:// or https://.")
    endpoint.url = url or endpoint.url
    endpoint.enabled_events = events or endpoint.enabled_events
    endpoint.description = description if description is not None else endpoint.description
    if metadata is not None:
        merge_metadata(endpoint.metadata, metadata)
    if disabled is not None:
        endpoint.enabled = not disabled
    return webhook_endpoint_json(endpoint, with_secret=False)


def webhook_endpoint_retrieve(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    read_expand(ParamReader(tree, ("expand",)), ())
    endpoint = get_or_404(world.state.webhook_endpoints, args["id"], "webhook_endpoint", "id")
    return webhook_endpoint_json(endpoint, with_secret=False)


def webhook_endpoint_list(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    reader = ParamReader(tree, PAGE_PARAMS)
    request = read_page(reader)
    read_expand(reader, ())
    return page(
        list(world.state.webhook_endpoints.values()),
        request,
        lambda e: e.id,
        lambda e: webhook_endpoint_json(e, with_secret=False),
        "/v1/webhook_endpoints",
    )


def webhook_endpoint_delete(world: World, tree: ParamTree, args: dict[str, str]) -> JsonDict:
    ParamReader(tree, ())
    if args["id"] not in world.state.webhook_endpoints:
        raise ResourceMissing("webhook_endpoint", args["id"])
    del world.state.webhook_endpoints[args["id"]]
    return {"id": args["id"], "object": "webhook_endpoint", "deleted": True}
