"""CORS for `--cors-origins`, `X-Forwarded-*` from `--forwarded-allow-ips` only, and the
process collectors in `/metrics`, on real servers."""

from __future__ import annotations

import logging

import httpx
import pytest
import trio

from gateway.forwarded import Forwarded
from gateway.settings import networks
from gateway.web import Request
from tests.conftest import ADMIN_TOKEN, Server, build_world, start_server

SHOP = "https://shop.example"


@pytest.fixture(params=["builtin", "hypercorn"])
async def cors_server(
    request: pytest.FixtureRequest, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> Server:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    return await start_server(
        nursery,
        "--cors-origins",
        f"{SHOP},http://localhost:3000",
        "--rate-limit",
        "1/1",
        "--http1-server",
        request.param,
    )


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_a_preflight_from_a_listed_origin_is_answered(cors_server: Server) -> None:
    world = await build_world(cors_server)
    path = f"/api/v5/client/visitors/{world.visitor['id']}/rooms/{world.room['id']}/chats"
    async with httpx.AsyncClient(base_url=cors_server.base_url) as browser:
        allowed = await browser.options(path, headers=preflight(SHOP))
        other = await browser.options(path, headers=preflight("https://evil.example"))
    assert allowed.status_code == 204 and allowed.content == b""
    assert allowed.headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert {"authorization", "content-type"} <= {
        name.strip().lower() for name in allowed.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert int(allowed.headers["Access-Control-Max-Age"]) > 0
    assert allowed.headers["Vary"] == "Origin"
    # another origin gets today's OPTIONS answer and no CORS header at all
    assert other.status_code == 200 and "POST" in other.headers["Allow"]
    assert not [name for name in other.headers if name.lower().startswith("access-control-")]


async def test_answers_to_a_listed_origin_carry_the_cors_headers(cors_server: Server) -> None:
    world = await build_world(cors_server)
    base = f"/api/v5/client/visitors/{world.visitor['id']}"
    headers = {"Authorization": f"Token {world.visitor['token']}", "Origin": SHOP}
    async with httpx.AsyncClient(base_url=cors_server.base_url, headers=headers) as widget:
        created = await widget.post(f"{base}/rooms/{world.room['id']}/chats")
        refused = await widget.post(f"{base}/rooms/{world.room['id']}/chats")  # 1/1: refused
        listing = await widget.get(f"{base}/chats")
        stranger = await widget.get(f"{base}/chats", headers={"Origin": "https://evil.example"})
    assert created.status_code == 201 and refused.status_code == 429
    for response in (created, refused, listing):
        assert response.headers["Access-Control-Allow-Origin"] == SHOP
        assert response.headers["Vary"] == "Origin"
        # a page can read Retry-After of a 429 only if it is exposed
        assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
    assert stranger.status_code == 200 and "Access-Control-Allow-Origin" not in stranger.headers
    assert stranger.headers["Vary"] == "Origin"


async def test_no_cors_headers_without_cors_origins(nursery: trio.Nursery) -> None:
    server = await start_server(nursery)
    async with httpx.AsyncClient(base_url=server.base_url) as browser:
        answer = await browser.options("/api/v5/orgs", headers=preflight(SHOP))
        health = await browser.get("/healthz", headers={"Origin": SHOP})
    assert answer.status_code == 200
    for response in (answer, health):
        assert not [k for k in response.headers if k.lower().startswith("access-control-")]


FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "chat.example",
    "X-Forwarded-For": "198.51.100.7, 127.0.0.1",
}


async def first_page_next(server: Server) -> str:
    world = await build_world(server)
    async with server.client(world.org["token"]) as org:
        page = await org.get(world.path("/rooms"), params={"page_size": 1}, headers=FORWARDED)
    assert page.status_code == 200
    return str(page.json()["next"])


@pytest.mark.parametrize("transport", ["builtin", "hypercorn"])
async def test_forwarded_headers_from_a_trusted_peer_feed_links_and_logs(
    transport: str,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(
        nursery,
        "--forwarded-allow-ips",
        "127.0.0.0/8",
        "--access-log",
        "--http1-server",
        transport,
    )
    with caplog.at_level(logging.INFO, logger="chat_engine.access"):
        link = await first_page_next(server)
    assert link.startswith("https://chat.example/api/v5/orgs/")
    if transport == "builtin":  # hypercorn writes its own access log, from the socket
        fields = [
            record.fields  # type: ignore[attr-defined]
            for record in caplog.records
            if record.name == "chat_engine.access" and record.msg == "request"
        ]
        # the listing sent the headers; the requests that built the world did not
        assert fields[-1]["method"] == "GET" and fields[-1]["client"] == "198.51.100.7:0"
        assert fields[0]["client"].startswith("127.0.0.1:")


async def test_forwarded_headers_from_another_peer_are_ignored(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    for flags in ((), ("--forwarded-allow-ips", "10.0.0.0/8")):
        server = await start_server(nursery, *flags)
        link = await first_page_next(server)
        assert link.startswith(server.base_url + "/api/v5/orgs/")


async def test_open_registration_is_limited_per_forwarded_client(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a trusted proxy every visitor shares the proxy's address; the bucket is
    the forwarded client's instead."""
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, "--forwarded-allow-ips", "127.0.0.1")
    async with httpx.AsyncClient(base_url=server.base_url) as proxy:
        statuses = []
        for _ in range(40):  # a burst of 20 per address, refilled at 5 a second
            response = await proxy.post(
                "/api/v5/client/visitors", headers={"X-Forwarded-For": "198.51.100.1"}
            )
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
        other = await proxy.post(
            "/api/v5/client/visitors", headers={"X-Forwarded-For": "198.51.100.2"}
        )
    assert statuses[:20] == [201] * 20 and statuses[-1] == 429
    assert other.status_code == 201


async def test_metrics_include_the_process_collectors(server: Server) -> None:
    async with server.client() as client:
        text = (await client.get("/metrics")).text
    values = {}
    for line in text.splitlines():
        if line.startswith("process_") or line.startswith("python_info"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values["process_resident_memory_bytes"] > 10 * 1024 * 1024
    assert values["process_open_fds"] >= 3
    assert values["process_max_fds"] >= values["process_open_fds"]
    assert values["process_cpu_seconds_total"] > 0
    assert any(name.startswith("python_info") for name in values)


def test_which_forwarded_values_are_believed() -> None:
    trusted = Forwarded(networks("127.0.0.1, 10.0.0.0/8"))
    assert str(trusted.client_of("198.51.100.7, 10.0.0.2")) == "198.51.100.7"
    # a client may send its own X-Forwarded-For: only the hops past it count
    assert str(trusted.client_of("1.1.1.1, 198.51.100.7, 10.0.0.2")) == "198.51.100.7"
    assert str(trusted.client_of("10.0.0.3, 10.0.0.2")) == "10.0.0.3"
    assert str(trusted.client_of("not-an-address, 10.0.0.2")) == "10.0.0.2"
    assert trusted.client_of("not-an-address") is None

    def rewritten(peer: str, headers: dict[str, str]) -> Request:
        request = Request(
            "GET",
            "/",
            b"",
            [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            b"",
            client=(peer, 5000),
        )
        trusted.enter(request)
        return request

    request = rewritten(
        "::ffff:127.0.0.1",  # an IPv4 peer seen by a dual-stack socket
        {
            "Host": "internal:8080",
            "X-Forwarded-Proto": "http, HTTPS",
            "X-Forwarded-Host": "a.example",
        },
    )
    assert (request.scheme, request.host) == ("https", "a.example")
    request = rewritten(
        "127.0.0.1",
        {"Host": "internal", "X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "a.example/x"},
    )
    assert (request.scheme, request.host) == ("http", "internal")
    request = rewritten("192.0.2.1", {"Host": "internal", "X-Forwarded-Host": "a.example"})
    assert request.host == "internal" and request.client == ("192.0.2.1", 5000)
