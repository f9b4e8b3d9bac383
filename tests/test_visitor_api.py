"""The visitor (client) API, with the visitor's own token."""

from __future__ import annotations

import httpx

from tests.conftest import ADMIN_TOKEN, World, make_org, make_room, make_visitor


def client_path(world: World, suffix: str = "", visitor: dict | None = None) -> str:
    return f"/api/v5/client/visitors/{(visitor or world.visitor)['id']}{suffix}"


async def test_create_resume_and_post(world: World) -> None:
    async with world.client(world.visitor["token"]) as as_visitor:
        chats = client_path(world, f"/rooms/{world.room['id']}/chats")
        created = await as_visitor.post(chats, json={"auto_resume": False})
        assert created.status_code == 201
        resumed = await as_visitor.post(chats)  # auto_resume defaults to true
        assert resumed.status_code == 200 and resumed.json()["id"] == created.json()["id"]
        fresh = await as_visitor.post(chats, json={"auto_resume": False})
        assert fresh.status_code == 201 and fresh.json()["id"] != created.json()["id"]
        newest = await as_visitor.post(chats, json={"auto_resume": True})
        assert newest.json()["id"] == fresh.json()["id"]  # the newest recent one
        chat_id = created.json()["id"]
        posted = await as_visitor.post(
            client_path(world, f"/chats/{chat_id}/messages"),
            json={
                "message": "Is this in stock?",
                "page_url": "http://shop/p/1",
                "page_title": "Product",
                "type": "autosuggest",
                "sender_id": "someone-else",
                "sender_type": "user",
            },
        )
        assert posted.status_code == 201
        message = posted.json()
        assert set(message) == {
            "id",
            "type",
            "created_at",
            "sender_type",
            "sender_id",
            "sender_public_name",
            "message",
        }
        assert (message["type"], message["sender_type"], message["sender_id"]) == (
            "msg",
            "visitor",
            world.visitor["id"],
        )
        chat = (await as_visitor.get(client_path(world, f"/chats/{chat_id}"))).json()
        listing = (await as_visitor.get(client_path(world, "/chats"))).json()["results"]
    assert chat["is_waiting_response"] is True and chat["visitor_message_count"] == 1
    assert (chat["first_visitor_message_url"], chat["first_visitor_message_url_title"]) == (
        "http://shop/p/1",
        "Product",
    )
    assert [c["id"] for c in listing] == [chat_id, fresh.json()["id"]]
    assert "tag_count" in chat


async def test_operator_only_data_never_shows(world: World) -> None:
    ada = world.users[0]
    async with world.org_client as operator:
        chat = (
            await operator.post(
                world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats"),
                params={"auto_resume": ada["id"]},
            )
        ).json()
        await operator.post(
            world.path(f"/chats/{chat['id']}/messages"),
            json={"sender_id": ada["id"], "message": "Hello, I am Ada"},
        )
        await operator.post(world.path(f"/chats/{chat['id']}/tags"), json={"name": "secret-tag"})
    async with world.client(world.visitor["token"]) as as_visitor:
        presences = (
            await as_visitor.get(client_path(world, f"/chats/{chat['id']}/presences"))
        ).json()["results"]
        history = (
            await as_visitor.get(client_path(world, f"/chats/{chat['id']}/messages"))
        ).json()["results"]
        participations = (
            await as_visitor.get(client_path(world, f"/chats/{chat['id']}/participations"))
        ).json()["results"]
        body = (await as_visitor.get(client_path(world, f"/chats/{chat['id']}"))).text
    assert presences == [
        {
            "user_id": ada["id"],
            "chat_id": chat["id"],
            "user": {"id": ada["id"], "alias": "Ada-alias"},
        }
    ]
    assert [m["type"] for m in history] == ["join", "msg"]
    for message in history:
        assert "sender_name" not in message
        assert message["sender_public_name"] == "Ada-alias"
    assert participations == [
        {"id": world.visitor["id"], "type": "visitor"},
        {"id": ada["id"], "type": "user"},
    ]
    assert "secret-tag" not in body and "Tester" not in body  # no tag names, no operator names
    assert '"tag_count":1' in body


async def test_visitors_are_isolated(world: World, admin: httpx.AsyncClient) -> None:
    async with world.org_client as operator:
        other = await make_visitor(operator, world.org["id"])
    async with world.client(other["token"]) as as_other:
        theirs = (
            await as_other.post(client_path(world, f"/rooms/{world.room['id']}/chats", other))
        ).json()
    async with world.client(world.visitor["token"]) as as_visitor:
        # another visitor's chat under my own path: 404, like an unknown chat
        for suffix in ("", "/messages", "/presences", "/participations"):
            assert (
                await as_visitor.get(client_path(world, f"/chats/{theirs['id']}{suffix}"))
            ).status_code == 404
        posted = await as_visitor.post(
            client_path(world, f"/chats/{theirs['id']}/messages"), json={"message": "hi"}
        )
        assert posted.status_code == 404
        # another visitor's paths: 403
        assert (await as_visitor.get(client_path(world, "/chats", other))).status_code == 403
        # and an operator path with a visitor token: 403
        assert (await as_visitor.get(world.path("/rooms"))).status_code == 403
    for token in (world.users[0]["token"], world.org["token"]):
        async with world.client(token) as not_a_visitor:
            assert (await not_a_visitor.get(client_path(world, "/chats"))).status_code == 403
    async with world.client(ADMIN_TOKEN) as as_admin:
        assert (await as_admin.get(client_path(world, "/chats", other))).status_code == 200
    # a room of an unrelated org is not found
    stranger = await make_org(admin, "Stranger")
    async with world.server.client(stranger["token"]) as as_stranger:
        far_room = await make_room(as_stranger, stranger["id"], "Far")
    async with world.client(world.visitor["token"]) as as_visitor:
        response = await as_visitor.post(client_path(world, f"/rooms/{far_room['id']}/chats"))
    assert response.status_code == 404


async def test_visitor_ends_a_chat(world: World) -> None:
    async with world.client(world.visitor["token"]) as as_visitor:
        chat = (
            await as_visitor.post(client_path(world, f"/rooms/{world.room['id']}/chats"))
        ).json()
        ended = await as_visitor.patch(
            client_path(world, f"/chats/{chat['id']}"), json={"is_ended": True, "is_private": True}
        )
        assert ended.status_code == 200
        assert ended.json()["end_time"] is not None and ended.json()["is_private"] is False
        late = await as_visitor.post(
            client_path(world, f"/chats/{chat['id']}/messages"), json={"message": "x"}
        )
        assert late.status_code == 400 and late.json()["code"] == "chat_ended"
        again = await as_visitor.post(client_path(world, f"/rooms/{world.room['id']}/chats"))
    assert again.status_code == 201  # an ended chat is not resumed


async def test_visitor_bad_input(world: World) -> None:
    async with world.client(world.visitor["token"]) as as_visitor:
        chat = (
            await as_visitor.post(client_path(world, f"/rooms/{world.room['id']}/chats"))
        ).json()
        messages = client_path(world, f"/chats/{chat['id']}/messages")
        for body, field in (
            ({}, "message"),
            ({"message": "x" * 2001}, "message"),
            ({"message": "  "}, "message"),
            ({"message": "ok", "page_url": 3}, "page_url"),
        ):
            response = await as_visitor.post(messages, json=body)
            assert response.status_code == 400 and field in response.json()["errors"], body
        bad = await as_visitor.post(
            client_path(world, f"/rooms/{world.room['id']}/chats"), json={"auto_resume": "yes"}
        )
        assert bad.status_code == 400 and "auto_resume" in bad.json()["errors"]
