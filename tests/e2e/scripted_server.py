"""A scripted HTTP/1.1 server on 127.0.0.1 for testing clients: what each connection
answers, when it closes, what it was sent."""

from __future__ import annotations

import socket
import threading

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
CHUNKED = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n")  # fmt: skip
CUT_SHORT = b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"a"'


class Scripted:
    """Answers each connection's requests with the next answers of a script; ``None``
    closes the connection unanswered, ``"hang"`` never answers, ``"then close"`` closes
    the connection after the answer before it."""

    def __init__(self, script: list[bytes | str | None]) -> None:
        self.script = list(script)
        self.connections = 0
        self.closed = threading.Event()  # the server has closed a connection
        self.requests: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def __enter__(self) -> Scripted:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.thread.join(5.0)
        self.server.close()

    def _serve(self) -> None:
        while self.script:
            conn, _ = self.server.accept()
            self.connections += 1
            with conn:
                while self.script:
                    request = _request_on(conn)
                    if not request:
                        break
                    self.requests.append(request)
                    answer = self.script.pop(0)
                    if answer is None:
                        break
                    if answer == "hang":
                        while conn.recv(65536):  # until the client gives up
                            pass
                        break
                    assert isinstance(answer, bytes)
                    conn.sendall(answer)
                    if self.script and self.script[0] == "then close":
                        self.script.pop(0)
                        break
            self.closed.set()


def _request_on(conn: socket.socket) -> bytes:
    """One request, head and body (by its Content-Length); b"" if the client left."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(65536)
        if not chunk:
            return request
        request += chunk
    head = request.split(b"\r\n\r\n", 1)[0].lower()
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)  # fmt: skip
    while len(request) - len(head) - 4 < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        request += chunk
    return request
