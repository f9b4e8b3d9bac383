"""The built-in HTTP/1.1 server (gateway/http1.py), byte by byte over real sockets:
what HTTP clients other than httpx send — pipelined requests, chunked bodies,
``Expect: 100-continue``, HTTP/1.0, HEAD — and what a broken request gets."""

from __future__ import annotations

import logging
import socket

import orjson
import pytest
import trio
import trio.testing

from gateway import failures
from gateway.http1 import Http1Server
from gateway.web import Request, Response
from tests.conftest import ADMIN_TOKEN, Server, start_server


class Conn:
    """A raw connection that reads responses one at a time from a shared buffer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, server: Server) -> Conn:
        port = int(server.base_url.rsplit(":", 1)[1])
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bool:
        chunk = await self.stream.receive_some(65536)
        self.buffer += chunk
        return bool(chunk)

    async def response(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        with trio.fail_after(10):
            while b"\r\n\r\n" not in self.buffer:
                assert await self._more(), "connection closed before a response"
            head_bytes, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            lines = head_bytes.decode("latin-1").split("\r\n")
            headers = {
                name.lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            length = 0 if head else int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                assert await self._more(), "connection closed inside a body"
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), headers, body

    async def closed(self) -> bool:
        """True once the server closed the connection (nothing more to read)."""
        with trio.fail_after(10):
            while True:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    return True
                self.buffer += chunk


AUTH = f"Authorization: Token {ADMIN_TOKEN}\r\n".encode()


def post_org(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        + extra
        + b"\r\n"
        + body
    )


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    conn = await Conn.open(server)
    await conn.send(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        + post_org(b'{"name": "Piped"}')
        + b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert (await conn.response())[0] == 200
    status, _, body = await conn.response()
    assert status == 201 and orjson.loads(body)["name"] == "Piped"
    status, _, body = await conn.response()
    assert (status, orjson.loads(body)) == (200, {"status": "ready"})


async def test_a_chunked_body_is_read_whole(server: Server) -> None:
    conn = await Conn.open(server)
    await conn.send(
        b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b'9\r\n{"name": \r\n'
        + b'8;ext=1\r\n"Chunky"\r\n'
        + b"1\r\n}\r\n0\r\nX-Trailer: ignored\r\n\r\n"
    )
    status, _, body = await conn.response()
    assert status == 201 and orjson.loads(body)["name"] == "Chunky"
    # and the connection goes on
    await conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await conn.response())[0] == 200


async def test_expect_100_continue_gets_a_continue_first(server: Server) -> None:
    conn = await Conn.open(server)
    body = b'{"name": "Patient"}'
    await conn.send(post_org(body, b"Expect: 100-continue\r\n")[: -len(body)])
    assert (await conn.response(head=True))[0] == 100
    await conn.send(body)
    status, _, answer = await conn.response()
    assert status == 201 and orjson.loads(answer)["name"] == "Patient"


async def test_http_1_0_and_connection_close_end_the_connection(server: Server) -> None:
    for request in (
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        conn = await Conn.open(server)
        await conn.send(request)
        status, headers, _ = await conn.response()
        assert status == 200 and headers["connection"] == "close"
        assert await conn.closed()


async def test_head_has_the_length_but_no_body(server: Server) -> None:
    conn = await Conn.open(server)
    await conn.send(
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    status, headers, _ = await conn.response(head=True)
    assert status == 200 and headers["content-length"] == "15"
    status, _, body = await conn.response()  # the next response follows at once
    assert (status, orjson.loads(body)) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\nContent-Length: x1\r\n\r\n", 400),
        (
            b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 431),
        # whole in one write: h11 alone would take it (it bounds incomplete heads only)
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 30_000 + b"\r\n\r\n", 431),
    ],
)
async def test_a_malformed_request_is_refused_with_json_and_closed(
    server: Server, request_bytes: bytes, status: int
) -> None:
    conn = await Conn.open(server)
    await conn.send(request_bytes)
    got, headers, body = await conn.response()
    assert got == status
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["code"] == "invalid"
    assert await conn.closed()


async def test_a_malformed_chunk_is_refused(server: Server) -> None:
    conn = await Conn.open(server)
    await conn.send(
        b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    )
    status, _, body = await conn.response()
    assert status == 400 and orjson.loads(body)["code"] == "invalid"
    assert await conn.closed()


async def test_an_oversized_body_is_413_and_its_bytes_are_not_read_as_a_request(
    server: Server,
) -> None:
    conn = await Conn.open(server)
    body = b'{"name": "' + b"x" * 70_000 + b'"}'
    await conn.send(post_org(body)[: -len(body)] + body[:1000])  # the rest never follows
    status, headers, answer = await conn.response()
    assert status == 413 and orjson.loads(answer)["code"] == "body_too_large"
    assert headers["connection"] == "close"
    assert await conn.closed()


async def test_hypercorn_still_serves_http_1_when_asked(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, "--http1-server", "hypercorn")
    conn = await Conn.open(server)
    await conn.send(post_org(b'{"name": "Old path"}') + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await conn.response()
    assert status == 201 and orjson.loads(body)["name"] == "Old path"
    assert headers["server"].startswith("hypercorn")
    assert (await conn.response())[0] == 200


async def test_http_2_with_prior_knowledge_goes_to_hypercorn(server: Server) -> None:
    conn = await Conn.open(server)
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
    await conn.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings)
    with trio.fail_after(10):
        while len(conn.buffer) < 9:
            assert await conn._more()
    assert conn.buffer[3] == 0x04  # the server's first frame: its SETTINGS


async def test_access_log_has_a_line_per_request(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    caplog.set_level(logging.INFO, logger="chat_engine.access")
    server = await start_server(nursery, "--access-log")
    conn = await Conn.open(server)
    await conn.send(b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n" + post_org(b'{"name": "Log"}'))
    await conn.response()
    await conn.response()
    lines = [r.fields for r in caplog.records if r.name == "chat_engine.access"]  # type: ignore[attr-defined]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("GET", "/healthz", 200),
        ("POST", "/api/v5/orgs", 201),
    ]
    assert lines[0]["query"] == "x=1" and lines[0]["bytes"] == 15
    # a request refused before the app saw it has its line too
    conn = await Conn.open(server)
    await conn.send(b"GARBAGE\r\n\r\n")
    assert (await conn.response())[0] == 400
    refused = [r for r in caplog.records if r.name == "chat_engine.access"][-1]
    assert refused.getMessage() == "refused" and refused.fields["status"] == 400  # type: ignore[attr-defined]


async def echo_app(request: Request) -> Response:
    """A minimal handler: answers 200 with the request body."""
    return Response(request.body, 200, None)


async def serve(server: Http1Server, *socks: socket.socket) -> None:
    """Serve connections until they end, with the server's timeouts running (as the
    front door runs them)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.deadlines.run)
        async with trio.open_nursery() as connections:
            for sock in socks:
                connections.start_soon(server.serve_connection, sock)
        nursery.cancel_scope.cancel()


def socket_pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours, theirs


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Http1Server(echo_app, keep_alive_timeout=5.0)
    ours, theirs = socket_pair()
    theirs.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    with trio.fail_after(60):
        await serve(server, ours)  # answers, then waits for the next request
    assert 5.0 <= trio.current_time() < 6.0
    answer = theirs.recv(1000)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nhi")
    assert theirs.recv(100) == b""  # then closed
    theirs.close()


async def test_a_head_that_stalls_ends_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Http1Server(echo_app, keep_alive_timeout=5.0, head_timeout=30.0)
    ours, theirs = socket_pair()
    theirs.send(b"GET /x HTTP/1.1\r\nHost: x\r\n")  # never finished
    with trio.fail_after(120):
        await serve(server, ours)
    assert 30.0 <= trio.current_time() < 31.0
    assert theirs.recv(100) == b""  # closed without an answer
    theirs.close()


async def test_stopping_closes_idle_connections_at_once_and_answers_with_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = Http1Server(echo_app, keep_alive_timeout=5.0)
    idle, idle_peer = socket_pair()
    busy, busy_peer = socket_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, server, idle, busy)
        await trio.sleep(1.0)  # virtual: both connections are waiting for a request
        busy_peer.send(
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"
        )  # half a request
        await trio.sleep(1.0)
        server.stop()
        busy_peer.send(b"ok")
    assert trio.current_time() < 3.0  # neither waited for the keep-alive timeout
    assert idle_peer.recv(100) == b""
    answer = busy_peer.recv(1000)
    assert b"\r\nconnection: close\r\n" in answer and answer.endswith(b"ok")
    for peer in (idle_peer, busy_peer):
        peer.close()


async def test_a_chunked_body_over_64_kib_is_413(server: Server) -> None:
    conn = await Conn.open(server)
    chunk = b"x" * 16_384
    await conn.send(
        b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\n"
        + AUTH
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"4000\r\n" + chunk + b"\r\n" for _ in range(5))
        + b"0\r\n\r\n"
    )
    status, _, answer = await conn.response()
    assert status == 413 and orjson.loads(answer)["code"] == "body_too_large"


async def test_a_stalled_body_ends_its_connection(autojump_clock: trio.testing.MockClock) -> None:
    """A client that sends a head and part of its body, then nothing: after
    ``head_timeout`` the connection closes without an answer, and the handler never
    saw the request (virtual time)."""
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return Response(b"", 200, None)

    server = Http1Server(handler, head_timeout=30.0)
    ours, theirs = socket_pair()
    theirs.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    with trio.fail_after(120):
        await serve(server, ours)
    assert seen == [] and 30 <= trio.current_time() < 31
    assert theirs.recv(100) == b""  # closed, no answer
    theirs.close()


async def _trickle(sock: socket.socket, data: bytes, every: float) -> None:
    """A slowloris peer: one byte of ``data`` every ``every`` seconds (virtual), until
    the server closes the connection."""
    for byte in data:
        await trio.sleep(every)
        try:
            sock.send(bytes([byte]))
        except OSError:
            return


async def test_a_head_sent_a_byte_at_a_time_is_cut_off_at_its_total_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each byte comes well within the deadline, but the head as a whole does not: the
    deadline runs from its first byte and no read moves it."""
    server = Http1Server(echo_app, keep_alive_timeout=5.0, head_timeout=30.0)
    ours, theirs = socket_pair()
    theirs.send(b"G")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_trickle, theirs, b"ET /x HTTP/1.1\r\nHost: x\r\n" * 10, 3.0)
        with trio.fail_after(120):
            await serve(server, ours)
        nursery.cancel_scope.cancel()
    assert 30.0 <= trio.current_time() < 31.0
    assert _closed_without_answer(theirs)
    theirs.close()


def _closed_without_answer(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:  # closed with the trickled bytes unread
        return True


async def test_a_body_sent_a_byte_at_a_time_is_cut_off_at_its_total_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return Response(b"", 200, None)

    server = Http1Server(handler, body_timeout=30.0)
    ours, theirs = socket_pair()
    theirs.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_trickle, theirs, b"x" * 100, 10.0)  # 1,000 s for the whole
        with trio.fail_after(120):
            await serve(server, ours)
        nursery.cancel_scope.cancel()
    assert seen == [] and 30.0 <= trio.current_time() < 31.0
    assert _closed_without_answer(theirs)
    theirs.close()


async def test_a_bug_in_one_connection_closes_it_is_logged_and_counted_and_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A response the code cannot frame (a bug: its body is not bytes) reaches the
    connection's boundary: that connection closes, one JSON-able log line names its
    peer and request line, the counter moves, and the next connection is served."""

    async def handler(request: Request) -> Response:
        if request.path == "/bug":
            return Response(None, 200)  # type: ignore[arg-type]
        return Response(b"fine", 200, None)

    before = failures.connection_errors["http"]
    server = Http1Server(handler)
    broken, broken_peer = socket_pair()
    healthy, healthy_peer = socket_pair()
    broken_peer.send(b"GET /bug HTTP/1.1\r\nHost: x\r\n\r\n")
    healthy_peer.send(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with trio.fail_after(10):
        await serve(server, broken, healthy)
    assert broken_peer.recv(100) == b""
    assert healthy_peer.recv(1000).endswith(b"\r\n\r\nfine")
    assert failures.connection_errors["http"] == before + 1
    [record] = [r for r in caplog.records if r.name == "chat_engine.connection"]
    assert record.fields["request"] == "GET /bug"  # type: ignore[attr-defined]
    assert record.fields["kind"] == "http" and "TypeError" in record.fields["error"]  # type: ignore[attr-defined]
    for peer in (broken_peer, healthy_peer):
        peer.close()


@pytest.mark.parametrize(("pieces", "status"), [(4096, 200), (4097, 400)])
async def test_a_body_may_come_in_at_most_4096_chunks(pieces: int, status: int) -> None:
    """Each chunk costs h11 an event: a body in one-byte chunks would cost ~10 µs of
    CPU a byte, so the number of pieces is bounded (and 4,096 is plenty)."""
    server = Http1Server(echo_app)
    ours, theirs = socket_pair()
    theirs.setblocking(True)
    request = (
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1\r\nx\r\n" * pieces
        + b"0\r\n\r\n"
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, server, ours)
        await trio.to_thread.run_sync(theirs.sendall, request)
        theirs.shutdown(socket.SHUT_WR)
        answer = await trio.to_thread.run_sync(theirs.recv, 65536)
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    if status == 200:
        assert answer.endswith(b"\r\n\r\n" + b"x" * pieces)
    theirs.close()
