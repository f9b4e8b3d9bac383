"""Keyset cursor pagination of the API's cursor collections (``next``/``previous`` links).

A cursor is opaque to clients: base64url of ``[scope, direction, key]``, where ``scope``
names the collection (a hash of its path), ``direction`` is ``n`` (items after ``key``)
or ``p`` (items before it) and ``key`` is an engine index key. A cursor that does not
decode, or that belongs to another collection, is ``invalid_cursor``.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any
from urllib.parse import urlencode

import orjson

from engine import errors
from engine.collections import OrderedView


def _scope(path: str) -> int:
    return zlib.crc32(path.encode("utf-8"))


def encode_cursor(path: str, direction: str, key: int) -> str:
    raw = orjson.dumps([_scope(path), direction, key])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(path: str, cursor: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        scope, direction, key = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise errors.InvalidCursor("The cursor is not valid.") from None
    if (
        scope != _scope(path)
        or direction not in ("n", "p")
        or not isinstance(key, int)
        or isinstance(key, bool)
    ):
        raise errors.InvalidCursor("The cursor is not valid for this collection.")
    return direction, key


def _any(items: Iterator[Any]) -> bool:
    return next(items, None) is not None


def paginate(
    view: OrderedView,
    *,
    path: str,
    cursor: str | None,
    page_size: int,
    url_for: Callable[[str], str],
    render: Callable[[Any], Any],
) -> dict[str, Any]:
    """One page of ``view`` with absolute ``next``/``previous`` links."""
    direction, key = ("n", None) if cursor is None else decode_cursor(path, cursor)
    next_key: int | None = None
    previous_key: int | None = None
    if direction == "n":
        page = list(islice(view.after(key), page_size + 1))
        if len(page) > page_size:
            page = page[:page_size]
            next_key = page[-1][0]
        if page:
            if _any(view.before(page[0][0])):
                previous_key = page[0][0]
        elif key is not None and _any(view.before(key + 1)):
            previous_key = key + 1
    else:
        page = list(islice(view.before(key), page_size + 1))
        if len(page) > page_size:
            page = page[:page_size]
            previous_key = page[-1][0]
        page.reverse()
        if page:
            if _any(view.after(page[-1][0])):
                next_key = page[-1][0]
        elif key is not None and _any(view.after(key - 1)):
            next_key = key - 1
    return {
        "next": None if next_key is None else url_for(encode_cursor(path, "n", next_key)),
        "previous": None
        if previous_key is None
        else url_for(encode_cursor(path, "p", previous_key)),
        "results": [render(item) for _, item in page],
    }


def link_builder(
    base_url: str, path: str, args: list[tuple[str, str]], param: str = "cursor"
) -> Callable[[str], str]:
    """Absolute URL of the same query with only ``param`` (the cursor, or the report's
    page number) replaced."""
    kept = [(name, value) for name, value in args if name != param]

    def url_for(value: str) -> str:
        return f"{base_url}{path}?{urlencode([*kept, (param, value)])}"

    return url_for
