"""The settlement report: Stripe's itemized payout reconciliation columns, CSV and JSON.

Rows are balance transactions created in ``[start_s, end_s)`` (and not after ``now``),
with amounts in minor units internally and major units in the CSV, formatted with the
currency's exponent (JPY 0, USD 2, KWD 3) as Stripe's reports do.

Settlement faults are decided per balance transaction by hashing it with a seeded
salt, so asking for the same report twice gives the same answer (a real provider's
report does not change between downloads) and each fault is logged once:
missing row, amount mismatch (gross and net off by ``mismatch_delta_minor``), late row
(reported ``late_by_s`` after it happened, so it falls in a later window) and
unexpected rows (rows for money the provider never moved).

Downloads fail too (``SettlementReporter.serve``): a download is served garbled
(JSON cut short at a byte, or one row with an amount no parser reads) or answered
503 (not ready), each drawn per download of a span (the n-th download of a span
draws anew), and logged once per download. A whole one always follows, sooner or
later: the reader must refuse a garbled one and download again, never read it as
far as it goes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from mock_psp.faultlog import FaultKind, FaultLog
from mock_psp.faults import SettlementFaultSpec
from mock_psp.money import format_major
from mock_psp.records import BalanceTransaction
from mock_psp.world import ProviderState

REPORT_ROWS_MAX = 1_000_000
BASE_COLUMNS = (
    "balance_transaction_id",
    "created_utc",
    "available_on_utc",
    "currency",
    "gross",
    "fee",
    "net",
    "reporting_category",
    "source_id",
    "description",
    "customer_facing_amount",
    "customer_facing_currency",
    "automatic_payout_id",
    "payment_intent_id",
    "charge_id",
    "refund_id",
    "dispute_id",
    "payment_method_type",
    "card_brand",
)


def utc_text(at_s: int) -> str:
    return datetime.fromtimestamp(at_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class SettlementRow:
    balance_transaction_id: str
    created_s: int
    available_on_s: int
    currency: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    reporting_category: str
    source_id: str
    description: str | None
    customer_facing_amount_minor: int | None
    payment_intent_id: str | None
    charge_id: str | None
    refund_id: str | None
    dispute_id: str | None
    card_brand: str | None
    payment_metadata: dict[str, str] = field(default_factory=dict)
    refund_metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SettlementReport:
    start_s: int
    end_s: int
    order_ref_key: str
    rows: tuple[SettlementRow, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return (*BASE_COLUMNS, f"payment_metadata[{self.order_ref_key}]")

    def _cells(self, row: SettlementRow) -> list[str]:
        cur = row.currency
        facing = row.customer_facing_amount_minor
        return [
            row.balance_transaction_id,
            utc_text(row.created_s),
            utc_text(row.available_on_s),
            cur,
            format_major(row.gross_minor, cur),
            format_major(row.fee_minor, cur),
            format_major(row.net_minor, cur),
            row.reporting_category,
            row.source_id,
            row.description or "",
            "" if facing is None else format_major(facing, cur),
            "" if facing is None else cur,
            "",
            row.payment_intent_id or "",
            row.charge_id or "",
            row.refund_id or "",
            row.dispute_id or "",
            "card" if row.charge_id else "",
            row.card_brand or "",
            row.payment_metadata.get(self.order_ref_key, ""),
        ]

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow(self._cells(row))
        return out.getvalue()

    def to_json(self) -> dict[str, Any]:
        data = []
        for row in self.rows:
            item: dict[str, Any] = dict(zip(self.columns, self._cells(row), strict=True))
            item.update(
                gross_minor=row.gross_minor,
                fee_minor=row.fee_minor,
                net_minor=row.net_minor,
                created=row.created_s,
                available_on=row.available_on_s,
                payment_metadata=dict(row.payment_metadata),
                refund_metadata=dict(row.refund_metadata),
            )
            data.append(item)
        return {
            "object": "settlement_report",
            "interval_start": self.start_s,
            "interval_end": self.end_s,
            "columns": list(self.columns),
            "data": data,
        }


def _uniform(salt: str, kind: str, key: str) -> float:
    digest = hashlib.sha256(f"{salt}:{kind}:{key}".encode()).hexdigest()
    return int(digest[:13], 16) / float(16**13)


@dataclass(frozen=True, slots=True)
class Served:
    """One download of a report: its HTTP status and its text as sent."""

    status: int
    text: str
    fault: FaultKind | None = None


NOT_READY = '{"error": {"type": "api_error", "message": "The report is not ready yet."}}'


def _garbled_row(text: str, report_format: str, index: int) -> str:
    """The text with row ``index``'s gross replaced by a value no reader accepts."""
    if report_format == "csv":
        records = list(csv.reader(io.StringIO(text)))
        column = records[0].index("gross")
        records[index + 1][column] = "12.3.4"
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(records)
        return out.getvalue()
    document = json.loads(text)
    document["data"][index]["gross_minor"] = "12.3.4"
    return json.dumps(document)


class SettlementReporter:
    __slots__ = ("_downloads", "_logged", "_salt", "log")

    def __init__(self, salt: str, log: FaultLog) -> None:
        self._salt = salt
        self._logged: set[str] = set()
        self._downloads: dict[str, int] = {}
        self.log = log

    def serve(
        self, text: str, rows: int, spec: SettlementFaultSpec, span: str, now_s: float,
        report_format: str = "json",
    ) -> Served:  # fmt: skip
        """A download of the report ``text`` (``rows`` rows) for ``span``, with the
        plan's download faults: whole, garbled or not ready."""
        count = self._downloads.get(span, 0) + 1
        self._downloads[span] = count
        key = f"{span}#{count}"
        if _uniform(self._salt, "unavailable", key) < spec.unavailable_rate:
            self._log_once(now_s, FaultKind.SETTLEMENT_UNAVAILABLE, key)
            return Served(503, NOT_READY, FaultKind.SETTLEMENT_UNAVAILABLE)
        if len(text) < 2 or _uniform(self._salt, "garbled", key) >= spec.garbled_rate:
            return Served(200, text)
        if report_format == "csv" and not rows:
            return Served(200, text)  # nothing to garble that a reader could tell
        where = _uniform(self._salt, "garbled-where", key)
        # A CSV cut short at a row's end reads as a shorter report (CSV cannot tell), and
        # one cut inside its last cell as a row with another value: CSV only gets bad rows.
        bad_row = report_format == "csv" or _uniform(self._salt, "garbled-how", key) < 0.5
        if rows and bad_row:
            index = int(where * rows)
            self._log_once(now_s, FaultKind.SETTLEMENT_GARBLED, key, f"bad row {index}")
            return Served(200, _garbled_row(text, report_format, index),
                          FaultKind.SETTLEMENT_GARBLED)  # fmt: skip
        cut = 1 + int(where * (len(text) - 2))  # never the whole text, never nothing
        self._log_once(now_s, FaultKind.SETTLEMENT_GARBLED, key,
                       f"cut at {cut} of {len(text)} characters")  # fmt: skip
        return Served(200, text[:cut], FaultKind.SETTLEMENT_GARBLED)

    def _log_once(self, now_s: float, kind: FaultKind, target: str, detail: str = "") -> None:
        key = f"{kind}:{target}"
        if key not in self._logged:
            self._logged.add(key)
            self.log.record(now_s, kind, target, detail)

    def build(
        self,
        state: ProviderState,
        spec: SettlementFaultSpec,
        *,
        start_s: int,
        end_s: int,
        now_s: float,
        order_ref_key: str,
    ) -> SettlementReport:
        rows: list[SettlementRow] = []
        late_s = int(spec.late_by_s) if spec.late_row_rate > 0 else 0
        for bt in state.balance_transactions.values():
            if bt.created_s >= end_s or bt.created_s + late_s < start_s:
                continue  # its row cannot fall in the span (a late one moves later only)
            row = self._faulted_row(state, spec, bt, now_s)
            if row is not None and start_s <= row.created_s < end_s and row.created_s <= now_s:
                rows.append(row)
            assert len(rows) <= REPORT_ROWS_MAX, "settlement report too large"
        rows.extend(self._unexpected_rows(spec, start_s, end_s, now_s, rows))
        rows.sort(key=lambda r: r.created_s)  # stable: creation order within a second
        return SettlementReport(start_s, end_s, order_ref_key, tuple(rows))

    def _faulted_row(
        self,
        state: ProviderState,
        spec: SettlementFaultSpec,
        bt: BalanceTransaction,
        now_s: float,
    ) -> SettlementRow | None:
        if _uniform(self._salt, "missing", bt.id) < spec.missing_row_rate:
            self._log_once(now_s, FaultKind.SETTLEMENT_MISSING_ROW, bt.id)
            return None
        row = row_for(state, bt)
        if _uniform(self._salt, "late", bt.id) < spec.late_row_rate:
            late_s = int(spec.late_by_s)
            self._log_once(now_s, FaultKind.SETTLEMENT_LATE_ROW, bt.id, f"+{late_s}s")
            row = replace(row, created_s=row.created_s + late_s)
        if _uniform(self._salt, "mismatch", bt.id) < spec.amount_mismatch_rate:
            delta = spec.mismatch_delta_minor
            self._log_once(now_s, FaultKind.SETTLEMENT_AMOUNT_MISMATCH, bt.id, f"+{delta}")
            row = replace(row, gross_minor=row.gross_minor + delta, net_minor=row.net_minor + delta)
        return row

    def _unexpected_rows(
        self,
        spec: SettlementFaultSpec,
        start_s: int,
        end_s: int,
        now_s: float,
        rows: list[SettlementRow],
    ) -> list[SettlementRow]:
        extra: list[SettlementRow] = []
        top_s = min(end_s, int(now_s) + 1)
        if top_s <= start_s:
            return extra
        currency = rows[0].currency if rows else "usd"
        for index in range(spec.unexpected_row_count):
            key = f"{start_s}:{end_s}:{index}"
            digest = hashlib.sha256(f"{self._salt}:unexpected:{key}".encode()).hexdigest()
            gross = 100 + int(digest[:8], 16) % 9_900
            created = start_s + int(digest[8:16], 16) % (top_s - start_s)
            bt_id = f"txn_{digest[16:40]}"
            self._log_once(now_s, FaultKind.SETTLEMENT_UNEXPECTED_ROW, bt_id)
            extra.append(
                SettlementRow(
                    balance_transaction_id=bt_id,
                    created_s=created,
                    available_on_s=created,
                    currency=currency,
                    gross_minor=gross,
                    fee_minor=0,
                    net_minor=gross,
                    reporting_category="charge",
                    source_id=f"ch_{digest[40:64]}",
                    description=None,
                    customer_facing_amount_minor=gross,
                    payment_intent_id=None,
                    charge_id=None,
                    refund_id=None,
                    dispute_id=None,
                    card_brand=None,
                )
            )
        return extra


def row_for(state: ProviderState, bt: BalanceTransaction) -> SettlementRow:
    pi = state.payment_intents.get(bt.payment_intent_id or "")
    refund = state.refunds.get(bt.source_id)
    dispute = state.disputes.get(bt.source_id)
    charge = state.charges.get(bt.charge_id or "")
    facing: int | None = None
    if refund is not None:
        facing = refund.amount_minor
    elif dispute is not None:
        facing = dispute.amount_minor
    elif charge is not None:
        facing = bt.amount_minor
    return SettlementRow(
        balance_transaction_id=bt.id,
        created_s=bt.created_s,
        available_on_s=bt.available_on_s,
        currency=bt.currency,
        gross_minor=bt.amount_minor,
        fee_minor=bt.fee_minor,
        net_minor=bt.net_minor,
        reporting_category=bt.reporting_category,
        source_id=bt.source_id,
        description=bt.description,
        customer_facing_amount_minor=facing,
        payment_intent_id=bt.payment_intent_id,
        charge_id=bt.charge_id,
        refund_id=None if refund is None else refund.id,
        dispute_id=None if dispute is None else dispute.id,
        card_brand=None if charge is None else charge.card.brand,
        payment_metadata={} if pi is None else dict(pi.metadata),
        refund_metadata={} if refund is None else dict(refund.metadata),
    )
