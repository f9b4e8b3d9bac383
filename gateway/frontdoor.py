"""The listening socket: WebSocket upgrades to ``/ws`` go straight to the session code,
HTTP/1.x connections to ``gateway/http1.py`` (or hypercorn, with ``--http1-server
hypercorn``), HTTP/2 to hypercorn.

Why: through ASGI every outgoing WebSocket frame crossed quart's ``send_data``,
hypercorn's ``app_send`` and ``protocol_send`` and trio's ``send_all``, which made one
message to 1,000 sessions cost far more than writing it (figures in docs/benchmarks.md,
"Figures behind choices in the code"). Here a frame is one
synchronous ``send`` on the session's socket (see ``gateway/wsconn.py``).

How a connection is told apart: its first bytes are peeked (``MSG_PEEK`` leaves them in
the kernel), so a connection handed to hypercorn is untouched. ``GET /ws`` followed by a
space or ``?`` is the WebSocket code's; anything else — other paths, HTTP/2 — is the
HTTP server's (the built-in one or hypercorn). A ``GET /ws`` upgrade sent as a later
request of a kept-alive connection comes back to the WebSocket code from either HTTP/1.1
server, with the bytes it read (the built-in one: ``Http1Server.upgrade``; hypercorn:
``_Handover``), and is served exactly like one that opened the connection. A connection that sent only the start of ``GET /ws`` is not polled:
its receive low-water mark is raised to the bytes the peek needs, so the kernel wakes
the server once they are there (or at the stream's end). This replaces
``hypercorn.trio.serve`` with the same steps (lifespan, ``TCPServer`` per connection,
graceful shutdown), using hypercorn's own classes; hypercorn is pinned, so these
internals do not move under us.

Bounds: at most ``max_connections`` connections at once (default: the soft limit on open
files minus ``FD_RESERVE`` for the log, snapshots and the server's own files). One past
it is answered ``503`` with a JSON body, if its socket takes the bytes at once, and
closed, without a task or a read, so that a flood of connections costs the server
little and the ones it already has keep being served; a warning says so, at most every
``CAP_WARNING_INTERVAL`` seconds, with the count refused since the previous one. Every
connection runs behind an exception boundary: an unexpected error is logged and
counted (``gateway.failures``) and ends that connection only.

At most ``per_address`` connections from one peer address until they become WebSocket
sessions (``gateway/connquota.py``: which address, and why sessions leave the count).
One more from that address is answered ``429`` (``rate_limited``, JSON, ``Retry-After:
1``) the same cheap way and closed; other addresses are not affected. 429 rather than
the cap's 503: the server has room, this client holds its share. A warning
(``connection cap per address reached``) names the last address refused, at most every
``CAP_WARNING_INTERVAL`` seconds.
"""

from __future__ import annotations

import errno
import logging
import math
import resource
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import h11
import trio
from hypercorn.config import Config
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from engine import errors
from gateway import connquota
from gateway.deadlines import Deadlines
from gateway.failures import connection_failed
from gateway.http1 import Http1Server, Upgrade
from gateway.web import Request, Response, error_body

if TYPE_CHECKING:  # at run time settings imports this module's users
    from gateway.settings import Network

log = logging.getLogger("chat_engine.frontdoor")

WS_PREFIX = b"GET /ws"
H2_PREFACE = b"PRI * HT"  # HTTP/2's connection preface, as far as the peek reads
PEEK_SIZE = len(WS_PREFIX) + 1
PEEK_TIMEOUT = 10.0  # a connection that sent too little to classify is closed
ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# A connection that broke between the kernel's accept and ours: skip it, go on.
ACCEPT_SKIP = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
BACKLOG = 4096
ACCEPT_BATCH = 256  # accepts between two yields to the connections already in
FD_RESERVE = 64  # files kept free for the log, snapshots, the listener, accepts
CAP_WARNING_INTERVAL = 10.0  # seconds, at the least, between two cap warnings
HTTP2_OFF = "HTTP/2 is turned off on this server (--http2 off)."
_OVERLOADED_BODY = error_body(errors.Unavailable("Too many connections; try again later."))
OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    % len(_OVERLOADED_BODY)
    + _OVERLOADED_BODY
)


def too_many_from_address(limit: int) -> bytes:
    """The fixed answer to one connection past ``limit`` from its address."""
    body = error_body(
        errors.RateLimited(
            f"Too many connections from this address ({limit} open); try again later."
        )
    )
    return (
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n" % len(body) + body
    )


# The WebSocket gateway's handler: the connection's socket, the bytes already read.
WsHandler = Upgrade
# Where a hypercorn HTTP/1.1 connection's handover waits, in its ASGI scope's "state".
HANDOVER_KEY = "chat_engine.handover"


def bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def default_max_connections() -> int:
    """The soft limit on open files, less ``FD_RESERVE``: past it an accept would fail
    with EMFILE, and so would opening a log segment or a snapshot."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - FD_RESERVE)


async def _peek_kind(conn: socket.socket) -> str:
    """'ws' for a WebSocket upgrade to /ws, 'h2' for HTTP/2 with prior knowledge, else
    'http'. No timeout of its own: the caller's deadline cancels it."""
    low_water_raised = False
    seen = -1
    try:
        while True:
            try:
                head = conn.recv(PEEK_SIZE, socket.MSG_PEEK)
            except BlockingIOError:  # nothing yet: the usual case for a fresh connection
                await trio.lowlevel.wait_readable(conn)
                continue
            except OSError:
                return "http"
            if len(head) >= PEEK_SIZE:
                if head.startswith(WS_PREFIX) and head[-1:] in (b" ", b"?"):
                    return "ws"
                if head.startswith(H2_PREFACE):
                    return "h2"
                return "http"
            if not head or not WS_PREFIX.startswith(head) or len(head) == seen:
                return "http"  # not an upgrade, or the stream ended: HTTP says the rest
            # A prefix of "GET /ws": sleep until the kernel holds enough to tell.
            seen = len(head)
            if not low_water_raised:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, PEEK_SIZE)
                low_water_raised = True
            await trio.lowlevel.wait_readable(conn)
    finally:
        if low_water_raised:
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                pass


async def _http2_off(request: Request) -> Response:
    """What a connection that opened like HTTP/2 gets with HTTP/2 off, if it was HTTP/1.x
    after all (``PRI * HTTP/1.1``: the built-in server answers 505 to HTTP/2.0 itself)."""
    return Response(error_body(errors.Invalid(HTTP2_OFF)), 505)


class _Handover:
    """The stream hypercorn serves an HTTP/1.1 connection on, able to give the
    connection back for a WebSocket upgrade sent as a later request.

    hypercorn parses that request and calls the ASGI app's WebSocket route, which calls
    ``claim`` with the head written out again (``gateway/asgi.py``). From then on
    hypercorn reads the end of the stream, writes nothing and closes nothing; once it
    is done with the connection the front door hands the socket, the head and any byte
    read after the claim to the WebSocket gateway. A claim is refused when hypercorn
    has already answered the upgrade itself (it refuses with 400 bytes that follow an
    upgrade before it is accepted, so those are not carried over as they are on the
    built-in server)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.socket = stream.socket  # what hypercorn's TCPServer reads the addresses from
        self.server: TCPServer | None = None
        self.head: bytes | None = None  # claimed: the upgrade's head, then what followed
        self._receiving: trio.CancelScope | None = None

    def claim(self, head: bytes) -> bool:
        if self.head is not None or self.server is None:
            return False
        # hypercorn's own objects (pinned): the upgrade's stream, nothing written for it
        # yet (hypercorn's h11 still waits for its answer), no byte after its head taken
        # (those hypercorn refuses with 400 itself, whichever task runs first)
        upgrade = getattr(getattr(self.server, "protocol", None), "protocol", None)
        stream = getattr(upgrade, "stream", None)
        connection = getattr(upgrade, "connection", None)
        parser = getattr(connection, "h11_connection", None)
        pending: bytes | bytearray = getattr(connection, "buffer", b"")
        if (
            not isinstance(stream, WSStream)
            or stream.closed
            or not isinstance(parser, h11.Connection)
            or parser.our_state is not h11.SEND_RESPONSE
            or len(pending) > 0
        ):
            return False
        self.head = head
        if self._receiving is not None:
            self._receiving.cancel()  # hypercorn's pending read sees the end of the stream
        return True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.head is not None:
            await trio.lowlevel.checkpoint()
            return b""
        with trio.CancelScope() as scope:
            self._receiving = scope
            try:
                data = await self.stream.receive_some(max_bytes)
            finally:
                self._receiving = None
            if self.head is not None:  # claimed as the bytes came: they are the session's
                self.head += data
                return b""
            return bytes(data)
        return b""  # claimed while waiting: no byte was taken from the socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.head is not None:
            await trio.lowlevel.checkpoint()
            return
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self.head is None:
            await self.stream.send_eof()

    async def aclose(self) -> None:
        if self.head is None:
            await self.stream.aclose()
        else:
            await trio.lowlevel.checkpoint()


class _Door:
    """What ``serve`` keeps for its connections: the listener, where each kind of
    connection goes, and the count of those open (the cap)."""

    def __init__(
        self,
        listener: socket.socket,
        app: object,
        config: Config,
        ws_handler: WsHandler,
        http1: Http1Server | None,
        cap: int,
        addresses: connquota.AddressSlots | None = None,
    ) -> None:
        self.listener = listener
        self.config = config
        self.app = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        config.set_statsd_logger_class(StatsdLogger)
        self.lifespan_state: LifespanState = {}
        self.lifespan = Lifespan(self.app, config, self.lifespan_state)
        self.context = WorkerContext(None)
        self.ws_handler = ws_handler
        self.http1 = http1
        if http1 is not None:  # a later GET /ws on one of its connections comes here too
            http1.upgrade = ws_handler
        self.deadlines = http1.deadlines if http1 is not None else Deadlines()
        # HTTP/2 turned off (``EdgeConfig.http2``, gateway/hypercorn_edge.py): its
        # preface, ``PRI * HTTP/2.0``, goes to a built-in server, which answers 505
        self.http2 = getattr(config, "http2", True)
        self.no_http2 = http1 or Http1Server(_http2_off, deadlines=self.deadlines)
        self.cap = cap
        self.local = listener.getsockname()[:2]
        # then each connection's own local address
        self.wildcard = self.local[0] in ("0.0.0.0", "::")
        self.open_connections = 0
        self.refused = 0  # since the last warning
        self.warned_at = -math.inf
        self.addresses = addresses or connquota.AddressSlots(None)
        limit = self.addresses.limit
        self.too_many_from_address = too_many_from_address(limit) if limit else b""
        self.refused_per_address = 0  # since the last warning
        self.warned_per_address_at = -math.inf

    async def connection(
        self, conn: socket.socket, peer: tuple[str, int], slot: connquota.Slot | None = None
    ) -> None:
        kind = "http"
        connquota.hold(slot)  # this task's: given back here, or once it is a session
        try:
            kind = await self.classified(conn, peer)
        except Exception as error:  # not the peer's to end the server: this one only
            connection_failed(kind, f"{peer[0]}:{peer[1]}", None, error)
            conn.close()
        finally:
            self.open_connections -= 1
            if slot is not None:
                slot.release()

    async def classified(self, conn: socket.socket, peer: tuple[str, int]) -> str:
        """Serve one connection; returns its kind ('http' until it is known) unless
        it raised."""
        # An HTTP/1.x connection lives in one cancel scope: its timeouts are deadlines
        # on it (gateway/deadlines.py). A WebSocket session leaves it once classified:
        # it has timeouts of its own, and does not keep the scope for its whole life.
        with trio.CancelScope() as scope:
            self.deadlines.set(scope, PEEK_TIMEOUT)
            try:
                kind = await _peek_kind(conn)
            except BaseException:
                conn.close()
                raise
            finally:
                self.deadlines.clear(scope)
            addresses = None if self.wildcard else (peer[:2], self.local)
            if kind == "http" and self.http1 is not None:
                await self.http1.serve_connection(conn, scope, addresses)
                return kind
            if kind == "h2" and not self.http2:
                await self.no_http2.serve_connection(conn, scope, addresses)
                return "http"
        if scope.cancelled_caught:  # too little sent to tell what it is
            return "http"
        if kind == "ws":
            await self.ws_handler(conn, b"")
            return kind
        stream = _Handover(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
        state = ConnectionState(self.lifespan_state.copy())
        if kind == "http":
            state[HANDOVER_KEY] = stream
        server = TCPServer(self.app, self.config, self.context, state, stream)  # type: ignore[arg-type]
        stream.server = server
        await server
        if stream.head is not None:  # a later GET /ws: hypercorn is done, ours from here
            await self.ws_handler(conn, stream.head)
            return "ws"
        return kind

    async def accept_loop(self, nursery: trio.Nursery) -> None:
        listener = self.listener
        while True:
            await trio.lowlevel.wait_readable(listener)
            for _ in range(ACCEPT_BATCH):  # then let the connections run
                try:
                    conn, peer = listener.accept()
                except BlockingIOError:
                    break
                except OSError as error:
                    if error.errno in ACCEPT_SKIP:
                        continue
                    if error.errno not in ACCEPT_ERRORS:
                        raise
                    log.error("accept failed: %s; retrying in 100 ms", error)
                    await trio.sleep(0.1)
                    break
                if self.open_connections >= self.cap:
                    self.refuse(conn)
                    continue
                key = self.addresses.key(peer[0])
                slot = None
                if key is not None:
                    if self.addresses.full(key):
                        self.refuse_per_address(conn, key)
                        continue
                    slot = self.addresses.take(key)
                self.open_connections += 1
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self.connection, conn, peer, slot)

    @staticmethod
    def _answer_and_close(conn: socket.socket, answer: bytes) -> None:
        """Send ``answer`` if the socket takes it at once, then close: no task, no read."""
        conn.setblocking(False)
        try:
            conn.send(answer)
        except OSError:
            pass
        conn.close()

    def refuse_per_address(self, conn: socket.socket, address: str) -> None:
        self._answer_and_close(conn, self.too_many_from_address)
        self.refused_per_address += 1
        now = trio.current_time()
        if now - self.warned_per_address_at >= CAP_WARNING_INTERVAL:
            log.warning(
                "connection cap per address reached",
                extra={
                    "fields": {
                        "http_connections_per_address": self.addresses.limit,
                        "address": address,
                        "refused": self.refused_per_address,
                    }
                },
            )
            self.refused_per_address, self.warned_per_address_at = 0, now

    def refuse(self, conn: socket.socket) -> None:
        self._answer_and_close(conn, OVERLOADED)
        self.refused += 1
        now = trio.current_time()
        if now - self.warned_at >= CAP_WARNING_INTERVAL:  # a flood must not flood the log
            log.warning(
                "connection cap reached",
                extra={"fields": {"max_connections": self.cap, "refused": self.refused}},
            )
            self.refused, self.warned_at = 0, now


async def serve(
    app: object,
    config: Config,
    host: str,
    port: int,
    ws_handler: WsHandler,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    http1: Http1Server | None = None,
    max_connections: int | None = None,
    per_address: connquota.PerAddress = "auto",
    forwarded_allow_ips: Sequence[Network] = (),
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown_trigger`` returns. HTTP/1.x connections go to ``http1``
    when given (``gateway/http1.py``), else, like HTTP/2, to hypercorn. At most
    ``max_connections`` at once (default: ``default_max_connections()``), and
    ``per_address`` from one peer address until they are WebSocket sessions ("auto":
    ``connquota.per_address_limit``; None: no limit), peers in ``forwarded_allow_ips``
    excepted."""
    cap = max_connections if max_connections is not None else default_max_connections()
    addresses = connquota.AddressSlots(
        connquota.per_address_limit(per_address, cap), forwarded_allow_ips
    )
    listener = bind(host, port)
    door = _Door(listener, app, config, ws_handler, http1, cap, addresses)
    lifespan, context = door.lifespan, door.context
    try:
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            # beside the connections, not among them: the server nursery waits for its
            # tasks to end, and connections still need their timeouts while it does
            lifespan_nursery.start_soon(door.deadlines.run)
            async with trio.open_nursery() as server_nursery:
                bound = repr_socket_addr(listener.family, listener.getsockname())
                task_status.started([f"http://{bound}"])
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                        nursery.start_soon(raise_shutdown, context.terminate.wait)
                        nursery.start_soon(door.accept_loop, server_nursery)
                        await trio.sleep_forever()
                except BaseExceptionGroup as error:
                    _, others = error.split((ShutdownError, KeyboardInterrupt))
                    if others is not None:
                        raise others from None
                finally:
                    listener.close()  # stop accepting; in-flight connections finish
                    if http1 is not None:
                        http1.stop()
                    await context.terminated.set()
                    server_nursery.cancel_scope.deadline = (
                        trio.current_time() + config.graceful_timeout
                    )
            await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()
    finally:
        listener.close()
