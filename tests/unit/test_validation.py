"""Input rules: card numbers, keys, tokens, metadata; each error names its field."""

from __future__ import annotations

import itertools
import random
import re
import string
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.commands import Capture, CreatePayment, Refund
from engine.domain.errors import InvalidRequest
from engine.domain.validation import (
    PAN_SEPARATORS,
    REQUEST_STRINGS_MAX,
    contains_pan,
    has_digit_run,
    luhn_valid,
    refuse_pans,
)
from engine.entrypoints.logs import mask

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


# Card numbers: what the module docstring's rule refuses, and what it lets through.

TEST_PANS = [
    "4242424242424242",
    "4000056655665556",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
]
SEPARATORS = list(PAN_SEPARATORS)


def grouped(pan: str, separator: str) -> str:
    """As printed on the card: 4-6-5 for a 15-digit Amex, groups of 4 otherwise."""
    sizes = (4, 6, 5) if len(pan) == 15 else (4,) * 4
    groups, start = [], 0
    for size in sizes:
        groups.append(pan[start : start + size])
        start += size
    return separator.join(groups)


def luhn_complete(body: str) -> str:
    """``body`` and the check digit that makes it pass Luhn."""
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def test_the_test_numbers_are_grouped_as_printed_with_every_separator() -> None:
    assert sorted(SEPARATORS) == sorted(" -./_")
    assert all(luhn_valid(pan) for pan in TEST_PANS)
    assert grouped("378282246310005", " ") == "3782 822463 10005"
    assert grouped("4242424242424242", "/") == "4242/4242/4242/4242"


PAN_FORMS = [grouped(pan, sep) for pan, sep in itertools.product(TEST_PANS, SEPARATORS)]
PLACES = [
    ("order_id", "{}"),
    ("order_id", "order-{}"),
    ("idempotency_key", "key_{}"),
    ("metadata", {"note": "card: {}."}),
    ("metadata", {"note": "({}) exp 12/30"}),
    ("metadata", {"{}": "x"}),
]


@pytest.mark.parametrize("form", PAN_FORMS + TEST_PANS)
@pytest.mark.parametrize(("field", "template"), PLACES)
def test_every_separator_form_of_a_card_number_is_refused_naming_the_field(
    form: str, field: str, template: object
) -> None:
    if isinstance(template, dict):
        key, value = next(iter(template.items()))
        body: object = {key.format(form): value.format(form)}
        expected = f"metadata.{key.format(form)}"
    else:
        body, expected = str(template).format(form), field
    error = refused(**{field: body})
    assert (error.code, error.field) == ("raw_card_number_refused", expected)


@pytest.mark.parametrize("form", PAN_FORMS)
def test_the_logs_mask_every_separator_form(form: str) -> None:
    assert mask(f"charge failed for {form}, retrying") == "[card number removed]"


def test_a_million_seeded_uuids_are_never_card_numbers() -> None:
    """Half bare hex, half dashed. About 1 in 600 held a Luhn-valid run of 13 to 19
    digits that the old rule refused (a fragment of the hex, or dashed groups joined).
    Checked as the engine checks a request, in batches of as many strings as the
    pre-check joins: ``refuse_pans``."""
    rng = random.Random(16)
    count = 1_000_000
    batch_size = REQUEST_STRINGS_MAX - 1
    checked = 0
    while checked < count:
        size = min(batch_size, count - checked)
        dashed = checked >= count // 2
        ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(size)]
        batch = [str(u) for u in ids] if dashed else [u.hex for u in ids]
        refuse_pans({"ids": batch})
        checked += size
    assert checked == count


@pytest.mark.parametrize(
    "text",
    [
        "a41111111111111111b",
        "ab4111111111111111cd",
        "4111111111111111b",
        "x4242424242424242",
        "pay_3f4242424242424242",
        "12345678-1234-1232-1234-123456789012",  # "12345678-1234-1232" passes Luhn
        "req_44444444_00000003",  # 8-8: not how a card number is printed
        "4242  4242 4242 4242",  # two separators in a row end a chain
    ],
)
def test_digit_runs_that_do_not_stand_on_their_own_are_not_card_numbers(text: str) -> None:
    assert not contains_pan(text)
    assert create(order_id=text.replace(" ", "_")).order_id == text.replace(" ", "_")


def test_luhn_valid_digit_runs_inside_hex_and_base32_tokens_are_not_refused() -> None:
    rng = random.Random(16)
    hex_letters, base32 = "abcdef", string.ascii_uppercase + "234567"
    for n in range(2_000):
        pan = luhn_complete("".join(rng.choices(string.digits, k=rng.randint(12, 18))))
        letters = hex_letters if n % 2 else string.ascii_uppercase
        alphabet = hex_letters + string.digits if n % 2 else base32
        before = rng.choice(letters) + "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
        after = "".join(rng.choices(alphabet, k=rng.randint(0, 12))) + rng.choice(letters)
        for token in (before + pan + after, before + pan, pan + after):
            assert not contains_pan(token), token
            assert create(idempotency_key=token, order_id=f"o-{token}").order_id == f"o-{token}"


def test_a_card_number_elsewhere_is_named_not_a_path_made_of_digit_keys() -> None:
    with pytest.raises(InvalidRequest) as caught:
        refuse_pans({"b": "4242424242424242", "a": {"4242 4242 4242": {"4242": "x"}}})
    assert caught.value.field == "b"


# Hypothesis: a Luhn-valid number of 13 to 19 digits, in groups of at most 6 joined by
# any mix of the separators, or in one run.
luhn_numbers = st.integers(12, 18).flatmap(
    lambda n: st.text(alphabet=string.digits, min_size=n, max_size=n).map(luhn_complete)
)


@st.composite
def formatted_pans(draw: st.DrawFn) -> str:
    digits = draw(luhn_numbers)
    if draw(st.booleans()):
        return digits
    parts, start = [], 0
    while start < len(digits):
        size = draw(st.integers(1, 6))
        parts.append(digits[start : start + size])
        start += size
    gaps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(parts), max_size=len(parts)))
    return "".join(part + gap for part, gap in zip(parts, gaps, strict=True))[:-1]


# Around the number: words, then a space or punctuation next to it (never a digit).
PUNCTUATION = " \t\n.,;:!?()[]{}<>'\"=+*#@%&|/_-"
words = st.text(alphabet=string.ascii_letters + PUNCTUATION, max_size=12)
before = st.tuples(words, st.sampled_from(PUNCTUATION)).map("".join) | st.just("")
after = st.tuples(st.sampled_from(PUNCTUATION), words).map("".join) | st.just("")
letters = st.sampled_from(string.ascii_letters + "éßЖ")


@settings(max_examples=500)
@given(formatted_pans(), before, after)
def test_a_formatted_card_number_standing_on_its_own_is_always_found(
    pan: str, prefix: str, suffix: str
) -> None:
    text = prefix + pan + suffix
    assert contains_pan(text)
    assert refused(metadata={"note": text[:500]}).field == "metadata.note"
    assert mask(text) == "[card number removed]"


@settings(max_examples=500)
@given(formatted_pans(), before, after, letters, st.sampled_from(["before", "after", "both"]))
def test_a_formatted_card_number_with_a_letter_glued_on_is_never_found(
    pan: str, prefix: str, suffix: str, letter: str, side: str
) -> None:
    glued = (letter if side != "after" else "") + pan + (letter if side != "before" else "")
    assert not contains_pan(prefix + glued + suffix)


def reference_contains_pan(text: str) -> bool:
    """The module docstring's rule read plainly: split into chains, judge each whole."""
    for chain in re.finditer(r"\d+(?:[ ./_-]\d+)*", text):
        start, end = chain.span()
        touched = (start > 0 and text[start - 1].isalnum()) or (
            end < len(text) and text[end].isalnum()
        )
        groups = re.split(r"[ ./_-]", chain.group())
        digits = "".join(groups)
        if (
            not touched
            and 13 <= len(digits) <= 19
            and (len(groups) == 1 or max(map(len, groups)) <= 6)
            and luhn_valid(digits)
        ):
            return True
    return False


@settings(max_examples=500)
@given(
    st.lists(
        st.sampled_from(["4242424242424242", "4242", "378282", "10005", "1", "12", "8"])
        | st.text(alphabet="0123456789 ./_-aZ\n,", max_size=6),
        max_size=12,
    )
)
def test_the_regular_expression_agrees_with_the_rule_read_plainly(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert contains_pan(text) == reference_contains_pan(text)
    assert has_digit_run(text) or not contains_pan(text)


def test_an_id_is_redrawn_while_a_plain_scanner_could_take_part_of_it_for_a_card() -> None:
    """The engine's guard reads a digit run inside hex as no card number, but the ids go
    to the provider, whose scanner reads runs bare (the mock PSP's refused such calls)."""
    from engine.domain.ports import card_safe_id
    from mock_psp.params import _looks_like_pan

    embedded = "a4242424242424242bcd"  # 20 hex digits, a Luhn-valid run inside letters
    assert not contains_pan(f"pay_{embedded}") and _looks_like_pan(f"pay_{embedded}")
    draws = iter([int(embedded, 16), int("abcdef0123456789abcd", 16)])
    assert card_safe_id("pay", lambda: next(draws)) == "pay_abcdef0123456789abcd"
