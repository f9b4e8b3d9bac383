"""The floor of a Python HTTP server on trio: keep-alive connections, each request's
head and ``Content-Length`` body read, one constant JSON answer written, nothing else
(no routing, no validation, no state).

The storm scenario fires its bursts at it with the same generator, so the cost of
Python, trio and the sockets on this machine is measured in the same run as the engine.

    python -m bench.peers.bare_http_server --port 8003
"""

from __future__ import annotations

import argparse
import socket

import trio

ANSWER = (
    b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'
)


async def _recv_into(conn: socket.socket, buffer: bytearray) -> bool:
    while True:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(conn)
            continue
        except OSError:
            return False
        buffer += data
        return bool(data)


async def serve_connection(conn: socket.socket) -> None:
    buffer = bytearray()
    try:
        while True:
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                if not await _recv_into(conn, buffer):
                    return
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                if not await _recv_into(conn, buffer):
                    return
            del buffer[:length]
            try:
                conn.send(ANSWER)  # small: fits the socket buffer
            except OSError:
                return
    finally:
        conn.close()


async def run(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(serve_connection, conn)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    trio.run(run, parser.parse_args().port)


if __name__ == "__main__":
    main()
