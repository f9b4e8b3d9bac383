"""Keyset cursor pagination over real HTTP."""

from __future__ import annotations

from functools import partial
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import trio

from engine.actors.supervisor import Engine
from gateway.cli import build_parser, serve
from tests.conftest import ADMIN_TOKEN, World, make_org, make_room


async def make_chats(world: World, count: int) -> list[str]:
    ids = []
    async with world.org_client as client:
        for _ in range(count):
            response = await client.post(
                world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
            )
            ids.append(response.json()["id"])
    return ids


async def test_forward_and_backward_links(world: World) -> None:
    ids = await make_chats(world, 7)
    path = world.path(f"/rooms/{world.room['id']}/chats")
    async with world.org_client as client:
        first = (
            await client.get(path, params={"page_size": 3, "is_waiting_response": "false"})
        ).json()
        assert first["previous"] is None and [c["id"] for c in first["results"]] == ids[:3]
        assert first["next"].startswith(world.server.base_url + path + "?")
        query = parse_qs(urlparse(first["next"]).query)
        assert query["page_size"] == ["3"] and query["is_waiting_response"] == ["false"]
        second = (await client.get(first["next"])).json()
        third = (await client.get(second["next"])).json()
        assert [c["id"] for c in second["results"]] == ids[3:6]
        assert [c["id"] for c in third["results"]] == ids[6:] and third["next"] is None
        back = (await client.get(third["previous"])).json()
        assert [c["id"] for c in back["results"]] == ids[3:6]
        back_again = (await client.get(back["previous"])).json()
        assert [c["id"] for c in back_again["results"]] == ids[:3] and back_again[
            "previous"
        ] is None
        assert [c["id"] for c in (await client.get(back_again["next"])).json()["results"]] == ids[
            3:6
        ]


async def test_messages_pages(world: World) -> None:
    (chat_id,) = await make_chats(world, 1)
    ada = world.users[0]
    async with world.org_client as client:
        messages = world.path(f"/chats/{chat_id}/messages")
        for index in range(5):
            await client.post(messages, json={"sender_id": ada["id"], "message": f"m{index}"})
        texts = []
        url: str | None = messages + "?page_size=2"
        while url:
            page = (await client.get(url)).json()
            texts += [m["message"] for m in page["results"]]
            url = page["next"]
    assert texts == [f"m{index}" for index in range(5)]


@pytest.mark.parametrize("size,expected", [("1", 1), ("100", 100), ("1000", 100)])
async def test_page_size_is_clamped(world: World, size: str, expected: int) -> None:
    await make_chats(world, 101)
    async with world.org_client as client:
        page = (
            await client.get(
                world.path(f"/rooms/{world.room['id']}/chats"), params={"page_size": size}
            )
        ).json()
    assert len(page["results"]) == expected


@pytest.mark.parametrize("size", ["0", "-1", "ten", "1.5", ""])
async def test_bad_page_size_is_400(world: World, size: str) -> None:
    async with world.org_client as client:
        response = await client.get(world.path("/rooms"), params={"page_size": size})
    assert response.status_code == 400 and "page_size" in response.json()["errors"]


async def test_bad_and_foreign_cursors_are_invalid_cursor(world: World) -> None:
    await make_chats(world, 3)
    async with world.org_client as client:
        page = (
            await client.get(
                world.path(f"/rooms/{world.room['id']}/chats"), params={"page_size": 1}
            )
        ).json()
        cursor = parse_qs(urlparse(page["next"]).query)["cursor"][0]
        for bad in ("garbage", "!!!", cursor[:-3], "W10", ""):
            response = await client.get(
                world.path(f"/rooms/{world.room['id']}/chats"), params={"cursor": bad}
            )
            assert response.status_code == 400 and response.json()["code"] == "invalid_cursor", bad
        foreign = await client.get(world.path("/rooms"), params={"cursor": cursor})
        assert foreign.status_code == 400 and foreign.json()["code"] == "invalid_cursor"


async def test_public_url_builds_links(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    options = build_parser().parse_args(
        [
            "serve",
            "--in-memory",
            "--port",
            "0",
            "--public-url",
            "https://chat.example.com/",
            "--log-level",
            "warning",
        ]
    )
    binds = await nursery.start(partial(serve, options, engine=Engine()))
    async with httpx.AsyncClient(
        base_url=binds[0], headers={"Authorization": f"Token {ADMIN_TOKEN}"}
    ) as admin:
        org = await make_org(admin)
        for index in range(3):
            await make_room(admin, org["id"], f"Room {index}")
        page = (await admin.get(f"/api/v5/orgs/{org['id']}/rooms", params={"page_size": 2})).json()
    assert page["next"].startswith(
        f"https://chat.example.com/api/v5/orgs/{org['id']}/rooms?page_size=2&cursor="
    )
