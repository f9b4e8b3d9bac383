"""A minimal keep-alive HTTP/1.1 client over trio sockets, for load generation.

A general-purpose client (httpx) spends more CPU per request than the server under
test on this 2-core machine, which would make the generator the bottleneck. This one
does only what the bench needs: one request at a time per connection, Content-Length
bodies, 127.0.0.1 only.
"""

from __future__ import annotations

import trio

LOOPBACK = "127.0.0.1"


class HttpConnection:
    def __init__(self, stream: trio.SocketStream, host: str, token: str | None) -> None:
        self._stream = stream
        self._buffer = bytearray()
        auth = f"Authorization: Token {token}\r\n" if token else ""
        self._headers = f"Host: {host}\r\n{auth}".encode()

    @classmethod
    async def open(cls, port: int, token: str | None = None) -> HttpConnection:
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        return cls(stream, f"{LOOPBACK}:{port}", token)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._headers
        if body is not None:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        await self._stream.send_all(head + b"\r\n" + (body or b""))
        return await self._read_response()

    async def _read_response(self) -> tuple[int, bytes]:
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        header = bytes(buffer[:end]).decode("latin-1")
        del buffer[: end + 4]
        status = int(header[9:12])
        length = 0
        for line in header.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(buffer) < length:
            await self._fill()
        payload = bytes(buffer[:length])
        del buffer[:length]
        return status, payload

    async def _fill(self) -> None:
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buffer += chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
