from __future__ import annotations

from tests.conftest import Server, World


async def test_health_and_openapi(server: Server) -> None:
    async with server.client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).status_code == 200
        document = (await client.get("/openapi.json")).json()
    assert "/api/v5/orgs/{org_id}/chats/{chat_id}/messages" in document["paths"]
    assert "MessageCreate" in document["components"]["schemas"]


async def test_walkthrough(world: World) -> None:
    ada = world.users[0]
    async with world.client(ada["token"]) as client:
        response = await client.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats"),
            params={"auto_resume": ada["id"]},
        )
        assert response.status_code == 201, response.text
        chat = response.json()
        assert chat["currently_present_user_count"] == 1
        response = await client.post(
            world.path(f"/chats/{chat['id']}/messages"),
            json={"sender_id": ada["id"], "message": "Hello!"},
        )
        assert response.status_code == 201, response.text
        history = (await client.get(world.path(f"/chats/{chat['id']}/messages"))).json()
    assert [m["type"] for m in history["results"]] == ["join", "msg"]
