"""HTTP/1.1 on a plain socket, handed to the ASGI app (quart) without hypercorn.

Why: hypercorn's HTTP/1.1 path (h11, a task group and several events per request,
its timers) cost ~600 µs of CPU per request here, three times quart's own ~180 µs: a
burst of 1,000 contended calls took 1.6-2.1 s of CPU. This does the same job as the
front door does for WebSocket frames: read a request head with one ``recv``, call the
app, write the answer with one ``send``.

What it does, and what it leaves to hypercorn: HTTP/1.0 and 1.1 requests, keep-alive,
pipelined requests (answered in order), ``Content-Length`` and ``chunked`` bodies,
``Expect: 100-continue``, ``HEAD``. Anything else (HTTP/2 with prior knowledge) is
still hypercorn's: the front door peeks at the first bytes. A malformed head is
answered 400 and the connection closed; one longer than ``MAX_HEAD`` bytes is 431.
A request whose body the app did not read (a 413, say) ends its connection, as its
unread bytes cannot be told from the next request. ``Upgrade`` headers are ignored (a
server may); ``/ws`` gets here only as a later request on a connection, which is
refused with 400 (the front door serves it only as a connection's first request).
"""

from __future__ import annotations

import email.utils
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
import trio

from engine import errors

log = logging.getLogger("chat_engine.http")

MAX_HEAD = 64 * 1024  # request line and headers
RECV_SIZE = 65536
BODY_CHUNK = 65536  # at most this many body bytes per ASGI message
MAX_CHUNK_LINE = 1024

WS_LATE = "Open a new connection for GET /ws: it must be its first request."
INTERNAL = "Internal error."

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class BadRequest(Exception):
    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class PeerGone(Exception):
    """The peer closed the connection, or it broke."""


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


class Connection:
    """One HTTP/1.x connection: requests one after another until either side ends it."""

    def __init__(
        self,
        sock: socket.socket,
        app: App,
        server: Http1Server,
        client: tuple[str, int] | None,
        local: tuple[str, int] | None,
    ) -> None:
        self.sock = sock
        self.app = app
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

    async def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
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
        should end quietly (the peer closed, stayed idle, or the server is stopping)."""
        scope = trio.CancelScope(deadline=trio.current_time() + self.server.keep_alive_timeout)
        waiting_idle = not self.buffer
        if waiting_idle:
            if self.server.stopping:
                return None
            self.server.idle.add(scope)
        try:
            with scope:
                while True:
                    while self.buffer[:2] == b"\r\n":  # tolerated before a request line
                        del self.buffer[:2]
                    end = self.buffer.find(b"\r\n\r\n")
                    if end >= 0:
                        if end > MAX_HEAD:
                            raise BadRequest("The request head is too large.", 431)
                        head = bytes(self.buffer[:end])
                        del self.buffer[: end + 4]
                        return head
                    if len(self.buffer) > MAX_HEAD:
                        raise BadRequest("The request head is too large.", 431)
                    try:
                        await self._fill()
                    except PeerGone:
                        return None
                    if waiting_idle:  # the request started: no longer idle
                        self.server.idle.discard(scope)
                        scope.deadline = trio.current_time() + self.server.head_timeout
                        waiting_idle = False
        finally:
            self.server.idle.discard(scope)
        return None  # idle too long, or the server is stopping

    async def run(self) -> None:
        try:
            while True:
                try:
                    head = await self._read_head()
                    if head is None:
                        return
                    request = Request(self, *parse_head(head))
                    if request.scope["path"] == "/ws":  # the front door takes first ones
                        raise BadRequest(WS_LATE)
                except BadRequest as error:
                    await self._refuse(error)
                    return
                keep_alive = await request.handle()
                if not keep_alive or self.server.stopping:
                    return
        except PeerGone:
            return
        finally:
            self.sock.close()

    async def _refuse(self, error: BadRequest) -> None:
        # the contract's generic code for a bad request, whatever the status
        body = orjson.dumps(errors.Invalid(error.detail).body())
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


class Request:
    """One request: its ASGI scope, ``receive`` (the body) and ``send`` (the answer)."""

    def __init__(
        self,
        connection: Connection,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.connection = connection
        self.method = method.decode("ascii")
        self.close_after = version == b"HTTP/1.0"
        length: int | None = None
        chunked = False
        self.expect_continue = False
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
        self.remaining = length or 0  # Content-Length bytes still to read
        self.body_done = not chunked and not length
        self.chunk_left = 0  # bytes of the current chunk still to read
        path, _, query = target.partition(b"?")
        if not path.startswith(b"/"):
            if path == b"*" or b"://" in path:  # asterisk or absolute form
                path = b"/" + path.split(b"://", 1)[-1].partition(b"/")[2]
            else:
                raise BadRequest("Malformed request target.")
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version[5:].decode("ascii"),
            "method": self.method,
            "scheme": "http",
            "path": unquote_to_bytes(path).decode("utf-8", "surrogateescape"),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": connection.client,
            "server": connection.local,
            "extensions": {},
        }
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.body_parts: list[bytes] = []
        self.responded = trio.Event()
        self.peer_gone = False
        self.bad_body: BadRequest | None = None
        self.body_sent = False  # the message with more_body false went to the app
        self.started = time.perf_counter()

    # -- ASGI ----------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        if self.body_done and not self.body_sent:  # no body: one empty message
            self.body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if self.body_done or self.peer_gone:
            await self.responded.wait()
            return {"type": "http.disconnect"}
        # Nothing raised here reaches us through the app (quart reads the body in a
        # task of its own): a broken or malformed body reads as a disconnect, and
        # ``handle`` answers it once the app is done.
        try:
            if self.expect_continue:
                self.expect_continue = False
                await self.connection._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            with trio.move_on_after(self.connection.server.head_timeout) as scope:
                body = await (self._read_chunked() if self.chunked else self._read_sized())
            if scope.cancelled_caught:  # a body that stalls: as if the peer left
                raise PeerGone
        except PeerGone:
            self.peer_gone = True
            return {"type": "http.disconnect"}
        except BadRequest as error:
            self.bad_body = error
            self.peer_gone = True  # no more of this connection can be trusted
            return {"type": "http.disconnect"}
        self.body_sent = self.body_done
        return {"type": "http.request", "body": body, "more_body": not self.body_done}

    async def _read_sized(self) -> bytes:
        connection = self.connection
        if not connection.buffer:
            await connection._fill()
        take = min(self.remaining, len(connection.buffer), BODY_CHUNK)
        body = bytes(connection.buffer[:take])
        del connection.buffer[:take]
        self.remaining -= take
        self.body_done = self.remaining == 0
        return body

    async def _line(self) -> bytes:
        connection = self.connection
        while True:
            end = connection.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(connection.buffer[:end])
                del connection.buffer[: end + 2]
                return line
            if len(connection.buffer) > MAX_CHUNK_LINE:
                raise BadRequest("Malformed chunked body.")
            await connection._fill()

    async def _read_chunked(self) -> bytes:
        connection = self.connection
        if self.chunk_left == 0:
            size_text = (await self._line()).partition(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest("Malformed chunked body.") from None
            if size == 0:
                while await self._line():  # trailer fields, ignored
                    pass
                self.body_done = True
                return b""
            self.chunk_left = size
        if not connection.buffer:
            await connection._fill()
        take = min(self.chunk_left, len(connection.buffer), BODY_CHUNK)
        body = bytes(connection.buffer[:take])
        del connection.buffer[:take]
        self.chunk_left -= take
        if self.chunk_left == 0:
            if await self._line() != b"":
                raise BadRequest("Malformed chunked body.")
        return body

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            self.response_headers = list(message.get("headers", ()))
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if body:
                self.body_parts.append(bytes(body))
            if not message.get("more_body", False) and not self.responded.is_set():
                await self._respond()

    # -- the answer ------------------------------------------------------------------
    def _keep_alive(self) -> bool:
        return not self.close_after and self.body_done and not self.peer_gone

    async def _respond(self) -> None:
        body = b"".join(self.body_parts)
        keep_alive = self._keep_alive() and not self.connection.server.stopping
        lines = [b"HTTP/1.1 %d %s\r\n" % (self.status, _REASONS.get(self.status, b""))]
        has_length = False
        for name, value in self.response_headers:
            lowered = name.lower()
            if lowered == b"content-length":
                has_length = True
            elif lowered in (b"connection", b"transfer-encoding", b"date"):
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        if not has_length and self.status >= 200 and self.status not in (204, 304):
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(b"date: %s\r\n" % http_date())
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        if self.method != "HEAD" and self.status not in (204, 304):
            lines.append(body)
        self.close_after = not keep_alive
        try:
            await self.connection._write(b"".join(lines))
        except PeerGone:
            self.peer_gone = True
        finally:
            self.responded.set()
        self.connection.server.log_access(self)

    async def handle(self) -> bool:
        """Run the app for this request; True if the connection may carry another."""
        try:
            await self.connection.app(self.scope, self.receive, self.send)
        except PeerGone:
            return False
        except Exception:
            log.exception("the application failed on %s %s", self.method, self.scope["path"])
            if not self.responded.is_set():
                self.status, self.response_headers = 500, [(b"content-type", b"application/json")]
                self.body_parts = [orjson.dumps(errors.EngineError(INTERNAL).body())]
                self.close_after = True
                await self._respond()
            return False
        if self.bad_body is not None:  # a malformed body, found while the app read it
            if not self.responded.is_set():
                await self.connection._refuse(self.bad_body)
            return False
        if not self.responded.is_set():  # the app ended without a complete answer
            return False
        if self.peer_gone:
            return False
        if not self.body_done:  # unread body bytes: they cannot be skipped safely
            return False
        return not self.close_after


class Http1Server:
    """Settings and the idle connections, which a stopping server closes at once."""

    def __init__(
        self,
        app: App,
        *,
        keep_alive_timeout: float = 5.0,
        head_timeout: float = 30.0,  # for the rest of a head, and each piece of a body
        write_timeout: float = 60.0,
        access_log: logging.Logger | None = None,
    ) -> None:
        self.app = app
        self.keep_alive_timeout = keep_alive_timeout
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.idle: set[trio.CancelScope] = set()
        self.stopping = False
        self.access_log = access_log

    def log_access(self, request: Request) -> None:
        if self.access_log is None:
            return
        client = request.connection.client
        self.access_log.info(
            "request",
            extra={
                "fields": {
                    "client": f"{client[0]}:{client[1]}" if client else None,
                    "method": request.method,
                    "path": request.scope["path"],
                    "query": request.scope["query_string"].decode("latin-1"),
                    "status": request.status,
                    "bytes": sum(len(part) for part in request.body_parts),
                    "ms": round((time.perf_counter() - request.started) * 1000, 2),
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

    async def serve_connection(self, sock: socket.socket) -> None:
        try:
            client = sock.getpeername()[:2]
            local = sock.getsockname()[:2]
        except OSError:
            sock.close()
            return
        await Connection(sock, self.app, self, client, local).run()

    def stop(self) -> None:
        """Answer in-flight requests with ``connection: close``; end idle ones now."""
        self.stopping = True
        for scope in list(self.idle):
            scope.cancel()
