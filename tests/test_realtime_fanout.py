"""The channel fan-out, table-driven: for each mutation, exactly which (channel, action) pairs
are emitted — over every candidate channel, silent ones included — with nothing else."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN, World, make_org, make_user, make_visitor
from tests.wsclient import WsClient, ws_connect

SUBS = ("presences", "messages", "participations")


class Scene:
    """Org O owns room R, shared with org P; org Q is unrelated. A, B are O's users, Z is
    P's. Visitors V and V2 are O's."""

    def __init__(self, world: World, partner: dict, stranger: dict, z: dict, v2: dict) -> None:
        self.world = world
        self.o, self.p, self.q = world.org["id"], partner["id"], stranger["id"]
        self.room = world.room["id"]
        self.a, self.b = world.users[0]["id"], world.users[1]["id"]
        self.z = z["id"]
        self.v, self.v2 = world.visitor["id"], v2["id"]
        self.org_of = {self.a: self.o, self.b: self.o, self.z: self.p}

    # channel names, spelled out independently of engine/channels.py
    def visitor_chats(self, visitor: str) -> str:
        return f"/api/v5/client/visitors/{visitor}/chats"

    def user_chats(self, user: str) -> str:
        return f"/api/v5/orgs/{self.org_of[user]}/users/{user}/chats"

    def room_chats(self, org: str) -> str:
        return f"/api/v5/orgs/{org}/rooms/{self.room}/chats"

    def current(self, user: str) -> str:
        return f"/api/v5/orgs/{self.org_of[user]}/users/{user}/current_chats"

    def collection_channels(self) -> list[str]:
        return (
            [self.visitor_chats(self.v), self.visitor_chats(self.v2)]
            + [self.user_chats(u) for u in (self.a, self.b, self.z)]
            + [self.room_chats(org) for org in (self.o, self.p, self.q)]
            + [self.current(u) for u in (self.a, self.b, self.z)]
        )

    def chat_channels(self, chat: str, visitor: str) -> list[str]:
        names = [f"{self.visitor_chats(visitor)}/{chat}/{s}" for s in SUBS]
        names += [
            f"{self.user_chats(u)}/{chat}/{s}" for u in (self.a, self.b, self.z) for s in SUBS
        ]
        names += [
            f"{self.room_chats(org)}/{chat}/{s}" for org in (self.o, self.p, self.q) for s in SUBS
        ]
        names += [f"{self.current(u)}/{chat}/presences" for u in (self.a, self.b, self.z)]
        return names

    # expected event sets, from the table of docs/protocol.md ("What each change sends")
    def chat_event(
        self,
        chat: str,
        visitor: str,
        users: list[str],
        action: str,
        entered: tuple[str, ...] = (),
        room_action: str | None = None,
    ) -> set:
        expected = {(self.visitor_chats(visitor), action)}
        expected |= {(self.user_chats(u), "added" if u in entered else action) for u in users}
        expected |= {(self.room_chats(org), room_action or action) for org in (self.o, self.p)}
        return expected

    def sub_event(self, chat: str, visitor: str, users: list[str], sub: str, action: str) -> set:
        expected = {(f"{self.visitor_chats(visitor)}/{chat}/{sub}", action)}
        expected |= {(f"{self.user_chats(u)}/{chat}/{sub}", action) for u in users}
        expected |= {(f"{self.room_chats(org)}/{chat}/{sub}", action) for org in (self.o, self.p)}
        return expected

    def presence_event(
        self, chat: str, visitor: str, users: list[str], present: list[str], action: str
    ) -> set:
        expected = self.sub_event(chat, visitor, users, "presences", action)
        return expected | {(f"{self.current(u)}/{chat}/presences", action) for u in present}


async def observe(client: WsClient, channels: list[str]) -> None:
    for channel in channels:
        answer = await client.subscribe(channel)
        assert answer["type"] == "subscribed", answer


async def collect(client: WsClient) -> list[dict[str, Any]]:
    await client.barrier()
    return client.take_events()


def pairs(events: list[dict[str, Any]]) -> set:
    found = [(e["channel"], e["action"]) for e in events]
    assert len(found) == len(set(found)), f"duplicate events: {found}"
    return set(found)


async def test_every_mutation_emits_exactly_its_events(
    world: World, admin: httpx.AsyncClient
) -> None:
    partner = await make_org(admin, "Partner")
    stranger = await make_org(admin, "Stranger")
    async with world.org_client as client:
        await client.post(
            world.path(f"/rooms/{world.room['id']}/shares"), json={"organization_id": partner["id"]}
        )
        v2 = await make_visitor(client, world.org["id"])
    async with world.server.client(partner["token"]) as as_partner:
        z = await make_user(as_partner, partner["id"], "Zed")
    scene = Scene(world, partner, stranger, z, v2)
    base = world.path()
    api = world.org_client
    engine = world.server.engine

    async with ws_connect(world.server.base_url, ADMIN_TOKEN) as ws, api:
        await observe(ws, scene.collection_channels())

        # 1. chat created (no auto_resume)
        c1 = (await api.post(f"{base}/rooms/{scene.room}/visitors/{scene.v}/chats")).json()["id"]
        live = await collect(ws)
        for channel in scene.chat_channels(c1, scene.v):  # replay what the new chat's channels got
            assert (await ws.subscribe(channel, since=0))["resumed"] is True
        events = live + await collect(ws)
        assert pairs(events) == (
            scene.chat_event(c1, scene.v, [], "added")
            | scene.sub_event(c1, scene.v, [], "participations", "added")
        )
        added = next(e for e in events if e["channel"] == scene.room_chats(scene.o))
        assert added["resource"]["id"] == c1 and added["resource_id"] == c1 and added["seq"] == 1

        # 2. chat created with auto_resume=A (for V2)
        c2 = (
            await api.post(
                f"{base}/rooms/{scene.room}/visitors/{scene.v2}/chats",
                params={"auto_resume": scene.a},
            )
        ).json()["id"]
        live = await collect(ws)
        for channel in scene.chat_channels(c2, scene.v2):
            await ws.subscribe(channel, since=0)
        events = live + await collect(ws)
        assert pairs(events) == (
            scene.chat_event(c2, scene.v2, [scene.a], "added")
            | scene.sub_event(c2, scene.v2, [scene.a], "participations", "added")
            | scene.presence_event(c2, scene.v2, [scene.a], [scene.a], "added")
            | scene.sub_event(c2, scene.v2, [scene.a], "messages", "added")
            | {(scene.current(scene.a), "added")}
        )
        chat_added = next(e for e in events if e["channel"] == scene.visitor_chats(scene.v2))
        assert chat_added["resource"]["currently_present_user_count"] == 1  # no intermediate state

        # 3. exclusive join of B to C1
        response = await api.post(
            f"{base}/chats/{c1}/presences", json={"user_id": scene.b, "exclusive": True}
        )
        assert response.status_code == 201
        events = await collect(ws)
        assert pairs(events) == (
            scene.chat_event(c1, scene.v, [scene.b], "changed", entered=(scene.b,))
            | scene.presence_event(c1, scene.v, [scene.b], [scene.b], "added")
            | scene.sub_event(c1, scene.v, [scene.b], "messages", "added")
            | {(scene.current(scene.b), "added")}
        )
        changed = next(e for e in events if e["channel"] == scene.room_chats(scene.o))
        assert set(changed["resource"]) == {"id", "updated_at", "currently_present_user_count"}
        visitor_presence = next(
            e for e in events if e["channel"] == f"{scene.visitor_chats(scene.v)}/{c1}/presences"
        )
        assert set(visitor_presence["resource"]) == {"user_id", "chat_id", "user"}
        assert set(visitor_presence["resource"]["user"]) == {"id", "alias"}

        # a refused exclusive join emits nothing
        refused = await api.post(
            f"{base}/chats/{c1}/presences", json={"user_id": scene.a, "exclusive": True}
        )
        assert refused.status_code == 400
        assert await collect(ws) == []

        # 4. plain join of A to C1 (B present): current presences of both hear it
        await api.post(f"{base}/chats/{c1}/presences", json={"user_id": scene.a})
        events = await collect(ws)
        users = [scene.a, scene.b]
        assert pairs(events) == (
            scene.chat_event(c1, scene.v, users, "changed", entered=(scene.a,))
            | scene.presence_event(c1, scene.v, users, users, "added")
            | scene.sub_event(c1, scene.v, users, "messages", "added")
            | {(scene.current(scene.a), "added")}
        )

        # 5. message by the visitor
        chat = engine.state.chats[c1]
        await engine.chats.post(
            chat,
            sender_type="visitor",
            sender_id=scene.v,
            type="msg",
            message="Hello?",
            page_url="http://shop/",
            page_title="Shop",
        )
        events = await collect(ws)
        assert pairs(events) == (
            scene.chat_event(c1, scene.v, users, "changed")
            | scene.sub_event(c1, scene.v, users, "messages", "added")
        )
        changed = next(e for e in events if e["channel"] == scene.visitor_chats(scene.v))
        assert set(changed["resource"]) == {
            "id",
            "updated_at",
            "message_count",
            "visitor_message_count",
            "is_waiting_response",
            "first_visitor_message_url",
            "first_visitor_message_url_title",
        }
        message = next(
            e for e in events if e["channel"] == f"{scene.visitor_chats(scene.v)}/{c1}/messages"
        )
        assert "sender_name" not in message["resource"]

        # 6. message by a new participant user (Z, of the partner org, never present)
        async with world.server.client(partner["token"]) as as_partner:
            response = await as_partner.post(
                f"/api/v5/orgs/{scene.p}/chats/{c1}/messages",
                json={"sender_id": scene.z, "message": "Hi!"},
            )
            assert response.status_code == 201
        events = await collect(ws)
        users = [scene.a, scene.b, scene.z]
        assert pairs(events) == (
            scene.chat_event(c1, scene.v, users, "changed", entered=(scene.z,))
            | scene.sub_event(c1, scene.v, users, "messages", "added")
            | scene.sub_event(c1, scene.v, users, "participations", "added")
        )

        # 7. A leaves: A still hears its own leave
        assert (await api.delete(f"{base}/chats/{c1}/presences/{scene.a}")).status_code == 204
        events = await collect(ws)
        assert pairs(events) == (
            scene.chat_event(c1, scene.v, users, "changed")
            | scene.presence_event(c1, scene.v, users, [scene.a, scene.b], "removed")
            | scene.sub_event(c1, scene.v, users, "messages", "added")
            | {(scene.current(scene.a), "removed")}
        )
        assert all(
            "resource" not in e or e["resource"] is None for e in events if e["action"] == "removed"
        )

        # 8. B's presence expires: the same events as a DELETE
        engine.reachability.ledger.touch(scene.b, float("-inf"))
        engine.reachability.ledger.started_at = float("-inf")
        assert await engine.reachability.sweep_once() >= 1
        events = await collect(ws)
        users = [scene.b, scene.z]
        assert pairs(events) == (
            scene.chat_event(c1, scene.v, users, "changed")
            | scene.presence_event(c1, scene.v, users, [scene.b], "removed")
            | scene.sub_event(c1, scene.v, users, "messages", "added")
            | {(scene.current(scene.b), "removed")}
        )
        assert engine.state.chats[c1].presences == {}

        # 9. resume: auto_resume=B finds C1 again; B was present before, so "changed" on its chats
        resumed = await api.post(
            f"{base}/rooms/{scene.room}/visitors/{scene.v}/chats", params={"auto_resume": scene.b}
        )
        assert resumed.status_code == 200 and resumed.json()["id"] == c1
        events = await collect(ws)
        assert pairs(events) == (
            scene.chat_event(c1, scene.v, users, "changed")
            | scene.presence_event(c1, scene.v, users, [scene.b], "added")
            | scene.sub_event(c1, scene.v, users, "messages", "added")
            | {(scene.current(scene.b), "added")}
        )
        # resuming where B already is emits nothing
        again = await api.post(
            f"{base}/rooms/{scene.room}/visitors/{scene.v}/chats", params={"auto_resume": scene.b}
        )
        assert again.status_code == 200 and await collect(ws) == []

        # 10. C2 ends with A present: one changed chat, removed from rooms, then A's leave
        assert (await api.patch(f"{base}/chats/{c2}", json={"is_ended": True})).status_code == 200
        events = await collect(ws)
        assert pairs(events) == (
            scene.chat_event(c2, scene.v2, [scene.a], "changed", room_action="removed")
            | scene.presence_event(c2, scene.v2, [scene.a], [scene.a], "removed")
            | scene.sub_event(c2, scene.v2, [scene.a], "messages", "added")
            | {(scene.current(scene.a), "removed")}
        )
        ended = next(e for e in events if e["channel"] == scene.visitor_chats(scene.v2))
        assert ended["resource"]["end_time"] is not None
        assert ended["resource"]["currently_present_user_count"] == 0
        # order within the batch: the changed chat comes before the leave
        order = [e["channel"] for e in events]
        assert order.index(scene.user_chats(scene.a)) < order.index(scene.current(scene.a))
        # ending twice emits nothing
        await api.patch(f"{base}/chats/{c2}", json={"is_ended": True})
        assert await collect(ws) == []

        # 11. is_private set by PATCH
        await api.patch(f"{base}/chats/{c1}", json={"is_private": True})
        events = await collect(ws)
        assert pairs(events) == scene.chat_event(c1, scene.v, users, "changed")

        # 12. a tag: a changed chat (tag_count) on the chats families, nothing on current
        # chats or presences; adding it again, or removing an absent tag, emits nothing
        await api.post(f"{base}/chats/{c1}/tags", json={"name": "vip"})
        events = await collect(ws)
        assert pairs(events) == scene.chat_event(c1, scene.v, users, "changed")
        tagged = next(e for e in events if e["channel"] == scene.visitor_chats(scene.v))
        assert set(tagged["resource"]) == {"id", "updated_at", "tag_count"}
        await api.post(f"{base}/chats/{c1}/tags", json={"name": "vip"})
        await api.delete(f"{base}/chats/{c1}/tags/absent")
        assert await collect(ws) == []
