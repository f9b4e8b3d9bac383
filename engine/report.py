"""The organisation chat report (``GET /orgs/{org}/chats``): filters,
orderings and page pagination over ordered indexes.

The state keeps, for each owner org and each room, chats by ``(start_time, seq)``,
ended chats by ``(end_time, seq)`` and open chats by ``seq``. A query picks the narrowest
of them (a room's rather than the org's, a ``start_time`` / ``end_time`` range found by
bisection) and, when no other filter applies, counts and slices by position without
looking at a single chat it does not return. Other filters (``since_id``, ``has_sales``,
``is_real_conversation``, ``min_message_count``, ``only_ended`` by start time) scan the
chosen range once; ``tag`` starts from the tag's own index (ordered by start time; sorted again for an
``end_time`` ordering).

Orderings: by ``start_time`` (default) or ``end_time``, ties broken by creation order; a
``-`` ordering is the exact reverse. By ``end_time`` open chats come after ended ones
(before them with ``-end_time``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedDict

from engine import errors
from engine.chat import ChatState
from engine.state import State

ORDERINGS = ("start_time", "-start_time", "end_time", "-end_time")


@dataclass(slots=True)
class ReportQuery:
    ordering: str = "start_time"
    page: int = 1
    page_size: int = 25
    since_seq: int | None = None
    start_time: int | None = None  # inclusive
    end_time: int | None = None  # exclusive; ended chats only
    has_sales: bool | None = None
    is_real_conversation: bool | None = None
    room_id: str | None = None
    tag: str | None = None
    min_message_count: int | None = None
    only_ended: bool = False


@dataclass(slots=True)
class ReportPage:
    count: int
    num_pages: int
    page: int
    chats: list[ChatState]


@dataclass(slots=True)
class _Segment:
    """Positions ``[low, high)`` of a sorted index, walked forwards or backwards."""

    index: SortedDict
    low: int
    high: int
    reverse: bool

    def __len__(self) -> int:
        return max(0, self.high - self.low)

    def items(self, start: int = 0, stop: int | None = None) -> list[ChatState]:
        stop = len(self) if stop is None else min(stop, len(self))
        values = self.index.values()
        if not self.reverse:
            return list(values[self.low + start : self.low + stop])
        return list(reversed(values[self.high - stop : self.high - start]))

    def __iter__(self) -> Iterator[ChatState]:
        values = self.index.values()
        positions = (
            range(self.high - 1, self.low - 1, -1) if self.reverse else range(self.low, self.high)
        )
        for position in positions:
            yield values[position]


def has_sales(chat: ChatState) -> bool:
    """A chat has sales when one of its carts is locked (purchased)."""
    return any(cart.locked_at is not None for cart in chat.carts)


def _order_key(ordering: str) -> Callable[[ChatState], Any]:
    if ordering.endswith("start_time"):
        return lambda chat: (chat.start_time, chat.seq)
    # by end time: ended chats first, by (end_time, seq); open ones after, by seq
    return lambda chat: (
        (0, chat.end_time, chat.seq) if chat.end_time is not None else (1, 0, chat.seq)
    )


def reported(org_id: str, room_organization_id: str) -> bool:
    """The report covers the chats of the rooms the org owns, not rooms shared with it
    (a chat's ``organization_id`` is its room's owner)."""
    return room_organization_id == org_id


def run_report(state: State, org_id: str, query: ReportQuery) -> ReportPage:
    key = query.room_id or org_id
    if query.room_id is not None:
        room = state.rooms.get(query.room_id)
        if room is None or not reported(org_id, room.organization_id):
            return _page([], 0, query)  # only the org's own rooms are reported
    reverse = query.ordering.startswith("-")
    by_start = query.ordering.endswith("start_time")
    if query.tag is not None:
        tagged = state.tag_chats.get((org_id, query.tag), SortedDict())
        predicates = _predicates(query, frozenset())
        if by_start:
            # the tag index is itself ordered by (start_time, seq): slice it like the others
            return _from_segments([_Segment(tagged, 0, len(tagged), reverse)], predicates, query)
        candidates = sorted(tagged.values(), key=_order_key(query.ordering), reverse=reverse)
        return _filtered(candidates, predicates, query)
    predicates = _predicates(query, frozenset({"room", "start" if by_start else "end"}))
    return _from_segments(_segments(state, key, query, reverse), predicates, query)


def _from_segments(
    segments: list[_Segment], predicates: list[Callable[[ChatState], bool]], query: ReportQuery
) -> ReportPage:
    """Count and slice by position when no predicate is left; else scan once."""
    if not predicates:
        page = _page([], sum(len(segment) for segment in segments), query)
        page.chats = _slice(segments, (page.page - 1) * query.page_size, query.page_size)
        return page
    return _filtered((chat for segment in segments for chat in segment), predicates, query)


def _segments(state: State, key: str, query: ReportQuery, reverse: bool) -> list[_Segment]:
    empty = SortedDict()
    if query.ordering.endswith("start_time"):
        index = state.report_by_start.get(key, empty)
        low = index.bisect_left((query.start_time,)) if query.start_time is not None else 0
        return [_Segment(index, low, len(index), reverse)]
    ended = state.report_by_end.get(key, empty)
    high = ended.bisect_left((query.end_time,)) if query.end_time is not None else len(ended)
    segments = [_Segment(ended, 0, high, reverse)]
    if not query.only_ended and query.end_time is None:
        opened = state.report_open.get(key, empty)
        segments.append(_Segment(opened, 0, len(opened), reverse))
    return list(reversed(segments)) if reverse else segments


def _predicates(query: ReportQuery, covered: frozenset[str]) -> list[Callable[[ChatState], bool]]:
    """Every filter as a test of one chat, leaving out what the chosen index already
    guarantees (``covered``: ``start`` — bisected start bound; ``end`` — bisected end
    bound with open chats left out; ``room`` — a room's own index)."""
    predicates: list[Callable[[ChatState], bool]] = []
    if query.since_seq is not None:
        since = query.since_seq
        predicates.append(lambda chat: chat.seq > since)
    if query.room_id is not None and "room" not in covered:
        room_id = query.room_id
        predicates.append(lambda chat: chat.room_id == room_id)
    if query.start_time is not None and "start" not in covered:
        start = query.start_time
        predicates.append(lambda chat: chat.start_time >= start)
    if "end" not in covered:
        if query.end_time is not None:
            end = query.end_time
            predicates.append(lambda chat: chat.end_time is not None and chat.end_time < end)
        elif query.only_ended:
            predicates.append(lambda chat: chat.end_time is not None)
    if query.has_sales is not None:
        wanted = query.has_sales
        predicates.append(lambda chat: has_sales(chat) is wanted)
    if query.is_real_conversation is not None:
        real = query.is_real_conversation
        predicates.append(lambda chat: chat.is_real_conversation is real)
    if query.min_message_count is not None:
        minimum = query.min_message_count
        predicates.append(lambda chat: chat.message_count >= minimum)
    return predicates


def _filtered(
    candidates: Any, predicates: list[Callable[[ChatState], bool]], query: ReportQuery
) -> ReportPage:
    matches = [chat for chat in candidates if all(predicate(chat) for predicate in predicates)]
    page = _page([], len(matches), query)
    start = (page.page - 1) * query.page_size
    page.chats = matches[start : start + query.page_size]
    return page


def _page(chats: list[ChatState], count: int, query: ReportQuery) -> ReportPage:
    num_pages = max(1, math.ceil(count / query.page_size))
    if query.page > num_pages:
        raise errors.InvalidPage(f"Page {query.page} is past the last page ({num_pages}).")
    return ReportPage(count, num_pages, query.page, chats)


def _slice(segments: list[_Segment], start: int, size: int) -> list[ChatState]:
    out: list[ChatState] = []
    for segment in segments:
        length = len(segment)
        if start >= length:
            start -= length
            continue
        out += segment.items(start, start + size - len(out))
        start = 0
        if len(out) >= size:
            break
    return out


__all__ = ["ORDERINGS", "ReportPage", "ReportQuery", "run_report"]
