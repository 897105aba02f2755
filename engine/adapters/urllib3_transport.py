"""An httpx transport over urllib3's keep-alive connection pools, for plain-HTTP providers.

httpx's own transport (httpcore with h11, pure Python) cost the API more CPU per
provider call than the engine's step around it; urllib3 parses answers with the
standard library's ``http.client`` and keeps idle connections per server (at most
``idle_max``; one the server closed while it was idle is dropped before it is used).

Everything above it (timeouts, retries, the circuit breaker, errors by kind) stays
``HttpProvider``'s. So urllib3 never resends (``retries=False``: a retry with the
same idempotency key is the adapter's), never follows a redirect (httpx's to
decide), never decodes a body (httpx does, from the headers), and its errors are
translated, in ``_translated`` only, to httpx's::

    urllib3.exceptions.HTTPError
    ├── NewConnectionError (nobody listening, no such host)   -> httpx.ConnectError
    ├── ConnectTimeoutError                                   -> httpx.ConnectTimeout
    ├── ReadTimeoutError (no answer, or no rest of it, in time) -> httpx.ReadTimeout
    ├── ProtocolError, by what broke:
    │   ├── the answer cut short or malformed                 -> httpx.RemoteProtocolError
    │   ├── the socket timed out while sending                -> httpx.WriteTimeout
    │   └── any other socket error                            -> httpx.ReadError
    └── anything else                                         -> httpx.TransportError

The mock PSP's "timeout after processing" drops the connection in the middle of an
answer: that is ``RemoteProtocolError`` (or ``ReadTimeout`` if the client's read
timeout comes first), an unknown outcome for the adapter, never a decline.

urllib3 has no write timeout of its own: it sends under the connect timeout, so the
smaller of httpx's connect and write timeouts bounds connecting and sending.
"""

from __future__ import annotations

import http.client
from collections.abc import Mapping

import httpx
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

HTTP_11 = {"http_version": b"HTTP/1.1"}


class Urllib3Transport(httpx.BaseTransport):
    """``http://`` only; one request at a time per connection, connections shared by threads."""

    def __init__(self, idle_max: int = 64, servers_max: int = 16) -> None:
        self._pools = urllib3.PoolManager(num_pools=servers_max, maxsize=idle_max, retries=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{url.scheme}:// is not spoken here")
        pool = self._pools.connection_from_host(url.host, url.port or 80, "http")
        try:
            answer = pool.urlopen(
                request.method,
                url.raw_path.decode("ascii"),
                body=request.read(),
                headers=urllib3.HTTPHeaderDict(request.headers.multi_items()),
                retries=False,
                redirect=False,
                assert_same_host=False,
                timeout=_timeout(request.extensions.get("timeout", {})),
                preload_content=True,
                decode_content=False,
            )
        except HTTPError as exc:
            raise _translated(exc) from exc
        return httpx.Response(
            answer.status,
            headers=list(answer.headers.iteritems()),
            stream=httpx.ByteStream(answer.data),
            request=request,
            extensions=HTTP_11,
        )

    def close(self) -> None:
        self._pools.clear()


def _timeout(timeouts: Mapping[str, float | None]) -> urllib3.Timeout:
    connect_s, write_s = timeouts.get("connect"), timeouts.get("write")
    if connect_s is None or (write_s is not None and write_s < connect_s):
        connect_s = write_s
    return urllib3.Timeout(connect=connect_s, read=timeouts.get("read"))


def _translated(exc: HTTPError) -> httpx.TransportError:
    message = str(exc)
    if isinstance(exc, NewConnectionError):  # before ConnectTimeoutError: a subclass of it
        return httpx.ConnectError(message)
    if isinstance(exc, ConnectTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, ReadTimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, ProtocolError):
        # urllib3 wraps what broke as the second argument; read timeouts are already
        # ReadTimeoutError, so a bare socket timeout can only have come from sending.
        broken = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(broken, http.client.HTTPException | HTTPError) or broken is None:
            return httpx.RemoteProtocolError(message)
        if isinstance(broken, TimeoutError):
            return httpx.WriteTimeout(message)
        if isinstance(broken, OSError):
            return httpx.ReadError(message)
        return httpx.RemoteProtocolError(message)
    return httpx.TransportError(message)
