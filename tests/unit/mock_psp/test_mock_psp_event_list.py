"""``GET /v1/events`` as Stripe documents it: newest first, filtered by ``types`` (at most
20 names, not with ``type``) and ``created``, paged by ``starting_after`` and ``has_more``."""

from __future__ import annotations

from engine.adapters.stripe_dialect import CAUGHT_UP_EVENTS, events_params
from engine.domain.provider import EventQuery


def _three_payments(psp) -> list[str]:
    """Three payments a minute apart; the ids of their ``payment_intent.succeeded`` events."""
    for _ in range(3):
        psp.pay()
        psp.clock.advance(60)
    return [e.id for e in psp.core.state.events.values() if e.type == "payment_intent.succeeded"]


def test_types_keeps_only_the_named_events_newest_first(psp):
    succeeded = _three_payments(psp)
    listed = psp.ok("GET", "/v1/events", {"types[0]": "payment_intent.succeeded",
                                          "types[1]": "refund.created"})  # fmt: skip
    assert [e["id"] for e in listed["data"]] == succeeded[::-1]
    assert listed["has_more"] is False
    bracketed = psp.ok("GET", "/v1/events", [("types[]", "payment_intent.succeeded")])
    assert [e["id"] for e in bracketed["data"]] == succeeded[::-1]


def test_created_bounds_a_span_and_an_exact_time(psp):
    succeeded = _three_payments(psp)
    created = {e: psp.core.state.events[e].created_s for e in succeeded}
    first_s = created[succeeded[0]]
    span = {"types[0]": "payment_intent.succeeded", "created[gte]": first_s + 60,
            "created[lt]": first_s + 120}  # fmt: skip
    assert [e["id"] for e in psp.ok("GET", "/v1/events", span)["data"]] == [succeeded[1]]
    exact = {"types[0]": "payment_intent.succeeded", "created": first_s}
    assert [e["id"] for e in psp.ok("GET", "/v1/events", exact)["data"]] == [succeeded[0]]


def test_pages_follow_starting_after_until_has_more_is_false(psp):
    succeeded = _three_payments(psp)
    query = {"types[0]": "payment_intent.succeeded", "limit": 2}
    first = psp.ok("GET", "/v1/events", query)
    assert [e["id"] for e in first["data"]] == succeeded[:0:-1] and first["has_more"] is True
    rest = psp.ok("GET", "/v1/events", {**query, "starting_after": first["data"][-1]["id"]})
    assert [e["id"] for e in rest["data"]] == succeeded[:1] and rest["has_more"] is False


def test_more_than_twenty_types_or_type_with_types_is_refused(psp):
    many = {f"types[{i}]": f"charge.kind_{i}" for i in range(21)}
    assert psp.error(psp.get("/v1/events", many))["param"] == "types"
    both = {"type": "charge.*", "types[0]": "payment_intent.succeeded"}
    assert psp.error(psp.get("/v1/events", both))["param"] == "types"


def test_the_engines_catch_up_query_is_one_the_provider_takes(psp):
    succeeded = _three_payments(psp)
    now_s = int(psp.clock.now())
    query = EventQuery(CAUGHT_UP_EVENTS, now_s - 3_600, now_s + 1, 100)
    listed = psp.ok("GET", "/v1/events", events_params(query))
    assert set(succeeded) <= {e["id"] for e in listed["data"]}
    assert {e["type"] for e in listed["data"]} <= set(CAUGHT_UP_EVENTS)
