"""A server-side WebSocket over a plain non-blocking socket, with wsproto for parsing.

This is the write path that bounds fan-out, so it avoids everything it can: a data
frame is a two-to-ten byte header in front of bytes that are already encoded (the
router encodes each event once), and it goes to the kernel with one synchronous
``send``. Only when the kernel's buffer is full does a task wait (``wait_writable``),
and while it waits the session sends nothing more, so a slow reader backs up into its
own bounded queue and is closed with 4008 there. Reading goes through wsproto, which
checks framing, masking, UTF-8 and the close handshake.

The server pings every ``ping_interval`` seconds; a peer from which nothing at all
arrived for ``read_timeout`` seconds is dropped, and so is one that stays behind for
``write_timeout`` seconds (a total deadline kept by the session, not one per write).

Reading yields to trio once per received chunk and once per protocol event, however
fast the peer sends: a peer flooding pings or empty continuation frames gets its turn
like every other task, and cannot hold the event loop.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

import trio
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from engine import errors
from engine.realtime.protocol import MESSAGE_TOO_BIG
from gateway.sockets import receive
from gateway.web import error_body

OP_TEXT = 0x1
OP_BINARY = 0x2
NOTSENT_LOWAT = 16384
MAX_HEAD = 16384  # bytes of request head before the upgrade is refused
# wsproto decodes the Connection, Sec-WebSocket-Protocol and Sec-WebSocket-Extensions
# values as ASCII and the Host as a host name (IDNA); a value that does not decode is
# the peer's error like any other malformed upgrade, not the server's.
UNDECODABLE = (
    "GET /ws takes a WebSocket upgrade whose Host is a host name and whose Connection and "
    "Sec-WebSocket-* headers are ASCII."
)
# Where a head ends, as h11 (under wsproto) finds it: the first empty line, CRLF or LF.
HEAD_END = re.compile(rb"\n\r?\n")


class Disconnected(Exception):
    """The peer is gone, or broke the protocol; the session ends."""


@dataclass(slots=True)
class WsLimits:
    max_message: int = 64 * 1024
    ping_interval: float = 25.0
    read_timeout: float = 60.0
    write_timeout: float = 60.0
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0


def data_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented, unmasked server frame (RFC 6455, section 5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((0x80 | opcode, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, length) + payload


def upgrade_head(
    method: bytes, target: bytes, http_version: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> bytes:
    """The head of a request an HTTP server has already parsed, written out again so
    that the handshake reads it as if it came from the socket (h11 has checked every
    part of it). How an upgrade sent as a later request of a kept-alive connection
    reaches the one handshake path."""
    lines = [b"%s %s HTTP/%s\r\n" % (method, target, http_version)]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
    lines.append(b"\r\n")
    return b"".join(lines)


def http_response(status: int, reason: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class RawWebSocket:
    def __init__(self, sock: socket.socket, limits: WsLimits) -> None:
        # As trio's SocketStream does: the kernel holds at most 16 KiB not yet sent, so
        # a peer that stops reading makes ``send`` stop taking bytes quickly and backs
        # up into the session's own bounded queue (-> 4008), not into kernel memory.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        self.sock = sock
        self.limits = limits
        self.protocol = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self._out = bytearray()
        self._flush_lock = trio.Lock()
        self._parts: list[str | bytes] = []
        self._size = 0
        self._last_read = trio.current_time()
        self.close_code: int | None = None  # set once a close frame went out
        self.handshake_done = False  # the upgrade was accepted: frames may follow
        # bytes the peer sent after the upgrade's head, before our answer: its first
        # frames, read once the upgrade is accepted
        self._early = b""
        # the upgrade was refused: (status, detail, body bytes), for the access log
        self.refused: tuple[int, str, int] | None = None

    # -- the handshake -----------------------------------------------------------
    async def handshake(self, received: bytes = b"") -> Request | None:
        """The upgrade request, or None (peer gone, too slow, or not an upgrade; a
        non-upgrade request, or one with a header wsproto cannot decode, has been
        answered with 400, a head over ``MAX_HEAD`` with 431: ``refused`` says so). ``received``: bytes of this connection already read (an HTTP server that
        parsed the upgrade as a later request hands over its head and what followed),
        read first, as if they had just arrived."""
        # The head is measured here, before wsproto sees it: h11 under wsproto bounds
        # only a head still incomplete, so a large one in one write went through, and
        # wsproto reports h11's 431 as a plain "Bad HTTP message".
        head = bytearray()
        with trio.move_on_after(self.limits.handshake_timeout):
            while True:
                if received:
                    data, received = received, b""
                    await trio.lowlevel.checkpoint()  # a turn for others, as a read gives
                else:
                    data = await self._recv()
                    if not data:
                        return None
                head += data
                found = HEAD_END.search(head)
                end = found.end() if found else len(head)
                if end > MAX_HEAD:
                    refusal = errors.Invalid(f"The request head is over {MAX_HEAD} bytes.")
                    await self.reject(refusal, 431)
                    return None
                try:
                    self.protocol.receive_data(data)
                    for event in self.protocol.events():
                        if isinstance(event, Request):
                            self._early = bytes(head[end:])
                            return event
                except RemoteProtocolError as error:
                    await self.reject(errors.Invalid(f"GET /ws takes a WebSocket upgrade: {error}"))
                    return None
                except UnicodeError:  # UnicodeDecodeError, or IDNA's for a bad Host
                    await self.reject(errors.Invalid(UNDECODABLE))
                    return None
        return None

    async def reject(self, error: errors.EngineError, status: int | None = None) -> None:
        """Answer the upgrade with ``error``'s JSON body (and its status, unless
        ``status`` is given), then the connection closes."""
        status = status or error.status
        body = error_body(error)
        self.refused = (status, error.detail, len(body))
        self.write(http_response(status, HTTPStatus(status).phrase, body, "application/json"))
        await self.flush()

    async def accept(self, subprotocol: str | None) -> None:
        self.write(self.protocol.send(AcceptConnection(subprotocol=subprotocol)))
        self.handshake_done = True
        if self._early:  # wsproto drops what followed the head: its frames start here
            self.protocol.receive_data(self._early)
            self._early = b""
        await self.flush()

    # -- writing -----------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Bytes the kernel has not taken yet."""
        return len(self._out)

    def write(self, data: bytes) -> None:
        """Hand bytes to the kernel now if it takes them; keep the rest, in order.

        What is kept stays small: every writer waits (``flush``) before writing again
        once anything is kept, so it holds at most one frame and a control frame."""
        if self._out:
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            raise Disconnected(str(error)) from None
        if sent < len(data):
            self._out += memoryview(data)[sent:]

    def send_frame(self, opcode: int, payload: bytes) -> None:
        self.write(data_frame(opcode, payload))

    async def flush(self, deadline: float | None = None) -> None:
        """Wait until the kernel took every byte written so far, at the latest by
        ``deadline`` (default: ``write_timeout`` from now)."""
        if not self._out:
            return
        if deadline is None:
            deadline = trio.current_time() + self.limits.write_timeout
        # the deadline covers the wait for the lock too: the other writer (the reader
        # answering a ping) may be the one stuck on a peer that does not read
        with trio.move_on_at(deadline) as scope:
            async with self._flush_lock:
                while self._out:
                    await trio.lowlevel.wait_writable(self.sock)
                    try:
                        sent = self.sock.send(self._out)
                    except BlockingIOError:
                        continue
                    except OSError as error:
                        raise Disconnected(str(error)) from None
                    del self._out[:sent]
        if scope.cancelled_caught:
            raise Disconnected("the peer took too long to take what was written")

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (no-op once a close frame went out)."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.write(self.protocol.send(CloseConnection(code=code, reason=reason)))
        await self.flush()

    def close_at_once(self, code: int, reason: str) -> None:
        """Send a close frame if the kernel takes it now, without waiting; for a
        session that is ending anyway (an unexpected error)."""
        if self.close_code is not None:
            return
        self.close_code = code
        # the error may have come from the protocol state itself: the connection is
        # dropped either way
        with contextlib.suppress(Exception):
            self.write(self.protocol.send(CloseConnection(code=code, reason=reason)))

    # -- reading -----------------------------------------------------------------
    async def _recv(self) -> bytes:
        data = await receive(self.sock)  # yields once: a peer that always has data waits its turn
        if data:
            self._last_read = trio.current_time()
        return data

    async def receive(self) -> str | bytes:
        """The next whole message; answers pings and the peer's close on the way.

        Raises Disconnected when the connection ends (after a close from either side).
        """
        while True:
            for event in self.protocol.events():
                # one turn per event: a single chunk can hold ten thousand pings
                await trio.lowlevel.checkpoint()
                message = await self._on_event(event)
                if message is not None:
                    return message
            data = await self._recv_or_ping()
            if not data:
                raise Disconnected("end of stream")
            self.protocol.receive_data(data)

    async def _recv_or_ping(self) -> bytes:
        limits = self.limits
        while True:
            with trio.move_on_after(limits.ping_interval):
                return await self._recv()
            if trio.current_time() - self._last_read >= limits.read_timeout:
                raise Disconnected("the peer was silent for the read timeout")
            if self.close_code is None:
                self.write(self.protocol.send(Ping()))
                await self.flush()

    async def _on_event(self, event: object) -> str | bytes | None:
        if isinstance(event, (TextMessage, BytesMessage)):
            self._size += len(event.data)
            if self._size > self.limits.max_message:
                await self.close(*MESSAGE_TOO_BIG)
                raise Disconnected("message too big")
            if event.data:  # an empty continuation frame adds nothing to keep
                self._parts.append(
                    bytes(event.data) if isinstance(event.data, bytearray) else event.data
                )
            if not event.message_finished:
                return None
            parts, self._parts, self._size = self._parts, [], 0
            if len(parts) == 1:
                return parts[0]
            if not parts:
                return "" if isinstance(event, TextMessage) else b""
            return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)  # type: ignore[arg-type]
        if isinstance(event, Ping):
            # after our close frame only the peer's close may come back (RFC 6455 5.5.1):
            # its pings go unanswered, and wsproto refuses to send a pong then
            if self.close_code is None:
                self.write(self.protocol.send(event.response()))
                await self.flush()
        elif isinstance(event, CloseConnection):
            if self.close_code is None:
                # the peer closes first (or wsproto closes on a protocol error): answer
                self.close_code = event.code
                self.write(self.protocol.send(event.response()))
                await self.flush()
            raise Disconnected("closed")
        elif isinstance(event, Pong):
            pass
        return None

    def abort(self) -> None:
        try:
            self.sock.close()
        except OSError:  # pragma: no cover - close does not fail on a stream socket
            pass
