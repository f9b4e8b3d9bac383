"""Raw WebSocket peers for abuse and fuzz tests: frames built byte by byte (so that
malformed ones can be sent too), over a plain socket.

``frame`` builds any client frame; ``BlockingPeer`` is a blocking-socket peer for a
thread (a flooder must not share the test's event loop with what it measures);
``open_raw`` is its trio twin, with wsproto reading what the server answers.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import trio
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, Request
from wsproto.utilities import RemoteProtocolError

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
DROPPED = -1  # the server ended the connection without a close frame


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x00\x00\x00\x00",
    length: int | None = None,
) -> bytes:
    """One client frame (RFC 6455, section 5.2). ``mask=None`` sends it unmasked (a protocol
    error from a client); ``length`` may lie about the payload's size."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0xF])
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if mask is None:
        return head + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if any(mask) else payload
    return head + mask + masked


def upgrade_request(token: str, protocol: str = "chatengine.v1.json") -> bytes:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {protocol}\r\nAuthorization: Token {token}\r\n\r\n"
    ).encode()


class BlockingPeer:
    """A WebSocket peer on a blocking socket, for use in a thread."""

    def __init__(self, port: int, token: str, *, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(upgrade_request(token))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())

    def flood(self, data: bytes, seconds: float) -> int:
        """Send ``data`` again and again for ``seconds``; the bytes sent."""
        sent = 0
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                self.sock.sendall(data)
            except TimeoutError:
                continue
            except OSError:
                break
            sent += len(data)
        return sent

    def drain(self, seconds: float) -> int:
        """Read and drop whatever arrives, for at most ``seconds``; the bytes read."""
        received = 0
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += len(chunk)
        return received

    def read_until(self, marker: bytes, seconds: float) -> None:
        """Read (and drop) what the server sends until ``marker`` was in it."""
        tail = b""
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.5)
        while marker not in tail:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {marker!r} within {seconds} s")
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}")
            tail = tail[-len(marker) :] + chunk

    def close_code(self, seconds: float) -> int | None:
        """Read (and drop) the server's frames up to its close frame: its code, None
        for an end of stream or ``seconds`` passing first."""
        buffer = bytearray()
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            while len(buffer) >= 2:
                length = buffer[1] & 0x7F
                start = 2
                if length == 126:
                    length, start = struct.unpack_from("!H", buffer, 2)[0], 4
                elif length == 127:
                    length, start = struct.unpack_from("!Q", buffer, 2)[0], 10
                if len(buffer) < start + length:
                    break
                if buffer[0] & 0x0F == OP_CLOSE:
                    code: int = struct.unpack_from("!H", buffer, start)[0]
                    return code
                del buffer[: start + length]
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buffer += chunk
        return None

    def close(self) -> None:
        self.sock.close()


class RawPeer:
    """A trio WebSocket peer sending raw bytes, reading the server with wsproto."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.close_code: int | None = None
        self.messages: list[str | bytes] = []
        self._parts: list[Any] = []  # of a message whose frame has not all arrived

    async def send(self, data: bytes) -> bool:
        """False when the server has already closed the connection."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _receive(self) -> list[Any] | None:
        """The next events; None once the server dropped the connection."""
        try:
            data = await self.stream.receive_some(1 << 16)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            return None
        try:
            self.ws.receive_data(data)
            return list(self.ws.events())
        except RemoteProtocolError:
            return None

    async def read_until_closed(self, timeout: float) -> int | None:
        """Read everything the server sends (kept in ``messages``) until it closes:
        its close code, DROPPED for an end of stream without one, None when
        ``timeout`` passed first."""
        with trio.move_on_after(timeout):
            while True:
                events = await self._receive()
                if events is None:
                    return DROPPED
                for event in events:
                    if isinstance(event, CloseConnection):
                        self.close_code = event.code
                        return event.code
                    data = getattr(event, "data", None)
                    if data is None:
                        continue
                    # wsproto hands over what has arrived of a frame as it arrives: a
                    # message is whole only at message_finished
                    self._parts.append(data)
                    if event.message_finished:
                        self.messages.append(data[:0].join(self._parts))
                        self._parts.clear()
        return None

    async def aclose(self) -> None:
        await self.stream.aclose()


async def open_raw(
    port: int,
    token: str,
    *,
    receive_buffer: int | None = None,
    protocol: str = "chatengine.v1.json",
) -> RawPeer:
    sock = trio.socket.socket()
    if receive_buffer is not None:  # a client that reads slowly fills it at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    peer = RawPeer(stream)
    await stream.send_all(
        peer.ws.send(
            Request(
                host="127.0.0.1",
                target="/ws",
                subprotocols=[protocol],
                extra_headers=[(b"authorization", f"Token {token}".encode())],
            )
        )
    )
    with trio.fail_after(10):
        while True:
            events = await peer._receive()
            if events is None or any(isinstance(e, RejectConnection) for e in events):
                raise ConnectionError("upgrade refused")
            if any(isinstance(e, AcceptConnection) for e in events):
                return peer
