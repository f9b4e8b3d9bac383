"""Chats, auto_resume, presences, messages and participations over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from engine.model import SENDER_VISITOR
from tests.conftest import World, make_org, make_user, make_visitor

COLLECTION_KEYS = {
    "id",
    "token",
    "start_time",
    "end_time",
    "updated_at",
    "is_private",
    "is_real_conversation",
    "is_autosuggested",
    "room_id",
    "message_count",
    "user_message_count",
    "visitor_message_count",
    "first_visitor_message_url",
    "first_visitor_message_url_title",
    "autosuggest_url",
    "autosuggest_url_title",
    "tag_count",
    "is_waiting_response",
    "currently_present_user_count",
    "participation_count",
    "user_participation_count",
    "visitor_participation_count",
    "visitor_id",
    "organization_id",
}


def chats_path(
    world: World, room: dict[str, Any] | None = None, visitor: dict[str, Any] | None = None
) -> str:
    room = room or world.room
    visitor = visitor or world.visitor
    return world.path(f"/rooms/{room['id']}/visitors/{visitor['id']}/chats")


async def visitor_says(world: World, chat_id: str, text: str, url: str | None = None) -> None:
    """The visitor API is another issue; the engine call is what it will make."""
    engine = world.server.engine
    chat = engine.state.chats[chat_id]
    await engine.chats.post(
        chat,
        sender_type=SENDER_VISITOR,
        sender_id=chat.visitor_id,
        type="msg",
        message=text,
        page_url=url,
        page_title=None,
    )


async def test_create_chat_without_auto_resume_always_creates(world: World) -> None:
    async with world.org_client as client:
        first = await client.post(chats_path(world))
        second = await client.post(chats_path(world))
    assert first.status_code == second.status_code == 201
    chat = first.json()
    assert set(chat) == COLLECTION_KEYS
    assert chat["id"] != second.json()["id"]
    assert len(chat["token"]) == 48 and chat["token"].islower()
    assert chat["end_time"] is None and chat["participation_count"] == 1
    assert chat["visitor_participation_count"] == 1 and chat["organization_id"] == world.org["id"]
    assert chat["start_time"].count(".") == 1 and len(chat["start_time"]) == 23


async def test_auto_resume_creates_then_resumes(world: World) -> None:
    ada, alan = world.users
    async with world.org_client as client:
        created = await client.post(chats_path(world), params={"auto_resume": ada["id"]})
        assert created.status_code == 201 and created.json()["currently_present_user_count"] == 1
        chat_id = created.json()["id"]
        resumed = await client.post(chats_path(world), params={"auto_resume": ada["id"]})
        assert resumed.status_code == 200 and resumed.json()["id"] == chat_id
        joined = await client.post(chats_path(world), json={"auto_resume": alan["id"]})
        assert joined.status_code == 200 and joined.json()["currently_present_user_count"] == 2
        history = (await client.get(world.path(f"/chats/{chat_id}/messages"))).json()["results"]
        # resuming where Ada already was emitted nothing: one join each
        assert [(m["type"], m["sender_id"]) for m in history] == [
            ("join", ada["id"]),
            ("join", alan["id"]),
        ]


async def test_auto_resume_query_wins_over_body(world: World) -> None:
    ada, alan = world.users
    async with world.org_client as client:
        response = await client.post(
            chats_path(world), params={"auto_resume": ada["id"]}, json={"auto_resume": alan["id"]}
        )
        presences = (
            await client.get(world.path(f"/chats/{response.json()['id']}/presences"))
        ).json()
    assert [p["user_id"] for p in presences["results"]] == [ada["id"]]


async def test_auto_resume_respects_the_resume_window(world: World) -> None:
    ada = world.users[0]
    async with world.org_client as client:
        first = (await client.post(chats_path(world), params={"auto_resume": ada["id"]})).json()
        world.server.clock.advance(1799)
        assert (
            await client.post(chats_path(world), params={"auto_resume": ada["id"]})
        ).status_code == 200
        world.server.clock.advance(1801)  # the join above did not update the chat (already present)
        late = await client.post(chats_path(world), params={"auto_resume": ada["id"]})
    assert late.status_code == 201 and late.json()["id"] != first["id"]


async def test_auto_resume_skips_ended_and_private_chats(world: World) -> None:
    ada, alan = world.users
    async with world.org_client as client:
        private = chats_path(world, room=world.private_room)
        first = (await client.post(private, params={"auto_resume": ada["id"]})).json()
        assert first["is_private"] is True
        # Alan may not join Ada's private chat: a new chat for him
        second = await client.post(private, params={"auto_resume": alan["id"]})
        assert second.status_code == 201 and second.json()["id"] != first["id"]
        ended = await client.patch(world.path(f"/chats/{first['id']}"), json={"is_ended": True})
        assert ended.status_code == 200 and ended.json()["end_time"] is not None
        third = await client.post(private, params={"auto_resume": ada["id"]})
        assert third.status_code == 201 and third.json()["id"] not in (
            first["id"],
            second.json()["id"],
        )


async def test_auto_resume_errors_create_nothing(world: World) -> None:
    async with world.org_client as client:
        restricted = await make_user(
            client, world.org["id"], "Rita", room_ids=[world.private_room["id"]]
        )
        denied = await client.post(chats_path(world), params={"auto_resume": restricted["id"]})
        assert denied.status_code == 400 and denied.json()["code"] == "permission_denied"
        unknown = await client.post(chats_path(world), params={"auto_resume": "nobody"})
        assert unknown.status_code == 400 and "auto_resume" in unknown.json()["errors"]
        listing = (await client.get(world.path(f"/rooms/{world.room['id']}/chats"))).json()
    assert listing["results"] == []
    async with world.client(world.users[0]["token"]) as as_ada:
        other = await as_ada.post(chats_path(world), params={"auto_resume": world.users[1]["id"]})
        assert other.status_code == 403
        mine = await as_ada.post(chats_path(world), params={"auto_resume": world.users[0]["id"]})
        assert mine.status_code == 201


async def test_unknown_and_foreign_visitors_are_not_found(
    world: World, admin: httpx.AsyncClient
) -> None:
    other = await make_org(admin, "Other")
    async with world.server.client(other["token"]) as as_other:
        foreign = await make_visitor(as_other, other["id"])
    async with world.org_client as client:
        missing = await client.post(chats_path(world, visitor={"id": "0" * 32}))
        theirs = await client.post(chats_path(world, visitor=foreign))
        bad_room = await client.post(
            world.path(f"/rooms/not-a-room/visitors/{world.visitor['id']}/chats")
        )
    assert missing.status_code == theirs.status_code == bad_room.status_code == 404


async def test_presences_join_exclusive_and_leave(world: World) -> None:
    ada, alan = world.users
    async with world.org_client as client:
        chat = (await client.post(chats_path(world))).json()
        presences = world.path(f"/chats/{chat['id']}/presences")
        joined = await client.post(presences, json={"user_id": ada["id"], "exclusive": True})
        assert joined.status_code == 201
        presence = joined.json()
        assert set(presence) == {"user_id", "chat_id", "user", "created_at"}
        assert presence["user"] == {
            "id": ada["id"],
            "first_name": "Ada",
            "last_name": "Tester",
            "full_name": "Ada Tester",
            "alias": "Ada-alias",
        }
        again = await client.post(presences, json={"user_id": ada["id"], "exclusive": True})
        assert again.status_code == 200 and again.json() == presence
        taken = await client.post(presences, json={"user_id": alan["id"], "exclusive": True})
        assert taken.status_code == 400 and taken.json()["code"] == "chat_already_taken"
        shared = await client.post(presences, json={"user_id": alan["id"]})
        assert shared.status_code == 201
        listing = (await client.get(presences)).json()["results"]
        assert [p["user_id"] for p in listing] == [ada["id"], alan["id"]]
        room_view = (await client.get(world.path(f"/rooms/{world.room['id']}/chats"))).json()[
            "results"
        ][0]
        assert room_view["currently_present_user_count"] == 2
        assert (await client.delete(f"{presences}/{ada['id']}")).status_code == 204
        gone = await client.delete(f"{presences}/{ada['id']}")
        assert gone.status_code == 404 and gone.json()["code"] == "not_found"
        history = (await client.get(world.path(f"/chats/{chat['id']}/messages"))).json()["results"]
    assert [m["type"] for m in history] == ["join", "join", "leave"]
    assert all("message" not in m for m in history)
    assert (
        history[2]["sender_name"] == "Ada Tester"
        and history[2]["sender_public_name"] == "Ada-alias"
    )


async def test_join_permissions(world: World) -> None:
    async with world.org_client as client:
        restricted = await make_user(
            client, world.org["id"], "Rita", room_ids=[world.private_room["id"]]
        )
        chat = (await client.post(chats_path(world))).json()
        presences = world.path(f"/chats/{chat['id']}/presences")
        denied = await client.post(presences, json={"user_id": restricted["id"]})
        assert denied.status_code == 400 and denied.json()["code"] == "permission_denied"
        unknown = await client.post(
            presences, json={"user_id": "8d1c3a52-1111-4222-8333-444455556666"}
        )
        assert unknown.status_code == 400 and "user_id" in unknown.json()["errors"]
    async with world.client(world.users[0]["token"]) as as_ada:
        for_alan = await as_ada.post(presences, json={"user_id": world.users[1]["id"]})
        assert for_alan.status_code == 403
        assert (
            await as_ada.post(presences, json={"user_id": world.users[0]["id"]})
        ).status_code == 201
        assert (await as_ada.delete(f"{presences}/{world.users[1]['id']}")).status_code == 403


async def test_messages_counts_and_participations(world: World) -> None:
    ada, alan = world.users
    async with world.org_client as client:
        chat = (await client.post(chats_path(world))).json()
        messages = world.path(f"/chats/{chat['id']}/messages")
        suggestion = await client.post(
            messages,
            json={
                "sender_id": alan["id"],
                "message": "Can I help?",
                "type": "autosuggest",
                "page_url": "http://shop/",
                "page_title": "Shop",
            },
        )
        assert suggestion.status_code == 201
        body = suggestion.json()
        assert set(body) == {
            "id",
            "type",
            "created_at",
            "sender_type",
            "sender_id",
            "sender_public_name",
            "sender_name",
            "message",
        }
        assert (body["type"], body["sender_type"], body["sender_name"]) == (
            "autosuggest",
            "user",
            "Alan Tester",
        )
        await visitor_says(world, chat["id"], "Yes please", url="http://shop/cart")
        reply = await client.post(messages, json={"sender_id": ada["id"], "message": "Sure!"})
        assert reply.status_code == 201
        view = (await client.get(world.path(f"/rooms/{world.room['id']}/chats"))).json()["results"][
            0
        ]
        participations = (
            await client.get(world.path(f"/users/{ada['id']}/chats/{chat['id']}/participations"))
        ).json()["results"]
        history = (await client.get(messages)).json()["results"]
        rich = (await client.get(world.path(f"/chats/{chat['id']}"))).json()
    assert (
        view["message_count"] == 3
        and view["user_message_count"] == 2
        and view["visitor_message_count"] == 1
    )
    assert view["is_autosuggested"] and view["autosuggest_url"] == "http://shop/"
    assert view["first_visitor_message_url"] == "http://shop/cart"
    assert view["is_real_conversation"] and not view["is_waiting_response"]
    assert (view["participation_count"], view["user_participation_count"]) == (3, 2)
    assert participations == [
        {"id": world.visitor["id"], "type": "visitor"},
        {"id": alan["id"], "type": "user"},
        {"id": ada["id"], "type": "user"},
    ]
    visitor_message = history[1]
    assert visitor_message["sender_public_name"] is None and visitor_message["sender_name"] is None
    assert [log["type"] for log in rich["logs"]] == [2, 1, 1]
    assert [log["sender_type"] for log in rich["logs"]] == [1, 2, 1]
    assert rich["operator_message_count"] == 2 and rich["start_url"] == "http://shop/cart"


async def test_waiting_filter_on_room_chats(world: World) -> None:
    async with world.org_client as client:
        quiet = (await client.post(chats_path(world))).json()
        waiting = (await client.post(chats_path(world))).json()
        await visitor_says(world, waiting["id"], "Hello?")
        room_chats = world.path(f"/rooms/{world.room['id']}/chats")
        only_waiting = (await client.get(room_chats, params={"is_waiting_response": "true"})).json()
        not_waiting = (await client.get(room_chats, params={"is_waiting_response": "0"})).json()
        everything = (await client.get(room_chats)).json()
        bad = await client.get(room_chats, params={"is_waiting_response": "yes"})
    assert [c["id"] for c in only_waiting["results"]] == [waiting["id"]]
    assert [c["id"] for c in not_waiting["results"]] == [quiet["id"]]
    assert [c["id"] for c in everything["results"]] == [quiet["id"], waiting["id"]]
    assert bad.status_code == 400 and "is_waiting_response" in bad.json()["errors"]


async def test_ended_chats_leave_the_room_and_refuse_posts_and_joins(world: World) -> None:
    ada = world.users[0]
    async with world.org_client as client:
        chat = (await client.post(chats_path(world), params={"auto_resume": ada["id"]})).json()
        ended = await client.patch(world.path(f"/chats/{chat['id']}"), json={"is_ended": True})
        assert ended.status_code == 200
        twice = await client.patch(world.path(f"/chats/{chat['id']}"), json={"is_ended": True})
        assert twice.json()["end_time"] == ended.json()["end_time"]
        post = await client.post(
            world.path(f"/chats/{chat['id']}/messages"),
            json={"sender_id": ada["id"], "message": "late"},
        )
        join = await client.post(
            world.path(f"/chats/{chat['id']}/presences"), json={"user_id": ada["id"]}
        )
        room = (await client.get(world.path(f"/rooms/{world.room['id']}/chats"))).json()
        current = (await client.get(world.path(f"/users/{ada['id']}/current_chats"))).json()
        mine = (await client.get(world.path(f"/users/{ada['id']}/chats"))).json()
        history = (await client.get(world.path(f"/chats/{chat['id']}/messages"))).json()["results"]
    assert post.status_code == join.status_code == 400
    assert post.json()["code"] == join.json()["code"] == "chat_ended"
    assert room["results"] == [] and current["results"] == []
    assert [c["id"] for c in mine["results"]] == [chat["id"]]  # a chat never leaves a user's chats
    assert [m["type"] for m in history] == ["join", "leave"]


async def test_user_chats_and_current_chats(world: World) -> None:
    ada, alan = world.users
    async with world.org_client as client:
        other_visitor = await make_visitor(client, world.org["id"])
        first = (await client.post(chats_path(world))).json()
        second = (await client.post(chats_path(world, visitor=other_visitor))).json()
        third = (await client.post(chats_path(world))).json()
        # Ada joins third, then first; posts (without presence) to second
        for chat in (third, first):
            await client.post(
                world.path(f"/chats/{chat['id']}/presences"), json={"user_id": ada["id"]}
            )
        await client.post(
            world.path(f"/chats/{second['id']}/messages"),
            json={"sender_id": ada["id"], "message": "hi"},
        )
        await client.delete(world.path(f"/chats/{third['id']}/presences/{ada['id']}"))
        chats = (await client.get(world.path(f"/users/{ada['id']}/chats"))).json()["results"]
        current = (await client.get(world.path(f"/users/{ada['id']}/current_chats"))).json()[
            "results"
        ]
        alan_chats = (await client.get(world.path(f"/users/{alan['id']}/chats"))).json()["results"]
    assert [c["id"] for c in chats] == [first["id"], second["id"], third["id"]]  # creation order
    assert [c["id"] for c in current] == [first["id"]]
    assert alan_chats == []
    async with world.client(alan["token"]) as as_alan:
        assert (await as_alan.get(world.path(f"/users/{ada['id']}/chats"))).status_code == 403
        assert (
            await as_alan.get(world.path(f"/users/{ada['id']}/current_chats"))
        ).status_code == 403
        assert (
            await as_alan.get(world.path(f"/users/{alan['id']}/current_chats"))
        ).status_code == 200


async def test_shared_room_is_served_by_the_partner_org(
    world: World, admin: httpx.AsyncClient
) -> None:
    partner = await make_org(admin, "Partner")
    async with world.org_client as client:
        await client.post(
            world.path(f"/rooms/{world.room['id']}/shares"), json={"organization_id": partner["id"]}
        )
        chat = (await client.post(chats_path(world))).json()
    async with world.server.client(partner["token"]) as as_partner:
        helper = await make_user(as_partner, partner["id"], "Helper")
        base = f"/api/v5/orgs/{partner['id']}"
        room_chats = (await as_partner.get(f"{base}/rooms/{world.room['id']}/chats")).json()
        join = await as_partner.post(
            f"{base}/chats/{chat['id']}/presences", json={"user_id": helper["id"]}
        )
        private_room = await as_partner.get(f"{base}/rooms/{world.private_room['id']}/chats")
    assert [c["id"] for c in room_chats["results"]] == [chat["id"]]
    assert join.status_code == 201
    assert private_room.status_code == 404  # not shared: as if it did not exist


async def test_patch_sets_privacy(world: World) -> None:
    async with world.org_client as client:
        chat = (await client.post(chats_path(world))).json()
        patched = await client.patch(world.path(f"/chats/{chat['id']}"), json={"is_private": True})
        bad = await client.patch(world.path(f"/chats/{chat['id']}"), json={"is_private": "yes"})
        view = (await client.get(world.path(f"/rooms/{world.room['id']}/chats"))).json()["results"][
            0
        ]
    assert patched.status_code == 200 and patched.json()["is_private"] is True
    assert bad.status_code == 400 and "is_private" in bad.json()["errors"]
    assert view["is_private"] is True
