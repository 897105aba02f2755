"""Event retention: whole events for a while, a stub of every event for good."""

from __future__ import annotations

import tracemalloc

from mock_psp.idempotency import IdempotencyStore, Packer, SavedResponse


def test_without_a_retention_every_event_stays_retrievable(make_psp):
    psp = make_psp()
    pi = psp.pay()
    psp.clock.advance(40 * 86_400)
    psp.pay()
    first = psp.core.state.event_log[0]
    assert first.payment_intent_id == pi["id"]
    assert psp.ok("GET", f"/v1/events/{first.id}")["id"] == first.id


def test_events_past_their_retention_are_forgotten_whole_but_keep_their_stub(make_psp):
    psp = make_psp(event_retention_s=60)
    pi = psp.pay()
    old = [stub.id for stub in psp.core.state.event_log]
    psp.clock.advance(61)
    psp.pay()
    assert old and not set(old) & set(psp.core.state.events)
    assert psp.call("GET", f"/v1/events/{old[0]}").response.status == 404
    stubs = [stub for stub in psp.core.state.event_log if stub.id in old]
    assert [stub.payment_intent_id for stub in stubs] == [pi["id"]] * len(old)
    assert len(psp.core.state.event_log) == len(old) + len(psp.core.state.events)


def test_events_within_their_retention_stay_whole(make_psp):
    psp = make_psp(event_retention_s=60)
    psp.pay()
    psp.clock.advance(30)
    psp.pay()
    assert len(psp.core.state.events) == len(psp.core.state.event_log)


def test_a_saved_response_reads_back_the_body_it_was_given():
    body = {"id": "pi_1", "amount": 1500, "metadata": {"order_id": "o1"}, "next_action": None,
            "payment_method_types": ["card"], "livemode": False}  # fmt: skip
    saved = SavedResponse.of(200, body, Packer())
    assert saved.body == body and saved.status == 200
    assert len(saved.body_zjson) < len(repr(body))


def test_saved_responses_hold_little_more_memory_than_their_compressed_bytes():
    store = IdempotencyStore()
    body = {"id": "pi_1", "object": "payment_intent", "amount": 1500,
            "description": "x" * 2_000, "metadata": {"order_id": "o1"}}  # fmt: skip
    store.saved(200, body)  # the first of its kind makes the dictionary
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [store.saved(200, {**body, "id": f"pi_{n}"}) for n in range(200)]
        per_response = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert kept[7].body["id"] == "pi_7"
    assert per_response < 400, per_response  # the body is 2 KB as JSON
