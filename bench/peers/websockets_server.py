"""The ceiling of a Python WebSocket server: the `websockets` library's own
``broadcast`` (a synchronous write of one frame to every connection), nothing else.

A text message from a client is broadcast to every other client.

    python -m bench.peers.websockets_server --port 8002
"""

from __future__ import annotations

import argparse
import asyncio

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

CLIENTS: set[ServerConnection] = set()


async def handler(connection: ServerConnection) -> None:
    CLIENTS.add(connection)
    try:
        async for message in connection:
            broadcast([other for other in CLIENTS if other is not connection], message)
    except ConnectionClosed:
        pass  # the generator drops its sessions without closing handshakes
    finally:
        CLIENTS.discard(connection)


async def run(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, backlog=4096):
        await asyncio.get_running_loop().create_future()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(run(parser.parse_args().port))


if __name__ == "__main__":
    main()
