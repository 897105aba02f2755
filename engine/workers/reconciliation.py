"""Reconciliation in the service: the provider's settlement report, window by window.

Time is cut into windows of ``interval_s`` (UTC, from the epoch: hours, days;
or from another ``origin``); window ``[start, end)`` is reconciled ``delay_s``
after it ends, when the
provider's report of it is complete and what the engine learns late (by
recovery, by webhook) is booked. The report is fetched for the window widened
by ``lateness_s`` on each side, and before it by ``booking_lag_s`` (rows of money
the engine booked late, by webhook or recovery: ``engine.domain.reconciliation``,
rule 2) (``ReportSource``: the mock PSP's
``GET /_admin/settlement`` over HTTP) and handed to the ``Reconciler``.

Where to start: after the last window this source reconciled (``recon_runs``),
or the first time at ``first_start_at`` if given, else at the last window that
is due. A closing pass (``run_once(closing=True)``, a simulation's at its end)
takes every window that has ended without waiting for the delay, and one more
up to now. At most ``windows_max``
windows per loop: a worker that was away catches up over a few loops, and
``stopping()`` is asked between windows. A report that cannot be fetched is
transient (``ReportUnavailable``: the pass stops there, the window waits); a report
the engine cannot read (cut short, a bad row: the whole download is refused,
never read as far as it goes) is logged and its window downloaded and tried
again next loop, never passed by: a day left unreconciled must stay loud.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from engine.domain.errors import ReportUnavailable as ReportUnavailable  # re-exported: raised here
from engine.domain.errors import SettlementFileInvalid
from engine.domain.reconciliation import Tolerances
from engine.domain.settlement import REPORT_CHARS_MAX
from engine.service.reconciliation import Reconciler, RunSummary

log = logging.getLogger("paychaos.worker.reconciliation")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SOURCE = "worker:psp"
# How long after the provider moved money the ledger may book it: webhooks are
# retried for up to three days, but nearly all land within the hour.
BOOKING_LAG_S = 3_600


class ReportSource:
    """Where settlement reports come from: one document per time span, as downloaded
    (text, read by ``parse_settlement_report``) or already decoded."""

    def fetch(self, start_s: int, end_s: int) -> str | Mapping[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of connections; nothing by default."""


class HttpReportSource(ReportSource):
    """The mock PSP's ``/_admin/settlement`` (Stripe's report runs would sit here)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout_s),
            headers={"Authorization": f"Bearer {api_key}"}, transport=transport,
        )  # fmt: skip

    def fetch(self, start_s: int, end_s: int) -> str:
        params = {"start": str(start_s), "end": str(end_s), "format": "json"}
        try:
            response = self.client.get("/_admin/settlement", params=params)
        except httpx.HTTPError as exc:
            raise ReportUnavailable(message=f"settlement report: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise ReportUnavailable(message=f"settlement report: HTTP {response.status_code}")
        if len(response.content) > REPORT_CHARS_MAX:
            raise SettlementFileInvalid("too_large", f"over {REPORT_CHARS_MAX} bytes")
        return response.text  # read whole or refused whole by the parser

    def close(self) -> None:
        self.client.close()


@dataclass(slots=True)
class ReconReport:
    windows: int = 0
    matched: int = 0
    settled: int = 0
    exceptions_new: int = 0
    refused: int = 0
    unavailable: int = 0  # downloads that failed (not ready, unreachable): the window waits
    summaries: list[RunSummary] = field(default_factory=list)  # one per window run
    refusals: list[str] = field(default_factory=list)  # why a report was refused


def window_end(start_at: datetime, interval: timedelta, origin: datetime = EPOCH) -> datetime:
    """The end of the window holding ``start_at``: the next multiple of ``interval``
    from ``origin``."""
    return origin + ((start_at - origin) // interval + 1) * interval


class ReconciliationWorker:
    def __init__(
        self,
        reconciler: Reconciler,
        source: ReportSource,
        *,
        interval_s: float = 3_600.0,
        delay_s: float = 3_600.0,
        lateness_s: int = 300,
        windows_max: int = 24,
        source_name: str = SOURCE,
        amount_tolerance_minor: int = 0,
        origin: datetime = EPOCH,
        first_start_at: datetime | None = None,
        booking_lag_s: int = BOOKING_LAG_S,
    ):
        assert interval_s >= 60 and delay_s >= lateness_s >= 0 and windows_max > 0
        self.reconciler = reconciler
        self.source = source
        self.interval = timedelta(seconds=interval_s)
        self.delay = timedelta(seconds=delay_s)
        self.tolerances = Tolerances(
            amount_tolerance_minor, lateness_s=lateness_s, booking_lag_s=booking_lag_s
        )
        self.windows_max = windows_max
        self.source_name = source_name
        self.origin = origin
        self.first_start_at = first_start_at
        self._next_start_at: datetime | None = None

    @property
    def next_start_at(self) -> datetime | None:
        """Where the next window starts (None until the first loop)."""
        return self._next_start_at

    def _start_at(self, now: datetime) -> datetime:
        if self._next_start_at is None:
            last = self.reconciler.last_window_end(self.source_name)
            # The first time: the last window that is due, not the whole past.
            due_end = window_end(now - self.delay - self.interval, self.interval, self.origin)
            self._next_start_at = last or self.first_start_at or due_end - self.interval
        return self._next_start_at

    def _window(self, now: datetime, closing: bool) -> tuple[datetime, datetime] | None:
        """The next window if it is due: whole, or (closing) the last one, up to now."""
        start_at = self._start_at(now)
        end_at = window_end(start_at, self.interval, self.origin)
        if end_at + (timedelta(0) if closing else self.delay) <= now:
            return start_at, end_at
        # The provider's rows are whole seconds: the last window takes this one's in.
        tail_end_at = now.replace(microsecond=0) + timedelta(seconds=1)
        return (start_at, tail_end_at) if closing and start_at < tail_end_at else None

    def run_once(
        self, stopping: Callable[[], bool] = lambda: False, *, closing: bool = False
    ) -> ReconReport:
        """The windows that are due, oldest first, at most ``windows_max``."""
        report = ReconReport()
        now = self.reconciler.clock.now()
        slack = timedelta(seconds=self.tolerances.lateness_s)
        lag = timedelta(seconds=self.tolerances.booking_lag_s)
        for _ in range(self.windows_max):
            window = self._window(now, closing)
            if window is None or stopping():
                break
            start_at, end_at = window
            try:
                # Rows from before the window too: money the ledger booked late matches them.
                document = self.source.fetch(_epoch_s(start_at - slack - lag),
                                             _epoch_s(end_at + slack))  # fmt: skip
                summary = self.reconciler.run(document, self.source_name, start_at, end_at,
                                              self.tolerances)  # fmt: skip
            except ReportUnavailable as exc:
                report.unavailable += 1
                log.warning("the provider's settlement report is unavailable: %s", exc.message,
                            extra={"window_start": start_at.isoformat()})  # fmt: skip
                break
            except SettlementFileInvalid as exc:
                report.refused += 1
                report.refusals.append(f"{start_at.isoformat()}: {exc.code}: {exc.message}")
                log.error("the provider's settlement report was refused: %s", exc.message,
                          extra={"window_start": start_at.isoformat()})  # fmt: skip
                break
            self._next_start_at = end_at
            report.summaries.append(summary)
            report.windows += 1
            report.matched += summary.matched_count
            report.settled += summary.settled_count
            report.exceptions_new += summary.new_count
            log.info("reconciled", extra={"window_start": start_at.isoformat(),
                                          "exceptions_new": summary.new_count})  # fmt: skip
        return report


def _epoch_s(moment: datetime) -> int:
    return int((moment - EPOCH).total_seconds())
