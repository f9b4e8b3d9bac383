"""HTTP/1.1 on a plain socket: h11 parses each request and frames each answer, and the
request goes straight to the request pipeline (``gateway/web.py``), without hypercorn or
ASGI.

Why not hypercorn: its HTTP/1.1 path (h11 too, plus a task group and several events per
request, its timers) cost more CPU per request than all the rest of a request
(docs/benchmarks.md, "h11 in the built-in server"). What this keeps of it is the part that must be right: h11, the sans-IO parser
hypercorn itself uses, so that both transports in one process read the same bytes the
same way (two parsers that disagree on where a request ends are what request
smuggling lives on). What it adds is a loop on the socket with one ``recv`` and one
``send`` per request in the common case, and the deadlines of ``gateway/deadlines.py``.

What h11 refuses is answered with its status (400, 431 for a head still incomplete past
``MAX_HEAD`` bytes, 501 for a transfer coding other than ``chunked``) and a JSON error
body, and the connection closes. So is what this server refuses on top: an HTTP version
other than 1.0 and 1.1 (505); both ``Content-Length`` and ``Transfer-Encoding`` (400);
a body over ``max_body`` (413 ``body_too_large``, without reading it: its unread bytes
cannot be told from the next request) or in over ``MAX_BODY_PIECES`` pieces (400);
any other request for ``/ws`` than ``GET /ws`` (400).

``GET /ws`` (target ``/ws`` or ``/ws?...``, as the front door tells them) as a later
request of a kept-alive connection is a WebSocket upgrade like a first one (clients
that share one connection pool between fetch and WebSocket send it so): the
connection leaves this server for the WebSocket gateway (``upgrade``), which gets the
request's head, written out again from what h11 parsed, and every byte read after it,
and does what it does with a connection that opened with ``GET /ws`` — the same
handshake, head limit, authentication and session caps; the connection stays counted
against the front door's cap. A server that is stopping answers it 503.

Time limits, each a total for its phase and not reset by each read: ``keep_alive_timeout``
for an idle connection to start its next request, ``head_timeout`` for the rest of a
head once its first byte came, ``body_timeout`` for the whole body, ``write_timeout``
for an answer to leave. A connection past one is closed without an answer.

Fairness: the loop yields to trio after every ``recv`` that returned data at once,
after every request it answered from bytes already read and every
``YIELD_EVERY_PIECES`` pieces of a body, so a peer that keeps its socket full
(pipelining as fast as it can, or sending one-byte chunks) cannot hold the event loop.

Every connection is its own failure domain: an unexpected error closes that connection
only, logged and counted by ``gateway.failures``.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import h11
import trio

from engine import errors
from gateway.deadlines import Deadlines
from gateway.failures import connection_failed
from gateway.sockets import receive
from gateway.validation import MAX_BODY_BYTES
from gateway.web import INTERNAL, Request, Response, error_body, error_response
from gateway.wsconn import upgrade_head

log = logging.getLogger("chat_engine.http")

# h11's own default (16 KiB): a head still incomplete past it is refused with 431.
MAX_HEAD = 16 * 1024
# Each piece of a body (a chunk, or one read of a body with a length) is an h11 event,
# so a body in one-byte chunks costs far more CPU than its size (docs/edge.md). Real
# clients send chunks of hundreds of bytes or more: a body may come in at most this
# many pieces (16 bytes a piece on average for 64 KiB), and the loop yields every
# YIELD_EVERY_PIECES of them, as one recv can hold thousands.
MAX_BODY_PIECES = 4096
YIELD_EVERY_PIECES = 32
# After a refusal: how long, and how much, the peer may still send before the close.
LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024
VERSIONS = (b"1.0", b"1.1")
# Each phase's total deadline (seconds), not moved by reads; the connections hypercorn
# serves take the body's and the answer's too (gateway/asgi.py).
KEEP_ALIVE_TIMEOUT = 5.0  # idle between requests
HEAD_TIMEOUT = 30.0  # for the rest of a head, from its first byte
BODY_TIMEOUT = 30.0  # for a whole body, from the end of its head
WRITE_TIMEOUT = 60.0  # for an answer to leave

WS_ONLY = "/ws takes only a WebSocket upgrade: GET /ws with Upgrade: websocket."

Handler = Callable[[Request], Awaitable[Response]]
# Takes the connection's socket and the bytes read from it that are not answered yet.
Upgrade = Callable[[socket.socket, bytes], Awaitable[None]]


def is_upgrade_target(method: bytes, target: bytes) -> bool:
    """``GET /ws`` or ``GET /ws?...``: what the front door hands to the WebSocket
    gateway when a connection opens with it."""
    return method == b"GET" and (target == b"/ws" or target.startswith(b"/ws?"))


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


def _head_size(event: h11.Request) -> int:
    """The request head's size as sent (request line and header lines)."""
    size = len(event.method) + len(event.target) + 12  # spaces, version, CRLF
    return size + sum(len(name) + len(value) + 4 for name, value in event.headers)


def refused_by_h11(error: h11.RemoteProtocolError) -> BadRequest:
    status = error.error_status_hint
    detail = f"Malformed request: {error}"[:300]
    if status == 431:
        detail = f"The request head is over {MAX_HEAD} bytes."
    elif status == 501:
        detail = "Only the chunked transfer coding is accepted."
    return BadRequest(detail, status)


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


def split_target(target: bytes) -> tuple[str, bytes]:
    """The decoded path and the raw query string of a request target."""
    path, _, query = target.partition(b"?")
    if not path.startswith(b"/"):
        if path == b"*" or b"://" in path:  # asterisk or absolute form
            path = b"/" + path.split(b"://", 1)[-1].partition(b"/")[2]
        else:
            raise BadRequest("Malformed request target.")
    return unquote_to_bytes(path).decode("utf-8", "surrogateescape"), query


def _frames_twice(headers: list[tuple[bytes, bytes]]) -> bool:
    """Both a length and a transfer coding: h11 reads the body as chunked, as the RFC
    says, but a proxy in front might have used the length; such a request is how
    smuggling is tried, so it is refused (the RFC allows it)."""
    names = {name for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The declared body length (h11 has checked it is one decimal number)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return 0


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
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.request_line: str | None = None  # for the log of an unexpected error
        self.yielded = False  # since the current request began

    # -- the socket ----------------------------------------------------------------
    async def _receive(self) -> None:
        """Feed the next bytes to h11; PeerGone at the end of the stream. Always yields
        to trio once, so that a peer whose bytes are always there cannot hold the loop."""
        data = await receive(self.sock)
        self.yielded = True
        if not data:
            # A request cut short by the end of the stream gets no answer: its peer is
            # gone or has said it sends nothing more, and an answer tells it nothing.
            raise PeerGone
        self.h11.receive_data(data)

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
    async def _next_request(self) -> h11.Request | None:
        """The next request's head; None when the connection should end quietly (the
        peer closed, or the server is stopping). Waiting longer than the keep-alive
        timeout (idle) or the head timeout (once the head started) cancels the
        connection's scope."""
        parser = self.h11
        event = parser.next_event()
        if event is not h11.NEED_DATA:  # pipelined: already here
            return event if isinstance(event, h11.Request) else None
        server = self.server
        idle = not parser.trailing_data[0]
        if idle:
            if server.stopping:
                return None
            server.idle.add(self)
            server.deadlines.set(self.scope, server.keep_alive_timeout)
        else:
            server.deadlines.set(self.scope, server.head_timeout)
        try:
            while event is h11.NEED_DATA:
                try:
                    await self._receive()
                except PeerGone:
                    return None
                if idle:  # the request started: the head's deadline runs from here
                    server.idle.discard(self)
                    server.deadlines.set(self.scope, server.head_timeout)
                    idle = False
                event = parser.next_event()
        finally:
            server.idle.discard(self)
            server.deadlines.clear(self.scope)
        return event if isinstance(event, h11.Request) else None

    async def _read_body(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The whole body, within ``body_timeout`` in all (not per read)."""
        parser = self.h11
        limit = self.server.max_body
        if _content_length(headers) > limit:
            raise _too_large(limit)
        if parser.they_are_waiting_for_100_continue:
            await self._write(parser.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        pieces = 0  # chunks, or reads of a body with a length: each costs h11 an event
        deadline_set = False
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    if not deadline_set:
                        self.server.deadlines.set(self.scope, self.server.body_timeout)
                        deadline_set = True
                    await self._receive()
                elif isinstance(event, h11.Data):
                    if len(body) + len(event.data) > limit:
                        raise _too_large(limit)
                    body += event.data
                    pieces += 1
                    if pieces % YIELD_EVERY_PIECES == 0:
                        await trio.lowlevel.checkpoint()
                    if pieces > MAX_BODY_PIECES:
                        raise BadRequest(f"The body came in over {MAX_BODY_PIECES} pieces.")
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(body)
                else:  # pragma: no cover - h11 sends nothing else inside a request
                    raise BadRequest("Malformed request body.")
        finally:
            if deadline_set:
                self.server.deadlines.clear(self.scope)

    async def run(self) -> None:
        try:
            while await self._serve_one():
                pass
        except PeerGone:
            pass
        except Exception as error:  # a bug, not the peer's doing: this connection only
            connection_failed("http", self._peer(), self.request_line, error)
        finally:
            self.sock.close()

    def _peer(self) -> str | None:
        return f"{self.client[0]}:{self.client[1]}" if self.client else None

    async def _serve_one(self) -> bool:
        """Read, answer and log one request; False when the connection should end."""
        self.yielded = False
        try:
            event = await self._next_request()
            if event is None:
                return False
            started = time.perf_counter()
            method = event.method.decode("ascii")
            self.request_line = f"{method} {event.target.decode('latin-1')}"[:300]
            if _head_size(event) > MAX_HEAD:
                # h11 bounds a head only while it is incomplete: one that arrived
                # whole in a single read (up to the read size) passed it
                raise BadRequest(f"The request head is over {MAX_HEAD} bytes.", 431)
            if event.http_version not in VERSIONS:
                raise BadRequest("Only HTTP/1.0 and HTTP/1.1 are served here.", 505)
            if is_upgrade_target(event.method, event.target):
                return await self._upgrade(event)
            path, query = split_target(event.target)
            if path == "/ws":  # another method, or /ws spelled otherwise
                raise BadRequest(WS_ONLY)
            headers = list(event.headers)
            if _frames_twice(headers):
                raise BadRequest("Both Content-Length and Transfer-Encoding.")
            body = await self._read_body(headers)
        except h11.RemoteProtocolError as error:
            # h11 raises from inside its own except block, so the error's traceback
            # holds a frame that holds the error: a cycle (with the connection's
            # buffer in it) that only the cyclic GC would free, and lifecycle.tune_gc makes
            # that rare. Dropping the traceback frees it now.
            error.__traceback__ = None
            await self._refuse(refused_by_h11(error))
            return False
        except BadRequest as error:
            await self._refuse(error)
            return False
        request = Request(method, path, query, headers, body, server=self.local, client=self.client)
        try:
            response = await self.server.handler(request)
        except Exception:  # the handler answers its own errors; this is a bug
            log.exception("the handler failed on %s %s", request.method, path)
            response = error_response(errors.EngineError(INTERNAL))
        keep_alive = not self.server.stopping
        try:
            answer = self._frame(request, response, keep_alive)
        except (h11.LocalProtocolError, UnicodeError):  # a header no client could read
            log.exception("unsendable answer to %s %s", request.method, path)
            response = error_response(errors.EngineError(INTERNAL))
            answer = self._frame(request, response, keep_alive=False)
        await self._write(answer)
        self.server.log_access(self, request, response, started)
        if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            return False  # connection: close, HTTP/1.0, or a refusal
        self.h11.start_next_cycle()
        self.request_line = None
        if not self.yielded:  # pipelined: its bytes were already here
            await trio.lowlevel.checkpoint()
        return True

    async def _upgrade(self, event: h11.Request) -> bool:
        """Hand the connection to the WebSocket gateway; False: it is not ours to go on
        with."""
        server = self.server
        if server.upgrade is None:
            raise BadRequest(WS_ONLY)
        if server.stopping:
            raise BadRequest("The server is stopping.", 503, errors.Unavailable)
        head = upgrade_head(
            event.method, event.target, event.http_version, event.headers.raw_items()
        )
        received = head + self.h11.trailing_data[0]
        self.request_line = None  # from here on, errors are the session's to report
        await server.upgrade(self.sock, received)
        return False

    def _frame(self, request: Request, response: Response, keep_alive: bool) -> bytes:
        status = response.status
        headers: list[tuple[bytes, bytes]] = []
        if response.content_type is not None:
            headers.append((b"content-type", response.content_type.encode("latin-1")))
        for name, value in response.headers:
            headers.append((name.encode("latin-1"), value.encode("latin-1")))
        if status >= 200 and status not in (204, 304):
            headers.append((b"content-length", b"%d" % len(response.body)))
        headers.append((b"date", http_date()))
        if not keep_alive:
            headers.append((b"connection", b"close"))
        parser = self.h11
        data = parser.send(
            h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))
        )
        assert data is not None
        if request.method != "HEAD" and status not in (204, 304) and response.body:
            data += parser.send(h11.Data(data=response.body)) or b""
        return data + (parser.send(h11.EndOfMessage()) or b"")

    async def _refuse(self, error: BadRequest) -> None:
        body = error_body(error.kind(error.detail))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"date", http_date()),
            (b"connection", b"close"),
        ]
        parser = self.h11
        try:
            answer = parser.send(
                h11.Response(
                    status_code=error.status,
                    headers=headers,
                    reason=_REASONS.get(error.status, b""),
                )
            )
        except h11.LocalProtocolError:  # mid-answer already: nothing valid left to say
            return
        answer = answer or b""
        if parser.our_state is h11.SEND_BODY:
            try:
                answer += parser.send(h11.Data(data=body)) or b""
            except h11.LocalProtocolError:  # a HEAD request: the length, but no body
                pass
        try:
            await self._write(answer)
        except PeerGone:
            return
        self.server.log_refusal(self, error, len(body))
        await self._linger()

    async def _linger(self) -> None:
        """Close the way that lets the refusal arrive: closing a socket with unread
        bytes sends a reset, and a reset can make the peer's kernel drop the answer
        before its application read it. So: end our side, then read and drop what the
        peer still sends, up to ``LINGER_BYTES`` or ``LINGER_SECONDS`` in all."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        dropped = 0
        with trio.move_on_after(LINGER_SECONDS):
            while dropped < LINGER_BYTES:
                data = await receive(self.sock)
                if not data:
                    return
                dropped += len(data)


class Http1Server:
    """Settings and the idle connections, which a stopping server closes at once."""

    def __init__(
        self,
        handler: Handler,
        *,
        keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
        head_timeout: float = HEAD_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_body: int = MAX_BODY_BYTES,
        access_log: logging.Logger | None = None,
        deadlines: Deadlines | None = None,
        upgrade: Upgrade | None = None,
    ) -> None:
        self.handler = handler
        # where GET /ws as a later request goes (the front door sets its WebSocket
        # handler); None: answered 400
        self.upgrade = upgrade
        self.max_body = max_body
        self.keep_alive_timeout = keep_alive_timeout
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
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
