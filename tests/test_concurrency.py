"""The atomicity guarantees under real concurrent HTTP calls."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import World, make_user, make_visitor


async def test_50_concurrent_auto_resume_make_exactly_one_chat(world: World) -> None:
    ada = world.users[0]
    path = world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
    results: list[httpx.Response] = []
    async with world.org_client as client:

        async def call() -> None:
            results.append(await client.post(path, params={"auto_resume": ada["id"]}))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(call)
        statuses = sorted(response.status_code for response in results)
        chats = (await client.get(world.path(f"/rooms/{world.room['id']}/chats"))).json()["results"]
        history = (await client.get(world.path(f"/chats/{chats[0]['id']}/messages"))).json()[
            "results"
        ]
    assert statuses == [200] * 49 + [201]
    assert len({response.json()["id"] for response in results}) == 1
    assert len(chats) == 1 and chats[0]["currently_present_user_count"] == 1
    assert [m["type"] for m in history] == ["join"]
    # no intermediate state was ever answered
    assert all(r.json()["currently_present_user_count"] == 1 for r in results)


async def test_concurrent_auto_resume_by_several_users_share_one_chat(world: World) -> None:
    async with world.org_client as client:
        users = [*world.users] + [
            await make_user(client, world.org["id"], f"U{i}") for i in range(3)
        ]
        path = world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
        results: list[httpx.Response] = []

        async def call(user_id: str) -> None:
            results.append(await client.post(path, params={"auto_resume": user_id}))

        async with trio.open_nursery() as nursery:
            for user in users * 4:
                nursery.start_soon(call, user["id"])
        chats = (await client.get(world.path(f"/rooms/{world.room['id']}/chats"))).json()["results"]
    assert sorted(r.status_code for r in results).count(201) == 1
    assert len(chats) == 1 and chats[0]["currently_present_user_count"] == len(users)


async def test_50_concurrent_exclusive_joins_have_one_winner(world: World) -> None:
    async with world.org_client as client:
        users = []
        for index in range(50):
            users.append(await make_user(client, world.org["id"], f"Op{index}"))
        chat = (
            await client.post(
                world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
            )
        ).json()
        presences = world.path(f"/chats/{chat['id']}/presences")
        results: list[httpx.Response] = []

        async def join(user: dict) -> None:
            async with world.client(user["token"]) as as_user:
                results.append(
                    await as_user.post(presences, json={"user_id": user["id"], "exclusive": True})
                )

        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(join, user)
        listing = (await client.get(presences)).json()["results"]
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [400] * 49
    assert {r.json()["code"] for r in results if r.status_code == 400} == {"chat_already_taken"}
    winner = next(r.json()["user_id"] for r in results if r.status_code == 201)
    assert [p["user_id"] for p in listing] == [winner]


async def test_walking_next_while_chats_are_created_yields_each_once_in_order(world: World) -> None:
    async with world.org_client as client:
        visitors = [await make_visitor(client, world.org["id"]) for _ in range(6)]

        async def create_chats(count: int) -> None:
            async def one(index: int) -> None:
                visitor = visitors[index % len(visitors)]
                response = await client.post(
                    world.path(f"/rooms/{world.room['id']}/visitors/{visitor['id']}/chats")
                )
                assert response.status_code == 201

            async with trio.open_nursery() as nursery:
                for index in range(count):
                    nursery.start_soon(one, index)

        await create_chats(12)
        seen: list[str] = []
        url: str | None = world.path(f"/rooms/{world.room['id']}/chats") + "?page_size=5"
        pages = 0
        while url is not None and pages < 100:
            page = (await client.get(url)).json()
            seen += [chat["id"] for chat in page["results"]]
            pages += 1
            if pages <= 6:
                await create_chats(4)  # concurrent inserts between (and during) our pages
            url = page["next"]
        final = (
            await client.get(
                world.path(f"/rooms/{world.room['id']}/chats"), params={"page_size": 100}
            )
        ).json()
    expected = [chat["id"] for chat in final["results"]]
    assert len(expected) == 12 + 6 * 4
    assert seen == expected
