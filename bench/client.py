"""Minimal keep-alive HTTP/1.1 clients for load generation: ``HttpConnection`` over trio
sockets, ``Burst`` (many requests fired at once) and ``closed_loop`` (each connection
sends its next request when its answer arrived), the last two with epoll and no tasks.

A general-purpose client (httpx) spends more CPU per request than the server under
test on this 2-core machine, which would make the generator the bottleneck. These do
only what the bench needs: one request at a time per connection, Content-Length
bodies, 127.0.0.1 only.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

import trio

LOOPBACK = "127.0.0.1"


class HttpConnection:
    def __init__(self, stream: trio.SocketStream, port: int, token: str | None) -> None:
        self._stream = stream
        self._buffer = b""
        self._port = port
        self._token = token

    @classmethod
    async def open(cls, port: int, token: str | None = None) -> HttpConnection:
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        return cls(stream, port, token)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        await self._stream.send_all(request_bytes(method, path, body, self._port, self._token))
        while (answer := _complete_answer(self._buffer)) is None:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk
        status, payload, used = answer
        self._buffer = self._buffer[used:]
        return status, payload

    async def aclose(self) -> None:
        await self._stream.aclose()


def request_bytes(
    method: str, path: str, body: bytes | None, port: int, token: str | None = None
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
    if token:
        head += f"Authorization: Token {token}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


class Burst:
    """Many requests fired at once, one keep-alive connection each, with no task per
    request: the connections are opened up front, ``fire`` writes every request then
    reads the answers as epoll reports them. A trio task per request cost the generator
    about as much CPU as the server spent answering, on a machine where both share two
    cores (docs/benchmarks.md, storm)."""

    def __init__(self, port: int, count: int) -> None:
        self.sockets: list[socket.socket] = []
        for _ in range(count):
            sock = socket.create_connection((LOOPBACK, port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets.append(sock)

    def fire(self, requests: list[bytes], timeout: float) -> list[tuple[int, bytes, float]]:
        """(status, body, milliseconds from this request's write to its answer's end)."""
        count = len(requests)
        assert count == len(self.sockets)
        poller = select.epoll(count)
        by_fd: dict[int, int] = {}
        started = [0.0] * count
        for index, (sock, request) in enumerate(zip(self.sockets, requests, strict=True)):
            started[index] = time.perf_counter()
            sock.sendall(request)  # a small request: the socket buffer takes it at once
            by_fd[sock.fileno()] = index
            poller.register(sock.fileno(), select.EPOLLIN)
        buffers = [b""] * count
        results: list[tuple[int, bytes, float] | None] = [None] * count
        waiting = count
        deadline = time.monotonic() + timeout
        try:
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{waiting} of {count} answers missing after {timeout} s")
                for fd, _ in poller.poll(left):
                    index = by_fd[fd]
                    chunk = self.sockets[index].recv(65536)
                    if not chunk:
                        raise ConnectionError("the server closed a connection mid-burst")
                    buffers[index] += chunk
                    answer = _complete_answer(buffers[index])
                    if answer is not None:
                        ms = (time.perf_counter() - started[index]) * 1000
                        results[index] = (answer[0], answer[1], ms)
                        poller.unregister(fd)
                        waiting -= 1
        finally:
            poller.close()
        return [result for result in results if result is not None]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def closed_loop(
    port: int,
    connections: int,
    seconds: float,
    next_request: Callable[[], tuple[str, bytes]],
    *,
    max_requests: int = 10_000_000,
) -> tuple[list[tuple[str, float]], int]:
    """``connections`` keep-alive connections, each sending its next request (``(kind,
    bytes)`` from ``next_request``) as soon as the previous answer arrived, for
    ``seconds`` (and at most ``max_requests`` in all). Returns ``(kind, milliseconds)``
    per answer and the count of answers with a status of 400 or more. One epoll loop,
    no task per connection: a trio task per connection cost the generator about what a
    ``GET /healthz`` costs the server."""
    sockets = []
    for _ in range(connections):
        sock = socket.create_connection((LOOPBACK, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockets.append(sock)
    poller = select.epoll(connections)
    by_fd = {sock.fileno(): index for index, sock in enumerate(sockets)}
    buffers = [b""] * connections
    pending: list[tuple[str, float]] = [("", 0.0)] * connections
    samples: list[tuple[str, float]] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds

    def send(index: int) -> None:
        nonlocal sent
        kind, request = next_request()
        pending[index] = (kind, time.perf_counter())
        sockets[index].sendall(request)  # small: the socket buffer takes it at once
        sent += 1

    try:
        for index, sock in enumerate(sockets):
            send(index)
            poller.register(sock.fileno(), select.EPOLLIN)
        open_connections = connections
        while open_connections:
            for fd, _ in poller.poll(max(0.0, deadline - time.perf_counter()) + 30):
                index = by_fd[fd]
                chunk = sockets[index].recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed a connection")
                buffers[index] += chunk
                answer = _complete_answer(buffers[index])
                if answer is None:
                    continue
                status, _, used = answer
                buffers[index] = buffers[index][used:]
                kind, started = pending[index]
                now = time.perf_counter()
                samples.append((kind, (now - started) * 1000))
                if status >= 400:
                    errors += 1
                if now < deadline and sent < max_requests:
                    send(index)
                else:
                    poller.unregister(fd)
                    open_connections -= 1
            if time.perf_counter() > deadline + 30:
                raise TimeoutError("answers missing 30 s after the end of the phase")
    finally:
        poller.close()
        for sock in sockets:
            sock.close()
    return samples, errors


def _complete_answer(buffer: bytes) -> tuple[int, bytes, int] | None:
    """(status, body, bytes used) of the first complete answer in ``buffer``."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in buffer[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(buffer) < end + 4 + length:
        return None
    return int(buffer[9:12]), buffer[end + 4 : end + 4 + length], end + 4 + length
