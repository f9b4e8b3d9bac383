"""A WebSocket upgrade sent as a later request of a kept-alive HTTP/1.1 connection.

Clients that share one connection pool between fetch and WebSocket (Node's undici,
for one) send ``GET /ws`` on a connection that already carried other requests. Both
HTTP/1.1 transports (the built-in server and ``--http1-server hypercorn``) hand such a
connection to the WebSocket gateway, which serves it exactly as one that opened with
the upgrade: same handshake, same refusals, same session caps. Real servers, raw
sockets (the byte order on the wire is the point).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import orjson
import pytest
import trio
import wsproto
from wsproto.events import TextMessage

from gateway.wsconn import MAX_HEAD
from tests.conftest import ADMIN_TOKEN, Server, build_world, start_server
from tests.rawws import OP_TEXT, frame, upgrade_request

TRANSPORTS = ["builtin", "hypercorn"]
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
PING = frame(OP_TEXT, b'{"type":"ping","id":7}')


@pytest.fixture(autouse=True)
def _admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)


async def serve(nursery: trio.Nursery, transport: str, *flags: str) -> Server:
    return await start_server(nursery, "--http1-server", transport, *flags)


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


class Wire:
    """One client connection: raw bytes out, and the server's answers read in order
    (HTTP responses, then, after a 101, WebSocket frames through wsproto)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, server: Server) -> Wire:
        return cls(await trio.open_tcp_stream("127.0.0.1", port_of(server)))

    async def _more(self) -> bool:
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    async def response(self) -> tuple[int, bytes]:
        """The next HTTP answer: its status and body (none for a 101)."""
        with trio.fail_after(20):
            while b"\r\n\r\n" not in self.buffer:
                assert await self._more(), "closed before an answer"
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status == 101:
                self.buffer = rest
                return status, b""
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                assert await self._more(), "closed inside an answer's body"
                rest = self.buffer.partition(b"\r\n\r\n")[2]
            self.buffer = rest[length:]
            return status, rest[:length]

    async def messages(self, count: int) -> list[Any]:
        """The next ``count`` server objects, after a 101 (a frame holds an object or
        an array of them)."""
        ws = wsproto.Connection(wsproto.ConnectionType.CLIENT)
        ws.receive_data(self.buffer)
        self.buffer = b""
        found: list[Any] = []
        with trio.fail_after(20):
            while True:
                for event in ws.events():
                    if isinstance(event, TextMessage):
                        decoded = orjson.loads(event.data)
                        found += decoded if isinstance(decoded, list) else [decoded]
                if len(found) >= count:
                    return found
                chunk = await self.stream.receive_some(65536)
                assert chunk, "closed before the messages came"
                ws.receive_data(chunk)

    async def closed(self) -> bool:
        """True once the server ends the connection (within 20 s)."""
        with trio.move_on_after(20):
            while await self._more():
                pass
            return True
        return False


def upgrade(token: str = ADMIN_TOKEN) -> bytes:
    return upgrade_request(token)


# -- the upgrade itself -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_upgrade_after_a_fetch_on_the_same_connection_is_a_session(
    nursery: trio.Nursery, transport: str
) -> None:
    server = await serve(nursery, transport)
    wire = await Wire.open(server)
    await wire.stream.send_all(HEALTHZ)
    status, body = await wire.response()
    assert (status, orjson.loads(body)) == (200, {"status": "ok"})
    await wire.stream.send_all(upgrade())
    assert (await wire.response())[0] == 101
    await wire.stream.send_all(PING)
    assert await wire.messages(1) == [{"type": "pong", "id": 7}]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_upgrade_pipelined_right_after_a_request_is_a_session(
    nursery: trio.Nursery, transport: str
) -> None:
    """Both in one write: the first request is answered, then the upgrade."""
    server = await serve(nursery, transport)
    wire = await Wire.open(server)
    await wire.stream.send_all(HEALTHZ + upgrade())
    assert (await wire.response())[0] == 200
    assert (await wire.response())[0] == 101
    await wire.stream.send_all(PING)
    assert await wire.messages(1) == [{"type": "pong", "id": 7}]


@pytest.mark.parametrize("first", [b"", HEALTHZ], ids=["first-request", "later-request"])
async def test_frames_sent_with_the_upgrade_are_not_lost(
    nursery: trio.Nursery, first: bytes
) -> None:
    """Bytes after the upgrade's head, in the same write, are the session's first
    frames, whether the upgrade opened the connection or followed a request (the
    built-in server; hypercorn refuses bytes before its 101 with 400, its own rule)."""
    server = await serve(nursery, "builtin")
    wire = await Wire.open(server)
    await wire.stream.send_all(first + upgrade() + PING)
    if first:
        assert (await wire.response())[0] == 200
    assert (await wire.response())[0] == 101
    assert await wire.messages(1) == [{"type": "pong", "id": 7}]


async def test_hypercorn_refuses_frames_sent_before_its_101_and_does_not_upgrade_after(
    nursery: trio.Nursery,
) -> None:
    """hypercorn answers bytes that follow an upgrade it has not accepted yet with a 400
    of its own: the connection must not then be handed over (no 101 after that 400)."""
    server = await serve(nursery, "hypercorn")
    wire = await Wire.open(server)
    await wire.stream.send_all(HEALTHZ + upgrade() + PING)
    assert (await wire.response())[0] == 200
    assert (await wire.response())[0] == 400
    assert await wire.closed()
    assert b"101" not in wire.buffer


# -- the same refusals --------------------------------------------------------------------


def without_key(token: str = ADMIN_TOKEN) -> bytes:
    return b"".join(
        line + b"\r\n"
        for line in upgrade(token).split(b"\r\n")
        if not line.lower().startswith(b"sec-websocket-key")
    )[:-2]


def padded(size: int) -> bytes:
    plain = upgrade()
    pad = size - len(plain) - len(b"X-Pad: \r\n")
    return plain[:-2] + b"X-Pad: " + b"a" * pad + b"\r\n\r\n"


def no_token() -> bytes:
    return b"".join(
        line + b"\r\n"
        for line in upgrade().split(b"\r\n")
        if not line.lower().startswith(b"authorization")
    )[:-2]


async def refusal(server: Server, first: bytes, request: bytes) -> tuple[int, bytes, bool]:
    """The answer to ``request`` sent after ``first`` on one connection, and whether the
    server then closed it."""
    wire = await Wire.open(server)
    if first:
        await wire.stream.send_all(first)
        assert (await wire.response())[0] == 200
    await wire.stream.send_all(request)
    status, body = await wire.response()
    return status, body, await wire.closed()


BAD_UPGRADES = {
    "no-token": no_token(),
    "no-key": without_key(),
    "head-over-16k": padded(MAX_HEAD + 500),
    "not-an-upgrade": b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
}
# hypercorn checks the handshake's headers itself before the app sees it: its 400 has no
# body, so on it only the status is compared for these
HYPERCORN_OWN = {"no-key", "not-an-upgrade"}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", list(BAD_UPGRADES))
async def test_a_bad_upgrade_later_on_a_connection_is_refused_as_a_first_one(
    nursery: trio.Nursery, transport: str, case: str
) -> None:
    server = await serve(nursery, transport)
    request = BAD_UPGRADES[case]
    first = await refusal(server, b"", request)
    later = await refusal(server, HEALTHZ, request)
    assert first[0] in (400, 401, 431)
    if transport == "hypercorn" and case in HYPERCORN_OWN:
        # hypercorn answers a plain GET /ws that follows another request through the
        # HTTP routes (404), as before; a missing key is its 400
        assert later[0] in (400, 404)
        return
    assert later[:2] == first[:2]
    assert later[2] and first[2]  # the connection ends after the refusal


# -- the caps count such sessions ---------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_sessions_opened_on_a_reused_connection_count_against_the_caps(
    nursery: trio.Nursery, transport: str
) -> None:
    server = await serve(nursery, transport, "--ws-sessions-per-token", "1")
    world = await build_world(server)
    token = world.users[0]["token"]
    held = await Wire.open(server)
    await held.stream.send_all(HEALTHZ)
    assert (await held.response())[0] == 200
    await held.stream.send_all(upgrade(token))
    assert (await held.response())[0] == 101
    # a second session for the token is refused, whether it opens a connection or not
    for first in (b"", HEALTHZ):
        status, body, _ = await refusal(server, first, upgrade(token))
        assert (status, orjson.loads(body)["code"]) == (429, "rate_limited")
    # once the session held ends, its slot is free again (the server notices the close
    # at its own pace: a bounded number of tries, each waiting for its own answer)
    await held.stream.aclose()
    for _ in range(50):
        wire = await Wire.open(server)
        await wire.stream.send_all(HEALTHZ + upgrade(token))
        assert (await wire.response())[0] == 200
        status, _ = await wire.response()
        await wire.stream.aclose()
        if status == 101:
            break
        assert status == 429
        await trio.sleep(0.1)
    else:
        raise AssertionError("the ended session's slot was never given back")


# -- a Node client --------------------------------------------------------------------------

NODE_SCRIPT = """
const base = process.argv[1];
const token = process.argv[2];
// a few fetches leave kept-alive connections in the pool, one of which the WebSocket
// then takes (Node 20.20: one fetch alone leaves it a fresh connection)
for (let round = 0; round < 3; round++) {
  const health = await fetch(base + "/healthz");
  await health.text();
}
const ws = new WebSocket(base.replace("http", "ws") + "/ws?token=" + token,
                         "chatengine.v1.json");
const outcome = await new Promise((resolve) => {
  ws.onopen = () => ws.send(JSON.stringify({type: "ping", id: 1}));
  ws.onmessage = (event) => resolve("message " + event.data);
  ws.onerror = () => resolve("error");
  setTimeout(() => resolve("timeout"), 15000);
});
console.log(outcome);
ws.close();
process.exit(0);
"""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_node_opens_a_websocket_after_a_fetch_at_the_first_attempt(
    nursery: trio.Nursery, transport: str
) -> None:
    """Node 20 may send the upgrade on a connection its fetches left open; it gets a
    session at once (before, a 400 fired ``error`` without ``close``)."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CHAT_ENGINE_REQUIRE_NODE"):
            pytest.fail("node is required (CHAT_ENGINE_REQUIRE_NODE) but not installed")
        pytest.skip("node is not installed")
    server = await serve(nursery, transport)
    command = [
        node,
        "--experimental-websocket",
        "--input-type=module",
        "-e",
        NODE_SCRIPT,
        server.base_url,
        ADMIN_TOKEN,
    ]
    with trio.fail_after(60):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    out = done.stdout.decode().strip()
    assert out.startswith("message "), (out, done.stderr.decode()[-2000:])
    assert orjson.loads(out.removeprefix("message ")) == {"type": "pong", "id": 1}
