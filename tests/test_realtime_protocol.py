"""The WebSocket protocol (docs/protocol.md) against a real server and real clients."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import orjson
import pytest
import trio
import wsproto
from trio_websocket import ConnectionClosed, ConnectionRejected
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from tests.conftest import (
    ADMIN_TOKEN,
    Server,
    World,
    build_world,
    make_org,
    make_room,
    make_user,
    start_server,
)
from tests.wsclient import WsClient, ws_connect


def messages_channel(world: World, chat_id: str) -> str:
    return world.path(f"/rooms/{world.room['id']}/chats/{chat_id}/messages")


async def new_chat(world: World) -> str:
    async with world.org_client as client:
        response = await client.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
        )
    return response.json()["id"]


async def post(world: World, chat_id: str, text: str) -> None:
    async with world.org_client as client:
        response = await client.post(
            world.path(f"/chats/{chat_id}/messages"),
            json={"sender_id": world.users[0]["id"], "message": text},
        )
    assert response.status_code == 201, response.text


async def events_until(client: WsClient, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while len(got) < count:
            got.append(await client.until(lambda f: "action" in f))
    return got


async def test_tokens_are_checked_before_upgrade(world: World) -> None:
    for token in (None, "wrong-token"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with ws_connect(world.server.base_url, token):
                pass
        assert rejected.value.status_code == 401
    async with ws_connect(world.server.base_url, world.users[0]["token"], query_token=True) as ws:
        await ws.send({"type": "ping", "id": 7})
        assert await ws.until(lambda f: f.get("type") == "pong") == {"type": "pong", "id": 7}


async def test_forbidden_and_unknown_channels_keep_the_connection(
    world: World, admin: httpx.AsyncClient
) -> None:
    other = await make_org(admin, "Other")
    async with world.server.client(other["token"]) as as_other:
        other_room = await make_room(as_other, other["id"], "Theirs")
    ada, alan = world.users
    org = world.org["id"]
    forbidden = [
        f"/api/v5/orgs/{other['id']}/rooms/{other_room['id']}/chats",  # another org
        f"/api/v5/orgs/{org}/rooms/{other_room['id']}/chats",  # a room the org cannot access
        f"/api/v5/orgs/{org}/rooms/8d1c3a52-1111-4222-8333-444455556666/chats",  # no such room
        f"/api/v5/orgs/{org}/users/{alan['id']}/chats",  # another user
        f"/api/v5/orgs/{org}/users/{alan['id']}/current_chats",
        f"/api/v5/client/visitors/{world.visitor['id']}/chats",  # a visitor's
    ]
    unknown = [
        "/nope",
        f"/api/v5/orgs/{org}/rooms",
        f"/api/v5/orgs/{org}/rooms/x/chats",
        f"/api/v5/orgs/{org}/rooms/{world.room['id']}/chats/",
    ]
    async with ws_connect(world.server.base_url, ada["token"]) as ws:
        for channel in forbidden:
            answer = await ws.subscribe(channel)
            assert (answer["type"], answer["code"]) == ("error", "forbidden"), channel
        for channel in unknown:
            answer = await ws.subscribe(channel)
            assert (answer["type"], answer["code"]) == ("error", "unknown_channel"), channel
        own = await ws.subscribe(f"/api/v5/orgs/{org}/users/{ada['id']}/chats")
        room = await ws.subscribe(f"/api/v5/orgs/{org}/rooms/{world.room['id']}/chats")
        assert own["type"] == room["type"] == "subscribed"
        assert (own["seq"], own["resumed"]) == (0, False) and isinstance(own["epoch"], str)
    async with ws_connect(world.server.base_url, world.visitor["token"]) as ws:
        mine = await ws.subscribe(f"/api/v5/client/visitors/{world.visitor['id']}/chats")
        theirs = await ws.subscribe(f"/api/v5/client/visitors/{'0' * 32}/chats")
        room = await ws.subscribe(f"/api/v5/orgs/{org}/rooms/{world.room['id']}/chats")
    assert mine["type"] == "subscribed"
    assert theirs["code"] == room["code"] == "forbidden"


async def test_bad_frames_are_answered_then_punished_with_1008(world: World) -> None:
    async with ws_connect(world.server.base_url, world.users[0]["token"]) as ws:
        bad = [
            "{not json",
            "[1, 2]",
            '"text"',
            '{"type": "dance", "id": 4}',
            '{"type": "subscribe", "id": 5}',
            '{"type": "subscribe", "id": 6, "channel": 12}',
            '{"type": "subscribe", "id": 8, "channel": "/x", "since": -1}',
        ]
        for frame in bad:
            await ws.connection.send_message(frame)
            answer = await ws.until(lambda f: f.get("type") == "error")
            assert answer["code"] == "bad_frame", frame
        await ws.connection.send_message(b"\x81binary")  # binary on a JSON session
        assert (await ws.until(lambda f: f.get("type") == "error"))["code"] == "bad_frame"
        await ws.connection.send_message('{"type": "nope", "id": 99}')
        assert (await ws.until(lambda f: f.get("id") == 99))["code"] == "bad_frame"
        # still working after 9 bad frames
        await ws.send({"type": "ping", "id": 1})
        await ws.until(lambda f: f.get("type") == "pong")
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(30):
                await ws.connection.send_message("garbage")
            with trio.fail_after(10):
                while True:
                    await ws.receive_frame()
        assert closed.value.reason.code == 1008


async def test_frames_over_64_kib_close_with_1009(world: World) -> None:
    async with ws_connect(world.server.base_url, world.users[0]["token"]) as ws:
        await ws.connection.send_message("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
            while True:
                await ws.receive_frame()
    assert closed.value.reason.code == 1009


async def test_msgpack_sessions_receive_the_same_objects(world: World) -> None:
    chat_id = await new_chat(world)
    channel = messages_channel(world, chat_id)
    async with (
        ws_connect(world.server.base_url, ADMIN_TOKEN, "json") as as_json,
        ws_connect(world.server.base_url, ADMIN_TOKEN, "msgpack") as as_msgpack,
    ):
        assert as_msgpack.connection.subprotocol == "chatengine.v1.msgpack"
        json_answer = await as_json.subscribe(channel)
        msgpack_answer = await as_msgpack.subscribe(channel)
        assert {k: v for k, v in json_answer.items() if k != "id"} == {
            k: v for k, v in msgpack_answer.items() if k != "id"
        }
        for index in range(5):
            await post(world, chat_id, f"hello {index} ünïcødé")
        json_events = await events_until(as_json, 5)
        msgpack_events = await events_until(as_msgpack, 5)
    assert json_events == msgpack_events
    assert [e["seq"] for e in json_events] == [1, 2, 3, 4, 5]


async def test_resume_with_since_gets_exactly_the_missed_events(world: World) -> None:
    chat_id = await new_chat(world)
    channel = messages_channel(world, chat_id)
    async with ws_connect(world.server.base_url, ADMIN_TOKEN) as ws:
        first = await ws.subscribe(channel)
        for index in range(3):
            await post(world, chat_id, f"m{index}")
        seen = await events_until(ws, 3)
    last = seen[-1]["seq"]
    assert last == 3
    for index in range(3, 7):  # while the client is away
        await post(world, chat_id, f"m{index}")
    async with ws_connect(world.server.base_url, ADMIN_TOKEN) as ws:
        answer = await ws.subscribe(channel, since=last, epoch=first["epoch"])
        assert (answer["resumed"], answer["seq"]) == (True, 7)
        missed = await events_until(ws, 4)
        await post(world, chat_id, "live")
        live = await events_until(ws, 1)
    assert [e["resource"]["message"] for e in missed] == ["m3", "m4", "m5", "m6"]
    assert [e["seq"] for e in missed + live] == [4, 5, 6, 7, 8]
    assert live[0]["resource"]["message"] == "live"


async def test_unsubscribe_stops_events(world: World) -> None:
    chat_id = await new_chat(world)
    channel = messages_channel(world, chat_id)
    async with ws_connect(world.server.base_url, ADMIN_TOKEN) as ws:
        await ws.subscribe(channel)
        await ws.send({"type": "unsubscribe", "id": 50, "channel": channel})
        answer = await ws.until(lambda f: f.get("id") == 50)
        assert answer == {"type": "unsubscribed", "id": 50, "channel": channel}
        await post(world, chat_id, "unheard")
        await ws.barrier()
        assert ws.take_events() == []


async def test_resume_answers_false_when_the_history_cannot_serve_it(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, history_limit=5)
    world = await build_world(server)
    chat_id = await new_chat(world)
    channel = messages_channel(world, chat_id)
    for index in range(8):
        await post(world, chat_id, f"m{index}")
    async with ws_connect(server.base_url, ADMIN_TOKEN) as ws:
        head = await ws.subscribe(channel)
        assert head["seq"] == 8
        too_old = await ws.subscribe(channel, since=1)  # seq 2 is no longer held
        assert too_old["resumed"] is False
        held = await ws.subscribe(channel, since=3)  # 4..8 are held
        assert held["resumed"] is True
        assert [e["seq"] for e in await events_until(ws, 5)] == [4, 5, 6, 7, 8]
        beyond = await ws.subscribe(channel, since=9)
        other_epoch = await ws.subscribe(channel, since=7, epoch="another-life")
        at_head = await ws.subscribe(channel, since=8, epoch=head["epoch"])
    assert beyond["resumed"] is False and other_epoch["resumed"] is False
    assert at_head["resumed"] is True


async def test_too_many_subscriptions(world: World) -> None:
    async with ws_connect(world.server.base_url, ADMIN_TOKEN) as ws:
        for index in range(1000):
            await ws.send(
                {
                    "type": "subscribe",
                    "id": 10_000 + index,
                    "channel": f"/api/v5/client/visitors/{index:032x}/chats",
                }
            )
        last = await ws.until(lambda f: f.get("id") == 10_999, timeout=30)
        assert last["type"] == "subscribed"
        answer = await ws.subscribe(f"/api/v5/client/visitors/{'f' * 32}/chats")
    assert answer["code"] == "too_many_subscriptions"


class NeverReads:
    """A client that subscribes and then stops reading (tiny receive buffer)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

    @classmethod
    async def connect(cls, port: int, token: str, channel: str) -> NeverReads:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        client = cls(trio.SocketStream(sock))
        await client.stream.send_all(
            client.ws.send(Request(host="127.0.0.1", target=f"/ws?token={token}"))
        )
        while not any(isinstance(e, AcceptConnection) for e in await client._events()):
            pass
        frame = orjson.dumps({"type": "subscribe", "id": 1, "channel": channel}).decode()
        await client.stream.send_all(client.ws.send(TextMessage(data=frame)))
        return client

    async def _events(self) -> list[Any]:
        self.ws.receive_data(await self.stream.receive_some(65536))
        return list(self.ws.events())

    async def close_code(self) -> int:
        """Read everything buffered, until the server's close frame."""
        with trio.fail_after(30):
            while True:
                for event in await self._events():
                    if isinstance(event, CloseConnection):
                        return event.code


async def test_a_slow_client_is_closed_with_4008_while_others_get_everything(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server: Server = await start_server(nursery, "--session-queue", "300")
    world = await build_world(server)
    chat_id = await new_chat(world)
    channel = messages_channel(world, chat_id)
    port = int(server.base_url.rsplit(":", 1)[1])
    slow = await NeverReads.connect(port, ADMIN_TOKEN, channel)
    count = 400
    received: dict[int, list[int]] = {}

    async def reader(index: int, task_status: Any) -> None:
        async with ws_connect(server.base_url, ADMIN_TOKEN) as ws:
            await ws.subscribe(channel)
            task_status.started()
            received[index] = [e["seq"] for e in await events_until_n(ws, count)]

    async def events_until_n(ws: WsClient, n: int) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        with trio.fail_after(120):
            while len(got) < n:
                got += [f for f in await ws.receive_frame() if "action" in f]
        return got

    async with trio.open_nursery() as readers:
        for index in range(100):
            await readers.start(reader, index)
        text = "x" * 1500
        async with world.org_client as client:
            for _ in range(count):
                response = await client.post(
                    world.path(f"/chats/{chat_id}/messages"),
                    json={"sender_id": world.users[0]["id"], "message": text},
                )
                assert response.status_code == 201
    assert all(seqs == list(range(1, count + 1)) for seqs in received.values())
    assert len(received) == 100
    assert await slow.close_code() == 4008
    async with server.client() as client:
        metrics = (await client.get("/metrics")).text
    assert "chat_engine_slow_consumer_closes_total 1.0" in metrics


async def test_metrics_are_exposed(world: World) -> None:
    async with world.org_client as client:
        await client.get(world.path("/rooms"))
    async with ws_connect(world.server.base_url, world.users[0]["token"]) as ws:
        await ws.subscribe(world.path(f"/users/{world.users[0]['id']}/chats"))
        async with world.server.client() as anonymous:
            response = await anonymous.get("/metrics")
    text = response.text
    assert response.headers["content-type"].startswith("text/plain")
    for name in (
        "chat_engine_ws_sessions 1.0",
        "chat_engine_subscriptions 1.0",
        "chat_engine_events_published_total",
        "chat_engine_events_delivered_total",
        "chat_engine_session_queue_depth_max",
        'chat_engine_http_request_seconds_bucket{le="0.005",method="GET",route="/api/v5/orgs/{org_id}/rooms",status="200"}',
    ):
        assert name in text, name
    # the `subscribed` answer went out in a write pass, as one frame at least
    counters = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("chat_engine_ws_")
    }
    assert counters["chat_engine_ws_write_passes_total"] >= 1
    assert counters["chat_engine_ws_frames_total"] >= 1
    assert counters["chat_engine_ws_write_seconds_total"] > 0


async def test_an_org_user_made_after_subscribe_is_authorized(world: World) -> None:
    async with world.org_client as client:
        late = await make_user(client, world.org["id"], "Late")
    async with ws_connect(world.server.base_url, late["token"]) as ws:
        answer = await ws.subscribe(world.path(f"/users/{late['id']}/current_chats"))
    assert answer["type"] == "subscribed"
