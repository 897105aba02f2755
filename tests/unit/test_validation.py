"""Input rules: card numbers, keys, tokens, metadata; each error names its field."""

from __future__ import annotations

import pytest

from engine.domain.commands import Capture, CreatePayment, Refund
from engine.domain.errors import InvalidRequest
from engine.domain.validation import contains_pan, luhn_valid

GOOD = {
    "merchant_id": "m_1",
    "idempotency_key": "k-1",
    "order_id": "o-1",
    "amount_minor": 1000,
    "currency": "USD",
    "payment_method": "pm_card_visa",
}


def create(**overrides: object) -> CreatePayment:
    return CreatePayment(**{**GOOD, **overrides})  # type: ignore[arg-type]


def refused(**overrides: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        create(**overrides)
    return caught.value


@pytest.mark.parametrize(
    "pan", ["4242424242424242", "4242 4242 4242 4242", "4242-4242-4242-4242", "378282246310005"]
)
def test_luhn_valid_card_numbers_are_detected(pan: str) -> None:
    assert contains_pan(f"note {pan} end")


@pytest.mark.parametrize("text", ["4242424242424241", "123456789012", "order-2026-11-22"])
def test_other_digit_runs_are_not_card_numbers(text: str) -> None:
    assert not contains_pan(text)


def test_luhn_check() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("order_id", "4242424242424242"),
        ("payment_method", "4242424242424242"),
        ("metadata", {"note": "card 4242 4242 4242 4242"}),
        ("metadata", {"4242424242424242": "x"}),
    ],
)
def test_a_raw_card_number_anywhere_is_refused(field: str, value: object) -> None:
    error = refused(**{field: value})
    assert error.code == "raw_card_number_refused"
    assert error.field is not None and error.field.startswith(field)


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"amount_minor": 0}, "amount_invalid", "amount_minor"),
        ({"amount_minor": -5}, "amount_invalid", "amount_minor"),
        ({"amount_minor": 10**13}, "amount_too_large", "amount_minor"),
        ({"currency": "ABC"}, "currency_unknown", "currency"),
        ({"idempotency_key": ""}, "idempotency_key_missing", "idempotency_key"),
        ({"idempotency_key": None}, "idempotency_key_missing", "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key_too_long", "idempotency_key"),
        ({"idempotency_key": "has space"}, "idempotency_key_invalid", "idempotency_key"),
        ({"payment_method": "card"}, "payment_method_invalid", "payment_method"),
        ({"capture_method": "later"}, "capture_method_invalid", "capture_method"),
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata_too_many_keys", "metadata"),
        ({"metadata": {"k" * 41: "v"}}, "metadata_key_invalid", "metadata." + "k" * 41),
        ({"metadata": {"k": "v" * 501}}, "metadata_value_invalid", "metadata.k"),
        ({"metadata": {"k": 5}}, "metadata_value_invalid", "metadata.k"),
        ({"metadata": ["not", "a", "map"]}, "metadata_invalid", "metadata"),
        ({"order_id": "o" * 256}, "order_id_too_long", "order_id"),
    ],
)
def test_bad_input_gets_a_typed_error_naming_the_field(
    overrides: dict[str, object], code: str, field: str
) -> None:
    error = refused(**overrides)
    assert (error.code, error.field, error.http_status) == (code, field, 400)


def test_an_idempotency_key_of_255_characters_is_accepted() -> None:
    assert create(idempotency_key="k" * 255).idempotency_key == "k" * 255


def test_the_fingerprint_ignores_the_key_but_not_the_body() -> None:
    assert create(idempotency_key="a").fingerprint() == create(idempotency_key="b").fingerprint()
    assert create().fingerprint() != create(amount_minor=1001).fingerprint()


@pytest.mark.parametrize("command", [Capture, Refund])
def test_partial_amounts_must_be_positive(command: type[Capture] | type[Refund]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        command("m_1", "k", "pay_1", amount_minor=0)
    assert caught.value.field == "amount_minor"
