"""ChannelRouter: subscriptions, per-channel ``seq`` and history, hand-off to sessions.

One task with a bounded mailbox. Chat actors hand it the publications of one committed
mutation as one batch, in commit order; subscriptions go through the same mailbox, so a
subscribe with ``since`` is atomic with respect to publishing: the replay and the live
events that follow have no gap and no duplicate.

Every event is encoded at most once per encoding (JSON, msgpack), whatever the number
of sessions subscribed to its channel, and the shared resource inside it once per
batch. Pushing to a session never waits: a session whose bounded queue is full is
marked for closing (4008) by the session itself, so one slow consumer never slows the
router, the chat actors or the other sessions.

Memory: each channel keeps its last ``history_limit`` events; across channels at most
``total_history_limit`` events are kept, the histories of the channels published to
least recently being dropped first (their ``seq`` goes on; a client asking for a
dropped range is told ``resumed: false``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import orjson
import trio

from engine.fanout import Payload, Publication

JSON = "json"
MSGPACK = "msgpack"


class Subscriber(Protocol):
    encoding: str

    def push(self, item: bytes) -> None: ...


class Event:
    """One event of one channel, with its encodings made on first need."""

    __slots__ = ("channel", "seq", "action", "resource_id", "payload", "_json", "_msgpack")

    def __init__(
        self, channel: str, seq: int, action: str, resource_id: str, payload: Payload | None
    ) -> None:
        self.channel = channel
        self.seq = seq
        self.action = action
        self.resource_id = resource_id
        self.payload = payload
        self._json: bytes | None = None
        self._msgpack: bytes | None = None

    def encoded(self, encoding: str) -> bytes:
        if encoding == JSON:
            if self._json is None:
                self._json = self._encode_json()
            return self._json
        if self._msgpack is None:
            self._msgpack = self._encode_msgpack()
        return self._msgpack

    def as_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "channel": self.channel,
            "action": self.action,
            "resource_id": self.resource_id,
            "seq": self.seq,
        }
        if self.payload is not None:
            event["resource"] = self.payload.data
        return event

    def _encode_json(self) -> bytes:
        # Channel names and ids are plain ASCII (validated), so they need no escaping:
        # only the shared resource goes through orjson, once per batch.
        head = b'{"channel":"%s","action":"%s","resource_id":"%s","seq":%d' % (
            self.channel.encode(),
            self.action.encode(),
            self.resource_id.encode(),
            self.seq,
        )
        payload = self.payload
        if payload is None:
            return head + b"}"
        if payload.json is None:
            payload.json = orjson.dumps(payload.data)
        return head + b',"resource":' + payload.json + b"}"

    def _encode_msgpack(self) -> bytes:
        payload = self.payload
        parts = [
            b"\x85" if payload is not None else b"\x84",  # fixmap of 5 (or 4) entries
            msgpack.packb("channel"),
            msgpack.packb(self.channel),
            msgpack.packb("action"),
            msgpack.packb(self.action),
            msgpack.packb("resource_id"),
            msgpack.packb(self.resource_id),
            msgpack.packb("seq"),
            msgpack.packb(self.seq),
        ]
        if payload is not None:
            if payload.msgpack is None:
                payload.msgpack = msgpack.packb(payload.data)
            parts += [msgpack.packb("resource"), payload.msgpack]
        return b"".join(parts)


class _Channel:
    __slots__ = ("name", "seq", "history", "subscribers")

    def __init__(self, name: str, history_limit: int) -> None:
        self.name = name
        self.seq = 0
        self.history: deque[Event] = deque(maxlen=history_limit)
        self.subscribers: set[Subscriber] = set()


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
    histories_dropped: int = 0


class ChannelRouter:
    def __init__(
        self,
        *,
        epoch: str,
        history_limit: int = 1000,
        total_history_limit: int = 500_000,
        mailbox_capacity: int = 4096,
    ) -> None:
        self.epoch = epoch
        self.history_limit = history_limit
        self.total_history_limit = total_history_limit
        self.stats = RouterStats()
        self._channels: dict[str, _Channel] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()  # channels with history, LRU
        self._history_total = 0
        self._send, self._receive = trio.open_memory_channel[Any](mailbox_capacity)

    # -- the actor ----------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for operation in self._receive:
            operation()

    async def publish(self, publications: list[Publication]) -> None:
        """Hand over the events of one committed mutation, as one batch."""
        if publications:
            await self._send.send(lambda: self._publish(publications))

    async def subscribe(
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
        done = trio.Event()
        result: list[Subscribed] = []

        def operation() -> None:
            result.append(self._subscribe(session, channel, since, epoch, answer))
            done.set()

        await self._send.send(operation)
        await done.wait()
        return result[0]

    def unsubscribe(self, session: Subscriber, channel: str) -> bool:
        found = self._channels.get(channel)
        if found is None or session not in found.subscribers:
            return False
        found.subscribers.discard(session)
        self.stats.subscriptions -= 1
        return True

    def drop(self, session: Subscriber, channels: Iterable[str]) -> None:
        for channel in list(channels):
            self.unsubscribe(session, channel)

    def head(self, channel: str) -> int:
        found = self._channels.get(channel)
        return 0 if found is None else found.seq

    # -- inside the actor -----------------------------------------------------------
    def _channel(self, name: str) -> _Channel:
        found = self._channels.get(name)
        if found is None:
            found = self._channels[name] = _Channel(name, self.history_limit)
        return found

    def _publish(self, publications: list[Publication]) -> None:
        stats = self.stats
        stats.batches += 1
        recent = self._recent
        for publication in publications:
            channel = self._channel(publication.channel)
            channel.seq += 1
            event = Event(
                publication.channel,
                channel.seq,
                publication.action,
                publication.resource_id,
                publication.payload,
            )
            history = channel.history
            if len(history) == history.maxlen:
                self._history_total -= 1
            history.append(event)
            self._history_total += 1
            recent[channel.name] = None
            recent.move_to_end(channel.name)
            stats.events_published += 1
            for session in channel.subscribers:
                session.push(event.encoded(session.encoding))
            stats.events_delivered += len(channel.subscribers)
        while self._history_total > self.total_history_limit and recent:
            name, _ = recent.popitem(last=False)
            dropped = self._channels[name].history
            self._history_total -= len(dropped)
            dropped.clear()
            stats.histories_dropped += 1

    def _subscribe(
        self, session: Subscriber, name: str, since: int | None, epoch: str | None, answer: Any
    ) -> Subscribed:
        channel = self._channel(name)
        replay: list[Event] = []
        resumed = False
        if (
            since is not None
            and (epoch is None or epoch == self.epoch)
            and 0 <= since <= channel.seq
        ):
            history = channel.history
            first_held = history[0].seq if history else channel.seq + 1
            if since + 1 >= first_held:
                resumed = True
                replay = [event for event in history if event.seq > since]
        if session not in channel.subscribers:
            channel.subscribers.add(session)
            self.stats.subscriptions += 1
        subscribed = Subscribed(channel.seq, resumed, self.epoch)
        session.push(answer(subscribed))
        for event in replay:
            session.push(event.encoded(session.encoding))
        self.stats.events_delivered += len(replay)
        return subscribed
