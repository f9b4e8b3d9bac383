"""SIGTERM on a real server process: sessions closed with 1001, exit 0."""

from __future__ import annotations

import signal

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from bench.server import ADMIN_TOKEN, bootstrap, start_server
from tests.wsclient import ws_connect


async def test_sigterm_closes_sessions_with_1001_and_exits_0() -> None:
    """...after the final flush: every event of an acknowledged mutation arrives first."""
    server = await trio.to_thread.run_sync(start_server, "--in-memory")
    try:
        world = await trio.to_thread.run_sync(lambda: bootstrap(server, chats=1, users=1))
        chat_id, user_id = world["chats"][0]
        org_id, room_id = world["org"]["id"], world["room"]["id"]
        channel = f"/api/v5/orgs/{org_id}/rooms/{room_id}/chats/{chat_id}/messages"
        async with ws_connect(server.base_url, ADMIN_TOKEN) as ws:
            answer = await ws.subscribe(channel)
            assert answer["type"] == "subscribed"
            headers = {"Authorization": f"Token {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
                for number in range(50):
                    response = await client.post(
                        f"/api/v5/orgs/{org_id}/chats/{chat_id}/messages",
                        json={"sender_id": user_id, "message": f"m{number}"},
                    )
                    assert response.status_code == 201
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
                while True:
                    ws.inbox += await ws.receive_frame()
            assert closed.value.reason.code == 1001
            texts = [e["resource"]["message"] for e in ws.take_events()]
            assert texts[-50:] == [f"m{number}" for number in range(50)]
        code = await trio.to_thread.run_sync(lambda: server.process.wait(timeout=10))
        assert code == 0
    finally:
        server.stop()


async def test_sigterm_closes_idle_keep_alive_connections() -> None:
    """An idle keep-alive connection is closed and the server exits 0 (that it is closed
    at once, not after the grace period, is tests/test_http1.py's, in virtual time)."""
    server = await trio.to_thread.run_sync(start_server, "--in-memory")
    try:
        port = int(server.base_url.rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        with trio.fail_after(10):
            while not received.endswith(b'{"status":"ok"}'):
                received += await stream.receive_some(65536)
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await stream.receive_some(65536) == b""  # closed by the server
        code = await trio.to_thread.run_sync(lambda: server.process.wait(timeout=10))
        assert code == 0
    finally:
        server.stop()
