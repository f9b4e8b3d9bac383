"""Fixtures: a real server (the HTTP front door + the engine) on a free port, and HTTP
clients.

The server runs in the test's own trio loop but is reached only over TCP with a real
HTTP client, exactly as a user would reach it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from engine.actors.supervisor import Engine, EngineConfig
from gateway.cli import build_parser, serve
from gateway.wsconn import WsLimits
from tests.redisproc import RedisProcess, redis_binary

ADMIN_TOKEN = "test-admin-token"


class FakeClock:
    """Wall-clock milliseconds the test moves by hand (resume windows, timestamps)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@dataclass
class Server:
    base_url: str
    engine: Engine
    clock: FakeClock

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Token {token}"} if token else {}
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits, timeout=30)


async def start_server(
    nursery: trio.Nursery, *flags: str, ws_limits: WsLimits | None = None, **config: Any
) -> Server:
    """A server in this trio loop, reached over TCP; ``config`` goes to EngineConfig."""
    options = build_parser().parse_args(
        ["serve", "--in-memory", "--port", "0", "--log-level", "warning", *flags]
    )
    clock = FakeClock()
    engine = Engine(EngineConfig(**config), clock=clock)
    binds = await nursery.start(partial(serve, options, engine=engine, ws_limits=ws_limits))
    return Server(binds[0], engine, clock)


@pytest.fixture
async def server(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    return await start_server(nursery)


@pytest.fixture
async def admin(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with server.client(ADMIN_TOKEN) as client:
        yield client


@dataclass
class World:
    """An org with two rooms, two users and a visitor, made over HTTP."""

    server: Server
    org: dict[str, Any]
    room: dict[str, Any]
    private_room: dict[str, Any]
    users: list[dict[str, Any]]
    visitor: dict[str, Any]

    def client(self, token: str) -> httpx.AsyncClient:
        return self.server.client(token)

    @property
    def org_client(self) -> httpx.AsyncClient:
        return self.server.client(self.org["token"])

    def path(self, suffix: str = "") -> str:
        return f"/api/v5/orgs/{self.org['id']}{suffix}"


async def make_org(admin: httpx.AsyncClient, name: str = "Acme") -> dict[str, Any]:
    response = await admin.post("/api/v5/orgs", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()


async def make_user(
    client: httpx.AsyncClient, org_id: str, first: str, **extra: Any
) -> dict[str, Any]:
    body = {"first_name": first, "last_name": "Tester", "alias": f"{first}-alias", **extra}
    response = await client.post(f"/api/v5/orgs/{org_id}/users", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def make_visitor(client: httpx.AsyncClient, org_id: str) -> dict[str, Any]:
    response = await client.post(f"/api/v5/orgs/{org_id}/visitors", json={})
    assert response.status_code == 201, response.text
    return response.json()


async def make_room(
    client: httpx.AsyncClient, org_id: str, name: str, private: bool = False
) -> dict[str, Any]:
    response = await client.post(
        f"/api/v5/orgs/{org_id}/rooms", json={"name": name, "private_chats": private}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def build_world(server: Server) -> World:
    async with server.client(ADMIN_TOKEN) as admin:
        org = await make_org(admin)
    async with server.client(org["token"]) as client:
        room = await make_room(client, org["id"], "Sales")
        private_room = await make_room(client, org["id"], "VIP", private=True)
        users = [await make_user(client, org["id"], name) for name in ("Ada", "Alan")]
        visitor = await make_visitor(client, org["id"])
    return World(server, org, room, private_room, users, visitor)


@pytest.fixture
async def world(server: Server) -> World:
    return await build_world(server)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server for a test module's cluster tests (tests/redisproc.py)."""
    redis_binary()  # skips, or fails when required, without one
    process = RedisProcess(tmp_path_factory.mktemp("redis"))
    process.start()
    yield process
    process.stop()
