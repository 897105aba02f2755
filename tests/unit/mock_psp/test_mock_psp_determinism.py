"""Determinism: one seed and one request sequence give one byte-identical run."""

from __future__ import annotations

import json
import random

CHAOS = {
    "api_latency": {"kind": "lognormal", "p50_ms": 30, "p99_ms": 300},
    "api_rules": [
        {
            "timeout_after_rate": 0.1,
            "error_500_rate": 0.05,
            "error_503_rate": 0.05,
            "decline_rate": 0.1,
        }
    ],
    "webhooks": {
        "drop_attempt_rate": 0.2,
        "duplicate_rate": 0.2,
        "reorder_rate": 0.3,
        "forged_rate": 0.1,
        "stale_replay_rate": 0.1,
        "old_timestamp_rate": 0.1,
        "delay_rate": 0.2,
    },
    "settlement": {"missing_row_rate": 0.1, "amount_mismatch_rate": 0.1, "unexpected_row_count": 1},
}
CARDS = [
    "pm_card_visa",
    "pm_card_chargeDeclined",
    "pm_card_createDispute",
    "pm_card_authenticationRequired",
]


def _run(make_psp, seed):
    psp = make_psp(seed, CHAOS)
    core, clock = psp.core, psp.clock
    core.admin.register_webhook_endpoint("https://a.test")
    script = random.Random(99)  # the workload is fixed; only the provider seed varies
    transcript = []
    start = int(clock.now())
    for index in range(60):
        params = {
            "amount": script.randint(100, 5000),
            "currency": "usd",
            "payment_method": script.choice(CARDS),
            "confirm": "true",
            "capture_method": script.choice(["automatic", "manual"]),
            "metadata[order_id]": f"o{index}",
        }
        result = psp.post("/v1/payment_intents", params, key=f"k{index}")
        transcript.append(_dump(result))
        for pi in list(core.state.payment_intents.values())[-1:]:
            if pi.status == "requires_capture":
                transcript.append(_dump(psp.post(f"/v1/payment_intents/{pi.id}/capture")))
        clock.advance(script.uniform(0, 20))
        for delivery in core.due_deliveries():
            transcript.append(
                [
                    delivery.delivery_id,
                    delivery.event_id,
                    str(delivery.kind),
                    delivery.headers["Stripe-Signature"],
                    delivery.payload.decode(),
                ]
            )
            core.ack(delivery, script.choice([200, 200, 500, None]))
    transcript.append(core.settlement_report(start, int(clock.now()) + 1).to_csv())
    transcript.append([record.to_json() for record in core.fault_log.records()])
    transcript.append(core.truth.to_json())
    return json.dumps(transcript, sort_keys=True)


def _dump(result):
    response = result.response
    return [
        result.latency_s,
        [str(k) for k in result.faults],
        result.processed,
        None if response is None else [response.status, response.body, response.headers],
    ]


def test_the_same_seed_and_requests_give_identical_responses_events_and_faults(make_psp):
    first = _run(make_psp, seed=1234)
    assert _run(make_psp, seed=1234) == first
    assert "api.timeout_after" in first and "webhook.duplicate" in first


def test_another_seed_gives_other_ids_and_fault_decisions(make_psp):
    assert _run(make_psp, seed=1) != _run(make_psp, seed=2)


def test_changing_the_fault_plan_does_not_change_the_ids(make_psp):
    quiet = make_psp(5)
    noisy = make_psp(
        5,
        {
            "api_latency": {"kind": "uniform", "min_ms": 1, "max_ms": 9},
            "webhooks": {"duplicate_rate": 0.5},
        },
    )
    assert quiet.pay(100)["id"] == noisy.pay(100)["id"]
