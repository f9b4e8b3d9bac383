"""ChannelRouter on its own: what a replay sends equals what was sent live, in both
encodings, across a snapshot's export/restore, while histories keep only JSON."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import orjson

from engine.actors.router import JSON, MSGPACK, ChannelRouter
from engine.channels import key_of, name_of
from engine.fanout import Payload, Publication

CHANNEL = "/api/v5/orgs/o1/rooms/r1/chats/c1/messages"
CHANNEL_KEY = key_of(CHANNEL)  # what fan-out publishes to
OTHER = "/api/v5/orgs/o1/rooms/r1/chats"


class Collector:
    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.items: list[bytes] = []

    def push(self, item: bytes) -> None:
        self.items.append(item)


def decode(encoding: str, item: bytes) -> Any:
    return orjson.loads(item) if encoding == JSON else msgpack.unpackb(item)


def publish_three(router: ChannelRouter) -> list[Payload]:
    payloads = []
    for number in range(3):
        payload = Payload({"id": f"m{number}", "message": f"héllo {number}", "n": [number]})
        payloads.append(payload)
        router.publish(
            [
                Publication([CHANNEL_KEY], "added", f"m{number}", payload),
                Publication([OTHER], "changed", "c1", payload),
            ]
        )
    return payloads


def answer(subscribed: Any) -> bytes:
    return orjson.dumps({"type": "subscribed", "seq": subscribed.head})


def test_replays_equal_live_frames_in_both_encodings_and_history_keeps_json_only() -> None:
    router = ChannelRouter(epoch="e1")
    live = {encoding: Collector(encoding) for encoding in (JSON, MSGPACK)}
    for collector in live.values():
        router.subscribe(collector, CHANNEL, since=None, epoch=None, answer=answer)
    payloads = publish_three(router)
    assert all(payload.data is None and payload.json for payload in payloads)
    for encoding in (JSON, MSGPACK):
        late = Collector(encoding)
        subscribed = router.subscribe(late, CHANNEL, since=0, epoch="e1", answer=answer)
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
    router = ChannelRouter(epoch="e1")
    publish_three(router)
    before = Collector(JSON)
    router.subscribe(before, OTHER, since=1, epoch=None, answer=answer)
    exported = msgpack.unpackb(msgpack.packb(router.export()))  # as a snapshot stores it
    restored = ChannelRouter(epoch="e1")
    restored.restore(exported)
    after = Collector(JSON)
    subscribed = restored.subscribe(after, OTHER, since=1, epoch="e1", answer=answer)
    assert (subscribed.head, subscribed.resumed) == (3, True)
    assert after.items[1:] == before.items[1:]
    # the next event goes on from the restored seq
    restored.publish([Publication([OTHER], "removed", "c1", None)])
    assert orjson.loads(after.items[-1])["seq"] == 4


def test_snapshots_holding_payload_dicts_still_restore() -> None:
    """Snapshots written before histories kept JSON held each payload as a dict."""
    old = {"epoch": "e1", "channels": [[CHANNEL, 2, [[2, "added", "m1", {"id": "m1"}]]]]}
    router = ChannelRouter(epoch="e1")
    router.restore(old)
    late = Collector(MSGPACK)
    router.subscribe(late, CHANNEL, since=1, epoch=None, answer=answer)
    assert msgpack.unpackb(late.items[1])["resource"] == {"id": "m1"}


def resumes(router: ChannelRouter, channel: str, since: int) -> list[int] | None:
    """The seqs a new subscriber with ``since`` is replayed, or None if not resumed."""
    collector = Collector(JSON)
    subscribed = router.subscribe(collector, channel, since=since, epoch=None, answer=answer)
    if not subscribed.resumed:
        return None
    return [orjson.loads(item)["seq"] for item in collector.items[1:]]


def test_the_total_history_cap_drops_the_oldest_events_first() -> None:
    router = ChannelRouter(epoch="e1", history_limit=10, total_history_limit=5)
    for number in range(3):
        router.publish([Publication([OTHER], "changed", "c1", Payload({"n": number}))])
    for number in range(3):
        router.publish([Publication([CHANNEL_KEY], "added", f"m{number}", Payload({"n": number}))])
    assert resumes(router, OTHER, since=0) is None  # its first event is gone; seq goes on
    assert resumes(router, OTHER, since=1) == [2, 3]
    assert resumes(router, CHANNEL, since=0) == [1, 2, 3]
    assert router.stats.history_events_dropped == 1


def test_the_total_cap_counts_only_events_a_channel_still_holds() -> None:
    """Events a channel's own limit already dropped do not use up the total."""
    router = ChannelRouter(epoch="e1", history_limit=2, total_history_limit=3)
    for number in range(5):
        router.publish([Publication([CHANNEL_KEY], "added", f"m{number}", Payload({"n": number}))])
    router.publish([Publication([OTHER], "changed", "c1", Payload({"n": 0}))])
    assert resumes(router, CHANNEL, since=3) == [4, 5]  # three events held: 4, 5 and 1
    assert resumes(router, OTHER, since=0) == [1]
    router.publish([Publication([OTHER], "changed", "c1", Payload({"n": 1}))])
    assert resumes(router, CHANNEL, since=3) is None  # now the oldest held, 4, went
    assert resumes(router, CHANNEL, since=4) == [5]
    assert resumes(router, OTHER, since=0) == [1, 2]


def test_a_restored_history_keeps_to_the_total_cap() -> None:
    router = ChannelRouter(epoch="e1")
    publish_three(router)
    restored = ChannelRouter(epoch="e1", total_history_limit=4)
    restored.restore(router.export())
    assert resumes(restored, CHANNEL, since=0) is None
    assert resumes(restored, CHANNEL, since=2) == [3]
    assert resumes(restored, OTHER, since=0) == [1, 2, 3]


def test_the_history_caps_match_a_plain_model_under_random_traffic() -> None:
    """Per channel the newest ``history_limit`` events, and of those, across channels,
    the newest ``total_history_limit`` — whatever mix of hot and quiet channels."""
    rng = random.Random(7)
    names = [f"/api/v5/orgs/o1/rooms/r{number}/chats" for number in range(6)]
    weights = [50, 20, 10, 5, 1, 1]
    router = ChannelRouter(epoch="e1", history_limit=7, total_history_limit=20)
    held: dict[str, list[tuple[int, int]]] = {name: [] for name in names}  # (order, seq)
    seqs = dict.fromkeys(names, 0)
    order = 0
    for _ in range(2_000):
        batch = rng.choices(names, weights, k=rng.randint(1, 4))
        for name in batch:
            seqs[name] += 1
            order += 1
            held[name] = [*held[name], (order, seqs[name])][-7:]
        router.publish([Publication([name], "changed", "c1", Payload({})) for name in batch])
        newest = sorted(event for events in held.values() for event in events)[-20:]
        for name in names:
            channel = router._channels.get(name)
            actual = [seq for seq, _ in channel.held()] if channel else []
            assert actual == [seq for event in newest if event in held[name] for seq in event[1:]]


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
    hold that one event, not a copy each, and so does a router restored from a snapshot
    (the snapshot stores it once per channel)."""
    names = [f"/api/v5/orgs/o1/users/u{number}/chats" for number in range(5)]
    router = ChannelRouter(epoch="e1")
    router.publish([Publication(list(names), "changed", "c1", Payload({"id": "c1", "n": 1}))])
    router.publish([Publication(names[:2], "added", "c2", Payload({"id": "c2"}))])
    for source in (router, restored_copy(router)):
        heads = [source._channels[name].history[0] for name in names]
        assert all(head is heads[0] for head in heads)
        assert source._channels[names[0]].history[1] is source._channels[names[1]].history[1]
        assert [resumes(source, name, since=0) for name in names] == [[1, 2]] * 2 + [[1]] * 3


def restored_copy(router: ChannelRouter) -> ChannelRouter:
    restored = ChannelRouter(epoch=router.epoch)
    restored.restore(msgpack.unpackb(msgpack.packb(router.export())))
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
    router = ChannelRouter(epoch="e1")
    router.restore({"epoch": "e1", "channels": rows})
    assert resumes(router, CHANNEL, since=3) == [4, 5]
    assert resumes(router, CHANNEL, since=1) is None
    assert resumes(router, OTHER, since=9) == []  # up to date: nothing to replay
    assert resumes(router, OTHER, since=8) is None  # event 9 is not held


def test_subscription_churn_on_channels_without_events_leaves_nothing_behind() -> None:
    """Subscribing to random chats' channels and leaving (by unsubscribe, or by the
    session ending while subscribed) forgets every channel that never had an event;
    channels that did keep their seq and history, and keep numbering on."""
    router = ChannelRouter(epoch="e1")
    publish_three(router)
    before = set(router._channels)
    rng = random.Random(16)
    session, ending = Collector(JSON), Collector(JSON)
    churned = [
        f"/api/v5/orgs/o1/users/u1/chats/{rng.getrandbits(128):032x}/messages" for _ in range(2000)
    ]
    for channel in churned[:1000]:
        router.subscribe(session, channel, since=None, epoch=None, answer=answer)
        assert router.unsubscribe(session, channel)
    for channel in churned[1000:]:
        router.subscribe(ending, channel, since=None, epoch=None, answer=answer)
    router.subscribe(ending, CHANNEL, since=None, epoch=None, answer=answer)
    router.drop(ending, [*churned[1000:], CHANNEL])
    assert set(router._channels) == before
    assert router.stats.subscriptions == 0
    # a channel with events outlives its subscribers: a later subscribe resumes it
    late = Collector(JSON)
    assert router.subscribe(late, CHANNEL, since=1, epoch="e1", answer=answer).head == 3
    assert [decode(JSON, item).get("seq") for item in late.items] == [3, 2, 3]
