"""The seeded fault plan: config errors, API faults, windows, targeting, the fault log."""

from __future__ import annotations

import random
import statistics

import pytest

from mock_psp.errors import FaultConfigError
from mock_psp.faults import LatencySpec, parse_fault_config

PARAMS = {"amount": 1500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"api_rules": [{"timeout_after_rate": 1.5}]}, "api_rules.0.timeout_after_rate"),
        ({"api_rules": [{"colour": "red"}]}, "api_rules.0.colour"),
        ({"api_rules": [{"decline_code": "bad_luck"}]}, "api_rules.0"),
        ({"api_latency": {"kind": "gaussian"}}, "api_latency.kind"),
        ({"api_rules": [{"windows": [{"start_s": 10, "end_s": 5}]}]}, "api_rules.0.windows.0"),
        ({"webhooks": {"old_timestamp_age_s": 10}}, "webhooks.old_timestamp_age_s"),
        ({"rate_limit": {"capacity": 0}}, "rate_limit.capacity"),
        ({"settlement": {"missing_row_rate": -0.1}}, "settlement.missing_row_rate"),
    ],
)
def test_a_bad_fault_config_names_the_field(config, field):
    with pytest.raises(FaultConfigError) as caught:
        parse_fault_config(config)
    assert caught.value.field == field


def test_a_bad_config_through_the_admin_api_is_a_400_and_keeps_the_old_plan(psp):
    psp.core.set_faults({"api_rules": [{"error_500_rate": 0.5}]})
    response = psp.core.admin.handle("POST", "/_admin/faults", {"api_rules": [{"x": 1}]})
    assert response.status == 400
    assert response.body["error"]["param"] == "api_rules.0.x"
    assert psp.core.faults.api_rules[0].error_500_rate == 0.5


def test_the_fault_plan_can_be_read_and_changed_at_run_time(psp):
    response = psp.core.admin.handle(
        "PUT", "/_admin/faults", {"api_rules": [{"error_503_rate": 1}]}
    )
    assert response.status == 200
    assert (
        psp.core.admin.handle("GET", "/_admin/faults", {}).body["api_rules"][0]["error_503_rate"]
        == 1.0
    )
    assert psp.post("/v1/payment_intents", PARAMS).response.status == 503


def test_timeout_before_processing_loses_the_request_without_effect(make_psp):
    psp = make_psp(faults={"api_rules": [{"timeout_before_rate": 1.0}]})
    result = psp.post("/v1/payment_intents", PARAMS)
    assert result.timed_out and not result.processed
    assert psp.core.state.payment_intents == {}
    assert [str(k) for k in result.faults] == ["api.timeout_before"]


def test_timeout_after_processing_does_the_work_and_loses_the_response(make_psp):
    psp = make_psp(faults={"api_rules": [{"timeout_after_rate": 1.0}]})
    result = psp.post("/v1/payment_intents", PARAMS)
    assert result.timed_out and result.processed
    assert len(psp.core.truth.effects()) == 2  # authorized + captured


def test_an_outage_window_only_fails_requests_inside_it(make_psp):
    psp = make_psp(
        faults={
            "api_rules": [
                {
                    "endpoints": ["payment_intents.*"],
                    "error_503_rate": 1.0,
                    "windows": [{"start_s": 60, "end_s": 120}],
                }
            ]
        }
    )
    assert psp.post("/v1/payment_intents", PARAMS).response.status == 200
    psp.clock.advance(60)
    assert psp.post("/v1/payment_intents", PARAMS).response.status == 503
    assert psp.get("/v1/events").response.status == 200  # other endpoints unaffected
    psp.clock.advance(60)
    assert psp.post("/v1/payment_intents", PARAMS).response.status == 200


def test_rules_target_endpoints_by_name(make_psp):
    psp = make_psp(
        faults={"api_rules": [{"endpoints": ["payment_intents.capture"], "error_500_rate": 1.0}]}
    )
    pi = psp.pay(1000, capture_method="manual")
    assert psp.post(f"/v1/payment_intents/{pi['id']}/capture").response.status == 500
    assert psp.core.state.payment_intents[pi["id"]].status == "requires_capture"


def test_the_token_bucket_answers_429_once_empty_and_refills_with_time(make_psp):
    psp = make_psp(faults={"rate_limit": {"capacity": 3, "refill_per_s": 1.0}})
    statuses = [psp.get("/v1/balance").response.status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    error = psp.error(psp.get("/v1/balance"))
    assert error["code"] == "rate_limit"
    psp.clock.advance(2)
    assert [psp.get("/v1/balance").response.status for _ in range(3)] == [200, 200, 429]


def test_extra_declines_turn_a_good_card_into_a_decline(make_psp):
    psp = make_psp(
        faults={"api_rules": [{"decline_rate": 1.0, "decline_code": "insufficient_funds"}]}
    )
    result = psp.post("/v1/payment_intents", PARAMS)
    assert result.response.status == 402
    assert psp.error(result)["decline_code"] == "insufficient_funds"
    assert [str(k) for k in result.faults] == ["api.extra_decline"]
    assert psp.core.fault_log.counts()["api.extra_decline"] == 1


def test_fixed_and_uniform_latency_are_returned_for_the_driver_to_apply(make_psp):
    fixed = make_psp(faults={"api_latency": {"kind": "fixed", "fixed_ms": 250}})
    assert fixed.get("/v1/balance").latency_s == 0.25
    uniform = make_psp(faults={"api_latency": {"kind": "uniform", "min_ms": 10, "max_ms": 20}})
    delays = [uniform.get("/v1/balance").latency_s for _ in range(50)]
    assert all(0.01 <= d <= 0.02 for d in delays)
    assert uniform.core.fault_log.counts()["api.latency"] == 50


def test_lognormal_latency_matches_the_requested_p50_and_p99():
    spec = LatencySpec(kind="lognormal", p50_ms=40, p99_ms=400)
    rng = random.Random(1)
    samples = sorted(spec.sample_s(rng) * 1000 for _ in range(20_000))
    assert statistics.median(samples) == pytest.approx(40, rel=0.05)
    assert samples[int(0.99 * len(samples))] == pytest.approx(400, rel=0.1)


def test_rule_latency_overrides_the_default_for_its_endpoints(make_psp):
    psp = make_psp(
        faults={
            "api_latency": {"kind": "fixed", "fixed_ms": 5},
            "api_rules": [
                {"endpoints": ["balance.*"], "latency": {"kind": "fixed", "fixed_ms": 900}}
            ],
        }
    )
    assert psp.get("/v1/balance").latency_s == 0.9
    assert psp.get("/v1/events").latency_s == 0.005


def test_every_fired_fault_is_logged_with_time_kind_and_target(make_psp):
    psp = make_psp(
        faults={
            "api_rules": [{"endpoints": ["payment_intents.create"], "timeout_before_rate": 1.0}]
        }
    )
    psp.clock.advance(5)
    psp.post("/v1/payment_intents", PARAMS)
    records = psp.core.admin.fault_log()["records"]
    assert records == [
        {
            "at": psp.clock.now(),
            "kind": "api.timeout_before",
            "target": "payment_intents.create",
            "detail": "",
        }
    ]
    assert psp.core.fault_log.counts()["api.timeout_before"] == 1
    assert psp.core.fault_log.counts()["webhook.forged"] == 0


def test_fault_rates_between_zero_and_one_fire_about_that_often(make_psp):
    psp = make_psp(faults={"api_rules": [{"error_503_rate": 0.3}]})
    statuses = [psp.get("/v1/balance").response.status for _ in range(1000)]
    assert 250 < statuses.count(503) < 350
