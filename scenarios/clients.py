"""Customers and their checkout clients: arrivals, flows, retries, double clicks.

Clients act on the system under test only through ``world.sut``
(``scenarios.sut.SystemUnderTest``) and see only its answers: a status code, the
payment's body, an error code.

A client retries with the *same* idempotency key when the engine could not
answer (down, database outage, key still in flight), with exponential backoff,
and gives up after ``retries_max``. Some clients re-submit an order with a new
key (a double click); some replay a finished request to check that the engine
answers the same (I6): right after its answer, at a random later time (once the
payment may have moved on), and, once the world is quiet, a sample of every kind
of request (``replay_at_quiescence``); some send a capture after their void,
which the engine must refuse as an illegal transition (I4).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.domain.commands import Authorize, Capture, CreatePayment, Refund, Void
from scenarios.marketplace import draw_splits
from scenarios.schema import Workload
from scenarios.sut import NO_ANSWER, Acting, Answer
from scenarios.world import Order, Step, World

FLOW_METHODS = {
    "capture_full": ("manual", "pm_card_visa"),
    "capture_partial": ("manual", "pm_card_visa"),
    "automatic": ("automatic", "pm_card_visa"),
    "void": ("manual", "pm_card_visa"),
    "three_ds": ("manual", "pm_card_authenticationRequired"),
    "three_ds_abandon": ("manual", "pm_card_authenticationRequired"),
    "decline": ("manual", "pm_card_chargeDeclined"),
    "dispute": ("automatic", "pm_card_createDispute"),
    "refund_dispute": ("automatic", "pm_card_visa"),
}
POLLS_MAX = 20
LATE_CAPTURE_EVERY = 3  # every third voided order also gets a late capture (I4)
ILLEGAL_TRANSITION = "illegal_transition"
KEY_REUSED = "idempotency_key_reused"
UNANSWERED = frozenset({NO_ANSWER, "store_unavailable"})  # no answer to compare at all
Act = Callable[[Any], Acting[Answer]]
REPLAYED_KINDS = ("CreatePayment", "Authorize", "Capture", "Void", "Refund")


@dataclass(frozen=True, slots=True)
class Finished:
    """A request that was answered: what a later replay of it must get again."""

    act: Act
    command: Any
    first: Answer


def accepted(answer: Answer | None) -> bool:
    """Whether a request was answered with the payment (not refused, not given up)."""
    return answer is not None and answer.ok


@dataclass(frozen=True, slots=True)
class Mix:
    """A workload's weighted choices: the flows and currencies with a positive weight."""

    flow_names: list[str]
    flow_weights: list[float]
    currency_names: list[str]
    currency_weights: list[float]

    @classmethod
    def of(cls, workload: Workload) -> Mix:
        flows = workload.flows.model_dump()
        flow_names = [name for name, weight in flows.items() if weight > 0]
        currencies = workload.currencies
        currency_names = [c for c, weight in currencies.items() if weight > 0]
        return cls(
            flow_names, [flows[name] for name in flow_names],
            currency_names, [currencies[c] for c in currency_names],
        )  # fmt: skip


def rate_at(workload: Workload, t_s: float) -> float:
    """Arrivals per second at ``t_s`` into the run: the base rate times any open spike."""
    arrivals = workload.arrivals
    rate = arrivals.rate_per_s
    for spike in arrivals.spikes:
        if spike.start_s <= t_s < spike.end_s:
            rate *= spike.multiplier
    return rate


def expected_payments(workload: Workload, duration_s: float) -> float:
    """The mean number of arrivals in a run of ``duration_s``: the rate integrated over
    the run, spikes included, at most the workload's cap."""
    edges = sorted({0.0, duration_s, *(
        edge for spike in workload.arrivals.spikes for edge in (spike.start_s, spike.end_s)
        if 0.0 < edge < duration_s
    )})  # fmt: skip
    total = sum(
        rate_at(workload, start) * (end - start) for start, end in itertools.pairwise(edges)
    )
    return min(total, float(workload.payments_max))


def draw_order(
    rng: random.Random, workload: Workload, mix: Mix, number: int, merchant_id: str, order_id: str
) -> Order:
    """One customer's order: amount (log-normal, clamped), currency and flow, from ``rng``."""
    amounts = workload.amounts
    raw = rng.lognormvariate(math.log(amounts.median_minor), amounts.sigma)
    amount = int(min(max(raw, amounts.min_minor), amounts.max_minor))
    currency = rng.choices(mix.currency_names, mix.currency_weights)[0]
    flow = rng.choices(mix.flow_names, mix.flow_weights)[0]
    capture_method, payment_method = FLOW_METHODS[flow]
    # Drawn only when the scenario splits orders, so other scenarios' draws stay as they were.
    marketplace = workload.marketplace
    splits = draw_splits(rng, marketplace, amount) if marketplace.split_rate > 0 else ()
    return Order(
        number, merchant_id, order_id, amount, currency, flow, capture_method, payment_method,
        splits,
    )  # fmt: skip


class Clients:
    def __init__(self, world: World):
        self.w = world
        self.s = world.scenario
        self.rng = world.rng["clients"]
        self.workload_rng = world.rng["workload"]
        self.mix = Mix.of(self.s.workload)
        # Late replays draw from a stream of their own: turning them on shifts no
        # other decision of the run. A reservoir of finished requests per kind.
        self.replay_rng = random.Random(f"replays:{world.seed}")
        self.finished: dict[str, list[Finished]] = {kind: [] for kind in REPLAYED_KINDS}
        self.finished_seen: dict[str, int] = dict.fromkeys(REPLAYED_KINDS, 0)

    # -- arrivals --------------------------------------------------------------------
    def rate_at(self, t_s: float) -> float:
        return rate_at(self.s.workload, t_s)

    def arrivals(self) -> Step:
        """Poisson arrivals (thinned for spikes) until the duration or the cap."""
        workload = self.s.workload
        peak = workload.arrivals.rate_per_s * max(
            [1.0, *(spike.multiplier for spike in workload.arrivals.spikes)]
        )
        number = 0
        while number < workload.payments_max:
            yield self.w.env.timeout(self.workload_rng.expovariate(peak))
            if self.w.env.now >= self.s.duration_s:
                break
            if self.workload_rng.random() * peak > self.rate_at(self.w.env.now):
                continue
            number += 1
            self.w.env.process(self.checkout(self.new_order(number)))
        self.w.arrivals_done = True

    def new_order(self, number: int) -> Order:
        rng, workload = self.workload_rng, self.s.workload
        owned = self.w.merchants
        number_m = rng.randrange(workload.merchants) if owned is None else (
            owned[rng.randrange(len(owned))]
        )  # fmt: skip
        merchant_id = f"m_{number_m:04d}"
        order_id = f"{merchant_id}-o{number:07d}"
        order = draw_order(rng, workload, self.mix, number, merchant_id, order_id)
        self.w.orders[order.order_id] = order
        return order

    # -- one request, as a client with a retry policy makes it ----------------------------
    def request(self, act: Act, command: Any) -> Step:
        """Returns the answer (accepted or refused), or None when the client gave up."""
        policy = self.s.clients
        started_s = self.w.env.now
        backoff_s = policy.backoff_s
        for attempt in range(policy.retries_max + 1):
            result: Answer = yield from act(command)
            if not result.ok:
                if not result.retryable:
                    self.w.note("client.error", op=type(command).__name__, code=result.error_code)
                    return result
                self.w.hit(f"client retried after {result.error_code}")
                if attempt == policy.retries_max:
                    self.w.hit("client gave up")
                    return None
                jitter = 0.5 + self.rng.random()
                yield self.w.env.timeout(backoff_s * jitter)
                backoff_s *= policy.backoff_factor
                continue
            self.w.client_latencies_s.append(self.w.env.now - started_s)
            self.w.note(
                "client.ok", op=type(command).__name__, key=command.idempotency_key,
                code=result.status_code, state=result.seen.state,
            )  # fmt: skip
            yield from self.maybe_replay(act, command, result)
            return result
        return None

    def maybe_replay(self, act: Act, command: Any, first: Answer) -> Step:
        """Send the same request again: the engine must answer exactly as before."""
        policy = self.s.clients
        self._remember(Finished(act, command, first))
        if policy.late_replay_rate > 0 and self.replay_rng.random() < policy.late_replay_rate:
            self.w.env.process(self._late_replay(Finished(act, command, first)))
        if self.rng.random() < policy.replay_rate:
            again: Answer = yield from act(command)
            self._judge_replay(command, first, again, "client replayed a finished request")
        if self.rng.random() < policy.conflicting_replay_rate and isinstance(
            command, CreatePayment
        ):
            other = CreatePayment(
                command.merchant_id, command.idempotency_key, command.order_id,
                command.amount_minor + 1, command.currency, command.payment_method,
                command.capture_method,
            )  # fmt: skip
            answer: Answer = yield from act(other)
            if answer.error_code == KEY_REUSED:
                self.w.hit("key reused with another body: refused")
                return
            if not answer.ok:
                return
            self.w.idempotency_violations.append(
                (first.seen.id, f"key {command.idempotency_key} accepted another body")
            )

    def _judge_replay(self, command: Any, first: Answer, again: Answer, path: str) -> None:
        if again.error_code in UNANSWERED:
            return  # no answer at all: nothing to compare
        self.w.hit(path)
        if not again.ok:
            # The request finished: a replay must get its saved answer, not
            # "still in flight" or any other error.
            detail = f"replay of {command.idempotency_key} answered {again.error_code}"
            self.w.idempotency_violations.append((first.seen.id, detail))
            return
        same = (again.status_code, again.seen.body) == (first.status_code, first.seen.body)
        if not (again.replayed and same):
            when = path.removeprefix("client replayed a finished request").strip()
            self.w.idempotency_violations.append(
                (
                    first.seen.id,
                    f"replay of {command.idempotency_key} answered differently {when}".strip(),
                )
            )

    def _remember(self, finished: Finished) -> None:
        """Keep a uniform sample of each kind of finished request (a reservoir)."""
        kind = type(finished.command).__name__
        size = self.s.clients.quiescence_replays
        if kind not in self.finished or size == 0:
            return
        self.finished_seen[kind] += 1
        sample = self.finished[kind]
        if len(sample) < size:
            sample.append(finished)
            return
        slot = self.replay_rng.randrange(self.finished_seen[kind])
        if slot < size:
            sample[slot] = finished

    def _late_replay(self, finished: Finished) -> Step:
        """The same request again, a while later: the payment may have moved on since."""
        yield self.w.env.timeout(self.replay_rng.uniform(0.0, self.s.clients.late_replay_within_s))
        if self.w.quiescent_at_s is not None:
            return  # the world is quiet: the quiescence replay judges from here
        again: Answer = yield from finished.act(finished.command)
        path = "client replayed a finished request later"
        self._judge_replay(finished.command, finished.first, again, path)

    def replay_at_quiescence(self) -> Step:
        """Once the world is quiet (before the oracles): a sample of every kind of finished
        request is sent again with its key and body; each must get its first answer."""
        for kind in REPLAYED_KINDS:
            for finished in self.finished[kind]:
                again: Answer = yield from finished.act(finished.command)
                path = "client replayed a finished request at quiescence"
                self._judge_replay(finished.command, finished.first, again, path)
                if again.error_code not in UNANSWERED:
                    self.w.hit(f"{kind} replayed at quiescence")

    # -- a checkout --------------------------------------------------------------------------
    def checkout(self, order: Order) -> Step:
        self.w.active_checkouts += 1
        try:
            yield from self._checkout(order, f"{order.order_id}-a")
        finally:
            self.w.active_checkouts -= 1

    def _checkout(self, order: Order, key_prefix: str) -> Step:
        sut = self.w.sut
        create = CreatePayment(
            order.merchant_id, f"{key_prefix}-create", order.order_id, order.amount_minor,
            order.currency, order.payment_method, order.capture_method, splits=order.splits,
        )  # fmt: skip
        created = yield from self.request(sut.create_payment, create)
        if not accepted(created):
            return
        payment_id = created.seen.id
        if key_prefix.endswith("-a") and self.rng.random() < self.s.clients.new_key_resubmit_rate:
            self.w.hit("customer double-clicked: new key for the same order")
            self.w.env.process(self._double_click(order))
        auth = Authorize(order.merchant_id, f"{key_prefix}-auth", payment_id)
        result = yield from self.request(sut.authorize, auth)
        if not accepted(result):
            return
        state = result.seen.state
        if state == "processing":
            settled = {"authorized", "captured", "failed", "canceled", "requires_action"}
            state = yield from self._wait_for(order, payment_id, settled)
        if state == "requires_action":
            provider_id = yield from self._provider_id(order, payment_id)
            state = yield from self._three_ds(order, payment_id, provider_id)
        if state != "authorized":
            if state == "captured" and order.flow == "refund_dispute":
                yield from self._refund_then_dispute(order, payment_id, key_prefix)
            elif state == "captured":
                yield from self._refunds(order, payment_id, key_prefix)
            return
        yield self.w.env.timeout(
            self.rng.expovariate(1.0 / max(self.s.workload.think_time_s, 0.001))
        )
        yield from self._settle(order, payment_id, key_prefix)

    def _double_click(self, order: Order) -> Step:
        self.w.active_checkouts += 1
        try:
            yield self.w.env.timeout(self.rng.uniform(0.05, 2.0))
            yield from self._checkout(order, f"{order.order_id}-b")
        finally:
            self.w.active_checkouts -= 1

    def _three_ds(self, order: Order, payment_id: str, provider_id: str | None) -> Step:
        yield self.w.env.timeout(self.w.rng["customers"].uniform(5.0, 60.0))
        if order.flow == "three_ds" and provider_id is not None:
            self.w.psp.admin.authenticate(provider_id, succeed=True)
            self.w.hit("customer completed 3DS")
            state = yield from self._wait_for(order, payment_id, {"authorized", "failed"})
            return state
        self.w.hit("customer abandoned 3DS")
        void = Void(order.merchant_id, f"{order.order_id}-abandon", payment_id)
        result = yield from self.request(self.w.sut.void, void)
        return result.seen.state if accepted(result) else "requires_action"

    def _provider_id(self, order: Order, payment_id: str) -> Step:
        """The provider's id as the checkout page reads it (to hand 3DS to the customer)."""
        yield self.w.env.timeout(0)
        answer: Answer = yield from self.w.sut.get_payment(order.merchant_id, payment_id)
        return answer.seen["provider_payment_id"] if answer.ok else None

    def _wait_for(self, order: Order, payment_id: str, states: set[str]) -> Step:
        """Poll the payment (as a checkout page would) until it reaches one of ``states``."""
        state = "unknown"
        for _ in range(POLLS_MAX):
            yield self.w.env.timeout(self.s.workers.recovery_interval_s / 2)
            answer: Answer = yield from self.w.sut.get_payment(order.merchant_id, payment_id)
            if not answer.ok:
                continue
            state = answer.seen.state
            if state in states:
                return state
        return state

    def _settle(self, order: Order, payment_id: str, key_prefix: str) -> Step:
        sut = self.w.sut
        if order.flow == "void":
            void = Void(order.merchant_id, f"{key_prefix}-void", payment_id)
            voided = yield from self.request(sut.void, void)
            if (
                accepted(voided)
                and voided.seen.state == "canceled"
                and order.number % LATE_CAPTURE_EVERY == 0
            ):
                yield from self._late_capture(order, payment_id, key_prefix)
            return
        amount = None
        if order.flow == "capture_partial" and order.amount_minor > 1:
            amount = max(1, int(order.amount_minor * self.rng.uniform(0.3, 0.95)))
        capture = Capture(order.merchant_id, f"{key_prefix}-capture", payment_id, amount)
        result = yield from self.request(sut.capture, capture)
        if accepted(result) and result.seen.state in {
            "captured", "partially_captured",
        }:  # fmt: skip
            yield from self._refunds(order, payment_id, key_prefix)

    def _late_capture(self, order: Order, payment_id: str, key_prefix: str) -> Step:
        """A capture sent after the void (a stale back office): it must be refused as illegal."""
        capture = Capture(order.merchant_id, f"{key_prefix}-late-capture", payment_id, None)
        result: Answer | None = yield from self.request(self.w.sut.capture, capture)
        if result is None:
            return  # given up: no answer to judge
        if result.error_code == ILLEGAL_TRANSITION:
            self.w.hit("capture after void refused")
        elif result.ok:
            self.w.transition_violations.append(
                (payment_id, f"a capture after the void was accepted ({result.status_code})")
            )
        else:
            self.w.transition_violations.append(
                (payment_id, f"a capture after the void was refused with {result.error_code}")
            )

    def _refunds(self, order: Order, payment_id: str, key_prefix: str) -> Step:
        workload = self.s.workload
        if self.rng.random() >= workload.refund_rate:
            return
        for index in range(self.rng.randint(1, max(workload.refunds_max, 1))):
            yield self.w.env.timeout(self.rng.expovariate(1.0 / max(workload.think_time_s, 0.001)))
            answer: Answer = yield from self.w.sut.get_payment(order.merchant_id, payment_id)
            if not answer.ok:
                return
            payment = answer.seen
            left = payment["captured_minor"] - payment["refunded_minor"]
            left -= payment["refund_reserved_minor"]
            if left <= 0:
                return
            amount = max(1, int(left * self.rng.uniform(0.2, 1.0)))
            refund = Refund(order.merchant_id, f"{key_prefix}-refund-{index}", payment_id, amount)
            yield from self.request(self.w.sut.refund, refund)

    def _refund_then_dispute(self, order: Order, payment_id: str, key_prefix: str) -> Step:
        """Refunded in full, then disputed by a cardholder the refund has not reached yet:
        the provider withdraws the amount all the same."""
        think_s = max(self.s.workload.think_time_s, 0.001)
        yield self.w.env.timeout(self.rng.expovariate(1.0 / think_s))
        refund = Refund(order.merchant_id, f"{key_prefix}-refund-all", payment_id, None)
        result = yield from self.request(self.w.sut.refund, refund)
        if not accepted(result):
            return
        state = yield from self._wait_for(order, payment_id, {"refunded"})
        provider_id = yield from self._provider_id(order, payment_id)
        if state != "refunded" or provider_id is None:
            return
        yield self.w.env.timeout(self.w.rng["customers"].uniform(60.0, 600.0))
        self.w.psp.admin.open_dispute(provider_id)
        self.w.hit("cardholder disputed a refunded charge")
