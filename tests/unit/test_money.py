"""Money: integer minor units, known exponents, no currency mixing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.domain.errors import CurrencyMismatch, InvalidRequest
from engine.domain.money import (
    AMOUNT_MINOR_MAX,
    CURRENCY_EXPONENTS,
    Money,
    currency_exponent,
    parse_amount_minor,
    parse_currency,
)


def test_exponents_follow_iso_4217() -> None:
    assert currency_exponent("JPY") == 0
    assert currency_exponent("USD") == 2
    assert currency_exponent("KWD") == 3


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(1234, "JPY"), "1234 JPY"),
        (Money(1234, "USD"), "12.34 USD"),
        (Money(1234, "KWD"), "1.234 KWD"),
        (Money(-5, "EUR"), "-0.05 EUR"),
    ],
)
def test_formatting_uses_the_currency_exponent(money: Money, text: str) -> None:
    assert money.format() == text


def test_adding_two_currencies_is_refused() -> None:
    with pytest.raises(CurrencyMismatch) as caught:
        Money(100, "USD") + Money(100, "EUR")
    assert caught.value.code == "currency_mismatch"


@pytest.mark.parametrize("value", [0, -1, 1.5, "100", True, None, AMOUNT_MINOR_MAX + 1])
def test_bad_amounts_are_refused_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_amount_minor(value)
    assert caught.value.field == "amount_minor"
    assert caught.value.code in {"amount_invalid", "amount_too_large"}


@pytest.mark.parametrize("value", ["XXX", "usdd", "", None, 840])
def test_unknown_currencies_are_refused(value: object) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_currency(value)
    assert caught.value.code == "currency_unknown"


def test_lowercase_currency_codes_are_normalized() -> None:
    assert parse_currency("jpy") == "JPY"


@given(
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
    st.lists(st.integers(-(10**12), 10**12), max_size=20),
)
def test_sums_are_exact_in_minor_units(currency: str, amounts: list[int]) -> None:
    total = Money(0, currency)
    for amount in amounts:
        total = total + Money(amount, currency)
    assert total.amount_minor == sum(amounts)
