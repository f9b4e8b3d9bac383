"""Bad input never yields a 5xx and never changes state.

The engine's sequence number moves on every applied fact, so "state unchanged" is
checked exactly by comparing it before and after each bad request.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import pytest
import trio

from engine.actors.supervisor import Engine
from engine.ids import hash_token
from gateway.app import GatewaySettings, create_app
from tests.conftest import World

FOREIGN_UUID = "8d1c3a52-1111-4222-8333-444455556666"


async def bad_requests(
    world: World, client: httpx.AsyncClient
) -> list[tuple[str, str, dict[str, Any], int, str, str | None]]:
    """(method, path, request kwargs, status, code, errors field)."""
    ada = world.users[0]
    chat = (
        await client.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
        )
    ).json()
    messages = world.path(f"/chats/{chat['id']}/messages")
    presences = world.path(f"/chats/{chat['id']}/presences")
    json_headers = {"Content-Type": "application/json"}
    return [
        (
            "POST",
            messages,
            {"content": b"{not json", "headers": json_headers},
            400,
            "invalid_json",
            None,
        ),
        (
            "POST",
            messages,
            {"content": b"[1, 2]", "headers": json_headers},
            400,
            "invalid_body",
            None,
        ),
        (
            "POST",
            messages,
            {"content": b'"text"', "headers": json_headers},
            400,
            "invalid_body",
            None,
        ),
        (
            "POST",
            messages,
            {"content": b"message=hi", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "POST",
            messages,
            {"content": b"x" * (64 * 1024 + 1), "headers": json_headers},
            413,
            "body_too_large",
            None,
        ),
        ("POST", messages, {"json": {"message": "hi"}}, 400, "invalid", "sender_id"),
        (
            "POST",
            messages,
            {"json": {"sender_id": 42, "message": "hi"}},
            400,
            "invalid",
            "sender_id",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": FOREIGN_UUID, "message": "hi"}},
            400,
            "invalid",
            "sender_id",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": ada["id"], "message": "x" * 2001}},
            400,
            "invalid",
            "message",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": ada["id"], "message": "😀" * 2001}},
            400,
            "invalid",
            "message",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": ada["id"], "message": "   \n\t"}},
            400,
            "invalid",
            "message",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": ada["id"], "message": ""}},
            400,
            "invalid",
            "message",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": ada["id"], "message": "a\x00b"}},
            400,
            "invalid",
            "message",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": ada["id"], "message": ["hi"]}},
            400,
            "invalid",
            "message",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": ada["id"], "message": "hi", "type": "join"}},
            400,
            "invalid",
            "type",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": ada["id"], "message": "hi", "type": "leave"}},
            400,
            "invalid",
            "type",
        ),
        (
            "POST",
            messages,
            {"json": {"sender_id": ada["id"], "message": "hi", "page_url": 5}},
            400,
            "invalid",
            "page_url",
        ),
        (
            "POST",
            world.path(f"/chats/{FOREIGN_UUID}/messages"),
            {"json": {"sender_id": ada["id"], "message": "hi"}},
            404,
            "not_found",
            None,
        ),
        (
            "POST",
            world.path("/chats/not-a-uuid/messages"),
            {"json": {"sender_id": ada["id"], "message": "hi"}},
            404,
            "not_found",
            None,
        ),
        (
            "POST",
            presences,
            {"json": {"user_id": ada["id"], "exclusive": "true"}},
            400,
            "invalid",
            "exclusive",
        ),
        (
            "POST",
            presences,
            {"json": {"user_id": ada["id"], "exclusive": 1}},
            400,
            "invalid",
            "exclusive",
        ),
        ("POST", presences, {"json": {}}, 400, "invalid", "user_id"),
        ("POST", presences, {"json": {"user_id": None}}, 400, "invalid", "user_id"),
        ("DELETE", f"{presences}/{FOREIGN_UUID}", {}, 404, "not_found", None),
        ("PUT", presences, {"json": {}}, 405, "method_not_allowed", None),
        ("GET", world.path("/no/such/route"), {}, 404, "not_found", None),
        ("GET", messages, {"params": {"cursor": "%%%"}}, 400, "invalid_cursor", None),
        ("GET", messages, {"params": {"page_size": "0"}}, 400, "invalid", "page_size"),
        ("GET", messages, {"params": {"page_size": "9" * 40}}, 200, "", None),
        ("POST", world.path("/rooms"), {"json": {"name": ""}}, 400, "invalid", "name"),
        (
            "POST",
            world.path("/rooms"),
            {"json": {"name": "R", "private_chats": "no"}},
            400,
            "invalid",
            "private_chats",
        ),
        ("POST", world.path("/rooms"), {"json": {}}, 400, "invalid", "name"),
        (
            "POST",
            world.path("/users"),
            {"json": {"first_name": "A", "last_name": "B", "alias": "C", "room_ids": "all"}},
            400,
            "invalid",
            "room_ids",
        ),
        (
            "POST",
            world.path("/users"),
            {"json": {"first_name": "A", "last_name": "B", "alias": "C", "room_ids": ["nope"]}},
            400,
            "invalid",
            "room_ids",
        ),
        (
            "POST",
            world.path("/users"),
            {
                "json": {
                    "first_name": "A",
                    "last_name": "B",
                    "alias": "C",
                    "room_ids": [FOREIGN_UUID],
                }
            },
            400,
            "invalid",
            "room_ids",
        ),
        ("POST", world.path("/visitors"), {"json": {"id": "Z" * 32}}, 400, "invalid", "id"),
        ("POST", world.path("/visitors"), {"json": {"id": 12}}, 400, "invalid", "id"),
        (
            "POST",
            world.path(f"/rooms/{FOREIGN_UUID}/visitors/{world.visitor['id']}/chats"),
            {},
            404,
            "not_found",
            None,
        ),
        (
            "POST",
            world.path(f"/rooms/{world.room['id']}/visitors/nothex/chats"),
            {},
            404,
            "not_found",
            None,
        ),
        (
            "POST",
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats"),
            {"params": {"auto_resume": FOREIGN_UUID}},
            400,
            "invalid",
            "auto_resume",
        ),
        (
            "POST",
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats"),
            {"json": {"auto_resume": 7}},
            400,
            "invalid",
            "auto_resume",
        ),
        (
            "PATCH",
            world.path(f"/chats/{chat['id']}"),
            {"json": {"is_ended": "yes"}},
            400,
            "invalid",
            "is_ended",
        ),
        ("GET", world.path(f"/users/{FOREIGN_UUID}/chats"), {}, 404, "not_found", None),
        (
            "GET",
            world.path(f"/users/{ada['id']}/chats/{FOREIGN_UUID}/participations"),
            {},
            404,
            "not_found",
            None,
        ),
        (
            "GET",
            world.path(f"/rooms/{world.room['id']}/chats"),
            {"params": {"is_waiting_response": "maybe"}},
            400,
            "invalid",
            "is_waiting_response",
        ),
        ("GET", f"/api/v5/orgs/{FOREIGN_UUID}/rooms", {}, 403, "forbidden", None),
    ]


async def test_bad_input_is_rejected_without_5xx_or_state_change(world: World) -> None:
    state = world.server.engine.state
    async with world.org_client as client:
        cases = await bad_requests(world, client)
        for method, path, kwargs, status, code, field in cases:
            before = state.seq
            response = await client.request(method, path, **kwargs)
            label = f"{method} {path} {kwargs.get('json', kwargs.get('params', ''))!r:.80}"
            assert response.status_code == status, (label, response.text)
            assert state.seq == before, label
            if code:
                body = response.json()
                assert body["code"] == code, (label, body)
                assert isinstance(body["detail"], str) and body["detail"], label
                if field is not None:
                    assert field in body["errors"], (label, body)
        # and the connection-level state is fine: the server still answers
        assert (await client.get(world.path("/rooms"))).status_code == 200


async def test_exactly_2000_code_points_are_accepted(world: World) -> None:
    ada = world.users[0]
    async with world.org_client as client:
        chat = (
            await client.post(
                world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
            )
        ).json()
        response = await client.post(
            world.path(f"/chats/{chat['id']}/messages"),
            json={"sender_id": ada["id"], "message": "😀" * 2000},
        )
    assert response.status_code == 201 and len(response.json()["message"]) == 2000


async def test_unknown_fields_are_ignored_and_empty_body_is_empty_object(world: World) -> None:
    async with world.org_client as client:
        response = await client.post(world.path("/rooms"), json={"name": "Extra", "colour": "blue"})
        assert response.status_code == 201 and "colour" not in response.json()
        empty = await client.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats"),
            content=b"",
            headers={"Content-Type": "text/plain"},
        )
    assert empty.status_code == 201


@pytest.mark.parametrize(
    "fuzz", [b"\xff\xfe", b'{"name": "\xed\xa0\x80"}', b"{" * 10000, b"1e999999"]
)
async def test_odd_bytes_never_500(world: World, fuzz: bytes) -> None:
    async with world.org_client as client:
        response = await client.post(
            world.path("/rooms"), content=fuzz, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400 and response.json()["code"] in (
        "invalid_json",
        "invalid_body",
    )


@pytest.mark.parametrize("http1_server", ["builtin", "hypercorn"])
async def test_not_ready_is_503(nursery: trio.Nursery, http1_server: str) -> None:
    """Until recovery is done, on either HTTP/1.1 server (``--http1-server``), served by
    the front door as ``chat-engine serve`` does."""
    from hypercorn.config import Config

    from gateway import frontdoor
    from gateway.http1 import Http1Server

    engine = Engine()  # never started: recovery "still running"
    gateway = create_app(engine, GatewaySettings(admin_token_hash=hash_token("x")))
    binds = await nursery.start(
        partial(
            frontdoor.serve,
            gateway.asgi,
            Config(),
            "127.0.0.1",
            0,
            gateway.ws.handle_connection,
            shutdown_trigger=trio.sleep_forever,
            http1=Http1Server(gateway.web.handle) if http1_server == "builtin" else None,
        )
    )
    async with httpx.AsyncClient(base_url=binds[0], headers={"Authorization": "Token x"}) as client:
        ready = await client.get("/readyz")
        api = await client.post("/api/v5/orgs", json={"name": "Early"})
        # a read needs no actor: only the readiness check stops it (else a 404 here)
        read = await client.get("/api/v5/orgs/00000000-0000-4000-8000-000000000000")
        health = await client.get("/healthz")
    assert ready.status_code == 503 and ready.json()["code"] == "unavailable"
    for early in (api, read):
        assert early.status_code == 503 and early.json()["code"] == "unavailable"
    assert health.status_code == 200
    assert health.headers.get("server", "").startswith("hypercorn") == (http1_server != "builtin")
