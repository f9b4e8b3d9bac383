"""python-socketio broadcasting to a room, deployed as its documentation recommends for
asyncio: ``socketio.AsyncServer(async_mode="asgi")`` wrapped in ``socketio.ASGIApp``
and served by uvicorn, one process.

A client's ``post`` event is emitted as ``message`` to every other member of the
``bench`` room, which each client joins when it connects.

    python -m bench.peers.socketio_server --port 8001
"""

from __future__ import annotations

import argparse

import socketio
import uvicorn

ROOM = "bench"


def build() -> socketio.ASGIApp:
    sio = socketio.AsyncServer(async_mode="asgi")

    @sio.event
    async def connect(sid: str, environ: dict, auth: object) -> None:
        await sio.enter_room(sid, ROOM)

    @sio.on("post")
    async def post(sid: str, data: object) -> None:
        await sio.emit("message", data, room=ROOM, skip_sid=sid)

    return socketio.ASGIApp(sio)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    uvicorn.run(build(), host="127.0.0.1", port=options.port, log_level="warning")


if __name__ == "__main__":
    main()
