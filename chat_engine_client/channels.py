"""Live channels over the server's WebSocket protocol, with resume.

``ChannelClient`` keeps one session open in a background task of its own, and for
each subscription the ``seq`` of the last event it delivered and the channel's
``epoch``. Whenever the session ends for a reason worth retrying (the server shutting
down or restarting, a broken connection, 4008 for falling behind) it reconnects with
exponential backoff and jitter and subscribes again with ``since`` and ``epoch``, so
each event reaches the subscriber exactly once and in ``seq`` order, however many times
the session was lost. When the server cannot replay (``resumed: false``: the events
were dropped from its history, or its history is another one), the subscription's
``on_reset`` is called: the caller reads the collection again over HTTP, and the events
after the new head follow.

A subscription delivers to a handler (``on_event``) or, without one, through ``async
for event in subscription``. Handlers run in the client's reader task, one at a time
and in order; a slow handler makes the session fall behind (the server closes it with
4008) and the client resumes where it was, so nothing is lost.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import anyio
import msgpack
import orjson
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from chat_engine_client.errors import ChannelError, SubscriptionError, TokenInvalid
from chat_engine_client.websocket import HandshakeRejected, WebSocket, WebSocketClosed

log = logging.getLogger("chat_engine_client")

Event = dict[str, Any]
OnEvent = Callable[[Event], Awaitable[None] | None]
TokenProvider = Callable[[], Awaitable[str | None] | str | None]

# Close codes that say the client broke the protocol: reconnecting would fail the same
# way, so the client stops instead of looping.
CLIENT_FAULTS = {
    1002: "protocol error",
    1003: "unsupported data",
    1007: "invalid UTF-8",
    1008: "too many invalid frames",
    1009: "message too big",
}
TOKEN_REVOKED = 4001
SLOW_CONSUMER = 4008
STABLE_SESSION = 10.0  # seconds open after which a session counts as a success
_GAP = -1  # our own reason to start a fresh session: an event arrived out of order


@dataclass(frozen=True)
class Reset:
    """What ``on_reset`` receives: the server could not replay from ``since`` (the
    events were dropped, or ``epoch`` is a different history than ``previous_epoch``).
    Read the collection again; the subscription goes on with the events after ``seq``."""

    channel: str
    since: int
    seq: int
    epoch: str | None
    previous_epoch: str | None


OnReset = Callable[[Reset], Awaitable[None] | None]


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: ``initial`` doubled (``factor``) per failed
    attempt up to ``maximum``, each drawn at random between half and all of it, so
    that many clients of a restarted server do not come back in step."""

    initial: float = 0.25
    maximum: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return random.uniform(ceiling / 2, ceiling)


class Subscription:
    """One channel of a :class:`ChannelClient`. ``seq`` is the seq of the last event
    delivered, ``epoch`` the channel's history as last seen; both are what a resume
    sends back."""

    def __init__(
        self,
        client: ChannelClient,
        channel: str,
        on_event: OnEvent | None,
        on_reset: OnReset | None,
        since: int | None,
        epoch: str | None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.on_event = on_event
        self.on_reset = on_reset
        self.seq: int | None = since
        self.epoch: str | None = epoch
        self.resets = 0
        self.error: BaseException | None = None
        self.active = True
        self._answered = anyio.Event()
        self._pending_id: int | None = None
        self._asked_since: int | None = None  # the position the last subscribe resumes
        self._sent_since = False  # whether it sent it (see ChannelClient._run, 4008)
        self._fresh = False
        self._generation = -1  # the session this subscription was last sent on
        self._buffer: list[Event] = []
        self._send: MemoryObjectSendStream[Event] | None = None
        self._receive: MemoryObjectReceiveStream[Event] | None = None
        if on_event is None:
            self._send, self._receive = anyio.create_memory_object_stream[Event](math.inf)

    async def unsubscribe(self) -> None:
        await self.client._unsubscribe(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._receive is None:
            raise TypeError("this subscription delivers to its on_event handler")
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self.error is not None:
                raise self.error from None
            raise StopAsyncIteration from None

    def _end(self, error: BaseException | None = None) -> None:
        self.active = False
        if error is not None and self.error is None:
            self.error = error
        self._answered.set()
        if self._send is not None:
            self._send.close()


class ChannelClient:
    """A WebSocket session to ``url`` (``ws://host:port/ws``, or the server's
    ``http://`` base URL) that survives reconnects. Use it as an async context manager;
    it runs on anyio, so under asyncio and trio alike.

    ``token_provider`` is asked for a fresh token when the server says the token stopped
    working (close 4001, or 401 on connecting); without one, or when it returns nothing,
    the client stops with :class:`TokenInvalid`. ``ping_interval``: seconds between
    WebSocket pings; a server from which nothing arrived for ``dead_after`` seconds is
    taken for gone and the client reconnects. ``token_in_query`` sends the token as
    ``?token=`` instead of an ``Authorization: Token`` header.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        token_provider: TokenProvider | None = None,
        encoding: str = "json",
        backoff: Backoff | None = None,
        ping_interval: float = 20.0,
        dead_after: float = 60.0,
        connect_timeout: float = 10.0,
        token_in_query: bool = False,
    ) -> None:
        if encoding not in ("json", "msgpack"):
            raise ValueError("encoding is 'json' or 'msgpack'")
        self.url = _ws_url(url)
        self.token = token
        self.token_provider = token_provider
        self.encoding = encoding
        self.backoff = backoff or Backoff()
        self.ping_interval = ping_interval
        self.dead_after = dead_after
        self.connect_timeout = connect_timeout
        self.token_in_query = token_in_query
        self.subscriptions: dict[str, Subscription] = {}
        self.sessions = 0  # sessions opened so far (the first one included)
        self.error: BaseException | None = None
        # why the latest sessions or connection attempts ended: close codes, or the
        # HTTP status of a refused upgrade (the last 16)
        self.closes: deque[int] = deque(maxlen=16)
        self._ids = itertools.count(1)
        self._pending: dict[int, Subscription] = {}
        self._ws: WebSocket | None = None
        self._generation = 0
        self._connected = anyio.Event()
        self._stopped = anyio.Event()
        self._closing = False
        self._task_group: TaskGroup | None = None
        self._last_received = 0.0
        self._unanswered: list[Subscription] = []
        self.delivered = 0  # events handed to subscribers so far

    # ---- life -----------------------------------------------------------------------

    async def __aenter__(self) -> ChannelClient:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        assert self._task_group is not None
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the session (code 1000) and end every subscription's iteration."""
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            with anyio.CancelScope(shield=True):
                await ws.aclose(1000)
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        for subscription in list(self.subscriptions.values()):
            subscription._end()
        self._stopped.set()
        self._connected.set()

    @property
    def last_close_code(self) -> int | None:
        return self.closes[-1] if self.closes else None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def wait_connected(self) -> None:
        """Until a session is open (raises the error that stopped the client)."""
        while True:
            self._raise_if_stopped()
            if self._ws is not None:
                return
            await self._connected.wait()  # also set when the client stops

    async def wait_stopped(self) -> None:
        """Until the client stops; raises the error that stopped it, if one did."""
        await self._stopped.wait()
        if self.error is not None:
            raise self.error

    def _raise_if_stopped(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closing:
            raise ChannelError("the client is closed")

    # ---- subscriptions --------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        *,
        on_event: OnEvent | None = None,
        on_reset: OnReset | None = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> Subscription:
        """Subscribe and wait for the server's answer (connecting first if needed).
        ``since``/``epoch``: a position saved earlier, to resume from. Raises
        :class:`SubscriptionError` when the server refuses the channel. Subscribe
        before reading the collection over HTTP: then no item is missed."""
        self._raise_if_stopped()
        if channel in self.subscriptions:
            raise ValueError(f"already subscribed to {channel}")
        subscription = Subscription(self, channel, on_event, on_reset, since, epoch)
        self.subscriptions[channel] = subscription
        ws = self._ws
        if ws is not None:
            try:
                await self._send_subscribe(ws, subscription)
            except WebSocketClosed:
                pass  # the next session subscribes it
        try:
            await subscription._answered.wait()
        except BaseException:  # cancelled while waiting: leave nothing behind
            with anyio.move_on_after(2, shield=True):
                await self._unsubscribe(subscription)
            raise
        if subscription.error is not None:
            raise subscription.error
        if not subscription.active:
            raise ChannelError("the client closed before the server answered")
        return subscription

    async def _unsubscribe(self, subscription: Subscription) -> None:
        if self.subscriptions.get(subscription.channel) is subscription:
            del self.subscriptions[subscription.channel]
        if subscription._pending_id is not None:
            self._pending.pop(subscription._pending_id, None)
        subscription._end()
        ws = self._ws
        if ws is not None:
            frame = {"type": "unsubscribe", "id": next(self._ids), "channel": subscription.channel}
            try:
                await ws.send(self._encode(frame))
            except WebSocketClosed:
                pass

    async def _send_subscribe(self, ws: WebSocket, subscription: Subscription) -> None:
        if subscription._generation == self._generation or not subscription.active:
            return
        subscription._generation = self._generation
        frame_id = next(self._ids)
        subscription._pending_id = frame_id
        subscription._asked_since = subscription.seq
        subscription._sent_since = subscription.seq is not None and not subscription._fresh
        subscription._fresh = False
        subscription._buffer = []
        self._pending[frame_id] = subscription
        frame: dict[str, Any] = {
            "type": "subscribe",
            "id": frame_id,
            "channel": subscription.channel,
        }
        if subscription._sent_since:
            frame["since"] = subscription.seq
            if subscription.epoch is not None:
                frame["epoch"] = subscription.epoch
        await ws.send(self._encode(frame))

    # ---- the connection loop ----------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            delay: float
            try:
                with anyio.fail_after(self.connect_timeout):
                    ws = await WebSocket.connect(
                        self._url_with_token(),
                        headers=self._headers(),
                        subprotocols=[f"chatengine.v1.{self.encoding}"],
                    )
            except HandshakeRejected as rejected:
                self.closes.append(rejected.status)
                if rejected.status == 401:
                    delay = await self._token_refused(401, attempt)
                elif rejected.status in (429, 503) or rejected.status >= 500:
                    retry_after = _float(rejected.headers.get("retry-after"))
                    delay = max(self.backoff.delay(attempt), retry_after or 0.0)
                else:
                    self._fail(ChannelError(str(rejected), rejected.status))
                    return
            except (OSError, TimeoutError, WebSocketClosed, anyio.BrokenResourceError) as error:
                log.debug("connecting to %s failed: %r", self.url, error)
                delay = self.backoff.delay(attempt)
            else:
                code, progressed = await self._session(ws)
                self.closes.append(code)
                if self._closing:
                    return
                if progressed:
                    attempt = 0
                if code == SLOW_CONSUMER and not progressed:
                    # Nothing got through: this reader cannot keep up even with a
                    # replay the server paces to its queue (or the server predates
                    # paced replays), so resuming again would fail the same way.
                    # Subscribe afresh instead: on_reset, then live events.
                    for subscription in self._unanswered:
                        subscription._fresh = True
                    delay = 0.0 if attempt == 0 else self.backoff.delay(attempt)
                elif code == TOKEN_REVOKED:
                    delay = await self._token_refused(code, attempt)
                elif code in CLIENT_FAULTS:
                    self._fail(
                        ChannelError(
                            f"the server closed the session with {code} ({CLIENT_FAULTS[code]})",
                            code,
                        )
                    )
                    return
                elif code in (SLOW_CONSUMER, _GAP) and attempt == 0:
                    delay = 0.0  # resume at once; a repeat backs off
                else:
                    delay = self.backoff.delay(attempt)
            if self.error is not None or self._closing:
                return
            attempt += 1
            await anyio.sleep(delay)

    def _url_with_token(self) -> str:
        if not (self.token and self.token_in_query):
            return self.url
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}{urlencode({'token': self.token})}"

    def _headers(self) -> list[tuple[str, str]]:
        if not self.token or self.token_in_query:
            return []
        return [("Authorization", f"Token {self.token}")]

    async def _token_refused(self, code: int, attempt: int) -> float:
        """A fresh token from the provider (the delay before using it), or stop."""
        token: str | None = None
        if self.token_provider is not None:
            answer = self.token_provider()
            token = await answer if inspect.isawaitable(answer) else answer
        if not token:
            self._fail(TokenInvalid(f"the token was refused ({code}) and no fresh one came", code))
            return 0.0
        same = token == self.token
        self.token = token
        return self.backoff.delay(attempt) if same else 0.0

    def _fail(self, error: BaseException) -> None:
        self.error = error
        for subscription in list(self.subscriptions.values()):
            subscription._end(error)
        self._stopped.set()
        self._connected.set()

    async def _session(self, ws: WebSocket) -> tuple[int, bool]:
        """Serve one session until it ends: (close code, whether it made progress:
        every subscription answered, an event delivered, or open for a while)."""
        self._generation += 1
        self.sessions += 1
        self._pending.clear()
        self._ws = ws
        self._last_received = anyio.current_time()
        self._connected.set()
        code = 1006
        delivered = self.delivered
        opened = anyio.current_time()
        answered = False
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._keepalive, ws)
                try:
                    for subscription in list(self.subscriptions.values()):
                        await self._send_subscribe(ws, subscription)
                    while True:
                        message = await ws.receive()
                        self._last_received = anyio.current_time()
                        await self._dispatch(message)
                        answered = answered or (not self._pending and bool(self.subscriptions))
                except WebSocketClosed as closed:
                    code = closed.code
                except _Gap:
                    code = _GAP
                    await ws.aclose(1000)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    code = 1006
                finally:
                    group.cancel_scope.cancel()
        finally:
            self._ws = None
            if self.error is None and not self._closing:
                self._connected = anyio.Event()
            self._unanswered = list(self._pending.values())
        lasted = anyio.current_time() - opened >= STABLE_SESSION
        return code, answered or self.delivered > delivered or lasted

    async def _keepalive(self, ws: WebSocket) -> None:
        while True:
            await anyio.sleep(min(self.ping_interval, self.dead_after / 2))
            if anyio.current_time() - self._last_received > self.dead_after:
                log.info("nothing from %s for %s s: reconnecting", self.url, self.dead_after)
                await ws.aclose(1001)
                return
            try:
                await ws.ping()
            except WebSocketClosed:
                return

    # ---- frames -----------------------------------------------------------------------

    def _encode(self, frame: dict[str, Any]) -> str | bytes:
        if self.encoding == "json":
            return orjson.dumps(frame).decode()
        return msgpack.packb(frame)

    async def _dispatch(self, message: str | bytes) -> None:
        try:
            if self.encoding == "json":
                decoded = orjson.loads(message)
            else:
                raw = message if isinstance(message, bytes) else message.encode()
                decoded = msgpack.unpackb(raw)
        except ValueError as error:  # msgpack's and orjson's decode errors are ValueErrors
            log.warning("a frame from %s that does not decode: %s", self.url, error)
            return
        for frame in decoded if isinstance(decoded, list) else [decoded]:
            if not isinstance(frame, dict):
                continue
            if "action" in frame:
                subscription = self.subscriptions.get(frame.get("channel", ""))
                if subscription is None or not subscription.active:
                    continue  # a late event of a channel left behind
                if subscription._pending_id is not None:
                    subscription._buffer.append(frame)
                else:
                    await self._deliver(subscription, frame)
            elif frame.get("type") == "subscribed":
                subscription = self._answer_to(frame)
                if subscription is not None and subscription.active:
                    await self._subscribed(subscription, frame)
            elif frame.get("type") == "error":
                subscription = self._answer_to(frame)
                if subscription is not None:
                    self.subscriptions.pop(subscription.channel, None)
                    subscription._end(
                        SubscriptionError(
                            subscription.channel,
                            str(frame.get("code")),
                            str(frame.get("detail", "")),
                        )
                    )
                else:
                    log.warning("error frame from %s: %s", self.url, frame)

    def _answer_to(self, frame: dict[str, Any]) -> Subscription | None:
        frame_id = frame.get("id")
        return self._pending.pop(frame_id, None) if isinstance(frame_id, int) else None

    async def _subscribed(self, subscription: Subscription, frame: dict[str, Any]) -> None:
        subscription._pending_id = None
        head = frame.get("seq")
        if not isinstance(head, int):
            log.warning("a subscribed answer without a seq: %s", frame)
            head = subscription.seq or 0
        epoch = frame.get("epoch")
        asked = subscription._asked_since
        reset: Reset | None = None
        if not (frame.get("resumed") and subscription._sent_since):
            if asked is not None:
                reset = Reset(subscription.channel, asked, head, epoch, subscription.epoch)
            subscription.seq = head
        subscription.epoch = epoch
        subscription._answered.set()
        if reset is not None:
            subscription.resets += 1
            if subscription.on_reset is not None:
                result = subscription.on_reset(reset)
                if inspect.isawaitable(result):
                    await result
        buffered, subscription._buffer = subscription._buffer, []
        for event in sorted(buffered, key=lambda e: int(e.get("seq", 0))):
            await self._deliver(subscription, event)

    async def _deliver(self, subscription: Subscription, event: Event) -> None:
        seq = event.get("seq")
        if not isinstance(seq, int):
            return
        if subscription.seq is not None:
            if seq <= subscription.seq:
                return  # already delivered
            if seq != subscription.seq + 1:
                log.warning(
                    "%s: event %s after %s; resuming", subscription.channel, seq, subscription.seq
                )
                raise _Gap
        subscription.seq = seq
        self.delivered += 1
        if subscription.on_event is not None:
            result = subscription.on_event(event)
            if inspect.isawaitable(result):
                await result
        elif subscription._send is not None:
            subscription._send.send_nowait(event)


class _Gap(Exception):
    pass


def _ws_url(url: str) -> str:
    """``http(s)://host:port`` (the API's base URL) becomes ``ws(s)://host:port/ws``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.scheme in ("ws", "wss") else (parts.path.rstrip("/") + "/ws")
    return urlunsplit((scheme, parts.netloc, path or "/ws", parts.query, ""))


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
