"""The head of a ``GET /ws`` upgrade is bounded (16 KiB), in one write or in pieces:
past it the answer is 431 with the JSON error body every refusal has, and a head just
under it is upgraded. Against a real server process."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import orjson
import pytest

from bench.server import ADMIN_TOKEN, ServerProcess, start_server
from gateway.wsconn import MAX_HEAD
from tests.rawws import upgrade_request


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = start_server("--in-memory")
    try:
        yield process
    finally:
        process.stop()


def padded_upgrade(size: int) -> bytes:
    """An upgrade request whose head is ``size`` bytes, padded with one header."""
    plain = upgrade_request(ADMIN_TOKEN)
    filler = b"X-Pad: \r\n"
    pad = size - len(plain) - len(filler)
    assert pad >= 0
    head = plain[:-2] + b"X-Pad: " + b"a" * pad + b"\r\n\r\n"
    assert len(head) == size
    return head


def answer(port: int, pieces: list[bytes]) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for piece in pieces:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused before the rest arrived: the answer is waiting
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 101:
            return status, b""
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body


TOO_LARGE = {"code": "invalid", "detail": f"The request head is over {MAX_HEAD} bytes."}


@pytest.mark.parametrize("size", [MAX_HEAD + 1, 17_000, 30_000])
def test_a_head_over_the_bound_in_one_write_is_431_json(server: ServerProcess, size: int) -> None:
    status, body = answer(server.port, [padded_upgrade(size)])
    assert (status, orjson.loads(body)) == (431, TOO_LARGE)


def test_a_head_over_the_bound_in_pieces_is_431_json(server: ServerProcess) -> None:
    data = padded_upgrade(17_000)
    pieces = [data[start : start + 1000] for start in range(0, len(data), 1000)]
    status, body = answer(server.port, pieces)
    assert (status, orjson.loads(body)) == (431, TOO_LARGE)


def test_a_head_at_the_bound_is_upgraded(server: ServerProcess) -> None:
    assert answer(server.port, [padded_upgrade(MAX_HEAD)])[0] == 101


def test_a_malformed_upgrade_is_400_with_the_same_body_shape(server: ServerProcess) -> None:
    bad = upgrade_request(ADMIN_TOKEN).replace(
        b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 7"
    )
    status, body = answer(server.port, [bad])
    assert status == 400
    assert set(orjson.loads(body)) == {"code", "detail"}
