"""WebSocket sessions at the edge: bursts answered frame by frame, 1008 after the
queued answers, 4001 for a token that stops working, one session's failure closing it
alone, and random or hostile frames, or upgrade heads with random header bytes, never
touching another session.

A real server, reached over TCP; hostile peers write raw frames (tests/rawws.py).
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import msgpack
import orjson
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from engine.realtime import protocol
from gateway import failures
from gateway.auth import Principal
from gateway.ws import QueueBudget, Session
from gateway.wsconn import WsLimits
from tests.conftest import ADMIN_TOKEN, World, build_world, start_server
from tests.rawws import (
    DROPPED,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    frame,
    open_raw,
)
from tests.wsclient import WsClient, ws_connect


def port_of(world: World) -> int:
    return int(world.server.base_url.rsplit(":", 1)[1])


def answers(messages: list[str | bytes]) -> list[dict[str, Any]]:
    """Every server object in these text frames (a frame is an object or an array)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        assert isinstance(message, str)
        decoded = orjson.loads(message)
        out += decoded if isinstance(decoded, list) else [decoded]
    return out


def text(obj: Any) -> bytes:
    return frame(OP_TEXT, orjson.dumps(obj))


async def test_each_invalid_frame_of_a_burst_is_answered_before_the_1008(world: World) -> None:
    peer = await open_raw(port_of(world), world.users[0]["token"])
    burst = b"".join(text({"type": "dance", "id": number}) for number in range(1, 26))
    await peer.send(burst)
    assert await peer.read_until_closed(10) == 1008
    got = answers(peer.messages)
    assert [(a["type"], a["code"]) for a in got] == [("error", "bad_frame")] * 21
    assert [a["id"] for a in got] == list(range(1, 22))  # the 21st closes; the rest: nothing
    await peer.aclose()


async def test_a_close_without_a_code_is_answered_without_one(world: World) -> None:
    """docs/protocol.md's 1005 row: an empty close frame is answered with an empty one
    (a WebSocket API reports 1005), and a close with a code with that code."""
    peer = await open_raw(port_of(world), world.users[0]["token"])
    await peer.send(frame(OP_CLOSE))
    assert await peer.read_until_closed(10) == protocol.NO_CODE
    await peer.aclose()
    peer = await open_raw(port_of(world), world.users[0]["token"])
    await peer.send(frame(OP_CLOSE, (4321).to_bytes(2, "big")))
    assert await peer.read_until_closed(10) == 4321
    await peer.aclose()


async def test_a_ping_after_the_servers_close_is_not_an_error(world: World) -> None:
    """Between its close frame and the peer's, the server reads on; a ping then gets no
    pong (none may follow a close frame) rather than ending the session in an error."""
    before = failures.connection_errors["ws"]
    peer = await open_raw(port_of(world), world.users[0]["token"])
    await peer.send(b"".join(text({"type": "dance", "id": number}) for number in range(1, 26)))
    assert await peer.read_until_closed(10) == 1008
    await peer.send(frame(OP_PING, b"still there?"))
    await peer.send(frame(OP_CLOSE, (1000).to_bytes(2, "big")))
    assert await peer.read_until_closed(10) == DROPPED
    await peer.aclose()
    assert failures.connection_errors["ws"] == before


async def test_every_frame_of_a_large_subscribe_burst_gets_its_answer(world: World) -> None:
    """10,000 subscribes sent at once: each answered, in order, and no 4008, for a
    client that reads its answers."""
    ada = world.users[0]
    channel = world.path(f"/users/{ada['id']}/chats")
    peer = await open_raw(port_of(world), ada["token"])
    count = 10_000
    burst = b"".join(
        text({"type": "subscribe", "id": number, "channel": channel})
        for number in range(1, count + 1)
    )
    got: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.send, burst)
        with trio.fail_after(60):
            while len(got) < count:
                code = await peer.read_until_closed(0.2)
                assert code is None, f"closed with {code}"
                got += answers(peer.messages)
                peer.messages.clear()
    assert [(a["type"], a["id"]) for a in got] == [("subscribed", n) for n in range(1, count + 1)]
    await peer.aclose()


async def test_a_revoked_visitor_token_closes_its_sessions_with_4001(world: World) -> None:
    """Re-keying a visitor (its org registers its id again) ends the sessions opened
    with the old token; other sessions, and the new token, carry on."""
    visitor = world.visitor
    base = world.server.base_url
    own = f"/api/v5/client/visitors/{visitor['id']}/chats"
    async with world.org_client as org:
        other = (await org.post(world.path("/visitors"), json={})).json()
        async with (
            ws_connect(base, visitor["token"]) as first,
            ws_connect(base, visitor["token"], query_token=True) as second,
            ws_connect(base, other["token"]) as bystander,
        ):
            assert (await first.subscribe(own))["type"] == "subscribed"
            assert (await second.subscribe(own))["type"] == "subscribed"
            rekeyed = await org.post(world.path("/visitors"), json={"id": visitor["id"]})
            assert rekeyed.status_code == 200
            for session in (first, second):
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
                    while True:
                        await session.receive_frame()
                assert closed.value.reason.code == 4001
            await bystander.send({"type": "ping", "id": 1})
            assert (await bystander.until(lambda f: f.get("type") == "pong"))["id"] == 1
        async with world.server.client(visitor["token"]) as old:
            assert (await old.get(own)).status_code == 401
        async with ws_connect(base, rekeyed.json()["token"]) as renewed:
            assert (await renewed.subscribe(own))["type"] == "subscribed"
        async with world.server.client() as anonymous:
            metrics = (await anonymous.get("/metrics")).text
    assert "chat_engine_revoked_token_closes_total 2.0" in metrics


async def closed_with(session: WsClient) -> int:
    with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
        while True:
            await session.receive_frame()
    return closed.value.reason.code


async def test_an_unexpected_error_ends_only_its_own_session_with_1011(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug hit by one session (injected here: in its handshake, in its reader, and
    while the flusher writes it) is logged, counted, and closes that session only (with
    1011 once upgraded): the flusher, the other sessions and the server carry on."""
    import gateway.ws as ws_module

    trap = world.path("/users/trap/chats")
    real_refusal = ws_module.channels.subscribe_refusal
    real_pack = ws_module.protocol.batch
    real_principal = ws_module.principal_for_token

    def refusal(state: Any, kind: str, ident: str, channel: str, *rest: Any) -> Any:
        if channel == trap:
            raise RuntimeError("injected: a bug in the reader's path")
        return real_refusal(state, kind, ident, channel, *rest)

    def pack(items: list[bytes], encoding: str) -> bytes:
        if any(b"flusher-trap" in item for item in items):
            raise RuntimeError("injected: a bug in the flusher's path")
        return real_pack(items, encoding)

    def principal(state: Any, token: str, admin_hash: str, **options: Any) -> Any:
        if token == "handshake-trap":
            raise RuntimeError("injected: a bug in the handshake's path")
        return real_principal(state, token, admin_hash, **options)

    monkeypatch.setattr(ws_module.channels, "subscribe_refusal", refusal)
    monkeypatch.setattr(ws_module, "principal_for_token", principal)
    monkeypatch.setattr(ws_module.protocol, "batch", pack)
    before = failures.connection_errors["ws"]
    base = world.server.base_url
    token = world.users[0]["token"]
    async with (
        ws_connect(base, token) as bystander,
        ws_connect(base, token) as reader_victim,
        ws_connect(base, token) as flusher_victim,
    ):
        await reader_victim.send({"type": "subscribe", "id": 1, "channel": trap})
        assert await closed_with(reader_victim) == 1011
        await flusher_victim.send({"type": "ping", "id": "flusher-trap"})
        assert await closed_with(flusher_victim) == 1011
        with pytest.raises(ConnectionError):
            await open_raw(port_of(world), "handshake-trap")  # closed with no answer
        for number in range(3):
            await bystander.send({"type": "ping", "id": number})
            assert (await bystander.until(lambda f: f.get("type") == "pong"))["id"] == number
    assert failures.connection_errors["ws"] == before + 3
    async with world.server.client() as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        metrics = (await anonymous.get("/metrics")).text
    assert f'chat_engine_connection_errors_total{{kind="ws"}} {before + 3}.0' in metrics


# -- random and hostile frames --------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
client_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["ping", "subscribe", "unsubscribe", "pong", "x"]) | st.text(),
        "id": json_values,
        "channel": st.sampled_from(["/api/v5/orgs/x/rooms/y/chats", "/nope", ""]) | json_values,
        "since": json_values,
        "epoch": json_values,
    },
)


msgpack_objects = client_objects | st.dictionaries(
    st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=4), json_values, max_size=3
)


@st.composite
def hostile_frames(draw: st.DrawFn, encoding: str) -> bytes:
    """One piece of hostile input: a frame, a fragmented message, a flood, or junk."""
    kind = draw(
        st.sampled_from(["object", "payload", "control", "fragments", "oversized", "flood", "junk"])
    )
    if kind == "object" and encoding == "json":
        return text(draw(client_objects))
    if kind == "object":
        value = draw(msgpack_objects | json_values | st.binary(max_size=20) | st.floats())
        return frame(OP_BINARY, msgpack.packb(value))
    if kind == "payload":
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY, 3, 7, 11, 15]))
        return frame(
            opcode,
            draw(st.binary(max_size=300)),
            rsv=draw(st.sampled_from([0, 0, 0, 1, 4])),
            mask=draw(st.sampled_from([b"\x00\x00\x00\x00", b"\x12\x34\x56\x78", None])),
        )
    if kind == "control":
        opcode = draw(st.sampled_from([OP_PING, OP_PONG, OP_CLOSE]))
        return frame(opcode, draw(st.binary(max_size=130)), fin=draw(st.booleans()))
    if kind == "fragments":
        parts = draw(st.lists(st.binary(max_size=50), min_size=1, max_size=8))
        first = draw(st.sampled_from([OP_TEXT, OP_BINARY, OP_CONTINUATION]))
        out = b""
        for index, part in enumerate(parts):
            opcode = first if index == 0 else draw(st.sampled_from([OP_CONTINUATION] * 3 + [1]))
            out += frame(opcode, part, fin=draw(st.booleans()) or index == len(parts) - 1)
        return out
    if kind == "oversized":
        size = draw(st.sampled_from([64 * 1024 + 1, 70_000, 200_000]))
        pieces = draw(st.integers(1, 4))
        step = size // pieces + 1
        payload = b"x" * size
        chunks = [payload[i : i + step] for i in range(0, size, step)]
        return b"".join(
            frame(OP_TEXT if i == 0 else OP_CONTINUATION, chunk, fin=i == len(chunks) - 1)
            for i, chunk in enumerate(chunks)
        )
    if kind == "flood":
        one = draw(
            st.sampled_from(
                [
                    frame(OP_PING),
                    text({"type": "ping"}),
                    text({"type": "subscribe", "channel": "/nope"}),
                    b"",
                ]
            )
        )
        opener = frame(OP_TEXT, b"{", fin=False) if not one else b""
        return opener + (one or frame(OP_CONTINUATION, fin=False)) * draw(st.integers(1, 3000))
    return draw(st.binary(min_size=1, max_size=200))  # junk, or a truncated frame


HEADER_NAMES = [
    b"Host",
    b"Upgrade",
    b"Connection",
    b"Sec-WebSocket-Key",
    b"Sec-WebSocket-Version",
    b"Sec-WebSocket-Protocol",
    b"Sec-WebSocket-Extensions",
    b"Authorization",
    b"X-Forwarded-For",
    b"Origin",
]
# any byte but CR and LF, so that the head keeps its lines (and ends where it should)
header_bytes = st.binary(max_size=40).map(lambda value: value.translate(None, b"\r\n"))


@st.composite
def hostile_heads(draw: st.DrawFn, token: str, encoding: str) -> bytes:
    """An upgrade head for ``GET /ws`` whose headers may each be kept, dropped, doubled
    or given random bytes (past ASCII too), with a few more headers of random names
    and values."""
    headers = [
        (b"Host", b"127.0.0.1"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Protocol", f"chatengine.v1.{encoding}".encode()),
        (b"Authorization", f"Token {token}".encode()),
    ]
    lines: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        action = draw(st.sampled_from(["keep"] * 4 + ["drop", "double", "random", "append"]))
        if action == "keep":
            lines.append((name, value))
        elif action == "double":
            lines += [(name, value), (name, draw(header_bytes))]
        elif action == "random":
            lines.append((name, draw(header_bytes)))
        elif action == "append":
            lines.append((name, value + b", " + draw(header_bytes)))
    names = st.sampled_from(HEADER_NAMES) | st.binary(min_size=1, max_size=12).map(
        lambda name: name.translate(None, b"\r\n:") or b"X"
    )
    for name, value in draw(st.lists(st.tuples(names, header_bytes), max_size=3)):
        lines.insert(draw(st.integers(0, len(lines))), (name, value))
    return b"GET /ws HTTP/1.1\r\n" + b"".join(b"%s: %s\r\n" % line for line in lines) + b"\r\n"


async def answer_to_head(port: int, head: bytes) -> int:
    """Send ``head`` on a new connection; the status of the server's answer, which must
    come (a refusal's body the JSON error body)."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    async with trio.SocketStream(sock) as stream:
        await stream.send_all(head)
        data = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(1 << 16)
                assert chunk, f"closed with no answer: {data!r}"
                data += chunk
            answer, _, body = data.partition(b"\r\n\r\n")
            status = int(answer.split(b" ", 2)[1])
            if status == 101:
                return status
            length = int(re.search(rb"content-length: (\d+)", answer, re.IGNORECASE)[1])  # type: ignore[index]
            while len(body) < length:
                chunk = await stream.receive_some(1 << 16)
                assert chunk, "closed in the middle of the answer"
                body += chunk
    assert 400 <= status < 500, answer
    assert b"content-type: application/json" in answer.lower()
    assert set(orjson.loads(body)) >= {"code", "detail"}
    return status


class Observer:
    """A session that must not notice anything: it keeps hearing a chat's messages."""

    def __init__(self, world: World, ws: WsClient, chat_id: str, channel: str) -> None:
        self.world = world
        self.ws = ws
        self.chat_id = chat_id
        self.channel = channel
        self.posted = 0

    async def still_served(self) -> None:
        self.posted += 1
        async with self.world.org_client as org:
            response = await org.post(
                self.world.path(f"/chats/{self.chat_id}/messages"),
                json={"sender_id": self.world.users[0]["id"], "message": f"m{self.posted}"},
            )
            assert response.status_code == 201
            event = await self.ws.until(lambda f: f.get("channel") == self.channel, timeout=5)
            assert event["resource"]["message"] == f"m{self.posted}"
            await self.ws.send({"type": "ping", "id": self.posted})
            assert (await self.ws.until(lambda f: f.get("type") == "pong", timeout=5))[
                "id"
            ] == self.posted
            assert (await org.get("/healthz")).status_code == 200


@pytest.mark.parametrize(("encoding", "examples"), [("json", 60), ("msgpack", 30)])
async def test_random_and_hostile_frames_never_touch_another_session(
    world: World, encoding: str, examples: int
) -> None:
    async with world.org_client as org:
        room = world.room["id"]
        chat = await org.post(world.path(f"/rooms/{room}/visitors/{world.visitor['id']}/chats"))
        chat_id = chat.json()["id"]
    channel = world.path(f"/rooms/{room}/chats/{chat_id}/messages")
    port = port_of(world)
    before = failures.connection_errors["ws"]
    async with ws_connect(world.server.base_url, world.org["token"]) as ws:
        assert (await ws.subscribe(channel))["type"] == "subscribed"
        observer = Observer(world, ws, chat_id, channel)
        token = world.users[0]["token"]

        async def case(pieces: list[bytes], chunk: int, head: bytes | None) -> None:
            if head is not None:  # an upgrade head instead: answered, whatever its bytes
                await answer_to_head(port, head)
                await observer.still_served()
                return
            peer = await open_raw(port, token, protocol=f"chatengine.v1.{encoding}")
            data = b"".join(pieces)
            if len(data) > 5000:
                chunk = max(chunk, 4096)  # byte by byte only for short input
            for start in range(0, len(data), chunk):  # split anywhere, frames included
                if not await peer.send(data[start : start + chunk]):
                    break
            code = await peer.read_until_closed(0.3)
            answers_of(peer.messages, encoding)
            await peer.aclose()
            assert code != 1011, "an unexpected error in the session"
            await observer.still_served()

        # Hypothesis drives the cases from a worker thread, each one run in this trio
        # loop (where the server is), so that it can still shrink a failing input.
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(
            st.lists(hostile_frames(encoding), min_size=1, max_size=6),
            st.sampled_from([1, 7, 100, 4096, 1 << 20]),
            st.none() | hostile_heads(token, encoding),
        )
        @example(  # wsproto decodes this header as ASCII
            [frame(OP_PING)],
            1,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: chatengine.v1.json\xff\r\n\r\n",
        )
        def cases(pieces: list[bytes], chunk: int, head: bytes | None) -> None:
            trio.from_thread.run(case, pieces, chunk, head)

        await trio.to_thread.run_sync(cases)
    assert failures.connection_errors["ws"] == before


def answers_of(messages: list[str | bytes], encoding: str) -> None:
    """Every frame the server sent decodes in the session's encoding (text frames of
    JSON, or binary frames of msgpack) as an object or an array of objects."""
    for message in messages:
        if encoding == "json":
            assert isinstance(message, str)
            decoded = orjson.loads(message)
        else:
            assert isinstance(message, bytes)
            decoded = msgpack.unpackb(message)
        items = decoded if isinstance(decoded, list) else [decoded]
        assert all(isinstance(item, dict) for item in items)


async def test_a_message_over_64_kib_in_fragments_closes_with_1009(world: World) -> None:
    peer = await open_raw(port_of(world), world.users[0]["token"])
    piece = b"x" * 40_000
    await peer.send(
        frame(OP_TEXT, piece, fin=False)
        + frame(OP_CONTINUATION, b"", fin=False) * 1000
        + frame(OP_CONTINUATION, piece)
    )
    assert await peer.read_until_closed(10) == 1009
    await peer.aclose()
    async with httpx.AsyncClient(base_url=world.server.base_url) as client:
        assert (await client.get("/healthz")).status_code == 200


# -- bounds ----------------------------------------------------------------------------


def queue_of(budget: QueueBudget, queue_bytes: int = 10_000) -> Session:
    """A session as the router sees it: its queue only (nothing is written here)."""
    principal = Principal("user", "u", "o")
    return Session("json", 100, queue_bytes, budget, principal, lambda _: None, None)  # type: ignore[arg-type]


def test_a_session_queue_is_bounded_in_bytes_and_frames_in_size() -> None:
    budget = QueueBudget(limit=10**9, sessions=1)
    session = queue_of(budget, queue_bytes=5_000)
    for _ in range(4):
        session.push(b"x" * 1_000)
    assert (session.queued_bytes, budget.total, session.overflowed) == (4_000, 4_000, False)
    session.push(b"x" * 1_001)  # would hold 5,001 bytes
    assert session.overflowed and session.depth == 0 and budget.total == 0
    roomy = queue_of(budget, queue_bytes=10**9)
    for _ in range(100):
        roomy.push(b"y" * 1_500)
    frames = []
    while roomy.depth:
        frames.append(roomy.take())
    assert [len(items) for items in frames] == [43, 43, 14]  # 64 KiB a frame at most
    assert budget.total == 0 == roomy.queued_bytes


def test_past_the_budget_only_sessions_holding_more_than_their_share_overflow() -> None:
    budget = QueueBudget(limit=1_000, sessions=4)  # a share: 250 bytes
    big, small = queue_of(budget), queue_of(budget)
    for _ in range(9):
        big.push(b"b" * 100)
    small.push(b"s" * 100)
    assert budget.total == 1_000
    small.push(b"s" * 100)  # over the budget, but small holds less than its share
    assert not small.overflowed and budget.total == 1_100
    big.push(b"b" * 100)  # over the budget, and big holds more than its share: it goes
    assert big.overflowed and budget.total == 200
    big_again = queue_of(budget)
    for _ in range(8):
        big_again.push(b"b" * 100)
    assert not big_again.overflowed  # back under the budget, everyone may grow again


async def test_a_reader_that_never_catches_up_is_dropped_after_the_write_timeout_in_total(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write timeout counts from when the session fell behind: a client reading
    slower than its events arrive is dropped once it has been behind for that long,
    even though each single write makes progress (here a frame of at most 4 KiB takes
    ~0.2 s to go out, well within the timeout of 1.5 s)."""
    import gateway.ws as ws_module

    monkeypatch.setattr(ws_module, "MAX_FRAME_BYTES", 4096)
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, ws_limits=WsLimits(write_timeout=1.5))
    world = await build_world(server)
    async with world.org_client as org:
        room = world.room["id"]
        chat = await org.post(world.path(f"/rooms/{room}/visitors/{world.visitor['id']}/chats"))
        chat_id = chat.json()["id"]
        channel = world.path(f"/rooms/{room}/chats/{chat_id}/messages")
        peer = await open_raw(port_of(world), ADMIN_TOKEN, receive_buffer=4096)
        await peer.send(text({"type": "subscribe", "id": 1, "channel": channel}))
        dropped = trio.Event()

        async def read_slowly() -> None:  # 20 KB/s, while ~40 KB/s of events arrive
            while True:
                await trio.sleep(0.1)
                if not await peer.stream.receive_some(2048):
                    dropped.set()
                    return

        started = trio.current_time()
        async with trio.open_nursery() as readers:
            readers.start_soon(read_slowly)
            with trio.move_on_after(10):
                while not dropped.is_set():
                    response = await org.post(
                        world.path(f"/chats/{chat_id}/messages"),
                        json={"sender_id": world.users[0]["id"], "message": "x" * 1500},
                    )
                    assert response.status_code == 201
                    await trio.sleep(0.04)
            readers.cancel_scope.cancel()
    assert dropped.is_set(), "a client that never caught up was kept for 10 s"
    assert trio.current_time() - started < 8
