"""Customers and their checkout clients in wall time, over the engine's public API.

The same story as the simulation's clients (``scenarios.clients``), told with
httpx: Poisson arrivals (thinned for spikes) draw orders from the scenario's
workload with the same functions; each checkout creates, confirms, completes
3DS at the provider when asked, captures (all or part), voids, refunds in
parts. Every POST carries an Idempotency-Key; a request the engine could not
answer (no answer, 429, 502-504, a key still in flight) is retried with the
same key and backoff, up to ``retries_max``; some customers double-click with a
new key; some replay a finished request (the same answer is due) or reuse its
key with another body (a refusal is due); every third voided order gets a late
capture (an illegal transition, to be refused).

What the clients see is the evidence for the checks: every order and payment,
the requests answered 202 (the provider's outcome unknown: their payments must
move on once recovery learns it), replays that answered differently, illegal
commands accepted, and answers that are not typed errors (a 500, or an error
without a code).

The arrival stream and the orders are drawn from the seed alone and each
checkout has a random stream of its own, so one seed gives the same orders and
each customer the same choices however the wall clock interleaves them (which
choices come up still depends on what the servers answer).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from loadtests.live.http import Answer, EngineApi, PspAdmin, PspAdminError
from loadtests.live.plan import Timeline
from scenarios.clients import LATE_CAPTURE_EVERY, POLLS_MAX, Mix, draw_order, rate_at
from scenarios.schema import Scenario
from scenarios.world import Order

RETRIED_CODES = frozenset({"idempotency_key_in_flight", "contention"})
POLL_S_MIN = 0.25
POLL_S_MAX = 5.0
DOUBLE_CLICK_S = (0.05, 2.0)
SETTLED_AFTER_AUTHORIZE = frozenset(
    {"authorized", "captured", "failed", "canceled", "requires_action"}
)


@dataclass(frozen=True, slots=True)
class Sent:
    """A POST as sent: replaying it means sending exactly this again."""

    key: int  # index of the API key (the merchant)
    path: str
    body: dict[str, Any] | None
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A request answered 202: the provider's outcome was unknown to the engine."""

    payment_id: str
    sent: Sent
    answered_at_s: float  # time.monotonic()


@dataclass(slots=True)
class Evidence:
    """What the clients saw, for the checks."""

    orders: dict[str, Order] = field(default_factory=dict)
    order_keys: dict[str, int] = field(default_factory=dict)  # order id -> API key index
    payments: dict[str, int] = field(default_factory=dict)  # payment id -> API key index
    unknown: list[Unknown] = field(default_factory=list)
    coverage: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    idempotency_violations: list[tuple[str, str]] = field(default_factory=list)
    transition_violations: list[tuple[str, str]] = field(default_factory=list)
    engine_errors: list[tuple[str, str]] = field(default_factory=list)

    def hit(self, path: str) -> None:
        self.coverage[path] += 1

    def note_untyped(self, what: str, answer: Answer) -> None:
        """A 500, or an error without a machine-readable code: a finding (invariant E).

        A decline (402) answers with the payment itself, failed: typed too.
        """
        status = answer.status
        if status is None or status < 400 or status in {502, 503, 504}:
            return
        declined = isinstance(answer.body, dict) and "state" in answer.body
        if status == 500 or (answer.code is None and not declined):
            detail = f"answered {status} {answer.code or 'without an error code'}"
            self.engine_errors.append((what, f"{detail} (request {answer.request_id})"))

    def note_not_a_payment(self, what: str, answer: Answer) -> None:
        """A success (or a decline) that does not carry the payment: a finding too."""
        if (answer.ok or answer.status == 402) and answer.payment is None:
            detail = f"answered {answer.status} without a payment (request {answer.request_id})"
            self.engine_errors.append((what, detail))


def trouble(answer: Answer) -> str | None:
    """Why a client retries with the same key: the engine could not answer. None: it did."""
    if answer.status is None:
        return "no_answer"
    if answer.status == 429:
        return "rate_limited"
    if answer.status in {502, 503, 504}:
        return answer.code or f"http_{answer.status}"
    if answer.status == 409 and answer.code in RETRIED_CODES:
        return answer.code
    return None


class LiveClients:
    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        timeline: Timeline,
        api: EngineApi,
        psp: PspAdmin,
        merchant_ids: list[str],
        run_id: str,
        payments_max: int,
        concurrency: int,
    ):
        self.s = scenario
        self.seed = seed
        self.timeline = timeline
        self.api = api
        self.psp = psp
        self.merchant_ids = merchant_ids
        self.run_id = run_id
        self.payments_max = payments_max
        self.slots = asyncio.Semaphore(concurrency)
        self.rng = random.Random(seed)  # arrivals and orders, as the simulation's workload
        self.mix = Mix.of(scenario.workload)
        self.evidence = Evidence()
        self.tasks: set[asyncio.Task[None]] = set()
        self.failures: list[BaseException] = []  # a defect of live mode itself: raised
        interval_s = scenario.workers.recovery_interval_s / 2 / timeline.time_scale
        self.poll_s = min(max(interval_s, POLL_S_MIN), POLL_S_MAX)

    def story_s(self, simulated_s: float) -> float:
        return self.timeline.wall_s(simulated_s)

    # -- arrivals ---------------------------------------------------------------------
    async def arrivals(self) -> int:
        """Poisson arrivals until the duration or the bound; returns how many came."""
        workload, scale = self.s.workload, self.timeline.time_scale
        peak = (
            workload.arrivals.rate_per_s
            * scale
            * max([1.0, *(spike.multiplier for spike in workload.arrivals.spikes)])
        )
        started, at_s, number = time.monotonic(), 0.0, 0
        while number < min(self.payments_max, workload.payments_max):
            at_s += self.rng.expovariate(peak)
            if at_s >= self.timeline.duration_s:
                break
            rate = rate_at(workload, self.timeline.simulated_s(at_s)) * scale
            if self.rng.random() * peak > rate:
                continue
            number += 1
            order = self.new_order(number)
            await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
            if self.slots.locked():
                self.evidence.hit("arrival waited for a free client (--concurrency)")
            left_s = started + self.timeline.duration_s - time.monotonic()
            try:
                await asyncio.wait_for(self.slots.acquire(), timeout=max(left_s, 0.0))
            except TimeoutError:
                self.evidence.hit("arrivals ended waiting for a free client (--concurrency)")
                break
            self.spawn(self.checkout(order), release=True)
        return number

    def new_order(self, number: int) -> Order:
        key = self.rng.randrange(len(self.merchant_ids))
        order_id = f"{self.run_id}-o{number:07d}"
        merchant_id = self.merchant_ids[key]
        order = draw_order(self.rng, self.s.workload, self.mix, number, merchant_id, order_id)
        self.evidence.orders[order_id] = order
        self.evidence.order_keys[order_id] = key
        return order

    def spawn(self, work: Any, release: bool = False) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self.tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self.tasks.discard(finished)
            if release:
                self.slots.release()
            if not finished.cancelled() and finished.exception() is not None:
                self.failures.append(finished.exception())  # type: ignore[arg-type]

        task.add_done_callback(done)

    async def drain(self, timeout_s: float) -> int:
        """Let checkouts in progress finish for ``timeout_s``; cut off the rest."""
        deadline = time.monotonic() + timeout_s
        while self.tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self.tasks), timeout=max(0.0, deadline - time.monotonic()))
        cut = list(self.tasks)
        for task in cut:
            task.cancel()
        if cut:
            await asyncio.wait(cut)
            self.evidence.coverage["checkout cut off at the end of the run"] += len(cut)
        if self.failures:
            raise self.failures[0]
        return len(cut)

    # -- one request, as a client with a retry policy makes it --------------------------
    async def request(
        self, sent: Sent, rng: random.Random, payment_id: str | None = None
    ) -> Answer | None:
        """POST with retries on the same key; the last answer, or None when the client gave up."""
        policy, started = self.s.clients, time.monotonic()
        backoff_s = policy.backoff_s
        for attempt in range(policy.retries_max + 1):
            answer = await self.api.send(
                sent.key, "POST", sent.path, sent.body, sent.idempotency_key
            )
            self.evidence.note_untyped(f"POST {template(sent.path)}", answer)
            self.evidence.note_not_a_payment(f"POST {template(sent.path)}", answer)
            why = trouble(answer)
            if why is None:
                self.evidence.latencies_s.append(time.monotonic() - started)
                await self._after_answer(sent, answer, rng, payment_id)
                return answer
            self.evidence.hit(f"client retried after {why}")
            if attempt == policy.retries_max:
                self.evidence.hit("client gave up")
                return None
            jitter = 0.5 + rng.random()
            await asyncio.sleep(max(backoff_s * jitter, answer.retry_after_s))
            backoff_s *= policy.backoff_factor
        return None

    async def _after_answer(
        self, sent: Sent, answer: Answer, rng: random.Random, payment_id: str | None
    ) -> None:
        pid = payment_id or (answer.payment or {}).get("id")
        if answer.status == 202 and pid is not None:
            self.evidence.unknown.append(Unknown(str(pid), sent, time.monotonic()))
            self.evidence.hit(f"{operation(sent.path)} outcome unknown: left to recovery")
        if answer.ok or answer.status == 402:
            await self.maybe_replay(sent, answer, rng)

    async def maybe_replay(self, sent: Sent, first: Answer, rng: random.Random) -> None:
        """Send a finished request again: the engine must answer exactly as before."""
        policy = self.s.clients
        subject = str((first.payment or {}).get("id", sent.idempotency_key))
        if rng.random() < policy.replay_rate:
            again = await self.api.send(
                sent.key, "POST", sent.path, sent.body, sent.idempotency_key
            )
            self.evidence.note_untyped(f"replay POST {template(sent.path)}", again)
            if trouble(again) is None:
                self.evidence.hit("client replayed a finished request")
                if (again.status, again.body) != (first.status, first.body):
                    what = again.code or "a different body"
                    self.evidence.idempotency_violations.append(
                        (subject, f"replay of {sent.idempotency_key} answered {again.status} "
                                  f"{what}, first {first.status}")
                    )  # fmt: skip
        if rng.random() < policy.conflicting_replay_rate and sent.path == "/v1/payments":
            assert sent.body is not None
            other = {**sent.body, "amount_minor": sent.body["amount_minor"] + 1}
            again = await self.api.send(sent.key, "POST", sent.path, other, sent.idempotency_key)
            self.evidence.note_untyped("conflicting replay POST /v1/payments", again)
            if again.status == 422 and again.code == "idempotency_key_reused":
                self.evidence.hit("key reused with another body: refused")
            elif again.ok:
                self.evidence.idempotency_violations.append(
                    (subject, f"key {sent.idempotency_key} accepted another body")
                )

    async def get_payment(self, key: int, payment_id: str) -> dict[str, Any] | None:
        answer = await self.api.send(key, "GET", f"/v1/payments/{payment_id}")
        self.evidence.note_untyped("GET /v1/payments/{id}", answer)
        self.evidence.note_not_a_payment("GET /v1/payments/{id}", answer)
        return answer.payment if answer.status == 200 else None

    # -- a checkout ------------------------------------------------------------------------
    async def checkout(self, order: Order) -> None:
        rng = random.Random(f"{self.seed}-{order.number}")
        await self._checkout(order, f"{order.order_id}-a", rng)

    async def _checkout(self, order: Order, key_prefix: str, rng: random.Random) -> None:
        key = self.evidence.order_keys[order.order_id]
        body = {
            "amount_minor": order.amount_minor, "currency": order.currency,
            "order_id": order.order_id, "payment_method": order.payment_method,
            "capture_method": order.capture_method,
        }  # fmt: skip
        created = await self.request(Sent(key, "/v1/payments", body, f"{key_prefix}-create"), rng)
        if created is None or created.status != 201 or created.payment is None:
            return
        payment_id = str(created.payment["id"])
        self.evidence.payments[payment_id] = key
        if key_prefix.endswith("-a") and rng.random() < self.s.clients.new_key_resubmit_rate:
            self.evidence.hit("customer double-clicked: new key for the same order")
            self.spawn(self._double_click(order, random.Random(f"{self.seed}-{order.number}-b")))
        auth = Sent(key, f"/v1/payments/{payment_id}/confirm", None, f"{key_prefix}-auth")
        answer = await self.request(auth, rng, payment_id)
        if answer is None or not isinstance(answer.body, dict) or "state" not in answer.body:
            return
        state = str(answer.body["state"])
        if state == "processing":
            state = await self._wait_for(key, payment_id, SETTLED_AFTER_AUTHORIZE)
        if state == "requires_action":
            state = await self._three_ds(order, key, payment_id, rng)
        if state != "authorized":
            if state == "captured":
                await self._refunds(order, key, payment_id, key_prefix, rng)
            return
        think_s = rng.expovariate(1.0 / max(self.s.workload.think_time_s, 0.001))
        await asyncio.sleep(self.story_s(think_s))
        await self._settle(order, key, payment_id, key_prefix, rng)

    async def _double_click(self, order: Order, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(*DOUBLE_CLICK_S))
        await self._checkout(order, f"{order.order_id}-b", rng)

    async def _wait_for(self, key: int, payment_id: str, states: frozenset[str]) -> str:
        """Poll the payment (as a checkout page would) until it reaches one of ``states``."""
        state = "unknown"
        for _ in range(POLLS_MAX):
            await asyncio.sleep(self.poll_s)
            payment = await self.get_payment(key, payment_id)
            if payment is not None:
                state = str(payment["state"])
                if state in states:
                    return state
        return state

    async def _three_ds(self, order: Order, key: int, payment_id: str, rng: random.Random) -> str:
        await asyncio.sleep(self.story_s(rng.uniform(5.0, 60.0)))
        payment = await self.get_payment(key, payment_id)
        provider_id = payment.get("provider_payment_id") if payment else None
        if order.flow == "three_ds" and provider_id:
            try:
                await self.psp.authenticate(str(provider_id))
            except PspAdminError:
                self.evidence.hit("3DS not completed: the provider refused it")
                return "requires_action"
            self.evidence.hit("customer completed 3DS")
            return await self._wait_for(key, payment_id, frozenset({"authorized", "failed"}))
        self.evidence.hit("customer abandoned 3DS")
        void = Sent(key, f"/v1/payments/{payment_id}/cancel", None, f"{order.order_id}-abandon")
        answer = await self.request(void, rng, payment_id)
        if answer is not None and isinstance(answer.body, dict) and "state" in answer.body:
            return str(answer.body["state"])
        return "requires_action"

    async def _settle(
        self, order: Order, key: int, payment_id: str, key_prefix: str, rng: random.Random
    ) -> None:
        base = f"/v1/payments/{payment_id}"
        if order.flow == "void":
            voided = await self.request(
                Sent(key, f"{base}/cancel", None, f"{key_prefix}-void"), rng, payment_id
            )
            if (
                voided is not None
                and voided.ok
                and (voided.payment or {}).get("state") == "canceled"
                and (order.number % LATE_CAPTURE_EVERY == 0)
            ):
                await self._late_capture(key, payment_id, key_prefix, rng)
            return
        body = None
        if order.flow == "capture_partial" and order.amount_minor > 1:
            body = {"amount_minor": max(1, int(order.amount_minor * rng.uniform(0.3, 0.95)))}
        sent = Sent(key, f"{base}/capture", body, f"{key_prefix}-capture")
        captured = await self.request(sent, rng, payment_id)
        if captured is not None and captured.ok and (captured.payment or {}).get("state") in {
            "captured", "partially_captured",
        }:  # fmt: skip
            await self._refunds(order, key, payment_id, key_prefix, rng)

    async def _late_capture(
        self, key: int, payment_id: str, key_prefix: str, rng: random.Random
    ) -> None:
        """A capture after the void (a stale back office): it must be refused as illegal."""
        sent = Sent(key, f"/v1/payments/{payment_id}/capture", None, f"{key_prefix}-late-capture")
        answer = await self.request(sent, rng, payment_id)
        if answer is None:
            return
        if answer.status == 409 and answer.code == "illegal_transition":
            self.evidence.hit("capture after void refused")
        elif answer.ok:
            self.evidence.transition_violations.append(
                (payment_id, f"a capture after the void was accepted ({answer.status})")
            )
        else:
            self.evidence.transition_violations.append(
                (payment_id, f"a capture after the void was refused with {answer.code}")
            )

    async def _refunds(
        self, order: Order, key: int, payment_id: str, key_prefix: str, rng: random.Random
    ) -> None:
        workload = self.s.workload
        if rng.random() >= workload.refund_rate:
            return
        for index in range(rng.randint(1, max(workload.refunds_max, 1))):
            think_s = rng.expovariate(1.0 / max(workload.think_time_s, 0.001))
            await asyncio.sleep(self.story_s(think_s))
            payment = await self.get_payment(key, payment_id)
            if payment is None:
                return
            left = payment.get("captured_minor", 0) - payment.get("refunded_minor", 0)
            left -= payment.get("refund_reserved_minor", 0)
            if left <= 0:
                return
            body = {"amount_minor": max(1, int(left * rng.uniform(0.2, 1.0)))}
            path = f"/v1/payments/{payment_id}/refunds"
            await self.request(
                Sent(key, path, body, f"{key_prefix}-refund-{index}"), rng, payment_id
            )


def operation(path: str) -> str:
    """``/v1/payments/pay_1/confirm`` -> ``authorize``, as the simulation names calls."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return {"confirm": "authorize", "cancel": "void", "refunds": "refund"}.get(last, last)


def template(path: str) -> str:
    """``/v1/payments/pay_1/confirm`` -> ``/v1/payments/{id}/confirm``."""
    parts = path.split("/")
    return "/".join("{id}" if index == 3 else part for index, part in enumerate(parts))
