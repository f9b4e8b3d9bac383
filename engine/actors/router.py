"""ChannelRouter: subscriptions, per-channel ``seq`` and history, hand-off to sessions.

The router is driven synchronously by the commit path: the publications of each
committed mutation are handed over as one batch, in log order, right where the
mutation is applied. That makes the router's state (every channel's ``seq`` and history)
consistent with the engine state at every point between two applied facts, which is
what a snapshot needs, and gives every channel its events in commit order. A subscribe
with ``since`` is also synchronous, hence atomic with respect to publishing: the replay
and the live events that follow have no gap and no duplicate. No call here ever waits.

Fan-out hands over each event once with the list of channels that carry it
(``Publication``), and every one of those channels keeps that one shared event
(``Item``: action, resource id, payload) in its history: a history holds no per-channel
event object, and the ``seq`` of its events follows from their position (a history is
always the channel's newest events, contiguous, ending at its ``seq``). A live event is
encoded at most once per encoding (JSON, msgpack) and channel, whatever the number of
sessions subscribed to it, and the shared resource inside it once per batch; histories
keep only the resource's JSON (``Payload.compact``), and a replay builds its frames
again. Pushing to a session never waits: a session whose bounded queue is full is
marked for closing (4008) by the session itself, so one slow consumer never slows the
router, the chat actors or the other sessions.

Memory: each channel keeps its last ``history_limit`` events; across channels at most
``total_history_limit`` events are kept, the oldest dropped first, whatever their
channel (its ``seq`` goes on; a client asking for a dropped range is told
``resumed: false``). The eviction queue holds one reference to the channel per event
kept, 8 bytes, where a per-channel LRU cost ~60 bytes per channel and a reordering on
every publish.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import orjson

from engine.channels import ChannelKey, key_of, name_of
from engine.fanout import Payload, Publication
from engine.model import shared

JSON = "json"
MSGPACK = "msgpack"


class Subscriber(Protocol):
    encoding: str

    def push(self, item: bytes) -> None: ...


# One event as every channel that carries it holds it: (action, resource_id, payload),
# shared by those channels; its channel and seq are the holder's.
Item = tuple[str, str, Payload | None]


def encode_event(channel: str, seq: int, item: Item, encoding: str) -> bytes:
    """The frame of ``item`` as event ``seq`` of ``channel`` (its name)."""
    action, resource_id, payload = item
    if encoding == JSON:
        # Channel names and ids are plain ASCII (validated), so they need no escaping:
        # only the shared resource goes through orjson, once per batch.
        head = b'{"channel":"%s","action":"%s","resource_id":"%s","seq":%d' % (
            channel.encode(),
            action.encode(),
            resource_id.encode(),
            seq,
        )
        if payload is None:
            return head + b"}"
        return head + b',"resource":' + payload.as_json() + b"}"
    parts = [
        b"\x85" if payload is not None else b"\x84",  # fixmap of 5 (or 4) entries
        msgpack.packb("channel"),
        msgpack.packb(channel),
        msgpack.packb("action"),
        msgpack.packb(action),
        msgpack.packb("resource_id"),
        msgpack.packb(resource_id),
        msgpack.packb("seq"),
        msgpack.packb(seq),
    ]
    if payload is not None:
        parts += [msgpack.packb("resource"), payload.as_msgpack()]
    return b"".join(parts)


_NO_SUBSCRIBERS: frozenset[Any] = frozenset()
_NO_EVENTS: tuple[()] = ()


class _Channel:
    __slots__ = ("key", "seq", "history", "subscribers", "queued")

    # A store with 100,000 chats has ~600,000 channels, most with a handful of events
    # and no subscriber: a list (not a 64-slot deque block) and a shared empty set
    # until the first subscribe keep that ~900 B a channel cheaper (measured with
    # tracemalloc on a recovered store).
    def __init__(self, key: ChannelKey) -> None:
        self.key = key  # channels.key_of(its name)
        self.seq = 0
        # its newest events, the last one being event ``seq``. No events: the shared
        # empty tuple; then a list made for its first event (an exact one-slot list,
        # where an append to an empty list reserves four)
        self.history: list[Item] | tuple[()] = _NO_EVENTS
        self.subscribers: set[Subscriber] | frozenset[Subscriber] = _NO_SUBSCRIBERS
        # this channel's entries in the router's eviction queue: one per event published
        # since, the newest ``len(history)`` of them still held
        self.queued = 0

    @property
    def name(self) -> str:
        return name_of(self.key)

    def held(self) -> list[tuple[int, Item]]:
        """The history with each event's seq."""
        first = self.seq - len(self.history) + 1
        return list(enumerate(self.history, first))


@dataclass(slots=True)
class Subscribed:
    head: int
    resumed: bool
    epoch: str


@dataclass(slots=True)
class RouterStats:
    events_published: int = 0
    events_delivered: int = 0
    batches: int = 0
    subscriptions: int = 0
    history_events_dropped: int = 0


class ChannelRouter:
    def __init__(
        self,
        *,
        epoch: str,
        history_limit: int = 1000,
        total_history_limit: int = 500_000,
    ) -> None:
        self.epoch = epoch
        self.history_limit = history_limit
        self.total_history_limit = total_history_limit
        self.stats = RouterStats()
        self._channels: dict[ChannelKey, _Channel] = {}
        # one entry per event published (or restored), oldest first: its channel
        self._eviction: deque[_Channel] = deque()
        self._stale = 0  # entries whose event a channel's own limit already dropped

    def publish(self, publications: list[Publication]) -> None:
        """Hand over the events of one committed mutation, as one batch."""
        if publications:
            self._publish(publications)

    def subscribe(
        self,
        session: Subscriber,
        channel: str,
        *,
        since: int | None,
        epoch: str | None,
        answer: Any,
    ) -> Subscribed:
        """Subscribe and replay atomically. ``answer(subscribed)`` renders the
        ``subscribed`` frame, which is queued before the replayed events."""
        return self._subscribe(session, key_of(channel), since, epoch, answer)

    def unsubscribe(self, session: Subscriber, channel: str) -> bool:
        key = key_of(channel)
        found = self._channels.get(key)
        if found is None or session not in found.subscribers:
            return False
        found.subscribers.discard(session)  # type: ignore[union-attr]  # it is in: a set
        self.stats.subscriptions -= 1
        if not found.subscribers:
            found.subscribers = _NO_SUBSCRIBERS
            if not found.seq:
                # Nothing was ever published on it: a subscribe made it, and nothing
                # would be lost by making it again. Without this, subscribing to random
                # chat ids and leaving would grow the router without bound. A channel
                # that has a seq stays (even with its history evicted), so its numbering
                # never starts over.
                del self._channels[key]
        return True

    def drop(self, session: Subscriber, channels: Iterable[str]) -> None:
        for channel in list(channels):
            self.unsubscribe(session, channel)

    def export(self) -> dict[str, Any]:
        """Every channel's ``seq`` and history, for a snapshot."""
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
                for channel in self._channels.values()
                if channel.seq
            ],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Load ``export``'s output (before any subscriber exists)."""
        restoring = self.restoring()
        for row in data["channels"]:
            restoring.channel(row)
        restoring.done()

    def restoring(self) -> Restoring:
        """Load ``export``'s channels one at a time (``persistence.snapshot`` streams
        them out of a snapshot), then call ``done``."""
        return Restoring(self)

    def empty_copy(self) -> ChannelRouter:
        return ChannelRouter(
            epoch=self.epoch,
            history_limit=self.history_limit,
            total_history_limit=self.total_history_limit,
        )

    def take_over(self, other: ChannelRouter) -> None:
        """Become ``other`` (restored aside, so a bad snapshot leaves this one empty)."""
        self.stats = other.stats
        self._channels = other._channels
        self._eviction = other._eviction
        self._stale = other._stale

    # -- internals -----------------------------------------------------------
    def _channel(self, key: ChannelKey) -> _Channel:
        found = self._channels.get(key)
        if found is None:
            found = self._channels[key] = _Channel(key)
        return found

    def _publish(self, publications: list[Publication]) -> None:
        # The hot loop of every mutation (~50 channel events for a join into a chat
        # with ten operators): lookups hoisted, the channel lookup inlined, nothing
        # allocated per channel but its history slot and eviction entry.
        stats = self.stats
        stats.batches += 1
        queue = self._eviction.append
        found = self._channels
        limit = self.history_limit
        published = 0
        for publication in publications:
            item: Item = (publication.action, publication.resource_id, publication.payload)
            keys = publication.channels
            published += len(keys)
            for key in keys:
                channel = found.get(key)
                if channel is None:
                    channel = found[key] = _Channel(key)
                channel.seq += 1
                history = channel.history
                if not history:
                    channel.history = [item]
                else:
                    if len(history) >= limit:
                        del history[0]  # its eviction entry stays, as a stale one
                        self._stale += 1
                    history.append(item)
                channel.queued += 1
                queue(channel)
                if channel.subscribers:
                    self._push_live(channel, item)
        stats.events_published += published
        compacted = None  # consecutive publications often share one payload
        for publication in publications:
            payload = publication.payload
            if payload is not None and payload is not compacted:
                payload.compact()
                compacted = payload
        self._evict()

    def _push_live(self, channel: _Channel, item: Item) -> None:
        frames: dict[str, bytes] = {}
        name = channel.name
        seq = channel.seq
        for session in channel.subscribers:
            encoding = session.encoding
            frame = frames.get(encoding)
            if frame is None:
                frame = frames[encoding] = encode_event(name, seq, item, encoding)
            session.push(frame)
        self.stats.events_delivered += len(channel.subscribers)

    def _evict(self) -> None:
        """Forget the oldest held events beyond ``total_history_limit``.

        The queue holds a channel's entries oldest first; those of events its own
        ``history_limit`` already pushed out are *stale*: they are a channel's first
        ``queued - len(history)`` entries. Stale entries are skipped when met, and the
        queue is compacted once they are half of it, so it stays within twice the
        events held."""
        queue = self._eviction
        while len(queue) - self._stale > self.total_history_limit:
            channel = queue.popleft()
            if channel.queued > len(channel.history):
                self._stale -= 1
            else:
                history = channel.history
                if len(history) == 1:
                    channel.history = _NO_EVENTS
                else:
                    del history[0]  # type: ignore[union-attr]  # two or more: a list
                self.stats.history_events_dropped += 1
            channel.queued -= 1
        if self._stale > len(queue) // 2:
            kept: deque[_Channel] = deque()
            for channel in queue:
                if channel.queued > len(channel.history):
                    channel.queued -= 1
                else:
                    kept.append(channel)
            self._eviction = kept
            self._stale = 0

    def _subscribe(
        self,
        session: Subscriber,
        key: ChannelKey,
        since: int | None,
        epoch: str | None,
        answer: Any,
    ) -> Subscribed:
        channel = self._channel(key)
        replay: list[Item] = []
        resumed = False
        if (
            since is not None
            and (epoch is None or epoch == self.epoch)
            and 0 <= since <= channel.seq
        ):
            history = channel.history
            first_held = channel.seq - len(history) + 1
            if since + 1 >= first_held:
                resumed = True
                replay = list(history[since + 1 - first_held :])
        if session not in channel.subscribers:
            if not channel.subscribers:
                channel.subscribers = set()
            channel.subscribers.add(session)  # type: ignore[union-attr]
            self.stats.subscriptions += 1
        subscribed = Subscribed(channel.seq, resumed, self.epoch)
        session.push(answer(subscribed))
        name = channel.name
        encoding = session.encoding
        for seq, item in enumerate(replay, channel.seq - len(replay) + 1):
            session.push(encode_event(name, seq, item, encoding))
        self.stats.events_delivered += len(replay)
        return subscribed


class Restoring:
    """Channels going back into a router from a snapshot. One event published to
    several channels was one shared ``Item`` when live; the snapshot holds it once per
    channel, so equal events (and equal payload JSON) are shared again here."""

    def __init__(self, router: ChannelRouter) -> None:
        self.router = router
        self.items: dict[tuple[str, str, bytes | None], Item] = {}
        self.payloads: dict[bytes, Payload] = {}

    def channel(self, row: list[Any]) -> None:
        # ~500,000 calls when a large store restarts: kept to plain local operations
        name, seq, history = row
        router = self.router
        key = key_of(name)
        channel = router._channels.get(key)
        if channel is None:
            channel = router._channels[key] = _Channel(key)
        channel.seq = seq
        if not history:
            return
        # a history is the channel's newest events, contiguous up to its seq: keep the
        # run that ends there (all of it, unless the snapshot says otherwise)
        kept = 0
        for event in reversed(history[-router.history_limit :]):
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
        channel.history = events
        channel.queued = len(events)
        router._eviction.extend([channel] * len(events))

    def done(self) -> None:
        self.items.clear()
        self.payloads.clear()
        self.router._evict()
