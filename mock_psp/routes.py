"""Stripe's paths, as a table: (method, path pattern) -> endpoint name and handler.

Endpoint names (``payment_intents.confirm``) are what fault rules target, with shell
patterns (``payment_intents.*``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mock_psp.handlers import payment_intents as pis
from mock_psp.handlers import refunds, resources
from mock_psp.params import ParamTree
from mock_psp.world import World

Handler = Callable[[World, ParamTree, dict[str, str]], dict[str, Any]]
_ID = r"(?P<id>[A-Za-z0-9_]{1,255})"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str
    handler: Handler
    confirms: bool = False  # an injected decline applies here

    @property
    def mutates(self) -> bool:
        return self.method in ("POST", "DELETE")


def _route(
    method: str, path: str, endpoint: str, handler: Handler, confirms: bool = False
) -> Route:
    return Route(
        method, re.compile("^" + path.replace("{id}", _ID) + "$"), endpoint, handler, confirms
    )


ROUTES: tuple[Route, ...] = (
    _route("POST", "/v1/payment_intents", "payment_intents.create", pis.create, confirms=True),
    _route("GET", "/v1/payment_intents", "payment_intents.list", pis.list_),
    _route("GET", "/v1/payment_intents/{id}", "payment_intents.retrieve", pis.retrieve),
    _route("POST", "/v1/payment_intents/{id}", "payment_intents.update", pis.update),
    _route(
        "POST",
        "/v1/payment_intents/{id}/confirm",
        "payment_intents.confirm",
        pis.confirm,
        confirms=True,
    ),
    _route("POST", "/v1/payment_intents/{id}/capture", "payment_intents.capture", pis.capture),
    _route("POST", "/v1/payment_intents/{id}/cancel", "payment_intents.cancel", pis.cancel),
    _route("GET", "/v1/charges", "charges.list", resources.charge_list),
    _route("GET", "/v1/charges/{id}", "charges.retrieve", resources.charge_retrieve),
    _route("POST", "/v1/refunds", "refunds.create", refunds.create),
    _route("GET", "/v1/refunds", "refunds.list", refunds.list_),
    _route("GET", "/v1/refunds/{id}", "refunds.retrieve", refunds.retrieve),
    _route("POST", "/v1/refunds/{id}", "refunds.update", refunds.update),
    _route("GET", "/v1/disputes", "disputes.list", resources.dispute_list),
    _route("GET", "/v1/disputes/{id}", "disputes.retrieve", resources.dispute_retrieve),
    _route("POST", "/v1/disputes/{id}", "disputes.update", resources.dispute_update),
    _route("POST", "/v1/disputes/{id}/close", "disputes.close", resources.dispute_close),
    _route("GET", "/v1/balance", "balance.retrieve", resources.balance_retrieve),
    _route(
        "GET",
        "/v1/balance_transactions",
        "balance_transactions.list",
        resources.balance_transaction_list,
    ),
    _route(
        "GET",
        "/v1/balance_transactions/{id}",
        "balance_transactions.retrieve",
        resources.balance_transaction_retrieve,
    ),
    _route("POST", "/v1/payouts", "payouts.create", resources.payout_create),
    _route("GET", "/v1/payouts", "payouts.list", resources.payout_list),
    _route("GET", "/v1/payouts/{id}", "payouts.retrieve", resources.payout_retrieve),
    _route("POST", "/v1/payouts/{id}/cancel", "payouts.cancel", resources.payout_cancel),
    _route("GET", "/v1/events", "events.list", resources.event_list),
    _route("GET", "/v1/events/{id}", "events.retrieve", resources.event_retrieve),
    _route(
        "POST",
        "/v1/webhook_endpoints",
        "webhook_endpoints.create",
        resources.webhook_endpoint_create,
    ),
    _route(
        "GET", "/v1/webhook_endpoints", "webhook_endpoints.list", resources.webhook_endpoint_list
    ),
    _route(
        "GET",
        "/v1/webhook_endpoints/{id}",
        "webhook_endpoints.retrieve",
        resources.webhook_endpoint_retrieve,
    ),
    _route(
        "POST",
        "/v1/webhook_endpoints/{id}",
        "webhook_endpoints.update",
        resources.webhook_endpoint_update,
    ),
    _route(
        "DELETE",
        "/v1/webhook_endpoints/{id}",
        "webhook_endpoints.delete",
        resources.webhook_endpoint_delete,
    ),
)

ENDPOINT_NAMES: tuple[str, ...] = tuple(route.endpoint for route in ROUTES)


def match_route(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        if route.method != method:
            continue
        found = route.pattern.match(path)
        if found is not None:
            return route, found.groupdict()
    return None
