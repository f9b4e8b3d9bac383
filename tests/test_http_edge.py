"""The HTTP edge of a real ``chat-engine serve`` process under hostile input.

Each probe that once broke or confused the server is answered with a JSON refusal and
leaves the process up; each abuse (a pipelining flood, connections up to the cap that
send a byte or half a head, a flood of garbage heads) runs for a bounded time while a
normal client keeps asking ``/healthz`` on fresh connections, and the test asserts
that client's worst latency and the server's memory growth. The figures each run
measures are printed (``pytest -s``) and summarised in docs/edge.md.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import orjson
import pytest

from bench.server import ServerProcess, cpu_seconds, free_port, rss_bytes, start_server

# seconds: a normal client's worst /healthz while an abuse runs; the freeze this guards against lasted 12 s, and a bound of 1 s
# was missed (1.06 s) only on a machine loaded by other jobs
NORMAL_BOUND = 2.0
ABUSE_SECONDS = 3.0
MIB = 1 << 20


@pytest.fixture(scope="module")
def edge_server() -> Iterator[ServerProcess]:
    server = start_server("--in-memory")
    try:
        yield server
    finally:
        server.stop()


def read_answer(
    sock: socket.socket, method: bytes = b"GET"
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response, read with a client-side h11 connection (so it must be HTTP)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    status, headers, body = 0, {}, b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status, headers = event.status_code, dict(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, body


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def healthz_seconds(port: int) -> float:
    """A normal client: a fresh connection, GET /healthz, its answer."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_answer(sock)
    assert (status, orjson.loads(body)) == (200, {"status": "ok"})
    return time.monotonic() - started


def normal_client_while(port: int, until: float) -> list[float]:
    latencies = []
    while time.monotonic() < until:
        latencies.append(healthz_seconds(port))
        time.sleep(0.05)
    return latencies


class Meter:
    """The server's CPU and memory, and the wall time, from its creation to ``report``."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.cpu = cpu_seconds(server.process.pid)
        self.rss = rss_bytes(server.process.pid)
        self.started = time.monotonic()

    def report(self, name: str, latencies: list[float]) -> int:
        """Print the figures; returns the RSS growth in bytes."""
        pid = self.server.process.pid
        cpu = cpu_seconds(pid) - self.cpu
        rss = rss_bytes(pid)
        latencies = sorted(latencies)
        print(
            f"\n{name}: server CPU {cpu:.2f} s in {time.monotonic() - self.started:.1f} s, "
            f"RSS {self.rss / MIB:.1f} -> {rss / MIB:.1f} MiB, normal /healthz p50 "
            f"{latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms "
            f"over {len(latencies)}"
        )
        return rss - self.rss


def chunked(size_line: bytes) -> bytes:
    return (
        b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + size_line
        + b"\r\nhello world!\r\n0\r\n\r\n"
    )


PROBES = {
    "content-length-of-5000-digits": (
        b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        400,
    ),
    "chunk-size-0xc": (chunked(b"0xc"), 400),
    "chunk-size-1_0": (chunked(b"1_0"), 400),
    "chunk-size-minus-1": (chunked(b"-1"), 400),
    "gzip-then-chunked": (
        b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"0\r\n\r\n",
        501,
    ),
    "http-1.1-without-host": (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "nul-in-a-header-name": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A\x00b: 1\r\n\r\n", 400),
    "bare-lf-in-a-header-value": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\n2\r\n\r\n", 400),
}


@pytest.mark.parametrize("probe", PROBES)
def test_each_probe_is_a_json_refusal_and_the_server_stays_up(
    edge_server: ServerProcess, probe: str
) -> None:
    data, status = PROBES[probe]
    assert_json_refusal(edge_server, data, status)


def assert_json_refusal(server: ServerProcess, data: bytes, status: int) -> None:
    """``data`` is answered ``status`` with a JSON error body and the connection closed;
    the server stays up and answers another client."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        got, headers, body = read_answer(sock)
        assert got == status
        assert headers[b"content-type"] == b"application/json"
        assert headers[b"connection"] == b"close"
        assert orjson.loads(body)["code"] == "invalid"
        assert closed_by_server(sock)
    assert server.process.poll() is None
    assert healthz_seconds(server.port) < NORMAL_BOUND


def test_a_connection_pipelining_as_fast_as_it_can_does_not_hold_the_server(
    edge_server: ServerProcess,
) -> None:
    port = edge_server.port
    until = time.monotonic() + ABUSE_SECONDS
    flood = socket.create_connection(("127.0.0.1", port), timeout=10)
    batch = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 200
    answered = 0

    flood.settimeout(0.2)

    def send() -> None:
        for _ in range(100_000):  # bounded in count as well as time
            if time.monotonic() > until:
                return
            try:
                flood.sendall(batch)
            except TimeoutError:
                pass

    def drain() -> None:
        nonlocal answered
        while time.monotonic() < until:
            try:
                answered += flood.recv(1 << 20).count(b"HTTP/1.1 200 OK")
            except TimeoutError:
                pass

    threads = [threading.Thread(target=send), threading.Thread(target=drain)]
    meter = Meter(edge_server)
    for thread in threads:
        thread.start()
    latencies = normal_client_while(port, until)
    for thread in threads:
        thread.join(30)
    flood.close()  # what the server still holds of it is dropped with the connection
    grown = meter.report(f"pipelining flood ({answered:,} answered)", latencies)
    assert answered > 1000  # the flood was real, and served
    assert max(latencies) < NORMAL_BOUND
    assert grown < 8 * MIB


def test_a_flood_of_garbage_heads_is_refused_and_others_are_answered(
    edge_server: ServerProcess,
) -> None:
    port = edge_server.port
    until = time.monotonic() + ABUSE_SECONDS
    refused = 0
    rng = random.Random(16)

    def garbage() -> None:
        nonlocal refused
        for _ in range(20_000):
            if time.monotonic() > until:
                return
            head = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                try:
                    sock.sendall(head + b"\r\n\r\n")
                    if sock.recv(12).startswith(b"HTTP/1.1 4"):
                        refused += 1
                except OSError:
                    pass

    threads = [threading.Thread(target=garbage) for _ in range(4)]
    meter = Meter(edge_server)
    for thread in threads:
        thread.start()
    latencies = normal_client_while(port, until)
    for thread in threads:
        thread.join(30)
    grown = meter.report(f"garbage heads ({refused:,} refused)", latencies)
    assert refused > 100
    assert edge_server.process.poll() is None
    assert max(latencies) < NORMAL_BOUND
    assert grown < 8 * MIB


def test_connections_past_the_cap_get_503_and_idle_ones_cost_no_cpu(tmp_path: Path) -> None:
    """Up to the cap: connections that sent one byte (which could still become a
    WebSocket upgrade) and connections that sent half a head. They cost no CPU while
    they wait; one more connection is answered 503 and closed; a keep-alive client
    admitted before keeps its answers; once some leave, new clients get in."""
    cap = 300
    log = tmp_path / "server.log"
    server = start_server("--in-memory", "--max-connections", str(cap), log_path=log)
    port = server.port
    held: list[socket.socket] = []
    try:
        normal = socket.create_connection(("127.0.0.1", port), timeout=10)
        normal.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(normal)[0] == 200
        rss = rss_bytes(server.process.pid)
        for i in range(cap - 1):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"G" if i % 3 else b"GET /healthz HTTP/1.1\r\nHo")
            held.append(sock)
        time.sleep(0.5)  # let the server take them all in
        cpu = cpu_seconds(server.process.pid)
        time.sleep(ABUSE_SECONDS)
        idle_cpu = cpu_seconds(server.process.pid) - cpu
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
                status, headers, body = read_answer(extra)
                assert status == 503 and orjson.loads(body)["code"] == "unavailable"
                assert headers[b"retry-after"] == b"1"
        started = time.monotonic()
        normal.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(normal)[0] == 200
        admitted = time.monotonic() - started
        print(
            f"\n{cap} connections at the cap ({cap // 3} with half a head, the rest one "
            f"byte): server CPU {idle_cpu:.2f} s in {ABUSE_SECONDS:.0f} s, RSS "
            f"{rss / MIB:.1f} -> {rss_bytes(server.process.pid) / MIB:.1f} MiB, an admitted "
            f"client's /healthz {admitted * 1000:.1f} ms"
        )
        assert idle_cpu < 0.5  # polling each every 5 ms took a core
        assert admitted < NORMAL_BOUND
        warnings = [
            orjson.loads(line)
            for line in log.read_text().splitlines()
            if "connection cap reached" in line
        ]
        assert [(w["max_connections"], w["refused"]) for w in warnings] == [(cap, 1)]
        for sock in held[:10]:
            sock.close()
        deadline = time.monotonic() + 10
        while True:  # the server notices the closes at once; give it a moment
            try:
                assert healthz_seconds(port) < NORMAL_BOUND
                break
            except AssertionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        normal.close()
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_bodies_in_one_byte_chunks_are_refused_and_do_not_hold_others(
    edge_server: ServerProcess,
) -> None:
    """64 KiB in one-byte chunks would cost the server ~0.5 s of CPU each (an h11 event
    a byte), and one recv holds ten thousand of them: refused past 4,096 pieces."""
    port = edge_server.port
    until = time.monotonic() + ABUSE_SECONDS
    request = (
        b"POST /api/v5/orgs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"1\r\nx\r\n" * 65_000
        + b"0\r\n\r\n"
    )
    refused = 0

    def tiny_chunks() -> None:
        nonlocal refused
        for _ in range(1000):
            if time.monotonic() > until:
                return
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                try:
                    sock.sendall(request)
                except OSError:  # refused and closed before it was all sent
                    pass
                try:
                    status, _, body = read_answer(sock, b"POST")
                except OSError:
                    continue
                assert status == 400 and "pieces" in orjson.loads(body)["detail"]
                refused += 1

    threads = [threading.Thread(target=tiny_chunks) for _ in range(2)]
    meter = Meter(edge_server)
    for thread in threads:
        thread.start()
    latencies = normal_client_while(port, until)
    for thread in threads:
        thread.join(30)
    grown = meter.report(f"one-byte chunks ({refused:,} refused)", latencies)
    assert refused > 2
    assert max(latencies) < NORMAL_BOUND
    assert grown < 8 * MIB


def test_the_default_cap_stays_below_the_open_file_limit(tmp_path: Path) -> None:
    """A process allowed 160 open files caps itself at 96 connections: the ones past it
    get a 503 instead of waiting in the backlog while accept fails with EMFILE, and
    once the held connections go, new clients are served again."""
    port = free_port()
    code = (
        "import resource, runpy, sys; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160)); "
        f"sys.argv = ['chat-engine', 'serve', '--in-memory', '--port', '{port}', "
        "'--log-level', 'warning']; "
        "runpy.run_module('gateway.cli', run_name='__main__')"
    )
    env = dict(os.environ, CHAT_ENGINE_ADMIN_TOKEN="edge")
    process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                healthz_seconds(port)
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        statuses = []
        for _ in range(120):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"G")
            held.append(sock)
        for sock in held[96:]:  # each read waits for its answer: no pause needed
            statuses.append(read_answer(sock)[0])
        assert statuses == [503] * 24
        assert process.poll() is None
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert healthz_seconds(port) < NORMAL_BOUND
                break
            except (AssertionError, OSError):
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
        process.terminate()
        process.wait(20)
