"""Stripe's form dialect: decode ``metadata[order_id]=o1`` into nested values and read them.

Drivers hand the core either raw form pairs (the HTTP server) or a nested dict with
Python scalars (the simulation); both normalise to the same tree of strings, so the
idempotency fingerprint of a request does not depend on the driver.

Readers raise ``InvalidRequestError`` subclasses naming the parameter exactly as the
client spelled it (``metadata[order_id]``, ``payment_method_types[0]``) and never
mutate anything: a handler parses its whole command first, then acts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mock_psp.errors import (
    ParameterInvalid,
    ParameterMissing,
    ParameterUnknown,
    RawCardDataRefused,
)

ParamTree = dict[str, Any]

PARAM_COUNT_MAX = 500
PARAM_DEPTH_MAX = 4
VALUE_LENGTH_MAX = 5_000
METADATA_KEYS_MAX = 50
METADATA_KEY_LENGTH_MAX = 40
METADATA_VALUE_LENGTH_MAX = 500
LIST_LENGTH_MAX = 100

_KEY_RE = re.compile(r"^([A-Za-z0-9_.\-]+)((?:\[[^\[\]]*\])*)$")
_PAN_RE = re.compile(r"(?<!\d)(\d[ -]?){13,19}(?!\d)")
_INT_RE = re.compile(r"^-?\d{1,18}$")


def _scalar_to_str(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        text = str(value)
    elif value is None:
        text = ""
    else:
        # floats and other objects arrive as text, so that the typed reader names them
        text = str(value)
    if len(text) > VALUE_LENGTH_MAX:
        raise ParameterInvalid(name, f"Value for {name} is too long.", code="parameter_too_long")
    return text


def _split_key(key: str) -> list[str]:
    match = _KEY_RE.match(key)
    if match is None:
        raise ParameterUnknown(key)
    parts = [match.group(1)]
    brackets = match.group(2)
    if brackets:
        parts.extend(re.findall(r"\[([^\[\]]*)\]", brackets))
    if len(parts) > PARAM_DEPTH_MAX:
        raise ParameterInvalid(key, f"Parameter {key} is nested too deeply.")
    return parts


def _insert(tree: ParamTree, parts: list[str], value: str, key: str) -> None:
    node: Any = tree
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(node, list):
            node = _list_step(node, part, last, value, key)
            if last:
                return
            continue
        if last:
            if part in node:
                raise ParameterInvalid(key, f"Parameter {key} was given twice.")
            node[part] = value
            return
        following = parts[index + 1]
        child = node.setdefault(part, [] if following == "" or following.isdigit() else {})
        if isinstance(child, str):
            raise ParameterInvalid(key, f"Parameter {key} mixes a value and a hash.")
        node = child


def _list_step(node: list[Any], part: str, last: bool, value: str, key: str) -> Any:
    """One step into a list: ``[]`` appends, ``[n]`` addresses item n (appending if new)."""
    if part != "" and not part.isdigit():
        raise ParameterInvalid(key, f"Invalid array index in {key}.")
    position = len(node) if part == "" else int(part)
    if position > len(node) or position >= LIST_LENGTH_MAX:
        raise ParameterInvalid(key, f"Invalid array index in {key}.")
    if last:
        if position < len(node):
            raise ParameterInvalid(key, f"Parameter {key} was given twice.")
        node.append(value)
        return value
    if position == len(node):
        node.append({})
    child = node[position]
    if not isinstance(child, dict):
        raise ParameterInvalid(key, f"Parameter {key} mixes a value and a hash.")
    return child


def _flatten_nested(prefix: str, value: object, out: list[tuple[str, object]]) -> None:
    if isinstance(value, Mapping):
        for sub_key, sub_value in value.items():
            _flatten_nested(f"{prefix}[{sub_key}]", sub_value, out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten_nested(f"{prefix}[{index}]", item, out)
    else:
        out.append((prefix, value))


def decode_params(raw: Mapping[str, object] | Iterable[tuple[str, object]]) -> ParamTree:
    """Normalise form pairs or a nested dict into a tree of strings, lists and dicts."""
    pairs: list[tuple[str, object]] = []
    items = raw.items() if isinstance(raw, Mapping) else raw
    for key, value in items:
        _flatten_nested(str(key), value, pairs)
        if len(pairs) > PARAM_COUNT_MAX:
            raise ParameterInvalid("params", "Too many parameters.", code="parameters_too_many")
    tree: ParamTree = {}
    for key, value in pairs:
        _insert(tree, _split_key(key), _scalar_to_str(key, value), key)
    return tree


def fingerprint(method: str, path: str, tree: ParamTree) -> str:
    """A digest of a request's canonical text, compared for idempotency-key reuse.

    Kept with every key for a day: a 128-bit BLAKE2b digest, not the text itself.
    """
    text = json.dumps([method.upper(), path, tree], sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        number = int(char)
        if index % 2 == 1:
            number = number * 2 - 9 if number > 4 else number * 2
        total += number
    return total % 10 == 0


def refuse_card_numbers(tree: ParamTree, prefix: str = "") -> None:
    """Refuse any value that looks like a card number (PAN): tokens only, ever."""
    for key, value in tree.items():
        name = f"{prefix}[{key}]" if prefix else key
        if isinstance(value, dict):
            refuse_card_numbers(value, name)
        elif isinstance(value, list):
            refuse_card_numbers({str(i): item for i, item in enumerate(value)}, name)
        elif (
            _looks_like_pan(value)
            or name.endswith("[card][number]")
            or name in ("card[number]", "number")
        ):
            raise RawCardDataRefused(name)


def _looks_like_pan(value: str) -> bool:
    for match in _PAN_RE.finditer(value):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            return True
    return False


class ParamReader:
    """Typed, named access to one level of a request's parameters.

    Construction refuses unknown keys at once, so every handler states the
    parameters it accepts and no typo silently passes.
    """

    __slots__ = ("_prefix", "_tree")

    def __init__(self, tree: ParamTree, allowed: Iterable[str], prefix: str = "") -> None:
        allowed_set = frozenset(allowed)
        for key in sorted(tree):
            if key not in allowed_set:
                raise ParameterUnknown(self._join(prefix, key))
        self._tree = tree
        self._prefix = prefix

    @staticmethod
    def _join(prefix: str, key: str) -> str:
        return f"{prefix}[{key}]" if prefix else key

    def name(self, key: str) -> str:
        return self._join(self._prefix, key)

    def has(self, key: str) -> bool:
        return key in self._tree

    def _text(self, key: str, required: bool) -> str | None:
        value = self._tree.get(key)
        if value is None:
            if required:
                raise ParameterMissing(self.name(key))
            return None
        if not isinstance(value, str):
            raise ParameterInvalid(
                self.name(key), f"Invalid string: {self.name(key)} must be a string."
            )
        return value

    def string(
        self,
        key: str,
        *,
        required: bool = False,
        length_max: int = 500,
        choices: Iterable[str] | None = None,
    ) -> str | None:
        value = self._text(key, required)
        if value is None:
            return None
        if value == "":
            if required:
                raise ParameterInvalid(
                    self.name(key),
                    f"You passed an empty string for '{self.name(key)}'.",
                    code="parameter_invalid_empty",
                )
            return None
        if len(value) > length_max:
            raise ParameterInvalid(
                self.name(key), f"{self.name(key)} is longer than {length_max} characters."
            )
        if choices is not None:
            options = list(choices)
            if value not in options:
                raise ParameterInvalid(
                    self.name(key),
                    f"Invalid {self.name(key)}: must be one of {', '.join(options)}",
                    code="parameter_invalid_enum",
                )
        return value

    def integer(
        self, key: str, *, required: bool = False, minimum: int = 0, maximum: int = 2**53
    ) -> int | None:
        value = self._text(key, required)
        if value is None:
            return None
        if not _INT_RE.match(value):
            raise ParameterInvalid(
                self.name(key), f"Invalid integer: {value[:40]}", code="parameter_invalid_integer"
            )
        number = int(value)
        if number < minimum or number > maximum:
            raise ParameterInvalid(
                self.name(key),
                f"Invalid {self.name(key)}: must be between {minimum} and {maximum}.",
                code="parameter_invalid_integer",
            )
        return number

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._text(key, False)
        if value is None or value == "":
            return default
        if value not in ("true", "false"):
            raise ParameterInvalid(
                self.name(key), f"Invalid boolean: {value[:40]}", code="parameter_invalid_boolean"
            )
        return value == "true"

    def sub(self, key: str, allowed: Iterable[str]) -> ParamReader | None:
        value = self._tree.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, dict):
            raise ParameterInvalid(
                self.name(key), f"Invalid object: {self.name(key)} must be a hash."
            )
        return ParamReader(value, allowed, self.name(key))

    def string_list(self, key: str, *, choices: Iterable[str] | None = None) -> list[str] | None:
        value = self._tree.get(key)
        if value is None:
            return None
        if isinstance(value, dict) and all(k.isdigit() for k in value):
            value = [value[k] for k in sorted(value, key=int)]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ParameterInvalid(self.name(key), f"Invalid array: {self.name(key)}.")
        if len(value) > LIST_LENGTH_MAX:
            raise ParameterInvalid(self.name(key), f"{self.name(key)} has too many items.")
        options = None if choices is None else frozenset(choices)
        for index, item in enumerate(value):
            if options is not None and item not in options:
                allowed = ", ".join(sorted(options))
                raise ParameterInvalid(
                    f"{self.name(key)}[{index}]",
                    f"Invalid {self.name(key)}[{index}]: must be one of {allowed}",
                    code="parameter_invalid_enum",
                )
        return list(value)

    def metadata(self, key: str = "metadata") -> dict[str, str] | None:
        value = self._tree.get(key)
        if value is None:
            return None
        if value == "":
            return {}  # Stripe: an empty string unsets all metadata
        if not isinstance(value, dict):
            raise ParameterInvalid(self.name(key), "Invalid metadata: must be a hash.")
        if len(value) > METADATA_KEYS_MAX:
            raise ParameterInvalid(
                self.name(key), f"Metadata may have at most {METADATA_KEYS_MAX} keys."
            )
        result: dict[str, str] = {}
        for meta_key, meta_value in value.items():
            name = f"{self.name(key)}[{meta_key}]"
            if not isinstance(meta_value, str):
                raise ParameterInvalid(name, f"Invalid metadata value for {name}.")
            if len(meta_key) > METADATA_KEY_LENGTH_MAX or not meta_key:
                raise ParameterInvalid(name, f"Metadata keys must be 1 to 40 characters: {name}.")
            if len(meta_value) > METADATA_VALUE_LENGTH_MAX:
                raise ParameterInvalid(name, f"Metadata values are at most 500 characters: {name}.")
            result[meta_key] = meta_value
        return result

    def any_value(self, key: str) -> Any:
        """A parameter accepted and echoed but not interpreted (e.g. payment_method_options)."""
        return self._tree.get(key)
