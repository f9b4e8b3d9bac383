"""WebSocket sessions (CONTRACT §8): frames <-> the channel router.

A session has two tasks: the reader parses client frames (subscribe, unsubscribe,
ping) and answers through the session's own queue, and the writer drains that queue,
packing every ready item into one frame (a JSON array, or a msgpack array) so a busy
session pays the per-frame cost once per batch, not once per event.

The queue is bounded (``queue_limit`` items). The router pushes without waiting; a
session whose queue is full drops it at once (memory stays bounded) and is closed with
4008 as soon as the frame it is writing completes (it resumes with ``since``), so a slow
client never slows the router, the chat actors or other sessions. A client that never
reads again cannot even take the close frame; it sends no pongs either, and the 60 s
read timeout ends its connection.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson
import trio
from quart import Response, websocket

from engine import channels, errors
from engine.actors.router import JSON, MSGPACK, Subscribed
from engine.actors.supervisor import Engine
from gateway.auth import Principal, principal_for_token

log = logging.getLogger("chat_engine.ws")

SUBPROTOCOLS = {"chatengine.v1.json": JSON, "chatengine.v1.msgpack": MSGPACK}
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_SLOW_CONSUMER = 4008
BAD_FRAME_LIMIT = 20  # per BAD_FRAME_WINDOW seconds; one more closes with 1008
BAD_FRAME_WINDOW = 60.0
MAX_ITEMS_PER_FRAME = 512


@dataclass(slots=True)
class WsSettings:
    queue_limit: int = 2000  # items (events and answers) waiting for one session
    max_subscriptions: int = 1000
    # A busy session sends at most one frame per interval, carrying everything that
    # arrived meanwhile; an idle one sends at once. Each frame costs ~100 µs of CPU in
    # the ASGI/hypercorn/wsproto write path, so at high rates this, not the events,
    # bounds fan-out. 0 turns coalescing off.
    flush_interval: float = 0.025


@dataclass(eq=False)
class Session:
    """The router's view of a session: an encoding and a bounded, non-blocking queue."""

    encoding: str
    queue_limit: int
    principal: Principal
    subscriptions: set[str] = field(default_factory=set)
    overflowed: bool = False
    closing: bool = False
    _queue: deque[bytes] = field(default_factory=deque)
    _wakeup: trio.Event = field(default_factory=trio.Event)

    def push(self, item: bytes) -> None:
        if self.overflowed:
            return
        if len(self._queue) >= self.queue_limit:
            self.overflowed = True
            self._queue.clear()
        else:
            self._queue.append(item)
        self._wakeup.set()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def close_soon(self) -> None:
        self.closing = True
        self._wakeup.set()

    async def wait(self) -> None:
        """Until there is something to send, or the session must close."""
        while not self._queue and not self.overflowed and not self.closing:
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def take(self) -> list[bytes]:
        """Wait for items; return up to MAX_ITEMS_PER_FRAME of them (empty: closing)."""
        await self.wait()
        if self.overflowed:
            return []
        count = min(len(self._queue), MAX_ITEMS_PER_FRAME)
        return [self._queue.popleft() for _ in range(count)]

    def encode(self, obj: dict[str, Any]) -> bytes:
        return orjson.dumps(obj) if self.encoding == JSON else msgpack.packb(obj)


def pack_frame(items: list[bytes], encoding: str) -> str | bytes:
    """Several ready items become one frame: a JSON array or a msgpack array."""
    if encoding == JSON:
        body = items[0] if len(items) == 1 else b"[" + b",".join(items) + b"]"
        return body.decode("utf-8")
    if len(items) == 1:
        return items[0]
    count = len(items)
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 65536:
        header = b"\xdc" + struct.pack(">H", count)
    else:
        header = b"\xdd" + struct.pack(">I", count)
    return header + b"".join(items)


class BadFrame(Exception):
    def __init__(self, detail: str, frame_id: Any = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.frame_id = frame_id


class WsGateway:
    def __init__(self, engine: Engine, admin_token_hash: str, settings: WsSettings) -> None:
        self.engine = engine
        self.admin_token_hash = admin_token_hash
        self.settings = settings
        self.sessions: set[Session] = set()
        self.slow_consumer_closes = 0
        self.bad_frame_closes = 0

    def shutdown(self) -> None:
        """Close every session with 1001 once its queue is flushed."""
        for session in list(self.sessions):
            session.close_soon()

    def _authenticate(self) -> Principal:
        header = websocket.headers.get("Authorization", "")
        token = (
            header[6:].strip() if header.startswith("Token ") else websocket.args.get("token", "")
        )
        if not token:
            raise errors.NotAuthenticated("Authentication credentials were not provided.")
        return principal_for_token(self.engine.state, token, self.admin_token_hash)

    async def handle(self) -> Response | None:
        if not self.engine.started.is_set():
            error: errors.EngineError = errors.Unavailable("The engine is starting.")
            return Response(
                orjson.dumps(error.body()), status=error.status, content_type="application/json"
            )
        try:
            principal = self._authenticate()
        except errors.EngineError as error:
            return Response(
                orjson.dumps(error.body()), status=error.status, content_type="application/json"
            )
        chosen = next(
            (name for name in websocket.requested_subprotocols if name in SUBPROTOCOLS), None
        )
        await websocket.accept(subprotocol=chosen)
        session = Session(
            SUBPROTOCOLS.get(chosen or "", JSON), self.settings.queue_limit, principal
        )
        self.sessions.add(session)
        reachability = self.engine.reachability
        if principal.kind == "user":
            reachability.session_opened(principal.id)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, session, nursery.cancel_scope)
                await self._write(session)
                nursery.cancel_scope.cancel()
        finally:
            self.sessions.discard(session)
            self.engine.router.drop(session, session.subscriptions)
            if principal.kind == "user":
                reachability.session_closed(principal.id)
        return None

    async def _write(self, session: Session) -> None:
        interval = self.settings.flush_interval
        last_frame = -math.inf
        while True:
            await session.wait()
            if interval and not session.closing:
                # busy: let the events of the next few milliseconds share this frame
                await trio.sleep_until(last_frame + interval)
            items = await session.take()
            if not items:
                if session.overflowed:
                    self.slow_consumer_closes += 1
                    await websocket.close(CLOSE_SLOW_CONSUMER, "slow consumer: resume with since")
                else:
                    await websocket.close(CLOSE_GOING_AWAY, "server shutting down")
                return
            await websocket.send(pack_frame(items, session.encoding))
            last_frame = trio.current_time()

    async def _read(self, session: Session, scope: trio.CancelScope) -> None:
        bad_frames: deque[float] = deque()
        while True:
            data = await websocket.receive()
            try:
                await self._handle_frame(session, self._decode(session, data))
            except BadFrame as bad:
                reply: dict[str, Any] = {"type": "error", "code": "bad_frame", "detail": bad.detail}
                if bad.frame_id is not None:
                    reply["id"] = bad.frame_id
                session.push(session.encode(reply))
                now = trio.current_time()
                bad_frames.append(now)
                while bad_frames and now - bad_frames[0] > BAD_FRAME_WINDOW:
                    bad_frames.popleft()
                if len(bad_frames) > BAD_FRAME_LIMIT:
                    self.bad_frame_closes += 1
                    await websocket.close(CLOSE_POLICY, "too many invalid frames")
                    scope.cancel()
                    return

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
            session.push(session.encode(_with_id({"type": "pong"}, frame_id)))
            return
        if kind not in ("subscribe", "unsubscribe"):
            raise BadFrame("Unknown frame type.", frame_id)
        channel = frame.get("channel")
        if not isinstance(channel, str):
            raise BadFrame("'channel' must be a string.", frame_id)
        if kind == "unsubscribe":
            self.engine.router.unsubscribe(session, channel)
            session.subscriptions.discard(channel)
            session.push(
                session.encode(_with_id({"type": "unsubscribed", "channel": channel}, frame_id))
            )
            return
        since = frame.get("since")
        epoch = frame.get("epoch")
        if since is not None and (
            not isinstance(since, int) or isinstance(since, bool) or since < 0
        ):
            raise BadFrame("'since' must be a non-negative integer.", frame_id)
        if epoch is not None and not isinstance(epoch, str):
            raise BadFrame("'epoch' must be a string.", frame_id)
        refusal = self._refusal(session, channel)
        if refusal is not None:
            code, detail = refusal
            session.push(
                session.encode(
                    _with_id({"type": "error", "code": code, "detail": detail}, frame_id)
                )
            )
            return
        answer: Callable[[Subscribed], bytes] = lambda subscribed: session.encode(  # noqa: E731
            _with_id(
                {
                    "type": "subscribed",
                    "channel": channel,
                    "seq": subscribed.head,
                    "resumed": subscribed.resumed,
                    "epoch": subscribed.epoch,
                },
                frame_id,
            )
        )
        session.subscriptions.add(channel)
        self.engine.router.subscribe(session, channel, since=since, epoch=epoch, answer=answer)

    def _refusal(self, session: Session, channel: str) -> tuple[str, str] | None:
        ref = channels.parse(channel)
        if ref is None:
            return "unknown_channel", "No such channel."
        principal = session.principal
        if not channels.may_subscribe(self.engine.state, principal.kind, principal.id, ref):
            return "forbidden", "You may not subscribe to this channel."
        if (
            channel not in session.subscriptions
            and len(session.subscriptions) >= self.settings.max_subscriptions
        ):
            return (
                "too_many_subscriptions",
                f"At most {self.settings.max_subscriptions} subscriptions per session.",
            )
        return None


def _with_id(frame: dict[str, Any], frame_id: Any) -> dict[str, Any]:
    if frame_id is not None:
        frame["id"] = frame_id
    return frame
