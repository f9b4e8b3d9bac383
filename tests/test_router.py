"""ChannelRouter on its own: what a replay sends equals what was sent live, in both
encodings, across a snapshot's export/restore, while histories keep only JSON."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

from engine.actors.router import JSON, MSGPACK, ChannelRouter
from engine.fanout import Payload, Publication

CHANNEL = "/api/v5/orgs/o1/rooms/r1/chats/c1/messages"
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
                Publication(CHANNEL, "added", f"m{number}", payload),
                Publication(OTHER, "changed", "c1", payload),
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
    restored.publish([Publication(OTHER, "removed", "c1", None)])
    assert orjson.loads(after.items[-1])["seq"] == 4


def test_snapshots_holding_payload_dicts_still_restore() -> None:
    """Snapshots written before histories kept JSON held each payload as a dict."""
    old = {"epoch": "e1", "channels": [[CHANNEL, 2, [[2, "added", "m1", {"id": "m1"}]]]]}
    router = ChannelRouter(epoch="e1")
    router.restore(old)
    late = Collector(MSGPACK)
    router.subscribe(late, CHANNEL, since=1, epoch=None, answer=answer)
    assert msgpack.unpackb(late.items[1])["resource"] == {"id": "m1"}


def test_the_total_history_cap_drops_the_least_recently_published_channel() -> None:
    router = ChannelRouter(epoch="e1", history_limit=10, total_history_limit=5)
    for number in range(3):
        router.publish([Publication(OTHER, "changed", "c1", Payload({"n": number}))])
    for number in range(3):
        router.publish([Publication(CHANNEL, "added", f"m{number}", Payload({"n": number}))])
    stale = Collector(JSON)
    subscribed = router.subscribe(stale, OTHER, since=0, epoch=None, answer=answer)
    assert (subscribed.head, subscribed.resumed) == (3, False)  # seq goes on, history gone
    fresh = Collector(JSON)
    assert router.subscribe(fresh, CHANNEL, since=0, epoch=None, answer=answer).resumed
    assert len(fresh.items) == 4
