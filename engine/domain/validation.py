"""Input rules that hold for every entrypoint: keys, tokens, metadata, card numbers.

Raw card numbers (PANs) are never accepted: any run of 13 to 19 digits,
optionally split by spaces or dashes, that passes the Luhn check is refused
wherever it appears in a request, so it is never written anywhere.
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

_PAN_CANDIDATE = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
# Matched whole (``fullmatch``): ``$`` would also match before a trailing newline,
# and "pm_card_visa\n" passed for a token.
_TOKEN = re.compile(r"(pm|tok|src|card)_[A-Za-z0-9_]{1,100}")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
# What no metadata key may hold: control characters (NUL among them) and lone
# surrogates, which no database or JSON encoder can store as text. Values may hold
# tabs and line breaks (a note), nothing else of the kind.
_UNSTORABLE_KEY = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_UNSTORABLE_VALUE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


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


def has_digit_run(text: str) -> bool:
    """Whether ``text`` holds a run of 13 to 19 digits (spaces or dashes allowed): the
    cheap test before ``contains_pan``'s Luhn check."""
    return _PAN_CANDIDATE.search(text) is not None


def contains_pan(text: str) -> bool:
    for match in _PAN_CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return True
    return False


def refuse_pans(request: Mapping[str, object]) -> None:
    """Scan every string (keys and values, nested) of a request for a card number."""
    if not _has_pan_candidate(request):
        return
    stack: list[tuple[str, object]] = list(request.items())
    seen = 0
    while stack:
        seen += 1
        if seen > REQUEST_STRINGS_MAX * 10:
            raise InvalidRequest("request_too_large", "request has too many fields")
        field, value = stack.pop()
        if contains_pan(field) or (isinstance(value, str) and contains_pan(value)):
            raise InvalidRequest(
                "raw_card_number_refused",
                "raw card numbers are never accepted; send a payment method token",
                field=field,
            )
        if isinstance(value, Mapping):
            stack.extend((f"{field}.{key}", item) for key, item in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{field}[{index}]", item) for index, item in enumerate(value))


def _has_pan_candidate(request: Mapping[str, object]) -> bool:
    """Whether any string of the request holds a run of 13+ digits: one regex over all
    of them (joined so that no run spans two), before the walk that names the field.
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
