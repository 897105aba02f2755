"""The wall-time HTTP driver: Stripe's dialect over ``ProviderCore``, plus ``/_admin``.

The server is thin on purpose. It turns a request into an ``ApiRequest`` (form pairs
from the query string and an ``application/x-www-form-urlencoded`` body, as Stripe's
SDKs send them), hands it to the core, waits the ``latency_s`` the fault plan chose
(``asyncio.sleep``: the core never sleeps) and sends the response back. Everything
that decides anything lives in the core.

- Time: ``OffsetClock(WallClock())``: the wall clock, which the admin API can move
  forward. The wall clock is read here, in the driver, never in the core.
- Concurrency: the core is synchronous and not thread-safe. Every core call runs on
  the event loop, inside one lock (``PspServer.locked``), so an in-process caller
  on another thread (a test) can read the core safely too.
- Timeouts: when the core says the response is lost (``response is None``), the
  server holds the request until the client gives up and disconnects, for at most
  ``timeout_hold_s``, then drops the connection in the middle of a response. A
  client sees either its own read timeout or a broken connection: never an answer.
- Webhooks: a background task polls ``core.due_deliveries()``, POSTs each delivery
  (bounded timeout and batch) and reports the endpoint's status, or ``None`` on a
  timeout or connection error, with ``core.ack``. The client is aiohttp's, over
  keep-alive connections (``WebhookPoster``; httpx's pool cost more CPU per delivery
  than the provider's whole answer to an API call).
- ``/_admin/...`` goes to ``core.admin`` with a JSON body (or query parameters).
- Bounds: a body is refused (413) past ``BODY_BYTES_MAX``, by its ``Content-Length``
  before a byte is read, else while it streams; an admin body nests at most
  ``JSON_DEPTH_MAX`` deep. Bad input of any kind answers 4xx in Stripe's shape, and a
  bug in the mock answers a 500 in that shape too, on a connection that stays open
  (left to Starlette and uvicorn it would be plain text and a closed connection: a
  network fault that no fault plan injected).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mock_psp.clock import OffsetClock
from mock_psp.core import ApiRequest, ApiResponse, ProviderCore
from mock_psp.errors import (
    ApiError,
    InvalidRequestError,
    ParameterInvalid,
    ProviderServerError,
    RequestTooLarge,
    UnknownRoute,
)
from mock_psp.faults import FaultPlanConfig
from mock_psp.params import PARAM_COUNT_MAX
from mock_psp.webhooks import Delivery
from mock_psp.world import ProviderConfig

BODY_BYTES_MAX = 1_000_000
# Fault plans and admin calls nest a few levels; deeper is an attack or a mistake.
# Checked by a loop before parsing: Python's json recurses per level (100,000 levels
# answered a 500), and orjson's own limit of 1024 would make the bound an accident.
JSON_DEPTH_MAX = 32
GC_THRESHOLDS = (100_000, 50, 1_000)
ALL_METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH"]
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
_ABORTED_MESSAGE = "ASGI callable returned without completing response."
# A JSON string, escapes included: removed before brackets are counted.
_JSON_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
Endpoint = Callable[[Request], Awaitable[Response]]
log = logging.getLogger("mock_psp.server")


class ServerSettings(BaseModel):
    """Bounds of the wall-time driver; none of them changes what the provider decides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A lost response is held this long at most (unless the client leaves first).
    timeout_hold_s: float = Field(default=30.0, gt=0.0, le=600.0)
    # Injected latency is applied up to this bound.
    latency_max_s: float = Field(default=60.0, ge=0.0, le=600.0)
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, le=60.0)
    webhook_batch_max: int = Field(default=64, ge=1, le=1_000)
    # The worker wakes at least this often to look for due deliveries.
    webhook_poll_s: float = Field(default=0.05, gt=0.0, le=5.0)


class WallClock:
    """The machine's clock: only drivers may use it."""

    __slots__ = ()

    def now(self) -> float:
        return time.time()


def build_core(
    seed: int,
    faults: FaultPlanConfig | Mapping[str, Any] | None = None,
    config: ProviderConfig | None = None,
) -> ProviderCore:
    """A core on wall time that the admin API can advance."""
    return ProviderCore(OffsetClock(WallClock()), random.Random(seed), config, faults)


class _AbortedResponseFilter(logging.Filter):
    """uvicorn reports our deliberate mid-response drop as an error; it is a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _ABORTED_MESSAGE


# One instance: adding it again (one more server) is then a no-op, not one more filter.
_ABORTED_RESPONSE_FILTER = _AbortedResponseFilter()


class LostResponse(Response):
    """A response the client never gets: hold, then drop the connection mid-response."""

    def __init__(self, hold_s: float) -> None:
        super().__init__(status_code=200)
        self._hold_s = hold_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def client_left() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        with suppress(TimeoutError):
            await asyncio.wait_for(client_left(), self._hold_s)
        # Headers promising a body that never comes; returning now makes the ASGI server
        # close the socket, which any HTTP client reports as a network error.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1")],
            }
        )


class PspServer:
    """The core, its lock, the ASGI app and the webhook worker."""

    def __init__(self, core: ProviderCore, settings: ServerSettings | None = None) -> None:
        self.core = core
        self.settings = settings or ServerSettings()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self.webhook_errors = 0
        self.app = Starlette(
            routes=[
                Route(
                    "/v1/{rest:path}",
                    _contained(self._api),
                    # The core answers methods it has no route for, in Stripe's shape.
                    methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
                ),
                Route("/_admin/{rest:path}", _contained(self._admin), methods=ALL_METHODS),
                # Anything else still answers in Stripe's shape, never plain text.
                Route("/{rest:path}", _contained(self._unknown), methods=ALL_METHODS),
            ],
            lifespan=self._lifespan,
        )
        logging.getLogger("uvicorn.error").addFilter(_ABORTED_RESPONSE_FILTER)

    @contextmanager
    def locked(self) -> Iterator[ProviderCore]:
        with self._lock:
            yield self.core

    # --- the Stripe API -----------------------------------------------------------------

    async def _api(self, request: Request) -> Response:
        try:
            pairs = await _form_pairs(request)
        except ApiError as error:
            return _refusal(error)
        api_request = ApiRequest(request.method, _path(request), pairs, request.headers)
        with self._lock:
            result = self.core.handle(api_request)
            self._wake_worker_if_due()
        delay_s = min(result.latency_s, self.settings.latency_max_s)
        if result.response is None:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            return LostResponse(self.settings.timeout_hold_s)
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        return _json_response(result.response)

    async def _unknown(self, request: Request) -> Response:
        error = UnknownRoute(
            f"Unrecognized request URL ({request.method}: {_path(request)[:200]})."
        )
        return _refusal(error)

    async def _admin(self, request: Request) -> Response:
        try:
            params = await _admin_params(request)
        except ApiError as error:
            return _refusal(error)
        with self._lock:
            response = self.core.admin.handle(request.method, _path(request), params)
            self._wake_worker_if_due()
        return _json_response(response)

    # --- webhooks -----------------------------------------------------------------------

    def _wake_worker_if_due(self) -> None:
        """Called under the lock: wake the worker only when a delivery is already due."""
        due_at_s = self.core.next_delivery_at_s()
        if self._wake is not None and due_at_s is not None and due_at_s <= self.core.now():
            self._wake.set()

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._wake = asyncio.Event()
        worker = asyncio.create_task(self._deliver_forever(), name="mock-psp-webhooks")
        worker.add_done_callback(_report_worker_crash)
        try:
            yield
        finally:
            worker.cancel()
            with suppress(asyncio.CancelledError):
                await worker
            self._wake = None

    async def _deliver_forever(self) -> None:
        settings = self.settings
        async with WebhookPoster.opened(
            settings.webhook_timeout_s, settings.webhook_batch_max
        ) as client:
            await self._deliver_loop(client)

    async def _deliver_loop(self, client: WebhookPoster) -> None:
        settings = self.settings
        while True:
            with self._lock:
                due = self.core.due_deliveries(settings.webhook_batch_max)
                next_at_s = self.core.next_delivery_at_s()
                now_s = self.core.now()
            if due:
                await asyncio.gather(*(self._deliver(client, item) for item in due))
                continue
            wait_s = settings.webhook_poll_s
            if next_at_s is not None:
                wait_s = min(wait_s, max(0.0, next_at_s - now_s))
            assert self._wake is not None
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _deliver(self, client: WebhookPoster, delivery: Delivery) -> None:
        status: int | None
        try:
            status = await client.post(delivery.url, delivery.payload, delivery.headers)
        except WebhookPoster.FAILURES as exc:
            # The endpoint did not answer: the core retries it with backoff.
            log.debug("webhook %s to %s failed: %r", delivery.delivery_id, delivery.url, exc)
            self.webhook_errors += 1
            status = None
        with self._lock:
            self.core.ack(delivery, status)


class WebhookPoster:
    """POSTs to webhook endpoints with aiohttp: the status, or one of ``FAILURES``.

    Connections are kept alive per endpoint, at most ``connections_max`` open at once;
    each answer is read whole (up to ``BODY_BYTES_MAX``) so its connection can be
    reused. A kept connection that the endpoint closed meanwhile fails as a
    disconnection or a reset: that delivery is posted once more, on a new connection
    (the endpoint dedupes by event id, as it must for the provider's own retries;
    aiohttp itself retries only idempotent methods). Both tries fit in ``timeout_s``.
    """

    FAILURES = (aiohttp.ClientError, TimeoutError, ValueError, OSError)

    def __init__(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self.session = session
        self.timeout_s = timeout_s

    @classmethod
    @asynccontextmanager
    async def opened(cls, timeout_s: float, connections_max: int) -> AsyncIterator[WebhookPoster]:
        connector = aiohttp.TCPConnector(limit=connections_max, limit_per_host=connections_max)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),  # endpoints' cookies change nothing
            auto_decompress=False,  # the body is only counted
        ) as session:
            yield cls(session, timeout_s)

    async def post(self, url: str, payload: bytes, headers: Mapping[str, str]) -> int:
        async with asyncio.timeout(self.timeout_s):
            try:
                return await self._post_once(url, payload, headers)
            except aiohttp.ClientConnectorError:
                raise  # no connection was made: nothing stale to replace
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                return await self._post_once(url, payload, headers)

    async def _post_once(self, url: str, payload: bytes, headers: Mapping[str, str]) -> int:
        async with self.session.post(
            url, data=payload, headers=dict(headers), allow_redirects=False
        ) as answer:
            body_bytes = 0
            async for chunk in answer.content.iter_any():
                body_bytes += len(chunk)
                if body_bytes > BODY_BYTES_MAX:
                    raise ValueError("an answer too large for a webhook")
            return answer.status


def _report_worker_crash(worker: asyncio.Task[None]) -> None:
    # A dead worker means no more webhooks: say so loudly instead of losing events quietly.
    if not worker.cancelled() and worker.exception() is not None:
        log.critical("the webhook worker stopped", exc_info=worker.exception())


def _contained(endpoint: Endpoint) -> Endpoint:
    """An exception escaping ``endpoint`` (a bug in the mock) answers a 500 in Stripe's shape.

    Starlette would answer plain text and uvicorn then close the connection; here the
    bug is logged with its traceback and the connection stays usable.
    """

    @functools.wraps(endpoint)
    async def contained(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, _path(request)[:200])
            # Stripe's own answer to a failure on its side, which this is.
            return _refusal(ProviderServerError(500))

    return contained


def _path(request: Request) -> str:
    # Not request.url: building it decodes the query string, which may not be UTF-8.
    path: str = request.scope["path"]
    return path


async def _read_body(request: Request) -> bytes:
    """The body, refused past ``BODY_BYTES_MAX`` without ever holding more than that.

    A declared ``Content-Length`` is refused before a byte is read; a body without one
    (chunked) is counted as it streams and refused at the first chunk past the bound.
    """
    if _declared_length_bytes(request) > BODY_BYTES_MAX:
        raise RequestTooLarge(BODY_BYTES_MAX)
    chunks: list[bytes] = []
    size_bytes = 0
    try:
        async for chunk in request.stream():
            size_bytes += len(chunk)
            if size_bytes > BODY_BYTES_MAX:
                raise RequestTooLarge(BODY_BYTES_MAX)
            chunks.append(chunk)
    except ClientDisconnect as exc:
        # Nobody reads the answer; this only keeps the departure out of the error log.
        raise InvalidRequestError(
            "The client left before sending the whole body.", code="body_incomplete"
        ) from exc
    return b"".join(chunks)


def _declared_length_bytes(request: Request) -> int:
    """The ``Content-Length`` header, or 0 (absent, or malformed: the stream decides)."""
    declared = request.headers.get("content-length", "").strip()
    if not (declared.isascii() and declared.isdigit()):
        return 0
    # More digits than any bound needs: too large, without converting a huge number.
    return BODY_BYTES_MAX + 1 if len(declared) > 18 else int(declared)


def _query_text(request: Request) -> str:
    try:
        return bytes(request.scope["query_string"]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            "The query string is not valid UTF-8.", code="query_invalid"
        ) from exc


def _fields(text: str, where: str, code: str) -> list[tuple[str, str]]:
    """Form-encoded pairs; at most ``PARAM_COUNT_MAX``, counted before any is decoded."""
    try:
        return parse_qsl(
            text, keep_blank_values=True, errors="strict", max_num_fields=PARAM_COUNT_MAX
        )
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"The {where} is not valid UTF-8 once percent-decoded.", code=code
        ) from exc
    except ValueError as exc:  # parse_qsl's "Max number of fields exceeded"
        raise ParameterInvalid(
            "params", "Too many parameters.", code="parameters_too_many"
        ) from exc


async def _form_pairs(request: Request) -> list[tuple[str, object]]:
    """Stripe's dialect: query string pairs, then form-encoded body pairs, in order."""
    pairs: list[tuple[str, object]] = list(
        _fields(_query_text(request), "query string", "query_invalid")
    )
    body = await _read_body(request)
    if not body:
        return pairs
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != FORM_CONTENT_TYPE:
        raise InvalidRequestError(
            f"Request bodies must be {FORM_CONTENT_TYPE}, not {content_type or 'missing'}.",
            param="Content-Type",
            code="content_type_invalid",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            "The request body is not valid UTF-8.", code="body_invalid"
        ) from exc
    pairs.extend(_fields(text, "request body", "body_invalid"))
    return pairs


async def _admin_params(request: Request) -> dict[str, Any]:
    """Admin calls take a JSON object body; query parameters are merged under it."""
    params: dict[str, Any] = dict(_fields(_query_text(request), "query string", "query_invalid"))
    body = await _read_body(request)
    if body.strip():
        params.update(_json_object(body))
    return params


def _json_object(body: bytes) -> dict[str, Any]:
    """An admin body: a JSON object, at most ``JSON_DEPTH_MAX`` deep.

    orjson, unlike ``json``, refuses NaN, infinities, numbers past a double and lone
    surrogates ("\\ud800"), any of which would otherwise be stored and then fail to
    serialize in every later answer that shows it.
    """
    if _json_depth_exceeds(body, JSON_DEPTH_MAX):
        raise InvalidRequestError(
            f"The admin request body nests deeper than {JSON_DEPTH_MAX} levels.",
            code="json_too_deep",
        )
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"The admin request body is not valid JSON: {exc}.", code="body_invalid"
        ) from exc
    if not isinstance(decoded, dict):
        raise InvalidRequestError(
            "The admin request body must be a JSON object.", code="body_invalid"
        )
    return decoded


def _json_depth_exceeds(body: bytes, depth_max: int) -> bool:
    """Whether brackets outside strings nest deeper than ``depth_max``: a loop, no recursion.

    Exact for valid JSON; invalid JSON that passes is refused by the parser anyway.
    """
    depth = 0
    for byte in _JSON_STRING_RE.sub(b"", body).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > depth_max:
            return True
    return False


def _refusal(error: ApiError) -> Response:
    headers = {}
    if isinstance(error, RequestTooLarge):
        # The rest of the body stays unread: close, or uvicorn would drain it unbounded.
        headers["Connection"] = "close"
    return _json_response(ApiResponse(error.http_status, error.to_body(), headers))


def _json_response(response: ApiResponse) -> Response:
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
    return Response(
        orjson.dumps(response.body) if response.text is None else response.text,
        status_code=response.status,
        headers=headers,
        media_type="application/json",
    )


@dataclass(frozen=True, slots=True)
class Listen:
    host: str = "127.0.0.1"
    port: int = 12111


def serve(
    core: ProviderCore,
    listen: Listen,
    settings: ServerSettings | None = None,
    log_level: str = "info",
) -> None:
    """Run the server in the foreground until interrupted (``paychaos serve psp``)."""
    import gc

    import uvicorn

    # The provider keeps every object it ever made; the default thresholds make
    # the collector walk that whole heap every few thousand allocations, which
    # shows as pauses in p99. Collect young objects far less often.
    gc.set_threshold(*GC_THRESHOLDS)

    server = PspServer(core, settings)
    config = uvicorn.Config(
        server.app,
        host=listen.host,
        port=listen.port,
        log_level=log_level,
        access_log=False,
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
