"""The realtime core on its own (no trio): what a replay sends equals what was sent
live, in both encodings, across a snapshot's export/restore, while histories keep only
JSON; the caps on histories; channel forgetting."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import orjson

from engine.channels import key_of, name_of
from engine.fanout import Payload, Publication
from engine.realtime import protocol
from engine.realtime.core import Realtime, Replays, Subscribed
from engine.realtime.protocol import JSON, MSGPACK

CHANNEL = "/api/v5/orgs/o1/rooms/r1/chats/c1/messages"
CHANNEL_KEY = key_of(CHANNEL)  # what fan-out publishes to
OTHER = "/api/v5/orgs/o1/rooms/r1/chats"


class Collector:
    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.items: list[bytes] = []
        self.replays = Replays()

    def push(self, item: bytes) -> None:
        self.items.append(item)


def decode(encoding: str, item: bytes) -> Any:
    return orjson.loads(item) if encoding == JSON else msgpack.unpackb(item)


def publish_three(realtime: Realtime) -> list[Payload]:
    payloads = []
    for number in range(3):
        payload = Payload({"id": f"m{number}", "message": f"héllo {number}", "n": [number]})
        payloads.append(payload)
        realtime.publish(
            [
                Publication([CHANNEL_KEY], "added", f"m{number}", payload),
                Publication([OTHER], "changed", "c1", payload),
            ]
        )
    return payloads


def subscribe(
    realtime: Realtime, session: Collector, channel: str, *, since: int | None, epoch: str | None
) -> Subscribed:
    """What the WebSocket gateway does: subscribe and queue the answer, then (its
    writer) pull the replay to the end."""
    answer = realtime.subscribe(session, channel, since=since, epoch=epoch)
    session.push(orjson.dumps({"type": "subscribed", "seq": answer.head}))
    for _ in range(answer.owed + 1):
        pulled = realtime.pull(session, 1000, 1 << 20)
        assert not pulled.lost
        session.items.extend(pulled.frames)
        if not session.replays:
            break
    assert not session.replays
    return answer


def test_replays_equal_live_frames_in_both_encodings_and_history_keeps_json_only() -> None:
    realtime = Realtime(epoch="e1")
    live = {encoding: Collector(encoding) for encoding in (JSON, MSGPACK)}
    for collector in live.values():
        subscribe(realtime, collector, CHANNEL, since=None, epoch=None)
    payloads = publish_three(realtime)
    assert all(payload.data is None and payload.json for payload in payloads)
    for encoding in (JSON, MSGPACK):
        late = Collector(encoding)
        subscribed = subscribe(realtime, late, CHANNEL, since=0, epoch="e1")
        assert (subscribed.head, subscribed.resumed) == (3, True)
        assert late.items[1:] == live[encoding].items[1:]  # byte for byte
        events = [decode(encoding, item) for item in late.items[1:]]
        assert [e["seq"] for e in events] == [1, 2, 3]
        assert events[2] == {
            "channel": CHANNEL,
            "action": "added",
            "resource_id": "m2",
            "seq": 3,
            "resource": {"id": "m2", "message": "héllo 2", "n": [2]},
        }


def test_export_and_restore_keep_seq_and_replays() -> None:
    realtime = Realtime(epoch="e1")
    publish_three(realtime)
    before = Collector(JSON)
    subscribe(realtime, before, OTHER, since=1, epoch=None)
    exported = msgpack.unpackb(
        msgpack.packb(realtime.histories.export())
    )  # as a snapshot stores it
    restored = Realtime(epoch="e1")
    restored.histories.restore(exported)
    after = Collector(JSON)
    subscribed = subscribe(restored, after, OTHER, since=1, epoch="e1")
    assert (subscribed.head, subscribed.resumed) == (3, True)
    assert after.items[1:] == before.items[1:]
    # the next event goes on from the restored seq
    restored.publish([Publication([OTHER], "removed", "c1", None)])
    assert orjson.loads(after.items[-1])["seq"] == 4


def test_snapshots_holding_payload_dicts_still_restore() -> None:
    """Snapshots written before histories kept JSON held each payload as a dict."""
    old = {"epoch": "e1", "channels": [[CHANNEL, 2, [[2, "added", "m1", {"id": "m1"}]]]]}
    realtime = Realtime(epoch="e1")
    realtime.histories.restore(old)
    late = Collector(MSGPACK)
    subscribe(realtime, late, CHANNEL, since=1, epoch=None)
    assert msgpack.unpackb(late.items[1])["resource"] == {"id": "m1"}


def resumes(realtime: Realtime, channel: str, since: int) -> list[int] | None:
    """The seqs a new subscriber with ``since`` is replayed, or None if not resumed."""
    collector = Collector(JSON)
    subscribed = subscribe(realtime, collector, channel, since=since, epoch=None)
    if not subscribed.resumed:
        return None
    return [orjson.loads(item)["seq"] for item in collector.items[1:]]


def test_the_total_history_cap_drops_the_oldest_events_first() -> None:
    realtime = Realtime(epoch="e1", history_limit=10, total_history_limit=5)
    for number in range(3):
        realtime.publish([Publication([OTHER], "changed", "c1", Payload({"n": number}))])
    for number in range(3):
        realtime.publish(
            [Publication([CHANNEL_KEY], "added", f"m{number}", Payload({"n": number}))]
        )
    assert resumes(realtime, OTHER, since=0) is None  # its first event is gone; seq goes on
    assert resumes(realtime, OTHER, since=1) == [2, 3]
    assert resumes(realtime, CHANNEL, since=0) == [1, 2, 3]
    assert realtime.stats.history_events_dropped == 1


def test_the_total_cap_counts_only_events_a_channel_still_holds() -> None:
    """Events a channel's own limit already dropped do not use up the total."""
    realtime = Realtime(epoch="e1", history_limit=2, total_history_limit=3)
    for number in range(5):
        realtime.publish(
            [Publication([CHANNEL_KEY], "added", f"m{number}", Payload({"n": number}))]
        )
    realtime.publish([Publication([OTHER], "changed", "c1", Payload({"n": 0}))])
    assert resumes(realtime, CHANNEL, since=3) == [4, 5]  # three events held: 4, 5 and 1
    assert resumes(realtime, OTHER, since=0) == [1]
    realtime.publish([Publication([OTHER], "changed", "c1", Payload({"n": 1}))])
    assert resumes(realtime, CHANNEL, since=3) is None  # now the oldest held, 4, went
    assert resumes(realtime, CHANNEL, since=4) == [5]
    assert resumes(realtime, OTHER, since=0) == [1, 2]


def test_a_restored_history_keeps_to_the_total_cap() -> None:
    realtime = Realtime(epoch="e1")
    publish_three(realtime)
    restored = Realtime(epoch="e1", total_history_limit=4)
    restored.histories.restore(realtime.histories.export())
    # published CHANNEL 1, OTHER 1, CHANNEL 2, OTHER 2, ...: the oldest two go
    assert resumes(restored, CHANNEL, since=0) is None
    assert resumes(restored, CHANNEL, since=1) == [2, 3]
    assert resumes(restored, OTHER, since=0) is None
    assert resumes(restored, OTHER, since=1) == [2, 3]


def test_the_history_caps_match_a_plain_model_under_random_traffic() -> None:
    """Per channel the newest ``history_limit`` events, and of those, across channels,
    the newest ``total_history_limit`` — whatever mix of hot and quiet channels."""
    rng = random.Random(7)
    names = [f"/api/v5/orgs/o1/rooms/r{number}/chats" for number in range(6)]
    weights = [50, 20, 10, 5, 1, 1]
    realtime = Realtime(epoch="e1", history_limit=7, total_history_limit=20)
    held: dict[str, list[tuple[int, int]]] = {name: [] for name in names}  # (order, seq)
    seqs = dict.fromkeys(names, 0)
    order = 0
    for _ in range(2_000):
        batch = rng.choices(names, weights, k=rng.randint(1, 4))
        for name in batch:
            seqs[name] += 1
            order += 1
            held[name] = [*held[name], (order, seqs[name])][-7:]
        realtime.publish([Publication([name], "changed", "c1", Payload({})) for name in batch])
        newest = sorted(event for events in held.values() for event in events)[-20:]
        for name in names:
            channel = realtime.histories.channels.get(name)
            actual = [seq for seq, _ in channel.held()] if channel else []
            assert actual == [seq for event in newest if event in held[name] for seq in event[1:]]


def test_a_restore_drops_the_same_events_as_the_node_it_came_from() -> None:
    """Past ``total_history_limit`` the oldest event goes first, whatever its channel: a
    history restored from an export (a snapshot, a replica's bootstrap) must keep that
    order, or the same records applied afterwards drop other events on each side."""
    rng = random.Random(11)
    names = [f"/api/v5/orgs/o1/rooms/r{number}/chats" for number in range(5)]
    live = Realtime(epoch="e1", history_limit=6, total_history_limit=15)
    copies: list[Realtime] = []
    for step in range(600):
        batch = rng.choices(names, [30, 10, 5, 1, 1], k=rng.randint(1, 3))
        publications = [Publication([key_of(n)], "changed", "c1", Payload({})) for n in batch]
        for realtime in (live, *copies):
            realtime.publish(publications)
        for copy in copies:  # equal after every batch (the restored events go first)
            assert copy.histories.export() == live.histories.export()
        if step % 150 == 75:  # a restore through the snapshot's encoding
            copy = Realtime(epoch="e1", history_limit=6, total_history_limit=15)
            copy.histories.restore(msgpack.unpackb(msgpack.packb(live.histories.export())))
            copies.append(copy)
    assert len(copies) == 4
    assert all(copy.stats.history_events_dropped > 0 for copy in copies)


def test_a_snapshot_without_an_eviction_order_still_restores() -> None:
    """Snapshots written before the order was kept: channel by channel, as then."""
    realtime = Realtime(epoch="e1")
    publish_three(realtime)
    exported = realtime.histories.export()
    del exported["order"]
    restored = Realtime(epoch="e1")
    restored.histories.restore(exported)
    assert resumes(restored, CHANNEL, since=0) == [1, 2, 3]
    assert resumes(restored, OTHER, since=0) == [1, 2, 3]


def test_channel_keys_give_back_the_exact_name() -> None:
    names = [
        CHANNEL,
        OTHER,
        "/api/v5/client/visitors/v1/chats/c1/participations",
        "/api/v5/orgs/o1/users/u1/current_chats/c1/presences",
        "/api/v5/orgs/o1/users/u1/current_chats",
        "messages",
        "/messages",
        "c1/messages",
        "//messages",
    ]
    for name in names:
        assert name_of(key_of(name)) == name
    assert key_of(CHANNEL) == ("/api/v5/orgs/o1/rooms/r1/chats", "c1", "messages")
    assert key_of(OTHER) == OTHER


def test_one_event_on_many_channels_is_held_once_and_shared_again_after_a_restore() -> None:
    """A join into a busy chat puts one event on dozens of channels: their histories
    hold that one event, not a copy each, and so do histories restored from a snapshot
    (the snapshot stores it once per channel)."""
    names = [f"/api/v5/orgs/o1/users/u{number}/chats" for number in range(5)]
    realtime = Realtime(epoch="e1")
    realtime.publish([Publication(list(names), "changed", "c1", Payload({"id": "c1", "n": 1}))])
    realtime.publish([Publication(names[:2], "added", "c2", Payload({"id": "c2"}))])
    for source in (realtime, restored_copy(realtime)):
        heads = [source.histories.channels[key_of(name)].events[0] for name in names]
        assert all(head is heads[0] for head in heads)
        assert (
            source.histories.channels[key_of(names[0])].events[1]
            is source.histories.channels[key_of(names[1])].events[1]
        )
        assert [resumes(source, name, since=0) for name in names] == [[1, 2]] * 2 + [[1]] * 3


def restored_copy(realtime: Realtime) -> Realtime:
    restored = Realtime(epoch=realtime.epoch)
    restored.histories.restore(msgpack.unpackb(msgpack.packb(realtime.histories.export())))
    return restored


def test_a_restore_keeps_only_the_contiguous_run_that_ends_at_the_channel_seq() -> None:
    """A history is the channel's newest events with no gap, which is what lets a
    replay number them from their position; a snapshot row that says otherwise (a gap,
    a last event behind the seq) keeps only what can be numbered truthfully."""
    rows = [
        [
            CHANNEL,
            5,
            [[2, "added", "m2", b"{}"], [4, "added", "m4", b"{}"], [5, "added", "m5", b"{}"]],
        ],
        [OTHER, 9, [[7, "changed", "c1", b"{}"], [8, "changed", "c1", b"{}"]]],
    ]
    realtime = Realtime(epoch="e1")
    realtime.histories.restore({"epoch": "e1", "channels": rows})
    assert resumes(realtime, CHANNEL, since=3) == [4, 5]
    assert resumes(realtime, CHANNEL, since=1) is None
    assert resumes(realtime, OTHER, since=9) == []  # up to date: nothing to replay
    assert resumes(realtime, OTHER, since=8) is None  # event 9 is not held


def test_subscription_churn_on_channels_without_events_leaves_nothing_behind() -> None:
    """Subscribing to random chats' channels and leaving (by unsubscribe, or by the
    session ending while subscribed) forgets every channel that never had an event;
    channels that did keep their seq and history, and keep numbering on."""
    realtime = Realtime(epoch="e1")
    publish_three(realtime)
    before = set(realtime.histories.channels)
    rng = random.Random(16)
    session, ending = Collector(JSON), Collector(JSON)
    churned = [
        f"/api/v5/orgs/o1/users/u1/chats/{rng.getrandbits(128):032x}/messages" for _ in range(2000)
    ]
    for channel in churned[:1000]:
        subscribe(realtime, session, channel, since=None, epoch=None)
        assert realtime.unsubscribe(session, channel)
    for channel in churned[1000:]:
        subscribe(realtime, ending, channel, since=None, epoch=None)
    subscribe(realtime, ending, CHANNEL, since=None, epoch=None)
    realtime.drop(ending, [*churned[1000:], CHANNEL])
    assert set(realtime.histories.channels) == before
    assert realtime.hub.subscribers == {}
    assert realtime.stats.subscriptions == 0
    # a channel with events outlives its subscribers: a later subscribe resumes it
    late = Collector(JSON)
    assert subscribe(realtime, late, CHANNEL, since=1, epoch="e1").head == 3
    assert [decode(JSON, item).get("seq") for item in late.items] == [3, 2, 3]


def test_event_frames_equal_encoding_the_whole_map_in_both_encodings() -> None:
    """The pre-serialised resource is spliced in, yet each frame is byte for byte what
    encoding the whole frame with the library gives; with no resource, no key."""
    resource = {"id": "m1", "message": "héllo", "n": [1, 2.5, None, True]}
    for payload, expected in (
        (Payload(resource), {"resource": resource}),
        (None, {}),
    ):
        item = ("added", "m1", payload)
        frame = {"channel": CHANNEL, "action": "added", "resource_id": "m1", "seq": 7}
        frame.update(expected)
        assert protocol.event(CHANNEL, 7, item, JSON) == orjson.dumps(frame)
        assert protocol.event(CHANNEL, 7, item, MSGPACK) == msgpack.packb(frame)


def test_several_ready_frames_go_out_as_one_array() -> None:
    for encoding in (JSON, MSGPACK):
        frames = [protocol.pong(number, encoding) for number in range(20)]
        assert decode(encoding, protocol.batch(frames, encoding)) == [
            {"type": "pong", "id": number} for number in range(20)
        ]
        assert protocol.batch(frames[:1], encoding) == frames[0]
    assert orjson.loads(protocol.unsubscribed(CHANNEL, None, JSON)) == {
        "type": "unsubscribed",
        "channel": CHANNEL,
    }
