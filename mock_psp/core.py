"""The provider core: Stripe's dialect in, a response plus the fault decision out.

A driver (FastAPI server, simpy process, pytest) turns a request into an ``ApiRequest``
and calls ``ProviderCore.handle``; it gets an ``ApiResult``:

- ``response`` is the status, JSON body and headers to send, or ``None`` when the
  client must see a timeout (the request was lost before processing, or it was
  processed and the response was lost: ``processed`` tells which);
- ``latency_s`` is how long the driver should wait before answering (or, for a
  timeout, how long the provider worked);
- ``faults`` lists the fault kinds that fired for this request.

The core never sleeps, reads the wall clock or draws from global randomness: the
clock and a seeded ``random.Random`` are injected, and every stream (ids, API faults,
webhook faults, settlement salt) is derived from that seed. Webhooks go out through
``due_deliveries``/``ack``; time-driven work (async confirmations, pending refunds,
payouts arriving, requests arriving late) runs in ``tick``, which ``handle`` also
calls first.

Late arrivals (the fault plan's ``late_arrivals``): a request the client saw go
unanswered (lost before processing, 429, 503) may be parked and run on a later
``tick``, without faults, through the same idempotency check as any request. Until
then a lookup by its key says "not found", as a real provider's would: a client that
took "not found" for "failed" is refuted when it lands. A resend with the key and the
late arrival make one object between them: whichever comes second is a replay (or a
409 while the first is in flight).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mock_psp.admin import AdminApi
from mock_psp.clock import Clock
from mock_psp.errors import (
    ApiError,
    AuthenticationFailed,
    ProviderServerError,
    RateLimited,
    UnknownRoute,
)
from mock_psp.faultlog import FaultKind, FaultLog
from mock_psp.faults import ApiFaultDecision, ApiFaultPlanner, FaultPlanConfig, parse_fault_config
from mock_psp.handlers import flows, refunds, resources
from mock_psp.idempotency import (
    IdempotencyLookup,
    IdempotencyRecord,
    IdempotencyStore,
    check_key_format,
)
from mock_psp.ids import IdSource, substream
from mock_psp.params import decode_params, fingerprint, refuse_card_numbers
from mock_psp.records import API_VERSION, JsonDict, Payout
from mock_psp.routes import Route, match_route
from mock_psp.settlement import Served, SettlementReport, SettlementReporter
from mock_psp.truth import GroundTruth
from mock_psp.webhooks import Delivery, DeliveryScheduler
from mock_psp.world import ProviderConfig, ProviderState, World

TICK_BATCH_MAX = 100_000
PARKED_MAX = 100_000  # late arrivals waiting at once; past it a lost request stays lost


@dataclass(frozen=True, slots=True)
class ApiRequest:
    method: str
    path: str
    params: Mapping[str, object] | Iterable[tuple[str, object]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Call:
    """A request that passed the edge, auth, decoding and the idempotency check."""

    route: Route
    args: dict[str, str]
    path: str
    tree: dict[str, Any]
    fingerprint: str
    key: str | None
    request_id: str


@dataclass(slots=True)
class _Parked:
    """An unanswered request that will reach the provider late (``late_arrivals``)."""

    request: ApiRequest
    endpoint: str
    key: str
    not_found_seen: bool = False  # a lookup by its key said "not found" meanwhile


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: JsonDict
    headers: dict[str, str]
    text: str | None = None  # sent as is instead of ``body`` (a report download)


@dataclass(frozen=True, slots=True)
class ApiResult:
    response: ApiResponse | None
    latency_s: float
    endpoint: str
    processed: bool
    faults: tuple[FaultKind, ...] = ()
    replayed: bool = False

    @property
    def timed_out(self) -> bool:
        return self.response is None


class ProviderCore:
    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        config: ProviderConfig | None = None,
        faults: FaultPlanConfig | Mapping[str, Any] | None = None,
    ) -> None:
        self._clock = clock
        self.config = config or ProviderConfig()
        plan = _as_plan(faults)
        self.fault_log = FaultLog()
        self.state = ProviderState()
        self.truth = GroundTruth()
        self.idempotency = IdempotencyStore()
        # The streams are drawn in this order, a new one last: adding one shifts no other.
        self._ids = IdSource(substream(rng, "ids"))
        api_rng = substream(rng, "api-faults")
        webhook_rng = substream(rng, "webhook-faults")
        salt = f"{rng.getrandbits(128):032x}"
        late_rng = substream(rng, "late-arrivals")
        now_s = clock.now()
        self.planner = ApiFaultPlanner(plan, api_rng, now_s, late_rng)
        self.scheduler = DeliveryScheduler(
            self.state.webhook_endpoints,
            plan,
            webhook_rng,
            self.fault_log,
            now_s,
            payload_indent=self.config.webhook_payload_indent,
        )
        # Late arrivals waiting, by timer id and by key; what became of those that landed.
        self._parked: dict[str, _Parked] = {}
        self._parked_by_key: dict[str, list[_Parked]] = {}
        self._parked_seq = 0
        self.late_arrival_paths: Counter[str] = Counter()
        self.reporter = SettlementReporter(salt, self.fault_log)
        # Payout failures hash the payout id with a salt of their own: deterministic,
        # and drawing nothing from the streams the other faults use.
        self._payout_salt = hashlib.sha256(f"{salt}:payouts".encode()).hexdigest()
        self.world = World(self.state, self.config, self._ids, self.scheduler, self.truth)
        self.admin = AdminApi(self)

    # --- time and configuration -------------------------------------------------------

    def now(self) -> float:
        return self._clock.now()

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def faults(self) -> FaultPlanConfig:
        return self.planner.config

    def set_faults(self, faults: FaultPlanConfig | Mapping[str, Any]) -> FaultPlanConfig:
        """Swap the fault plan at run time; a bad config raises FaultConfigError, no change."""
        plan = _as_plan(faults)
        self.planner.reconfigure(plan, self.now())
        self.scheduler.reconfigure(plan)
        return plan

    def tick(self) -> int:
        """Run time-driven work that is due; returns how many timers fired."""
        now_s = self.now()
        timers = self.state.timers
        fired = 0
        self.world.begin(now_s, None, None)
        while timers and timers[0][0] <= now_s and fired < TICK_BATCH_MAX:
            _, _, kind, object_id = heapq.heappop(timers)
            if kind == "late_arrival":
                self._arrive(object_id)
                self.world.begin(now_s, None, None)  # the request's ids stay its own
            else:
                self._fire_timer(kind, object_id)
            fired += 1
        return fired

    def _fire_timer(self, kind: str, object_id: str) -> None:
        world = self.world
        if kind == "processing":
            pi = self.state.payment_intents[object_id]
            if pi.processing_until_s is None or pi.payment_method_id is None:
                return
            pm = self.state.payment_methods[pi.payment_method_id]
            decline, pi.processing_decline = pi.processing_decline, None
            pi.processing_until_s = None
            if decline is not None:
                flows.fail_payment(world, pi, pm, decline)
            else:
                flows.authorize(world, pi, pm)
        elif kind == "refund":
            refunds.settle(world, self.state.refunds[object_id])
        elif kind == "payout":
            self._payout_arrives(self.state.payouts[object_id])
        else:
            raise AssertionError(f"unknown timer kind {kind}")

    def _payout_arrives(self, payout: Payout) -> None:
        rate = self.planner.config.payouts.failure_rate
        digest = hashlib.sha256(f"{self._payout_salt}:{payout.id}".encode()).hexdigest()
        if payout.status == "pending" and int(digest[:13], 16) / float(1 << 52) < rate:
            self.fault_log.record(self.now(), FaultKind.PAYOUT_FAILED, payout.id)
            resources.payout_fail(self.world, payout, "account_closed")
        else:
            resources.payout_arrive(self.world, payout)

    # --- the API ------------------------------------------------------------------------

    def handle(self, request: ApiRequest) -> ApiResult:
        self.tick()
        now_s = self.now()
        method = request.method.upper()
        path = request.path.split("?", 1)[0]
        matched = match_route(method, path)
        if matched is None:
            error = _unknown_route(method, path)
            return ApiResult(self._error_response(error, None, None), 0.0, "unknown", False)
        route, args = matched
        decision = self.planner.decide(route.endpoint, now_s)
        early = self._edge_faults(decision, now_s)
        if early is not None:
            if route.mutates:
                self._maybe_park(request, route.endpoint, now_s)
            return early
        return self._admit(request, route, args, decision, now_s)

    def _admit(
        self,
        request: ApiRequest,
        route: Route,
        args: dict[str, str],
        decision: ApiFaultDecision,
        now_s: float,
    ) -> ApiResult:
        """A request past the edge: authenticate, decode, check its key, run it."""
        method = request.method.upper()
        path = request.path.split("?", 1)[0]
        headers = {key.lower(): value for key, value in request.headers.items()}
        request_id = self._ids.new("req")
        try:
            self._authenticate(headers)
            tree = decode_params(request.params)
            refuse_card_numbers(tree)
            key = headers.get("idempotency-key") if route.mutates else None
            request_fp = fingerprint(method, path, tree)
            if key is not None:
                check_key_format(key)
                replay = self.idempotency.replay_or_none(key, request_fp, now_s)
                if replay is not None:
                    return self._replay(replay, decision, now_s)
        except ApiError as error:
            response = self._error_response(error, request_id, None)
            return self._finish(decision, response, now_s, processed=False)
        call = _Call(route, args, path, tree, request_fp, key, request_id)
        return self._execute(call, decision, now_s)

    # --- late arrivals -------------------------------------------------------------------

    def _maybe_park(self, request: ApiRequest, endpoint: str, now_s: float) -> None:
        """An unanswered request that may reach the provider later all the same."""
        key = next((v for k, v in request.headers.items() if k.lower() == "idempotency-key"), None)
        if key is None or len(self._parked) >= PARKED_MAX:
            return
        delay_s = self.planner.late_arrival_s(endpoint)
        if delay_s is None:
            return
        self._parked_seq += 1
        timer_id = f"late_{self._parked_seq}"
        parked = _Parked(request, endpoint, key)
        self._parked[timer_id] = parked
        self._parked_by_key.setdefault(key, []).append(parked)
        self.world.add_timer(now_s + delay_s, "late_arrival", timer_id)

    def _arrive(self, timer_id: str) -> None:
        """A parked request lands: processed as any request would be, without faults."""
        parked = self._parked.pop(timer_id, None)
        if parked is None:
            return  # forgotten by a reset
        same_key = self._parked_by_key[parked.key]
        same_key.remove(parked)
        if not same_key:
            del self._parked_by_key[parked.key]
        now_s = self.now()
        request = parked.request
        matched = match_route(request.method.upper(), request.path.split("?", 1)[0])
        assert matched is not None, "only routed requests are parked"
        result = self._admit(request, *matched, ApiFaultDecision(parked.endpoint, 0.0), now_s)
        status = None if result.response is None else result.response.status
        if result.replayed:
            outcome = "replayed: the resend came first"
        elif result.processed:
            outcome = "processed"
        else:
            outcome = f"refused ({status})"
        if parked.not_found_seen:
            outcome += ", after a lookup said not found"
        self.late_arrival_paths[f"late arrival {outcome}"] += 1
        self.fault_log.record(now_s, FaultKind.API_LATE_ARRIVAL, parked.endpoint, outcome)

    def parked_count(self) -> int:
        """Requests still to arrive late."""
        return len(self._parked)

    def _edge_faults(self, decision: ApiFaultDecision, now_s: float) -> ApiResult | None:
        """Faults that stop a request before the API runs: lost, rate-limited, shed."""
        target = decision.endpoint
        if decision.latency_s > 0:
            # Counted, not logged one by one: it fires on every request under a latency plan.
            self.fault_log.count(FaultKind.API_LATENCY)
        if decision.timeout_before:
            self.fault_log.record(now_s, FaultKind.API_TIMEOUT_BEFORE, target)
            return ApiResult(
                None, decision.latency_s, target, False, (FaultKind.API_TIMEOUT_BEFORE,)
            )
        error: ApiError | None = None
        kind: FaultKind | None = None
        if decision.rate_limited:
            error, kind = RateLimited(), FaultKind.API_429
        elif decision.server_error_status == 503:
            error, kind = ProviderServerError(503), FaultKind.API_503
        if error is None or kind is None:
            return None
        self.fault_log.record(now_s, kind, target)
        response = self._error_response(error, self._ids.new("req"), None)
        return ApiResult(response, decision.latency_s, target, False, (kind,))

    def _execute(self, call: _Call, decision: ApiFaultDecision, now_s: float) -> ApiResult:
        route, key, request_id = call.route, call.key, call.request_id
        faults: list[FaultKind] = []
        world = self.world
        world.begin(now_s, request_id, key)
        world.forced_decline = decision.decline if route.confirms else None
        error: ApiError | None = None
        if decision.server_error_status == 500:
            # The endpoint started and failed: nothing changed, and the 500 is saved.
            error = ProviderServerError(500)
            faults.append(FaultKind.API_500)
            self.fault_log.record(now_s, FaultKind.API_500, route.endpoint)
            response = self._error_response(error, request_id, key)
        else:
            try:
                body = route.handler(world, call.tree, call.args)
                response = ApiResponse(200, body, self._headers(request_id, key))
            except ApiError as exc:
                error = exc
                response = self._error_response(exc, request_id, key)
        if world.forced_decline_used:
            faults.append(FaultKind.API_DECLINE)
            self.fault_log.record(now_s, FaultKind.API_DECLINE, route.endpoint)
        saved = error is None or error.saves_idempotent_result
        if key is not None and saved:
            self.idempotency.save(
                IdempotencyRecord(
                    key=key,
                    fingerprint=call.fingerprint,
                    method=route.method,
                    path=call.path,
                    request_id=request_id,
                    created_at_s=now_s,
                    completes_at_s=now_s + decision.latency_s,
                    response=self.idempotency.saved(response.status, response.body),
                )
            )
        processed = error is None or saved
        return self._finish(decision, response, now_s, processed=processed, faults=faults)

    def _finish(
        self,
        decision: ApiFaultDecision,
        response: ApiResponse,
        now_s: float,
        *,
        processed: bool,
        faults: list[FaultKind] | None = None,
        replayed: bool = False,
    ) -> ApiResult:
        fired = list(faults or [])
        if decision.timeout_after:
            fired.append(FaultKind.API_TIMEOUT_AFTER)
            self.fault_log.record(now_s, FaultKind.API_TIMEOUT_AFTER, decision.endpoint)
            return ApiResult(
                None, decision.latency_s, decision.endpoint, processed, tuple(fired), replayed
            )
        return ApiResult(
            response, decision.latency_s, decision.endpoint, processed, tuple(fired), replayed
        )

    def _replay(
        self, record: IdempotencyRecord, decision: ApiFaultDecision, now_s: float
    ) -> ApiResult:
        headers = self._headers(record.request_id, record.key)
        headers["Idempotent-Replayed"] = "true"
        response = ApiResponse(record.response.status, record.response.body, headers)
        return self._finish(decision, response, now_s, processed=False, replayed=True)

    def _authenticate(self, headers: dict[str, str]) -> None:
        key = _api_key(headers.get("authorization", ""))
        if key is None:
            raise AuthenticationFailed(
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY')."
            )
        allowed = self.config.api_keys
        valid = (
            key in allowed
            if allowed is not None
            else (key.startswith("sk_test_") and len(key) > len("sk_test_"))
        )
        if not valid:
            raise AuthenticationFailed(f"Invalid API Key provided: {_mask(key)}")

    def _headers(self, request_id: str | None, key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Stripe-Version": API_VERSION}
        if request_id is not None:
            headers["Request-Id"] = request_id
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def _error_response(
        self, error: ApiError, request_id: str | None, key: str | None
    ) -> ApiResponse:
        headers = self._headers(request_id, key)
        if error.http_status == 409 or error.http_status == 503:
            headers["Stripe-Should-Retry"] = "true"
        elif error.http_status == 500 and key is not None:
            # Retrying with the same key would only replay the saved 500.
            headers["Stripe-Should-Retry"] = "false"
        return ApiResponse(error.http_status, error.to_body(), headers)

    # --- webhooks, lookups, truth, settlement -------------------------------------------

    def due_deliveries(self, limit: int = 1_000) -> list[Delivery]:
        self.tick()
        return self.scheduler.due_deliveries(self.now(), limit)

    def ack(self, delivery: Delivery, status_code: int | None) -> None:
        self.scheduler.ack(delivery, status_code, self.now())

    def next_delivery_at_s(self) -> float | None:
        return self.scheduler.next_due_at_s()

    def next_timer_at_s(self) -> float | None:
        return self.state.timers[0][0] if self.state.timers else None

    def lookup_idempotency(self, key: str) -> IdempotencyLookup:
        """What became of the request with this key.

        Not found: the provider has not received it (safe to send again with the
        key: a late arrival then makes one object with the resend). Found with a
        saved 500: the endpoint failed before changing anything, and every retry
        with the key replays that 500.
        """
        found = self.idempotency.lookup(key, self.now())
        if not found.found:
            for parked in self._parked_by_key.get(key, ()):
                parked.not_found_seen = True  # refuted when it lands
        return found

    def settlement_download(self, start_s: int, end_s: int, report_format: str) -> Served:
        """One download of the report for ``[start_s, end_s)``, with the plan's download
        faults (``SettlementReporter.serve``)."""
        report = self.settlement_report(start_s, end_s)
        text = report.to_csv() if report_format == "csv" else json.dumps(report.to_json())
        return self.reporter.serve(text, len(report.rows), self.faults.settlement,
                                   f"{start_s}:{end_s}:{report_format}", self.now(),
                                   report_format)  # fmt: skip

    def settlement_report(self, start_s: int, end_s: int) -> SettlementReport:
        return self.reporter.build(
            self.state,
            self.faults.settlement,
            start_s=start_s,
            end_s=end_s,
            now_s=self.now(),
            order_ref_key=self.config.order_ref_key,
        )

    def reset(self) -> None:
        """Forget every object, key, effect and fault; random streams continue."""
        now_s = self.now()
        self.state.clear()
        self.truth.clear()
        self.idempotency.clear()
        self.fault_log.clear()
        self.scheduler.clear(now_s)
        self.planner.restart(now_s)
        self._parked.clear()
        self._parked_by_key.clear()
        self.late_arrival_paths.clear()


def _as_plan(faults: FaultPlanConfig | Mapping[str, Any] | None) -> FaultPlanConfig:
    if faults is None:
        return FaultPlanConfig()
    if isinstance(faults, FaultPlanConfig):
        return faults
    return parse_fault_config(faults)


def _api_key(authorization: str) -> str | None:
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.split(":", 1)[0] or None
    return None


def _mask(key: str) -> str:
    return f"{key[:8]}****{key[-4:]}" if len(key) > 12 else "****"


def _unknown_route(method: str, path: str) -> ApiError:
    return UnknownRoute(
        f"Unrecognized request URL ({method}: {path[:200]}). Please see https://stripe.com/docs "
        "or we can help at https://support.stripe.com/."
    )
