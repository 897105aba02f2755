"""The workers inside the API's process: the loop on one daemon thread, under the lease.

``paychaos serve engine`` runs them by default (the FastAPI lifespan starts and
stops this thread); ``--no-workers`` leaves them to ``paychaos serve worker``.
With several API processes on one database every process runs the thread, and
the lease (``engine.workers.lease``) lets one of them do the work while the
others stand by, ready to take over when it dies.

A defect (anything but the transient trouble the loop skips) stops the thread
and leaves ``state`` at ``failed``; ``/healthz`` then answers 503 so that the
process's supervisor restarts it, as it would restart ``paychaos serve worker``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum

from engine.workers.lease import Lease
from engine.workers.loop import LoopReport, Worker

log = logging.getLogger("paychaos.worker")


class WorkerState(StrEnum):
    STARTING = "starting"
    LEADING = "leading"  # holds the lease: runs the tasks
    STANDBY = "standby"  # another process holds it
    STOPPED = "stopped"
    FAILED = "failed"


class BackgroundWorker:
    def __init__(
        self,
        worker: Worker,
        lease: Lease,
        interval_s: float,
        close: Callable[[], None] = lambda: None,
        stop_s_max: float = 10.0,
    ):
        assert interval_s > 0 and stop_s_max > 0
        self.worker = worker
        self.lease = lease
        self.interval_s = interval_s
        self.stop_s_max = stop_s_max
        self._close = close
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    @property
    def report(self) -> LoopReport:
        return self.worker.report

    @property
    def state(self) -> WorkerState:
        if self._failed:
            return WorkerState.FAILED
        if self._thread is None:
            return WorkerState.STARTING
        if not self._thread.is_alive():
            return WorkerState.STOPPED
        if self.report.holds_lease:
            return WorkerState.LEADING
        return WorkerState.STANDBY if self.report.standby_loops else WorkerState.STARTING

    def start(self) -> None:
        assert self._thread is None, "started twice"
        self._thread = threading.Thread(target=self._run, name="paychaos-workers", daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        """Ask the loop to stop (between lookups and tasks) and wait for it, at most
        ``stop_s_max``; False when it did not stop in time."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(self.stop_s_max)
        if self._thread.is_alive():  # every step is durable: a cut loop loses nothing
            log.warning("the workers did not stop within %.1f s", self.stop_s_max)
            return False
        return True

    def _run(self) -> None:
        try:
            self.worker.run(self.interval_s, None, self._stop, self.lease)
        except Exception:
            self._failed = True
            log.exception("the workers stopped on a defect")
        finally:
            self.report.holds_lease = False
            try:
                self.lease.release()
            finally:
                self._close()
