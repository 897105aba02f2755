"""The admin surface (``/_admin``): what a test harness does that a Stripe client cannot.

Register webhook endpoints, read and change the fault plan, reset, read ground truth,
the fault log and the settlement report, move provider time (like Stripe's test
clocks), complete 3D Secure, open and close disputes, and look up an idempotency key.
Admin calls bypass the fault plan and idempotency: they are the test's own hand.
Each operation is a Python method (for in-process drivers) and a path (for HTTP).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mock_psp.clock import AdvanceableClock
from mock_psp.errors import (
    ApiError,
    FaultConfigError,
    InvalidRequestError,
    ParameterInvalid,
    ParameterMissing,
    ResourceMissing,
    UnexpectedState,
    UnknownRoute,
)
from mock_psp.handlers import flows, resources
from mock_psp.handlers import payment_intents as pis
from mock_psp.handlers.common import get_or_404
from mock_psp.params import ParamReader, decode_params
from mock_psp.records import Charge, JsonDict
from mock_psp.world import World

if TYPE_CHECKING:
    from mock_psp.core import ApiResponse, ProviderCore

DISPUTE_REASONS = (
    "fraudulent",
    "product_not_received",
    "duplicate",
    "subscription_canceled",
    "product_unacceptable",
    "credit_not_processed",
    "general",
    "unrecognized",
)
AdminHandler = Callable[[Mapping[str, Any], dict[str, str]], "JsonDict | ApiResponse"]


class AdminApi:
    def __init__(self, core: ProviderCore) -> None:
        self._core = core
        self._routes: list[tuple[str, re.Pattern[str], AdminHandler]] = [
            ("GET", re.compile(r"^/_admin/faults$"), lambda p, a: self.faults()),
            ("POST", re.compile(r"^/_admin/faults$"), lambda p, a: self.set_faults(p)),
            ("PUT", re.compile(r"^/_admin/faults$"), lambda p, a: self.set_faults(p)),
            ("POST", re.compile(r"^/_admin/reset$"), lambda p, a: self.reset()),
            ("GET", re.compile(r"^/_admin/ground_truth$"), lambda p, a: core.truth.to_json()),
            ("GET", re.compile(r"^/_admin/fault_log$"), lambda p, a: self.fault_log()),
            ("GET", re.compile(r"^/_admin/settlement$"), lambda p, a: self.settlement(p)),
            ("POST", re.compile(r"^/_admin/clock/advance$"), lambda p, a: self._advance(p)),
            ("POST", re.compile(r"^/_admin/tick$"), lambda p, a: {"fired": core.tick()}),
            ("GET", re.compile(r"^/_admin/webhooks$"), lambda p, a: self.webhook_stats()),
            ("POST", re.compile(r"^/_admin/webhook_endpoints$"), lambda p, a: self._register(p)),
            (
                "POST",
                re.compile(r"^/_admin/payment_intents/(?P<id>\w+)/authenticate$"),
                lambda p, a: self._authenticate(p, a),
            ),
            ("POST", re.compile(r"^/_admin/disputes$"), lambda p, a: self._open_dispute(p)),
            (
                "POST",
                re.compile(r"^/_admin/disputes/(?P<id>\w+)/close$"),
                lambda p, a: self._close_dispute(p, a),
            ),
            (
                "GET",
                re.compile(r"^/_admin/idempotency/(?P<key>[^/]{1,255})$"),
                lambda p, a: core.lookup_idempotency(a["key"]).to_json(),
            ),
        ]

    # --- HTTP-shaped entry point ------------------------------------------------------

    def handle(self, method: str, path: str, params: Mapping[str, Any]) -> ApiResponse:
        from mock_psp.core import ApiResponse

        headers = {"Content-Type": "application/json"}
        for route_method, pattern, handler in self._routes:
            found = pattern.match(path)
            if found is None or route_method != method.upper():
                continue
            try:
                answer = handler(params, found.groupdict())
                if isinstance(answer, ApiResponse):
                    return answer
                return ApiResponse(200, answer, headers)
            except ApiError as error:
                return ApiResponse(error.http_status, error.to_body(), headers)
            except FaultConfigError as error:
                return ApiResponse(400, error.to_body(), headers)
        missing = UnknownRoute(f"Unrecognized admin URL ({method.upper()}: {path[:200]}).")
        return ApiResponse(404, missing.to_body(), headers)

    # --- operations -------------------------------------------------------------------

    def faults(self) -> JsonDict:
        return self._core.faults.model_dump(mode="json")

    def set_faults(self, config: Mapping[str, Any]) -> JsonDict:
        return self._core.set_faults(config).model_dump(mode="json")

    def reset(self) -> JsonDict:
        self._core.reset()
        return {"object": "reset", "ok": True}

    def fault_log(self) -> JsonDict:
        log = self._core.fault_log
        return {
            "object": "fault_log",
            "total": log.total(),
            "counts": log.counts(),
            "records": [record.to_json() for record in log.records()],
        }

    def settlement(self, params: Mapping[str, Any]) -> ApiResponse:
        """One download of the report (JSON as sent, CSV inside a JSON object), with the
        plan's download faults: garbled, or 503 when not ready."""
        from mock_psp.core import ApiResponse

        reader = ParamReader(decode_params(params), ("start", "end", "format"))
        start = reader.integer("start", required=True)
        end = reader.integer("end", required=True)
        fmt = reader.string("format", choices=("json", "csv")) or "json"
        assert start is not None and end is not None
        if end <= start:
            raise ParameterInvalid("end", "end must be after start.")
        served = self._core.settlement_download(start, end, fmt)
        headers = {"Content-Type": "application/json"}
        if served.status != 200:
            return ApiResponse(served.status, {}, headers, text=served.text)
        if fmt == "csv":
            return ApiResponse(200, {"object": "settlement_report_csv", "csv": served.text},
                               headers)  # fmt: skip
        if served.fault is None:
            return ApiResponse(200, json.loads(served.text), headers)
        return ApiResponse(200, {}, headers, text=served.text)  # garbled: sent as it is

    def advance_clock(self, delta_s: float) -> float:
        clock = self._core.clock
        if not isinstance(clock, AdvanceableClock):
            raise InvalidRequestError(
                "This provider's clock cannot be advanced.", code="clock_not_advanceable"
            )
        try:
            clock.advance(delta_s)
        except ValueError as exc:
            raise ParameterInvalid("seconds", str(exc)) from exc
        self._core.tick()
        return self._core.now()

    def _advance(self, params: Mapping[str, Any]) -> JsonDict:
        reader = ParamReader(decode_params(params), ("seconds",))
        seconds = reader.integer("seconds", required=True, minimum=0, maximum=400 * 86_400)
        assert seconds is not None
        return {"object": "clock", "now": self.advance_clock(float(seconds))}

    def webhook_stats(self) -> JsonDict:
        scheduler = self._core.scheduler
        return {
            "object": "webhook_stats",
            "pending": scheduler.pending_count(),
            "in_flight": scheduler.in_flight_count(),
            "next_due_at": scheduler.next_due_at_s(),
            "outcomes": dict(sorted(scheduler.stats.items())),
        }

    def register_webhook_endpoint(
        self, url: str, enabled_events: tuple[str, ...] = ("*",)
    ) -> JsonDict:
        """Returns the endpoint with its signing ``secret`` (only shown at creation)."""
        world = self._begin()
        tree = {"url": url, "enabled_events": list(enabled_events)}
        return resources.webhook_endpoint_create(world, tree, {})

    def _register(self, params: Mapping[str, Any]) -> JsonDict:
        reader = ParamReader(decode_params(params), ("url", "enabled_events"))
        url = reader.string("url", required=True, length_max=2_048)
        events = reader.string_list("enabled_events") or ["*"]
        assert url is not None
        return self.register_webhook_endpoint(url, tuple(events))

    def authenticate(self, payment_intent_id: str, succeed: bool = True) -> JsonDict:
        """The customer completes (or fails) 3D Secure for a requires_action intent."""
        return pis.authenticate(self._begin(), payment_intent_id, succeed)

    def _authenticate(self, params: Mapping[str, Any], args: dict[str, str]) -> JsonDict:
        reader = ParamReader(decode_params(params), ("outcome",))
        outcome = reader.string("outcome", choices=("succeed", "fail")) or "succeed"
        return self.authenticate(args["id"], outcome == "succeed")

    def open_dispute(
        self,
        reference: str,
        reason: str = "fraudulent",
        amount_minor: int | None = None,
        inquiry: bool = False,
    ) -> JsonDict:
        """Open a dispute on a captured charge, given the charge or its PaymentIntent id."""
        world = self._begin()
        charge = self._disputable_charge(reference)
        amount = charge.amount_captured_minor if amount_minor is None else amount_minor
        if not 0 < amount <= charge.amount_captured_minor:
            raise ParameterInvalid(
                "amount", "The dispute amount must be within the captured amount."
            )
        if reason not in DISPUTE_REASONS:
            raise ParameterInvalid(
                "reason", f"Invalid reason: must be one of {', '.join(DISPUTE_REASONS)}"
            )
        dispute = flows.open_dispute(world, charge, reason, inquiry, amount)
        return flows.dispute_view(world, dispute)

    def _disputable_charge(self, reference: str) -> Charge:
        state = self._core.state
        if reference.startswith("pi_"):
            pi = get_or_404(state.payment_intents, reference, "payment_intent", "payment_intent")
            charge = state.charges.get(pi.latest_charge_id or "")
        else:
            charge = state.charges.get(reference)
        if charge is None:
            raise ResourceMissing("charge", reference, param="charge")
        if not charge.captured or charge.dispute_id is not None:
            raise UnexpectedState(
                f"Charge {charge.id} cannot be disputed (not captured, or already disputed).",
                code="charge_not_disputable",
            )
        return charge

    def _open_dispute(self, params: Mapping[str, Any]) -> JsonDict:
        reader = ParamReader(
            decode_params(params), ("payment_intent", "charge", "reason", "amount", "inquiry")
        )
        reference = reader.string("payment_intent", length_max=255) or reader.string(
            "charge", length_max=255
        )
        if reference is None:
            raise ParameterMissing("payment_intent")
        return self.open_dispute(
            reference,
            reader.string("reason", choices=DISPUTE_REASONS) or "fraudulent",
            reader.integer("amount", minimum=1),
            reader.boolean("inquiry", default=False),
        )

    def close_dispute(self, dispute_id: str, won: bool) -> JsonDict:
        world = self._begin()
        dispute = get_or_404(self._core.state.disputes, dispute_id, "dispute", "dispute")
        if dispute.status in ("won", "lost", "warning_closed"):
            raise UnexpectedState(
                f"Dispute {dispute.id} is already closed.", code="dispute_already_closed"
            )
        flows.close_dispute(world, dispute, won)
        return flows.dispute_view(world, dispute)

    def _close_dispute(self, params: Mapping[str, Any], args: dict[str, str]) -> JsonDict:
        reader = ParamReader(decode_params(params), ("outcome",))
        outcome = reader.string("outcome", required=True, choices=("won", "lost"))
        return self.close_dispute(args["id"], outcome == "won")

    def _begin(self) -> World:
        core = self._core
        core.tick()
        core.world.begin(core.now(), None, None)
        return core.world
