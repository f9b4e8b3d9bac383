"""Resuming after falling behind, against a real server: a session closed with 4008
(it stopped reading while events were posted) resumes with ``since`` and, reading at
an ordinary pace, gets every event it missed exactly once and in order, however much
longer the replay is than its queue may hold; so does one session resuming several
channels from their oldest held events at once, with live events posted meanwhile.

A real server in this trio loop over TCP; the session that falls behind is a raw peer
with a small receive buffer (tests/rawws.py), the resuming one a trio-websocket client.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, World, build_world, start_server
from tests.rawws import OP_TEXT, frame, open_raw
from tests.wsclient import WsClient, ws_connect

QUEUE = "50"  # --session-queue: far less than the replays below


async def small_queues(nursery: trio.Nursery, **config: Any) -> World:
    server = await start_server(nursery, "--session-queue", QUEUE, "--rate-limit", "off", **config)
    return await build_world(server)


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)


async def open_chat(world: World, client: httpx.AsyncClient) -> tuple[str, str]:
    """A new chat: its id and its messages channel."""
    response = await client.post(
        world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
    )
    assert response.status_code == 201, response.text
    chat = response.json()["id"]
    return chat, world.path(f"/rooms/{world.room['id']}/chats/{chat}/messages")


async def post(world: World, client: httpx.AsyncClient, chat: str, count: int) -> list[str]:
    """``count`` messages, one after the other; their ids."""
    ada = world.users[0]["id"]
    ids = []
    for number in range(count):
        response = await client.post(
            world.path(f"/chats/{chat}/messages"),
            json={"sender_id": ada, "message": f"{number} " + "x" * 400},
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def receive_events(ws: WsClient, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The next ``count`` events (and any that came in the same frames)."""
    events = ws.take_events()
    with trio.fail_after(timeout):
        for _ in range(count + 1):  # one frame holds at least one event
            if len(events) >= count:
                break
            events += [f for f in await ws.receive_frame() if "action" in f]
    return events


async def test_a_session_closed_with_4008_catches_up_by_resuming(nursery: trio.Nursery) -> None:
    world = await small_queues(nursery)  # and 1,000 events of history a channel
    port = int(world.server.base_url.rsplit(":", 1)[1])
    async with world.org_client as client:
        chat, channel = await open_chat(world, client)

        stuck = await open_raw(port, ADMIN_TOKEN, receive_buffer=4096)
        await stuck.send(frame(OP_TEXT, orjson.dumps({"type": "subscribe", "channel": channel})))
        answer = orjson.loads(await stuck.read_message(10))
        assert answer["type"] == "subscribed"
        first, epoch = answer["seq"], answer["epoch"]
        # it reads nothing while 300 messages (~140 KB of events) are posted
        ids = await post(world, client, chat, 300)
        assert await stuck.read_until_closed(30) == 4008
        await stuck.aclose()
        got: list[dict[str, Any]] = []
        for message in stuck.messages[1:]:
            decoded = orjson.loads(message)
            got += decoded if isinstance(decoded, list) else [decoded]
        seqs = [event["seq"] for event in got]
        assert seqs == list(range(first + 1, first + 1 + len(seqs)))
        assert len(seqs) < 300  # it did fall behind
        last = seqs[-1] if seqs else first

        # resuming: a replay of hundreds of events, for a queue of 50
        async with ws_connect(world.server.base_url, ADMIN_TOKEN) as ws:
            resumed = await ws.subscribe(channel, since=last, epoch=epoch)
            assert (resumed["resumed"], resumed["seq"]) == (True, first + 300)
            missed = first + 300 - last
            events = await receive_events(ws, missed)
            assert [e["seq"] for e in events] == list(range(last + 1, first + 301))
            assert [e["resource_id"] for e in events] == ids[last - first :]
            # and it is live from there: the next events once each, in order
            more = await post(world, client, chat, 3)
            events = await receive_events(ws, 3)
            assert [e["seq"] for e in events] == [first + 301, first + 302, first + 303]
            assert [e["resource_id"] for e in events] == more


async def test_resuming_several_channels_from_their_oldest_held_events(
    nursery: trio.Nursery,
) -> None:
    """Three channels each holding their last 120 events (--history-limit), resumed
    at once from the oldest held one (360 events for a queue of 50) while each gets
    live events posted during the replay: every channel's events come once, in order,
    with no gap, up to its last."""
    world = await small_queues(nursery, history_limit=120)
    async with world.org_client as client:
        chats = [await open_chat(world, client) for _ in range(3)]
        ids = {chat: await post(world, client, chat, 150) for chat, _ in chats}
        async with ws_connect(world.server.base_url, ADMIN_TOKEN) as ws:
            heads = {}
            for _, channel in chats:
                # the first subscribe tells the head; the history holds its last 120
                head = (await ws.subscribe(channel))["seq"]
                await ws.send({"type": "unsubscribe", "channel": channel})
                heads[channel] = head
            too_old = await ws.subscribe(chats[0][1], since=heads[chats[0][1]] - 121)
            assert too_old["resumed"] is False
            await ws.send({"type": "unsubscribe", "channel": chats[0][1]})
            ws.take_events()
            for _, channel in chats:
                answer = await ws.subscribe(channel, since=heads[channel] - 120)
                assert (answer["resumed"], answer["seq"]) == (True, heads[channel])
            live = {chat: await post(world, client, chat, 5) for chat, _ in chats}
            events = await receive_events(ws, 3 * 125)
    for chat, channel in chats:
        mine = [e for e in events if e["channel"] == channel]
        head = heads[channel]
        assert [e["seq"] for e in mine] == list(range(head - 119, head + 6))
        assert [e["resource_id"] for e in mine] == ids[chat][-120:] + live[chat]
