"""The org chat report against a fixed data set:
each filter, combinations, the orderings and page navigation, checked against an
independent model of the same chats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from engine.model import SENDER_VISITOR
from engine.timefmt import format_ms
from tests.conftest import World, make_org, make_room, make_visitor

CHATS = 64


@dataclass
class Row:
    id: str
    index: int
    room: str
    start: int
    end: int | None = None
    tags: set[str] = field(default_factory=set)
    messages: int = 0
    real: bool = False


@pytest.fixture
async def dataset(world: World) -> tuple[World, list[Row]]:
    clock = world.server.clock
    engine = world.server.engine
    ada = world.users[0]
    rows: list[Row] = []
    async with world.org_client as client:
        second = await make_room(client, world.org["id"], "Second")
        visitors = [await make_visitor(client, world.org["id"]) for _ in range(8)]
        for index in range(CHATS):
            clock.advance(60)
            room = world.room["id"] if index % 2 == 0 else second["id"]
            visitor = visitors[index % 8]["id"]
            response = await client.post(world.path(f"/rooms/{room}/visitors/{visitor}/chats"))
            chat = response.json()
            row = Row(chat["id"], index, room, clock.ms)
            for number in range(index % 4):
                clock.advance(1)
                await client.post(
                    world.path(f"/chats/{chat['id']}/messages"),
                    json={"sender_id": ada["id"], "message": f"hi {number}"},
                )
                row.messages += 1
            if index % 3 == 0:
                await engine.chats.post(
                    engine.state.chats[chat["id"]],
                    sender_type=SENDER_VISITOR,
                    sender_id=visitor,
                    type="msg",
                    message="hello",
                    page_url=None,
                    page_title=None,
                )
                row.messages += 1
                row.real = index % 4 != 0  # a user msg too
            for tag, every in (("vip", 5), ("lead", 7)):
                if index % every == 0:
                    await client.post(world.path(f"/chats/{chat['id']}/tags"), json={"name": tag})
                    row.tags.add(tag)
            rows.append(row)
        # end a third of them, in an order unlike their creation order
        for row in sorted(rows, key=lambda r: (r.index * 37) % 64):
            if row.index % 3 == 1:
                clock.advance(5)
                ended = await client.patch(world.path(f"/chats/{row.id}"), json={"is_ended": True})
                row.end = clock.ms
                assert ended.json()["end_time"] == format_ms(row.end)
    return world, rows


def expected(rows: list[Row], ordering: str = "start_time", **filters: Any) -> list[str]:
    chosen = list(rows)
    if "room_id" in filters:
        chosen = [r for r in chosen if r.room == filters["room_id"]]
    if "start_time" in filters:
        chosen = [r for r in chosen if r.start >= filters["start_time"]]
    if "end_time" in filters:
        chosen = [r for r in chosen if r.end is not None and r.end < filters["end_time"]]
    if filters.get("only_ended"):
        chosen = [r for r in chosen if r.end is not None]
    if "tag" in filters:
        chosen = [r for r in chosen if filters["tag"] in r.tags]
    if "min_message_count" in filters:
        chosen = [r for r in chosen if r.messages >= filters["min_message_count"]]
    if "is_real_conversation" in filters:
        chosen = [r for r in chosen if r.real is filters["is_real_conversation"]]
    if "since_index" in filters:
        chosen = [r for r in chosen if r.index > filters["since_index"]]
    if ordering.endswith("start_time"):
        chosen.sort(key=lambda r: (r.start, r.index))
    else:
        chosen.sort(key=lambda r: (0, r.end, r.index) if r.end is not None else (1, 0, r.index))
    if ordering.startswith("-"):
        chosen.reverse()
    return [r.id for r in chosen]


async def report(world: World, **params: Any) -> dict[str, Any]:
    async with world.org_client as client:
        response = await client.get(world.path("/chats"), params={"page_size": 100, **params})
    assert response.status_code == 200, response.text
    return response.json()


async def test_filters_and_orderings_match_the_model(dataset: tuple[World, list[Row]]) -> None:
    world, rows = dataset
    middle = rows[30].start
    end_cut = sorted(r.end for r in rows if r.end is not None)[10]
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({}, {}),
        ({"ordering": "-start_time"}, {"ordering": "-start_time"}),
        ({"ordering": "end_time"}, {"ordering": "end_time"}),
        ({"ordering": "-end_time"}, {"ordering": "-end_time"}),
        ({"room_id": world.room["id"]}, {"room_id": world.room["id"]}),
        ({"start_time": format_ms(middle)}, {"start_time": middle}),
        ({"start_time": format_ms(middle) + "Z"}, {"start_time": middle}),
        ({"end_time": format_ms(end_cut)}, {"end_time": end_cut}),
        ({"only_ended": "true"}, {"only_ended": True}),
        ({"only_ended": "false"}, {}),
        ({"tag": "vip"}, {"tag": "vip"}),
        ({"tag": "vip", "ordering": "-start_time"}, {"tag": "vip", "ordering": "-start_time"}),
        (
            {"tag": "lead", "ordering": "-start_time", "room_id": world.room["id"]},
            {"tag": "lead", "ordering": "-start_time", "room_id": world.room["id"]},
        ),
        ({"tag": "nope"}, {"tag": "nope"}),
        ({"min_message_count": "3"}, {"min_message_count": 3}),
        ({"min_message_count": "0"}, {"min_message_count": 0}),
        ({"is_real_conversation": "true"}, {"is_real_conversation": True}),
        ({"is_real_conversation": "0"}, {"is_real_conversation": False}),
        ({"since_id": rows[40].id}, {"since_index": 40}),
        ({"has_sales": "false"}, {}),
        (
            {"room_id": world.room["id"], "ordering": "-end_time", "only_ended": "true"},
            {"room_id": world.room["id"], "ordering": "-end_time", "only_ended": True},
        ),
        (
            {"tag": "vip", "ordering": "end_time", "start_time": format_ms(middle)},
            {"tag": "vip", "ordering": "end_time", "start_time": middle},
        ),
        (
            {"min_message_count": "2", "is_real_conversation": "true", "ordering": "-start_time"},
            {"min_message_count": 2, "is_real_conversation": True, "ordering": "-start_time"},
        ),
        (
            {
                "end_time": format_ms(end_cut),
                "ordering": "-start_time",
                "room_id": world.room["id"],
            },
            {"end_time": end_cut, "ordering": "-start_time", "room_id": world.room["id"]},
        ),
        (
            {"since_id": rows[10].id, "tag": "lead", "ordering": "-end_time"},
            {"since_index": 10, "tag": "lead", "ordering": "-end_time"},
        ),
    ]
    for params, model in cases:
        result = await report(world, **params)
        ids = [chat["id"] for chat in result["results"]]
        assert ids == expected(rows, **model), params
        assert result["count"] == len(ids), params
    assert (await report(world, has_sales="true"))["results"] == []


async def test_rich_form_keys(dataset: tuple[World, list[Row]]) -> None:
    world, _ = dataset
    first = (await report(world, page_size=1))["results"][0]
    assert set(first) == {
        "id",
        "token",
        "start_time",
        "end_time",
        "updated_at",
        "is_private",
        "is_real_conversation",
        "is_autosuggested",
        "room_id",
        "api_data",
        "operator_message_count",
        "visitor_message_count",
        "message_count",
        "start_url",
        "start_url_title",
        "autosuggest_url",
        "autosuggest_url_title",
        "logs",
        "tags",
        "shopping_carts",
    }
    assert first["tags"] == [{"name": "vip"}, {"name": "lead"}]


async def test_page_navigation(dataset: tuple[World, list[Row]]) -> None:
    world, rows = dataset
    everything = expected(rows)
    async with world.org_client as client:
        first = (
            await client.get(world.path("/chats"), params={"tag": "vip", "ordering": "end_time"})
        ).json()
        assert first["count"] == 13 and first["num_pages"] == 1 and first["next_page_url"] is None
        page1 = (await client.get(world.path("/chats"))).json()
        assert (page1["count"], page1["num_pages"], page1["per_page"], page1["current_page"]) == (
            64,
            3,
            25,
            1,
        )
        assert (page1["next_page"], page1["previous_page"], page1["previous_page_url"]) == (
            2,
            None,
            None,
        )
        page2 = (await client.get(page1["next_page_url"])).json()
        page3 = (await client.get(page2["next_page_url"])).json()
        assert [
            c["id"] for c in page1["results"] + page2["results"] + page3["results"]
        ] == everything
        assert (page3["next_page"], page3["next_page_url"], page3["previous_page"]) == (
            None,
            None,
            2,
        )
        back = (await client.get(page3["previous_page_url"])).json()
        assert back["results"] == page2["results"]
        query = parse_qs(urlparse(page2["next_page_url"]).query)
        assert query == {"page": ["3"]}
        filtered = (
            await client.get(
                world.path("/chats"), params={"page_size": 10, "room_id": world.room["id"]}
            )
        ).json()
        assert parse_qs(urlparse(filtered["next_page_url"]).query) == {
            "page_size": ["10"],
            "room_id": [world.room["id"]],
            "page": ["2"],
        }
        past = await client.get(world.path("/chats"), params={"page": 4})
        assert past.status_code == 404 and past.json()["code"] == "invalid_page"
        empty = await client.get(world.path("/chats"), params={"tag": "nope"})
        assert (
            empty.status_code == 200
            and empty.json()["num_pages"] == 1
            and empty.json()["count"] == 0
        )
        assert (
            await client.get(world.path("/chats"), params={"tag": "nope", "page": 2})
        ).status_code == 404


@pytest.mark.parametrize(
    "name,value",
    [
        ("ordering", "name"),
        ("page", "0"),
        ("page", "x"),
        ("page_size", "0"),
        ("since_id", "nope"),
        ("since_id", "8d1c3a52-1111-4222-8333-444455556666"),
        ("start_time", "2015-02-13T11:31:36"),
        ("start_time", "2015-02-13"),
        ("start_time", "2015-02-30T11:31:36.042"),
        ("end_time", "2015-02-13T11:31:36.042+02:00"),
        ("has_sales", "yes"),
        ("is_real_conversation", "2"),
        ("only_ended", "none"),
        ("room_id", "room"),
        ("tag", " "),
        ("min_message_count", "-1"),
        ("min_message_count", "many"),
    ],
)
async def test_bad_report_parameters_name_the_field(world: World, name: str, value: str) -> None:
    async with world.org_client as client:
        response = await client.get(world.path("/chats"), params={name: value})
    assert response.status_code == 400, response.text
    assert name in response.json()["errors"]


async def test_report_covers_only_rooms_the_org_owns(
    world: World, admin: httpx.AsyncClient
) -> None:
    partner = await make_org(admin, "Partner")
    async with world.org_client as client:
        await client.post(
            world.path(f"/rooms/{world.room['id']}/shares"), json={"organization_id": partner["id"]}
        )
        await client.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
        )
        mine = (await client.get(world.path("/chats"))).json()
    async with world.server.client(partner["token"]) as as_partner:
        theirs = (await as_partner.get(f"/api/v5/orgs/{partner['id']}/chats")).json()
    assert mine["count"] == 1 and theirs["count"] == 0
