"""Reading the provider's settlement report: exact minor units, errors that say where."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.domain.errors import InvalidRequest, SettlementFileInvalid
from engine.domain.settlement import (
    ReportFormat,
    SettlementRow,
    detect_format,
    minor_from_major,
    parse_settlement_report,
)
from mock_psp.clock import ManualClock
from mock_psp.core import ApiRequest, ProviderCore
from mock_psp.world import ProviderConfig

HEADER = (
    "balance_transaction_id,created_utc,available_on_utc,currency,gross,fee,net,"
    "reporting_category,source_id,payment_intent_id,refund_id,payment_metadata[order_id]"
)
CHARGE = "txn_1,2024-01-01 00:00:00,2024-01-03 00:00:00,usd,12.34,0.66,11.68,charge,ch_1,pi_1,,o1"
REFUND = (
    "txn_2,2024-01-01 00:05:00,2024-01-01 00:05:00,usd,-2.34,0.00,-2.34,refund,re_1,pi_1,re_1,o1"
)


def csv_text(*lines: str) -> str:
    return "\n".join((HEADER, *lines)) + "\n"


def refused(content: Any, **kwargs: Any) -> SettlementFileInvalid:
    with pytest.raises(SettlementFileInvalid) as caught:
        parse_settlement_report(content, **kwargs)
    assert caught.value.code == "settlement_file_invalid"
    assert caught.value.http_status == 400
    return caught.value


def with_cell(line: str, index: int, value: str) -> str:
    cells = line.split(",")
    cells[index] = value
    return ",".join(cells)


# --- reading --------------------------------------------------------------------------


def test_a_csv_report_is_read_into_exact_minor_units() -> None:
    report = parse_settlement_report(csv_text(CHARGE, REFUND))
    charge, refund = report.rows
    assert report.format is ReportFormat.CSV
    assert (charge.gross_minor, charge.fee_minor, charge.net_minor) == (1234, 66, 1168)
    assert (refund.gross_minor, refund.fee_minor, refund.net_minor) == (-234, 0, -234)
    assert charge.currency == "USD"
    assert charge.created_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert charge.available_on_at == datetime(2024, 1, 3, tzinfo=UTC)
    assert (charge.payment_intent_id, refund.refund_id) == ("pi_1", "re_1")
    assert charge.payment_metadata == (("order_id", "o1"),)
    assert charge.source == "line 2"


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("500", "JPY", 500),
        ("12.34", "USD", 1234),
        ("-0.05", "EUR", -5),
        ("12.3", "USD", 1230),
        ("1.500", "KWD", 1500),
        ("-0.001", "BHD", -1),
        ("0", "USD", 0),
        ("99999999999.99", "USD", 9_999_999_999_999),
    ],
)
def test_major_units_become_minor_units_by_the_currency_exponent(
    text: str, currency: str, minor: int
) -> None:
    assert minor_from_major(text, currency) == minor


def test_the_format_is_detected_from_the_content() -> None:
    assert detect_format('  {"data": []}') is ReportFormat.JSON
    assert detect_format("[]") is ReportFormat.JSON
    assert detect_format(HEADER) is ReportFormat.CSV


def test_a_header_without_rows_is_an_empty_window_not_an_error() -> None:
    assert parse_settlement_report(HEADER + "\n").rows == ()


def test_blank_lines_and_a_byte_order_mark_are_tolerated() -> None:
    report = parse_settlement_report("\ufeff" + csv_text(CHARGE, "", REFUND))
    assert [row.balance_transaction_id for row in report.rows] == ["txn_1", "txn_2"]
    assert report.rows[1].source == "line 4"


def test_bytes_are_read_as_utf8() -> None:
    assert len(parse_settlement_report(csv_text(CHARGE).encode()).rows) == 1


def test_a_json_report_prefers_its_exact_integers() -> None:
    row = {
        "balance_transaction_id": "txn_1",
        "created": 1_704_067_200,
        "available_on": 1_704_067_200,
        "currency": "kwd",
        "gross_minor": 1500,
        "fee_minor": 74,
        "net_minor": 1426,
        "reporting_category": "charge",
        "payment_metadata": {"payment_id": "pay_1"},
    }
    report = parse_settlement_report(json.dumps({"data": [row], "interval_start": 1_704_067_200}))
    (parsed,) = report.rows
    assert (parsed.gross_minor, parsed.fee_minor, parsed.net_minor) == (1500, 74, 1426)
    assert parsed.payment_metadata_value("payment_id") == "pay_1"
    assert report.interval_start_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_settlement_report([row]).rows == report.rows


def test_the_format_can_be_forced_and_an_unknown_one_is_refused() -> None:
    error = refused("[]", report_format="csv")
    assert error.reason == "missing_column"
    with pytest.raises(InvalidRequest) as caught:
        parse_settlement_report("[]", report_format="xml")
    assert (caught.value.code, caught.value.field) == ("report_format_unknown", "format")


# --- refusals that say where ----------------------------------------------------------


def test_too_many_decimals_names_the_line_and_column() -> None:
    lines = [CHARGE] * 5 + [with_cell(CHARGE, 4, "12.345")]
    error = refused(csv_text(*lines))
    assert str(error) == "line 7, column gross: '12.345' has more decimals than USD allows (2)"
    assert (error.reason, error.line, error.field) == ("too_many_decimals", 7, "gross")


def test_a_zero_decimal_currency_refuses_any_decimals() -> None:
    line = with_cell(with_cell(with_cell(CHARGE, 3, "jpy"), 4, "500.5"), 6, "455.5")
    error = refused(csv_text(line))
    assert str(error).startswith("line 2, column gross: '500.5' has more decimals than JPY")


def test_a_bad_number_names_its_column() -> None:
    error = refused(csv_text(CHARGE, with_cell(REFUND, 5, "0.0.0")))
    assert (error.reason, str(error)) == (
        "bad_number",
        "line 3, column fee: '0.0.0' is not a number",
    )
    error = refused(csv_text(with_cell(CHARGE, 6, "eleven")))
    assert str(error) == "line 2, column net: 'eleven' is not a number"


def test_an_unknown_currency_is_refused() -> None:
    error = refused(csv_text(with_cell(CHARGE, 3, "xyz")))
    assert (error.reason, error.field) == ("unknown_currency", "currency")
    assert str(error).startswith("line 2, column currency: 'xyz'")


@pytest.mark.parametrize("value", ["2024-02-30 00:00:00", "yesterday", "01/01/2024 00:00:00"])
def test_a_bad_date_is_refused(value: str) -> None:
    error = refused(csv_text(with_cell(CHARGE, 1, value)))
    assert (error.reason, error.line, error.field) == ("bad_date", 2, "created_utc")


def test_a_negative_charge_is_refused() -> None:
    line = with_cell(with_cell(CHARGE, 4, "-12.34"), 6, "-13.00")
    error = refused(csv_text(line))
    assert (error.reason, str(error)) == (
        "negative",
        "line 2, column gross: -1234 minor units is negative: a charge never is",
    )


def test_a_positive_refund_and_a_negative_fee_on_a_charge_are_refused() -> None:
    assert refused(csv_text(with_cell(with_cell(REFUND, 4, "2.34"), 6, "2.34"))).reason == (
        "positive"
    )
    error = refused(csv_text(with_cell(with_cell(CHARGE, 5, "-0.66"), 6, "13.00")))
    assert (error.reason, error.field) == ("negative", "fee")


def test_net_must_be_gross_minus_fee() -> None:
    error = refused(csv_text(with_cell(CHARGE, 6, "11.69")))
    assert (error.reason, error.field, error.line) == ("inconsistent", "net", 2)


@pytest.mark.parametrize("content", ["", "  \n\n", "\ufeff"])
def test_an_empty_file_is_refused(content: str) -> None:
    assert refused(content).reason == "empty"


def test_a_missing_header_is_refused_naming_the_first_required_column() -> None:
    error = refused(CHARGE + "\n")
    assert error.reason == "missing_column"
    assert str(error).startswith("line 1, column balance_transaction_id: the header has no")


def test_a_missing_column_is_refused_naming_it() -> None:
    header = HEADER.replace(",gross,", ",")
    error = refused(header + "\n")
    assert str(error).startswith("line 1, column gross: the header has no gross column")


def test_a_column_named_twice_is_refused() -> None:
    assert refused(HEADER + ",currency\n").reason == "duplicate_column"


def test_a_short_row_names_the_first_missing_column() -> None:
    error = refused(csv_text(CHARGE.rsplit(",", 2)[0]))
    assert (error.reason, error.field, error.line) == ("cell_count", "refund_id", 2)


def test_a_required_value_left_empty_is_refused() -> None:
    error = refused(csv_text(with_cell(CHARGE, 0, "")))
    assert (error.reason, error.field) == ("missing_value", "balance_transaction_id")


def test_malformed_quoting_is_refused_with_its_line() -> None:
    error = refused(csv_text(CHARGE, 'txn_3,"2024-01-01 00:00:00"x,'))
    assert (error.reason, error.line) == ("bad_csv", 3)


def test_the_row_count_is_bounded() -> None:
    error = refused(csv_text(CHARGE, REFUND, CHARGE), rows_max=2)
    assert (error.reason, error.line) == ("too_many_rows", 4)
    json_error = refused({"data": [{}] * 3}, rows_max=2)
    assert (json_error.reason, json_error.row_index) == ("too_many_rows", 2)


def test_text_that_is_not_utf8_is_refused() -> None:
    assert refused(b"\xff\xfe" + HEADER.encode()).reason == "bad_encoding"


def _json_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "balance_transaction_id": "txn_1",
        "created_utc": "2024-01-01 00:00:00",
        "available_on_utc": "2024-01-01 00:00:00",
        "currency": "usd",
        "gross": "1.00",
        "fee": "0.00",
        "net": "1.00",
        "reporting_category": "charge",
    }
    row.update(changes)
    return row


def test_a_json_row_error_names_its_index_and_field() -> None:
    data = [_json_row(), _json_row(), _json_row(gross="1.001", net="1.001")]
    error = refused(json.dumps({"data": data}))
    assert str(error) == "data[2], field gross: '1.001' has more decimals than USD allows (2)"
    assert (error.row_index, error.as_dict()["field"]) == (2, "gross")


def test_json_integers_and_their_text_must_agree() -> None:
    error = refused([_json_row(gross_minor=101)])
    assert (error.reason, error.field) == ("inconsistent", "gross")
    assert refused([_json_row(gross_minor=1.0)]).reason == "bad_number"
    assert refused([_json_row(gross_minor=True)]).field == "gross_minor"


def test_json_epoch_seconds_are_never_negative() -> None:
    error = refused([_json_row(created=-5, created_utc=None)])
    assert (error.reason, error.field, error.row_index) == ("negative", "created", 0)


def test_invalid_json_names_its_line_and_column() -> None:
    error = refused('{"data": [\n  {"a": 1,}\n]}')
    assert (error.reason, error.line) == ("bad_json", 2)
    assert str(error).startswith("line 2, column 11: not valid JSON")


def test_json_without_rows_or_with_a_non_object_row_is_refused() -> None:
    assert refused("{}").field == "data"
    assert refused("[1]").reason == "bad_row"


# --- the mock PSP's own report --------------------------------------------------------


def _psp() -> ProviderCore:
    return ProviderCore(ManualClock(), random.Random(7), ProviderConfig(), None)


def _post(core: ProviderCore, path: str, params: dict[str, Any]) -> Any:
    headers = {"Authorization": "Bearer sk_test_paychaos"}
    result = core.handle(ApiRequest("POST", path, params, headers))
    assert result.response is not None and result.response.status == 200, result
    return result.response.body


def _busy_day(core: ProviderCore) -> None:
    """Charges, refunds, a dispute won back and a payout in JPY, USD, KWD and BHD."""
    for amount, currency in ((500, "jpy"), (1234, "usd"), (1500, "kwd"), (2001, "bhd")):
        intent = _post(core, "/v1/payment_intents", {
            "amount": amount, "currency": currency, "payment_method": "pm_card_bypassPending",
            "confirm": "true", "metadata[order_id]": f"ord-{currency}",
        })  # fmt: skip
        _post(core, "/v1/refunds", {"payment_intent": intent["id"], "amount": 1})
    disputed = _post(core, "/v1/payment_intents", {
        "amount": 777, "currency": "usd", "payment_method": "pm_card_createDispute",
        "confirm": "true",
    })  # fmt: skip
    dispute_id = next(iter(core.state.disputes))
    assert core.state.disputes[dispute_id].payment_intent_id == disputed["id"]
    response = core.admin.handle("POST", f"/_admin/disputes/{dispute_id}/close", {"outcome": "won"})
    assert response.status == 200, response.body
    _post(core, "/v1/payouts", {"amount": 100, "currency": "usd"})


def test_the_mock_psps_report_round_trips_exactly_in_csv_and_json() -> None:
    core = _psp()
    start = int(core.now())
    _busy_day(core)
    report = core.settlement_report(start, start + 60)
    from_csv = parse_settlement_report(report.to_csv()).rows
    from_json = parse_settlement_report(json.dumps(report.to_json())).rows
    assert len(from_csv) == len(report.rows) == 12
    categories = {row.reporting_category for row in from_csv}
    assert categories == {"charge", "refund", "dispute", "dispute_reversal", "payout"}
    assert {row.currency for row in from_csv} == {"JPY", "USD", "KWD", "BHD"}
    for original, parsed in zip(report.rows, from_csv, strict=True):
        assert _exact(parsed) == (
            original.balance_transaction_id,
            int(original.created_s),
            original.currency.upper(),
            original.gross_minor,
            original.fee_minor,
            original.net_minor,
            original.customer_facing_amount_minor,
        )
    # The CSV carries only the order column of metadata; the JSON carries it all.
    assert [_bare(row) for row in from_csv] == [_bare(row) for row in from_json]
    assert from_csv[0].payment_metadata == (("order_id", "ord-jpy"),)


def test_the_mock_psps_payout_row_names_its_payout() -> None:
    core = _psp()
    start = int(core.now())
    _busy_day(core)
    rows = parse_settlement_report(core.settlement_report(start, start + 60).to_csv()).rows
    (payout,) = [row for row in rows if row.reporting_category == "payout"]
    assert payout.payout_id == next(iter(core.state.payouts))
    assert (payout.gross_minor, payout.fee_minor) == (-100, 0)


def test_the_admin_endpoints_report_parses_too() -> None:
    core = _psp()
    start = int(core.now())
    _busy_day(core)
    params = {"start": start, "end": start + 60}
    body = core.admin.handle("GET", "/_admin/settlement", params).body
    csv_body = core.admin.handle("GET", "/_admin/settlement", {**params, "format": "csv"}).body
    assert parse_settlement_report(body).rows == parse_settlement_report(csv_body["csv"]).rows


def _exact(row: SettlementRow) -> tuple[object, ...]:
    return (
        row.balance_transaction_id,
        int(row.created_at.timestamp()),
        row.currency,
        row.gross_minor,
        row.fee_minor,
        row.net_minor,
        row.customer_facing_amount_minor,
    )


def _bare(row: SettlementRow) -> SettlementRow:
    return replace(row, payment_metadata=(), refund_metadata=())
