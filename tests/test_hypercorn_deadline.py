"""Connections hypercorn serves (HTTP/2, and HTTP/1.x with ``--http1-server hypercorn``)
are closed once nothing arrived for ``HYPERCORN_READ_TIMEOUT``, even with a stream open:
hypercorn's own idle timer stops while a request is in flight, so a peer that sent the
HTTP/2 preface and a HEADERS frame without END_STREAM used to hold its slot forever."""

from __future__ import annotations

import h2.config
import h2.connection
import pytest
import trio

from gateway import cli
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
