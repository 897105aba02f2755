"""Publishing to NATS JetStream, from synchronous workers.

nats-py is asyncio-only; the workers are plain threads. The publisher owns one
event loop in one daemon thread and hands it coroutines with
``run_coroutine_threadsafe``, each waited for with a timeout, so it works from
any thread (even one with a running loop of its own) and never hangs a worker.

Each event goes to ``{subject_prefix}.{event type}`` with ``Nats-Msg-Id`` set to
the event id: within the stream's duplicate window JetStream stores a
republished event once and acknowledges it as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from engine.service.views import OutboxEvent
from engine.workers.relay import PublishFailed, message_body

T = TypeVar("T")
STREAM = "PAYCHAOS"
SUBJECT_PREFIX = "paychaos"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def subject_for(prefix: str, event_type: str) -> str:
    return f"{prefix}.{_UNSAFE.sub('_', event_type)}"


class NatsPublisher:
    def __init__(
        self,
        url: str,
        *,
        stream: str = STREAM,
        subject_prefix: str = SUBJECT_PREFIX,
        timeout_s: float = 5.0,
        duplicate_window_s: float = 120.0,
    ):
        assert url.startswith(("nats://", "tls://")), url
        self.url, self.stream, self.subject_prefix = url, stream, subject_prefix
        self.timeout_s = timeout_s
        self.duplicate_window_s = duplicate_window_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="paychaos-nats", daemon=True
        )
        self._thread.start()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None

    def _wait(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except FutureTimeout as exc:
            future.cancel()
            raise PublishFailed(message=f"NATS at {self.url} did not answer in time") from exc
        except (NatsError, OSError) as exc:
            raise PublishFailed(message=f"NATS at {self.url}: {type(exc).__name__}") from exc

    def connect(self) -> JetStreamContext:
        """Connect and make sure the stream exists (kept as it is when it does)."""
        if self._js is None:
            self._js = self._wait(self._connect(), self.timeout_s * 3)
        return self._js

    async def _connect(self) -> JetStreamContext:
        self._nc = await nats.connect(
            self.url, connect_timeout=self.timeout_s, max_reconnect_attempts=3,
            reconnect_time_wait=0.5, allow_reconnect=True,
        )  # fmt: skip
        js = self._nc.jetstream(timeout=self.timeout_s)
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(
                name=self.stream, subjects=[f"{self.subject_prefix}.>"],
                duplicate_window=self.duplicate_window_s,
            )  # fmt: skip
        return js

    def publish(self, events: Sequence[OutboxEvent]) -> int:
        try:
            js = self.connect()
            return self._wait(self._publish(js, events), self.timeout_s * (len(events) + 1))
        except PublishFailed:
            self._disconnect()  # the next run connects afresh
            raise

    def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(PublishFailed):  # it is being dropped anyway
                self._wait(nc.close(), self.timeout_s)

    async def _publish(self, js: JetStreamContext, events: Sequence[OutboxEvent]) -> int:
        duplicates = 0
        for event in events:  # in order, each acknowledged before the next
            ack = await js.publish(
                subject_for(self.subject_prefix, event.type), message_body(event),
                timeout=self.timeout_s, stream=self.stream,
                headers={"Nats-Msg-Id": event.event_id},
            )  # fmt: skip
            duplicates += bool(ack.duplicate)
        return duplicates

    def close(self) -> None:
        try:
            self._disconnect()
        finally:
            with contextlib.suppress(PublishFailed):
                self._wait(_cancel_others(), self.timeout_s)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout_s)
            if not self._thread.is_alive():
                self._loop.close()


async def _cancel_others() -> None:
    """Cancel what a timed-out call left running (a connect), and wait for it to end."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
