"""Connections hypercorn serves (HTTP/2, and HTTP/1.x with ``--http1-server hypercorn``)
are closed once nothing arrived for ``HYPERCORN_READ_TIMEOUT``, even with a stream open:
hypercorn's own idle timer stops while a request is in flight, so a peer that sent the
HTTP/2 preface and a HEADERS frame without END_STREAM used to hold its slot forever.
And the total deadlines that no read moves: a body's (the built-in server's,
``http1.BODY_TIMEOUT``: 408), a head's and a connection's with no stream open (the
keep-alive timeout), on HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import orjson
import pytest
import trio

from gateway import cli, http1, hypercorn_edge
from tests.conftest import ADMIN_TOKEN, start_server

READ_TIMEOUT = 1  # seconds, instead of the 30 served


async def closed_after(stream: trio.SocketStream, bound: float) -> float:
    """Read and drop until the server closes; the seconds that took."""
    started = trio.current_time()
    with trio.fail_after(bound):
        while True:
            try:
                if not await stream.receive_some(65536):
                    break
            except trio.BrokenResourceError:
                break
    return trio.current_time() - started


async def test_an_http2_stream_left_open_is_closed_by_the_read_timeout(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setattr(cli, "HYPERCORN_READ_TIMEOUT", READ_TIMEOUT)
    server = await start_server(nursery)
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [(":method", "POST"), (":path", "/healthz"), (":scheme", "http"), (":authority", host)],
        end_stream=False,  # a body is promised and never sent
    )
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(client.data_to_send())
    elapsed = await closed_after(stream, READ_TIMEOUT + 5)
    assert READ_TIMEOUT - 0.2 <= elapsed <= READ_TIMEOUT + 5
    await stream.aclose()


async def test_a_hypercorn_http1_head_left_incomplete_is_closed(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setattr(cli, "HYPERCORN_READ_TIMEOUT", READ_TIMEOUT)
    server = await start_server(nursery, "--http1-server", "hypercorn")
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    elapsed = await closed_after(stream, READ_TIMEOUT + 5)
    assert READ_TIMEOUT - 0.2 <= elapsed <= READ_TIMEOUT + 5
    await stream.aclose()


# -- total deadlines (not moved by reads) on hypercorn's path ------------------------------

BODY_TIMEOUT = 1.0  # seconds, instead of the built-in server's 30
KEEP_ALIVE = 1.0  # seconds, instead of 5
TRICKLE = 0.2  # seconds between two bytes: far inside the read timeout


async def trickled_until_closed(stream: trio.SocketStream, piece: bytes, bound: float) -> bytes:
    """Send ``piece`` every TRICKLE seconds until the server closes; what it sent."""
    received = bytearray()
    with trio.fail_after(bound):
        async with trio.open_nursery() as nursery:

            async def trickle() -> None:
                for _ in range(int(bound / TRICKLE)):
                    try:
                        await stream.send_all(piece)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    await trio.sleep(TRICKLE)

            nursery.start_soon(trickle)
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                received += data
            nursery.cancel_scope.cancel()
    return bytes(received)


async def test_a_hypercorn_http1_body_sent_a_byte_at_a_time_gets_408_at_the_body_deadline(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setattr(http1, "BODY_TIMEOUT", BODY_TIMEOUT)
    server = await start_server(nursery, "--http1-server", "hypercorn")
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    started = trio.current_time()
    received = await trickled_until_closed(stream, b"x", BODY_TIMEOUT + 10)
    elapsed = trio.current_time() - started
    assert BODY_TIMEOUT - 0.2 <= elapsed <= BODY_TIMEOUT + 10
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"content-type: application/json" in head
    assert orjson.loads(body) == {
        "code": "invalid",
        "detail": f"The body did not arrive within {BODY_TIMEOUT:g} s.",
    }
    await stream.aclose()


async def test_an_http2_body_sent_a_byte_at_a_time_gets_408_at_the_body_deadline(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setattr(http1, "BODY_TIMEOUT", BODY_TIMEOUT)
    server = await start_server(nursery)
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [
            (":method", "POST"),
            (":path", "/api/v5/orgs"),
            (":scheme", "http"),
            (":authority", host),
            ("content-length", "1000"),
        ],
    )
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(client.data_to_send())
    started = trio.current_time()
    status, body = None, b""
    with trio.fail_after(BODY_TIMEOUT + 10):
        for _ in range(int((BODY_TIMEOUT + 10) / TRICKLE)):
            client.send_data(1, b"x")
            await stream.send_all(client.data_to_send())
            with trio.move_on_after(TRICKLE):
                data = await stream.receive_some(65536)
                assert data, "closed without answering the stream"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                    elif isinstance(event, h2.events.StreamEnded):
                        break
                else:
                    continue
                break
    elapsed = trio.current_time() - started
    assert BODY_TIMEOUT - 0.2 <= elapsed <= BODY_TIMEOUT + 10
    assert status == b"408"
    assert orjson.loads(body)["code"] == "invalid"
    await stream.aclose()


async def test_a_hypercorn_http1_head_sent_a_byte_at_a_time_is_closed_at_the_keep_alive(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hypercorn's keep-alive timer runs until a whole head is parsed: a total deadline
    on the head, which reads do not move."""
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setattr(hypercorn_edge.EdgeConfig, "keep_alive_timeout", KEEP_ALIVE)
    server = await start_server(nursery, "--http1-server", "hypercorn")
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"GET /healthz HTTP/1.1\r\n")
    started = trio.current_time()
    received = await trickled_until_closed(stream, b"X", KEEP_ALIVE + 10)
    elapsed = trio.current_time() - started
    assert received == b""
    assert KEEP_ALIVE - 0.3 <= elapsed <= KEEP_ALIVE + 10
    await stream.aclose()


async def test_an_http2_connection_with_no_stream_is_closed_at_the_keep_alive_pings_or_not(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its preface was read, hypercorn's keep-alive timer stopped and nothing
    restarted it before a stream ended: a peer that sent PINGs inside the read timeout
    held its connection for ever (gateway/hypercorn_edge.py)."""
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setattr(hypercorn_edge.EdgeConfig, "keep_alive_timeout", KEEP_ALIVE)
    server = await start_server(nursery)
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(client.data_to_send())
    client.ping(b"12345678")
    started = trio.current_time()
    await trickled_until_closed(stream, client.data_to_send(), KEEP_ALIVE + 10)
    elapsed = trio.current_time() - started
    assert KEEP_ALIVE - 0.3 <= elapsed <= KEEP_ALIVE + 10
    await stream.aclose()
