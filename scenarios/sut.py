"""The system under test: all the harness may do to it, and all it may read of it.

The harness (clients, faults, oracles) sees the system under test through
``SystemUnderTest`` only, so that anything that can answer it can stand where
paychaos's engine stands (DESIGN.md, "The system under test"):

- **act**: create a payment, authorize (confirm) it, capture, void (cancel),
  refund, read a payment, deliver a webhook, create a payout. Each action is a
  simpy generator step (it takes virtual time: the provider's latency, a
  timeout) whose value is what a client sees: an ``Answer`` (a status code, the
  payment's body or an error code), or a webhook's status code. Requests are the
  engine's commands (``engine.domain.commands``): plain, validated data that a
  service over HTTP would send as its request body.
- **read** (``reads``): read-only, typed, paged views of what the system holds
  (payments with their history, journals with their entries, the outbox,
  wallets, payouts, reconciliation exceptions): the oracles judge from these only.

Implementations: ``InProcessEngine`` here, paychaos's engine in the world, on
virtual time; later the engine over HTTP, and a user's own service described by
a target file (which declares the actions it has).

    SystemUnderTest (Protocol)
    └── InProcessEngine       the world's engine, driven by the world's pump
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import simpy

from engine.domain.commands import Authorize, Capture, CreatePayment, CreatePayout, Refund, Void
from engine.domain.errors import PaychaosError
from engine.service.driver import pay_out
from engine.service.read_api import (
    PAGE_SIZE,
    JournalRecord,
    LineRecord,
    OutboxRecord,
    Page,
    PaymentRecord,
    PayoutRecord,
    ReadApi,
    ReconExceptionRecord,
    SettlementRowRecord,
    WalletRecord,
    every,
)
from scenarios.world import EngineDown, is_engine_trouble

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.service.views import StepResult
    from scenarios.world import World

__all__ = [  # the read API's records, what the oracles read, re-exported for the harness
    "NO_ANSWER", "Acting", "Answer", "InProcessEngine", "JournalRecord", "LineRecord",
    "OutboxRecord", "PaymentRecord", "PaymentSeen", "PayoutRecord", "Reads",
    "ReconExceptionRecord", "SettlementRowRecord", "SystemUnderTest", "WalletRecord", "every",
]  # fmt: skip

T = TypeVar("T")
# An action on virtual time: a simpy generator whose value is what the client sees.
Acting = Generator[simpy.Event, Any, T]
NO_ANSWER = "engine_down"  # the error code of a request nobody answered (the service is down)


@dataclass(frozen=True, slots=True)
class PaymentSeen:
    """A payment as the client sees it: the body the service answered with."""

    body: Mapping[str, Any]

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def state(self) -> str:
        return str(self.body["state"])

    def __getitem__(self, name: str) -> Any:
        return self.body[name]


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's answer as a client sees it.

    ``status_code`` is None when nothing answered. On success ``payment`` (or, for a
    payout, ``body``) is what came back and ``replayed`` tells a stored answer to a
    retried key; on refusal ``error_code`` is the machine-readable code and
    ``retryable`` whether a client tries again with the same key (the service
    could not answer: down, its database out, the key still in flight)."""

    status_code: int | None
    payment: PaymentSeen | None = None
    error_code: str | None = None
    replayed: bool = False
    retryable: bool = False
    body: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @property
    def seen(self) -> PaymentSeen:
        """The payment of an accepted payment request."""
        assert self.payment is not None, f"an answer without a payment: {self}"
        return self.payment


class Reads(Protocol):
    """What the oracles may read of a system under test (``engine.service.read_api``)."""

    def payments(
        self, after: str | None = None, limit: int = PAGE_SIZE
    ) -> Page[PaymentRecord, str]: ...

    def payment(self, payment_id: str) -> PaymentRecord | None: ...

    def journals(
        self, after: str | None = None, limit: int = PAGE_SIZE
    ) -> Page[JournalRecord, str]: ...

    def outbox(
        self, after: int | None = None, limit: int = PAGE_SIZE
    ) -> Page[OutboxRecord, int]: ...

    def wallets(
        self, after: tuple[str, str] | None = None, limit: int = PAGE_SIZE
    ) -> Page[WalletRecord, tuple[str, str]]: ...

    def payouts(
        self, after: str | None = None, limit: int = PAGE_SIZE
    ) -> Page[PayoutRecord, str]: ...

    def recon_exceptions(
        self, after: str | None = None, limit: int = PAGE_SIZE
    ) -> Page[ReconExceptionRecord, str]: ...

    def settlement_rows(
        self, after: str | None = None, limit: int = PAGE_SIZE
    ) -> Page[SettlementRowRecord, str]: ...


class SystemUnderTest(Protocol):
    """What the harness may do to a system under test, and read of it."""

    @property
    def reads(self) -> Reads: ...

    def create_payment(self, command: CreatePayment) -> Acting[Answer]: ...

    def authorize(self, command: Authorize) -> Acting[Answer]: ...

    def capture(self, command: Capture) -> Acting[Answer]: ...

    def void(self, command: Void) -> Acting[Answer]: ...

    def refund(self, command: Refund) -> Acting[Answer]: ...

    def get_payment(self, merchant_id: str, payment_id: str) -> Acting[Answer]: ...

    def deliver_webhook(self, payload: bytes, signature: str | None) -> Acting[int | None]:
        """The provider's delivery: the status code answered, None when nothing answered."""
        ...

    def create_payout(self, command: CreatePayout) -> Acting[Answer]: ...


def refused(exc: EngineDown | PaychaosError) -> Answer:
    """A raised error as the client sees it."""
    if isinstance(exc, EngineDown):
        return Answer(None, error_code=NO_ANSWER, retryable=True)
    return Answer(exc.http_status, error_code=exc.code, retryable=is_engine_trouble(exc))


def answered(result: StepResult) -> Answer:
    return Answer(result.status_code, PaymentSeen(result.payment.body), replayed=result.replayed)


class InProcessEngine:
    """The world's own engine: each action is the world's pump of an engine operation
    (``World.engine_op``), its faults and crashes included; reads are the engine's
    read API over the world's database."""

    def __init__(self, world: World):
        self._world = world
        self._reads = ReadApi(world.db)

    @property
    def reads(self) -> ReadApi:
        return self._reads

    def _act(self, begin: Callable[[Any], StepResult], command: Any) -> Acting[Answer]:
        try:
            result: StepResult = yield from self._world.engine_op(begin, command)
        except (EngineDown, PaychaosError) as exc:
            return refused(exc)
        return answered(result)

    # The engine's methods are looked up at each call: a test may patch them.
    def create_payment(self, command: CreatePayment) -> Acting[Answer]:
        return self._act(self._world.engine.create_payment, command)

    def authorize(self, command: Authorize) -> Acting[Answer]:
        return self._act(self._world.engine.begin_authorize, command)

    def capture(self, command: Capture) -> Acting[Answer]:
        return self._act(self._world.engine.begin_capture, command)

    def void(self, command: Void) -> Acting[Answer]:
        return self._act(self._world.engine.begin_void, command)

    def refund(self, command: Refund) -> Acting[Answer]:
        return self._act(self._world.engine.begin_refund, command)

    def get_payment(self, merchant_id: str, payment_id: str) -> Acting[Answer]:
        yield from ()  # a read takes no virtual time
        world = self._world
        try:
            world.node.check(world.env.now)
            view = world.engine.get_payment(payment_id, merchant_id)
        except (EngineDown, PaychaosError) as exc:
            return refused(exc)
        return Answer(200, PaymentSeen(view.body))

    def deliver_webhook(self, payload: bytes, signature: str | None) -> Acting[int | None]:
        yield from ()  # in process, the intake answers at once
        return self._world.webhook_intake(payload, signature)

    def create_payout(self, command: CreatePayout) -> Acting[Answer]:
        world = self._world
        try:
            world.node.check(world.env.now)
            begun = world.guarded("begin_payout", world.engine.begin_payout, command)
            done = begun
            if begun.call is not None:
                done = yield from world.pump(pay_out(world.engine, begun), "complete payout")
        except (EngineDown, PaychaosError) as exc:
            return refused(exc)
        return Answer(done.status_code, replayed=done.replayed, body=dict(done.payout))
