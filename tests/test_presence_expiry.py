"""Presence expiry: MockClock tests of the engine, and one end-to-end run."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from engine.actors.supervisor import Engine, EngineConfig
from engine.chat import ChatState
from engine.model import User
from tests.conftest import ADMIN_TOKEN, build_world, start_server
from tests.wsclient import ws_connect

TIMEOUT = 120.0


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def setup(engine: Engine) -> tuple[ChatState, User, User]:
    org, _ = await engine.directory.create_org("Org")
    room = await engine.directory.create_room(org.id, "Room", False)
    ada, _ = await engine.directory.create_user(
        org.id, first_name="Ada", last_name="L", alias="A", room_ids=None
    )
    alan, _ = await engine.directory.create_user(
        org.id, first_name="Alan", last_name="T", alias="B", room_ids=None
    )
    _, visitor, _ = await engine.directory.register_visitor(org.id, None)
    _, chat = await engine.directory.create_chat(room, visitor, auto_resume=ada)
    await engine.chats.join(chat, alan, exclusive=False)
    return chat, ada, alan


async def test_presences_expire_after_the_timeout_and_not_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        engine = Engine(EngineConfig(presence_timeout=TIMEOUT))
        await nursery.start(engine.run)
        chat, ada, alan = await setup(engine)
        engine.reachability.session_opened(alan.id)  # Alan keeps a WebSocket open
        await trio.sleep(TIMEOUT - 2)
        assert set(chat.presences) == {ada.id, alan.id}
        await trio.sleep(3)
        assert set(chat.presences) == {alan.id}
        assert [(m.type, m.sender_id) for m in chat.messages][-1] == ("leave", ada.id)
        await trio.sleep(10 * TIMEOUT)
        assert set(chat.presences) == {alan.id}  # an open session keeps it alive
        engine.reachability.session_closed(alan.id)
        await trio.sleep(TIMEOUT - 2)
        assert set(chat.presences) == {alan.id}  # not sooner than the timeout after a disconnect
        await trio.sleep(3)
        assert chat.presences == {}
        nursery.cancel_scope.cancel()


async def test_requests_and_reconnects_keep_presences(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        engine = Engine(EngineConfig(presence_timeout=TIMEOUT))
        await nursery.start(engine.run)
        chat, ada, alan = await setup(engine)
        for _ in range(5):
            await trio.sleep(TIMEOUT - 10)
            engine.reachability.touch(ada.id)  # a request with Ada's own token
            engine.reachability.session_opened(alan.id)  # Alan reconnects in time...
            engine.reachability.session_closed(alan.id)  # ...and drops again
        assert set(chat.presences) == {ada.id, alan.id}
        nursery.cancel_scope.cancel()


async def test_expiry_end_to_end_with_a_short_timeout(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, presence_timeout=1.0)
    world = await build_world(server)
    ada, alan = world.users
    async with world.org_client as client:
        chat = (
            await client.post(
                world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
            )
        ).json()
        for user in (ada, alan):
            response = await client.post(
                world.path(f"/chats/{chat['id']}/presences"), json={"user_id": user["id"]}
            )
            assert response.status_code == 201
        presences_channel = world.path(f"/rooms/{world.room['id']}/chats/{chat['id']}/presences")
        # Alan holds a session with his own token; Ada does nothing
        async with (
            ws_connect(server.base_url, alan["token"]) as alan_ws,
            ws_connect(server.base_url, ADMIN_TOKEN) as watcher,
        ):
            await watcher.subscribe(presences_channel)
            removed = await watcher.until(lambda f: f.get("action") == "removed", timeout=15)
            assert removed["resource_id"] == ada["id"]
            listing = (await client.get(world.path(f"/chats/{chat['id']}/presences"))).json()[
                "results"
            ]
            assert [p["user_id"] for p in listing] == [alan["id"]]
            assert alan_ws.connection.closed is None
        history = (await client.get(world.path(f"/chats/{chat['id']}/messages"))).json()["results"]
    assert [(m["type"], m["sender_id"]) for m in history][-1] == ("leave", ada["id"])
