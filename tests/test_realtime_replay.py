"""Replays pulled from the histories (no trio): a subscribe with ``since`` owes the
session the events after it, which its writer pulls a bounded batch at a time; the
channel goes live when the cursor reaches the head, so live events published during
the replay come once, in order, after the replayed ones; a history that drops an
event still owed says the session is lost."""

from __future__ import annotations

from typing import Any

import orjson

from engine.channels import key_of
from engine.fanout import Payload, Publication
from engine.realtime.core import Realtime, Replays
from engine.realtime.protocol import JSON

ROOM = "/api/v5/orgs/o1/rooms/r1/chats"
CHANNELS = [f"{ROOM}/c{number}/messages" for number in range(3)]


class Session:
    """What the hub and the core see of a session: its queue is a list."""

    def __init__(self) -> None:
        self.encoding = JSON
        self.replays = Replays()
        self.items: list[bytes] = []

    def push(self, item: bytes) -> None:
        self.items.append(item)

    def events(self) -> list[tuple[str, int, str]]:
        decoded = [orjson.loads(item) for item in self.items]
        return [(e["channel"], e["seq"], e["resource_id"]) for e in decoded]


def post(realtime: Realtime, channel: str, text: str) -> None:
    payload = Payload({"id": text, "message": text})
    realtime.publish([Publication([key_of(channel)], "added", text, payload)])


def fill(realtime: Realtime, channel: str, count: int, start: int = 1) -> None:
    for number in range(start, start + count):
        post(realtime, channel, f"{channel[-11:-9]}-{number}")


def pull_all(realtime: Realtime, session: Session, items: int = 3) -> list[Any]:
    """Pull to the end, ``items`` at a time (bounded: one pull per owed event)."""
    pulls = []
    for _ in range(10_000):
        if not session.replays:
            break
        pulled = realtime.pull(session, items, 1 << 20)
        assert not pulled.lost
        assert 1 <= len(pulled.frames) <= items
        session.items.extend(pulled.frames)
        pulls.append(len(pulled.frames))
    assert not session.replays
    return pulls


def test_a_replay_is_pulled_in_bounded_batches_and_then_goes_live() -> None:
    realtime = Realtime(epoch="e1")
    channel = CHANNELS[0]
    fill(realtime, channel, 10)
    session = Session()
    answer = realtime.subscribe(session, channel, since=2, epoch="e1")
    assert (answer.head, answer.resumed, answer.owed) == (10, True, 8)
    assert session.items == []  # nothing is queued by the subscribe itself
    assert key_of(channel) not in realtime.hub.subscribers  # live only at the head
    assert pull_all(realtime, session) == [3, 3, 2]
    assert [seq for _, seq, _ in session.events()] == list(range(3, 11))
    post(realtime, channel, "c0-11")
    assert session.events()[-1] == (channel, 11, "c0-11")  # now pushed live
    assert realtime.stats.events_delivered == 9


def test_live_events_published_during_a_replay_come_once_in_order() -> None:
    realtime = Realtime(epoch="e1")
    channel = CHANNELS[0]
    fill(realtime, channel, 6)
    session = Session()
    realtime.subscribe(session, channel, since=0, epoch=None)
    for round_ in range(5):  # publish between every pull
        pulled = realtime.pull(session, 2, 1 << 20)
        session.items.extend(pulled.frames)
        fill(realtime, channel, 3, start=7 + 3 * round_)
    pull_all(realtime, session, items=2)
    fill(realtime, channel, 2, start=22)
    events = session.events()
    assert [seq for _, seq, _ in events] == list(range(1, 24))
    assert [text for _, _, text in events] == [f"c0-{n}" for n in range(1, 24)]


def test_several_channels_replay_one_after_the_other_each_in_order() -> None:
    realtime = Realtime(epoch="e1")
    for channel in CHANNELS:
        fill(realtime, channel, 5)
    session = Session()
    for channel in CHANNELS:
        realtime.subscribe(session, channel, since=1, epoch="e1")
    assert len(session.replays) == 3
    # a channel that already caught up gets live events while the others replay
    session.items.extend(realtime.pull(session, 4, 1 << 20).frames)
    post(realtime, CHANNELS[0], "c0-6")
    post(realtime, CHANNELS[2], "c2-6")
    pull_all(realtime, session, items=3)
    events = session.events()
    for channel, last in zip(CHANNELS, (6, 5, 6), strict=True):
        seqs = [seq for name, seq, _ in events if name == channel]
        assert seqs == list(range(2, last + 1))
    assert events[4] == (CHANNELS[0], 6, "c0-6")  # live, before the other replays ended


def test_a_pull_stops_at_its_byte_bound() -> None:
    realtime = Realtime(epoch="e1")
    fill(realtime, CHANNELS[0], 50)
    session = Session()
    realtime.subscribe(session, CHANNELS[0], since=0, epoch=None)
    size = len(realtime.pull(session, 1, 1 << 20).frames[0])
    pulled = realtime.pull(session, 1000, 3 * size)
    assert len(pulled.frames) in (3, 4)  # past the bound by one frame at most
    assert sum(map(len, pulled.frames)) < 4 * size + 10


def test_a_history_trimmed_past_a_cursor_loses_the_session() -> None:
    """The channel ran more than its history ahead of the replay: the session is told
    it is lost (the gateway closes it; its resume answers resumed: false)."""
    realtime = Realtime(epoch="e1", history_limit=10)
    channel = CHANNELS[0]
    fill(realtime, channel, 10)
    session = Session()
    realtime.subscribe(session, channel, since=0, epoch=None)
    realtime.subscribe(session, CHANNELS[1], since=None, epoch=None)
    session.items.extend(realtime.pull(session, 2, 1 << 20).frames)
    fill(realtime, channel, 5, start=11)  # the history now holds 6..15; 3 is owed
    pulled = realtime.pull(session, 100, 1 << 20)
    assert pulled.lost and pulled.frames == [] and not session.replays
    assert key_of(channel) not in realtime.hub.subscribers
    post(realtime, channel, "c0-16")
    assert [seq for _, seq, _ in session.events()] == [1, 2]  # nothing after the loss
    answer = realtime.subscribe(session, channel, since=2, epoch="e1")
    assert (answer.head, answer.resumed) == (16, False)


def test_the_global_history_cap_trimming_a_replay_loses_the_session() -> None:
    realtime = Realtime(epoch="e1", total_history_limit=12)
    fill(realtime, CHANNELS[0], 6)
    fill(realtime, CHANNELS[1], 6)
    session = Session()
    realtime.subscribe(session, CHANNELS[0], since=0, epoch=None)
    session.items.extend(realtime.pull(session, 1, 1 << 20).frames)
    fill(realtime, CHANNELS[2], 3)  # evicts CHANNELS[0]'s events 1..3
    assert realtime.pull(session, 100, 1 << 20).lost


def test_unsubscribing_or_subscribing_again_during_a_replay() -> None:
    realtime = Realtime(epoch="e1")
    fill(realtime, CHANNELS[0], 8)
    fill(realtime, CHANNELS[1], 3)
    session = Session()
    realtime.subscribe(session, CHANNELS[0], since=0, epoch=None)
    realtime.subscribe(session, CHANNELS[1], since=0, epoch=None)
    session.items.extend(realtime.pull(session, 2, 1 << 20).frames)
    assert realtime.unsubscribe(session, CHANNELS[1])  # still replaying: it stops
    # again from 5: the rest of the first replay is dropped, the new one owed
    realtime.subscribe(session, CHANNELS[0], since=5, epoch=None)
    pull_all(realtime, session)
    post(realtime, CHANNELS[1], "c1-4")
    assert session.events() == [
        (CHANNELS[0], 1, "c0-1"),
        (CHANNELS[0], 2, "c0-2"),
        (CHANNELS[0], 6, "c0-6"),
        (CHANNELS[0], 7, "c0-7"),
        (CHANNELS[0], 8, "c0-8"),
    ]
    # up to date already: live at once, nothing owed
    other = Session()
    answer = realtime.subscribe(other, CHANNELS[0], since=8, epoch="e1")
    assert (answer.resumed, answer.owed, len(other.replays)) == (True, 0, 0)
    post(realtime, CHANNELS[0], "c0-9")
    assert other.events() == [(CHANNELS[0], 9, "c0-9")]
    # a session that ends mid-replay leaves nothing behind
    realtime.subscribe(other, CHANNELS[1], since=0, epoch=None)
    realtime.drop(other, [CHANNELS[0], CHANNELS[1]])
    assert not other.replays
    assert other not in realtime.hub.subscribers[key_of(CHANNELS[0])]
