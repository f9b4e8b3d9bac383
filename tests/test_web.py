"""The request pipeline (gateway/web.py): its route table, and the same answers whether
the built-in HTTP/1.1 server or hypercorn (through quart-trio) carries the request."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest
import trio

from engine import errors
from gateway.web import Request, Response, Router, WebApp
from tests.conftest import ADMIN_TOKEN, Server, start_server


def request(method: str, path: str) -> Request:
    return Request(method, path, b"", [], b"")


def test_a_literal_segment_wins_over_a_parameter_and_parameters_are_not_empty() -> None:
    router = Router()

    async def by_id(req: Request, org_id: str) -> Response:
        return Response(org_id.encode())

    async def mine(req: Request) -> Response:
        return Response(b"mine")

    router.add("GET", "/orgs/{org_id}", by_id)
    router.add("GET", "/orgs/mine", mine)
    router.add("GET", "/orgs/{org_id}/rooms/{room_id}", by_id)
    found = router.match("/orgs/mine")
    assert found is not None and found[0].methods["GET"] is mine and found[1] == {}
    found = router.match("/orgs/abc")
    assert found is not None and found[1] == {"org_id": "abc"} and found[0].rule == "/orgs/{org_id}"
    found = router.match("/orgs/a/rooms/b")
    assert found is not None and found[1] == {"org_id": "a", "room_id": "b"}
    found = router.match("/orgs/mine/rooms/b")  # the literal leads nowhere: backtrack
    assert found is not None and found[1] == {"org_id": "mine", "room_id": "b"}
    for path in ("/orgs/", "/orgs//rooms/b", "/orgs/a/rooms", "/orgs/a/rooms/b/", "orgs/a", "/"):
        assert router.match(path) is None, path


def test_a_route_defined_twice_with_two_names_for_a_segment_or_an_odd_method_is_refused() -> None:
    router = Router()

    async def handler(req: Request, **params: str) -> Response:
        return Response()

    router.add("GET", "/orgs/{org_id}", handler)
    with pytest.raises(ValueError):
        router.add("GET", "/orgs/{org_id}", handler)
    with pytest.raises(ValueError):
        router.add("POST", "/orgs/{id}", handler)
    # HEAD and OPTIONS are the pipeline's own; any other method the ASGI layer would
    # not forward and the metrics would not name
    for method in ("HEAD", "OPTIONS", "BREW"):
        with pytest.raises(ValueError, match="a route takes GET, POST, PUT, PATCH, DELETE$"):
            router.add(method, "/items", handler)


def test_query_arguments_keep_order_repeats_and_blanks() -> None:
    req = Request("GET", "/x", b"a=1&b=&a=2&c=x+y%21", [], b"")
    assert req.arg_pairs == [("a", "1"), ("b", ""), ("a", "2"), ("c", "x y!")]
    assert req.args == {"a": "1", "b": "", "c": "x y!"}
    raw = Request("GET", "/x", "tag=h%C3%A9&raw=hé&bad=%FF".encode(), [], b"")
    assert raw.args == {"tag": "hé", "raw": "hé", "bad": "\ufffd"}  # UTF-8, never an error
    with_host = Request("GET", "/x", b"", [(b"host", b"example.org:81")], b"", server=("h", 1))
    assert with_host.host == "example.org:81"
    assert request("GET", "/x").host == "localhost"


def shape(response: httpx.Response) -> dict[str, Any]:
    """What a client relies on, without ids and dates that differ between servers."""
    body: Any = None
    if response.content and response.headers.get("content-type") == "application/json":
        json = response.json()
        body = (
            sorted(json) if "code" not in json else (json["code"], sorted(json.get("errors", {})))
        )
    return {
        "status": response.status_code,
        "content_type": response.headers.get("content-type"),
        "allow": response.headers.get("allow"),
        "body": body,
        "empty": not response.content,
    }


async def test_the_built_in_server_and_hypercorn_answer_alike(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    servers = [
        await start_server(nursery),
        await start_server(nursery, "--http1-server", "hypercorn"),
    ]
    seen: list[list[dict[str, Any]]] = []
    for server in servers:
        async with server.client(ADMIN_TOKEN) as admin, server.client() as anonymous:
            org = (await admin.post("/api/v5/orgs", json={"name": "Parity"})).json()
            base = f"/api/v5/orgs/{org['id']}"
            await admin.post(f"{base}/rooms", json={"name": "One"})
            await admin.post(f"{base}/rooms", json={"name": "Two"})
            answers = [
                await admin.get("/healthz"),
                await admin.get("/nope"),
                await admin.get("/api/v5/orgs/"),
                await admin.get("/api/v5/orgs//rooms"),
                await admin.put("/api/v5/orgs", json={}),
                await admin.options(base),
                await admin.head(base),
                await admin.get(base),
                await admin.post(
                    "/api/v5/orgs", content=b"name", headers={"content-type": "text/plain"}
                ),
                await admin.post("/api/v5/orgs", json={"name": ""}),
                await admin.post(
                    "/api/v5/orgs", content=b"{", headers={"content-type": "application/json"}
                ),
                await anonymous.post("/api/v5/orgs", json={"name": "x"}),
                await admin.post("/api/v5/orgs", json={"name": "x" * 70_000}),
                await admin.get(f"{base}/rooms", params={"page_size": "0"}),
                await admin.get(f"{base}/rooms", params={"page_size": "1"}),
                await admin.get(f"{base}/chats", params={"ordering": "sideways"}),
                await admin.delete(f"{base}/chats/{org['id']}/tags/x"),
            ]
            first_page = answers[-3].json()
            assert first_page["next"].startswith(
                f"{server.base_url}{base}/rooms?page_size=1&cursor="
            )
            seen.append([shape(answer) for answer in answers])
    builtin, hypercorn = seen
    for number, (ours, theirs) in enumerate(zip(builtin, hypercorn, strict=True)):
        assert ours == theirs, number
    assert [answer["status"] for answer in builtin] == [
        200, 404, 404, 404, 405, 200, 200, 200, 415, 400, 400, 401, 413, 400, 200, 400, 404,
    ]  # fmt: skip
    assert builtin[4]["allow"] == "GET, HEAD, OPTIONS, POST"  # GET lists the orgs
    assert builtin[5]["allow"] == "GET, HEAD, OPTIONS" and builtin[5]["empty"]
    assert builtin[6]["empty"] and builtin[6]["content_type"] == "application/json"


async def test_a_failing_handler_is_a_json_500_logged_and_observed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observed: list[tuple[str, str, int]] = []
    router = Router()

    async def broken(req: Request) -> Response:
        raise RuntimeError("a bug")

    async def refused(req: Request, item: str) -> Response:
        raise errors.Forbidden(f"Not {item}.")

    router.add("GET", "/broken", broken)
    router.add("GET", "/items/{item}", refused)
    app = WebApp(
        router, lambda req: None, lambda m, rule, status, s: observed.append((m, rule, status))
    )
    with caplog.at_level(logging.ERROR, logger="chat_engine.http"):
        crashed = await app.handle(request("GET", "/broken"))
    assert crashed.status == 500
    assert orjson.loads(crashed.body) == {"code": "internal", "detail": "Internal error."}
    assert any("unhandled error on GET /broken" in r.getMessage() for r in caplog.records)
    forbidden = await app.handle(request("GET", "/items/x"))
    assert forbidden.status == 403 and orjson.loads(forbidden.body)["detail"] == "Not x."
    missing = await app.handle(request("GET", "/nowhere"))
    assert missing.status == 404
    assert observed == [
        ("GET", "/broken", 500),
        ("GET", "/items/{item}", 403),
        ("GET", "unmatched", 404),
    ]


async def test_the_checks_run_before_routing() -> None:
    def starting(req: Request) -> None:
        raise errors.Unavailable("Starting.")

    app = WebApp(Router(), starting, lambda *args: None)
    answer = await app.handle(request("GET", "/no/such/path"))
    assert answer.status == 503 and orjson.loads(answer.body)["code"] == "unavailable"


async def test_a_method_the_server_does_not_know_is_one_metric_label(server: Server) -> None:
    """The latency histogram is labelled by method: a client choosing any token as its
    method must not grow /metrics (nor the server's memory) without bound."""
    async with server.client() as client:
        for method in ("BREW", "PROPFIND", "LINK"):
            assert (await client.request(method, "/nowhere")).status_code == 404
        text = (await client.get("/metrics")).text
    for method in ("BREW", "PROPFIND", "LINK"):
        assert f'method="{method}"' not in text
    assert 'method="other",route="unmatched",status="404"' in text
