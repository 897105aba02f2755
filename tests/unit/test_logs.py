"""The servers' JSON logs: formatted where a record is logged, written by a thread."""

from __future__ import annotations

import io
import json
import logging
import threading

from engine.entrypoints import logs


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_record_is_written_in_order_by_the_time_the_writer_stops() -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    log = logging.getLogger("paychaos.test")
    try:
        for n in range(500):
            log.info("request", extra={"n": n, "merchant_id": "m_one"})
    finally:
        logs.stop()
        logging.getLogger("paychaos").handlers.clear()
    lines = _lines(stream)
    assert [line["n"] for line in lines] == list(range(500))
    assert {line["merchant_id"] for line in lines} == {"m_one"}


def test_the_writer_is_not_the_thread_that_logs() -> None:
    written_by: list[str] = []

    class Spy(io.StringIO):
        def write(self, text: str) -> int:
            written_by.append(threading.current_thread().name)
            return super().write(text)

    logs.configure(stream=Spy())
    try:
        logging.getLogger("paychaos.test").warning("slow disk")
    finally:
        logs.stop()
        logging.getLogger("paychaos").handlers.clear()
    assert written_by and threading.current_thread().name not in written_by


def test_an_exception_is_formatted_where_it_was_logged_and_masked() -> None:
    stream = io.StringIO()
    logs.configure(stream=stream)
    log = logging.getLogger("paychaos.test")
    try:
        for text in ("no such row", "card 4242424242424242 refused"):
            try:
                raise ValueError(text)
            except ValueError:
                log.exception("unexpected error", extra={"request_id": "req_1_1"})
    finally:
        logs.stop()
        logging.getLogger("paychaos").handlers.clear()
    plain, secret = _lines(stream)
    assert plain["request_id"] == "req_1_1" and plain["levelname"] == "ERROR"
    trace = str(plain["exc_info"])
    assert "Traceback" in trace and "ValueError: no such row" in trace
    assert secret["exc_info"] == "[card number removed]"
    assert "4242424242424242" not in stream.getvalue()
