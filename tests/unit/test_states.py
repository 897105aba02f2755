"""Every edge of the payment state machine, and a sample of the illegal ones."""

from __future__ import annotations

import itertools

import pytest

from engine.domain.errors import IllegalTransition
from engine.domain.states import TERMINAL, TRANSITIONS, PaymentState, is_legal, transition

S = PaymentState
LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets)]
ILLEGAL = [(a, b) for a, b in itertools.product(S, S) if b not in TRANSITIONS[a]]


def test_the_table_names_every_state() -> None:
    assert set(TRANSITIONS) == set(S)


@pytest.mark.parametrize(("from_state", "to_state"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_every_edge_in_the_table_is_allowed(from_state: S, to_state: S) -> None:
    assert transition(from_state, to_state) is to_state


@pytest.mark.parametrize(
    ("from_state", "to_state"),
    [
        (S.CANCELED, S.CAPTURED),
        (S.CANCELED, S.AUTHORIZED),
        (S.FAILED, S.AUTHORIZED),
        (S.REFUNDED, S.PARTIALLY_REFUNDED),
        (S.CREATED, S.REFUNDED),
        (S.AUTHORIZED, S.REFUNDED),
        (S.CAPTURED, S.AUTHORIZED),
        (S.CAPTURED, S.CANCELED),
        (S.PROCESSING, S.PROCESSING),
        (S.DISPUTED, S.PARTIALLY_REFUNDED),
        (S.SETTLED, S.CAPTURED),
    ],
)
def test_capture_after_void_and_other_illegal_moves_are_refused(from_state: S, to_state: S) -> None:
    with pytest.raises(IllegalTransition) as caught:
        transition(from_state, to_state)
    assert caught.value.code == "illegal_transition"
    assert caught.value.http_status == 409


def test_every_pair_outside_the_table_is_refused() -> None:
    assert ILLEGAL, "the table cannot allow everything"
    for from_state, to_state in ILLEGAL:
        assert not is_legal(from_state, to_state)


def test_terminal_states_have_no_way_out() -> None:
    assert {S.CANCELED, S.FAILED} == TERMINAL


def test_a_history_starts_only_in_created() -> None:
    assert is_legal(None, S.CREATED)
    assert not is_legal(None, S.AUTHORIZED)
