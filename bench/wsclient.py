"""A minimal WebSocket subscriber over trio sockets + wsproto, for load generation.

It only connects to 127.0.0.1, subscribes, answers pings and hands every event to a
callback; no reconnects, no extras, so many sessions fit in one generator process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import trio
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

LOOPBACK = "127.0.0.1"


async def subscribe_and_listen(
    port: int,
    token: str,
    channel: str,
    on_events: Callable[[list[dict[str, Any]]], None],
    stop: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> int | None:
    """Returns the close code if the server closed the session, else None."""
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=LOOPBACK, target=f"/ws?token={token}")))
    accepted = False
    while not accepted:
        ws.receive_data(await stream.receive_some(65536))
        accepted = any(isinstance(event, AcceptConnection) for event in ws.events())
    frame = orjson.dumps({"type": "subscribe", "id": 1, "channel": channel}).decode()
    await stream.send_all(ws.send(TextMessage(data=frame)))
    subscribed = False
    text: list[str] = []
    with trio.CancelScope() as scope:

        async def stopper() -> None:
            await stop.wait()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopper)
            while True:
                data = await stream.receive_some(262144)
                if not data:
                    return None
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, TextMessage):
                        text.append(event.data)
                        if not event.message_finished:
                            continue
                        decoded = orjson.loads("".join(text))
                        text.clear()
                        items = decoded if isinstance(decoded, list) else [decoded]
                        if not subscribed and any(i.get("type") == "subscribed" for i in items):
                            subscribed = True
                            task_status.started()
                        on_events([i for i in items if "action" in i])
                    elif isinstance(event, Ping):
                        await stream.send_all(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        nursery.cancel_scope.cancel()
                        return event.code
    await stream.aclose()
    return None
