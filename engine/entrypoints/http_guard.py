"""What every request to the engine's API passes before anything is read or changed.

In order, each refusal a typed error with a code (``engine.domain.errors``):

1. The body's size: ``Content-Length`` above the route's bound is refused before a
   byte is read (413), and a body sent without one (chunked) is counted as it is
   read and refused as soon as it passes the bound, so a 200 MB upload costs no more
   memory than the bound.
2. The caller (every ``/v1`` route but the webhook intake, which its signature
   authenticates): a missing or unknown key is 401 before the body is read or
   validated. Failed attempts are rate limited per client address (429 with
   ``Retry-After``): a found key never waits on them, but an address that keeps
   guessing stops reaching the database. HTTP auth schemes are case-insensitive.
3. The body, for routes that take one: JSON only (415 otherwise), parsed by orjson,
   at most ``JSON_DEPTH_MAX`` deep, validated strictly by the route's pydantic model
   (an amount is a JSON integer, never ``"100"``, ``true`` or ``1000.0``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import Message, Receive

from engine.domain.errors import (
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
)

API_BODY_BYTES_MAX = 64 * 1024  # the largest payment (50 split lines, full metadata) is ~30 KB
WEBHOOK_BODY_BYTES_MAX = 512 * 1024  # a provider's event, expanded objects and all
JSON_DEPTH_MAX = 16  # the API's deepest body (splits -> line -> field) is 3
BUCKET_ENTRIES_MAX = 100_000  # callers (keys, addresses) remembered by a rate limiter
AUTH_FAILURES_BURST = 20.0
AUTH_FAILURES_PER_S = 1.0
CREDENTIALS_HINT = "a valid API key is required: Authorization: Bearer sk_..."


@dataclass(slots=True)
class TokenBucket:
    """Rate limiting per caller: ``burst`` at once, refilled at ``rate_per_s``; the least
    recently seen callers are forgotten past ``entries_max`` (a forgotten one starts full)."""

    rate_per_s: float
    burst: float
    entries_max: int = BUCKET_ENTRIES_MAX
    tokens: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key: str, now_s: float) -> float:
        """0 when allowed, else the seconds until a token is back."""
        with self.lock:
            tokens = self._level(key, now_s)
            if tokens >= 1.0:
                self._keep(key, tokens - 1.0, now_s)
                return 0.0
            self._keep(key, tokens, now_s)
            return (1.0 - tokens) / self.rate_per_s

    def wait_s(self, key: str, now_s: float) -> float:
        """What ``take`` would answer, without taking: 0 while a token is left."""
        with self.lock:
            tokens = self._level(key, now_s)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s

    def _level(self, key: str, now_s: float) -> float:
        tokens, last_s = self.tokens.get(key, (self.burst, now_s))
        return min(self.burst, tokens + max(0.0, now_s - last_s) * self.rate_per_s)

    def _keep(self, key: str, tokens: float, now_s: float) -> None:
        self.tokens[key] = (tokens, now_s)
        self.tokens.move_to_end(key)
        while len(self.tokens) > self.entries_max:
            self.tokens.popitem(last=False)


def bearer_secret(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer KEY`` header (any case of the scheme), or ""."""
    scheme, _, secret = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return secret.strip()


def refuse_unauthenticated(failures: TokenBucket, address: str, now_s: float) -> None:
    """A failed authentication from ``address``: 401, or 429 once it failed too often."""
    wait_s = failures.take(address, now_s)
    if wait_s > 0:
        raise RateLimited(wait_s, "too many failed authentications from this address")
    raise Unauthorized(message=CREDENTIALS_HINT)


def refuse_if_locked_out(failures: TokenBucket, address: str, now_s: float) -> None:
    """429 for an address out of failed attempts, before its key costs a database read."""
    wait_s = failures.wait_s(address, now_s)
    if wait_s > 0:
        raise RateLimited(wait_s, "too many failed authentications from this address")


def declared_length(headers: list[tuple[bytes, bytes]], bytes_max: int) -> int | None:
    """The request's ``Content-Length`` (None without one); 413 above ``bytes_max``."""
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                raise InvalidRequest(
                    "content_length_invalid", "Content-Length is not a length", "Content-Length"
                )
            length = int(value)
            if length > bytes_max:
                raise too_large(bytes_max)
            return length
    return None


def refuse_unknown_query(query: bytes, allowed: tuple[str, ...]) -> None:
    """400 ``parameter_unknown`` naming the first query parameter not in ``allowed``."""
    if not query:
        return
    for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name not in allowed:
            raise InvalidRequest(
                "parameter_unknown", f"unknown query parameter {name[:40]!r}", name[:40]
            )


def too_large(bytes_max: int) -> PayloadTooLarge:
    return PayloadTooLarge(message=f"the request body is larger than {bytes_max} bytes")


def bounded(receive: Receive, bytes_max: int) -> Receive:
    """``receive``, refusing (413) once the body read so far passes ``bytes_max``."""
    seen_bytes = 0

    async def counted() -> Message:
        nonlocal seen_bytes
        message = await receive()
        if message["type"] == "http.request":
            seen_bytes += len(message.get("body", b""))
            if seen_bytes > bytes_max:
                raise too_large(bytes_max)
        return message

    return counted


def parse_json_body(model: type[BaseModel], body: bytes, content_type: str) -> Any:
    """The route's model from a JSON body; ``InvalidRequest`` naming what is wrong."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            message="the body must be JSON (Content-Type: application/json)", field="Content-Type"
        )
    try:
        data = orjson.loads(body)  # refuses invalid UTF-8 and nesting past 1024
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("body_invalid_json", f"the body is not JSON: {exc}", "body") from exc
    if json_depth(data) > JSON_DEPTH_MAX:
        raise InvalidRequest(
            "body_too_deep", f"the body nests deeper than {JSON_DEPTH_MAX} levels", "body"
        )
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise invalid_field(exc.errors(include_url=False, include_input=False)) from exc


def invalid_field(errors: Sequence[Any]) -> InvalidRequest:
    """The first of pydantic's (or FastAPI's) errors, as ours: its message and its field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = [str(part) for part in first["loc"] if part not in {"body", "query", "path", "header"}]
    return InvalidRequest("invalid_request", str(first["msg"]), ".".join(where) or None)


def json_depth(data: Any) -> int:
    """How deep ``data`` nests (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth + 1)
            if deepest > JSON_DEPTH_MAX:
                return deepest
            stack.extend((item, depth + 1) for item in value if isinstance(item, dict | list))
    return deepest
