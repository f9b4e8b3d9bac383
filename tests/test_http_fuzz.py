"""Generated request byte streams against the HTTP/1.1 edge, over real sockets.

Each example is a byte stream: one to three requests (valid, or with odd framing:
lengths written oddly, chunk sizes h11 refuses, duplicate or missing ``Host``),
pipelined, then perhaps mutated (a byte changed, inserted or removed, a slice doubled)
or cut short. It is sent, then the client's half of the connection is closed, to:

- the built-in server (``gateway.http1.Http1Server``, the real class) on a port of
  its own, with a handler that records what it was given: the requests it saw
  (method, target, body) must be exactly those a server-side ``h11.Connection``
  produces from the same bytes (the differential: both transports of the engine parse
  with h11, so they must frame alike), and what it wrote back must parse as HTTP;
- a real ``chat-engine serve`` process: every answer must be a well-formed HTTP
  response (read with a client-side ``h11.Connection``) with a JSON body (or none,
  where HTTP has none), or the connection must close; after every example a fresh
  connection still gets ``/healthz``, and the process is still running.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import h11
import orjson
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.server import ServerProcess, start_server
from gateway.http1 import MAX_HEAD, Http1Server, split_target
from gateway.web import Request, Response

Seen = tuple[bytes, bytes, bytes]  # method, decoded path + "?" + query, body

# --- the echo server: the real Http1Server, in a thread with its own trio loop ----------


class EchoServer:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.port = 0
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _handle(self, request: Request) -> Response:
        target = request.path.encode("utf-8", "surrogateescape")
        self.seen.append(
            (request.method.encode(), target + b"?" + request.query_string, request.body)
        )
        return Response(orjson.dumps({"ok": True}), 200)

    async def _main(self) -> None:
        server = Http1Server(
            self._handle, keep_alive_timeout=5, head_timeout=5, body_timeout=5, max_body=1 << 20
        )
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        with trio.CancelScope() as scope:
            self._scope = scope
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.deadlines.run)
                while True:
                    await trio.lowlevel.wait_readable(listener)
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    nursery.start_soon(server.serve_connection, conn)
        listener.close()

    def __enter__(self) -> EchoServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None and self._scope is not None
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture(scope="module")
def engine_process() -> Iterator[ServerProcess]:
    server = start_server("--in-memory")
    try:
        yield server
    finally:
        server.stop()


# --- talking to a server ----------------------------------------------------------------


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data``, end our half, read until the server closes (a reset counts as a
    close: what arrived before it is kept)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server refused and closed before taking it all
            pass
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def parse_responses(
    data: bytes, methods: list[bytes]
) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """The responses in ``data``, read as a client that sent ``methods`` in turn; h11
    raises if any byte of it is not HTTP, and trailing bytes fail the assert."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    client.receive_data(b"")
    answers = []
    for method in methods:
        if client.trailing_data == (b"", True):  # the server closed: nothing more
            return answers
        client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            if status == 0 and client.trailing_data == (b"", True):
                return answers  # closed after at most a 100 Continue: no answer to this one
            event = client.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # the server closed: no answer to this one
                assert event is h11.ConnectionClosed, event
                return answers
        answers.append((status, headers, body))
        if client.their_state is not h11.DONE or client.our_state is not h11.DONE:
            break
        client.start_next_cycle()
    assert client.trailing_data[0] == b"", "bytes after the last response"
    return answers


def reference(data: bytes) -> tuple[list[Seen], bytes | None]:
    """What a server-side h11 connection makes of ``data`` (then the end of the
    stream): the complete requests, in order, and the method of a request refused
    or cut short after its head (None if none was)."""
    server = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    server.receive_data(data)
    server.receive_data(b"")
    seen: list[Seen] = []
    current: list[Any] | None = None
    while True:
        try:
            event = server.next_event()
        except h11.RemoteProtocolError:
            return seen, current[0] if current else None
        if isinstance(event, h11.Request):
            current = [event.method, event.target, b""]
            if refused_on_top(event):
                return seen, event.method
        elif isinstance(event, h11.Data):
            assert current is not None
            current[2] += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert current is not None
            path, query = split_target(current[1])  # as the handler sees it: decoded
            seen.append(
                (current[0], path.encode("utf-8", "surrogateescape") + b"?" + query, current[2])
            )
            current = None
            server.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            server.send(h11.EndOfMessage())
            if server.our_state is not h11.DONE:
                return seen, None
            server.start_next_cycle()
        else:  # the end of the stream, between requests
            return seen, None


def refused_on_top(event: h11.Request) -> bool:
    """What the built-in server refuses although h11 takes it (its docstring says
    why): another HTTP version, both framings at once, a target it cannot read."""
    names = {name for name, _ in event.headers}
    if event.http_version not in (b"1.0", b"1.1"):
        return True
    if b"content-length" in names and b"transfer-encoding" in names:
        return True
    try:
        split_target(event.target)
    except Exception:
        return True
    return False


# --- the byte streams -------------------------------------------------------------------

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS"]
TARGETS = [b"/healthz", b"/readyz", b"/nope", b"/api/v5/orgs", b"/healthz?x=1&y", b"*", b"/%41"]
EXTRA_HEADERS = [
    b"Accept: */*",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Expect: 100-continue",
    b"X-Odd:  padded\t",
    b"Content-Type: application/json",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: identity",
    b"Content-Length: 3",
]
CHUNK_SIZES = [b"%x", b"%X", b"0%x", b"%x;ext=1", b"%x ", b"0x%x", b"1_%x", b"-%x", b" %x"]
LENGTHS = [b"%d", b"0%d", b"+%d", b" %d", b"%d,%d", b"%d, %d", b"0x%d", b"9" * 30]


@st.composite
def one_request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2"]))
    hosts = draw(st.sampled_from([1, 1, 1, 1, 0, 2]))
    headers = [b"Host: x"] * hosts
    headers += draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=2))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["none", "length", "length", "chunked", "chunked"]))
    payload = b""
    if framing == "length":
        form = draw(st.sampled_from(LENGTHS))
        n = len(body) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        value = form % ((max(n, 0),) * form.count(b"%")) if b"%" in form else form
        headers.append(b"Content-Length: " + value)
        payload = body
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        pieces = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=3))
        for piece in pieces:
            form = draw(st.sampled_from(CHUNK_SIZES[:4] * 3 + CHUNK_SIZES[4:]))
            payload += form % len(piece) + b"\r\n" + piece + b"\r\n"
        payload += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: t\r\n"])) + b"\r\n"
    head = b"%s %s %s\r\n" % (method, target, version)
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + payload


@st.composite
def byte_stream(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(one_request(), min_size=1, max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "double", "cut"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        byte = draw(st.sampled_from([b"\x00", b"\n", b"\r", b" ", b":", b"\t", b"\x7f", b"\xff"]))
        if kind == "replace":
            data = data[:at] + byte + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + byte + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)) :]
        elif kind == "double":
            data = data[:at] + data[at : at + 16] + data[at:]
        else:
            data = data[:at]
    return data


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=byte_stream())
@example(  # a 100 Continue, then the stream ends before the body: closed, no answer
    data=b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
)
def test_generated_streams_are_framed_as_h11_does_and_answered_in_http(
    echo: EchoServer, engine_process: ServerProcess, data: bytes
) -> None:
    expected, cut_method = reference(data)
    methods = [method for method, _, _ in expected] + [cut_method or b"GET"]

    # (a) the built-in server saw exactly the requests h11 finds in these bytes
    echo.seen.clear()
    answer = exchange(echo.port, data)
    assert echo.seen == expected
    answers = parse_responses(answer, methods)
    assert [status for status, _, _ in answers[: len(expected)]] == [200] * len(expected)
    for status, headers, body in answers[len(expected) :]:  # the refusal, if any
        assert 400 <= status < 600 and headers[b"content-type"] == b"application/json"
        assert cut_method == b"HEAD" or orjson.loads(body)["code"]

    # (b) the engine answers each in well-formed HTTP, JSON where there is a body
    answer = exchange(engine_process.port, data)
    answers = parse_responses(answer, methods)
    assert len(answers) >= len(expected)
    for (status, headers, body), method in zip(answers, methods, strict=False):
        if body:
            assert headers[b"content-type"] == b"application/json"
            orjson.loads(body)
        else:  # HEAD never has one; an OPTIONS answer has none to give
            assert method == b"HEAD" or (method == b"OPTIONS" and status == 200), (status, method)

    # (c) and is still there for everyone else
    assert engine_process.process.poll() is None
    health = exchange(
        engine_process.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert parse_responses(health, [b"GET"])[0][:1] == (200,)
