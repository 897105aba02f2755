"""Event catch-up: take the provider's events whose webhooks never came.

The engine learns of a dispute, a refund's or a payout's end only from webhooks,
and a provider gives up on a delivery after days of failures (Stripe: three). An
attempt can be looked up by its key; a lost event cannot. So, as Stripe advises,
the engine lists the provider's events (``GET /v1/events``, kept 30 days) on an
interval and hands each one to the webhook intake (``PaymentEngine.take_webhook``),
translated exactly as the webhook route translates a verified delivery. An event
already kept is a duplicate there (the inbox dedupes by event id): a pass, and a
pass repeated, take nothing twice.

    cursor     every event created before it was listed and taken; kept in the
               database (``adapters.cursor_store``), so a restart goes on from it
    sweep      the span one pass lists: ``[cursor - overlap_s, now - grace_s)``,
               newest first, a page at a time, then taken oldest first; the cursor
               moves to its end once it was listed whole
    grace_s    events younger than that are left to their delivery (normally seconds)
    overlap_s  each sweep reads the end of the last one again: for an event that
               appears in the provider's list later than its creation time says
    bounds     ``events_max`` events per pass; a sweep holding more goes on at the
               next pass (its place in memory: a restart begins it again from the
               cursor) without waiting for the interval

A failed listing (no answer, 429, 5xx: ``EventPage.failure``) ends the pass with
what it listed taken and the cursor where it was; the next pass, an interval later,
asks for the same page again (a 4xx begins the sweep again from the cursor). The
first pass on a database without a cursor looks back ``first_lookback_s``.

Time is the engine's clock, never the wall's: the simulation pumps this worker on
its virtual clock through an ``EventFeed`` into the mock provider's core.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.adapters.cursor_store import CursorStore
from engine.adapters.stripe_dialect import CAUGHT_UP_EVENTS, event_from_stripe
from engine.domain.errors import InvalidRequest
from engine.domain.provider import EventFeed, EventQuery
from engine.service.engine import PaymentEngine, Translate

log = logging.getLogger("paychaos.worker.events")
Check = Callable[[], bool]
FEED = "psp"
PAGE_LIMIT_MAX = 100  # the provider's own bound on a page
TAKEN_NEW = "event caught up after its webhook was lost"
CIRCUIT_OPEN = "circuit_open"


def never() -> bool:
    return False


@dataclass(slots=True)
class CatchUpReport:
    """One pass: events listed, taken as new (``pending``: kept, their application failed,
    the inbox worker's now), duplicates, refused (not events the intake takes), and why
    the pass ended early (``failure``). ``paths``: the simulation's coverage."""

    listed: int = 0
    taken: int = 0
    pending: int = 0
    duplicates: int = 0
    refused: int = 0
    failure: str | None = None
    read_to_at: datetime | None = None  # the cursor, when this pass moved it
    taken_ids: list[str] = field(default_factory=list)  # the events taken as new
    paths: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> bool:
        return self.failure is not None


@dataclass(slots=True)
class Sweep:
    """A span being listed: ``after`` is the oldest event listed and taken so far."""

    start_s: int
    end_s: int
    after: str | None = None


def _epoch_s(moment: datetime) -> int:
    return int(moment.timestamp() // 1)


class EventCatchUp:
    def __init__(
        self,
        engine: PaymentEngine,
        feed: EventFeed,
        *,
        every_s: float = 300.0,
        grace_s: int = 600,
        overlap_s: int = 300,
        first_lookback_s: int = 86_400,
        events_max: int = 1_000,
        page_max: int = PAGE_LIMIT_MAX,
        types: Sequence[str] = CAUGHT_UP_EVENTS,
        translate: Translate = event_from_stripe,
        feed_name: str = FEED,
    ):
        assert every_s > 0 and grace_s >= 0 and overlap_s >= 0 and first_lookback_s >= 0
        assert events_max > 0 and 0 < page_max <= PAGE_LIMIT_MAX and types
        self.engine, self.feed, self.clock = engine, feed, engine.clock
        self.cursors = CursorStore(engine.db)
        self.every = timedelta(seconds=every_s)
        self.grace_s, self.overlap_s, self.first_lookback_s = grace_s, overlap_s, first_lookback_s
        self.events_max, self.page_max = events_max, page_max
        self.types, self.translate, self.feed_name = tuple(types), translate, feed_name
        self._sweep: Sweep | None = None
        self._last_at: datetime | None = None
        self._behind = False  # the last pass stopped at events_max: go on at once

    @property
    def behind(self) -> bool:
        """The last pass stopped at ``events_max`` with more to list: the next is due now."""
        return self._behind

    def run_once(self, stopping: Check = never) -> CatchUpReport:
        """A pass when one is due (every ``every_s``, or at once while behind)."""
        now = self.clock.now()
        if not self._behind and self._last_at is not None and now - self._last_at < self.every:
            return CatchUpReport()
        self._last_at = now
        return self.pass_once(now, stopping)

    def pass_once(
        self, now: datetime, stopping: Check = never, report: CatchUpReport | None = None
    ) -> CatchUpReport:
        """One bounded pass of the sweep under way, or of a new one up to ``now - grace_s``.

        ``report`` (filled as it goes): what a pass cut short by an exception did."""
        report = CatchUpReport() if report is None else report
        self._behind = False
        sweep = self._sweep or self._begin(now)
        if sweep is None:
            return report
        self._sweep = sweep
        listed, whole = self._list(sweep, report, stopping)
        for event in reversed(listed):  # oldest first: a dispute's opening before its end
            self._take(event, report)
        if listed:
            sweep.after = str(listed[-1]["id"])
        if report.failure is not None:
            self._failed(report)
        elif whole:
            read_to_at = datetime.fromtimestamp(sweep.end_s, UTC)
            self.cursors.save(self.feed_name, read_to_at, now)
            report.read_to_at, self._sweep = read_to_at, None
        else:
            self._behind = not stopping()
        return report

    def _begin(self, now: datetime) -> Sweep | None:
        end_s = _epoch_s(now) - self.grace_s
        cursor = self.cursors.read(self.feed_name)
        if cursor is None:
            return Sweep(max(end_s - self.first_lookback_s, 0), end_s)
        cursor_s = _epoch_s(cursor)
        if end_s <= cursor_s:
            return None
        return Sweep(max(cursor_s - self.overlap_s, 0), end_s)

    def _list(
        self, sweep: Sweep, report: CatchUpReport, stopping: Check
    ) -> tuple[list[Mapping[str, Any]], bool]:
        """Pages of the sweep, newest first, up to ``events_max`` events; True when the
        sweep was listed to its oldest event."""
        listed: list[Mapping[str, Any]] = []
        after = sweep.after
        while len(listed) < self.events_max and not stopping():
            limit = min(self.page_max, self.events_max - len(listed))
            query = EventQuery(self.types, sweep.start_s, sweep.end_s, limit, after)
            page = self.feed.list_events(query)
            if page.failure is not None:
                report.failure = page.failure
                return listed, False
            listed.extend(page.events)
            report.listed += len(page.events)
            if not page.has_more or not page.events:
                return listed, True
            after = str(page.events[-1]["id"])
        return listed, False

    def _take(self, event: Mapping[str, Any], report: CatchUpReport) -> None:
        """Hand one listed event to the intake, as the webhook route hands a delivery."""
        try:
            translated = self.translate(event)
            payload = json.dumps(event, separators=(",", ":"))
            taken, detail = self.engine.take_webhook(translated, payload)
        except (ValueError, KeyError, TypeError, InvalidRequest) as exc:
            # What the webhook route refuses with a 400: no retry makes it takeable.
            report.refused += 1
            report.paths["event catch-up refused an event the intake does not take"] += 1
            log.error("a listed event was refused", extra={"provider_event_id": event.get("id"),
                                                          "error": str(exc)[:200]})  # fmt: skip
            return
        if taken == "duplicate":
            report.duplicates += 1
            return
        report.taken += 1
        report.pending += taken == "pending"
        report.taken_ids.append(translated.event_id)
        report.paths[TAKEN_NEW] += 1
        log.warning(
            "event caught up: its webhook never came",
            extra={"provider_event_id": translated.event_id, "type": translated.type,
                   "status": taken, "outcome": detail},
        )  # fmt: skip

    def _failed(self, report: CatchUpReport) -> None:
        failure = report.failure or ""
        if failure.startswith("http_4") and failure != "http_429":
            self._sweep = None  # refused (a cursor event gone, say): begin again from the cursor
        reason = "circuit open" if failure == CIRCUIT_OPEN else "provider error"
        report.paths[f"event catch-up failed: {reason}"] += 1
        log.warning("event catch-up failed: %s", failure, extra={"failure": failure})
