"""WebSocket sessions (docs/protocol.md): frames <-> the realtime core (``engine.realtime``).

A session's reader task parses client frames (subscribe, unsubscribe, ping) and
answers through the session's own queue, as the hub does with events; every frame is
built by ``engine.realtime.protocol``. The gateway's
one flusher task writes every session with something queued: all ready items as one
frame (a JSON array, or a msgpack array; at most 512 items and 64 KiB a frame), so a
busy session pays the per-frame cost once per batch, not once per event. A session's
own task only does what needs waiting (a full kernel buffer, a close).

The queue is bounded in items (``queue_limit``) and in bytes (``queue_bytes``, the
encoded size of what waits), and all sessions together share a byte budget
(``queue_budget``). The hub pushes without waiting; a session whose queue is full
drops it at once (memory stays bounded) and is closed with 4008 as soon as the kernel
has taken the frame being written (it resumes with ``since``), so a slow client never
slows the commit path, the chat actors or other sessions. A replay (a subscribe with
``since``) is not queued at once: the flusher pulls it from the histories a frame's
worth at a time as the session's queue drains (``Session._pull_replay``), so resuming
after a 4008 does not overflow the queue again. A client that stays behind for
the write timeout (60 s) in total — it never catches up, however slowly it reads — is
dropped without a close frame.

Every session is its own failure domain: an unexpected error in its handshake, its
reader, its own task or the flusher's writing of it is logged and counted
(``gateway.failures``) and closes that session only, with 1011. A session whose token
stops working (a visitor re-keyed by its org, an org's or a user's token rotated) is
closed with 4001; so is one opened with a signed token (JWT) when the token expires
(a timer on trio's clock) or when its org removes or replaces the key that verified it.

The front door (``gateway/frontdoor.py``) hands each ``GET /ws`` connection here as a
plain socket (an HTTP server does, for an upgrade sent as a later request of a
kept-alive connection); ``gateway/wsconn.py`` speaks the WebSocket protocol on it.
"""

from __future__ import annotations

import logging
import math
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import msgpack
import orjson
import trio
from wsproto.events import Request

from engine import channels, errors
from engine.actors.supervisor import Engine
from engine.ids import hash_token
from engine.reachability import counts_for_reachability
from engine.realtime import protocol
from engine.realtime.core import Realtime, Replays
from engine.realtime.protocol import JSON, MSGPACK, Close
from engine.state import limited_per_token
from engine.tokens import key_still_valid
from gateway import connquota
from gateway.auth import ADMIN, Principal, bearer, principal_for_token
from gateway.failures import connection_failed
from gateway.forwarded import Forwarded, parse_address
from gateway.wsconn import OP_BINARY, OP_TEXT, Disconnected, RawWebSocket, WsLimits
from gateway.wsquota import SessionQuota

if TYPE_CHECKING:  # at run time settings imports this module's users
    from gateway.settings import Network

log = logging.getLogger("chat_engine.ws")

SUBPROTOCOLS = {"chatengine.v1.json": JSON, "chatengine.v1.msgpack": MSGPACK}
BAD_FRAME_LIMIT = 20  # per BAD_FRAME_WINDOW seconds; one more closes with 1008
BAD_FRAME_WINDOW = 60.0
MAX_ITEMS_PER_FRAME = 512
# A frame grows past this only by its first item: what a stuck session holds outside
# its counted queue (its unsent frame) stays small.
MAX_FRAME_BYTES = 64 * 1024
FLUSH_YIELD_EVERY = 256  # sessions written between two checkpoints of the flusher
# After a write pass, the next waits this fraction of the time the pass spent writing
# (at most flush_interval): writing then takes at most 2/3 of the time. Against 1.0, 0.5
# trades some of the highest rate 1,000 sessions sustain for a lower p99 below it
# (docs/benchmarks.md, "Figures behind choices in the code").
WRITE_GAP_RATIO = 0.5
# A session replaying (a subscribe with ``since``) pulls its replayed events from the
# histories a frame's worth at a time as its queue drains, at most this many times per
# write pass: a long replay takes its turn with the other sessions.
REPLAY_PULLS_PER_PASS = 4


@dataclass(slots=True)
class WsSettings:
    queue_limit: int = 2000  # items (events and answers) waiting for one session
    queue_bytes: int = 4 * 1024 * 1024  # their encoded bytes, for one session
    queue_budget: int = 256 * 1024 * 1024  # encoded bytes waiting, all sessions together
    max_subscriptions: int = channels.MAX_SUBSCRIPTIONS
    # A busy session sends at most one frame per interval, carrying everything that
    # arrived meanwhile; an idle one sends at once. Each frame costs a task wake-up and
    # a send system call, so at high rates batching, not the events, keeps fan-out
    # cheap. 0 turns coalescing off.
    flush_interval: float = 0.025
    limits: WsLimits = field(default_factory=WsLimits)  # pings, timeouts, frame size
    # sessions open at once per token, per client address, in all (gateway/wsquota.py);
    # None: no limit
    sessions_per_token: int | None = 20
    sessions_per_address: int | None = 100
    max_sessions: int | None = None
    # proxies whose X-Forwarded-For names the client address the limit counts
    forwarded_allow_ips: tuple[Network, ...] = ()
    # where a refused upgrade is logged, as the HTTP server logs a refused request
    # (``--access-log``); None: not logged
    access_log: logging.Logger | None = None


@dataclass(slots=True)
class QueueBudget:
    """The bytes waiting in every session's queue, against one budget.

    Past the budget, a push overflows (4008) the session it goes to only if that
    session holds more than an equal share of the budget: the sessions that hold the
    most go first, and the total stays below twice the budget, since every session
    that may still grow holds less than its share."""

    limit: int
    total: int = 0
    sessions: int = 0

    def share(self) -> int:
        return self.limit // max(1, self.sessions)


@dataclass(eq=False)
class Session:
    """The hub's view of a session: an encoding and a bounded, non-blocking queue.

    ``push`` never waits. The first item after a flush puts the session on the
    gateway's ready list (``on_ready``); the gateway's one flusher task writes every
    ready session's items. The session's own task (``wait_for_trouble``) wakes only
    for what the flusher cannot do without waiting: a full kernel buffer, a full queue
    (4008), shutdown (1001) or a broken connection.
    """

    encoding: str
    queue_limit: int
    queue_bytes: int
    budget: QueueBudget
    principal: Principal
    on_ready: Callable[[Session], None]
    transport: RawWebSocket
    token_hash: str = ""
    # the realtime core its replays are pulled from (docs/realtime.md, "Replays")
    realtime: Realtime | None = None
    replays: Replays = field(default_factory=Replays)
    subscriptions: set[str] = field(default_factory=set)
    overflowed: bool = False
    closing: bool = False  # closed with ``close`` once the queue is flushed
    close: Close = protocol.GOING_AWAY
    revoked: bool = False  # its token stopped working: ``revoked_close`` (4001) at once
    restarting: bool = False  # the node reloaded its state: 1012 at once, resume with since
    revoked_close: Close = protocol.TOKEN_REVOKED
    ready: bool = False  # on the flusher's list
    blocked: bool = False  # the kernel's buffer is full: the session's task is flushing
    broken: bool = False
    failure: Exception | None = None  # an unexpected error while the flusher wrote it
    # since when the session has had bytes it could not write (None: caught up); the
    # write timeout counts from here, however slowly the peer keeps reading
    behind_since: float | None = None
    _queue: deque[bytes] = field(default_factory=deque)
    _bytes: int = 0  # encoded size of the items in the queue
    _trouble: trio.Event = field(default_factory=trio.Event)

    def push(self, item: bytes) -> None:
        if self.overflowed:
            return
        size = len(item)
        queued = self._bytes + size
        budget = self.budget
        total = budget.total + size
        if (
            len(self._queue) >= self.queue_limit
            or queued > self.queue_bytes
            or (total > budget.limit and queued > budget.share())
        ):
            self._overflow()
            return
        self._queue.append(item)
        self._bytes = queued
        budget.total = total
        if not self.ready:
            self.ready = True
            self.on_ready(self)

    def _overflow(self) -> None:
        self.overflowed = True
        self._discard()
        self._trouble.set()

    def _discard(self) -> None:
        self._queue.clear()
        self.budget.total -= self._bytes
        self._bytes = 0

    def _pull_replay(self) -> None:
        """Queue the next replayed events, at most one frame's worth and half the
        queue's bounds (what is already queued counted), so live events of the other
        channels keep room. A replay whose next event a history dropped meanwhile ends
        the session with 4008: it resumes, and is told ``resumed: false``."""
        realtime = self.realtime
        if realtime is None:
            return
        queue = self._queue
        items = min(MAX_ITEMS_PER_FRAME, max(1, self.queue_limit // 2)) - len(queue)
        room = min(MAX_FRAME_BYTES, max(1, self.queue_bytes // 2)) - self._bytes
        if items <= 0 or room <= 0:
            return
        pulled = realtime.pull(self, items, room)
        if pulled.lost:
            self._overflow()
            return
        size = 0
        for frame in pulled.frames:
            queue.append(frame)
            size += len(frame)
        self._bytes += size
        self.budget.total += size

    @property
    def replaying(self) -> bool:
        """Replayed events are still owed (pulled as the queue drains)."""
        return bool(self.replays.cursors) and not self.closing

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def close_soon(self, close: Close = protocol.GOING_AWAY) -> None:
        """Close with ``close`` once everything queued so far is written."""
        if not self.closing:
            self.closing = True
            self.close = close
        self._trouble.set()

    def revoke(self, close: Close = protocol.TOKEN_REVOKED) -> None:
        """Its token stopped working: nothing more is written, it closes with 4001 (the
        reason of the first revocation)."""
        if not self.revoked:
            self.revoked_close = close
        self.revoked = True
        self.overflowed = True  # so nothing more is queued (4001 goes first)
        self._discard()
        self._trouble.set()

    def restart(self) -> None:
        """The node's state was replaced (a replica reloaded a snapshot): nothing more
        is written, not even what is queued (it may predate the reload), then 1012."""
        self.restarting = True
        self.overflowed = True  # so nothing more is queued
        self._discard()
        self._trouble.set()

    def fail(self, error: Exception) -> None:
        self.failure = error
        self._trouble.set()

    def end(self) -> None:
        """The session is over: give its queued bytes back to the budget."""
        self.overflowed = True  # nothing more is queued
        self._discard()

    @property
    def troubled(self) -> bool:
        return (
            self.overflowed
            or self.closing
            or self.blocked
            or self.broken
            or self.revoked
            or self.failure is not None
        )

    async def wait_for_trouble(self) -> None:
        while not self.troubled:
            self._trouble = trio.Event()
            await self._trouble.wait()

    def take(self) -> list[bytes]:
        """The next frame's items: up to MAX_ITEMS_PER_FRAME and MAX_FRAME_BYTES (at
        least one item)."""
        queue = self._queue
        if self._bytes <= MAX_FRAME_BYTES and len(queue) <= MAX_ITEMS_PER_FRAME:
            # the usual case: everything queued fits in one frame
            taken = list(queue)
            queue.clear()
            self.budget.total -= self._bytes
            self._bytes = 0
            return taken
        first = queue.popleft()
        size = len(first)
        taken = [first]
        while queue and len(taken) < MAX_ITEMS_PER_FRAME:
            following = len(queue[0])
            if size + following > MAX_FRAME_BYTES:
                break
            taken.append(queue.popleft())
            size += following
        self._bytes -= size
        self.budget.total -= size
        return taken

    def write_ready(self) -> int:
        """Write queued items as frames, without waiting; stop if the kernel is full.
        Returns the number of frames written."""
        opcode = OP_TEXT if self.encoding == JSON else OP_BINARY
        transport = self.transport
        if transport.close_code is not None:
            self._discard()  # a close frame went out: nothing may follow it
            return 0
        frames = 0
        # a replay owed: pull some before each frame (at most REPLAY_PULLS_PER_PASS)
        cursors = self.replays.cursors
        pulls = 0 if cursors and not self.closing else REPLAY_PULLS_PER_PASS
        try:
            while True:
                if pulls < REPLAY_PULLS_PER_PASS:
                    pulls += 1
                    self._pull_replay()
                    if self.overflowed:
                        return frames
                if not self._queue:
                    break
                transport.send_frame(opcode, protocol.batch(self.take(), self.encoding))
                frames += 1
                if transport.backlog:
                    self.blocked = True
                    if self.behind_since is None:
                        self.behind_since = trio.current_time()
                    self._trouble.set()
                    return frames
        except Disconnected:
            self.broken = True
            self._trouble.set()
            return frames
        self.behind_since = None  # everything went to the kernel
        if cursors and not self.closing and not self.ready:
            # the rest of the replay: in the next pass
            self.ready = True
            self.on_ready(self)
        return frames


@dataclass
class WriteStats:
    """The flusher's work (exported on /metrics)."""

    passes: int = 0  # write passes
    seconds: float = 0.0  # time they held the event loop
    frames: int = 0  # frames they wrote


class BadFrame(Exception):
    def __init__(self, detail: str, frame_id: Any = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.frame_id = frame_id


class WsGateway:
    def __init__(self, engine: Engine, admin_token_hash: str, settings: WsSettings) -> None:
        self.engine = engine
        self.limits = settings.limits
        self.admin_token_hash = admin_token_hash
        self.settings = settings
        self.sessions: set[Session] = set()
        # sessions with something queued; each at most once (``Session.ready``), so this
        # is bounded by the number of sessions
        self._ready: list[Session] = []
        self._ready_event = trio.Event()
        self.slow_consumer_closes = 0
        self.write_stats = WriteStats()
        self.bad_frame_closes = 0
        self.revoked_closes = 0
        self.budget = QueueBudget(settings.queue_budget)
        self.quota = SessionQuota(
            settings.sessions_per_token, settings.sessions_per_address, settings.max_sessions
        )
        self._forwarded = Forwarded(settings.forwarded_allow_ips)
        # the open sessions of each token (by its hash), to close them when it stops
        # working; the directory tells (State.token_revoked)
        self._by_token: dict[str, set[Session]] = {}
        # the sessions opened with signed tokens, by the org of the key that verified
        # them: an org's key change looks at its own sessions, not at every session
        self._by_jwt_org: dict[str, set[Session]] = {}
        engine.state.token_revoked.append(self._token_revoked)
        engine.state.jwt_keys_changed.append(self._jwt_keys_changed)

    def _token_revoked(self, token_hash: str) -> None:
        for session in self._by_token.pop(token_hash, ()):
            session.revoke()

    def _jwt_keys_changed(self, org_id: str) -> None:
        """An org's keys were replaced: close its sessions whose key is gone or changed
        (only that org's signed-token sessions are looked at, so an org that changes
        its keys often costs the others nothing)."""
        state = self.engine.state
        for session in self._by_jwt_org.get(org_id, ()):
            key = session.principal.jwt_key
            if key is not None and not key_still_valid(state, key):
                session.revoke(protocol.KEY_REMOVED)

    def _on_ready(self, session: Session) -> None:
        self._ready.append(session)
        self._ready_event.set()

    async def run_flusher(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write every ready session's queued items, in passes. After a pass whose
        writing took ``w`` (the time it held the event loop, not the requests it let in
        between), the next starts no sooner than ``WRITE_GAP_RATIO * w`` (at most
        ``flush_interval``) later: an idle or lightly loaded server sends within a few
        milliseconds, a busy one lets the events arriving meanwhile share each session's
        frame, so writing takes at most about two thirds of the time. One task for all
        sessions: a frame costs one ``send``, not a task switch."""
        interval = self.settings.flush_interval
        last_pass = -math.inf
        gap = 0.0
        task_status.started()
        while True:
            await self._ready_event.wait()
            self._ready_event = trio.Event()
            if gap and last_pass + gap > trio.current_time():
                await trio.sleep_until(last_pass + gap)
            started = trio.current_time()
            writing = 0.0
            frames = 0
            ready, self._ready = self._ready, []
            for index, session in enumerate(ready, start=1):
                session.ready = False
                if not session.troubled:
                    try:
                        frames += session.write_ready()
                    except Exception as error:  # noqa: BLE001 - that session only
                        session.fail(error)  # its own task reports it and closes it
                if index % FLUSH_YIELD_EVERY == 0:
                    now = trio.current_time()
                    writing += now - started
                    await trio.lowlevel.checkpoint()  # let requests in between
                    started = trio.current_time()
            last_pass = trio.current_time()
            writing += last_pass - started
            stats = self.write_stats
            stats.passes += 1
            stats.seconds += writing
            stats.frames += frames
            gap = min(interval, WRITE_GAP_RATIO * writing)

    def restart_sessions(self) -> None:
        """Close every session with 1012 at once (a replica reloaded its state)."""
        for session in list(self.sessions):
            self.engine.realtime.drop(session, session.subscriptions)
            session.subscriptions = set()
            session.restart()

    def shutdown(self) -> None:
        """Close every session with 1001 once its queue is flushed."""
        for session in list(self.sessions):
            session.close_soon()

    async def handle_connection(self, conn: socket.socket, received: bytes = b"") -> None:
        """One connection whose next request is ``GET /ws``: upgrade, then serve. The
        front door hands over a connection that opens with it; an HTTP server, one
        that sends it after other requests, with the bytes it already read
        (``received``: the upgrade's head and what followed).

        The session's failure boundary: whatever goes wrong in it ends it alone."""
        try:
            host, port = conn.getpeername()[:2]
            peer: str | None = f"{host}:{port}"  # as the logs show it
        except OSError:
            host, peer = None, None
        transport = RawWebSocket(conn, self.limits)
        described = "GET /ws"  # what the error log names; never the token
        try:
            request = await transport.handshake(received)
            if request is None:
                self._log_refusal(peer, transport)
                return
            described = f"GET {_without_token(request.target)}"
            try:
                principal, token_hash = self._admit(request)
                # per token and address for visitors and users; admin and org tokens
                # count in the total only (gateway/wsquota.py says why)
                counted = limited_per_token(principal.kind)
                # a signed token counts for its principal: fresh tokens add no sessions
                quota_key = token_hash if principal.jwt_key is None else f"jwt:{principal.id}"
                quota_token = quota_key if counted else None
                address = self._client_address(host, request) if counted else None
                refusal = self.quota.refusal(quota_token, address)
                if refusal is not None:
                    raise refusal
            except errors.EngineError as error:
                await transport.reject(error)
                self._log_refusal(peer, transport)
                return
            # counted from here, before any await, so two upgrades cannot both pass
            self.quota.take(quota_token, address)
            # a session now: it leaves the front door's count of connections per address
            connquota.became_session()
            try:
                described += f" ({principal.kind} {principal.id})"
                chosen = next((name for name in request.subprotocols if name in SUBPROTOCOLS), None)
                await transport.accept(chosen)
                encoding = SUBPROTOCOLS.get(chosen or "", JSON)
                await self._serve(principal, token_hash, encoding, transport)
            finally:
                self.quota.give_back(quota_token, address)
        except Disconnected:
            pass
        except Exception as error:  # noqa: BLE001 - the boundary: this session only
            connection_failed("ws", peer, described, _single(error))
            if transport.handshake_done:
                transport.close_at_once(*protocol.INTERNAL_ERROR)
        finally:
            transport.abort()

    def _log_refusal(self, peer: str | None, transport: RawWebSocket) -> None:
        """A refused upgrade, as ``Http1Server.log_refusal`` logs a refused request."""
        access_log = self.settings.access_log
        if access_log is None or transport.refused is None:
            return
        status, detail, size = transport.refused
        access_log.info(
            "refused",
            extra={
                "fields": {
                    "client": peer,
                    "method": "GET",
                    "path": "/ws",
                    "status": status,
                    "detail": detail,
                    "bytes": size,
                }
            },
        )

    def _client_address(self, host: str | None, request: Request) -> str | None:
        """The address the per-address limit counts: the peer's, or, from a trusted
        proxy, the client its ``X-Forwarded-For`` names."""
        if host is None:
            return None
        address = parse_address(host)
        if address is None:
            return None
        if self._forwarded.trusts(address):
            for name, value in request.extra_headers:
                if name.lower() == b"x-forwarded-for":
                    client = self._forwarded.client_of(value.decode("latin-1"))
                    if client is not None:
                        return str(client)
        return str(address)

    def _admit(self, request: Request) -> tuple[Principal, str]:
        if not self.engine.started.is_set():
            raise errors.Unavailable("The engine is starting.")
        header = ""
        for name, value in request.extra_headers:
            if name.lower() == b"authorization":
                header = value.decode("latin-1")
        token = bearer(header)
        if token is None:
            query = parse_qs(urlsplit(request.target).query)
            token = query.get("token", [""])[0]
        if not token:
            raise errors.NotAuthenticated("Authentication credentials were not provided.")
        principal = principal_for_token(
            self.engine.state, token, self.admin_token_hash, now_ms=self.engine.now()
        )
        return principal, hash_token(token)

    async def _serve(
        self, principal: Principal, token_hash: str, encoding: str, transport: RawWebSocket
    ) -> None:
        settings = self.settings
        session = Session(
            encoding,
            settings.queue_limit,
            settings.queue_bytes,
            self.budget,
            principal,
            self._on_ready,
            transport,
            token_hash,
            self.engine.realtime,
        )
        self.sessions.add(session)
        self.budget.sessions += 1
        self._by_token.setdefault(token_hash, set()).add(session)
        jwt_org = principal.jwt_key.org_id if principal.jwt_key is not None else None
        if jwt_org is not None:
            self._by_jwt_org.setdefault(jwt_org, set()).add(session)
        # it may have stopped working while the upgrade was answered
        if principal.jwt_key is not None:
            if not key_still_valid(self.engine.state, principal.jwt_key):
                session.revoke(protocol.KEY_REMOVED)
        elif principal.kind != ADMIN and self.engine.state.principal(token_hash) is None:
            session.revoke()
        reachability = self.engine.reachability
        if counts_for_reachability(principal.kind):
            reachability.session_opened(principal.id)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, session, transport, nursery.cancel_scope)
                if principal.expires_ms is not None:
                    nursery.start_soon(self._expire, session, principal.expires_ms)
                if await self._tend(session, transport):
                    # we sent a close frame: the reader waits (a while) for the peer's
                    nursery.cancel_scope.deadline = trio.current_time() + self.limits.close_timeout
                else:
                    nursery.cancel_scope.cancel()
        finally:
            self.sessions.discard(session)
            self.budget.sessions -= 1
            session.end()
            holders = self._by_token.get(token_hash)
            if holders is not None:
                holders.discard(session)
                if not holders:
                    del self._by_token[token_hash]
            if jwt_org is not None:
                signed = self._by_jwt_org.get(jwt_org)
                if signed is not None:
                    signed.discard(session)
                    if not signed:
                        del self._by_jwt_org[jwt_org]
            self.engine.realtime.drop(session, session.subscriptions)
            if counts_for_reachability(principal.kind):
                reachability.session_closed(principal.id)

    async def _expire(self, session: Session, expires_ms: int) -> None:
        """A session opened with a signed token ends (4001) when the token expires: the
        client reconnects with a fresh one. The wait runs on trio's clock, from the
        engine's clock now to the token's ``exp``."""
        await trio.sleep(max(0.0, (expires_ms - self.engine.now()) / 1000))
        session.revoke(protocol.TOKEN_EXPIRED)

    async def _tend(self, session: Session, transport: RawWebSocket) -> bool:
        """What the flusher leaves to the session's own task; True when the session
        ends with a close frame of ours."""
        write_timeout = self.limits.write_timeout

        def deadline() -> float:
            # the write timeout is a total: it counts from when the session fell behind
            behind = session.behind_since
            return (trio.current_time() if behind is None else behind) + write_timeout

        try:
            while True:
                await session.wait_for_trouble()
                if session.failure is not None:
                    raise session.failure
                if session.broken:
                    return False
                if session.restarting:
                    await transport.close(*protocol.STATE_RELOADED)
                    return True
                if session.revoked:
                    self.revoked_closes += 1
                    await transport.close(*session.revoked_close)
                    return True
                if session.overflowed:
                    self.slow_consumer_closes += 1
                    await transport.close(*protocol.SLOW_CONSUMER)
                    return True
                if session.blocked:
                    await transport.flush(deadline())
                    session.blocked = False
                    if session.closing:
                        continue
                    if (session.depth or session.replaying) and not session.ready:
                        session.ready = True
                        self._on_ready(session)
                    else:
                        session.behind_since = None
                    continue
                # closing: the final flush, then the close frame
                while session.depth:
                    session.write_ready()
                    session.blocked = False
                    if session.broken:
                        return False
                    await transport.flush(deadline())
                await transport.close(*session.close)
                return True
        except Disconnected:
            return False

    async def _read(
        self, session: Session, transport: RawWebSocket, scope: trio.CancelScope
    ) -> None:
        bad_frames: deque[float] = deque()
        try:
            while True:
                data = await transport.receive()
                if transport.close_code is not None or session.closing or session.revoked:
                    continue  # closing: frames change nothing now; wait for the peer's close
                try:
                    await self._handle_frame(session, self._decode(session, data))
                except BadFrame as bad:
                    session.push(
                        protocol.error("bad_frame", bad.detail, bad.frame_id, session.encoding)
                    )
                    now = trio.current_time()
                    bad_frames.append(now)
                    while bad_frames and now - bad_frames[0] > BAD_FRAME_WINDOW:
                        bad_frames.popleft()
                    if len(bad_frames) > BAD_FRAME_LIMIT:
                        # after the answers queued so far, this one included
                        self.bad_frame_closes += 1
                        session.close_soon(protocol.TOO_MANY_BAD_FRAMES)
                await trio.lowlevel.checkpoint()  # one turn per frame, however many wait
        except Disconnected:
            pass
        scope.cancel()

    @staticmethod
    def _decode(session: Session, data: str | bytes) -> dict[str, Any]:
        try:
            if session.encoding == JSON:
                if not isinstance(data, str):
                    raise BadFrame("Binary frames are not accepted on chatengine.v1.json.")
                frame = orjson.loads(data)
            else:
                if not isinstance(data, bytes):
                    raise BadFrame("Text frames are not accepted on chatengine.v1.msgpack.")
                frame = msgpack.unpackb(data)
        except (
            orjson.JSONDecodeError,
            ValueError,
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
            TypeError,
        ) as error:
            raise BadFrame(f"The frame does not decode: {error}") from None
        if not isinstance(frame, dict):
            raise BadFrame("A frame must be an object.")
        return frame

    async def _handle_frame(self, session: Session, frame: dict[str, Any]) -> None:
        frame_id = frame.get("id")
        kind = frame.get("type")
        if kind == "ping":
            session.push(protocol.pong(frame_id, session.encoding))
            return
        if kind not in ("subscribe", "unsubscribe"):
            raise BadFrame("Unknown frame type.", frame_id)
        channel = frame.get("channel")
        if not isinstance(channel, str):
            raise BadFrame("'channel' must be a string.", frame_id)
        if kind == "unsubscribe":
            self.engine.realtime.unsubscribe(session, channel)
            session.subscriptions.discard(channel)
            session.push(protocol.unsubscribed(channel, frame_id, session.encoding))
            return
        since = frame.get("since")
        epoch = frame.get("epoch")
        if since is not None and (
            not isinstance(since, int) or isinstance(since, bool) or since < 0
        ):
            raise BadFrame("'since' must be a non-negative integer.", frame_id)
        if epoch is not None and not isinstance(epoch, str):
            raise BadFrame("'epoch' must be a string.", frame_id)
        principal = session.principal
        refusal = channels.subscribe_refusal(
            self.engine.state,
            principal.kind,
            principal.id,
            channel,
            session.subscriptions,
            self.settings.max_subscriptions,
        )
        if refusal is not None:
            code, detail = refusal
            session.push(protocol.error(code, detail, frame_id, session.encoding))
            return
        session.subscriptions.add(channel)
        # the answer is queued before any replayed event: the session's writer pulls
        # those from the history as its queue drains, then the channel goes live
        answer = self.engine.realtime.subscribe(session, channel, since=since, epoch=epoch)
        session.push(
            protocol.subscribed(
                channel, answer.head, answer.resumed, answer.epoch, frame_id, session.encoding
            )
        )


def _without_token(target: str) -> str:
    """The request target as logs may show it."""
    path, _, query = target.partition("?")
    return f"{path}?…" if query else path


def _single(error: Exception) -> Exception:
    """The error itself rather than a group of one (what a nursery wraps it in)."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
