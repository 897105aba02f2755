"""Late arrivals: an unanswered request that reaches the provider later all the same.

Until it lands, a lookup by its key says "not found"; when it lands it runs through the
same idempotency check as any request, so a resend with the key and the late arrival
make one object between them, whichever comes first.
"""

from __future__ import annotations

from typing import Any

import pytest

from mock_psp.errors import FaultConfigError
from mock_psp.faults import parse_fault_config

PARAMS = {"amount": 1500, "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
LOST = {"timeout_before_rate": 1.0}
ALWAYS_LATE = {"rate": 1.0, "delay_min_s": 30, "delay_max_s": 30}


def late_psp(make_psp: Any, rule: dict[str, Any] | None = None, **plan: Any) -> Any:
    faults = {"api_rules": [LOST if rule is None else rule], "late_arrivals": ALWAYS_LATE, **plan}
    return make_psp(faults=faults)


def clear_faults_keeping_late_arrivals(psp: Any) -> None:
    # The parked request is already on its way: clearing the plan does not recall it.
    psp.core.set_faults({})


def test_a_lost_request_arrives_later_after_a_lookup_said_not_found(make_psp):
    psp = late_psp(make_psp)
    lost = psp.post("/v1/payment_intents", PARAMS, key="k1")
    assert lost.timed_out and not lost.processed
    assert not psp.core.lookup_idempotency("k1").found
    assert psp.core.state.payment_intents == {}
    psp.clock.advance(30)
    psp.core.tick()
    assert len(psp.core.state.payment_intents) == 1
    lookup = psp.core.lookup_idempotency("k1")
    assert lookup.found and lookup.response is not None and lookup.response.status == 200
    paths = dict(psp.core.late_arrival_paths)
    assert paths == {"late arrival processed, after a lookup said not found": 1}
    assert psp.core.fault_log.counts()["api.late_arrival"] == 1


def test_a_resend_before_the_late_arrival_makes_one_object(make_psp):
    psp = late_psp(make_psp)
    psp.post("/v1/payment_intents", PARAMS, key="k1")
    clear_faults_keeping_late_arrivals(psp)
    resent = psp.ok("POST", "/v1/payment_intents", PARAMS, key="k1")
    psp.clock.advance(31)
    psp.core.tick()
    assert list(psp.core.state.payment_intents) == [resent["id"]]
    assert len([e for e in psp.core.truth.effects() if e.kind == "authorized"]) == 1
    assert dict(psp.core.late_arrival_paths) == {"late arrival replayed: the resend came first": 1}


def test_a_resend_after_the_late_arrival_is_answered_with_its_object(make_psp):
    psp = late_psp(make_psp)
    psp.post("/v1/payment_intents", PARAMS, key="k1")
    clear_faults_keeping_late_arrivals(psp)
    psp.clock.advance(30)
    psp.core.tick()
    (landed,) = psp.core.state.payment_intents
    resent = psp.call("POST", "/v1/payment_intents", PARAMS, key="k1")
    assert resent.replayed and resent.response is not None
    assert resent.response.body["id"] == landed
    assert len(psp.core.state.payment_intents) == 1


def test_a_late_arrival_during_its_resend_in_flight_changes_nothing(make_psp):
    psp = late_psp(make_psp)
    psp.post("/v1/payment_intents", PARAMS, key="k1")
    psp.core.set_faults({"api_latency": {"kind": "fixed", "fixed_ms": 60_000}})
    psp.clock.advance(20)
    psp.post("/v1/payment_intents", PARAMS, key="k1")  # answered at t=80 s
    psp.clock.advance(10)
    psp.core.tick()
    assert len(psp.core.state.payment_intents) == 1
    assert dict(psp.core.late_arrival_paths) == {"late arrival refused (409)": 1}


@pytest.mark.parametrize(
    ("rule", "plan"),
    [
        ({"error_503_rate": 1.0}, {}),
        ({}, {"rate_limit": {"capacity": 1, "refill_per_s": 0.001}}),
    ],
    ids=["503", "429"],
)
def test_a_request_refused_at_the_edge_can_arrive_late_too(make_psp, rule, plan):
    psp = late_psp(make_psp, rule, **plan)
    if "rate_limit" in plan:
        psp.post("/v1/payment_intents", PARAMS, key="first")  # takes the only token
    refused = psp.post("/v1/payment_intents", PARAMS, key="k1")
    assert refused.response is not None and refused.response.status in {429, 503}
    psp.clock.advance(30)
    psp.core.tick()
    assert psp.core.lookup_idempotency("k1").found


def test_a_request_without_a_key_or_a_read_never_arrives_late(make_psp):
    psp = late_psp(make_psp)
    psp.post("/v1/payment_intents", PARAMS)
    psp.get("/v1/payment_intents/pi_missing", key=None)
    assert psp.core.parked_count() == 0


def test_late_arrivals_are_deterministic_per_seed(make_psp):
    def run(seed: int) -> list[tuple[float, str, str]]:
        psp = make_psp(
            seed=seed,
            faults={
                "api_rules": [{"timeout_before_rate": 0.5}],
                "late_arrivals": {"rate": 0.5, "delay_min_s": 1, "delay_max_s": 100},
            },
        )
        for n in range(40):
            psp.post("/v1/payment_intents", PARAMS, key=f"k{n}")
            psp.clock.advance(3)
        psp.clock.advance(200)
        psp.core.tick()
        return [
            (r.at_s, r.target, r.detail)
            for r in psp.core.fault_log.records()
            if str(r.kind) == "api.late_arrival"
        ]

    first = run(3)
    assert first and first == run(3)
    assert first != run(4)


def test_turning_late_arrivals_on_shifts_no_other_decision(make_psp):
    def ids(late_rate: float) -> list[str]:
        psp = make_psp(
            faults={
                "api_rules": [{"timeout_before_rate": 0.3, "timeout_after_rate": 0.2}],
                "late_arrivals": {"rate": late_rate},
            },
        )
        out = []
        for n in range(30):
            result = psp.post("/v1/payment_intents", PARAMS, key=f"k{n}")
            out.append(str(result.faults))
        return out

    assert ids(0.0) == ids(1.0)


def test_a_bad_late_arrival_config_names_the_field():
    with pytest.raises(FaultConfigError) as caught:
        parse_fault_config({"late_arrivals": {"delay_min_s": 10, "delay_max_s": 5}})
    assert caught.value.field == "late_arrivals"
    with pytest.raises(FaultConfigError) as caught:
        parse_fault_config({"late_arrivals": {"rate": 2}})
    assert caught.value.field == "late_arrivals.rate"


def test_a_reset_forgets_the_requests_still_to_arrive(make_psp):
    psp = late_psp(make_psp)
    psp.post("/v1/payment_intents", PARAMS, key="k1")
    assert psp.core.parked_count() == 1
    psp.core.reset()
    psp.clock.advance(60)
    psp.core.tick()
    assert psp.core.parked_count() == 0
    assert psp.core.state.payment_intents == {}
