"""The settlement report: Stripe's reconciliation columns, major units, settlement faults."""

from __future__ import annotations

import csv
import io

DAY_S = 86_400


def _rows(csv_text):
    return list(csv.DictReader(io.StringIO(csv_text)))


def test_the_csv_has_stripes_columns_and_major_units(psp):
    start = int(psp.clock.now())
    pi = psp.pay(1234, metadata={"order_id": "ord-42"})
    psp.ok("POST", "/v1/refunds", {"payment_intent": pi["id"], "amount": 234})
    report = psp.core.settlement_report(start, start + DAY_S)
    rows = _rows(report.to_csv())
    assert list(rows[0])[:10] == [
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
    ]
    charge_row, refund_row = rows
    assert (charge_row["gross"], charge_row["fee"], charge_row["net"]) == ("12.34", "0.66", "11.68")
    assert charge_row["reporting_category"] == "charge"
    assert charge_row["payment_intent_id"] == pi["id"]
    assert charge_row["payment_metadata[order_id]"] == "ord-42"
    assert charge_row["created_utc"] == "2024-01-01 00:00:00"
    assert charge_row["available_on_utc"] == "2024-01-03 00:00:00"
    assert (refund_row["gross"], refund_row["reporting_category"]) == ("-2.34", "refund")
    assert refund_row["payment_metadata[order_id]"] == "ord-42"


def test_zero_and_three_decimal_currencies_are_formatted_with_their_exponent(psp):
    start = int(psp.clock.now())
    for amount, currency in ((500, "jpy"), (1500, "kwd")):
        psp.ok(
            "POST",
            "/v1/payment_intents",
            {
                "amount": amount,
                "currency": currency,
                "payment_method": "pm_card_visa",
                "confirm": "true",
            },
        )
    rows = _rows(psp.core.settlement_report(start, start + 60).to_csv())
    assert [(r["currency"], r["gross"]) for r in rows] == [("jpy", "500"), ("kwd", "1.500")]


def test_the_window_selects_rows_by_creation_time(psp):
    start = int(psp.clock.now())
    psp.pay(100)
    psp.clock.advance(DAY_S)
    psp.pay(200)
    first = psp.core.settlement_report(start, start + DAY_S)
    second = psp.core.settlement_report(start + DAY_S, start + 2 * DAY_S)
    assert [r.gross_minor for r in first.rows] == [100]
    assert [r.gross_minor for r in second.rows] == [200]


def test_the_json_report_keeps_minor_units_and_metadata(psp):
    start = int(psp.clock.now())
    psp.pay(100, metadata={"order_id": "o1", "payment_id": "p1"})
    body = psp.core.admin.handle(
        "GET", "/_admin/settlement", {"start": start, "end": start + 10}
    ).body
    (row,) = body["data"]
    assert (row["gross_minor"], row["gross"]) == (100, "1.00")
    assert row["payment_metadata"] == {"order_id": "o1", "payment_id": "p1"}
    csv_body = psp.core.admin.handle(
        "GET", "/_admin/settlement", {"start": start, "end": start + 10, "format": "csv"}
    ).body
    assert csv_body["csv"].startswith("balance_transaction_id,")


def test_an_inverted_window_is_refused_naming_end(psp):
    response = psp.core.admin.handle("GET", "/_admin/settlement", {"start": 10, "end": 5})
    assert (response.status, response.body["error"]["param"]) == (400, "end")


def test_missing_rows_and_mismatches_are_stable_and_logged_once(make_psp):
    psp = make_psp(
        faults={
            "settlement": {
                "missing_row_rate": 0.3,
                "amount_mismatch_rate": 0.3,
                "mismatch_delta_minor": 7,
            }
        }
    )
    start = int(psp.clock.now())
    for i in range(40):
        psp.pay(1000 + i)
    report = psp.core.settlement_report(start, start + 10)
    assert psp.core.settlement_report(start, start + 10) == report
    counts = psp.core.fault_log.counts()
    missing, mismatched = counts["settlement.missing_row"], counts["settlement.amount_mismatch"]
    assert len(report.rows) == 40 - missing
    assert 0 < missing < 40 and mismatched > 0
    truth = {bt.id: bt.amount_minor for bt in psp.core.state.balance_transactions.values()}
    off = [r for r in report.rows if r.gross_minor != truth[r.balance_transaction_id]]
    assert all(r.gross_minor - truth[r.balance_transaction_id] == 7 for r in off)
    assert len(off) == len(
        [
            rec
            for rec in psp.core.fault_log.records()
            if str(rec.kind) == "settlement.amount_mismatch"
            and rec.target in {r.balance_transaction_id for r in report.rows}
        ]
    )


def test_late_rows_appear_in_a_later_window(make_psp):
    psp = make_psp(faults={"settlement": {"late_row_rate": 1.0, "late_by_s": DAY_S}})
    start = int(psp.clock.now())
    psp.pay(100)
    assert psp.core.settlement_report(start, start + DAY_S).rows == ()
    psp.clock.advance(DAY_S)
    later = psp.core.settlement_report(start + DAY_S, start + 2 * DAY_S)
    assert [r.gross_minor for r in later.rows] == [100]
    assert psp.core.fault_log.counts()["settlement.late_row"] == 1


def test_unexpected_rows_are_money_the_provider_never_moved(make_psp):
    psp = make_psp(faults={"settlement": {"unexpected_row_count": 2}})
    start = int(psp.clock.now())
    psp.pay(100)
    psp.clock.advance(100)
    report = psp.core.settlement_report(start, start + 100)
    known = set(psp.core.state.balance_transactions)
    unexpected = [r for r in report.rows if r.balance_transaction_id not in known]
    assert len(unexpected) == 2
    assert psp.core.fault_log.counts()["settlement.unexpected_row"] == 2


def test_every_garbled_download_is_one_a_reader_must_refuse(psp):
    """Cut short (JSON) or a row with an unreadable amount (JSON and CSV): the engine's
    parser refuses each whole, naming where; the next download of the span draws anew."""
    import pytest

    from engine.domain.errors import SettlementFileInvalid
    from engine.domain.settlement import parse_settlement_report

    start = int(psp.clock.now())
    for n in range(3):
        psp.pay(1_000 + n)
    psp.core.set_faults({"settlement": {"garbled_rate": 1.0}})
    for report_format in ("json", "csv"):
        for _ in range(20):
            served = psp.core.settlement_download(start, start + DAY_S, report_format)
            assert (served.status, served.fault) == (200, "settlement.garbled")
            with pytest.raises(SettlementFileInvalid):
                parse_settlement_report(served.text)
    details = {r.detail.split(" ")[0] for r in psp.core.fault_log.records()}
    assert details == {"bad", "cut"}  # both kinds drawn
    assert psp.core.fault_log.counts()["settlement.garbled"] == 40  # once per download
    psp.core.set_faults({"settlement": {"unavailable_rate": 1.0}})
    assert psp.core.settlement_download(start, start + DAY_S, "json").status == 503
    psp.core.set_faults({})
    whole = psp.core.settlement_download(start, start + DAY_S, "json")
    assert whole.fault is None and len(parse_settlement_report(whole.text).rows) == 3
