"""Channel histories: every channel's ``seq`` and its newest events, and their replay.

Fan-out hands over each event once with the list of channels that carry it
(``Publication``), and every one of those channels keeps that one shared event
(``Item``: action, resource id, payload) in its history: a history holds no per-channel
event object, and the ``seq`` of its events follows from their position (a history is
always the channel's newest events, contiguous, ending at its ``seq``). Histories keep
only the resource's JSON (``Payload.compact``); a replay builds its frames again.

The ``epoch`` names the life of these histories: a client resuming with another epoch's
``seq`` is told ``resumed: false``. Applying the same records in the same order gives
the same histories, which is what lets a snapshot, a restart or a replica rebuild them.

Memory: each channel keeps its last ``history_limit`` events; across channels at most
``total_history_limit`` events are kept, the oldest dropped first, whatever their
channel (its ``seq`` goes on; a client asking for a dropped range is told
``resumed: false``). The eviction queue holds one reference to the channel per event
kept, less than a per-channel LRU's entry for every channel, and it needs no reordering
on every publish (docs/benchmarks.md, "Figures behind choices in the code"). Only channels that ever had an event are kept: asking about any other
answers ``seq`` 0 and creates nothing, so probing random channels grows nothing.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import orjson

from engine.channels import ChannelKey, key_of, name_of
from engine.fanout import Payload, Publication
from engine.model import shared
from engine.realtime.protocol import Item

# The limits' defaults, in this one place: ``Realtime`` and ``EngineConfig`` (and so
# ``--history-limit``, through ``gateway.settings.default_of``) start from them.
DEFAULT_HISTORY_LIMIT = 1000  # events kept per channel
DEFAULT_TOTAL_HISTORY_LIMIT = 500_000  # events kept across channels

_NO_EVENTS: tuple[()] = ()


@dataclass(slots=True)
class RealtimeStats:
    events_published: int = 0
    events_delivered: int = 0
    batches: int = 0
    subscriptions: int = 0
    history_events_dropped: int = 0


class ChannelHistory:
    __slots__ = ("key", "seq", "events", "queued")

    # A store with 100,000 chats has ~600,000 channels, most with a handful of events:
    # a list, not a deque (which allocates a 64-slot block), keeps each of them small
    # (docs/benchmarks.md, "Figures behind choices in the code").
    def __init__(self, key: ChannelKey) -> None:
        self.key = key  # channels.key_of(its name)
        self.seq = 0
        # its newest events, the last one being event ``seq``. No events: the shared
        # empty tuple; then a list made for its first event (an exact one-slot list,
        # where an append to an empty list reserves four)
        self.events: list[Item] | tuple[()] = _NO_EVENTS
        # this channel's entries in the eviction queue: one per event published since,
        # the newest ``len(events)`` of them still held
        self.queued = 0

    @property
    def name(self) -> str:
        return name_of(self.key)

    def held(self) -> list[tuple[int, Item]]:
        """The history with each event's seq."""
        first = self.seq - len(self.events) + 1
        return list(enumerate(self.events, first))


class Histories:
    def __init__(
        self,
        *,
        epoch: str,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        total_history_limit: int = DEFAULT_TOTAL_HISTORY_LIMIT,
        stats: RealtimeStats | None = None,
    ) -> None:
        self.epoch = epoch
        self.history_limit = history_limit
        self.total_history_limit = total_history_limit
        self.stats = stats if stats is not None else RealtimeStats()
        self.channels: dict[ChannelKey, ChannelHistory] = {}
        # one entry per event published (or restored), oldest first: its channel
        self._eviction: deque[ChannelHistory] = deque()
        self._stale = 0  # entries whose event a channel's own limit already dropped

    def append(self, publications: list[Publication]) -> None:
        """Record the events of one committed mutation, as one batch, in order."""
        # The hot loop of every mutation (~50 channel events for a join into a chat
        # with ten operators): lookups hoisted, nothing allocated per channel but its
        # history slot and eviction entry.
        stats = self.stats
        stats.batches += 1
        queue = self._eviction.append
        found = self.channels
        limit = self.history_limit
        published = 0
        for publication in publications:
            item: Item = (publication.action, publication.resource_id, publication.payload)
            keys = publication.channels
            published += len(keys)
            for key in keys:
                channel = found.get(key)
                if channel is None:
                    channel = found[key] = ChannelHistory(key)
                channel.seq += 1
                events = channel.events
                if not events:
                    channel.events = [item]
                else:
                    if len(events) >= limit:
                        del events[0]  # its eviction entry stays, as a stale one
                        self._stale += 1
                    events.append(item)
                channel.queued += 1
                queue(channel)
        stats.events_published += published
        compacted = None  # consecutive publications often share one payload
        for publication in publications:
            payload = publication.payload
            if payload is not None and payload is not compacted:
                payload.compact()
                compacted = payload
        self._evict()

    def seq(self, key: ChannelKey) -> int:
        found = self.channels.get(key)
        return 0 if found is None else found.seq

    def resume(self, key: ChannelKey, since: int | None, epoch: str | None) -> tuple[int, bool]:
        """The channel's head, and whether the events after ``since`` are all held
        (and ``epoch``, when given, is this one): then they can be replayed."""
        channel = self.channels.get(key)
        if channel is None:
            head, held = 0, 0
        else:
            head, held = channel.seq, len(channel.events)
        if since is None or (epoch is not None and epoch != self.epoch) or not 0 <= since <= head:
            return head, False
        return head, since + 1 >= head - held + 1

    def events_from(self, key: ChannelKey, seq: int) -> tuple[int, list[Item] | tuple[()]]:
        """The channel's held events and the seq of the first, to read on from ``seq``
        (the caller checks that ``seq`` is still held)."""
        channel = self.channels.get(key)
        if channel is None:
            return 1, _NO_EVENTS
        return channel.seq - len(channel.events) + 1, channel.events

    def export(self) -> dict[str, Any]:
        """Every channel's ``seq`` and history as plain data, for a snapshot, and the
        order in which the held events go when ``total_history_limit`` is reached:
        ``order`` lists, oldest first, the row in ``channels`` of each held event (a
        restore that rebuilt it channel by channel would drop other events than the
        node it came from, and a replica's histories would part from the primary's)."""
        exported = [channel for channel in self.channels.values() if channel.seq]
        return {
            "epoch": self.epoch,
            "channels": [
                [
                    channel.name,
                    channel.seq,
                    [
                        [seq, action, resource_id, None if payload is None else payload.as_json()]
                        for seq, (action, resource_id, payload) in channel.held()
                    ],
                ]
                for channel in exported
            ],
            "order": self.eviction_order(exported),
        }

    def eviction_order(self, rows: list[ChannelHistory]) -> list[int]:
        """The index in ``rows`` of the channel of each held event, oldest first."""
        index = {id(channel): row for row, channel in enumerate(rows)}
        stale: dict[int, int] = {}  # a channel's entries still to skip as stale
        order: list[int] = []
        for channel in self._eviction:
            key = id(channel)
            left = stale.get(key)
            if left is None:
                left = channel.queued - len(channel.events)
            if left > 0:
                stale[key] = left - 1
                continue
            stale[key] = 0
            order.append(index[key])
        return order

    def restore(self, data: dict[str, Any]) -> None:
        """Load ``export``'s output."""
        restoring = self.restoring()
        for row in data["channels"]:
            restoring.channel(row)
        if "order" in data:
            restoring.order(data["order"])
        restoring.done()

    def restoring(self) -> Restoring:
        """Load ``export``'s channels one at a time (a snapshot streams them out), then
        call ``done``."""
        return Restoring(self)

    def empty_copy(self) -> Histories:
        return Histories(
            epoch=self.epoch,
            history_limit=self.history_limit,
            total_history_limit=self.total_history_limit,
        )

    def take_over(self, other: Histories) -> None:
        """Become ``other`` (restored aside, so a bad snapshot leaves this one empty)."""
        self.stats.events_published = other.stats.events_published
        self.stats.batches = other.stats.batches
        self.stats.history_events_dropped = other.stats.history_events_dropped
        self.channels = other.channels
        self._eviction = other._eviction
        self._stale = other._stale

    def _evict(self) -> None:
        """Forget the oldest held events beyond ``total_history_limit``.

        The queue holds a channel's entries oldest first; those of events its own
        ``history_limit`` already pushed out are *stale*: they are a channel's first
        ``queued - len(events)`` entries. Stale entries are skipped when met, and the
        queue is compacted once they are half of it, so it stays within twice the
        events held."""
        queue = self._eviction
        while len(queue) - self._stale > self.total_history_limit:
            channel = queue.popleft()
            if channel.queued > len(channel.events):
                self._stale -= 1
            else:
                events = channel.events
                if len(events) == 1:
                    channel.events = _NO_EVENTS
                else:
                    del events[0]  # type: ignore[union-attr]  # two or more: a list
                self.stats.history_events_dropped += 1
            channel.queued -= 1
        if self._stale > len(queue) // 2:
            kept: deque[ChannelHistory] = deque()
            for channel in queue:
                if channel.queued > len(channel.events):
                    channel.queued -= 1
                else:
                    kept.append(channel)
            self._eviction = kept
            self._stale = 0


class Restoring:
    """Channels going back into ``Histories`` from a snapshot. One event published to
    several channels was one shared ``Item`` when live; the snapshot holds it once per
    channel, so equal events (and equal payload JSON) are shared again here."""

    def __init__(self, histories: Histories) -> None:
        self.histories = histories
        self.items: dict[tuple[str, str, bytes | None], Item] = {}
        self.payloads: dict[bytes, Payload] = {}
        self.rows: list[ChannelHistory] = []  # every channel restored, in row order
        self._order: list[int] | None = None

    def channel(self, row: list[Any]) -> None:
        # ~500,000 calls when a large store restarts: kept to plain local operations
        name, seq, history = row
        histories = self.histories
        key = key_of(name)
        channel = histories.channels.get(key)
        if channel is None:
            channel = histories.channels[key] = ChannelHistory(key)
        self.rows.append(channel)
        channel.seq = seq
        if not history:
            return
        # a history is the channel's newest events, contiguous up to its seq: keep the
        # run that ends there (all of it, unless the snapshot says otherwise)
        kept = 0
        for event in reversed(history[-histories.history_limit :]):
            if event[0] != seq - kept:
                break
            kept += 1
        if not kept:
            return
        items = self.items
        payloads = self.payloads
        events: list[Item] = []
        for _, action, resource_id, payload in history[len(history) - kept :]:
            if isinstance(payload, dict):  # written before histories kept JSON
                payload = orjson.dumps(payload)
            found = items.get((action, resource_id, payload))
            if found is None:
                shared_payload = None
                if payload is not None:
                    shared_payload = payloads.get(payload)
                    if shared_payload is None:
                        shared_payload = payloads[payload] = Payload(None, payload)
                found = items[(action, resource_id, payload)] = (
                    shared(action),
                    resource_id,
                    shared_payload,
                )
            events.append(found)
        channel.events = events
        channel.queued = len(events)
        histories._eviction.extend([channel] * len(events))

    def order(self, order: list[int]) -> None:
        """The export's eviction order (a snapshot without one keeps the channels'
        order, as written before it was kept)."""
        self._order = order

    def done(self) -> None:
        self.items.clear()
        self.payloads.clear()
        histories = self.histories
        order = self._order
        if order is not None:
            rows = self.rows
            held = sum(len(channel.events) for channel in rows)
            try:
                queue = deque([rows[row] for row in order])
            except (IndexError, TypeError):
                queue = None
            # the order must name each held event once: otherwise keep the channels'
            if queue is not None and len(queue) == held and self._counts_match(queue):
                histories._eviction = queue
        self.rows = []
        histories._evict()

    def _counts_match(self, queue: deque[ChannelHistory]) -> bool:
        channels = {id(channel): channel for channel in self.rows}
        counts = Counter(map(id, queue))
        return all(len(channels[key].events) == count for key, count in counts.items())
