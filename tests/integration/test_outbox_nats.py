"""The outbox relay against a real NATS JetStream: republished events are stored once.

Skipped when NATS is not reachable at PAYCHAOS_TEST_NATS_URL (default
nats://127.0.0.1:4222), except with PAYCHAOS_REQUIRE_NATS=1, which makes a
missing server a failure. Each run uses a stream and subjects of its own and
deletes the stream afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from collections.abc import Iterator, Sequence
from urllib.parse import urlparse

import nats
import pytest

from engine.adapters.database import Database
from engine.adapters.fake_provider import FakeProvider
from engine.domain.ports import FixedClock, SeededIds
from engine.service.engine import PaymentEngine
from engine.service.views import OutboxEvent
from engine.workers import OutboxRelay, Projection
from engine.workers.nats_bus import NatsPublisher
from tests.integration.helpers import captured, create, refund

NATS_URL = os.environ.get("PAYCHAOS_TEST_NATS_URL", "nats://127.0.0.1:4222")
REQUIRE_NATS = os.environ.get("PAYCHAOS_REQUIRE_NATS") == "1"


def nats_reachable() -> bool:
    parsed = urlparse(NATS_URL)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), 1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def stream() -> Iterator[tuple[str, str]]:
    if not nats_reachable():
        if REQUIRE_NATS:
            pytest.fail(f"NATS unreachable at {NATS_URL} (PAYCHAOS_REQUIRE_NATS=1)")
        pytest.skip(f"NATS unreachable at {NATS_URL}")
    suffix = uuid.uuid4().hex[:12]
    name, prefix = f"PAYCHAOS_TEST_{suffix}", f"paychaos_test_{suffix}"
    yield name, prefix
    asyncio.run(_delete_stream(name))


async def _delete_stream(name: str) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=2)
    try:
        await nc.jetstream().delete_stream(name)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


async def _stored(name: str) -> tuple[int, list[bytes]]:
    nc = await nats.connect(NATS_URL, connect_timeout=2)
    try:
        js = nc.jetstream()
        info = await js.stream_info(name)
        count = info.state.messages
        bodies = [(await js.get_msg(name, seq)).data or b"" for seq in range(1, count + 1)]
        return count, bodies
    finally:
        await nc.close()


class CrashAfterPublishing(NatsPublisher):
    crashes = 1

    def publish(self, events: Sequence[OutboxEvent]) -> int:
        duplicates = super().publish(events)
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("crash between publish and mark_published")
        return duplicates


def test_jetstream_stores_a_republished_event_once(
    sqlite_database: Database, stream: tuple[str, str]
) -> None:
    name, prefix = stream
    engine = PaymentEngine(sqlite_database, FixedClock(), SeededIds(random.Random(8)))
    provider = FakeProvider()
    first = captured(engine, provider, key="n1", order_id="o1")
    refund(engine, provider, first, "r1", 1_000)
    second = create(engine, key="n2", order_id="o2").payment.id
    events = engine.unpublished_events()

    publisher = CrashAfterPublishing(NATS_URL, stream=name, subject_prefix=prefix)
    try:
        relay = OutboxRelay(engine, publisher)
        with pytest.raises(RuntimeError):
            relay.run_once()
        assert len(engine.unpublished_events()) == len(events)
        report = relay.run_once()  # the same events again, same message ids
        assert (report.published, report.duplicates) == (len(events), len(events))
        assert engine.unpublished_events() == []
    finally:
        publisher.close()

    count, bodies = asyncio.run(_stored(name))
    assert count == len(events)  # published twice, stored once
    projection = Projection()
    assert all(projection.consume_message(body) for body in bodies)
    for payment_id in (first, second):
        assert projection.state_of(payment_id) == engine.get_payment(payment_id).state


def test_an_unreachable_bus_marks_nothing_published(sqlite_database: Database) -> None:
    from engine.workers import PublishFailed

    engine = PaymentEngine(sqlite_database, FixedClock(), SeededIds(random.Random(8)))
    create(engine)
    publisher = NatsPublisher("nats://127.0.0.1:9", timeout_s=0.5)
    try:
        with pytest.raises(PublishFailed):
            OutboxRelay(engine, publisher).run_once()
    finally:
        publisher.close()
    assert len(engine.unpublished_events()) == 1
