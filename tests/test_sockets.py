"""gateway.sockets.receive, the one read of a connection's socket: data, an idle wait, a
peer gone either way, and exactly one yield to trio per call."""

from __future__ import annotations

import socket
import struct

import trio
import trio.testing

from gateway.sockets import receive


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    return server, client


async def test_bytes_already_there_are_returned_after_one_yield() -> None:
    server, client = tcp_pair()
    with server, client:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        await trio.lowlevel.wait_readable(server)
        with trio.testing.assert_checkpoints():
            assert await receive(server) == b"GET / HTTP/1.1\r\n\r\n"


async def test_an_idle_socket_is_waited_on_until_bytes_come() -> None:
    server, client = tcp_pair()
    with server, client:
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await receive(server))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            client.sendall(b"x")
        assert got == [b"x"]


async def test_a_peer_that_ended_its_stream_is_empty_bytes() -> None:
    server, client = tcp_pair()
    with server:
        client.close()
        assert await receive(server) == b""


async def test_a_peer_that_reset_the_connection_is_empty_bytes_not_an_error() -> None:
    server, client = tcp_pair()
    with server:
        server.send(b"unread by the client")
        # closing with unread bytes and a zero linger sends a reset
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await trio.lowlevel.wait_readable(server)
        assert await receive(server) == b""


async def test_a_peer_whose_bytes_are_always_there_cannot_hold_the_loop() -> None:
    server, client = tcp_pair()
    with server, client:
        client.sendall(b"y" * 100_000)
        await trio.lowlevel.wait_readable(server)
        turns = 0

        async def other() -> None:
            nonlocal turns
            while True:
                turns += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            for _ in range(10):
                assert await receive(server, 10)
            nursery.cancel_scope.cancel()
        assert turns >= 9
