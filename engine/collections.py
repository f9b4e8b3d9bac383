"""Ordered views over the engine's indexes, for keyset pagination.

A view yields ``(key, item)`` pairs in the collection's order, strictly after (``after``)
or strictly before (``before``, nearest first) a key. Keys are integers: a sequence
number for sorted indexes, a position for append-only lists. Because keys never change
and items are only appended (or removed), walking forward from a key never skips nor
repeats an item, whatever is inserted meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any, Protocol

from sortedcontainers import SortedDict

Predicate = Callable[[Any], bool] | None


class OrderedView(Protocol):
    def after(self, key: int | None) -> Iterator[tuple[int, Any]]: ...

    def before(self, key: int | None) -> Iterator[tuple[int, Any]]: ...


class SortedView:
    """A view of a ``SortedDict`` keyed by sequence number."""

    __slots__ = ("_index", "_predicate")

    def __init__(self, index: SortedDict | None, predicate: Predicate = None) -> None:
        self._index = index if index is not None else SortedDict()
        self._predicate = predicate

    def _filter(self, keys: Iterator[int]) -> Iterator[tuple[int, Any]]:
        index, predicate = self._index, self._predicate
        for key in keys:
            item = index[key]
            if predicate is None or predicate(item):
                yield key, item

    def after(self, key: int | None) -> Iterator[tuple[int, Any]]:
        if key is None:
            return self._filter(iter(self._index.keys()))
        return self._filter(self._index.irange(minimum=key, inclusive=(False, True)))

    def before(self, key: int | None) -> Iterator[tuple[int, Any]]:
        if key is None:
            return self._filter(reversed(self._index.keys()))
        return self._filter(self._index.irange(maximum=key, inclusive=(True, False), reverse=True))


class ListView:
    """A view of an append-only list; the key is the position."""

    __slots__ = ("_items", "_predicate")

    def __init__(self, items: Sequence[Any], predicate: Predicate = None) -> None:
        self._items = items
        self._predicate = predicate

    def after(self, key: int | None) -> Iterator[tuple[int, Any]]:
        start = 0 if key is None else max(key + 1, 0)
        predicate = self._predicate
        for position, item in enumerate(islice(self._items, start, None), start):
            if predicate is None or predicate(item):
                yield position, item

    def before(self, key: int | None) -> Iterator[tuple[int, Any]]:
        items, predicate = self._items, self._predicate
        position = len(items) - 1 if key is None else min(key, len(items)) - 1
        while position >= 0:
            item = items[position]
            if predicate is None or predicate(item):
                yield position, item
            position -= 1


class KeyedListView:
    """A small list whose items carry their own increasing integer key (presences)."""

    __slots__ = ("_items", "_key")

    def __init__(self, items: Sequence[Any], key: Callable[[Any], int]) -> None:
        self._items = items
        self._key = key

    def after(self, key: int | None) -> Iterator[tuple[int, Any]]:
        for item in self._items:
            item_key = self._key(item)
            if key is None or item_key > key:
                yield item_key, item

    def before(self, key: int | None) -> Iterator[tuple[int, Any]]:
        for item in reversed(self._items):
            item_key = self._key(item)
            if key is None or item_key < key:
                yield item_key, item
