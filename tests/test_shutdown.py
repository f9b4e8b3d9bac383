"""SIGTERM on a real server process: sessions closed with 1001, exit 0 (CONTRACT §8, §10)."""

from __future__ import annotations

import signal

import pytest
import trio
from trio_websocket import ConnectionClosed

from bench.server import ADMIN_TOKEN, start_server
from tests.wsclient import ws_connect


async def test_sigterm_closes_sessions_with_1001_and_exits_0() -> None:
    server = await trio.to_thread.run_sync(start_server, "--in-memory")
    try:
        async with ws_connect(server.base_url, ADMIN_TOKEN) as ws:
            answer = await ws.subscribe(f"/api/v5/client/visitors/{'a' * 32}/chats")
            assert answer["type"] == "subscribed"
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
                while True:
                    await ws.receive_frame()
            assert closed.value.reason.code == 1001
        code = await trio.to_thread.run_sync(lambda: server.process.wait(timeout=10))
        assert code == 0
    finally:
        server.stop()
