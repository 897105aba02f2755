"""Serve an ASGI app from a thread on a free 127.0.0.1 port: for tests and benchmarks.

The socket is bound (port 0) before the thread starts, so the port is known and
nobody else can take it; readiness is polled with a bound, never slept for.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STARTUP_S_MAX = 10.0
SHUTDOWN_S_MAX = 10.0
POLL_S = 0.005


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT``) while ``app`` is being served."""
    import uvicorn

    sock = free_socket(host)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline_s = time.monotonic() + STARTUP_S_MAX
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError(f"server on port {port} failed to start") from (
                    failure[0] if failure else None
                )
            if time.monotonic() > deadline_s:
                raise TimeoutError(f"server on port {port} not ready after {STARTUP_S_MAX}s")
            time.sleep(POLL_S)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_S_MAX)
        sock.close()
