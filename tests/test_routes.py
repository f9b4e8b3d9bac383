"""The route modules (gateway/routes/) as the composition root assembles them, and the
pure pieces they call: the report's query parsing and page shape."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from engine import errors, views
from engine.actors.supervisor import Engine
from engine.report import ReportPage
from gateway import validation as v
from gateway.app import ROUTES, GatewaySettings, create_app
from gateway.web import Request

ORG = "11111111-1111-4111-8111-111111111111"
OTHER_ORG = "22222222-2222-4222-8222-222222222222"


async def test_openapi_lists_every_api_route_once_with_its_summary_and_no_operations() -> None:
    gateway = create_app(Engine(), GatewaySettings(admin_token_hash="x"))
    answer = await gateway.web.handle(Request("GET", "/openapi.json", b"", [], b""))
    paths = orjson.loads(answer.body)["paths"]
    described = {
        (path, method.upper()): operation["summary"]
        for path, operations in paths.items()
        for method, operation in operations.items()
    }
    api = [route for route in ROUTES if route.path.startswith("/api/")]
    assert all(route.summary for route in api), "an API route left out of /openapi.json"
    assert described == {(route.path, route.method): route.summary for route in api}
    assert not {"/healthz", "/readyz", "/metrics", "/openapi.json"} & set(paths)


def test_no_two_routes_share_a_method_and_path() -> None:
    keys = [(route.method, route.path) for route in ROUTES]
    assert len(keys) == len(set(keys))


def chats_by_id() -> dict[str, Any]:
    ours = SimpleNamespace(organization_id=ORG, seq=7)
    theirs = SimpleNamespace(organization_id=OTHER_ORG, seq=9)
    return {
        "33333333-3333-4333-8333-333333333333": ours,
        "44444444-4444-4444-8444-444444444444": theirs,
    }


def test_report_query_defaults_to_the_first_page_by_start_time() -> None:
    query = v.parse_report_query({}, chats_by_id(), ORG)
    assert (query.ordering, query.page, query.page_size) == ("start_time", 1, 25)
    assert query.since_seq is None and query.only_ended is False


def test_report_query_resumes_after_a_chat_of_the_org_only() -> None:
    chats = chats_by_id()
    query = v.parse_report_query({"since_id": "33333333-3333-4333-8333-333333333333"}, chats, ORG)
    assert query.since_seq == 7
    for since_id in ("44444444-4444-4444-8444-444444444444", "not-a-uuid"):
        with pytest.raises(errors.Invalid) as refused:
            v.parse_report_query({"since_id": since_id}, chats, ORG)
        assert refused.value.body()["errors"] == {"since_id": ["Unknown chat."]}


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"ordering": "updated_at"}, "ordering"),
        ({"room_id": "lobby"}, "room_id"),
        ({"tag": "  "}, "tag"),
        ({"page": "0"}, "page"),
        ({"min_message_count": "-1"}, "min_message_count"),
        ({"only_ended": "yes"}, "only_ended"),
    ],
)
def test_report_query_names_the_bad_parameter(args: dict[str, str], field: str) -> None:
    with pytest.raises(errors.Invalid) as refused:
        v.parse_report_query(args, chats_by_id(), ORG)
    assert list(refused.value.body()["errors"]) == [field]


def report_page(page: int, num_pages: int) -> dict[str, Any]:
    result = ReportPage(count=num_pages * 2 - 1, num_pages=num_pages, page=page, chats=["a", "b"])  # type: ignore[list-item]
    return views.report_page_view(result, 2, lambda number: f"/report?page={number}", str.upper)  # type: ignore[arg-type]


def test_a_middle_report_page_links_both_neighbours() -> None:
    shape = report_page(2, 3)
    assert shape == {
        "count": 5,
        "num_pages": 3,
        "per_page": 2,
        "current_page": 2,
        "next_page": 3,
        "previous_page": 1,
        "next_page_url": "/report?page=3",
        "previous_page_url": "/report?page=1",
        "results": ["A", "B"],
    }


def test_the_first_and_last_report_pages_have_no_link_past_the_ends() -> None:
    first, last = report_page(1, 3), report_page(3, 3)
    assert first["previous_page"] is None and first["previous_page_url"] is None
    assert first["next_page"] == 2
    assert last["next_page"] is None and last["next_page_url"] is None
    only = report_page(1, 1)
    assert only["next_page_url"] is None and only["previous_page_url"] is None
