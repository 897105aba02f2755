"""Structured JSON logs for the servers, with correlation ids and no secrets.

Every record is one JSON object per line; the fields a request or a step adds
(``request_id``, ``payment_id``, ``merchant_id``, ...) ride along. Values that
look like a card number or an API key are masked before they are written.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from engine.domain.validation import contains_pan

_KEY = re.compile(r"\b(sk|rk|whsec)_[A-Za-z0-9_]{6,}")


def mask(value: Any) -> Any:
    if isinstance(value, str):
        if contains_pan(value):
            return "[card number removed]"
        return _KEY.sub(lambda m: f"{m.group(1)}_[removed]", value)
    return value


class RedactingJsonFormatter(JsonFormatter):
    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: mask(value) for key, value in log_data.items()}


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingJsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", timestamp=False)
    )
    root = logging.getLogger("paychaos")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
