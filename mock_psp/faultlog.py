"""The fault log: every fault decision that fired, with (time, kind, target).

A chaos run that fired no fault proves nothing; the log and its counters are how a
run reports which faults it exercised. The record list is bounded (oldest dropped),
the counters are exact for the whole run.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from enum import StrEnum

FAULT_LOG_RECORDS_MAX = 100_000


class FaultKind(StrEnum):
    API_LATENCY = "api.latency"
    API_TIMEOUT_BEFORE = "api.timeout_before"
    API_TIMEOUT_AFTER = "api.timeout_after"
    API_500 = "api.http_500"
    API_503 = "api.http_503"
    API_429 = "api.http_429"
    API_DECLINE = "api.extra_decline"
    API_LATE_ARRIVAL = "api.late_arrival"  # an unanswered request processed later
    WEBHOOK_DROP_ATTEMPT = "webhook.drop_attempt"
    WEBHOOK_PERMANENT_LOSS = "webhook.permanent_loss"
    WEBHOOK_DUPLICATE = "webhook.duplicate"
    WEBHOOK_DELAY = "webhook.delay"
    WEBHOOK_REORDER = "webhook.reorder"
    WEBHOOK_STALE_REPLAY = "webhook.stale_replay"
    WEBHOOK_FORGED = "webhook.forged"
    WEBHOOK_OLD_TIMESTAMP = "webhook.old_timestamp"
    WEBHOOK_GIVEN_UP = "webhook.retries_exhausted"
    SETTLEMENT_MISSING_ROW = "settlement.missing_row"
    SETTLEMENT_AMOUNT_MISMATCH = "settlement.amount_mismatch"
    SETTLEMENT_UNEXPECTED_ROW = "settlement.unexpected_row"
    SETTLEMENT_LATE_ROW = "settlement.late_row"
    SETTLEMENT_GARBLED = "settlement.garbled"  # one download cut short or with a bad row
    SETTLEMENT_UNAVAILABLE = "settlement.unavailable"  # one download answered 503
    PAYOUT_FAILED = "payout.failed"


@dataclass(frozen=True, slots=True)
class FaultRecord:
    at_s: float
    kind: FaultKind
    target: str  # endpoint name, event id, delivery id or balance transaction id
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at_s,
            "kind": str(self.kind),
            "target": self.target,
            "detail": self.detail,
        }


class FaultLog:
    __slots__ = ("_counts", "_records")

    def __init__(self, records_max: int = FAULT_LOG_RECORDS_MAX) -> None:
        assert records_max > 0
        self._records: deque[FaultRecord] = deque(maxlen=records_max)
        self._counts: Counter[str] = Counter()

    def record(self, at_s: float, kind: FaultKind, target: str, detail: str = "") -> FaultRecord:
        entry = FaultRecord(at_s, kind, target, detail)
        self._records.append(entry)
        self._counts[str(kind)] += 1
        return entry

    def count(self, kind: FaultKind) -> None:
        """Count a fault too frequent to log one record each (latency)."""
        self._counts[str(kind)] += 1

    def records(self) -> list[FaultRecord]:
        return list(self._records)

    def counts(self) -> dict[str, int]:
        """Counts per fault kind; kinds that never fired are listed with 0."""
        return {str(kind): self._counts.get(str(kind), 0) for kind in FaultKind}

    def total(self) -> int:
        return sum(self._counts.values())

    def clear(self) -> None:
        self._records.clear()
        self._counts.clear()
