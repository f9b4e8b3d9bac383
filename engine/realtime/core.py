"""The realtime core: channel histories and the hub, driven by the commit path.

The publications of each committed mutation are handed over as one batch, in log
order, right where the mutation is applied. That keeps every channel's ``seq`` and
history consistent with the engine state at every point between two applied records,
which is what a snapshot needs, and gives every channel its events in commit order.

A subscribe is synchronous too, hence atomic with respect to publishing. A subscribe
with nothing to replay joins the hub at once. One with a replay does not: the session
gets a replay cursor for the channel (the next seq it is owed) and its writer pulls the
replayed events from the channel's history as its queue drains (``pull``). The events
are the history's own, so a replay of any length costs the session no memory beyond
the frames it is about to write. Every published event is in its channel's history, so
live events of a channel still replaying are simply not pushed to the session: it reads
them from the history too, and joins the hub in the same call that reads the head.
Nothing can be published in between, so the replay and the live events have no gap and
no duplicate. A history that drops a cursor's next event before it is read (its
channel ran more than its history limit ahead of the replay) makes ``pull`` report the
session lost: it must resume. Nothing here waits or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from engine.channels import ChannelKey, key_of, name_of
from engine.fanout import Publication
from engine.realtime import protocol
from engine.realtime.history import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_TOTAL_HISTORY_LIMIT,
    Histories,
    RealtimeStats,
)
from engine.realtime.hub import Hub
from engine.realtime.hub import Subscriber as HubSubscriber


@dataclass(slots=True)
class Cursor:
    """A replay in progress: the channel's name, as its events carry it, and the seq
    of the next event owed."""

    channel: str
    next_seq: int


class Replays:
    """A session's replays in progress, by channel, oldest subscribe first."""

    __slots__ = ("cursors",)

    def __init__(self) -> None:
        self.cursors: dict[ChannelKey, Cursor] = {}

    def __bool__(self) -> bool:
        return bool(self.cursors)

    def __len__(self) -> int:
        return len(self.cursors)


class Subscriber(HubSubscriber, Protocol):
    replays: Replays


@dataclass(slots=True)
class Subscribed:
    """The answer to a subscribe: the channel's ``head`` seq, whether ``since`` could
    be resumed, the epoch, and how many events the session is owed before the live
    ones (its writer pulls them: ``Realtime.pull``)."""

    head: int
    resumed: bool
    epoch: str
    owed: int


@dataclass(slots=True)
class Pulled:
    """Replayed event frames, in order; ``lost``: a history dropped an event a cursor
    still owed (the session must resume; its replays are over)."""

    frames: list[bytes]
    lost: bool = False


class Realtime:
    def __init__(
        self,
        *,
        epoch: str,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        total_history_limit: int = DEFAULT_TOTAL_HISTORY_LIMIT,
    ) -> None:
        self.stats = RealtimeStats()
        self.histories = Histories(
            epoch=epoch,
            history_limit=history_limit,
            total_history_limit=total_history_limit,
            stats=self.stats,
        )
        self.hub = Hub(self.stats)

    @property
    def epoch(self) -> str:
        return self.histories.epoch

    def publish(self, publications: list[Publication]) -> None:
        """Record the events of one committed mutation and push them to subscribers."""
        if not publications:
            return
        # Live frames first, while each payload still holds its data (recording
        # compacts it to JSON): the seq each event gets is its channel's seq before the
        # batch, counted on. Nothing can observe the moment in between.
        heads: dict[ChannelKey, int] = {}
        for key, item in self.hub.watched(publications):
            seq = (heads[key] if key in heads else self.histories.seq(key)) + 1
            heads[key] = seq
            self.hub.deliver(key, seq, item)
        self.histories.append(publications)

    def subscribe(
        self, session: Subscriber, channel: str, *, since: int | None, epoch: str | None
    ) -> Subscribed:
        """Subscribe ``session``: the answer to queue now, before anything is pulled.
        With events to replay, the session gets a cursor and joins the hub once
        ``pull`` reaches the head; without, it joins at once. A subscribe to a channel
        already followed or replaying starts over from ``since``."""
        key = key_of(channel)
        head, resumed = self.histories.resume(key, since, epoch)
        cursors = session.replays.cursors
        cursors.pop(key, None)
        if resumed and since is not None and since < head:
            self.hub.remove(session, key)  # live events now come from the history
            cursors[key] = Cursor(name_of(key), since + 1)
            return Subscribed(head, True, self.epoch, head - since)
        self.hub.add(session, key)
        return Subscribed(head, resumed, self.epoch, 0)

    def pull(self, session: Subscriber, max_items: int, max_bytes: int) -> Pulled:
        """The next replayed event frames of ``session``, up to ``max_items`` frames and
        about ``max_bytes`` (past it by one frame at most; at least one frame while
        anything is owed). A channel whose cursor reaches its head joins the hub here,
        so its next event comes live."""
        cursors = session.replays.cursors
        encoding = session.encoding
        histories = self.histories
        frames: list[bytes] = []
        size = 0
        while cursors and len(frames) < max_items and size < max_bytes:
            key, cursor = next(iter(cursors.items()))
            first, events = histories.events_from(key, cursor.next_seq)
            index = cursor.next_seq - first
            if index < 0:  # dropped before it was read
                cursors.clear()
                self.stats.events_delivered += len(frames)
                return Pulled(frames, lost=True)
            held = len(events)
            name = cursor.channel
            while index < held and len(frames) < max_items and size < max_bytes:
                frame = protocol.event(name, cursor.next_seq, events[index], encoding)
                frames.append(frame)
                size += len(frame)
                index += 1
                cursor.next_seq += 1
            if index >= held:  # at the head: live from the next event on
                del cursors[key]
                self.hub.add(session, key)
        self.stats.events_delivered += len(frames)
        return Pulled(frames)

    def unsubscribe(self, session: Subscriber, channel: str) -> bool:
        key = key_of(channel)
        replaying = session.replays.cursors.pop(key, None) is not None
        return self.hub.remove(session, key) or replaying

    def drop(self, session: Subscriber, channels: Iterable[str]) -> None:
        session.replays.cursors.clear()
        self.hub.remove_all(session, [key_of(channel) for channel in channels])
