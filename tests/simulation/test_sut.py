"""The system-under-test boundary is real: another ``SystemUnderTest`` drives the clients.

``OverTheWire`` implements the protocol over the in-process engine, but hands the
clients only what a service over HTTP would: each answer taken through JSON,
plain data with nothing of the engine's objects. A run with it is the run with
the in-process engine, report for report. A target without a cancel action
(many services have none) is driven too, and its runs still hold every invariant.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from typing import Any

import orjson
import pytest
import simpy

import scenarios.sut
from engine.domain.commands import (
    Authorize,
    Capture,
    CreatePayment,
    CreatePayout,
    Refund,
    Void,
)
from scenarios.runner import RunResult, run_scenario
from scenarios.schema import library_paths, load_scenario
from scenarios.sut import Acting, Answer, InProcessEngine, PaymentSeen, Reads, SystemUnderTest
from scenarios.world import EPOCH_S, World

LIBRARY = {path.stem: path for path in library_paths()}
IN_PROCESS = InProcessEngine


def through_json(answer: Answer) -> Answer:
    """The answer as a client over HTTP reads it back: plain JSON data."""
    wire = orjson.dumps({
        "status": answer.status_code, "error": answer.error_code, "replayed": answer.replayed,
        "retryable": answer.retryable, "body": dict(answer.body),
        "payment": None if answer.payment is None else dict(answer.payment.body),
    })  # fmt: skip
    data = orjson.loads(wire)
    payment = None if data["payment"] is None else PaymentSeen(data["payment"])
    return Answer(data["status"], payment, data["error"], data["replayed"], data["retryable"],
                  data["body"])  # fmt: skip


class OverTheWire:
    """A system under test over the world's engine, seen only through plain answers."""

    built: list[OverTheWire] = []

    def __init__(self, world: World):
        self.inner: SystemUnderTest = IN_PROCESS(world)
        self.calls: Counter[str] = Counter()
        OverTheWire.built.append(self)

    @property
    def reads(self) -> Reads:
        return self.inner.reads

    def _wire(self, action: str, acting: Acting[Answer]) -> Acting[Answer]:
        self.calls[action] += 1
        answer = yield from acting
        return through_json(answer)

    def create_payment(self, command: CreatePayment) -> Acting[Answer]:
        return self._wire("create_payment", self.inner.create_payment(command))

    def authorize(self, command: Authorize) -> Acting[Answer]:
        return self._wire("authorize", self.inner.authorize(command))

    def capture(self, command: Capture) -> Acting[Answer]:
        return self._wire("capture", self.inner.capture(command))

    def void(self, command: Void) -> Acting[Answer]:
        return self._wire("void", self.inner.void(command))

    def refund(self, command: Refund) -> Acting[Answer]:
        return self._wire("refund", self.inner.refund(command))

    def get_payment(self, merchant_id: str, payment_id: str) -> Acting[Answer]:
        return self._wire("get_payment", self.inner.get_payment(merchant_id, payment_id))

    def deliver_webhook(self, payload: bytes, signature: str | None) -> Acting[int | None]:
        self.calls["deliver_webhook"] += 1
        return self.inner.deliver_webhook(payload, signature)

    def create_payout(self, command: CreatePayout) -> Acting[Answer]:
        return self._wire("create_payout", self.inner.create_payout(command))


class WithoutCancel(OverTheWire):
    """A target that declares no cancel: a void is answered as unsupported."""

    def void(self, command: Void) -> Acting[Answer]:
        self.calls["void"] += 1
        yield from ()
        return Answer(405, error_code="action_not_supported")


def run(
    name: str, duration_s: float, sut: type | None, monkeypatch: pytest.MonkeyPatch
) -> RunResult:
    if sut is not None:
        monkeypatch.setattr(scenarios.sut, "InProcessEngine", sut)
    scenario = load_scenario(LIBRARY[name]).model_copy(update={"duration_s": duration_s})
    return run_scenario(scenario, 1)


def test_the_protocol_is_what_the_world_builds() -> None:
    world = World(load_scenario(LIBRARY["happy-path"]), 1)
    sut: SystemUnderTest = world.sut
    assert isinstance(sut, InProcessEngine)
    world.db.dispose()


@pytest.mark.parametrize("name", ["happy-path", "kitchen-sink"])
def test_another_system_under_test_drives_the_clients_to_the_same_run(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    OverTheWire.built.clear()
    wired = run(name, 240, OverTheWire, monkeypatch)
    assert len(OverTheWire.built) == 1
    calls = OverTheWire.built[0].calls
    for action in ("create_payment", "authorize", "capture", "void", "refund", "get_payment"):
        assert calls[action] > 0, (action, calls)
    monkeypatch.undo()
    plain = run(name, 240, None, monkeypatch)
    assert not wired.violated, [inv.to_json() for inv in wired.violated]
    assert wired.report == plain.report


def test_a_target_without_cancel_is_driven_and_still_holds_every_invariant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    OverTheWire.built.clear()
    result = run("happy-path", 300, WithoutCancel, monkeypatch)
    assert OverTheWire.built[0].calls["void"] > 0
    assert result.ok, [inv.to_json() for inv in result.violated] + result.problems
    assert "capture after void refused" not in result.report["coverage"]


def _drive(world: World, steps: Generator[simpy.Event, Any, Any]) -> Any:
    process = world.env.process(steps)
    world.env.run(until=process)
    return process.value


def test_the_in_process_engine_answers_as_a_client_sees_it() -> None:
    world = World(load_scenario(LIBRARY["happy-path"]), 1)
    sut = world.sut

    def checkout() -> Generator[simpy.Event, Any, dict[str, Any]]:
        seen: dict[str, Any] = {}
        created = yield from sut.create_payment(
            CreatePayment("m_0001", "k-create", "o-1", 5_000, "USD", "pm_card_visa")
        )
        payment_id = created.seen.id
        seen["created"] = (created.status_code, created.seen.state)
        authorized = yield from sut.authorize(Authorize("m_0001", "k-auth", payment_id))
        seen["authorized"] = authorized.seen.state
        again = yield from sut.authorize(Authorize("m_0001", "k-auth", payment_id))
        seen["replayed"] = again.replayed
        captured = yield from sut.capture(Capture("m_0001", "k-cap", payment_id, None))
        seen["captured"] = captured.seen.state
        late = yield from sut.void(Void("m_0001", "k-void", payment_id))
        seen["void after capture"] = (late.status_code, late.error_code, late.retryable)
        read = yield from sut.get_payment("m_0001", payment_id)
        seen["read"] = read.seen["captured_minor"]
        other = yield from sut.get_payment("m_0002", payment_id)
        seen["another merchant's"] = (other.status_code, other.ok)
        world.node.up = False
        down = yield from sut.get_payment("m_0001", payment_id)
        seen["down"] = (down.status_code, down.error_code, down.retryable)
        world.node.up = True
        forged = yield from sut.deliver_webhook(b"{}", f"t={int(EPOCH_S)},v1=00")
        seen["forged webhook"] = forged
        payout = yield from sut.create_payout(CreatePayout("seller_0000", "k-po", "USD", 100))
        seen["payout"] = (payout.status_code, payout.error_code)
        return seen

    seen = _drive(world, checkout())
    assert seen == {
        "created": (201, "created"),
        "authorized": "authorized",
        "replayed": True,
        "captured": "captured",
        "void after capture": (409, "illegal_transition", False),
        "read": 5_000,
        "another merchant's": (404, False),
        "down": (None, "engine_down", True),
        "forged webhook": 400,
        "payout": (409, "insufficient_funds"),
    }
    [payment] = scenarios.sut.every(world.sut.reads.payments)
    assert (payment.state, payment.captured_minor) == ("captured", 5_000)
    assert [h.to_state for h in payment.history] == ["created", "authorized", "captured"]
    world.db.dispose()
