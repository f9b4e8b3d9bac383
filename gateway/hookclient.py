"""The HTTP/1.1 client webhook delivery POSTs with: h11 (the sans-IO parser the server
side uses too) over a trio stream, TLS through ``trio.SSLStream``.

One ``HookConnection`` per endpoint, one request at a time (delivery is in order), kept
alive between deliveries. It connects to the address it is given (the one checked
against ``--webhook-allow``) while naming the original host (``Host``, TLS server name
and certificate check). Redirects are answers like any other (not 2xx: a failure), an
answer's body is read up to ``MAX_ANSWER_BYTES`` and dropped, and the caller bounds the
whole exchange with a deadline.

Why not httpx: with one delivery for each message posted, httpx's client cost the server
several times the CPU a delivery that this one does, and fell behind the posts where this
one keeps up (docs/benchmarks.md, "With a webhook endpoint"; docs/decisions.md).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import h11
import trio

MAX_ANSWER_BYTES = 64 * 1024  # of a receiver's answer, read and dropped
READ_BYTES = 65536


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str  # http or https
    address: str  # the checked IP address connected to
    port: int
    host: str  # the URL's host: TLS server name
    host_header: str  # the URL's host[:port]
    path: str  # path and query


class ReceiverError(Exception):
    """The exchange failed before an answer's status arrived."""


class HookConnection:
    def __init__(self) -> None:
        self._stream: trio.abc.Stream | None = None
        self._h11: h11.Connection | None = None
        self._target: Target | None = None

    async def aclose(self) -> None:
        stream, self._stream, self._h11 = self._stream, None, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def post(self, target: Target, headers: list[tuple[str, str]], body: bytes) -> int:
        """The answer's status. A kept-alive connection that the receiver closed
        meanwhile is replaced once, at once."""
        reused = self._stream is not None and self._target == target
        if not reused:
            await self._connect(target)
        try:
            return await self._exchange(target, headers, body)
        except ReceiverError:
            await self.aclose()
            if not reused:
                raise
        await self._connect(target)
        try:
            return await self._exchange(target, headers, body)
        except ReceiverError:
            await self.aclose()
            raise

    async def _connect(self, target: Target) -> None:
        await self.aclose()
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(target.address, target.port)
        except OSError as error:
            raise ReceiverError(f"cannot connect: {error}") from None
        if target.scheme == "https":
            secure = trio.SSLStream(
                stream,
                ssl.create_default_context(),
                server_hostname=target.host,
                https_compatible=True,
            )
            try:
                await secure.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError) as error:
                await trio.aclose_forcefully(stream)
                raise ReceiverError(f"TLS handshake failed: {error}") from None
            stream = secure
        self._stream, self._h11, self._target = stream, h11.Connection(h11.CLIENT), target

    async def _exchange(self, target: Target, headers: list[tuple[str, str]], body: bytes) -> int:
        stream, connection = self._stream, self._h11
        assert stream is not None and connection is not None
        try:
            request = h11.Request(
                method="POST",
                target=target.path,
                headers=[
                    ("Host", target.host_header),
                    ("Content-Length", str(len(body))),
                    *headers,
                ],
            )
        except (h11.ProtocolError, UnicodeError) as error:  # a URL no request line can carry
            raise ReceiverError(f"cannot be sent: {error}") from None
        status: int | None = None
        read = 0
        try:
            await stream.send_all(
                connection.send(request)
                + connection.send(h11.Data(data=body))
                + connection.send(h11.EndOfMessage())
            )
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(READ_BYTES)
                    connection.receive_data(bytes(data))  # b"": the peer closed
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    read += len(event.data)
                    if read > MAX_ANSWER_BYTES:  # a long answer: this connection ends
                        await self.aclose()
                        assert status is not None
                        return status
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ReceiverError("the receiver closed the connection")
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            h11.ProtocolError,
            OSError,
        ) as error:
            if status is None:
                raise ReceiverError(f"{type(error).__name__}: {error}") from None
            await self.aclose()
            return status
        assert status is not None
        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
        else:
            await self.aclose()
        return status
