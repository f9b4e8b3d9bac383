"""HTTP/1.1 on a plain socket, handed to the request pipeline (``gateway/web.py``)
without hypercorn or ASGI.

Why: hypercorn's HTTP/1.1 path (h11, a task group and several events per request,
its timers) cost ~600 µs of CPU per request here, three times quart's own ~180 µs: a
burst of 1,000 contended calls took 1.6-2.1 s of CPU. This does the same job as the
front door does for WebSocket frames: read a request head with one ``recv``, read the
whole body (at most ``max_body`` bytes), call the handler, write the answer with one
``send``.

What it does, and what it leaves to hypercorn: HTTP/1.0 and 1.1 requests, keep-alive,
pipelined requests (answered in order), ``Content-Length`` and ``chunked`` bodies,
``Expect: 100-continue``, ``HEAD``. Anything else (HTTP/2 with prior knowledge) is
still hypercorn's: the front door peeks at the first bytes. A malformed head is
answered 400 and the connection closed; one longer than ``MAX_HEAD`` bytes is 431. A
body over ``max_body`` is 413 ``body_too_large`` without being read, and ends its
connection, as its unread bytes cannot be told from the next request. A body that
stalls for ``head_timeout`` ends the connection without an answer. ``Upgrade`` headers
are ignored (a server may); ``/ws`` gets here only as a later request on a connection,
which is refused with 400 (the front door serves it only as a connection's first
request).
"""

from __future__ import annotations

import email.utils
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import orjson
import trio

from engine import errors
from gateway.deadlines import Deadlines
from gateway.validation import MAX_BODY_BYTES
from gateway.web import INTERNAL, Request, Response, error_response

log = logging.getLogger("chat_engine.http")

MAX_HEAD = 64 * 1024  # request line and headers
RECV_SIZE = 65536
MAX_CHUNK_LINE = 1024

WS_LATE = "Open a new connection for GET /ws: it must be its first request."

Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """A request refused before the handler: answered with ``kind``'s JSON body and
    ``connection: close``."""

    def __init__(
        self, detail: str, status: int = 400, kind: type[errors.EngineError] = errors.Invalid
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.kind = kind


def _too_large(limit: int) -> BadRequest:
    return BadRequest(f"The body is over {limit} bytes.", 413, errors.BodyTooLarge)


class PeerGone(Exception):
    """The peer closed the connection, or it broke (a stall cancels the connection's
    scope instead)."""


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def parse_head(head: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]:
    """Request line and headers (names lower-cased, values stripped)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest("Malformed request line.")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/"):
            raise BadRequest("Only HTTP/1.0 and HTTP/1.1 are served here.", 505)
        raise BadRequest("Malformed request line.")
    if not method.isalpha() or not method.isupper():
        raise BadRequest("Malformed request method.")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name or b"\t" in name:
            raise BadRequest("Malformed header line.")  # also obsolete line folding
        headers.append((name.lower(), value.strip(b" \t")))
    return method, target, version, headers


def split_target(target: bytes) -> tuple[str, bytes]:
    """The decoded path and the raw query string of a request target."""
    path, _, query = target.partition(b"?")
    if not path.startswith(b"/"):
        if path == b"*" or b"://" in path:  # asterisk or absolute form
            path = b"/" + path.split(b"://", 1)[-1].partition(b"/")[2]
        else:
            raise BadRequest("Malformed request target.")
    return unquote_to_bytes(path).decode("utf-8", "surrogateescape"), query


class Framing:
    """How the request's body is delimited, and whether the connection goes on after."""

    __slots__ = ("length", "chunked", "close_after", "expect_continue")

    def __init__(self, version: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.close_after = version == b"HTTP/1.0"
        self.expect_continue = False
        length: int | None = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise BadRequest("Bad Content-Length.")
                length = int(value)
            elif name == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",")]
                if codings[-1] != b"chunked" or version == b"HTTP/1.0":
                    raise BadRequest("Only the chunked transfer coding is accepted.", 501)
                chunked = True
            elif name == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                if b"close" in tokens:
                    self.close_after = True
            elif name == b"expect":
                if value.lower() == b"100-continue":
                    self.expect_continue = version == b"HTTP/1.1"
        if chunked and length is not None:
            raise BadRequest("Both Content-Length and Transfer-Encoding.")
        self.chunked = chunked
        self.length = length or 0


class Connection:
    """One HTTP/1.x connection: requests one after another until either side ends it."""

    def __init__(
        self,
        sock: socket.socket,
        server: Http1Server,
        client: tuple[str, int] | None,
        local: tuple[str, int] | None,
        scope: trio.CancelScope,
    ) -> None:
        self.scope = scope  # the connection's: cancelled on a timeout, or to stop
        self.sock = sock
        self.server = server
        self.client = client
        self.local = local
        self.buffer = bytearray()
        self.eof = False

    # -- the socket ----------------------------------------------------------------
    async def _fill(self) -> None:
        """Read more bytes into the buffer (raises PeerGone at end of stream)."""
        if self.eof:
            raise PeerGone
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError:
                data = b""
            if not data:
                self.eof = True
                raise PeerGone
            self.buffer += data
            return

    async def _fill_body(self) -> None:
        """``_fill`` for a body: a piece that takes over ``head_timeout`` ends the
        connection (its scope is cancelled)."""
        deadlines = self.server.deadlines
        deadlines.set(self.scope, self.server.head_timeout)
        try:
            await self._fill()
        finally:
            deadlines.clear(self.scope)

    async def _write(self, data: bytes | memoryview) -> None:
        try:
            sent = self.sock.send(data)  # the common case: all of it, at once
        except BlockingIOError:
            sent = 0
        except OSError:
            raise PeerGone from None
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        with trio.move_on_after(self.server.write_timeout) as scope:
            while view:
                try:
                    sent = self.sock.send(view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.sock)
                    continue
                except OSError:
                    raise PeerGone from None
                view = view[sent:]
        if scope.cancelled_caught:
            raise PeerGone

    # -- requests --------------------------------------------------------------------
    async def _read_head(self) -> bytes | None:
        """The next request's head, without its blank line; None when the connection
        should end quietly (the peer closed, or the server is stopping). Waiting longer
        than the keep-alive timeout (idle) or the head timeout (once the head started)
        cancels the connection's scope."""
        buffer = self.buffer
        while buffer[:2] == b"\r\n":  # tolerated before a request line
            del buffer[:2]
        end = buffer.find(b"\r\n\r\n")
        if 0 <= end <= MAX_HEAD:  # pipelined: already here
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            return head
        server = self.server
        idle = not buffer
        if idle:
            if server.stopping:
                return None
            server.idle.add(self)
            server.deadlines.set(self.scope, server.keep_alive_timeout)
        else:
            server.deadlines.set(self.scope, server.head_timeout)
        try:
            while True:
                while buffer[:2] == b"\r\n":
                    del buffer[:2]
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    if end > MAX_HEAD:
                        raise BadRequest("The request head is too large.", 431)
                    head = bytes(buffer[:end])
                    del buffer[: end + 4]
                    return head
                if len(buffer) > MAX_HEAD:
                    raise BadRequest("The request head is too large.", 431)
                try:
                    await self._fill()
                except PeerGone:
                    return None
                if idle:  # the request started: no longer idle
                    server.idle.discard(self)
                    server.deadlines.set(self.scope, server.head_timeout)
                    idle = False
        finally:
            server.idle.discard(self)
            server.deadlines.clear(self.scope)

    async def _read_body(self, framing: Framing) -> bytes:
        limit = self.server.max_body
        if framing.length > limit:
            raise _too_large(limit)
        if framing.expect_continue and (framing.chunked or framing.length):
            await self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if framing.chunked:
            return await self._read_chunked(limit)
        length = framing.length
        while len(self.buffer) < length:
            await self._fill_body()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return body

    async def _line(self) -> bytes:
        buffer = self.buffer
        while True:
            end = buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                return line
            if len(buffer) > MAX_CHUNK_LINE:
                raise BadRequest("Malformed chunked body.")
            await self._fill_body()

    async def _read_chunked(self, limit: int) -> bytes:
        body = bytearray()
        while True:
            size_text = (await self._line()).partition(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest("Malformed chunked body.") from None
            if size == 0:
                while await self._line():  # trailer fields, ignored
                    pass
                return bytes(body)
            if len(body) + size > limit:
                raise _too_large(limit)
            while len(self.buffer) < size:
                await self._fill_body()
            body += self.buffer[:size]
            del self.buffer[:size]
            if await self._line() != b"":
                raise BadRequest("Malformed chunked body.")

    async def run(self) -> None:
        try:
            while True:
                try:
                    head = await self._read_head()
                    if head is None:
                        return
                    started = time.perf_counter()
                    method, target, version, headers = parse_head(head)
                    path, query = split_target(target)
                    if path == "/ws":  # the front door takes first ones
                        raise BadRequest(WS_LATE)
                    framing = Framing(version, headers)
                    body = await self._read_body(framing)
                except BadRequest as error:
                    await self._refuse(error)
                    return
                request = Request(
                    method.decode("ascii"),
                    path,
                    query,
                    headers,
                    body,
                    server=self.local,
                    client=self.client,
                )
                try:
                    response = await self.server.handler(request)
                except Exception:  # the handler answers its own errors; this is a bug
                    log.exception("the handler failed on %s %s", request.method, path)
                    response = error_response(errors.EngineError(INTERNAL))
                    framing.close_after = True
                keep_alive = not framing.close_after and not self.server.stopping
                await self._respond(request, response, keep_alive)
                self.server.log_access(self, request, response, started)
                if not keep_alive:
                    return
        except PeerGone:
            return
        finally:
            self.sock.close()

    async def _respond(self, request: Request, response: Response, keep_alive: bool) -> None:
        status = response.status
        body = response.body
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
        if response.content_type is not None:
            head += b"content-type: %s\r\n" % response.content_type.encode("latin-1")
        for name, value in response.headers:
            head += b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
        if status >= 200 and status not in (204, 304):
            head += b"content-length: %d\r\n" % len(body)
        head += b"date: %s\r\n" % http_date()
        if not keep_alive:
            head += b"connection: close\r\n"
        head += b"\r\n"
        if request.method != "HEAD" and status not in (204, 304):
            head += body
        await self._write(head)

    async def _refuse(self, error: BadRequest) -> None:
        body = orjson.dumps(error.kind(error.detail).body())
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"date: %s\r\nconnection: close\r\n\r\n"
            % (error.status, _REASONS.get(error.status, b""), len(body), http_date())
        )
        try:
            await self._write(head + body)
        except PeerGone:
            pass
        self.server.log_refusal(self, error, len(body))


class Http1Server:
    """Settings and the idle connections, which a stopping server closes at once."""

    def __init__(
        self,
        handler: Handler,
        *,
        keep_alive_timeout: float = 5.0,
        head_timeout: float = 30.0,  # for the rest of a head, and each piece of a body
        write_timeout: float = 60.0,
        max_body: int = MAX_BODY_BYTES,
        access_log: logging.Logger | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.keep_alive_timeout = keep_alive_timeout
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.idle: set[Connection] = set()  # waiting for a request, none begun
        self.deadlines = deadlines or Deadlines()
        self.stopping = False
        self.access_log = access_log

    def log_access(
        self, connection: Connection, request: Request, response: Response, started: float
    ) -> None:
        if self.access_log is None:
            return
        client = request.client  # a trusted proxy's X-Forwarded-For may have set it
        self.access_log.info(
            "request",
            extra={
                "fields": {
                    "client": f"{client[0]}:{client[1]}" if client else None,
                    "method": request.method,
                    "path": request.path,
                    "query": request.query_string.decode("latin-1"),
                    "status": response.status,
                    "bytes": len(response.body),
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                }
            },
        )

    def log_refusal(self, connection: Connection, error: BadRequest, size: int) -> None:
        """A request refused before it reached the app (its head may not even parse)."""
        if self.access_log is None:
            return
        client = connection.client
        self.access_log.info(
            "refused",
            extra={
                "fields": {
                    "client": f"{client[0]}:{client[1]}" if client else None,
                    "status": error.status,
                    "detail": error.detail,
                    "bytes": size,
                }
            },
        )

    async def serve_connection(
        self,
        sock: socket.socket,
        scope: trio.CancelScope | None = None,
        addresses: tuple[tuple[str, int], tuple[str, int]] | None = None,
    ) -> None:
        """Serve ``sock`` until either side ends it. ``scope``: the connection's cancel
        scope if the caller opened one (the front door does), else one is opened here;
        ``addresses``: (peer, local) if the caller knows them (two syscalls saved).
        ``deadlines.run`` must be running for timeouts to fire."""
        if addresses is not None:
            client, local = addresses
        else:
            try:
                client = sock.getpeername()[:2]
                local = sock.getsockname()[:2]
            except OSError:
                sock.close()
                return
        if scope is not None:
            await Connection(sock, self, client, local, scope).run()
            return
        with trio.CancelScope() as own:
            await Connection(sock, self, client, local, own).run()

    def stop(self) -> None:
        """Answer in-flight requests with ``connection: close``; end idle ones now."""
        self.stopping = True
        for connection in list(self.idle):
            connection.scope.cancel()
