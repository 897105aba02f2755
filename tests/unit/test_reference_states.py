"""The oracles' reference state machine and its mapping of the provider's objects."""

from __future__ import annotations

from engine.domain.states import TRANSITIONS, PaymentState, is_legal
from scenarios.references import states as canon
from scenarios.references.states import DisputeView, ProviderView, expected


def test_the_reference_agrees_with_the_engines_table_edge_for_edge() -> None:
    """Written apart from the engine's: a difference is a finding for one of the two."""
    engine_edges = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    reference_edges = {
        (a, b) for a, targets in canon.MOVES.items() if a is not None for b in targets
    }
    assert reference_edges == engine_edges
    assert canon.MOVES[None] == {"created"}
    assert is_legal(None, PaymentState.CREATED)


def test_moves_the_money_does_not_allow_are_illegal() -> None:
    assert not canon.legal("disputed", "captured")  # a won dispute is not un-captured
    assert not canon.legal("refunded", "settled")  # nothing left to settle
    assert not canon.legal("settled", "settled")
    assert not canon.legal("canceled", "captured")
    assert not canon.legal(None, "authorized")
    assert not canon.legal("captured", "no_such_state")


def _succeeded(dispute: DisputeView | None, refunded_minor: int = 0) -> ProviderView:
    return ProviderView("succeeded", 1_000, 0, 1_000, refunded_minor, dispute)


def test_an_open_or_lost_chargeback_must_show_disputed_with_its_amount() -> None:
    for status, canonical in (("needs_response", "open"), ("lost", "lost")):
        want = expected(_succeeded(DisputeView(status, 1_000, True, False)))
        assert (want.states, want.disputed_minor, want.dispute_status) == (
            frozenset({"disputed"}), 1_000, canonical,
        )  # fmt: skip


def test_a_won_chargeback_comes_back_to_settled_or_refunded() -> None:
    won = DisputeView("won", 1_000, True, True)
    assert expected(_succeeded(won)).states == {"settled"}
    assert expected(_succeeded(won, refunded_minor=1_000)).states == {"refunded"}
    assert expected(_succeeded(won)).dispute_status == "won"
    assert expected(_succeeded(won)).disputed_minor == 0


def test_an_inquiry_moves_no_money_and_is_no_dispute_of_the_payment() -> None:
    inquiry = DisputeView("warning_needs_response", 1_000, False, False)
    want = expected(_succeeded(inquiry))
    assert (want.states, want.disputed_minor, want.dispute_status) == (
        frozenset({"captured", "settled"}), 0, None,
    )  # fmt: skip


def test_before_capture_the_intent_status_says_the_state() -> None:
    assert expected(ProviderView("requires_capture", 1_000, 700)).states == {"authorized"}
    assert expected(ProviderView("requires_capture", 1_000, 700)).authorized_minor == 700
    assert expected(ProviderView("processing")).states == frozenset()  # stuck
    assert expected(ProviderView(None)).states == {"created", "canceled", "failed"}
    partial = ProviderView("succeeded", 1_000, 0, 600, 0)
    assert expected(partial).states == {"partially_captured", "settled"}
