"""Structured JSON logs for the servers, with correlation ids and no secrets.

Every record is one JSON object per line; the fields a request or a step adds
(``request_id``, ``payment_id``, ``merchant_id``, ...) ride along. Values that
look like a card number or an API key are masked before they are written.

The formatter builds the object itself and writes it with ``json.dumps`` (it is
on every request's path), and only strings that could hold a secret (a run of 13
digits or more, or a key's prefix) are looked at closely.

A record is formatted where it is logged and written by a thread of its own
(the standard library's ``QueueHandler`` and ``QueueListener``). The server's
event loop logs every request; a write on it gives up the interpreter lock,
and taking it back waits for the threads running engine steps, so one line
could hold every connection of the process for a switch interval (5 ms), more
when the disk is slow. The listener is stopped, and what it holds written, at
exit.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import re
import sys
from logging.handlers import QueueHandler, QueueListener
from typing import Any, TextIO

from engine.domain.validation import PAN_SEPARATORS, contains_pan

_KEY = re.compile(r"\b(sk|rk|whsec)_[A-Za-z0-9_]{6,}")
# Anything ``contains_pan`` or ``_KEY`` could find starts with one of these: 13 digits,
# each pair split by one card-number separator at most, or a key's prefix.
_SUSPECT = re.compile(rf"\d(?:[{PAN_SEPARATORS}]?\d){{12}}|(?:sk|rk|whsec)_")


def mask(value: Any) -> Any:
    if isinstance(value, str):
        if _SUSPECT.search(value) is None:
            return value
        if contains_pan(value):
            return "[card number removed]"
        return _KEY.sub(lambda m: f"{m.group(1)}_[removed]", value)
    return value


# What every LogRecord carries; anything else on a record came with ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class RedactingJsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the extras, masked."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "asctime": self.formatTime(record), "levelname": record.levelname,
            "name": record.name, "message": mask(record.getMessage()),
        }  # fmt: skip
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS:
                data[key] = mask(value)
        if record.exc_info:
            data["exc_info"] = mask(self.formatException(record.exc_info))
        return json.dumps(data, default=str)


_listener: QueueListener | None = None


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines on ``stream`` (standard error by default), written off the caller's
    thread. Configuring again replaces the handler and its writer."""
    global _listener
    # What no line shows, so no record needs (logging's own "optimization" switches):
    # the caller's file and line (a walk up the stack per record), threads, processes.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stop()
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    # The queue handler formats in the caller (the formatter sees the record as logged,
    # with its extras and exception) and queues the line as the record's message.
    handler = QueueHandler(lines)
    handler.setFormatter(RedactingJsonFormatter())
    writer = logging.StreamHandler(stream or sys.stderr)  # its default format: the message
    _listener = QueueListener(lines, writer)
    _listener.start()
    root = logging.getLogger("paychaos")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@atexit.register
def stop() -> None:
    """Write what is queued and stop the writer thread (at exit, or to reconfigure)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
