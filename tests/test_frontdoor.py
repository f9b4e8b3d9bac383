"""The front door: one port for HTTP and WebSocket sessions (direct path).

Raw sockets on purpose: these are the byte-level cases a library client hides — a
plain GET on /ws, an upgrade on a reused connection, pings, a silent or stuck peer.
"""

from __future__ import annotations

import socket
from typing import Any

import orjson
import pytest
import trio
import trio.testing
import wsproto
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from gateway import failures, frontdoor
from gateway.deadlines import Deadlines
from gateway.wsconn import WsLimits
from tests.conftest import ADMIN_TOKEN, Server, World, build_world, start_server
from tests.wsclient import ws_connect


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


async def read_http_response(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, "connection closed before a response"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += await stream.receive_some(65536)
    return int(lines[0].split()[1]), headers, body


async def test_a_plain_get_on_ws_is_400_with_a_json_error(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_http_response(stream)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["code"] == "invalid"


async def test_an_upgrade_after_other_requests_on_one_connection_is_a_session(
    server: Server,
) -> None:
    """The HTTP server hands the connection to the WebSocket code (tests/test_ws_reuse.py
    has the rest: both transports, refusals, caps)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_http_response(stream)
    assert (status, orjson.loads(body)) == (200, {"status": "ok"})
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="x", target=f"/ws?token={ADMIN_TOKEN}")))
    status, _, _ = await read_http_response(stream)
    assert status == 101


async def test_paths_that_only_start_with_ws_are_http(server: Server) -> None:
    async with server.client(ADMIN_TOKEN) as client:
        assert (await client.get("/wsx")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200


async def test_a_request_head_split_across_packets_is_still_a_session(
    server: Server,
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = ws.send(Request(host="x", target=f"/ws?token={ADMIN_TOKEN}"))
    for piece in (request[:2], request[2:6], request[6:]):  # "GE", "T /w", "s?token..."
        await stream.send_all(piece)
        await trio.sleep(0.02)  # let each piece arrive on its own
    assert any(isinstance(e, AcceptConnection) for e in await _events(stream, ws))


async def _events(stream: trio.SocketStream, ws: wsproto.WSConnection) -> list[Any]:
    data = await stream.receive_some(65536)
    if not data:
        return [None]
    ws.receive_data(data)
    return list(ws.events())


async def _open_raw(port: int, rcvbuf: int | None = None) -> tuple[Any, Any]:
    sock = trio.socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="x", target=f"/ws?token={ADMIN_TOKEN}")))
    with trio.fail_after(10):
        while not any(isinstance(e, AcceptConnection) for e in await _events(stream, ws)):
            pass
    return stream, ws


async def test_the_server_pings_and_drops_a_peer_that_stays_silent(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Contract: pings every 25 s, a peer silent for 60 s is closed — here scaled down
    to 0.2 s and 1 s (real time: the kernel's sockets do not follow a MockClock)."""
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, ws_limits=WsLimits(ping_interval=0.2, read_timeout=1.0))
    started = trio.current_time()  # before the server last hears from the silent peer
    silent, silent_ws = await _open_raw(port_of(server))
    answering, answering_ws = await _open_raw(port_of(server))
    pings = 0

    async def answer_pings() -> None:
        while True:
            for event in await _events(answering, answering_ws):
                if isinstance(event, Ping):
                    await answering.send_all(answering_ws.send(event.response()))

    async with trio.open_nursery() as inner:
        inner.start_soon(answer_pings)
        with trio.fail_after(10):
            ended = False
            while not ended:
                for event in await _events(silent, silent_ws):
                    if isinstance(event, Ping):
                        pings += 1
                    ended = ended or event is None or isinstance(event, CloseConnection)
        silent_for = trio.current_time() - started
        inner.cancel_scope.cancel()
    # the peer that answered pings is still served after the silent one was dropped
    frame = orjson.dumps({"type": "ping", "id": 7}).decode()
    await answering.send_all(answering_ws.send(TextMessage(data=frame)))
    with trio.fail_after(10):
        texts: list[str] = []
        while not texts:
            texts = [
                e.data for e in await _events(answering, answering_ws) if isinstance(e, TextMessage)
            ]
    assert orjson.loads(texts[0]) == {"type": "pong", "id": 7}
    assert pings >= 3
    assert 1.0 <= silent_for < 5.0


async def test_a_peer_that_takes_no_bytes_is_dropped_after_the_write_timeout(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its queue never overflows (so no 4008), yet it cannot pin a session forever."""
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, ws_limits=WsLimits(write_timeout=1.0))
    world: World = await build_world(server)
    async with world.org_client as client:
        response = await client.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
        )
        chat_id = response.json()["id"]
        channel = world.path(f"/rooms/{world.room['id']}/chats/{chat_id}/messages")
        stuck, stuck_ws = await _open_raw(port_of(server), rcvbuf=4096)
        frame = orjson.dumps({"type": "subscribe", "id": 1, "channel": channel}).decode()
        await stuck.send_all(stuck_ws.send(TextMessage(data=frame)))
        async with ws_connect(server.base_url, ADMIN_TOKEN) as watcher:
            await watcher.subscribe(channel)
            for _ in range(100):  # ~150 KB: far more than the kernel holds for it
                response = await client.post(
                    world.path(f"/chats/{chat_id}/messages"),
                    json={"sender_id": world.users[0]["id"], "message": "x" * 1500},
                )
                assert response.status_code == 201
    async with server.client() as anonymous:
        with trio.fail_after(10):
            while "chat_engine_ws_sessions 0.0" not in (await anonymous.get("/metrics")).text:
                await trio.sleep(0.05)
    closes = []
    with trio.fail_after(10):
        while True:
            events = await _events(stuck, stuck_ws)
            closes += [e.code for e in events if isinstance(e, CloseConnection)]
            if None in events:
                break
    assert closes == []  # dropped, not closed as a slow consumer


async def test_with_back_to_back_write_passes_events_still_arrive_in_order(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--flush-interval 0: the flusher runs a pass as soon as anything is ready."""
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, "--flush-interval", "0")
    world: World = await build_world(server)
    async with world.org_client as client:
        response = await client.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
        )
        chat_id = response.json()["id"]
        channel = world.path(f"/rooms/{world.room['id']}/chats/{chat_id}/messages")
        async with ws_connect(server.base_url, ADMIN_TOKEN) as watcher:
            await watcher.subscribe(channel)
            for number in range(30):
                response = await client.post(
                    world.path(f"/chats/{chat_id}/messages"),
                    json={"sender_id": world.users[0]["id"], "message": f"m{number}"},
                )
                assert response.status_code == 201
            events = [await watcher.until(lambda f: "action" in f) for _ in range(30)]
    assert [e["resource"]["message"] for e in events] == [f"m{n}" for n in range(30)]
    assert [e["seq"] for e in events] == list(range(1, 31))


async def test_a_connection_that_sends_nothing_is_closed_after_the_peek_timeout(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frontdoor, "PEEK_TIMEOUT", 0.5)
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery)
    silent = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    half = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    await half.send_all(b"GET /w")  # could still become an upgrade: waits for more
    with trio.fail_after(10):
        for stream in (silent, half):
            try:  # closed by the server: an end of stream, or a reset (unread bytes)
                assert await stream.receive_some(100) == b""
            except trio.BrokenResourceError:
                pass
    await silent.aclose()
    await half.aclose()


async def test_deadlines_cancel_late_scopes_only(autojump_clock: trio.testing.MockClock) -> None:
    deadlines = Deadlines(resolution=0.25)
    ended: dict[str, float] = {}

    async def wait(name: str, seconds: float, clear_after: float | None = None) -> None:
        with trio.CancelScope() as scope:
            deadlines.set(scope, seconds)
            if clear_after is not None:
                await trio.sleep(clear_after)
                deadlines.clear(scope)
            await trio.sleep(10)
        ended[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadlines.run)
        nursery.start_soon(wait, "five", 5.0)
        nursery.start_soon(wait, "one", 1.0)
        nursery.start_soon(wait, "cleared", 2.0, 1.0)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert 5.0 <= ended["five"] <= 5.25 and 1.0 <= ended["one"] <= 1.25
    assert ended["cleared"] == 11.0  # never cancelled: 1 s, then its full 10 s
    assert len(deadlines) == 0


async def test_a_bug_while_classifying_a_connection_closes_only_it(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The front door's exception boundary: a failure in one connection (here an
    injected bug in the peek) is logged and counted, and ends that connection only."""
    real_peek = frontdoor._peek_kind

    async def buggy_peek(conn: socket.socket) -> str:
        kind = await real_peek(conn)
        if conn.recv(4, socket.MSG_PEEK) == b"BOOM":
            raise RuntimeError("a bug in the peek")
        return kind

    monkeypatch.setattr(frontdoor, "_peek_kind", buggy_peek)
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery)
    before = failures.connection_errors["http"]
    doomed = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    await doomed.send_all(b"BOOM /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(10):
        try:  # closed, no answer: an end of stream, or a reset (its bytes unread)
            assert await doomed.receive_some(100) == b""
        except trio.BrokenResourceError:
            pass
    assert failures.connection_errors["http"] == before + 1
    [line] = [r for r in caplog.records if r.name == "chat_engine.connection"]
    assert "a bug in the peek" in line.fields["error"]  # type: ignore[attr-defined]
    async with server.client() as client:
        assert (await client.get("/healthz")).status_code == 200
