"""PUT .../visitors/{visitor}/api_data: shown on all the visitor's chats."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from bench.server import ADMIN_TOKEN as PROCESS_ADMIN_TOKEN
from bench.server import start_server
from engine.model import SENDER_VISITOR
from tests.conftest import ADMIN_TOKEN, World, make_org, make_visitor
from tests.wsclient import ws_connect


async def test_api_data_replaces_and_touches_every_chat(
    world: World, admin: httpx.AsyncClient
) -> None:
    engine = world.server.engine
    path = world.path(f"/visitors/{world.visitor['id']}/api_data")
    async with world.org_client as client, ws_connect(world.server.base_url, ADMIN_TOKEN) as ws:
        chats = [
            (
                await client.post(
                    world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
                )
            ).json()
            for _ in range(2)
        ]
        await engine.chats.post(
            engine.state.chats[chats[0]["id"]],
            sender_type=SENDER_VISITOR,
            sender_id=world.visitor["id"],
            type="msg",
            message="hi",
            page_url=None,
            page_title=None,
        )
        await ws.subscribe(f"/api/v5/client/visitors/{world.visitor['id']}/chats")
        world.server.clock.advance(5)
        items = [
            {"name": "name", "value": "Milan Indrajit"},
            {"name": "customer_number", "value": "12345678"},
        ]
        response = await client.put(path, json=items)
        assert response.status_code == 200 and response.json() == items
        await ws.barrier()
        events = ws.take_events()
        rich = (await client.get(world.path(f"/chats/{chats[0]['id']}"))).json()
        replaced = await client.put(path, json=[{"name": "tier", "value": 3}])
        assert replaced.json() == [{"name": "tier", "value": 3}]
        for bad in (
            b'{"name": "x"}',
            b'[{"value": 1}]',
            b'[{"name": 5, "value": 1}]',
            b"[1]",
            b"{no",
        ):
            response = await client.put(
                path, content=bad, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, bad
        assert (
            await client.put(world.path(f"/visitors/{'0' * 32}/api_data"), json=[])
        ).status_code == 404
    assert rich["api_data"] == items
    assert rich["logs"][0]["display_name"] == "Milan Indrajit"  # the visitor's api_data name
    assert rich["updated_at"] > chats[0]["updated_at"]
    assert sorted(e["resource_id"] for e in events) == sorted(c["id"] for c in chats)
    assert all(
        e["action"] == "changed" and set(e["resource"]) == {"id", "updated_at"} for e in events
    )
    other = await make_org(admin, "Other")
    async with world.server.client(other["token"]) as as_other:
        response = await as_other.put(
            f"/api/v5/orgs/{other['id']}/visitors/{world.visitor['id']}/api_data", json=[]
        )
    assert response.status_code == 404  # another org's visitor


async def test_api_data_survives_a_restart(tmp_path: Path) -> None:
    server = await trio.to_thread.run_sync(lambda: start_server(data_dir=tmp_path))
    headers = {"Authorization": f"Token {PROCESS_ADMIN_TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            org = await make_org(client)
            visitor = await make_visitor(client, org["id"])
            items = [{"name": "tags", "value": ["a", "b"]}, {"name": "n", "value": {"k": 1}}]
            await client.put(
                f"/api/v5/orgs/{org['id']}/visitors/{visitor['id']}/api_data", json=items
            )
        server.kill()
        server = await trio.to_thread.run_sync(lambda: start_server(data_dir=tmp_path))
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            response = await client.put(
                f"/api/v5/orgs/{org['id']}/visitors/{visitor['id']}/api_data", json=items[:1]
            )
            assert response.status_code == 200
            assert server.stop() == 0
        server = await trio.to_thread.run_sync(lambda: start_server(data_dir=tmp_path))
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            room = (await client.post(f"/api/v5/orgs/{org['id']}/rooms", json={"name": "R"})).json()
            chat = (
                await client.post(
                    f"/api/v5/orgs/{org['id']}/rooms/{room['id']}/visitors/{visitor['id']}/chats"
                )
            ).json()
            rich = (await client.get(f"/api/v5/orgs/{org['id']}/chats/{chat['id']}")).json()
        assert rich["api_data"] == items[:1]
    finally:
        server.stop()
