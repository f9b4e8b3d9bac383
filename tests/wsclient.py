"""A WebSocket test client speaking the protocol of docs/protocol.md over a real connection (trio-websocket)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import orjson
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

BARRIER_ROOT = "/api/v5/client/visitors/{}/chats"
_barriers = itertools.count(1)


class WsClient:
    def __init__(self, connection: WebSocketConnection, encoding: str) -> None:
        self.connection = connection
        self.encoding = encoding
        self.ids = itertools.count(1)
        self.inbox: list[dict[str, Any]] = []  # frames received but not yet consumed

    async def send(self, frame: dict[str, Any]) -> None:
        if self.encoding == "json":
            await self.connection.send_message(orjson.dumps(frame).decode())
        else:
            await self.connection.send_message(msgpack.packb(frame))

    async def receive_frame(self) -> list[dict[str, Any]]:
        message = await self.connection.get_message()
        if self.encoding == "json":
            assert isinstance(message, str), "JSON sessions get text frames"
            decoded = orjson.loads(message)
        else:
            assert isinstance(message, bytes), "msgpack sessions get binary frames"
            decoded = msgpack.unpackb(message)
        return decoded if isinstance(decoded, list) else [decoded]

    async def until(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        """Receive until a frame matches; earlier frames stay in ``inbox``."""
        with trio.fail_after(timeout):
            while True:
                for index, frame in enumerate(self.inbox):
                    if predicate(frame):
                        return self.inbox.pop(index)
                self.inbox += await self.receive_frame()

    async def subscribe(
        self, channel: str, since: int | None = None, epoch: str | None = None
    ) -> dict[str, Any]:
        frame_id = next(self.ids)
        frame: dict[str, Any] = {"type": "subscribe", "id": frame_id, "channel": channel}
        if since is not None:
            frame["since"] = since
        if epoch is not None:
            frame["epoch"] = epoch
        await self.send(frame)
        return await self.until(
            lambda f: f.get("id") == frame_id and f.get("type") in ("subscribed", "error")
        )

    async def barrier(self, channel: str | None = None) -> None:
        """Every event published before this call is in ``inbox`` after it: events are
        queued when their mutation commits, and a subscribe answer is queued behind
        whatever the session already holds. Non-admin sessions
        name a channel they may subscribe to (subscribing twice is harmless)."""
        channel = channel or BARRIER_ROOT.format(f"{next(_barriers):032x}")
        answer = await self.subscribe(channel)
        assert answer["type"] == "subscribed", answer

    def take_events(self) -> list[dict[str, Any]]:
        events = [f for f in self.inbox if "action" in f]
        self.inbox = [f for f in self.inbox if "action" not in f]
        return events


@asynccontextmanager
async def ws_connect(
    base_url: str,
    token: str | None,
    encoding: str = "json",
    query_token: bool = False,
    scheme: str = "Token",
) -> AsyncIterator[WsClient]:
    url = base_url.replace("http://", "ws://") + "/ws"
    headers = []
    if token and query_token:
        url += f"?token={token}"
    elif token:
        headers.append(("Authorization", f"{scheme} {token}"))
    protocols = [f"chatengine.v1.{encoding}"]
    async with open_websocket_url(
        url,
        subprotocols=protocols,
        extra_headers=headers,
        message_queue_size=100_000,
        max_message_size=64 * 1024 * 1024,
    ) as connection:
        yield WsClient(connection, encoding)
