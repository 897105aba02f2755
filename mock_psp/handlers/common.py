"""Helpers shared by handlers: lookups that 404 like Stripe, list pages, expansion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mock_psp.errors import ParameterInvalid, ResourceMissing
from mock_psp.params import ParamReader

T = TypeVar("T")
JsonDict = dict[str, Any]

LIST_LIMIT_DEFAULT = 10
LIST_LIMIT_MAX = 100
PAGE_PARAMS = ("limit", "starting_after", "ending_before", "expand")


def get_or_404(objects: dict[str, T], object_id: str, kind: str, param: str = "id") -> T:
    found = objects.get(object_id)
    if found is None:
        raise ResourceMissing(kind, object_id, param=param)
    return found


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    starting_after: str | None
    ending_before: str | None


def read_page(reader: ParamReader) -> PageRequest:
    limit = reader.integer("limit", minimum=1, maximum=LIST_LIMIT_MAX)
    return PageRequest(
        limit=LIST_LIMIT_DEFAULT if limit is None else limit,
        starting_after=reader.string("starting_after", length_max=255),
        ending_before=reader.string("ending_before", length_max=255),
    )


def page(
    items_oldest_first: Sequence[T],
    request: PageRequest,
    id_of: Callable[[T], str],
    to_json: Callable[[T], JsonDict],
    url: str,
) -> JsonDict:
    """Stripe's list object, newest first, paginated by object id cursors."""
    items = list(reversed(items_oldest_first))
    ids = [id_of(item) for item in items]
    if request.starting_after is not None:
        start = _cursor_index(ids, request.starting_after, "starting_after") + 1
        window = items[start : start + request.limit]
        has_more = start + request.limit < len(items)
    elif request.ending_before is not None:
        end = _cursor_index(ids, request.ending_before, "ending_before")
        window = items[max(0, end - request.limit) : end]
        has_more = end - request.limit > 0
    else:
        window = items[: request.limit]
        has_more = len(items) > request.limit
    return {
        "object": "list",
        "data": [to_json(item) for item in window],
        "has_more": has_more,
        "url": url,
    }


def _cursor_index(ids: list[str], cursor: str, param: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise ParameterInvalid(
            param, f"Invalid {param}: no object with id '{cursor[:64]}' in this list."
        ) from None


def read_expand(reader: ParamReader, allowed: Sequence[str]) -> frozenset[str]:
    values = reader.string_list("expand") or []
    for index, value in enumerate(values):
        if value not in allowed:
            raise ParameterInvalid(
                f"expand[{index}]", f"This property cannot be expanded ({value[:64]})."
            )
    return frozenset(values)
