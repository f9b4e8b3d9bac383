"""Minimal keep-alive HTTP/1.1 clients for load generation: ``HttpConnection`` over trio
sockets, ``Burst`` (many requests fired at once) and ``closed_loop`` (each connection
sends its next request when its answer arrived), the last two with epoll and no tasks.

A general-purpose client (httpx) spends more CPU per request than the server under
test on this 2-core machine, which would make the generator the bottleneck. These do
only what the bench needs: one request at a time per connection, Content-Length
bodies, plain http:// (a scenario's own server on 127.0.0.1, or the addresses of a
deployment given with ``--url``).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

import trio

LOOPBACK = "127.0.0.1"


class Address(NamedTuple):
    """Where a server listens: a host name or IP, and a port."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def authority(self) -> str:
        """The Host header's value."""
        return self.url.removeprefix("http://")


def loopback(port: int) -> Address:
    return Address(LOOPBACK, port)


def connect(address: Address, timeout: float = 30) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class HttpConnection:
    def __init__(self, stream: trio.SocketStream, address: Address, token: str | None) -> None:
        self._stream = stream
        self._buffer = b""
        self._address = address
        self._token = token

    @classmethod
    async def open(cls, address: Address, token: str | None = None) -> HttpConnection:
        stream = await trio.open_tcp_stream(*address)
        return cls(stream, address, token)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        await self._stream.send_all(request_bytes(method, path, body, self._address, self._token))
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
    method: str, path: str, body: bytes | None, address: Address, token: str | None = None
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {address.authority}\r\n"
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

    def __init__(self, addresses: list[Address]) -> None:
        """One connection per address given (an address may come many times)."""
        self.sockets = [connect(address) for address in addresses]

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
    addresses: list[Address],
    slots: int,
    seconds: float,
    next_request: Callable[[int], tuple[str, int, bytes]],
    *,
    max_requests: int = 10_000_000,
) -> tuple[list[tuple[str, float]], int]:
    """``slots`` clients, each sending its next request as soon as the previous answer
    arrived, for ``seconds`` (and at most ``max_requests`` in all). ``next_request(slot)``
    gives ``(kind, index into addresses, bytes)``; a slot keeps one keep-alive connection
    per address it sent to (opened on first use, the connect not timed), so that a
    request can go where it must (a write to the write URL, a read anywhere). Returns
    ``(kind, milliseconds)`` per answer and the count of answers with a status of 400 or
    more. One epoll loop, no task per connection: a trio task per connection cost the
    generator about what a ``GET /healthz`` costs the server."""
    poller = select.epoll()
    opened: dict[tuple[int, int], socket.socket] = {}
    owner: dict[int, tuple[int, socket.socket]] = {}  # fd -> (slot, its connection)
    buffers: dict[int, bytes] = {}
    pending: list[tuple[str, float]] = [("", 0.0)] * slots
    waiting_on: list[socket.socket | None] = [None] * slots  # each slot's request's socket
    samples: list[tuple[str, float]] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds

    def send(slot: int) -> None:
        nonlocal sent
        kind, target, request = next_request(slot)
        sock = opened.get((slot, target))
        if sock is None:
            sock = opened[(slot, target)] = connect(addresses[target])
            owner[sock.fileno()] = (slot, sock)
            buffers[sock.fileno()] = b""
            poller.register(sock.fileno(), select.EPOLLIN)
        pending[slot] = (kind, time.perf_counter())
        waiting_on[slot] = sock
        sock.sendall(request)  # small: the socket buffer takes it at once
        sent += 1

    try:
        for slot in range(slots):
            send(slot)
        busy = slots
        while busy:
            for fd, _ in poller.poll(max(0.0, deadline - time.perf_counter()) + 30):
                slot, sock = owner[fd]
                chunk = sock.recv(65536)
                if not chunk and waiting_on[slot] is not sock:
                    # an idle keep-alive connection the server timed out: reopened if used
                    poller.unregister(fd)
                    del owner[fd], opened[next(k for k, v in opened.items() if v is sock)]
                    sock.close()
                    continue
                if not chunk:
                    raise ConnectionError("the server closed a connection")
                buffers[fd] += chunk
                answer = _complete_answer(buffers[fd])
                if answer is None:
                    continue
                status, _, used = answer
                buffers[fd] = buffers[fd][used:]
                kind, started = pending[slot]
                now = time.perf_counter()
                samples.append((kind, (now - started) * 1000))
                if status >= 400:
                    errors += 1
                waiting_on[slot] = None
                if now < deadline and sent < max_requests:
                    send(slot)
                else:
                    busy -= 1
            if time.perf_counter() > deadline + 30:
                raise TimeoutError("answers missing 30 s after the end of the phase")
    finally:
        poller.close()
        for sock in opened.values():
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
