"""The hub: which sessions are subscribed to which channel, and handing frames to them.

Pushing to a session never waits: a session whose bounded queue is full is marked for
closing (4008) by the session itself, so one slow consumer never slows the commit path
or the other sessions. A live event is encoded at most once per encoding and channel,
whatever the number of sessions subscribed to it.

The hub holds a channel only while it has subscribers: the last one leaving forgets it,
so subscribing to random channels and leaving grows nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from engine.channels import ChannelKey, name_of
from engine.fanout import Publication
from engine.realtime import protocol
from engine.realtime.history import RealtimeStats
from engine.realtime.protocol import Item


class Subscriber(Protocol):
    encoding: str

    def push(self, item: bytes) -> None: ...


class Hub:
    def __init__(self, stats: RealtimeStats) -> None:
        self.stats = stats
        self.subscribers: dict[ChannelKey, set[Subscriber]] = {}

    def add(self, session: Subscriber, key: ChannelKey) -> None:
        found = self.subscribers.get(key)
        if found is None:
            found = self.subscribers[key] = set()
        if session not in found:
            found.add(session)
            self.stats.subscriptions += 1

    def remove(self, session: Subscriber, key: ChannelKey) -> bool:
        found = self.subscribers.get(key)
        if found is None or session not in found:
            return False
        found.discard(session)
        self.stats.subscriptions -= 1
        if not found:
            del self.subscribers[key]
        return True

    def remove_all(self, session: Subscriber, keys: Iterable[ChannelKey]) -> None:
        for key in keys:
            self.remove(session, key)

    def watched(self, publications: list[Publication]) -> list[tuple[ChannelKey, Item]]:
        """The events of a batch that some session is subscribed to, in order."""
        subscribers = self.subscribers
        if not subscribers:
            return []
        return [
            (key, (publication.action, publication.resource_id, publication.payload))
            for publication in publications
            for key in publication.channels
            if key in subscribers
        ]

    def deliver(self, key: ChannelKey, seq: int, item: Item) -> None:
        """Push event ``seq`` of channel ``key`` to every session subscribed to it."""
        sessions = self.subscribers.get(key)
        if not sessions:
            return
        frames: dict[str, bytes] = {}
        name = name_of(key)
        for session in sessions:
            encoding = session.encoding
            frame = frames.get(encoding)
            if frame is None:
                frame = frames[encoding] = protocol.event(name, seq, item, encoding)
            session.push(frame)
        self.stats.events_delivered += len(sessions)
