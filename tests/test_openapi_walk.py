"""/openapi.json against the server's real answers: every API route is called over TCP on
a real server, and each answer (status and body) must be one the document describes:
a success status it lists, with a body valid against that status's schema, or an error
valid against the error schema. The walk must reach every operation the document lists,
so a new route without a walk step (or without a response schema) fails here."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import trio
from jsonschema import Draft202012Validator

from engine import shapes
from tests.conftest import ADMIN_TOKEN, Server, World, make_org, start_server
from tests.wsclient import ws_connect


@pytest.fixture
async def server(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The shared fixture's server, allowing webhook targets on 127.0.0.1."""
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    return await start_server(nursery, "--webhook-allow", "127.0.0.1")


def references(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["$ref"]] if "$ref" in schema else []
        return found + [ref for value in schema.values() for ref in references(value)]
    if isinstance(schema, list):
        return [ref for value in schema for ref in references(value)]
    return []


def test_every_shape_is_a_valid_schema_whose_references_resolve() -> None:
    for schema in shapes.SCHEMAS.values():
        Draft202012Validator.check_schema(schema)
    targets = {ref.removeprefix(shapes.COMPONENTS) for ref in references(shapes.SCHEMAS)}
    assert targets <= set(shapes.SCHEMAS)
    assert {"Cart", "Product", "LogEntry", "Tag", "ApiData"} <= targets


class Walk:
    def __init__(self, server: Server, document: dict[str, Any]) -> None:
        self.server = server
        self.document = document
        self.seen: set[tuple[str, str]] = set()
        self.errors_seen = 0

    def operations(self) -> set[tuple[str, str]]:
        return {
            (method.upper(), path)
            for path, operations in self.document["paths"].items()
            for method in operations
        }

    async def call(
        self,
        token: str | None,
        method: str,
        template: str,
        *,
        expect: int,
        json: Any = None,
        params: dict[str, str] | None = None,
        **path: str,
    ) -> Any:
        operation = self.document["paths"][template][method.lower()]
        url = template.format(**path)
        async with self.server.client(token) as client:
            response = await client.request(method, url, json=json, params=params)
        assert response.status_code == expect, (method, url, response.text)
        self.check(operation, response)
        if response.status_code < 300:
            self.seen.add((method, template))
        return response.json() if response.content else None

    def check(self, operation: dict[str, Any], response: httpx.Response) -> None:
        answers = operation["responses"]
        status = str(response.status_code)
        if response.status_code >= 400:
            answer = answers["default"]
            self.errors_seen += 1
        else:
            assert status in answers, f"{status} is not in the document: {sorted(answers)}"
            answer = answers[status]
        if "content" not in answer:
            assert response.content == b"", "an answer the document says has no body"
            return
        assert response.headers["content-type"].startswith("application/json")
        schema = {
            **answer["content"]["application/json"]["schema"],
            "components": self.document["components"],
        }
        Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(
            response.json()
        )


async def test_every_route_answers_as_openapi_json_describes(world: World) -> None:
    server = world.server
    async with server.client() as anonymous:
        document = (await anonymous.get("/openapi.json")).json()
    walk = Walk(server, document)
    org_id, org_token = world.org["id"], world.org["token"]
    ada, alan = world.users
    visitor = world.visitor
    room_id = world.room["id"]
    admin = ADMIN_TOKEN
    orgs = "/api/v5/orgs"
    org = orgs + "/{org_id}"
    ids = {"org_id": org_id}

    # the directory
    async with server.client(ADMIN_TOKEN) as client:
        other = await make_org(client, "Other")
    await walk.call(admin, "POST", orgs, expect=201, json={"name": "Initech"})
    await walk.call(org_token, "GET", org, expect=200, **ids)
    await walk.call(ada["token"], "GET", "/api/v5/me", expect=200)
    await walk.call(visitor["token"], "GET", "/api/v5/me", expect=200)
    room = await walk.call(
        org_token, "POST", org + "/rooms", expect=201, json={"name": "Support"}, **ids
    )
    await walk.call(org_token, "GET", org + "/rooms", expect=200, **ids)
    await walk.call(
        org_token,
        "POST",
        org + "/rooms/{room_id}/shares",
        expect=201,
        json={"organization_id": other["id"]},
        room_id=room["id"],
        **ids,
    )
    grace = await walk.call(
        org_token,
        "POST",
        org + "/users",
        expect=201,
        json={"first_name": "Grace", "last_name": "Hopper", "alias": "Grace", "room_ids": None},
        **ids,
    )
    await walk.call(
        ada["token"], "GET", org + "/users/{user_id}", expect=200, user_id=grace["id"], **ids
    )
    mapped = "0123456789abcdef0123456789abcdef"
    for status in (201, 200):  # registered, then re-keyed
        await walk.call(
            org_token, "POST", org + "/visitors", expect=status, json={"id": mapped}, **ids
        )
    await walk.call(
        org_token,
        "PUT",
        org + "/visitors/{visitor_id}/api_data",
        expect=200,
        json=[{"name": "name", "value": "Vera"}, {"name": "plan", "value": {"tier": 2}}],
        visitor_id=visitor["id"],
        **ids,
    )

    # listings, and an org's signed-token keys (an HS256 secret is never shown back)
    await walk.call(admin, "GET", orgs, expect=200, params={"page_size": "1"})
    await walk.call(ada["token"], "GET", org + "/users", expect=200, **ids)
    keys = [{"kid": "app-1", "algorithm": "HS256", "key": "s3cret-" * 6}]
    shown = await walk.call(org_token, "PUT", org + "/jwt_keys", expect=200, json=keys, **ids)
    assert shown == [{"kid": "app-1", "algorithm": "HS256"}]
    await walk.call(org_token, "GET", org + "/jwt_keys", expect=200, **ids)
    await walk.call(
        org_token, "POST", org + "/users/{user_id}/token", expect=200, user_id=grace["id"], **ids
    )

    # a chat started by Ada (auto_resume), then resumed
    start = org + "/rooms/{room_id}/visitors/{visitor_id}/chats"
    where = {"room_id": room_id, "visitor_id": visitor["id"], **ids}
    chat = await walk.call(
        ada["token"], "POST", start, expect=201, params={"auto_resume": ada["id"]}, **where
    )
    await walk.call(
        ada["token"], "POST", start, expect=200, json={"auto_resume": ada["id"]}, **where
    )
    in_chat = {"chat_id": chat["id"], **ids}

    # the visitor's side: open registration, its chats, writing, reading
    await walk.call(None, "POST", "/api/v5/client/visitors", expect=201)
    mine = "/api/v5/client/visitors/{visitor_id}"
    own = {"visitor_id": visitor["id"]}
    await walk.call(
        visitor["token"],
        "POST",
        mine + "/rooms/{room_id}/chats",
        expect=200,
        json={"auto_resume": True},
        room_id=room_id,
        **own,
    )
    await walk.call(
        visitor["token"],
        "POST",
        mine + "/rooms/{room_id}/chats",
        expect=201,
        json={"auto_resume": False},
        room_id=room["id"],
        **own,
    )
    await walk.call(visitor["token"], "GET", mine + "/chats", expect=200, **own)
    visitor_chat = {"chat_id": chat["id"], **own}
    await walk.call(
        visitor["token"],
        "POST",
        mine + "/chats/{chat_id}/messages",
        expect=201,
        json={"message": "Hi, is the blue one in stock?", "page_url": "https://shop.example/blue"},
        **visitor_chat,
    )

    # the operators: messages, presences, participations, tags, carts
    messages = org + "/chats/{chat_id}/messages"
    await walk.call(
        ada["token"],
        "POST",
        messages,
        expect=201,
        json={"sender_id": ada["id"], "message": "It is. Shall I reserve one?"},
        **in_chat,
    )
    await walk.call(
        org_token,
        "POST",
        messages,
        expect=201,
        json={"sender_id": alan["id"], "message": "See also", "type": "autosuggest"},
        **in_chat,
    )
    await walk.call(org_token, "GET", messages, expect=200, params={"page_size": "2"}, **in_chat)
    presences = org + "/chats/{chat_id}/presences"
    for status in (201, 200):  # joined, then already present
        await walk.call(
            alan["token"], "POST", presences, expect=status, json={"user_id": alan["id"]}, **in_chat
        )
    await walk.call(org_token, "GET", presences, expect=200, **in_chat)
    await walk.call(
        alan["token"], "DELETE", presences + "/{user_id}", expect=204, user_id=alan["id"], **in_chat
    )
    await walk.call(
        org_token,
        "GET",
        org + "/users/{user_id}/chats/{chat_id}/participations",
        expect=200,
        user_id=alan["id"],
        **in_chat,
    )
    await walk.call(
        org_token,
        "GET",
        org + "/rooms/{room_id}/chats",
        expect=200,
        params={"is_waiting_response": "false"},
        room_id=room_id,
        **ids,
    )
    for path in ("/chats", "/current_chats"):
        await walk.call(
            ada["token"],
            "GET",
            org + "/users/{user_id}" + path,
            expect=200,
            user_id=ada["id"],
            **ids,
        )
    tags = org + "/chats/{chat_id}/tags"
    await walk.call(org_token, "POST", tags, expect=201, json={"name": "lead"}, **in_chat)
    await walk.call(org_token, "DELETE", tags + "/{name}", expect=204, name="absent", **in_chat)
    carts = org + "/chats/{chat_id}/shopping_carts"
    product = {
        "name": "Blue chair",
        "price": "49.90",
        "quantity": 2,
        "monthly_price": "5.00",
        "monthly_quantity": 12,
    }
    cart = await walk.call(
        org_token,
        "POST",
        carts,
        expect=201,
        json={"currency": "EUR", "products": [product]},
        **in_chat,
    )
    in_cart = {"cart_id": cart["id"], **in_chat}
    added = await walk.call(
        org_token,
        "POST",
        carts + "/{cart_id}/products",
        expect=201,
        json={**product, "name": "Cushion", "price": "9.99", "quantity": 1},
        **in_cart,
    )
    await walk.call(
        org_token,
        "DELETE",
        carts + "/{cart_id}/products/{product_id}",
        expect=204,
        product_id=added["id"],
        **in_cart,
    )
    await walk.call(
        org_token, "PATCH", carts + "/{cart_id}", expect=200, json={"locked": True}, **in_cart
    )
    await walk.call(org_token, "GET", org + "/chats/{chat_id}", expect=200, **in_chat)
    await walk.call(
        org_token,
        "PATCH",
        org + "/chats/{chat_id}",
        expect=200,
        json={"is_private": True},
        **in_chat,
    )
    await walk.call(
        org_token,
        "GET",
        org + "/chats",
        expect=200,
        params={"ordering": "-start_time", "page_size": "1", "has_sales": "true", "tag": "lead"},
        **ids,
    )

    # the visitor reads what the operators did, then ends the chat
    for suffix in ("", "/presences", "/participations", "/messages"):
        await walk.call(
            visitor["token"], "GET", mine + "/chats/{chat_id}" + suffix, expect=200, **visitor_chat
        )
    await walk.call(
        visitor["token"],
        "PATCH",
        mine + "/chats/{chat_id}",
        expect=200,
        json={"is_ended": True},
        **visitor_chat,
    )

    # webhooks (nothing listens on port 9: the delivery fails, which the walk ignores)
    hooks = org + "/webhooks"
    hook = await walk.call(
        org_token,
        "POST",
        hooks,
        expect=201,
        json={"url": "http://127.0.0.1:9/hook", "events": ["chat.created"], "secret": "s" * 16},
        **ids,
    )
    await walk.call(org_token, "GET", hooks, expect=200, **ids)
    hook_ids = {"org_id": org_id, "webhook_id": hook["id"]}
    await walk.call(org_token, "GET", hooks + "/{webhook_id}/deliveries", expect=200, **hook_ids)
    await walk.call(org_token, "DELETE", hooks + "/{webhook_id}", expect=204, **hook_ids)

    # errors are answers the document describes too
    await walk.call(
        org_token,
        "GET",
        org + "/chats/{chat_id}",
        expect=404,
        chat_id="00000000-0000-4000-8000-000000000000",
        org_id=org_id,
    )
    await walk.call(
        ada["token"],
        "POST",
        messages,
        expect=400,
        json={"sender_id": ada["id"], "message": " "},
        **in_chat,
    )
    await walk.call(None, "GET", org, expect=401, **ids)
    # last: a new org token (the one used above stops working)
    rotated = await walk.call(admin, "POST", org + "/token", expect=200, **ids)
    assert rotated["token"] != org_token

    assert walk.errors_seen == 3
    assert walk.seen == walk.operations(), sorted(walk.operations() - walk.seen)
    # and the document lists exactly the API's routes
    assert all(re.match(r"^/api/v5/", path) for path in document["paths"])


def channel_shape(channel: str) -> str:
    """The shape of a channel's items: a channel is the path of the collection it
    mirrors (docs/protocol.md), and a visitor's channels show the visitor's view."""
    visitor = channel.startswith("/api/v5/client/")
    last = channel.rsplit("/", 1)[-1]
    if last in ("chats", "current_chats"):
        return "ChatCollection"
    if last == "participations":
        return "Participation"
    kind = {"messages": "Message", "presences": "Presence"}[last]
    return "Visitor" + kind if visitor else kind


async def test_every_event_resource_has_its_collections_shape(world: World) -> None:
    """An ``added`` event carries the resource exactly as its collection shows it over
    HTTP, a ``changed`` one some of its fields (with ``id`` and ``updated_at``), a
    ``removed`` one none, on every channel family."""
    server = world.server
    org_id, org_token = world.org["id"], world.org["token"]
    ada, alan = world.users
    visitor = world.visitor
    org = f"/api/v5/orgs/{org_id}"
    room_chats = f"{org}/rooms/{world.room['id']}/chats"
    visitor_chats = f"/api/v5/client/visitors/{visitor['id']}/chats"
    async with server.client(ada["token"]) as client:
        answer = await client.post(
            f"{room_chats.replace('/chats', '')}/visitors/{visitor['id']}/chats",
            params={"auto_resume": ada["id"]},
        )
    chat_id = answer.json()["id"]
    channels = [
        room_chats,
        visitor_chats,
        f"{org}/users/{ada['id']}/chats",
        f"{org}/users/{alan['id']}/current_chats",
        f"{org}/users/{alan['id']}/current_chats/{chat_id}/presences",
        *(
            f"{parent}/{chat_id}/{sub}"
            for parent in (room_chats, visitor_chats, f"{org}/users/{ada['id']}/chats")
            for sub in ("messages", "presences", "participations")
        ),
    ]
    validators = {
        name: Draft202012Validator({**shapes.ref(name), "components": {"schemas": shapes.SCHEMAS}})
        for name in shapes.SCHEMAS
    }
    async with ws_connect(server.base_url, ADMIN_TOKEN) as session:
        for channel in channels:
            answer = await session.subscribe(channel, since=0)  # the chat's creation too
            assert answer["type"] == "subscribed", answer
        async with server.client(visitor["token"]) as client:
            posted = await client.post(
                f"{visitor_chats}/{chat_id}/messages", json={"message": "Hi"}
            )
            assert posted.status_code == 201
        async with server.client(alan["token"]) as client:
            presences = f"{org}/chats/{chat_id}/presences"
            joined = await client.post(presences, json={"user_id": alan["id"]})
            assert joined.status_code == 201
            wrote = await client.post(
                f"{org}/chats/{chat_id}/messages",
                json={"sender_id": alan["id"], "message": "Hello"},
            )
            assert wrote.status_code == 201
            assert (await client.delete(f"{presences}/{alan['id']}")).status_code == 204
        async with server.client(org_token) as client:
            ended = await client.patch(f"{org}/chats/{chat_id}", json={"is_ended": True})
            assert ended.status_code == 200
        await session.barrier()
        events = session.take_events()

    seen = set()
    for event in events:
        shape = channel_shape(event["channel"])
        schema = shapes.SCHEMAS[shape]
        if event["action"] == "added":
            validators[shape].validate(event["resource"])
        elif event["action"] == "changed":
            resource = event["resource"]
            assert {"id", "updated_at"} <= set(resource), event
            for field, value in resource.items():
                assert field in schema["properties"], (field, event)
                Draft202012Validator(schema["properties"][field]).validate(value)
        else:
            assert event["action"] == "removed" and event.get("resource") is None, event
        seen.add((shape, event["action"]))
    assert {
        ("ChatCollection", "added"),
        ("ChatCollection", "changed"),
        ("ChatCollection", "removed"),
        ("Message", "added"),
        ("VisitorMessage", "added"),
        ("Presence", "added"),
        ("Presence", "removed"),
        ("VisitorPresence", "added"),
        ("Participation", "added"),
    } <= seen
