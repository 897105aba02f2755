"""Input rules that hold for every entrypoint: keys, tokens, metadata, card numbers.

Raw card numbers (PANs) are never accepted: one is refused wherever it appears in
a request (keys and values, nested), so it is never written anywhere. The rule:

- A *chain* is a maximal run of digit groups joined by single separators: a
  space, ``-``, ``.``, ``/`` or ``_``. "4242 4242-4242.4242" is one chain of four
  groups; two separators in a row end a chain.
- A chain is a *candidate* when all three hold:

  * nothing alphanumeric touches it: the characters just before its first digit
    and just after its last are not letters or digits (the start and end of the
    text count as neither). A digit run inside a longer token (hex, base32, an
    id such as "a41111111111111111b") is never a candidate. A separator does not
    glue: in "pm_4242424242424242", "order-4242..." or "/cards/4242.../" it is;
  * it holds 13 to 19 digits in all;
  * it is one plain run of digits, or groups of at most 6 digits each, as card
    numbers are printed (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3). This keeps a dashed
    UUID out: a chain holding its 8- or 12-digit group is not a candidate, its
    three middle groups make 12 digits, and a part of a group touches a hex letter.

- A candidate whose digits pass the Luhn check is a card number.

A chain is judged whole, never a part of it: "4242424242424242 123" (16 digits,
then 3) and "4242 4242 4242 4242 12/26" (20 digits) are not card numbers. The
pre-check (``has_digit_run``) is the same regular expression without the Luhn
check, run once over a request's strings joined by line breaks (which end a chain).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from engine.domain.errors import InvalidRequest

IDEMPOTENCY_KEY_LENGTH_MAX = 255
METADATA_KEYS_MAX = 50
METADATA_KEY_LENGTH_MAX = 40
METADATA_VALUE_LENGTH_MAX = 500
ID_LENGTH_MAX = 255
REQUEST_STRINGS_MAX = 200

# What may join the groups of a card number written in groups ("-" last: a regex
# character class of them reads it literally).
PAN_SEPARATORS = " ./_-"
_SEP = f"[{PAN_SEPARATORS}]"
# A candidate, as the module docstring says. It starts with ``\d``, not a lookbehind,
# so the engine skips quickly to a digit; ``[^\W_]`` is a letter or a digit.
_PAN_CANDIDATE = re.compile(
    rf"""
    \d(?<![^\W_]\d)(?<!\d{_SEP}\d)    # a chain's first digit, untouched before
    (?:
        \d{{12,18}}                    # one plain run of 13 to 19 digits,
      | (?=(?:{_SEP}?\d){{12}})        # or 13 digits or more
        (?!(?:{_SEP}?\d){{19}})        # and 19 at most
        \d{{0,5}}(?:{_SEP}\d{{1,6}})+  # in groups of at most 6
    )
    (?![^\W_]|{_SEP}\d)               # the chain ends, untouched after
    """,
    re.VERBOSE,
)
_DROP_SEPARATORS = str.maketrans("", "", PAN_SEPARATORS)
# Matched whole (``fullmatch``): ``$`` would also match before a trailing newline,
# and "pm_card_visa\n" passed for a token.
# The patterns are public so that the API's OpenAPI document states these same rules.
PAYMENT_METHOD_PATTERN = r"(pm|tok|src|card)_[A-Za-z0-9_]{1,100}"
PRINTABLE_PATTERN = r"[\x21-\x7e]+"  # identifiers and idempotency keys: no spaces
_TOKEN = re.compile(PAYMENT_METHOD_PATTERN)
_PRINTABLE = re.compile(PRINTABLE_PATTERN)
# What no metadata key may hold: control characters (NUL among them) and lone
# surrogates, which no database or JSON encoder can store as text. Values may hold
# tabs and line breaks (a note), nothing else of the kind.
METADATA_KEY_CONTROLS = r"\x00-\x1f\x7f"
METADATA_VALUE_CONTROLS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f"
_UNSTORABLE_KEY = re.compile(rf"[{METADATA_KEY_CONTROLS}\ud800-\udfff]")
_UNSTORABLE_VALUE = re.compile(rf"[{METADATA_VALUE_CONTROLS}\ud800-\udfff]")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


# A run of 13 to 19 decimal digits whatever stands around it: how a plain scanner
# (a provider's, a log scrubber's) reads text, letters and all.
_BARE_DIGIT_RUN = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def passes_for_pan_anywhere(text: str) -> bool:
    """Whether a plain scanner could take part of ``text`` for a card number: a bare run
    of 13-19 digits passing Luhn, even inside a hex token. Not a card number by this
    module's rule; what ids the engine makes and sends out must avoid all the same."""
    return any(luhn_valid(run) for run in _BARE_DIGIT_RUN.findall(text))


def has_digit_run(text: str) -> bool:
    """Whether ``text`` holds a candidate (module docstring): a card number but for the
    Luhn check, the cheap test before ``contains_pan``."""
    return _PAN_CANDIDATE.search(text) is not None


def contains_pan(text: str) -> bool:
    for match in _PAN_CANDIDATE.finditer(text):
        digits = match.group().translate(_DROP_SEPARATORS)
        assert 13 <= len(digits) <= 19, digits
        if luhn_valid(digits):
            return True
    return False


def refuse_pans(request: Mapping[str, object]) -> None:
    """Scan every string (keys and values, nested) of a request for a card number."""
    if not _has_pan_candidate(request):
        return
    # (field path, key, value): the key is judged alone, as the pre-check saw it, so
    # keys joined into a path ("a.4242.4242...") never make a card number.
    stack: list[tuple[str, str, object]] = [(str(k), str(k), v) for k, v in request.items()]
    seen = 0
    while stack:
        seen += 1
        if seen > REQUEST_STRINGS_MAX * 10:
            raise InvalidRequest("request_too_large", "request has too many fields")
        field, key, value = stack.pop()
        if contains_pan(key) or (isinstance(value, str) and contains_pan(value)):
            raise InvalidRequest(
                "raw_card_number_refused",
                "raw card numbers are never accepted; send a payment method token",
                field=field,
            )
        if isinstance(value, Mapping):
            stack.extend((f"{field}.{k}", str(k), item) for k, item in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{field}[{index}]", "", item) for index, item in enumerate(value))


def _has_pan_candidate(request: Mapping[str, object]) -> bool:
    """Whether any string of the request holds a candidate: one regex over all of them
    (joined by line breaks, so that no chain spans two), before the walk that names the field.
    A request too large to flatten cheaply goes to the walk, which bounds it."""
    strings: list[str] = []
    stack: list[object] = [request]
    while stack:
        if len(strings) > REQUEST_STRINGS_MAX:
            return True
        value = stack.pop()
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, Mapping):
            strings.extend(str(key) for key in value)
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    return has_digit_run("\n".join(strings))


def parse_idempotency_key(value: object) -> str:
    if value is None or value == "":
        raise InvalidRequest(
            "idempotency_key_missing", "every write needs an idempotency key", "idempotency_key"
        )
    if not isinstance(value, str) or not _PRINTABLE.fullmatch(value):
        raise InvalidRequest(
            "idempotency_key_invalid",
            "idempotency key must be printable ASCII without spaces",
            "idempotency_key",
        )
    if len(value) > IDEMPOTENCY_KEY_LENGTH_MAX:
        raise InvalidRequest(
            "idempotency_key_too_long",
            f"idempotency key must be at most {IDEMPOTENCY_KEY_LENGTH_MAX} characters",
            "idempotency_key",
        )
    return value


def parse_identifier(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or not _PRINTABLE.fullmatch(value):
        raise InvalidRequest(f"{field}_invalid", f"{field} must be a non-empty string", field)
    if len(value) > ID_LENGTH_MAX:
        raise InvalidRequest(
            f"{field}_too_long", f"{field} must be at most {ID_LENGTH_MAX} characters", field
        )
    return value


def parse_payment_method(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InvalidRequest(
            "payment_method_invalid",
            "payment_method must be a token such as pm_card_visa",
            "payment_method",
        )
    return value


def parse_metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest("metadata_invalid", "metadata must be an object", "metadata")
    if len(value) > METADATA_KEYS_MAX:
        raise InvalidRequest(
            "metadata_too_many_keys", f"metadata has at most {METADATA_KEYS_MAX} keys", "metadata"
        )
    parsed: dict[str, str] = {}
    for key, item in value.items():
        field = f"metadata.{key}"
        if (
            not isinstance(key, str)
            or not 0 < len(key) <= METADATA_KEY_LENGTH_MAX
            or _UNSTORABLE_KEY.search(key)
        ):
            raise InvalidRequest(
                "metadata_key_invalid",
                f"metadata keys are 1 to {METADATA_KEY_LENGTH_MAX} characters, without "
                "control characters",
                field,
            )
        if (
            not isinstance(item, str)
            or len(item) > METADATA_VALUE_LENGTH_MAX
            or _UNSTORABLE_VALUE.search(item)
        ):
            raise InvalidRequest(
                "metadata_value_invalid",
                f"metadata values are strings of at most {METADATA_VALUE_LENGTH_MAX} characters, "
                "without control characters or lone surrogates",
                field,
            )
        parsed[key] = item
    return parsed
