"""The pure webhook rules (engine/webhooks.py) and their disk parts (reading the log
with persistence/follow.py, cursors.py, the store's hold on segment removal)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import stat
import time
from pathlib import Path

import pytest
import trio

from engine import errors
from engine.actors.supervisor import Engine
from engine.facts import (
    ChatCreated,
    ChatEnded,
    MessagePosted,
    OrgCreated,
    UserJoined,
    UserLeft,
    WebhookCreated,
    WebhookDeleted,
)
from engine.state import State
from engine.webhooks import (
    MAX_PER_ORG,
    RETRY_HORIZON_MS,
    Webhook,
    Webhooks,
    backoff,
    decide_create,
    decide_delete,
    events_of,
    give_up,
    parse_allow,
    signature,
    target_refusal,
    verify,
)
from gateway.webhooks import Deliverer, DeliverySettings, Endpoint, loop_busy
from persistence.codec import decode_state, encode_state
from persistence.cursors import CursorFile
from persistence.follow import LogFollower
from persistence.store import Store
from persistence.wal import WriteAheadLog

ip = ipaddress.ip_address
HOUR = 3600 * 1000


def test_the_signature_is_an_hmac_of_the_timestamp_and_the_body() -> None:
    body = b'{"id":"x"}'
    header = signature("s3cret", 1700000000, body)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify("s3cret", header, body)
    assert not verify("other", header, body)
    assert not verify("s3cret", header, body + b" ")
    assert not verify("s3cret", "t=x,v1=00", body)


def test_backoff_doubles_from_one_second_to_ten_minutes() -> None:
    assert [backoff(n) for n in range(1, 13)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        600,
        600,
    ]
    assert backoff(10_000) == 600


def test_an_event_is_given_up_after_a_day_of_failing() -> None:
    now = 10 * 24 * HOUR
    assert not give_up(None, 0, now)  # not failing: every event, however old
    assert not give_up(now - RETRY_HORIZON_MS + 1, 0, now)  # failing for less than a day
    assert give_up(now - RETRY_HORIZON_MS, now - RETRY_HORIZON_MS, now)
    # failing for over a day, but this event is recent: it gets its own day
    assert not give_up(now - 2 * RETRY_HORIZON_MS, now - HOUR, now)


def test_which_record_makes_which_event() -> None:
    created = ChatCreated("c", "tok", "r", "o", "v", False, 1, "u", "m0")
    assert [e.type for e in events_of([created])] == [
        "chat.created",
        "presence.created",
        "message.created",
    ]
    posted = MessagePosted("c", "m1", 2, "msg", "visitor", "v", "hi", None, None)
    joined = UserJoined("c", "u2", 3, "m2")
    left = UserLeft("c", "u2", 4, "m3")
    ended = ChatEnded("c", 5, (("u", "m4"),))
    events = events_of([posted, joined, left, ended])
    assert [(e.index, e.type) for e in events] == [
        (0, "message.created"),
        (1, "presence.created"),
        (2, "message.created"),
        (3, "presence.deleted"),
        (4, "message.created"),
        (5, "chat.ended"),
        (6, "presence.deleted"),
        (7, "message.created"),
    ]
    assert events[2].subject.type == "join" and events[4].subject.type == "leave"
    assert events_of([OrgCreated("o", "Acme", 1, "h")]) == []


def test_registration_rules() -> None:
    registry = Webhooks()
    fact = decide_create(registry, "o", "https://h.example/x", ["chat.created"] * 2, "s" * 16, at=1)
    assert fact.events == ("chat.created",)
    with pytest.raises(errors.EngineError) as refused:
        decide_create(registry, "o", "https://h.example/x", ["chat.deleted"], "s" * 16, at=1)
    assert "events" in (refused.value.errors or {})
    for url in (
        "ftp://h.example/",
        "http:///x",
        "http://user:pw@h.example/",
        "http://h:99999/",
        "http://h:0/",  # was taken for port 80
        # no request line carries these as they are (a non-ASCII path crashed delivery)
        "http://h.example/caf\u00e9",
        "http://h\u00e9.example/",
        "http://h.example/a b",
        "http://h.example/a\tb",
        "http://h.example/\r\nX-Injected: 1",
    ):
        with pytest.raises(errors.EngineError):
            decide_create(registry, "o", url, ["chat.created"], "s" * 16, at=1)
    for n in range(MAX_PER_ORG):
        registry.apply(WebhookCreated(f"w{n}", "o", "http://h/", ("chat.created",), "s", 1), n)
    with pytest.raises(errors.EngineError):
        decide_create(registry, "o", "http://h/", ["chat.created"], "s" * 16, at=1)
    with pytest.raises(errors.NotFound):
        decide_delete(registry, "other-org", "w0", at=2)
    registry.apply(decide_delete(registry, "o", "w0", at=2), 99)
    assert "w0" not in registry.by_id


def test_targets_must_be_allowed() -> None:
    assert "without --webhook-allow" in (
        target_refusal("127.0.0.1", [ip("127.0.0.1")], parse_allow([])) or ""
    )
    allow = parse_allow(["Hooks.Example.com", "127.0.0.1", "10.0.0.0/8"])
    assert target_refusal("hooks.example.com", [ip("203.0.113.9")], allow) is None  # named
    assert target_refusal("127.0.0.1", [ip("127.0.0.1")], allow) is None
    assert target_refusal("in.corp", [ip("10.1.2.3")], allow) is None  # resolves inside
    assert target_refusal("127.0.0.2", [ip("127.0.0.2")], allow) is not None
    # a name that resolves to one address outside the networks is refused
    assert target_refusal("evil.test", [ip("10.1.2.3"), ip("169.254.169.254")], allow) is not None
    with pytest.raises(ValueError):
        parse_allow(["not a host"])


def test_registrations_are_kept_by_the_snapshot() -> None:
    state = State()
    state.position = 7
    state.apply(WebhookCreated("w", "o", "http://h/", ("chat.created",), "secret", 5))
    restored = decode_state(encode_state(state))
    hook = restored.webhooks.by_id["w"]
    assert (hook.start_lsn, hook.events, hook.secret) == (7, ("chat.created",), "secret")
    restored.apply(WebhookDeleted("w", "o", 6))
    assert restored.webhooks.by_id == {}


async def write_log(directory: Path, count: int, segment_bytes: int) -> WriteAheadLog:
    wal = WriteAheadLog(directory, fsync="off", segment_bytes=segment_bytes)
    wal.open(0)
    for n in range(count):
        await wal.append([[OrgCreated(f"o{n}", "x" * 50, n, "h")]])
    return wal


async def test_an_endpoint_whose_records_left_the_log_skips_them_and_goes_on(
    tmp_path: Path,
) -> None:
    """Segments an endpoint needed were removed (it was behind for longer than the retry
    horizon): the records they held are skipped, shown as such, and delivery goes on
    from the oldest record the log still holds, read from disk."""
    wal = await write_log(tmp_path, 60, 1000)
    wal.remove_segments_before(30)
    wal.close()
    first = LogFollower(tmp_path).first_lsn()
    assert first is not None and 1 < first <= 31
    engine = Engine(store=Store(tmp_path))
    deliverer = Deliverer(engine, DeliverySettings(batch=5))
    hook = Webhook("w", "o", "http://h/", ("chat.created",), "s" * 16, 1, 0)
    endpoint = Endpoint(hook, 0, 10, engine.now())
    deliverer.endpoints["w"] = endpoint
    assert await deliverer._records(endpoint, 60) == []
    assert endpoint.cursor == first - 1
    assert [a["outcome"] for a in endpoint.attempts] == ["skipped"]
    assert endpoint.attempts[0]["error"] == f"records 1..{first - 1} no longer in the log"
    records = await deliverer._records(endpoint, 60)
    assert [lsn for lsn, _ in records] == list(range(first, first + 5))
    assert records[0][1] == [OrgCreated(f"o{first - 1}", "x" * 50, first - 1, "h")]


async def test_segments_a_follower_needs_are_kept(tmp_path: Path) -> None:
    store = Store(tmp_path, fsync="off", segment_bytes=1000)
    store.wal = await write_log(tmp_path, 80, 1000)
    store.holds.append(lambda: 12)
    store.holds.append(lambda: None)  # holds nothing back
    assert store.removable_up_to(70) == 12
    store.wal.remove_segments_before(store.removable_up_to(70))
    assert LogFollower(tmp_path).first_lsn() <= 13
    store.wal.close()


async def test_cursors_are_saved_whole_and_owner_only(tmp_path: Path) -> None:
    cursors = CursorFile(tmp_path)
    assert cursors.load() == {}
    before = os.umask(0o022)
    try:
        await trio.to_thread.run_sync(cursors.save, {"a": 3, "b": 10})
    finally:
        os.umask(before)
    assert cursors.load() == {"a": 3, "b": 10}
    assert stat.S_IMODE(cursors.path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [cursors.path.name]  # no temporary left
    cursors.path.write_text("{not json")
    assert cursors.load() == {}  # unreadable: start over (the log repeats, loses nothing)


def test_an_endpoint_never_saved_holds_the_log_from_its_registration(tmp_path: Path) -> None:
    """Its cursor on disk is missing until the first save: after a crash it starts again
    from its registration, so the segments from there on are kept (they were released as
    far as its position in memory, and a crash then lost the events in between)."""
    engine = Engine(store=Store(tmp_path))
    deliverer = Deliverer(engine, DeliverySettings())
    hook = Webhook("w", "o", "http://h/", ("chat.created",), "s" * 16, 1, 5)
    deliverer.endpoints["w"] = Endpoint(hook, 40, 10, engine.now())
    deliverer.cursors["w"] = 40
    assert deliverer.hold() == 5
    deliverer._saved = {"w": 30}  # saved once: from there
    assert deliverer.hold() == 30


def test_an_endpoint_behind_for_longer_than_the_horizon_no_longer_holds_the_log(
    tmp_path: Path,
) -> None:
    """A receiver that acknowledges every event, only slower than they come, never
    fails: without a bound it would keep every log segment from then on."""
    engine = Engine(store=Store(tmp_path))
    deliverer = Deliverer(engine, DeliverySettings())
    hook = Webhook("w", "o", "http://h/", ("chat.created",), "s" * 16, 1, 5)
    endpoint = Endpoint(hook, 40, 10, engine.now())
    deliverer.endpoints["w"] = endpoint
    deliverer.cursors["w"] = deliverer._saved["w"] = 40
    endpoint.caught_up_at = engine.now() - RETRY_HORIZON_MS + 60_000
    assert deliverer.hold() == 40  # behind for less than a day: kept
    endpoint.caught_up_at = engine.now() - RETRY_HORIZON_MS
    assert deliverer.hold() is None


def test_a_deliverer_that_does_not_run_keeps_no_records() -> None:
    """A replica builds the deliverer but never runs it (the primary delivers): the
    records it applies are not kept in the ring of recent records for nobody."""
    engine = Engine()
    deliverer = Deliverer(engine, DeliverySettings())
    engine.state.webhooks.apply(
        WebhookCreated("w", "o", "http://h/", ("chat.created",), "s" * 16, 1), 1
    )
    for lsn in range(2, 10):
        deliverer._on_record(lsn, [OrgCreated(f"o{lsn}", "Acme", 1, "h")])
    assert not deliverer._recent


async def working(nursery: trio.Nursery, tasks: int, turn: float) -> trio.Event:
    """``tasks`` tasks that each work ``turn`` seconds at every turn of the event loop
    (it is saturated) until the event returned is set."""
    done = trio.Event()

    async def work() -> None:
        while not done.is_set():
            until = time.perf_counter() + turn
            while time.perf_counter() < until:
                pass
            await trio.lowlevel.checkpoint()

    for _ in range(tasks):
        nursery.start_soon(work)
    await trio.lowlevel.checkpoint()
    return done


async def test_a_saturated_loop_is_seen_busy_and_a_quiet_one_not(nursery: trio.Nursery) -> None:
    turn = DeliverySettings().busy_turn
    quiet = [await loop_busy(turn) for _ in range(50)]
    assert sum(quiet) <= 5  # (a busy machine may preempt this process now and then)
    done = await working(nursery, 20, 0.001)
    busy = [await loop_busy(turn) for _ in range(50)]
    done.set()
    assert sum(busy) >= 45  # 20 ms of others' work a turn: under the bound only by chance


async def test_a_delivery_gives_way_while_the_loop_is_saturated(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Writes first: while the loop is saturated, a delivery waits (up to its bound)
    before its attempt; on a quiet loop it goes at once."""
    engine = Engine(store=Store(tmp_path))
    deliverer = Deliverer(engine, DeliverySettings(give_way_seconds=0.2))
    started = trio.current_time()
    await deliverer._give_way()
    assert deliverer.gave_way == 0 and trio.current_time() - started < 0.2
    done = await working(nursery, 20, 0.001)
    started = trio.current_time()
    await deliverer._give_way()
    waited = trio.current_time() - started
    done.set()
    assert deliverer.gave_way == 1
    assert waited >= 0.1  # (its bound, 0.2 s, unless a look at the loop found it quiet)
    engine.store.wal.close()


async def test_without_a_log_a_delivery_never_gives_way(nursery: trio.Nursery) -> None:
    """In memory an endpoint that falls behind the ring of recent records loses events:
    there deliveries go at once, however busy the loop."""
    deliverer = Deliverer(Engine(), DeliverySettings(give_way_seconds=5))
    done = await working(nursery, 20, 0.001)
    with trio.fail_after(2):
        await deliverer._give_way()
    done.set()
    assert deliverer.gave_way == 0
