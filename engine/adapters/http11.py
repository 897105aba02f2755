"""A small HTTP/1.1 transport for httpx: keep-alive sockets, one request at a time each.

httpx's own transport (httpcore with h11, pure Python) cost the API more CPU per
provider call than the engine's step around it. This one speaks only what the
provider adapter needs: ``http://``, a request with a complete body, an answer
with a ``Content-Length`` or chunked body. Everything above it (timeouts, retries,
the circuit breaker, errors by kind) stays ``HttpProvider``'s, so its failures
are httpx's exceptions: ``ConnectTimeout``/``ReadTimeout``/``WriteTimeout``,
``ConnectError``, ``ReadError``/``WriteError`` and ``RemoteProtocolError`` for an
answer cut short (as the mock PSP's lost responses are).

Idle sockets are kept in a pool shared by the threads (a list under a lock, at
most ``idle_max`` per server); one that the server closed while it was idle is
seen before it is used (it reads as ready) and dropped. Nothing is ever resent here: a request that
fails after it was sent is the adapter's to retry, with its idempotency key.
"""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass, field

import httpx

HEAD_BYTES_MAX = 64 * 1024
BODY_BYTES_MAX = 16 * 1024 * 1024
CHUNKS_MAX = 10_000
RECV_BYTES = 65_536


@dataclass(slots=True)
class _Socket:
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)

    def fill(self) -> None:
        try:
            data = self.sock.recv(RECV_BYTES)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc)) from exc
        if not data:
            raise httpx.RemoteProtocolError("the server closed the connection mid-answer")
        self.buffer += data

    def line(self, end: bytes, bytes_max: int) -> bytes:
        """Up to and including ``end``."""
        while (at := self.buffer.find(end)) < 0:
            if len(self.buffer) > bytes_max:
                raise httpx.RemoteProtocolError("an answer's head is too long")
            self.fill()
        found = bytes(self.buffer[: at + len(end)])
        del self.buffer[: at + len(end)]
        return found

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.fill()
        found = bytes(self.buffer[:size])
        del self.buffer[:size]
        return found

    def idle_and_open(self) -> bool:
        """A kept socket is usable if nothing is waiting on it (EOF reads as ready)."""
        if self.buffer:
            return False
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not ready

    def close(self) -> None:
        self.sock.close()


class KeepAliveTransport(httpx.BaseTransport):
    def __init__(self, idle_max: int = 64) -> None:
        self.idle_max = idle_max
        self._idle: dict[tuple[str, int], list[_Socket]] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{url.scheme}:// is not spoken here")
        where = (url.host, url.port or 80)
        timeouts = request.extensions.get("timeout", {})
        stream = self._take(where) or _connect(where, timeouts.get("connect"))
        try:
            stream.sock.settimeout(timeouts.get("write"))
            _send(stream, request)
            stream.sock.settimeout(timeouts.get("read"))
            status, headers, content, keep = _answer(stream)
        except BaseException:
            stream.close()
            raise
        self._give_back(where, stream, keep)
        return httpx.Response(status, headers=headers, content=content, request=request)

    def _take(self, where: tuple[str, int]) -> _Socket | None:
        while True:
            with self._lock:
                idle = self._idle.get(where)
                stream = idle.pop() if idle else None
            if stream is None or stream.idle_and_open():
                return stream
            stream.close()

    def _give_back(self, where: tuple[str, int], stream: _Socket, keep: bool) -> None:
        with self._lock:
            idle = self._idle.setdefault(where, [])
            if keep and len(idle) < self.idle_max:
                idle.append(stream)
                return
        stream.close()

    def close(self) -> None:
        with self._lock:
            streams = [stream for idle in self._idle.values() for stream in idle]
            self._idle.clear()
        for stream in streams:
            stream.close()


def _connect(where: tuple[str, int], timeout_s: float | None) -> _Socket:
    try:
        sock = socket.create_connection(where, timeout=timeout_s)
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out") from exc
    except OSError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _Socket(sock)


def _send(stream: _Socket, request: httpx.Request) -> None:
    body = request.read()
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1"]
    has_length = False
    for name, value in request.headers.multi_items():
        lowered = name.lower()
        if lowered == "transfer-encoding":
            continue  # the body is sent whole, with its length
        has_length = has_length or lowered == "content-length"
        lines.append(f"{name}: {value}")
    if not has_length and (body or request.method in {"POST", "PUT", "PATCH"}):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        stream.sock.sendall(head + body)
    except TimeoutError as exc:
        raise httpx.WriteTimeout(str(exc) or "write timed out") from exc
    except OSError as exc:
        raise httpx.WriteError(str(exc)) from exc


def _answer(stream: _Socket) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    """(status, headers, body, keep the socket) of the answer on ``stream``."""
    head = stream.line(b"\r\n\r\n", HEAD_BYTES_MAX).decode("latin-1").split("\r\n")
    try:
        version, status_text = head[0].split(" ", 2)[:2]
        status = int(status_text)
    except ValueError as exc:
        raise httpx.RemoteProtocolError(f"not an HTTP answer: {head[0][:80]!r}") from exc
    headers = [(name.strip(), value.strip()) for name, _, value in
               (line.partition(":") for line in head[1:] if line)]  # fmt: skip
    fields = {name.lower(): value for name, value in headers}
    keep = version == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
    if "chunked" in fields.get("transfer-encoding", "").lower():
        content = _chunks(stream)
        headers = [(n, v) for n, v in headers if n.lower() != "transfer-encoding"]
    elif "content-length" in fields:
        try:
            length = int(fields["content-length"])
        except ValueError as exc:
            raise httpx.RemoteProtocolError("an unreadable Content-Length") from exc
        if not 0 <= length <= BODY_BYTES_MAX:
            raise httpx.RemoteProtocolError("an answer too large")
        content = stream.exactly(length)
    elif status in {204, 304} or 100 <= status < 200:
        content = b""
    else:
        raise httpx.RemoteProtocolError("an answer without a length")
    return status, headers, content, keep


def _chunks(stream: _Socket) -> bytes:
    body = bytearray()
    for _ in range(CHUNKS_MAX):
        size_line = stream.line(b"\r\n", HEAD_BYTES_MAX)
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError as exc:
            raise httpx.RemoteProtocolError("an unreadable chunk size") from exc
        if size == 0:
            for _ in range(CHUNKS_MAX):  # trailers, then the blank line that ends them
                if stream.line(b"\r\n", HEAD_BYTES_MAX) == b"\r\n":
                    return bytes(body)
            break
        if len(body) + size > BODY_BYTES_MAX:
            raise httpx.RemoteProtocolError("an answer too large")
        body += stream.exactly(size + 2)[:size]
    raise httpx.RemoteProtocolError("an answer with too many chunks")
