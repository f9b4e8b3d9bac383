"""The bench's load generator reads engine frames without decoding them whole
(``bench.subscriber.record_added_messages``); what it records must equal what decoding
every frame would, or the fan-out figures would be wrong."""

from __future__ import annotations

from typing import Any

import orjson

from bench.subscriber import Adapter, Tally
from engine.channels import key_of
from engine.fanout import Payload, Publication
from engine.realtime.core import Realtime, Replays
from engine.realtime.protocol import JSON
from engine.realtime.protocol import batch as pack_frame

CHANNEL = "/api/v5/orgs/o1/rooms/r1/chats/c1/messages"


class Collector:
    encoding = JSON

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.replays = Replays()  # what a subscriber of the realtime core carries

    def push(self, item: bytes) -> None:
        self.items.append(item)


def message(number: int, text: str | None, sender_name: str = "Ann Lee") -> Payload:
    view: dict[str, Any] = {
        "id": f"m{number}",
        "type": "msg",
        "created_at": "2026-11-27T09:00:00.000Z",
        "sender_type": "user",
        "sender_id": "u1",
        "sender_public_name": "ann",
        "sender_name": sender_name,
    }
    if text is not None:
        view["message"] = text
    return Payload(view)


def decoded_texts(frames: list[bytes]) -> list[str]:
    """What decoding each frame whole finds: the reference."""
    texts = []
    for frame in frames:
        decoded = orjson.loads(frame)
        for item in decoded if isinstance(decoded, list) else [decoded]:
            if item.get("action") == "added" and (item.get("resource") or {}).get("message"):
                texts.append(item["resource"]["message"])
    return texts


def test_the_generator_records_what_decoding_would() -> None:
    realtime = Realtime(epoch="e1")
    collector = Collector()
    subscribed = realtime.subscribe(collector, CHANNEL, since=None, epoch=None)
    answer_frame = orjson.dumps({"type": "subscribed", "seq": subscribed.head})
    publications = [
        Publication([key_of(CHANNEL)], "added", "m1", message(1, "3:1700000000.25")),
        Publication([key_of(CHANNEL)], "added", "m2", message(2, None)),  # no text
        Publication([key_of(CHANNEL)], "changed", "m1", message(1, "3:1700000000.50")),
        Publication([key_of(CHANNEL)], "added", "m3", message(3, "3:1700000000.75")),
        Publication([key_of(CHANNEL)], "added", "m4", message(4, "not the bench's")),
        Publication([key_of(CHANNEL)], "added", "m5", message(5, "4:1700000001.0", "Bo")),
    ]
    realtime.publish(publications)
    events = collector.items
    frames = [pack_frame(events[:2], JSON), events[2], pack_frame(events[3:], JSON)]
    # the answer's frame goes the decoding way, mixed with an event
    frames.append(pack_frame([answer_frame, events[0]], JSON))

    tally = Tally()
    acks = sum(
        Adapter("engine", channels=(CHANNEL,)).on_payload(f, tally, 1700000002.0)[1] for f in frames
    )

    expected: dict[int, int] = {}
    for text in decoded_texts(frames):
        step, _, sent = text.partition(":")
        if sent and step.isdigit():
            expected[int(step)] = expected.get(int(step), 0) + 1
    assert acks == 1
    assert tally.received == expected == {3: 3, 4: 1}
    # latencies: 1.75 s, 1.25 s (m3), 1.75 s again (m1, in the answer's frame), 1.0 s
    assert tally.histogram[3] == {1750: 2, 1250: 1}
    assert tally.histogram[4] == {1000: 1}
