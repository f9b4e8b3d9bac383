"""Directory and authentication over real HTTP."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import ADMIN_TOKEN, Server, World, make_org, make_room, make_user, make_visitor


async def test_org_creation_is_admin_only(server: Server, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin, "First")
    assert set(org) == {"id", "name", "created_at", "token"}
    async with server.client(org["token"]) as as_org:
        response = await as_org.post("/api/v5/orgs", json={"name": "Second"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    async with server.client() as anonymous:
        response = await anonymous.post("/api/v5/orgs", json={"name": "x"})
    assert response.status_code == 401 and response.json()["code"] == "not_authenticated"
    async with server.client("not-a-token") as bad:
        assert (await bad.get(f"/api/v5/orgs/{org['id']}")).status_code == 401


async def test_org_visibility(world: World, admin: httpx.AsyncClient) -> None:
    other = await make_org(admin, "Other")
    org_id = world.org["id"]
    assert (await admin.get(f"/api/v5/orgs/{org_id}")).json()["name"] == "Acme"
    async with world.org_client as client:
        assert (await client.get(f"/api/v5/orgs/{org_id}")).status_code == 200
        assert (await client.get(f"/api/v5/orgs/{other['id']}")).status_code == 403
    assert (await admin.get("/api/v5/orgs/8d1c3a52-1111-4222-8333-444455556666")).status_code == 404
    async with world.client(world.users[0]["token"]) as as_user:
        assert (await as_user.get(f"/api/v5/orgs/{org_id}")).status_code == 403
    async with world.client(world.visitor["token"]) as as_visitor:
        response = await as_visitor.get(world.path("/rooms"))
    assert response.status_code == 403


async def test_rooms_own_and_shared_oldest_first(world: World, admin: httpx.AsyncClient) -> None:
    partner = await make_org(admin, "Partner")
    async with world.server.client(partner["token"]) as as_partner:
        partner_room = await make_room(as_partner, partner["id"], "Partner room")
        response = await as_partner.post(
            f"/api/v5/orgs/{partner['id']}/rooms/{partner_room['id']}/shares",
            json={"organization_id": world.org["id"]},
        )
        assert response.status_code == 201
        # sharing again is harmless
        again = await as_partner.post(
            f"/api/v5/orgs/{partner['id']}/rooms/{partner_room['id']}/shares",
            json={"organization_id": world.org["id"]},
        )
        assert again.status_code == 201
        bad = await as_partner.post(
            f"/api/v5/orgs/{partner['id']}/rooms/{partner_room['id']}/shares",
            json={"organization_id": "8d1c3a52-1111-4222-8333-444455556666"},
        )
        assert bad.status_code == 400 and "organization_id" in bad.json()["errors"]
    async with world.org_client as client:
        rooms = (await client.get(world.path("/rooms"))).json()
        # a shared room may not be re-shared by the org it is shared with
        reshare = await client.post(
            world.path(f"/rooms/{partner_room['id']}/shares"),
            json={"organization_id": partner["id"]},
        )
    assert [room["name"] for room in rooms["results"]] == ["Sales", "VIP", "Partner room"]
    assert rooms["previous"] is None and rooms["next"] is None
    assert reshare.status_code == 403
    room = rooms["results"][0]
    assert set(room) == {"id", "name", "organization_id", "private_chats", "created_at"}


async def test_only_admin_and_org_create_rooms_and_users(world: World) -> None:
    async with world.client(world.users[0]["token"]) as as_user:
        response = await as_user.post(world.path("/rooms"), json={"name": "Nope"})
        assert response.status_code == 403
        response = await as_user.post(
            world.path("/users"), json={"first_name": "a", "last_name": "b", "alias": "c"}
        )
        assert response.status_code == 403
        # but an operator may read its org's rooms and users
        assert (await as_user.get(world.path("/rooms"))).status_code == 200
        assert (await as_user.get(world.path(f"/users/{world.users[1]['id']}"))).status_code == 200


async def test_user_fields_and_room_restrictions(world: World, admin: httpx.AsyncClient) -> None:
    async with world.org_client as client:
        user = await make_user(client, world.org["id"], "Grace", room_ids=[world.room["id"]])
        assert user["full_name"] == "Grace Tester" and user["room_ids"] == [world.room["id"]]
        assert set(user) == {
            "id",
            "organization_id",
            "first_name",
            "last_name",
            "full_name",
            "alias",
            "room_ids",
            "created_at",
            "token",
        }
        fetched = (await client.get(world.path(f"/users/{user['id']}"))).json()
        assert "token" not in fetched and fetched["id"] == user["id"]
        other = await make_org(admin, "Other")
        async with world.server.client(other["token"]) as as_other:
            foreign_room = await make_room(as_other, other["id"], "Theirs")
            foreign_user = await make_user(as_other, other["id"], "Zed")
        response = await client.post(
            world.path("/users"),
            json={
                "first_name": "X",
                "last_name": "Y",
                "alias": "Z",
                "room_ids": [foreign_room["id"]],
            },
        )
        assert response.status_code == 400 and "room_ids" in response.json()["errors"]
        # a user of another org is not found, exactly like an unknown one
        assert (await client.get(world.path(f"/users/{foreign_user['id']}"))).status_code == 404


async def test_visitor_registration_rules(world: World, admin: httpx.AsyncClient) -> None:
    async with world.org_client as client:
        first = await make_visitor(client, world.org["id"])
        assert len(first["id"]) == 32 and first["token"]
        again = await client.post(world.path("/visitors"), json={"id": first["id"]})
        assert again.status_code == 200 and again.json()["token"] != first["token"]
        chosen = await client.post(world.path("/visitors"), json={"id": "ab" * 16})
        assert chosen.status_code == 201 and chosen.json()["id"] == "ab" * 16
        bad = await client.post(world.path("/visitors"), json={"id": "ABC"})
        assert bad.status_code == 400 and "id" in bad.json()["errors"]
    # the old token stops working: 401; the new one is a valid (visitor) token: 403 here
    async with world.client(first["token"]) as old:
        assert (await old.get(world.path("/rooms"))).status_code == 401
    async with world.client(again.json()["token"]) as new:
        assert (await new.get(world.path("/rooms"))).status_code == 403
    other = await make_org(admin, "Other")
    async with world.server.client(other["token"]) as as_other:
        taken = await as_other.post(
            f"/api/v5/orgs/{other['id']}/visitors", json={"id": first["id"]}
        )
    assert taken.status_code == 409 and taken.json() == {
        "code": "conflict",
        "detail": "This visitor id is not available.",
    }


async def test_open_registration_is_rate_limited(server: Server) -> None:
    async with server.client() as anonymous:
        statuses = []
        started = trio.current_time()
        for _ in range(25):  # the burst is 20 per client address, refilled at 5 a second
            response = await anonymous.post("/api/v5/client/visitors")
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
                assert response.json()["code"] == "rate_limited"
        elapsed = trio.current_time() - started
        assert statuses[0] == 201 and 429 in statuses
        created = [s for s in statuses if s == 201]
        # the bucket refills in real time while the 25 requests run (a slow machine
        # takes more than 0.2 s over them): at most one more token per 0.2 s
        assert 20 <= len(created) <= 20 + int(elapsed * 5)


async def test_admin_token_works_everywhere(world: World) -> None:
    async with world.server.client(ADMIN_TOKEN) as admin:
        assert (await admin.get(world.path("/rooms"))).status_code == 200
        assert (
            await admin.get(world.path(f"/users/{world.users[0]['id']}/chats"))
        ).status_code == 200


async def test_an_open_visitor_joins_the_org_of_its_first_chat(
    world: World, admin: httpx.AsyncClient
) -> None:
    async with world.server.client() as anonymous:
        opened = (await anonymous.post("/api/v5/client/visitors")).json()
    other = await make_org(admin, "Other")
    async with world.client(opened["token"]) as as_visitor:
        chat = await as_visitor.post(
            f"/api/v5/client/visitors/{opened['id']}/rooms/{world.room['id']}/chats"
        )
    assert chat.status_code == 201 and chat.json()["organization_id"] == world.org["id"]
    async with world.server.client(other["token"]) as as_other:  # now it is Acme's
        taken = await as_other.post(
            f"/api/v5/orgs/{other['id']}/visitors", json={"id": opened["id"]}
        )
    assert taken.status_code == 409
    async with world.org_client as client:  # Acme may re-key it
        rekeyed = await client.post(world.path("/visitors"), json={"id": opened["id"]})
    assert rekeyed.status_code == 200
