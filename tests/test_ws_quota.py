"""How many WebSocket sessions one token, one address and all clients may hold.

Once, one anonymous visitor could open sessions up to the connection cap and hold them
by answering pings, so that every new client, ``/healthz`` included, was refused. The
bookkeeping is tested on its own (no trio), then against a real server process."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import orjson
import pytest

from bench.server import ServerProcess, start_server
from gateway.wsquota import SessionQuota, most_sessions
from tests.rawws import upgrade_request

# -- the bookkeeping ----------------------------------------------------------------------


def test_a_token_past_its_limit_is_refused_429_and_admitted_again_once_one_ends() -> None:
    quota = SessionQuota(per_token=2, per_address=None)
    for _ in range(2):
        assert quota.refusal("t", "10.0.0.1") is None
        quota.take("t", "10.0.0.1")
    refusal = quota.refusal("t", "10.0.0.2")
    assert refusal is not None and (refusal.status, refusal.code) == (429, "rate_limited")
    assert "this token" in refusal.detail
    assert quota.refusal("other", "10.0.0.1") is None
    quota.give_back("t", "10.0.0.1")
    assert quota.refusal("t", "10.0.0.1") is None


def test_an_address_past_its_limit_is_refused_whatever_the_token() -> None:
    quota = SessionQuota(per_token=None, per_address=3)
    for index in range(3):
        quota.take(f"token{index}", "10.0.0.1")
    refusal = quota.refusal("fresh", "10.0.0.1")
    assert refusal is not None and refusal.status == 429 and "this address" in refusal.detail
    assert quota.refusal("fresh", "10.0.0.2") is None
    assert quota.refusal("fresh", None) is None  # no address known: only the others count


def test_sessions_together_leave_a_tenth_of_the_cap_to_http() -> None:
    assert most_sessions(20) == 18 and most_sessions(1000) == 900 and most_sessions(5) == 5
    quota = SessionQuota(per_token=None, per_address=None, total=most_sessions(10))
    for index in range(9):
        quota.take(f"t{index}", f"10.0.0.{index}")
    refusal = quota.refusal("t99", "10.0.0.99")
    assert refusal is not None and (refusal.status, refusal.code) == (503, "unavailable")


def test_sessions_without_a_token_or_address_count_in_the_total_only() -> None:
    quota = SessionQuota(per_token=1, per_address=1, total=3)
    for _ in range(3):  # the admin's or an org's sessions
        assert quota.refusal(None, None) is None
        quota.take(None, None)
    refusal = quota.refusal("visitor", "10.0.0.1")
    assert refusal is not None and refusal.status == 503
    quota.give_back(None, None)
    assert quota.refusal("visitor", "10.0.0.1") is None


def test_what_ended_is_forgotten() -> None:
    quota = SessionQuota()
    for index in range(50):
        quota.take(f"t{index}", f"10.0.{index}.1")
    for index in range(50):
        quota.give_back(f"t{index}", f"10.0.{index}.1")
    assert quota.open == 0 and quota.held() == (0, 0)


# -- a real server ------------------------------------------------------------------------


def visitor_token(server: ServerProcess) -> str:
    response = httpx.post(f"{server.base_url}/api/v5/client/visitors", timeout=10)
    assert response.status_code == 201
    return str(response.json()["token"])


def upgrade(port: int, token: str) -> tuple[int, bytes, socket.socket]:
    """The status and body of an upgrade's answer, and its socket (open on a 101)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(upgrade_request(token))
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, "closed before an answer"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        while len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
    return status, body, sock


def healthz(server: ServerProcess) -> int:
    return httpx.get(f"{server.base_url}/healthz", timeout=5).status_code


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def test_one_visitor_cannot_take_every_slot(held: list[socket.socket]) -> None:
    server = start_server(
        "--in-memory",
        "--max-connections",
        "20",
        "--ws-sessions-per-token",
        "5",
        "--ws-sessions-per-address",
        "12",
    )
    try:
        first = visitor_token(server)
        for _ in range(5):
            status, _, sock = upgrade(server.port, first)
            assert status == 101
            held.append(sock)
        status, body, sock = upgrade(server.port, first)
        sock.close()
        assert status == 429
        assert orjson.loads(body) == {
            "code": "rate_limited",
            "detail": "Too many WebSocket sessions for this token (5 open); close one first.",
        }
        assert healthz(server) == 200
        # a slot given back is taken again
        held.pop().close()
        for _ in range(50):
            status, _, sock = upgrade(server.port, first)
            if status == 101:
                held.append(sock)
                break
            sock.close()  # the server may not have seen the close yet
        assert status == 101

        # other tokens from the same address: 12 sessions in all
        for token, count in ((visitor_token(server), 5), (visitor_token(server), 2)):
            for _ in range(count):
                status, _, sock = upgrade(server.port, token)
                assert status == 101
                held.append(sock)
        assert len(held) == 12
        status, body, sock = upgrade(server.port, visitor_token(server))
        sock.close()
        assert status == 429 and b"from this address (12 open)" in body
        assert healthz(server) == 200
    finally:
        server.stop()


def test_sessions_leave_http_a_tenth_of_the_cap(held: list[socket.socket]) -> None:
    server = start_server("--in-memory", "--max-connections", "10")
    try:
        tokens = [visitor_token(server) for _ in range(9)]
        for token in tokens:
            status, _, sock = upgrade(server.port, token)
            assert status == 101
            held.append(sock)
        status, body, sock = upgrade(server.port, visitor_token(server))
        sock.close()
        assert status == 503
        assert orjson.loads(body)["code"] == "unavailable"
        assert healthz(server) == 200  # the slot kept for HTTP
    finally:
        server.stop()
