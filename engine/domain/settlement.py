"""The provider's settlement report, read into exact rows: CSV or JSON, never floats.

The format is the mock PSP's (``mock_psp.settlement``), which follows Stripe's
itemized reconciliation report:

- CSV: a header line, then one balance transaction per line. Amounts (``gross``,
  ``fee``, ``net``, ``customer_facing_amount``) are written in *major* units
  with the currency's exponent (``12.34`` USD, ``500`` JPY, ``1.500`` KWD);
  times are UTC text (``2024-01-01 00:00:00``); currencies are lower-case ISO
  4217 codes. Unknown columns are ignored; ``payment_metadata[KEY]`` and
  ``refund_metadata[KEY]`` columns are read as metadata.
- JSON: ``{"object": "settlement_report", "interval_start", "interval_end",
  "columns", "data": [row, ...]}`` (or a bare list of rows). A row carries the
  CSV's columns and, authoritative when present, ``gross_minor``/``fee_minor``/
  ``net_minor`` integers, ``created``/``available_on`` epoch seconds and
  ``payment_metadata``/``refund_metadata`` objects. When both forms are there
  they must agree.

Major units become integer minor units by string arithmetic on the digits: a
value with more decimals than the currency's exponent is refused, never
rounded. A row must be self-consistent (``net = gross - fee``) and have the sign
its category implies (a charge is never negative, a refund never positive).

Every refusal is a ``SettlementFileInvalid`` naming where: ``line 7, column
gross`` for CSV, ``data[6], field gross`` for JSON. Everything is bounded: the
text's size, the row count, each cell's length, each amount's digits.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn

from engine.domain.errors import InvalidRequest, SettlementFileInvalid
from engine.domain.money import CURRENCY_EXPONENTS

REPORT_ROWS_MAX = 200_000
REPORT_CHARS_MAX = 128 * 1024 * 1024
CELL_CHARS_MAX = 1_000
METADATA_KEYS_MAX = 50
METADATA_KEY_CHARS_MAX = 40
METADATA_VALUE_CHARS_MAX = 500
AMOUNT_DIGITS_MAX = 15  # integer digits of a major amount: far above any real balance
EPOCH_S_MAX = 2**35  # the year 3058: a bound, not a prophecy

REQUIRED_COLUMNS = (
    "balance_transaction_id",
    "created_utc",
    "available_on_utc",
    "currency",
    "gross",
    "fee",
    "net",
    "reporting_category",
)

# The sign of ``gross`` each known category implies: money into the provider
# balance is positive. Unknown categories are read, with no sign rule.
GROSS_SIGN_BY_CATEGORY: dict[str, int] = {
    "charge": 1,
    "refund": -1,
    "dispute": -1,
    "dispute_reversal": 1,
    "payout": -1,
    "payout_reversal": 1,
}
PAYOUT_CATEGORIES = frozenset({"payout", "payout_reversal"})

_MAJOR = re.compile(r"(-?)(\d+)(?:\.(\d+))?")
_UTC_TEXT = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:Z|[+]00:?00)?")
_CATEGORY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_METADATA_COLUMN = re.compile(r"(payment|refund)_metadata\[(.+)\]")


class ReportFormat(StrEnum):
    CSV = "csv"
    JSON = "json"


Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SettlementRow:
    """One balance transaction as the provider reports it, amounts in minor units.

    ``payout_id`` is the payout that carried the row (``automatic_payout_id``),
    or for a payout's own rows the payout itself (their ``source_id``).
    ``source`` says where the row was read (``line 7``, ``data[6]``); it takes
    no part in equality, so a CSV row equals the same row read from JSON.
    """

    balance_transaction_id: str
    created_at: datetime
    available_on_at: datetime
    currency: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    reporting_category: str
    source_id: str | None = None
    description: str | None = None
    customer_facing_amount_minor: int | None = None
    customer_facing_currency: str | None = None
    payout_id: str | None = None
    payment_intent_id: str | None = None
    charge_id: str | None = None
    refund_id: str | None = None
    dispute_id: str | None = None
    payment_metadata: Metadata = ()
    refund_metadata: Metadata = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        assert self.created_at.tzinfo is not None, "settlement times are aware"
        assert self.currency in CURRENCY_EXPONENTS, self.currency
        assert self.net_minor == self.gross_minor - self.fee_minor, self

    def payment_metadata_value(self, key: str) -> str | None:
        return dict(self.payment_metadata).get(key)


_TIMES = ("created_at", "available_on_at")
_METADATA = ("payment_metadata", "refund_metadata")


def row_document(row: SettlementRow) -> dict[str, Any]:
    """A row as a JSON object that ``row_from_document`` gives back equal (and with its
    ``source``): how a row is kept with the exception an earlier run raised about it."""
    document: dict[str, Any] = {}
    for name in (f.name for f in fields(SettlementRow)):
        value = getattr(row, name)
        if name in _TIMES:
            value = value.isoformat()
        elif name in _METADATA:
            value = [list(pair) for pair in value]
        document[name] = value
    return document


def row_from_document(document: Mapping[str, Any]) -> SettlementRow:
    """The row ``row_document`` wrote."""
    values = dict(document)
    for name in _TIMES:
        values[name] = datetime.fromisoformat(values[name])
    for name in _METADATA:
        values[name] = tuple((str(key), str(value)) for key, value in values[name])
    return SettlementRow(**values)


@dataclass(frozen=True, slots=True)
class SettlementReport:
    format: ReportFormat
    rows: tuple[SettlementRow, ...]
    interval_start_at: datetime | None = None
    interval_end_at: datetime | None = None


class _CellError(Exception):
    """A bad value, before the reader adds where it was."""

    def __init__(self, reason: str, problem: str):
        self.reason = reason
        self.problem = problem
        super().__init__(problem)


# --- values -------------------------------------------------------------------------


def parse_currency_code(text: str) -> str:
    code = text.strip().upper()
    if code not in CURRENCY_EXPONENTS:
        raise _CellError("unknown_currency", f"{text[:20]!r} is not a currency the engine knows")
    return code


def minor_from_major(text: str, currency: str) -> int:
    """``"12.34", "USD" -> 1234``; exact, by the digits; more decimals than allowed refused."""
    exponent = CURRENCY_EXPONENTS[currency]
    match = _MAJOR.fullmatch(text)
    if match is None:
        raise _CellError("bad_number", f"{text[:40]!r} is not a number")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if len(whole) > AMOUNT_DIGITS_MAX:
        raise _CellError("bad_number", f"{text[:40]!r} has more than {AMOUNT_DIGITS_MAX} digits")
    if len(fraction) > exponent:
        raise _CellError(
            "too_many_decimals",
            f"{text[:40]!r} has more decimals than {currency} allows ({exponent})",
        )
    units: int = int(whole) * 10**exponent + int(fraction.ljust(exponent, "0") or "0")
    return -units if sign else units


def utc_from_text(text: str) -> datetime:
    match = _UTC_TEXT.fullmatch(text.strip())
    if match is None:
        raise _CellError("bad_date", f"{text[:40]!r} is not a UTC time like 2024-01-31 23:59:59")
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise _CellError("bad_date", f"{text[:40]!r} is not a real time ({exc})") from exc


def utc_from_epoch(value: object) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _CellError("bad_date", f"{str(value)[:40]!r} is not whole epoch seconds")
    if value < 0:
        raise _CellError("negative", f"{value} is negative: epoch seconds never are")
    if value > EPOCH_S_MAX:
        raise _CellError("bad_date", f"{value} is beyond the last time a report may name")
    return datetime.fromtimestamp(value, tz=UTC)


# --- one row, whatever the format -----------------------------------------------------


class _RowReader:
    """A row's cells by column name; errors say where (line or data index, column)."""

    __slots__ = ("_cells", "line", "row_index")

    def __init__(self, cells: Mapping[str, Any], line: int | None, row_index: int | None):
        self._cells = cells
        self.line = line
        self.row_index = row_index

    @property
    def source(self) -> str:
        return f"line {self.line}" if self.row_index is None else f"data[{self.row_index}]"

    def fail(self, column: str, reason: str, problem: str) -> NoReturn:
        raise SettlementFileInvalid(
            reason, problem, line=self.line, row_index=self.row_index, column=column
        )

    def raw(self, column: str) -> Any:
        return self._cells.get(column)

    def exact(self, column: str) -> Any:
        """JSON's exact twin of a column (``gross_minor``, ``created``); CSV has none:
        a CSV ``created`` column is local-time text in Stripe's reports."""
        return None if self.row_index is None else self._cells.get(column)

    def text(self, column: str, *, required: bool = False) -> str | None:
        value = self._cells.get(column)
        if value is None or value == "":
            if required:
                self.fail(column, "missing_value", "the value is missing")
            return None
        if not isinstance(value, str):
            self.fail(column, "bad_value", f"{str(value)[:40]!r} is not text")
        if len(value) > CELL_CHARS_MAX:
            self.fail(column, "too_long", f"the value is longer than {CELL_CHARS_MAX} characters")
        return value

    def currency(self, column: str, *, required: bool = True) -> str | None:
        text = self.text(column, required=required)
        if text is None:
            return None
        try:
            return parse_currency_code(text)
        except _CellError as exc:
            self.fail(column, exc.reason, exc.problem)

    def amount_minor(self, column: str, currency: str, *, required: bool = True) -> int | None:
        exact = self.exact(f"{column}_minor")
        text = self.text(column, required=required and exact is None)
        try:
            major = None if text is None else minor_from_major(text, currency)
        except _CellError as exc:
            self.fail(column, exc.reason, exc.problem)
        if exact is None:
            return major
        if isinstance(exact, bool) or not isinstance(exact, int) or abs(exact) >= 10**18:
            self.fail(f"{column}_minor", "bad_number", f"{str(exact)[:40]!r} is not an integer")
        if major is not None and major != exact:
            self.fail(column, "inconsistent", f"{text!r} is not {column}_minor {exact}")
        return exact

    def time(self, column: str, epoch_column: str) -> datetime:
        epoch = self.exact(epoch_column)
        text = self.text(column, required=epoch is None)
        try:
            from_text = None if text is None else utc_from_text(text)
        except _CellError as exc:
            self.fail(column, exc.reason, exc.problem)
        if epoch is None:
            assert from_text is not None
            return from_text
        try:
            at = utc_from_epoch(epoch)
        except _CellError as exc:
            self.fail(epoch_column, exc.reason, exc.problem)
        if from_text is not None and from_text != at:
            self.fail(column, "inconsistent", f"{text!r} is not {epoch_column} {epoch}")
        return at


def _metadata(reader: _RowReader, prefix: str, columns: Sequence[str]) -> Metadata:
    """From a JSON object ``{prefix}_metadata`` or CSV columns ``{prefix}_metadata[KEY]``."""
    name = f"{prefix}_metadata"
    found = reader.raw(name)
    if found is None:
        found = {}
        for column in columns:
            match = _METADATA_COLUMN.fullmatch(column)
            value = reader.raw(column)
            if match is not None and match.group(1) == prefix and value:
                found[match.group(2)] = value
    if not isinstance(found, Mapping) or len(found) > METADATA_KEYS_MAX:
        reader.fail(name, "bad_metadata", f"metadata is an object of at most {METADATA_KEYS_MAX}")
    for key, value in found.items():
        if not (isinstance(key, str) and 0 < len(key) <= METADATA_KEY_CHARS_MAX):
            reader.fail(name, "bad_metadata", f"key {str(key)[:50]!r} is not a short text")
        if not (isinstance(value, str) and len(value) <= METADATA_VALUE_CHARS_MAX):
            reader.fail(name, "bad_metadata", f"the value of {key!r} is not a short text")
    return tuple(sorted(found.items()))


def _category(reader: _RowReader) -> str:
    category = reader.text("reporting_category", required=True)
    assert category is not None
    if _CATEGORY.fullmatch(category) is None:
        reader.fail("reporting_category", "bad_category", f"{category[:40]!r} is not a category")
    return category


def _check_signs(reader: _RowReader, category: str, gross: int, fee: int, net: int) -> None:
    sign = GROSS_SIGN_BY_CATEGORY.get(category)
    if sign is not None and gross * sign < 0:
        which = "negative" if gross < 0 else "positive"
        reader.fail("gross", which, f"{gross} minor units is {which}: a {category} never is")
    if category == "charge" and fee < 0:
        reader.fail("fee", "negative", f"{fee} minor units is negative: a charge's fee never is")
    if net != gross - fee:
        reader.fail("net", "inconsistent", f"net {net} is not gross {gross} minus fee {fee}")


def _facing(reader: _RowReader, currency: str) -> tuple[int | None, str | None]:
    facing_currency = reader.currency("customer_facing_currency", required=False) or currency
    facing = reader.amount_minor("customer_facing_amount", facing_currency, required=False)
    if facing is None:
        return None, None
    if facing < 0:
        reader.fail("customer_facing_amount", "negative", f"{facing} minor units is negative")
    return facing, facing_currency


def _read_row(reader: _RowReader, columns: Sequence[str]) -> SettlementRow:
    bt_id = reader.text("balance_transaction_id", required=True)
    assert bt_id is not None
    created_at = reader.time("created_utc", "created")
    available_on_at = reader.time("available_on_utc", "available_on")
    currency = reader.currency("currency")
    assert currency is not None
    gross = reader.amount_minor("gross", currency)
    fee = reader.amount_minor("fee", currency)
    net = reader.amount_minor("net", currency)
    assert gross is not None and fee is not None and net is not None
    category = _category(reader)
    _check_signs(reader, category, gross, fee, net)
    facing, facing_currency = _facing(reader, currency)
    source_id = reader.text("source_id")
    payout_id = reader.text("automatic_payout_id")
    if payout_id is None and category in PAYOUT_CATEGORIES:
        payout_id = source_id
    return SettlementRow(
        balance_transaction_id=bt_id,
        created_at=created_at,
        available_on_at=available_on_at,
        currency=currency,
        gross_minor=gross,
        fee_minor=fee,
        net_minor=net,
        reporting_category=category,
        source_id=source_id,
        description=reader.text("description"),
        customer_facing_amount_minor=facing,
        customer_facing_currency=facing_currency,
        payout_id=payout_id,
        payment_intent_id=reader.text("payment_intent_id"),
        charge_id=reader.text("charge_id"),
        refund_id=reader.text("refund_id"),
        dispute_id=reader.text("dispute_id"),
        payment_metadata=_metadata(reader, "payment", columns),
        refund_metadata=_metadata(reader, "refund", columns),
        source=reader.source,
    )


# --- CSV ------------------------------------------------------------------------------


def _csv_header(record: list[str], line: int) -> tuple[str, ...]:
    header = tuple(name.strip().lstrip("\ufeff") for name in record)
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise SettlementFileInvalid(
                "duplicate_column", "the header names this column twice", line=line, column=name
            )
        seen.add(name)
    for name in REQUIRED_COLUMNS:
        if name not in seen:
            raise SettlementFileInvalid(
                "missing_column",
                f"the header has no {name} column (is the header line missing?)",
                line=line,
                column=name,
            )
    return header


def _csv_row(header: tuple[str, ...], record: list[str], line: int) -> SettlementRow:
    if len(record) != len(header):
        column = header[len(record)] if len(record) < len(header) else "(extra)"
        raise SettlementFileInvalid(
            "cell_count",
            f"the row has {len(record)} cells, the header {len(header)}",
            line=line,
            column=column,
        )
    reader = _RowReader(dict(zip(header, record, strict=True)), line, None)
    return _read_row(reader, header)


def _parse_csv(text: str, rows_max: int) -> SettlementReport:
    records = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: tuple[str, ...] | None = None
    rows: list[SettlementRow] = []
    line = 1
    try:
        for record in records:
            if record and any(cell.strip() for cell in record):
                if header is None:
                    header = _csv_header(record, line)
                elif len(rows) >= rows_max:
                    raise SettlementFileInvalid(
                        "too_many_rows", f"the report has more than {rows_max} rows", line=line
                    )
                else:
                    rows.append(_csv_row(header, record, line))
            line = records.line_num + 1
    except csv.Error as exc:
        raise SettlementFileInvalid("bad_csv", f"not valid CSV ({exc})", line=line) from exc
    if header is None:
        raise SettlementFileInvalid("empty", "the report is empty: no header line", line=1)
    return SettlementReport(ReportFormat.CSV, tuple(rows))


# --- JSON -----------------------------------------------------------------------------


def _json_document(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettlementFileInvalid(
            "bad_json", f"not valid JSON ({exc.msg})", line=exc.lineno, column=str(exc.colno)
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise SettlementFileInvalid("bad_json", f"not valid JSON ({exc})") from exc


def _json_interval(document: Mapping[str, Any], name: str) -> datetime | None:
    value = document.get(name)
    if value is None:
        return None
    try:
        return utc_from_epoch(value)
    except _CellError as exc:
        raise SettlementFileInvalid(exc.reason, exc.problem, column=name) from exc


def _parse_json(document: Any, rows_max: int) -> SettlementReport:
    body: Mapping[str, Any] = document if isinstance(document, Mapping) else {"data": document}
    data = body.get("data")
    if not isinstance(data, list):
        raise SettlementFileInvalid("missing_column", "no list of rows under data", column="data")
    if len(data) > rows_max:
        raise SettlementFileInvalid(
            "too_many_rows", f"the report has more than {rows_max} rows", row_index=rows_max
        )
    rows: list[SettlementRow] = []
    for index, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise SettlementFileInvalid("bad_row", "a row is a JSON object", row_index=index)
        reader = _RowReader(item, None, index)
        rows.append(_read_row(reader, [str(key) for key in item]))
    start_at = _json_interval(body, "interval_start")
    end_at = _json_interval(body, "interval_end")
    return SettlementReport(ReportFormat.JSON, tuple(rows), start_at, end_at)


# --- entry point ----------------------------------------------------------------------


def detect_format(text: str) -> ReportFormat:
    """JSON when the text opens with ``{`` or ``[``, otherwise CSV."""
    opening = text.lstrip("\ufeff \t\r\n")[:1]
    return ReportFormat.JSON if opening in ("{", "[") else ReportFormat.CSV


def _format(report_format: ReportFormat | str) -> ReportFormat:
    try:
        return ReportFormat(report_format)
    except ValueError as exc:
        raise InvalidRequest(
            "report_format_unknown", f"{str(report_format)[:20]!r} is not csv or json", "format"
        ) from exc


def parse_settlement_report(
    content: str | bytes | Mapping[str, Any] | list[Any],
    *,
    report_format: ReportFormat | str | None = None,
    rows_max: int = REPORT_ROWS_MAX,
) -> SettlementReport:
    """Read a settlement report: CSV or JSON text (detected unless ``report_format``
    says), or an already decoded JSON document. Raises ``SettlementFileInvalid``."""
    assert 0 < rows_max <= REPORT_ROWS_MAX, rows_max
    if isinstance(content, Mapping | list):
        return _parse_json(content, rows_max)
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SettlementFileInvalid("bad_encoding", f"not UTF-8 ({exc.reason})") from exc
    if len(content) > REPORT_CHARS_MAX:
        raise SettlementFileInvalid("too_large", f"over {REPORT_CHARS_MAX} characters")
    if not content.strip("\ufeff \t\r\n"):
        raise SettlementFileInvalid("empty", "the report is empty", line=1)
    chosen = detect_format(content) if report_format is None else _format(report_format)
    if chosen is ReportFormat.JSON:
        return _parse_json(_json_document(content.lstrip("\ufeff")), rows_max)
    return _parse_csv(content, rows_max)
