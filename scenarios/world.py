"""The simulated world: the real engine and the real mock PSP core in virtual time.

One simpy environment holds everything. The engine runs unchanged on an
in-memory SQLite database (``scenarios.memdb``); the provider core runs unchanged; this module is
only the driver between them: it carries provider calls (with the fault plan's
latencies, timeouts and errors), webhook deliveries (through the engine's own
signature check), customers and their clients, the recovery worker, and the
engine's own faults (crashes between steps, database outages).

The world asks the provider only for the engine's operations
(``engine.service.driver``): ``pump`` answers their requests on virtual time,
through production's circuit breaker (``engine.domain.breaker``) on the
world's clock. The workers are production's, pumped on the world's clock:
recovery (``engine.workers.recovery.recovery_batch``, which waits while the
breaker is open), the outbox relay (``OutboxRelay`` into production's
``Projection``, with a bus that sometimes loses its acknowledgement), the
webhook inbox (deliveries go through ``PaymentEngine.take_webhook`` as the
route's do; ``InboxProcessor`` retries and dead-letters) and reconciliation
(``scenarios.reconcile``: ``ReconciliationWorker``), and the event catch-up
(``EventCatchUp``: the provider's event list through ``WorldEventFeed``, which
records what each answer carried, for the W oracle). Database outages and
failed commits go through the port production's units of work ask
(``Database.faults``); crashes stay the world's (``EngineNode``: the process
is down, and an operation begun before a crash is lost). Payouts are
production's round (``engine.workers.payouts.payout_round``, which
``PayoutScheduler`` pumps), with the world's sellers choosing the amounts:
some ask for more than they have.
The scenario's ``workers`` settings map onto production's:

    recovery_interval_s   the worker loop's interval (recovery, the inbox worker)
    recovery_batch_max    ``RecoveryWorker.batch_max``
    recovery_grace_s      each step of ``EngineSettings.recovery_schedule``: a lookup
                          that many seconds after the attempt began and after each
                          answer that settled nothing (3DS polls included), for the
                          scenario's duration and ``RECOVERY_STEPS_AFTER_FAULTS``
                          steps more; then the attempt is flagged for review
    events_catch_up_s     the event catch-up's interval (0: off)
    events_grace_s        ``EventCatchUp.grace_s``

Nothing here reads the wall clock or global randomness: every random stream is
derived from the scenario's seed, so one seed gives one run, byte for byte.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import simpy

from engine.adapters import stripe_dialect as dialect
from engine.adapters.database import Database, LedgerGuardRefused, UnitFaults
from engine.adapters.webhook_signature import WebhookRejected, verify
from engine.domain.breaker import CircuitBreaker
from engine.domain.errors import (
    PaychaosError,
    StoreUnavailable,
)
from engine.domain.marketplace import Split
from engine.domain.ports import SeededIds
from engine.domain.provider import EventPage, EventQuery, ProviderCall, ProviderOutcome
from engine.service.driver import Call, Done, Operation, advance, finish
from engine.service.engine import EngineSettings, PaymentEngine
from engine.service.views import OutboxEvent, StepResult
from engine.workers.events import CIRCUIT_OPEN, CatchUpReport, EventCatchUp, never
from engine.workers.inbox import InboxProcessor
from engine.workers.payouts import PayoutRound, payout_round
from engine.workers.recovery import RecoveryReport, recovery_batch
from engine.workers.relay import OutboxRelay, Projection, PublishFailed
from mock_psp.core import ApiRequest, ProviderCore
from mock_psp.world import ProviderConfig
from scenarios.marketplace import fee_plans
from scenarios.memdb import world_database
from scenarios.schema import Scenario

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH_S = EPOCH.timestamp()
API_KEY = "sk_test_paychaos_sim"
SAMPLES_MAX = 200
TRACE_EVENTS_MAX = 2_000_000
EVENT_RETENTION_S = 300.0
# The event catch-up in the world: each sweep reads the last one's final seconds again,
# and a sweep may fall this many passes behind (failed listings, the engine down)
# before the provider forgets the events it has not read yet.
CATCH_UP_OVERLAP_S = 30
CATCH_UP_FIRST_LOOKBACK_S = 3_600
CATCH_UP_PASSES_BEHIND_MAX = 6
CATCH_UP_BEHIND_WAIT_S = 1.0

RECOVERY_STEPS_AFTER_FAULTS = 20

Step = Generator[simpy.Event, Any, Any]


def recovery_schedule(scenario: Scenario) -> tuple[timedelta, ...]:
    """The world engine's ``EngineSettings.recovery_schedule`` (see the module's doc):
    every attempt is looked up for as long as faults can last, and then some."""
    grace_s = scenario.workers.recovery_grace_s
    steps = math.ceil(scenario.duration_s / grace_s) + RECOVERY_STEPS_AFTER_FAULTS
    return (timedelta(seconds=grace_s),) * steps


class SimClock:
    """The engine's clock: virtual time as an aware datetime."""

    def __init__(self, env: simpy.Environment):
        self._env = env
        self._at: tuple[float, datetime] = (0.0, EPOCH)

    def now(self) -> datetime:
        """One datetime per virtual instant: a step asks several times, and the store
        converts a moment it has just converted for free."""
        at = self._at
        if at[0] != self._env.now:
            at = self._at = (self._env.now, EPOCH + timedelta(seconds=self._env.now))
        return at[1]


class SimPspClock:
    """The provider's clock: virtual time as Unix seconds."""

    def __init__(self, env: simpy.Environment):
        self._env = env

    def now(self) -> float:
        return EPOCH_S + float(self._env.now)


class EngineFault(PaychaosError):
    """A step failed with an error the engine does not define: a defect, not an outcome."""

    code = "internal_error"
    http_status = 500


class WorldTooBig(Exception):
    """The world's in-memory database is full: the scenario needs more shards."""


SQLITE_FULL = 13


def _database_full(exc: BaseException) -> bool:
    cause = getattr(exc.__cause__, "orig", None)
    return getattr(cause, "sqlite_errorcode", None) == SQLITE_FULL


class EngineDown(Exception):
    """The engine process is not running: a crash, until its restart."""


@dataclass(slots=True)
class EngineNode:
    """The engine process's liveness: crashes lose memory, never committed rows."""

    up: bool = True
    incarnation: int = 0
    db_outages: list[tuple[float, float]] = field(default_factory=list)
    faults_on: bool = True
    outage_hits: int = 0  # units of work refused because an outage window was open

    def check(self, now_s: float) -> int:
        if not self.up:
            raise EngineDown("engine is restarting")
        return self.incarnation

    def still(self, incarnation: int, now_s: float) -> None:
        """The engine that began a step must be the one that completes it."""
        if self.incarnation != incarnation:
            raise EngineDown("engine crashed while the provider call was in flight")
        self.check(now_s)


class DatabaseFaults(UnitFaults):
    """The world's database faults, through the port production's units of work go
    through (``Database.faults``): an outage window refuses every unit, and a commit
    fails at the scenario's rate (its unit rolled back: the whole step is lost)."""

    def __init__(self, world: World):
        self.world = world
        self.node = world.node
        self.rate = world.scenario.engine_faults.commit_failure_rate
        self.rng = world.rng["commits"]

    def unit_begins(self) -> None:
        node = self.node
        if node.faults_on and node.db_outages:
            now_s = self.world.env.now
            if any(start <= now_s < end for start, end in node.db_outages):
                node.outage_hits += 1
                raise StoreUnavailable(message="database unavailable (simulated outage)")

    def commit_fails(self) -> bool:
        if self.node.faults_on and self.rate > 0 and self.rng.random() < self.rate:
            self.world.hit("engine.commit_failure")
            return True
        return False


@dataclass(slots=True)
class Order:
    number: int
    merchant_id: str
    order_id: str
    amount_minor: int
    currency: str
    flow: str
    capture_method: str
    payment_method: str
    splits: tuple[Split, ...] = ()


RELAY_INTERVAL_S = 5.0
DISPUTE_DESK_INTERVAL_S = 60.0
RELAY_BATCH_MAX = 1_000
RELAY_UNACKED_RATE = 0.05


class WorldBus:
    """The relay's publisher in the world: each batch reaches production's idempotent
    consumer (``engine.workers.relay.Projection``, which I8 reads). Now and then the
    bus's acknowledgement is lost, as when the relay crashes between publishing and
    marking: production's relay then marks nothing and publishes the batch again,
    and the consumer must dedupe it."""

    def __init__(self, consumer: Projection, rng: random.Random, hit: Callable[[str], None]):
        self.consumer, self.rng, self.hit = consumer, rng, hit

    def publish(self, events: Sequence[OutboxEvent]) -> int:
        duplicates = sum(not self.consumer.consume(e.event_id, e.payload) for e in events)
        if self.rng.random() < RELAY_UNACKED_RATE:
            self.hit("outbox batch published, its acknowledgement lost")
            raise PublishFailed(message="the bus's acknowledgement was lost (simulated)")
        return duplicates

    def close(self) -> None:
        pass


class WorldEventFeed:
    """The event catch-up's ``EventFeed`` in the world: ``GET /v1/events`` to the provider's
    core, through the fault plan (an api rule for every endpoint matches it) and
    production's breaker, answered at once as lookups are. It records each event an
    answer carried to the engine, and when (``World.fetched_at``): the W oracle's own
    evidence of an event the engine had before its delivery."""

    def __init__(self, world: World):
        self.world = world

    def list_events(self, query: EventQuery) -> EventPage:
        world = self.world
        if not world.breaker.allow():
            return EventPage(failure=CIRCUIT_OPEN)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        request = ApiRequest("GET", dialect.EVENTS_PATH, dialect.events_params(query), headers)
        result = world.psp.handle(request)
        if result.response is None or result.latency_s > world.scenario.provider_timeout_s:
            world.answered(None)
            return dialect.event_page(None, None)
        world.answered(result.response.status)
        page = dialect.event_page(result.response.status, result.response.body)
        for event in page.events:
            world.fetched_at.setdefault(str(event["id"]), world.moment())
        return page


class World:
    def __init__(
        self,
        scenario: Scenario,
        seed: int | None = None,
        *,
        trace: bool = False,
        merchants: Sequence[int] | None = None,
        database: Database | None = None,
    ):
        """``database``: the engine's, migrated and empty (default: a new in-memory one)."""
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        root = random.Random(self.seed)
        self.rng = {
            name: random.Random(root.getrandbits(64))
            for name in (
                "workload",
                "clients",
                "engine",
                "psp",
                "crashes",
                "customers",
                "relay",
                "commits",
                "payouts",
                "disputes",
            )
        }
        self.env = simpy.Environment()
        self.db = world_database(migrate=True) if database is None else database
        settings = EngineSettings(recovery_schedule=recovery_schedule(scenario))
        self.engine = PaymentEngine(
            self.db, SimClock(self.env), SeededIds(self.rng["engine"]), settings
        )
        if scenario.workload.marketplace.split_rate > 0:
            for seller_id, plan in fee_plans(scenario.workload.marketplace).items():
                self.engine.set_fee_plan(seller_id, plan)
        self.psp = ProviderCore(
            SimPspClock(self.env),
            self.rng["psp"],
            config=self._provider_config(scenario),
            faults=scenario.fault_plan(),
        )
        endpoint = self.psp.admin.register_webhook_endpoint(
            "http://engine.sim/v1/webhooks/psp", dialect.ENABLED_EVENTS
        )
        self.webhook_secret = str(endpoint["secret"])
        self.node = EngineNode(
            db_outages=[(w.start_s, w.end_s) for w in scenario.engine_faults.db_outages]
        )
        self.coverage: Counter[str] = Counter()
        # Production's breaker on virtual time: every provider call and lookup asks it.
        self.breaker = CircuitBreaker(clock=lambda: self.env.now)
        faults = scenario.engine_faults
        if faults.commit_failure_rate > 0 or faults.db_outages:
            self.db.faults = DatabaseFaults(self)
        self.projection = Projection()  # production's consumer, fed by production's relay
        self.inbox = InboxProcessor(self.engine)
        self.relay = OutboxRelay(
            self.engine, WorldBus(self.projection, self.rng["relay"], self.hit), RELAY_BATCH_MAX
        )
        self.tracing = trace  # every event with its virtual time, only when asked
        self.trace: list[dict[str, Any]] = []
        self.crash_times_s: list[float] = []
        self.orders: dict[str, Order] = {}
        # The merchant numbers this world serves: all of them, or a shard's own.
        self.merchants = None if merchants is None else list(merchants)
        self.client_latencies_s: list[float] = []
        self.idempotency_violations: list[tuple[str, str]] = []
        self.intake_violations: list[tuple[str, str]] = []
        # What the intake answered (``take_webhook``) for the delivery in hand, and for
        # each event's first genuine delivery it took: (delivery kind, answer).
        self.intake_answer: str | None = None
        self.first_takes: dict[str, tuple[str, str]] = {}
        # When (``moment``) each event's first genuine delivery was taken, and when an
        # answer of the provider's event list first carried it to the engine.
        self.first_take_at: dict[str, tuple[float, int]] = {}
        self.fetched_at: dict[str, tuple[float, int]] = {}
        self._moments = itertools.count()
        self.newest_taken_s: dict[str, int] = {}  # per provider payment: its newest event taken
        self.transition_violations: list[tuple[str, str]] = []  # illegal commands accepted
        self.engine_errors: list[tuple[str, str]] = []  # steps that failed untyped
        self.applied_events: set[str] = set()
        self.samples: list[dict[str, Any]] = []
        self.active_checkouts = 0
        self.arrivals_done = False
        self.quiescent_at_s: float | None = None
        self.catch_up = self._new_catch_up()
        self.caught_up_to_s = 0.0  # the catch-up's cursor, as its last whole sweep left it
        from scenarios.sut import InProcessEngine, SystemUnderTest  # sut imports this module

        self.sut: SystemUnderTest = InProcessEngine(self)  # all the clients act on

    def _new_catch_up(self) -> EventCatchUp:
        """Production's event catch-up: a new one for each engine process (its place in a
        sweep is memory; its cursor, the database's)."""
        workers = self.scenario.workers
        return EventCatchUp(
            self.engine, WorldEventFeed(self), every_s=max(workers.events_catch_up_s, 1.0),
            grace_s=int(workers.events_grace_s), overlap_s=CATCH_UP_OVERLAP_S,
            first_lookback_s=CATCH_UP_FIRST_LOOKBACK_S,
        )  # fmt: skip

    def moment(self) -> tuple[float, int]:
        """Now, ordered among the things that happen at this virtual instant."""
        return self.env.now, next(self._moments)

    @staticmethod
    def _provider_config(scenario: Scenario) -> ProviderConfig:
        # Compact webhook bodies: the engine reads them the same, several times faster.
        # Whole events for a few minutes only (the deliveries keep their own bytes, the
        # traces read the provider's event log): memory follows the rate, not the run.
        # Long enough for the event catch-up to read them, a few failed passes late.
        workers, retention_s = scenario.workers, EVENT_RETENTION_S
        if workers.events_catch_up_s > 0:
            read_by_s = workers.events_grace_s + CATCH_UP_OVERLAP_S
            retention_s = max(
                retention_s, read_by_s + CATCH_UP_PASSES_BEHIND_MAX * workers.events_catch_up_s
            )
        config = ProviderConfig(webhook_payload_indent=None, event_retention_s=retention_s)
        if scenario.workload.marketplace.payouts is None:
            return config
        # With payouts, charges become available at once and payouts land at once (on
        # the provider's next tick): a run lasts minutes, a provider's days would not fit.
        return config.model_copy(update={"availability_delay_s": 0, "payout_arrival_delay_s": 0})

    # -- bookkeeping ---------------------------------------------------------------
    def note(self, what: str, **detail: Any) -> None:
        if self.tracing and len(self.trace) < TRACE_EVENTS_MAX:
            self.trace.append({"t": round(self.env.now, 6), "what": what, **detail})

    def hit(self, path: str) -> None:
        self.coverage[path] += 1

    # -- the provider call (the driver side of the sans-IO seam) -----------------------
    def provider_call(self, call: ProviderCall) -> Step:
        if not self.breaker.allow():
            self.hit("call failed fast: circuit open")
            self.note("psp.circuit_open", attempt=call.attempt_id, kind=str(call.kind))
            return dialect.UNKNOWN
        request = dialect.request_for(call)
        headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": request.idempotency_key}
        result = self.psp.handle(ApiRequest(request.method, request.path, request.params, headers))
        timeout_s = self.scenario.provider_timeout_s
        for fault in result.faults:
            self.note("psp.fault", fault=str(fault), attempt=call.attempt_id)
        if result.response is None or result.latency_s > timeout_s:
            yield self.env.timeout(timeout_s)
            processed = result.processed if result.response is None else True
            self.hit(
                f"provider {call.kind} timed out {'after' if processed else 'before'} processing"
            )
            self.note(
                "psp.timeout", attempt=call.attempt_id, kind=str(call.kind), processed=processed
            )
            self.answered(None)
            return dialect.UNKNOWN
        yield self.env.timeout(result.latency_s)
        self.answered(result.response.status)
        outcome = dialect.outcome_from_response(call, result.response.status, result.response.body)
        self.note(
            "psp.response", attempt=call.attempt_id, kind=str(call.kind),
            status=result.response.status, outcome=str(outcome.status),
        )  # fmt: skip
        if result.response.status >= 500 or result.response.status == 429:
            self.hit(f"provider {call.kind} answered {result.response.status}")
        return outcome

    def answered(self, status: int | None) -> None:
        """Count an answer (None: none came) on the breaker, as production's adapter does."""
        if self.breaker.record(status):
            self.hit("circuit opened")
            self.note("psp.circuit_opened")

    # -- one engine operation as a client sees it ----------------------------------------
    def guarded(self, what: str, step: Callable[..., Any], *args: Any) -> Any:
        """Run an engine step; an untyped error or a ledger refusal is a defect found."""
        try:
            return step(*args)
        except LedgerGuardRefused as exc:
            self.engine_errors.append((what, f"{exc.code}: {exc.message}"[:300]))
            raise EngineFault(message=f"{what} failed") from None
        except StoreUnavailable as exc:
            if _database_full(exc):
                raise WorldTooBig(
                    f"{self.scenario.name}: this world's in-memory database is full after "
                    f"{len(self.orders):,} payments; run the scenario with more merchants "
                    "and --jobs, so that each shard holds fewer"
                ) from None
            raise
        except (PaychaosError, EngineDown):
            raise
        except Exception as exc:
            self.engine_errors.append((what, f"{type(exc).__name__}: {exc}"[:300]))
            raise EngineFault(message=f"{what} failed") from None

    def pump(self, operation: Operation[Any], what: str) -> Step:
        """Run an engine operation on virtual time: its calls take the fault plan's
        latencies, timeouts and errors; its lookups are answered at once. The engine
        that began it must be the one that ends it (a crash loses the operation)."""
        incarnation = self.node.check(self.env.now)
        turn = self.guarded(what, advance, operation, None)
        while not isinstance(turn, Done):
            if isinstance(turn, Call):
                outcome = yield from self.provider_call(turn.call)
            else:
                outcome = self.look_up(turn.call)
                self.note("recovery.lookup", attempt=turn.call.attempt_id,
                          outcome=str(outcome.status))  # fmt: skip
            self.node.still(incarnation, self.env.now)
            turn = self.guarded(what, advance, operation, outcome)
        return turn.value

    def engine_op(self, begin: Callable[[Any], StepResult], command: Any) -> Step:
        self.node.check(self.env.now)
        begun = self.guarded(type(command).__name__, begin, command)
        if begun.call is None:
            return begun
        kind = begun.call.kind
        done: StepResult = yield from self.pump(finish(self.engine, begun), f"complete {kind}")
        if done.status_code == 202:
            self.hit(f"{kind} outcome unknown: left to recovery")
        return done

    # -- webhooks: the engine's intake, driven by the provider's delivery schedule -----------
    def deliver_webhooks(self) -> Step:
        poll_s = self.scenario.workers.webhook_poll_s
        while True:
            self.psp.tick()
            for delivery in self.psp.due_deliveries():
                self.take_delivery(delivery)
            if self.quiescent_at_s is not None:
                return
            # Between arrivals new events appear at any moment: poll. Once the
            # workload is done, sleep until the next delivery or timer is due.
            cap_s = 60.0 if self.arrivals_done else poll_s
            upcoming = [s for s in (self.psp.next_delivery_at_s(), self.psp.next_timer_at_s()) if s]
            wait_s = min([cap_s, *(due - EPOCH_S - self.env.now for due in upcoming)])
            yield self.env.timeout(max(wait_s, 0.001))

    def take_delivery(self, delivery: Any) -> None:
        self.intake_answer = None
        status = self.webhook_intake(delivery.payload, delivery.headers.get("Stripe-Signature"))
        kind = str(delivery.kind)
        self.note("webhook", event=delivery.event_id, delivery=kind, status=status)
        accepted = status is not None and 200 <= status < 300
        if accepted and delivery.should_be_accepted and delivery.event_id not in self.first_takes:
            # The event's first genuine delivery the intake took (nothing earlier was kept:
            # an earlier one went unanswered or was refused whole): never a duplicate.
            self.first_takes[delivery.event_id] = (kind, self.intake_answer or "?")
            self.first_take_at[delivery.event_id] = self.moment()
            if self.intake_answer == "duplicate" and delivery.event_id in self.fetched_at:
                self.hit("webhook delivered after the event catch-up took its event")
            self._count_overtaken(delivery.payload)
        if status == 400 and delivery.should_be_accepted:
            self.intake_violations.append((delivery.event_id, "a genuine webhook was refused"))
        if accepted and not delivery.should_be_accepted:
            self.intake_violations.append((delivery.event_id, f"a {kind} webhook was accepted"))
        self.psp.ack(delivery, status)

    def _count_overtaken(self, payload: bytes) -> None:
        """Coverage: an event taken after a newer event of its payment (a reorder or a
        delay that overtook), by the provider's creation times (whole seconds)."""
        event = orjson.loads(payload)
        obj = event["data"]["object"]
        is_intent = obj.get("object") == "payment_intent"
        pi_id = obj.get("id") if is_intent else obj.get("payment_intent")
        if not isinstance(pi_id, str):
            return
        created_s = int(event["created"])
        newest_s = self.newest_taken_s.get(pi_id)
        if newest_s is not None and created_s < newest_s:
            self.hit(f"webhook {event['type']} taken after a newer event of its payment")
        else:
            self.newest_taken_s[pi_id] = created_s

    def webhook_intake(self, payload: bytes, signature: str | None) -> int | None:
        """The engine's webhook route: verify, then production's intake (``take_webhook``:
        kept in the inbox and applied in one unit of work; one whose application fails
        is kept for the inbox worker, and answered 2xx all the same); answer a status."""
        try:
            self.node.check(self.env.now)
        except EngineDown:
            self.hit("webhook delivered while the engine was down")
            return None
        try:
            verify(payload, signature, self.webhook_secret, SimPspClock(self.env).now())
        except WebhookRejected as exc:
            self.hit(f"webhook refused: {exc.code}")
            return 400
        event = dialect.event_from_stripe(orjson.loads(payload))
        try:
            taken, detail = self.guarded(
                "take_webhook", self.engine.take_webhook, event, payload.decode()
            )
        except EngineFault:
            return 500  # the provider retries; the error is a finding of the run
        except StoreUnavailable:
            self.hit("webhook answered 503: the database failed the step")
            return 503
        except PaychaosError as exc:  # refused as the route refuses it (too large, malformed)
            self.hit(f"webhook refused: {exc.code}")
            return exc.http_status
        self.intake_answer = taken
        if taken == "pending":
            code = (detail or "").split(":", 1)[0]
            self.hit(f"webhook {event.type} kept for the inbox worker: {code}")
            return 200
        self.hit(f"webhook {event.type} {detail if taken == 'applied' else taken}")
        if event.event_id in self.applied_events and taken != "duplicate":
            # Inbound idempotency (I6): a provider event is taken once by its id.
            self.idempotency_violations.append(
                (event.event_id, f"a redelivered event was taken again ({detail})")
            )
        self.applied_events.add(event.event_id)
        return 200

    def inbox_worker(self) -> Step:
        """Production's inbox worker (``InboxProcessor.run_once``) every worker interval:
        it applies the deliveries whose application failed at intake, and dead-letters
        the ones that keep failing."""
        while True:
            yield self.env.timeout(self.scenario.workers.recovery_interval_s)
            try:
                self.node.check(self.env.now)
                report = self.guarded("inbox worker", self.inbox.run_once)
            except (EngineDown, StoreUnavailable):
                self.hit("inbox worker waited: engine unavailable")
                continue
            except EngineFault:
                continue  # a finding of the run (engine_errors)
            for path, count in (
                ("webhook applied by the inbox worker", report.applied),
                ("webhook failed again: left to the inbox worker", report.failed - report.dead),
                ("webhook dead-lettered after repeated failures", report.dead),
            ):  # fmt: skip
                if count:
                    self.coverage[path] += count
            if self.quiescent_at_s is not None:
                return

    # -- the event catch-up ---------------------------------------------------------------------
    def event_catch_up(self) -> Step:
        """Production's event catch-up (``EventCatchUp.pass_once``) every interval on the
        world's clock, at once again while a sweep is behind; a restarted engine runs a
        new one, which goes on from the cursor the database kept."""
        every_s = self.scenario.workers.events_catch_up_s
        incarnation = self.node.incarnation
        while True:
            yield self.env.timeout(CATCH_UP_BEHIND_WAIT_S if self.catch_up.behind else every_s)
            if self.node.incarnation != incarnation:
                self.catch_up, incarnation = self._new_catch_up(), self.node.incarnation
            report = CatchUpReport()
            try:
                self.node.check(self.env.now)
                now = self.engine.clock.now()
                self.guarded("event catch-up", self.catch_up.pass_once, now, never, report)
            except (EngineDown, StoreUnavailable):
                self.hit("event catch-up waited: engine unavailable")
            except EngineFault:
                pass  # a finding of the run (engine_errors); the next pass goes on
            finally:
                self._caught_up(report)
            if self.quiescent_at_s is not None:
                return

    def _caught_up(self, report: CatchUpReport) -> None:
        self.coverage.update(report.paths)
        if report.read_to_at is not None:
            self.caught_up_to_s = report.read_to_at.timestamp()
        for event_id in report.taken_ids:
            if event_id in self.applied_events:
                # Inbound idempotency (I6): a provider event is taken once by its id.
                self.idempotency_violations.append(
                    (event_id, "an event already taken was taken again by the catch-up")
                )
            self.applied_events.add(event_id)

    def catch_up_pending(self) -> bool:
        """Whether the catch-up has yet to read past the provider's newest event (whose
        webhook may be lost)."""
        log = self.psp.state.event_log
        if self.scenario.workers.events_catch_up_s <= 0 or not log:
            return False
        return log[-1].created_s >= self.caught_up_to_s

    # -- recovery worker ----------------------------------------------------------------------
    def recovery_worker(self) -> Step:
        workers = self.scenario.workers
        while True:
            yield self.env.timeout(workers.recovery_interval_s)
            try:
                yield from self.recover_once()
            except (EngineDown, StoreUnavailable):
                self.hit("recovery skipped: engine unavailable")
            if self.quiescent_at_s is not None:
                return

    def recover_once(self) -> Step:
        """One batch of production's recovery policy; the paths it took are coverage."""
        report = RecoveryReport()
        batch = recovery_batch(self.engine, self.scenario.workers.recovery_batch_max,
                               away=self.breaker.away, report=report)  # fmt: skip
        try:
            yield from self.pump(batch, "recovery")
        except EngineFault:
            pass  # a finding of the run (engine_errors); the next batch goes on
        finally:
            self.coverage.update(report.paths)
        return report.looked_up

    def recovery_pending(self) -> bool:
        """Whether recovery still has something to learn: an open attempt, or a 3DS
        authorization whose customer has acted at the provider (its webhook may be
        lost). A customer who never acts is waited for by nobody: the engine and the
        provider agree, and production's schedule ends in review."""
        if self.engine.unresolved_attempts(timedelta(0), 1, awaiting_customer=False):
            return True
        intents = self.psp.state.payment_intents
        for call in self.engine.attempts_to_recover():
            intent = intents.get(call.provider_payment_id or "")
            if call.awaiting_action and (intent is None or intent.status != "requires_action"):
                return True
        return False

    def look_up(self, call: ProviderCall) -> ProviderOutcome:
        """Ask the provider what became of a call: by its key, or its object now."""
        if not self.breaker.allow():
            self.hit("call failed fast: circuit open")
            return dialect.UNKNOWN
        refresh = dialect.refresh_request(call)
        if refresh is None:
            lookup = self.psp.lookup_idempotency(call.idempotency_key).to_json()
            self.answered(200)
            return dialect.outcome_from_lookup(call, lookup)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        result = self.psp.handle(ApiRequest(refresh.method, refresh.path, {}, headers))
        if result.response is None:
            self.answered(None)
            return dialect.UNKNOWN
        self.answered(result.response.status)
        return dialect.outcome_from_response(call, result.response.status, result.response.body)

    # -- the merchant's dispute desk ------------------------------------------------------
    def dispute_desk(self) -> Step:
        """Answer each open dispute after a while, with evidence that wins or loses it."""
        workload = self.scenario.workload
        rng = self.rng["disputes"]
        answered: set[str] = set()
        # Open until the scenario's end: a decision during quiescence would race the final
        # checks (its webhooks and outbox events after the last look).
        while self.env.now + DISPUTE_DESK_INTERVAL_S < self.scenario.duration_s:
            yield self.env.timeout(DISPUTE_DESK_INTERVAL_S)
            due_s = self.env.now - workload.dispute_response_s
            for dispute in list(self.psp.state.disputes.values()):
                if dispute.id in answered or dispute.created_s > due_s + EPOCH_S:
                    continue
                if dispute.status != "needs_response":
                    continue
                won = rng.random() < workload.dispute_win_rate
                text = "winning_evidence" if won else "losing_evidence"
                request = ApiRequest(
                    "POST", f"/v1/disputes/{dispute.id}",
                    {"evidence[uncategorized_text]": text},
                    {"Authorization": f"Bearer {API_KEY}"},
                )  # fmt: skip
                result = self.psp.handle(request)
                if result.response is not None and result.response.status == 200:
                    answered.add(dispute.id)
                    self.hit(f"dispute answered: {'won' if won else 'lost'}")

    # -- payouts -------------------------------------------------------------------------
    def payout_scheduler(self) -> Step:
        """Production's payout round (``payout_round``) every interval, on the world's clock;
        the world's sellers choose what to ask for (some ask for more than they have)."""
        schedule = self.scenario.workload.marketplace.payouts
        assert schedule is not None
        round_ = 0
        while self.env.now + schedule.interval_s < self.scenario.duration_s:
            yield self.env.timeout(schedule.interval_s)
            round_ += 1
            report = PayoutRound()
            try:
                self.node.check(self.env.now)
                operation = payout_round(self.engine, round_, self.payout_ask, report)
                yield from self.pump(operation, "payout round")
            except (EngineDown, StoreUnavailable):
                self.hit("payouts waited: engine unavailable")
            except EngineFault:
                pass  # a finding of the run (engine_errors); the next round goes on
            finally:
                self.coverage.update(report.paths)

    def payout_ask(self, wallet: Mapping[str, Any]) -> int | None:
        """What a seller asks for: its available balance, or (at the over-ask rate) its
        whole balance, pending included, or one unit more than it has."""
        schedule = self.scenario.workload.marketplace.payouts
        assert schedule is not None
        amount = int(wallet["available_minor"])
        if self.rng["payouts"].random() < schedule.over_ask_rate:
            pending = max(int(wallet["pending_minor"]), 0)
            return max(amount, 0) + (pending or 1)
        return amount if amount >= schedule.min_minor else None

    # -- outbox relay and an idempotent consumer (I8) -------------------------------------
    def outbox_relay(self) -> Step:
        """Production's relay (``OutboxRelay.run_once``) on the world's clock."""
        while True:
            yield self.env.timeout(RELAY_INTERVAL_S)
            try:
                self.node.check(self.env.now)
                published = self.guarded("outbox relay", self.relay.run_once).published
            except PublishFailed:
                continue  # nothing marked: the next run publishes the batch again
            except (EngineDown, StoreUnavailable):
                self.hit("outbox relay waited: engine unavailable")
                continue
            except EngineFault:
                continue  # a finding of the run (engine_errors)
            if self.quiescent_at_s is not None and not published:
                return

    # -- engine faults ---------------------------------------------------------------------------
    def crashes(self) -> Step:
        faults = self.scenario.engine_faults
        schedule = [(c.at_s, c.restart_after_s) for c in faults.crashes]
        if faults.crash_rate_per_hour > 0:
            at_s = 0.0
            rng = self.rng["crashes"]
            while True:
                at_s += rng.expovariate(faults.crash_rate_per_hour / 3_600.0)
                if at_s >= self.scenario.duration_s:
                    break
                schedule.append((at_s, faults.restart_after_s))
        for at_s, restart_after_s in sorted(schedule):
            if at_s > self.env.now:
                yield self.env.timeout(at_s - self.env.now)
            if not self.node.up:
                continue
            self.node.up = False
            self.node.incarnation += 1
            self.hit("engine crashed")
            self.crash_times_s.append(round(self.env.now, 6))
            self.note("engine.crash", incarnation=self.node.incarnation)
            yield self.env.timeout(restart_after_s)
            self.node.up = True
            self.note("engine.restart", incarnation=self.node.incarnation)

    # -- sampling for the report ------------------------------------------------------
    def sampler(self, interval_s: float) -> Step:
        while self.quiescent_at_s is None:
            self.samples.append(self.sample())
            yield self.env.timeout(interval_s)
        self.samples.append(self.sample())

    def sample(self) -> dict[str, Any]:
        with self.db.engine.connect() as connection:
            by_state: dict[str, int] = {
                str(state): int(count)
                for state, count in connection.exec_driver_sql(
                    "SELECT state, count(*) FROM payments GROUP BY state ORDER BY state"
                )
            }
            unresolved = connection.exec_driver_sql(
                "SELECT count(*) FROM attempts WHERE status IN ('pending', 'unknown')"
            ).scalar_one()
        return {
            "t": round(self.env.now, 3),
            "by_state": {str(k): int(v) for k, v in by_state.items()},
            "unresolved": int(unresolved),
            "faults": sum(self.psp.fault_log.counts().values()) + self.coverage["engine crashed"],
        }


def is_engine_trouble(exc: BaseException) -> bool:
    """Errors a client retries with the same key: the engine could not answer."""
    if isinstance(exc, EngineDown | StoreUnavailable):
        return True
    return isinstance(exc, PaychaosError) and exc.code in {
        "idempotency_key_in_flight", "contention",
    }  # fmt: skip
