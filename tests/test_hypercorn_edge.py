"""The edge rules on the path hypercorn serves, against real ``chat-engine serve``
processes: what h11 refuses there is answered with the JSON body the built-in server
gives (it was a 400 with an empty body); ``--http2 off`` answers HTTP/2's preface 505
and ignores ``Upgrade: h2c``; and HTTP/2 floods over one connection (rapid reset: HEADERS
then RST_STREAM, stream after stream; PING and SETTINGS frames as fast as they can be
written) do not end the process nor keep a normal client's HTTP/1.1 ``/healthz`` from
being answered. The figures each flood measures are printed (``pytest -s``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import h2.events
import h2.settings
import orjson
import pytest

from bench.server import ServerProcess, start_server
from tests.test_http_edge import (
    ABUSE_SECONDS,
    MIB,
    NORMAL_BOUND,
    PROBES,
    Meter,
    assert_json_refusal,
    closed_by_server,
    healthz_seconds,
    normal_client_while,
    read_answer,
)

H2C_UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
    b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)


@pytest.fixture(scope="module")
def hypercorn_server() -> Iterator[ServerProcess]:
    server = start_server("--in-memory", "--http1-server", "hypercorn")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def default_server() -> Iterator[ServerProcess]:
    """HTTP/1.1 on the built-in server, HTTP/2 on hypercorn: as deployed."""
    server = start_server("--in-memory")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("probe", PROBES)
def test_what_h11_refuses_on_hypercorn_is_a_json_refusal(
    hypercorn_server: ServerProcess, probe: str
) -> None:
    data, status = PROBES[probe]
    assert_json_refusal(hypercorn_server, data, status)


def test_a_5000_digit_content_length_on_hypercorn_says_what_the_built_in_server_says(
    hypercorn_server: ServerProcess,
) -> None:
    data, _ = PROBES["content-length-of-5000-digits"]
    with socket.create_connection(("127.0.0.1", hypercorn_server.port), timeout=10) as sock:
        sock.sendall(data)
        status, _, body = read_answer(sock)
    assert (status, orjson.loads(body)) == (
        400,
        {"code": "invalid", "detail": "Malformed request: bad Content-Length"},
    )


def h2_preface() -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    return client.data_to_send()


@pytest.mark.parametrize("http1_server", ["builtin", "hypercorn"])
def test_with_http2_off_its_preface_is_answered_505_and_h2c_is_ignored(http1_server: str) -> None:
    server = start_server("--in-memory", "--http2", "off", "--http1-server", http1_server)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(h2_preface())
            status, headers, body = read_answer(sock)
            assert status == 505
            assert headers[b"content-type"] == b"application/json"
            assert orjson.loads(body)["code"] == "invalid"
            assert closed_by_server(sock)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(H2C_UPGRADE)
            status, _, body = read_answer(sock)
            assert (status, orjson.loads(body)) == (200, {"status": "ok"})
        assert healthz_seconds(server.port) < NORMAL_BOUND
    finally:
        server.stop()


def test_with_http2_on_hypercorn_takes_the_preface_and_the_h2c_upgrade(
    hypercorn_server: ServerProcess,
) -> None:
    assert h2_get(hypercorn_server.port, "/healthz") == (200, {"status": "ok"})
    with socket.create_connection(("127.0.0.1", hypercorn_server.port), timeout=10) as sock:
        sock.sendall(H2C_UPGRADE)
        assert sock.recv(12) == b"HTTP/1.1 101"


def h2_get(port: int, path: str) -> tuple[int, object]:
    """One GET over HTTP/2 with prior knowledge on a fresh connection."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
        end_stream=True,
    )
    status, body = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(client.data_to_send())
        for _ in range(1000):
            data = sock.recv(65536)
            assert data, "closed before the answer ended"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    return status, orjson.loads(body)
            sock.sendall(client.data_to_send())
    raise AssertionError("no whole answer in 1,000 reads")


def flood(port: int, until: float, batch: Callable[[int], bytes]) -> tuple[int, int]:
    """Write ``batch(n)`` (the n-th) on an HTTP/2 connection until ``until``, reading and
    dropping what comes back; a new connection when the server ends one. Returns the
    batches written and the connections used."""
    batches = connections = 0
    while time.monotonic() < until and batches < 1_000_000:
        connections += 1
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.settimeout(0.2)
        done = threading.Event()

        def drain(sock: socket.socket = sock, done: threading.Event = done) -> None:
            while not done.is_set():
                try:
                    if not sock.recv(1 << 20):
                        return
                except TimeoutError:
                    pass
                except OSError:
                    return

        reader = threading.Thread(target=drain)
        reader.start()
        try:
            sock.sendall(h2_preface())
            while time.monotonic() < until and batches < 1_000_000:
                sock.sendall(batch(batches))
                batches += 1
        except TimeoutError:
            pass
        except OSError:  # the server ended this one (GOAWAY after 1,000 streams): again
            pass
        finally:
            done.set()
            reader.join(10)
            sock.close()
    return batches, connections


def rapid_reset(index: int) -> bytes:
    """100 streams, each opened (HEADERS for GET /healthz) and reset (RST_STREAM)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.data_to_send()  # the preface is sent once per connection, by flood
    first = 1 + 200 * (index % 5000)  # stream ids only grow on a connection
    for stream_id in range(first, first + 200, 2):
        client.send_headers(
            stream_id,
            [(":method", "GET"), (":path", "/healthz"), (":scheme", "http"), (":authority", "x")],
            end_stream=True,
        )
        client.reset_stream(stream_id)
    return client.data_to_send()


def _pings_and_settings() -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.data_to_send()
    for number in range(200):
        client.ping(number.to_bytes(8, "big"))
    for _ in range(20):
        client.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
    return client.data_to_send()


PINGS_AND_SETTINGS = _pings_and_settings()


@pytest.mark.parametrize(
    "name, batch",
    [("rapid reset", rapid_reset), ("pings and settings", lambda _: PINGS_AND_SETTINGS)],
)
def test_an_http2_flood_does_not_hold_the_server(
    default_server: ServerProcess, name: str, batch: Callable[[int], bytes]
) -> None:
    port = default_server.port
    until = time.monotonic() + ABUSE_SECONDS
    written: list[tuple[int, int]] = []
    abuser = threading.Thread(target=lambda: written.append(flood(port, until, batch)))
    meter = Meter(default_server)
    abuser.start()
    latencies = normal_client_while(port, until)
    abuser.join(30)
    batches, connections = written[0]
    grown = meter.report(
        f"HTTP/2 {name} ({batches:,} batches, {connections} connections)", latencies
    )
    assert batches > 10  # the flood was real
    assert default_server.process.poll() is None
    assert max(latencies) < NORMAL_BOUND
    assert grown < 16 * MIB
    assert h2_get(port, "/healthz") == (200, {"status": "ok"})
