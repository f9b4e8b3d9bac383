"""A minimal WebSocket client connection: wsproto's sans-IO state machine over an anyio
byte stream, so it runs under asyncio and trio alike.

It does what the channel client needs and no more: the opening handshake (with a
subprotocol and extra headers), text and binary messages (fragments joined), pings
answered as they arrive, pings sent on demand, and the close handshake, with the peer's
close code reported as :class:`WebSocketClosed`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

ABNORMAL_CLOSURE = 1006
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_REJECT_BODY = 64 * 1024


class WebSocketClosed(Exception):
    """The session ended: ``code`` is the close code the peer sent (1006 when the
    connection broke without a close frame), ``reason`` its reason text."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed with {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


class HandshakeRejected(Exception):
    """The server answered the upgrade with an HTTP status instead of a session."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"WebSocket upgrade refused with HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body
        self.headers = headers


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str  # with the query
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"not a WebSocket URL: {url!r}")
        tls = parts.scheme in ("wss", "https")
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or (443 if tls else 80), path, tls)

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class WebSocket:
    """One open client session. Sends are serialised by a lock, so several tasks may
    send; one task at a time may call :meth:`receive`."""

    def __init__(self, stream: ByteStream, protocol: WSConnection, subprotocol: str | None):
        self._stream = stream
        self._protocol = protocol
        self.subprotocol = subprotocol
        self._send_lock = anyio.Lock()
        self._pending: list[Event] = []
        self._fragments: list[str] | list[bytes] = []
        self._fragment_bytes = 0
        self.closed: WebSocketClosed | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        subprotocols: list[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> WebSocket:
        """Open a TCP (or TLS) connection and upgrade it. Raises
        :class:`HandshakeRejected` for an HTTP answer, ``OSError`` when the server
        cannot be reached; the caller bounds the time (``anyio.fail_after``)."""
        target = Target.parse(url)
        stream: ByteStream
        if target.tls:
            stream = await anyio.connect_tcp(
                target.host,
                target.port,
                ssl_context=ssl_context or ssl.create_default_context(),
                tls_hostname=target.host,
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(target.host, target.port)
        try:
            protocol = WSConnection(ConnectionType.CLIENT)
            request = Request(
                host=target.host_header,
                target=target.path,
                subprotocols=subprotocols or [],
                extra_headers=[(k.encode(), v.encode()) for k, v in headers or []],
            )
            await stream.send(protocol.send(request))
            websocket = await cls._finish_handshake(stream, protocol)
        except RemoteProtocolError as error:  # not an HTTP answer wsproto can read
            await anyio.aclose_forcefully(stream)
            raise WebSocketClosed(1002, f"bad handshake answer: {error}") from error
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        return websocket

    @classmethod
    async def _finish_handshake(cls, stream: ByteStream, protocol: WSConnection) -> WebSocket:
        rejection: RejectConnection | None = None
        body = b""
        while True:
            try:
                data = await stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                data = b""
            if not data:
                if rejection is not None:
                    raise HandshakeRejected(rejection.status_code, body, _headers(rejection))
                raise WebSocketClosed(ABNORMAL_CLOSURE, "connection closed during the handshake")
            protocol.receive_data(data)
            events = list(protocol.events())
            for index, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    websocket = cls(stream, protocol, event.subprotocol)
                    websocket._pending = events[index + 1 :]
                    return websocket
                if isinstance(event, RejectConnection):
                    rejection = event
                    if not event.has_body:
                        raise HandshakeRejected(event.status_code, b"", _headers(event))
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished or len(body) > MAX_REJECT_BODY:
                        assert rejection is not None
                        raise HandshakeRejected(rejection.status_code, body, _headers(rejection))

    async def send(self, message: str | bytes) -> None:
        """Send one text (``str``) or binary (``bytes``) message."""
        if self.closed is not None:
            raise self.closed
        if isinstance(message, str):
            await self._send(TextMessage(data=message))
        else:
            await self._send(BytesMessage(data=message))

    async def ping(self, payload: bytes = b"") -> None:
        await self._send(Ping(payload=payload))

    async def _send(self, event: Event) -> None:
        async with self._send_lock:
            try:
                data = self._protocol.send(event)
            except LocalProtocolError as error:  # the session is already closing
                raise self.closed or WebSocketClosed(ABNORMAL_CLOSURE, str(error)) from error
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
                self.closed = self.closed or WebSocketClosed(ABNORMAL_CLOSURE, str(error))
                raise self.closed from error

    async def receive(self) -> str | bytes:
        """The next whole message; raises :class:`WebSocketClosed` when the session ends
        (after answering the peer's close frame)."""
        while True:
            while self._pending:
                event = self._pending.pop(0)
                message = await self._handle(event)
                if message is not None:
                    return message
            if self.closed is not None:
                raise self.closed
            try:
                data: bytes | None = await self._stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = None
            except anyio.ClosedResourceError:
                data = None
            if data is None:
                self.closed = self.closed or WebSocketClosed(ABNORMAL_CLOSURE, "connection lost")
                await anyio.aclose_forcefully(self._stream)
                raise self.closed
            self._protocol.receive_data(data)
            self._pending.extend(self._protocol.events())

    async def _handle(self, event: Event) -> str | bytes | None:
        if isinstance(event, TextMessage | BytesMessage):
            self._fragments.append(event.data)  # type: ignore[arg-type]
            self._fragment_bytes += len(event.data)
            if self._fragment_bytes > MAX_MESSAGE_BYTES:
                await self.aclose(1009)
                raise WebSocketClosed(1009, "message too large")
            if not event.message_finished:
                return None
            parts, self._fragments, self._fragment_bytes = self._fragments, [], 0
            if isinstance(event, TextMessage):
                return "".join(parts)  # type: ignore[arg-type]
            return b"".join(parts)  # type: ignore[arg-type]
        if isinstance(event, Ping):
            try:
                await self._send(event.response())
            except WebSocketClosed:
                pass
            return None
        if isinstance(event, CloseConnection):
            self.closed = WebSocketClosed(int(event.code), event.reason or "")
            if self._protocol.state is ConnectionState.REMOTE_CLOSING:
                try:
                    await self._send(event.response())
                except WebSocketClosed:
                    pass
            await anyio.aclose_forcefully(self._stream)
            raise self.closed
        return None  # a pong: its arrival already counts as traffic

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake and drop the connection (without waiting long for
        the peer's answer: the caller is done with the session)."""
        if self._protocol.state is ConnectionState.OPEN:
            try:
                with anyio.move_on_after(2):
                    await self._send(CloseConnection(code=code, reason=reason or None))
            except WebSocketClosed:
                pass
        self.closed = self.closed or WebSocketClosed(code, reason)
        await anyio.aclose_forcefully(self._stream)


def _headers(rejection: RejectConnection) -> dict[str, str]:
    return {
        bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in rejection.headers
    }
