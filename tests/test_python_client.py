"""chat_engine_client against real server processes, each scenario under asyncio and
under trio (``anyio.run`` with either backend inside a plain test): the HTTP API and its
errors; subscriptions that deliver every event once and in order across a kill -9, a
clean shutdown and restarts; ``on_reset`` when the server cannot replay; 4008 for a
handler that falls behind; 4001 after a visitor re-key; 1008; and peers that are no
server at all. Every wait is bounded (``WAIT``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import SocketAttribute, SocketStream

from bench.server import ADMIN_TOKEN
from chat_engine_client import (
    ApiError,
    Backoff,
    ChannelClient,
    ChannelError,
    ChatEngine,
    Reset,
    SubscriptionError,
    TokenInvalid,
)
from chat_engine_client.channels import Subscription, _Gap
from tests.serverproc import Outcome, launch

BACKENDS = ["asyncio", "trio"]
WAIT = 30.0  # seconds any one wait may take before the test fails
FAST = Backoff(initial=0.05, maximum=0.5)


class Collector:
    """An ``on_event`` handler that keeps what it got and wakes whoever waits on it."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = anyio.Event()

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[list[Any]], bool]) -> None:
        with anyio.fail_after(WAIT):
            while not predicate(self.events):
                await self._changed.wait()


@pytest.fixture
def servers() -> Iterator[list[Outcome]]:
    """Started servers, killed at the end whatever happened."""
    started: list[Outcome] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.kill()


async def start(
    servers: list[Outcome], data_dir: Path, *flags: str, port: int | None = None
) -> Outcome:
    server = await anyio.to_thread.run_sync(partial(launch, data_dir, *flags, port=port))
    assert server.ready, server.stderr
    servers.append(server)
    return server


async def setup_world(base_url: str) -> dict[str, Any]:
    async with ChatEngine(base_url, ADMIN_TOKEN) as admin:
        org = await admin.create_org("Acme")
        acme = admin.with_token(org["token"]).org(org["id"])
        room = await acme.create_room("Sales")
        ada = await acme.create_user("Ada", "Lovelace", "ada")
        alan = await acme.create_user("Alan", "Turing", "alan")
        visitor = await acme.register_visitor()
    return {"org": org, "room": room, "ada": ada, "alan": alan, "visitor": visitor}


@pytest.mark.parametrize("backend", BACKENDS)
def test_http_calls_and_typed_errors(backend: str, servers: list[Outcome], tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await start(servers, tmp_path / "data")
        world = await setup_world(server.base_url)
        org, room, ada, alan, visitor = (
            world[k] for k in ("org", "room", "ada", "alan", "visitor")
        )
        async with ChatEngine(server.base_url, org["token"]) as org_api:
            acme = org_api.org(org["id"])
            assert (await acme.get())["name"] == "Acme"
            assert [r["id"] async for r in acme.rooms()] == [room["id"]]
            assert (await acme.get_user(ada["id"]))["full_name"] == "Ada Lovelace"

            # auto_resume: a new chat with Ada present, then the same chat again
            chat, created = await acme.resume_chat(room["id"], visitor["id"], ada["id"])
            assert created and chat["currently_present_user_count"] == 1
            again, created = await acme.resume_chat(room["id"], visitor["id"], ada["id"])
            assert (again["id"], created) == (chat["id"], False)

            # a presence: already there is (presence, False); exclusive while taken fails
            presence, created = await acme.join(chat["id"], ada["id"], exclusive=True)
            assert (presence["user_id"], created) == (ada["id"], False)
            with pytest.raises(ApiError) as taken:
                await acme.join(chat["id"], alan["id"], exclusive=True)
            assert (taken.value.status, taken.value.code) == (400, "chat_already_taken")

            # the typed error carries the field errors of a validation failure
            with pytest.raises(ApiError) as invalid:
                await org_api.request("POST", f"{acme.path}/users", json={"first_name": 1})
            assert invalid.value.status == 400 and invalid.value.code == "invalid"
            assert {"first_name", "last_name", "alias"} <= set(invalid.value.errors)
            with pytest.raises(ApiError) as missing:
                await acme.get_chat("00000000-0000-4000-8000-000000000000")
            assert (missing.value.status, missing.value.code) == (404, "not_found")

            # messages from both sides; cursor pagination walks the whole history
            async with ChatEngine(server.base_url, visitor["token"]) as visitor_api:
                me = visitor_api.visitor(visitor["id"])
                for n in range(4):
                    await me.post_message(chat["id"], f"question {n}", page_url="https://x.test/")
                    await acme.post_message(chat["id"], ada["id"], f"answer {n}")
                history = [m async for m in me.messages(chat["id"], page_size=3)]
                assert [m.get("message") for m in history][1:3] == ["question 0", "answer 0"]
                assert len(history) == 9  # the join, then 8 messages
                assert [m["id"] async for m in acme.messages(chat["id"])] == [
                    m["id"] for m in history
                ]
                involved = [p["id"] async for p in acme.participations(alan["id"], chat["id"])]
                assert involved == [visitor["id"], ada["id"]]
                assert [p["id"] async for p in me.participations(chat["id"])] == involved
                resumed, created = await me.start_chat(room["id"], auto_resume=True)
                assert (resumed["id"], created) == (chat["id"], False)
                assert [c["id"] async for c in me.chats()] == [chat["id"]]

            await acme.add_tag(chat["id"], "vip lead")
            assert (await acme.get_chat(chat["id"]))["tags"] == [{"name": "vip lead"}]
            await acme.remove_tag(chat["id"], "vip lead")
            assert [p["user_id"] async for p in acme.presences(chat["id"])] == [ada["id"]]
            assert [c["id"] async for c in acme.current_chats(ada["id"])] == [chat["id"]]
            cart = await acme.create_cart(
                chat["id"], "EUR", [{"name": "Lamp", "price": "19.99", "quantity": 2}]
            )
            chair = await acme.add_product(
                chat["id"], cart["id"], {"name": "Chair", "price": "5.00", "quantity": 1}
            )
            await acme.remove_product(chat["id"], cart["id"], chair["id"])
            locked = await acme.lock_cart(chat["id"], cart["id"])
            assert locked["locked_at"] is not None and locked["total_price"] == "39.98"
            await acme.put_api_data(visitor["id"], [{"name": "name", "value": "Grace"}])
            await acme.leave(chat["id"], ada["id"])
            ended = await acme.end_chat(chat["id"])
            assert ended["end_time"] is not None
            report = [c async for c in acme.report(page_size=1, only_ended=True)]
            assert [c["id"] for c in report] == [chat["id"]]
            assert report[0]["visitor_message_count"] == 4
            assert report[0]["api_data"] == [{"name": "name", "value": "Grace"}]
            assert [c["id"] async for c in acme.report(has_sales=True)] == [chat["id"]]
            more = [await acme.create_chat(room["id"], visitor["id"]) for _ in range(2)]
            every = [c["id"] async for c in acme.report(page_size=1)]  # three pages
            assert every == [chat["id"]] + [c["id"] for c in more]
            newest_first = acme.report(page_size=2, ordering="-start_time")
            assert [c["id"] async for c in newest_first] == every[::-1]
            assert [c["id"] async for c in acme.room_chats(room["id"], page_size=1)] == [
                c["id"] for c in more
            ]

        async with ChatEngine(server.base_url) as anonymous:
            stranger = await anonymous.register_visitor()
            assert len(stranger["id"]) == 32 and stranger["token"]
            with pytest.raises(ApiError) as refused:
                await anonymous.org(org["id"]).get()
            assert (refused.value.status, refused.value.code) == (401, "not_authenticated")

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_events_once_and_in_order_across_kill_and_restart(
    backend: str, servers: list[Outcome], tmp_path: Path
) -> None:
    """kill -9 mid-conversation, a restart on the same data dir and port, then a clean
    shutdown (1001) and another restart: both subscribers (a handler on a JSON session,
    an iterator on a msgpack one) end with exactly the history, in seq order."""

    async def scenario() -> None:
        data_dir = tmp_path / "data"
        server = await start(servers, data_dir)
        world = await setup_world(server.base_url)
        org, room, ada, visitor = (world[k] for k in ("org", "room", "ada", "visitor"))
        async with ChatEngine(server.base_url, ada["token"]) as ada_api:
            acme = ada_api.org(org["id"])
            chat, _ = await acme.resume_chat(room["id"], visitor["id"], ada["id"])
            me = ada_api.with_token(visitor["token"]).visitor(visitor["id"])
            room_channel = f"{acme.path}/rooms/{room['id']}/chats/{chat['id']}/messages"
            visitor_channel = f"{me.path}/chats/{chat['id']}/messages"

            by_handler = Collector()
            by_iterator = Collector()
            async with (
                ChannelClient(server.base_url, ada["token"], backoff=FAST) as operator,
                ChannelClient(
                    server.base_url, visitor["token"], backoff=FAST, encoding="msgpack"
                ) as visitor_ws,
                anyio.create_task_group() as group,
            ):
                # since=0 replays the chat's whole history (its join) before live events
                await operator.subscribe(room_channel, on_event=by_handler, since=0)
                subscription = await visitor_ws.subscribe(visitor_channel, since=0)

                async def drain() -> None:
                    async for event in subscription:
                        by_iterator(event)

                group.start_soon(drain)

                async def talk(rounds: int) -> None:
                    for n in range(rounds):
                        await me.post_message(chat["id"], f"visitor {n}")
                        await acme.post_message(chat["id"], ada["id"], f"ada {n}")

                async def history() -> list[str]:
                    return [m["id"] async for m in acme.messages(chat["id"])]

                await talk(5)
                expected = await history()
                for collector in (by_handler, by_iterator):
                    await collector.wait_for(lambda events: len(events) >= len(expected))

                await anyio.to_thread.run_sync(server.kill)
                server = await start(servers, data_dir, port=server.port)
                await talk(5)
                expected = await history()
                assert len(expected) == 21
                for collector in (by_handler, by_iterator):
                    await collector.wait_for(lambda events: len(events) >= len(expected))
                    assert [e["resource_id"] for e in collector.events] == expected
                    assert [e["seq"] for e in collector.events] == list(range(1, 22))
                    assert {e["action"] for e in collector.events} == {"added"}
                assert operator.sessions >= 2 and visitor_ws.sessions >= 2

                # a clean shutdown closes the sessions with 1001; they resume the same way
                assert await anyio.to_thread.run_sync(server.stop) == 0
                server = await start(servers, data_dir, port=server.port)
                await talk(3)
                expected = await history()
                assert len(expected) == 27
                for collector in (by_handler, by_iterator):
                    await collector.wait_for(lambda events: len(events) >= len(expected))
                    assert [e["resource_id"] for e in collector.events] == expected
                    assert [e["seq"] for e in collector.events] == list(range(1, 28))
                assert 1001 in operator.closes and 1001 in visitor_ws.closes
                assert operator.subscriptions[room_channel].seq == 27
                assert operator.subscriptions[room_channel].resets == 0

                # nothing more arrives: a barrier on a fresh channel, then the counts
                barrier = await operator.subscribe(f"{acme.path}/users/{ada['id']}/chats")
                await barrier.unsubscribe()
                assert len(by_handler.events) == 27
                group.cancel_scope.cancel()

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_reset_when_the_server_cannot_replay(
    backend: str, servers: list[Outcome], tmp_path: Path
) -> None:
    """``since`` older than the history held, and an in-memory restart (another
    history, another epoch): ``on_reset`` each time, then the events after the head."""

    async def scenario() -> None:
        flags = ("--in-memory", "--history-limit", "2")
        server = await start(servers, tmp_path / "unused", *flags)
        world = await setup_world(server.base_url)
        org, room, ada, visitor = (world[k] for k in ("org", "room", "ada", "visitor"))
        async with ChatEngine(server.base_url, ada["token"]) as ada_api:
            acme = ada_api.org(org["id"])
            chat, _ = await acme.resume_chat(room["id"], visitor["id"], ada["id"])
            for n in range(4):
                await acme.post_message(chat["id"], ada["id"], f"before {n}")
            channel = f"{acme.path}/rooms/{room['id']}/chats/{chat['id']}/messages"

            reset_calls = Collector()
            resets: list[Reset] = reset_calls.events
            events = Collector()
            async with ChannelClient(
                server.base_url, ADMIN_TOKEN, backoff=FAST, token_in_query=True
            ) as admin_ws:
                subscription = await admin_ws.subscribe(
                    channel, on_event=events, on_reset=reset_calls, since=1
                )
                # 5 events (a join, 4 messages); only the last 2 are held: no replay
                assert [(r.since, r.seq, r.previous_epoch) for r in resets] == [(1, 5, None)]
                assert subscription.seq == 5
                await acme.post_message(chat["id"], ada["id"], "after")
                await events.wait_for(lambda got: len(got) == 1)
                assert events.events[0]["seq"] == 6
                first_epoch = subscription.epoch
                assert first_epoch

                await anyio.to_thread.run_sync(server.kill)
                await start(servers, tmp_path / "unused", *flags, port=server.port)
                await reset_calls.wait_for(lambda got: len(got) == 2)
                assert resets[1].since == 6 and resets[1].seq == 0
                assert resets[1].previous_epoch == first_epoch != resets[1].epoch
                assert subscription.seq == 0 and len(events.events) == 1

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_visitor_rekey_closes_with_4001(
    backend: str, servers: list[Outcome], tmp_path: Path
) -> None:
    """A visitor re-registered by its org gets a fresh token: its session closes with
    4001. Without a token provider the client stops with TokenInvalid; with one it
    reconnects with the fresh token and misses nothing."""

    async def scenario() -> None:
        server = await start(servers, tmp_path / "data")
        world = await setup_world(server.base_url)
        org, room, visitor = world["org"], world["room"], world["visitor"]
        channel = f"/api/v5/client/visitors/{visitor['id']}/chats"
        async with ChatEngine(server.base_url, org["token"]) as org_api:
            acme = org_api.org(org["id"])

            async with ChannelClient(server.base_url, visitor["token"], backoff=FAST) as plain:
                subscription = await plain.subscribe(channel)
                with pytest.raises(SubscriptionError) as refused:
                    await plain.subscribe(f"/api/v5/client/visitors/{'0' * 32}/chats")
                assert refused.value.code == "forbidden"
                rekeyed = await acme.register_visitor(visitor["id"])
                with anyio.fail_after(WAIT), pytest.raises(TokenInvalid) as stopped:
                    await plain.wait_stopped()
                assert stopped.value.code == 4001
                with anyio.fail_after(WAIT), pytest.raises(TokenInvalid):
                    async for _ in subscription:
                        pass

            fresh = {"token": rekeyed["token"]}
            handed_out = anyio.Event()

            async def provider() -> str:
                handed_out.set()
                return fresh["token"]

            events = Collector()
            async with ChannelClient(
                server.base_url, fresh["token"], token_provider=provider, backoff=FAST
            ) as renewing:
                await renewing.subscribe(channel, on_event=events)
                await acme.create_chat(room["id"], visitor["id"])
                await events.wait_for(lambda got: len(got) == 1)
                fresh["token"] = (await acme.register_visitor(visitor["id"]))["token"]
                with anyio.fail_after(WAIT):
                    await handed_out.wait()
                chat = await acme.create_chat(room["id"], visitor["id"])
                await events.wait_for(lambda got: len(got) == 2)
                assert events.events[1]["resource_id"] == chat["id"]
                assert [e["seq"] for e in events.events] == [1, 2]
                assert renewing.token == fresh["token"] and renewing.error is None

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_handler_that_falls_far_behind_gets_4008_then_a_reset(
    backend: str, servers: list[Outcome], tmp_path: Path
) -> None:
    """A handler that blocks while hundreds of events arrive, on a server whose sessions
    may hold 5 items: 4008. The client delivers what reached it, resumes at once; the
    replay of what it missed is itself over the bound (4008 again, nothing delivered),
    so it subscribes afresh and calls on_reset instead of looping. No event is
    delivered twice or out of order, and the events after the reset all arrive."""

    async def scenario() -> None:
        server = await start(servers, tmp_path / "data", "--session-queue", "5")
        world = await setup_world(server.base_url)
        org, room, ada, visitor = (world[k] for k in ("org", "room", "ada", "visitor"))
        async with ChatEngine(server.base_url, org["token"]) as org_api:
            acme = org_api.org(org["id"])
            chat, _ = await acme.resume_chat(room["id"], visitor["id"], ada["id"])
            channel = f"{acme.path}/rooms/{room['id']}/chats/{chat['id']}/messages"
            release = anyio.Event()
            events = Collector()
            resets = Collector()

            async def stuck_handler(event: Any) -> None:
                await release.wait()
                events(event)

            async with ChannelClient(server.base_url, org["token"], backoff=FAST) as client:
                await client.subscribe(channel, on_event=stuck_handler, on_reset=resets)
                text = "x" * 2000
                count = 300  # ~600 KB of events: more than the socket buffers hold

                async def post(first: int) -> None:
                    for _ in range(first, count, 4):
                        await acme.post_message(chat["id"], ada["id"], text)

                async with anyio.create_task_group() as posters:
                    for first in range(4):
                        posters.start_soon(post, first)
                release.set()
                await resets.wait_for(lambda got: len(got) == 1)
                [reset] = resets.events
                seqs = [e["seq"] for e in events.events]
                assert seqs == list(range(2, reset.since + 1)) and reset.seq == count + 1
                assert client.last_close_code == 4008 and client.sessions == 3

                after = [await acme.post_message(chat["id"], ada["id"], "on") for _ in range(3)]
                await events.wait_for(lambda got: len(got) == len(seqs) + 3)
                assert [e["resource_id"] for e in events.events[-3:]] == [m["id"] for m in after]
                assert [e["seq"] for e in events.events[-3:]] == [count + 2, count + 3, count + 4]

    anyio.run(scenario, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_1008_stops_the_client_instead_of_reconnecting(
    backend: str, servers: list[Outcome], tmp_path: Path
) -> None:
    """A session closed with 1008 (a client that sent invalid frames) is a bug to fix,
    not a reason to reconnect: the client stops with the code, after one session."""

    async def scenario() -> None:
        server = await start(servers, tmp_path / "data")
        async with ChannelClient(server.base_url, ADMIN_TOKEN, backoff=FAST) as client:
            subscription = await client.subscribe("/api/v5/client/visitors/" + "a" * 32 + "/chats")
            await client.wait_connected()
            session = client._ws  # the open session, to play a buggy client on it
            assert session is not None
            for _ in range(21):
                await session.send("not a frame")
            with anyio.fail_after(WAIT), pytest.raises(ChannelError) as stopped:
                await client.wait_stopped()
            assert stopped.value.code == 1008 and client.sessions == 1
            with pytest.raises(ChannelError):
                async for _ in subscription:
                    pass

    anyio.run(scenario, backend=backend)


def test_backoff_doubles_with_jitter_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.25, maximum=8.0)
    for attempt, ceiling in [(0, 0.25), (1, 0.5), (3, 2.0), (5, 8.0), (50, 8.0), (10**6, 8.0)]:
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(delays) > 1, "jittered: clients of one restart do not return in step"


def test_the_websocket_url_comes_from_the_api_base_url() -> None:
    assert ChannelClient("http://127.0.0.1:8080").url == "ws://127.0.0.1:8080/ws"
    assert ChannelClient("https://127.0.0.1/base/").url == "wss://127.0.0.1/base/ws"
    assert ChannelClient("ws://127.0.0.1:8080/ws").url == "ws://127.0.0.1:8080/ws"
    in_query = ChannelClient("http://127.0.0.1:1", "a b&c", token_in_query=True)
    assert in_query._url_with_token() == "ws://127.0.0.1:1/ws?token=a+b%26c"
    assert in_query._headers() == []
    assert ChannelClient("http://127.0.0.1:1", "t")._headers() == [("Authorization", "Token t")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "answer",
    [b"HELLO\r\n\r\n", b"HTTP/1.1 500 Oops\r\ncontent-length: 2\r\n\r\nno", b""],
    ids=["garbage", "http-500", "silence-then-close"],
)
def test_a_peer_that_is_no_server_only_delays_the_client(backend: str, answer: bytes) -> None:
    """Whatever answers the upgrade (garbage, a 500, a closed connection), the client
    neither crashes nor spins: it retries with backoff, connection after connection."""

    async def scenario() -> None:
        accepted = Collector()
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(SocketAttribute.local_port)

        async def serve(stream: SocketStream) -> None:
            async with stream:
                await stream.receive()
                accepted(anyio.current_time())
                if answer:
                    await stream.send(answer)

        async with listener, anyio.create_task_group() as group:
            group.start_soon(listener.serve, serve)
            async with ChannelClient(f"http://127.0.0.1:{port}", "t", backoff=FAST) as client:
                await accepted.wait_for(lambda got: len(got) >= 4)
                assert client.error is None and client.sessions == 0
                gaps = [b - a for a, b in zip(accepted.events, accepted.events[1:], strict=False)]
                assert max(gaps) >= FAST.initial / 2  # retried after a delay, not at once
            group.cancel_scope.cancel()

    anyio.run(scenario, backend=backend)


def test_events_before_the_answer_wait_for_it_and_duplicates_are_dropped() -> None:
    """The protocol lets a subscribe's answer come after the replayed events: they wait
    for it and go out in seq order; an event already delivered is dropped; a skipped
    seq makes the client start a fresh session (to resume) instead of delivering it."""

    async def scenario() -> None:
        client = ChannelClient("http://127.0.0.1:1")
        got = Collector()
        channel = "/api/v5/client/visitors/" + "a" * 32 + "/chats"
        subscription = Subscription(client, channel, got, None, since=3, epoch="e1")
        client.subscriptions[channel] = subscription
        subscription._pending_id, subscription._asked_since = 7, 3
        subscription._sent_since = True
        client._pending[7] = subscription

        def event(seq: int) -> dict[str, Any]:
            return {"channel": channel, "action": "added", "resource_id": str(seq), "seq": seq}

        await client._dispatch(orjson.dumps([event(5), event(4), event(3)]).decode())
        assert got.events == []  # no answer yet
        answer = {"type": "subscribed", "id": 7, "channel": channel, "seq": 5}
        await client._dispatch(orjson.dumps({**answer, "resumed": True, "epoch": "e1"}).decode())
        assert [e["seq"] for e in got.events] == [4, 5] and subscription.seq == 5
        await client._dispatch(orjson.dumps([event(5), event(6)]).decode())
        assert [e["seq"] for e in got.events] == [4, 5, 6]
        with pytest.raises(_Gap):
            await client._dispatch(orjson.dumps(event(8)).decode())
        assert subscription.seq == 6 and client.delivered == 3

    anyio.run(scenario, backend="trio")
