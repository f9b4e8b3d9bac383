"""The write rate limit, CORS, forwarded headers, the 1008 and 4001 closes, upgrades
with undecodable headers and the per-address connection cap against a real
``chat-engine serve`` process (their other tests run the server in the test's own trio
loop): what a client of the running binary sees, with a normal client's latency
asserted during the floods."""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bench.server import ADMIN_TOKEN, ServerProcess, start_server
from tests.rawws import OP_TEXT, frame, open_raw, upgrade_request
from tests.test_http_edge import read_answer

SHOP = "https://shop.example"
# seconds: a normal client's worst /healthz while the flood runs; the freeze this guards against lasted 12 s, and a bound of 1 s
# was missed (1.06 s) only on a machine loaded by other jobs
NORMAL_BOUND = 2.0
MIB = 1 << 20


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # the bench helper turns the limits off; the flags given last win
    process = start_server("--in-memory", "--rate-limit", "2/100", "--cors-origins", SHOP)
    try:
        yield process
    finally:
        process.stop()


def visitor_in_a_chat(server: ServerProcess) -> tuple[dict[str, Any], str]:
    admin = {"Authorization": f"Token {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        org = client.post("/api/v5/orgs", json={"name": "Edge"}, headers=admin).json()
        room = client.post(
            f"/api/v5/orgs/{org['id']}/rooms", json={"name": "Edge room"}, headers=admin
        ).json()
        visitor = client.post("/api/v5/client/visitors").json()
        chat = client.post(
            f"/api/v5/client/visitors/{visitor['id']}/rooms/{room['id']}/chats",
            headers={"Authorization": f"Token {visitor['token']}"},
        )
        assert chat.status_code == 201
    return visitor, str(chat.json()["id"])


def test_300_rapid_visitor_posts_are_cut_after_the_burst_while_others_are_served(
    server: ServerProcess,
) -> None:
    visitor, chat_id = visitor_in_a_chat(server)
    path = f"/api/v5/client/visitors/{visitor['id']}/chats/{chat_id}/messages"
    rss_before = metric(server, "process_resident_memory_bytes")
    statuses: list[int] = []
    retry_after: set[str] = set()

    def flood() -> None:
        headers = {"Authorization": f"Token {visitor['token']}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
            for index in range(300):
                answer = client.post(path, json={"message": f"m{index}"})
                statuses.append(answer.status_code)
                if answer.status_code == 429:
                    assert answer.json()["code"] == "rate_limited"
                    retry_after.add(answer.headers["Retry-After"])

    flooder = threading.Thread(target=flood)
    flooder.start()
    worst = 0.0
    while flooder.is_alive():
        started = time.monotonic()
        with httpx.Client(base_url=server.base_url, timeout=10) as normal:
            assert normal.get("/healthz").status_code == 200
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.02)
    flooder.join()
    grown = metric(server, "process_resident_memory_bytes") - rss_before
    print(
        f"rate limit flood: {statuses.count(201)} accepted, worst /healthz "
        f"{worst * 1000:.1f} ms, RSS {grown / MIB:+.1f} MiB"
    )
    assert statuses[:99] == [201] * 99  # the burst of 100, less the chat's creation
    assert statuses.count(429) > 0 and set(statuses) == {201, 429}
    assert retry_after and all(int(value) >= 1 for value in retry_after)
    assert worst < NORMAL_BOUND
    # ~100 messages kept and ~200 refusals: a few hundred KiB; a leak per request (the
    # connections the normal client opened, the refused writes) would show past this
    assert grown < 32 * MIB


def test_a_preflight_is_answered_for_a_listed_origin_only(server: ServerProcess) -> None:
    request = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    with httpx.Client(base_url=server.base_url, timeout=10) as browser:
        allowed = browser.options("/api/v5/orgs", headers={"Origin": SHOP, **request})
        other = browser.options(
            "/api/v5/orgs", headers={"Origin": "https://evil.example", **request}
        )
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert not [name for name in other.headers if name.lower().startswith("access-control-")]


async def test_a_1008_session_first_receives_its_bad_frames(server: ServerProcess) -> None:
    visitor = httpx.post(f"{server.base_url}/api/v5/client/visitors", timeout=10).json()
    peer = await open_raw(server.port, visitor["token"])
    burst = b"".join(
        frame(OP_TEXT, orjson.dumps({"type": "dance", "id": number})) for number in range(1, 26)
    )
    await peer.send(burst)
    assert await peer.read_until_closed(10) == 1008
    got: list[dict[str, Any]] = []
    for message in peer.messages:
        decoded = orjson.loads(message)
        got += decoded if isinstance(decoded, list) else [decoded]
    assert [(item["type"], item["code"]) for item in got] == [("error", "bad_frame")] * 21
    assert [item["id"] for item in got] == list(range(1, 22))
    await peer.aclose()


def metric(server: ServerProcess, sample: str) -> float:
    """One sample of the server's /metrics, by its name and labels as written there."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"no {sample} in /metrics"
    return float(found.group(1))


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


WS_ERRORS = 'chat_engine_connection_errors_total{kind="ws"}'


def upgrade_head(**replaced: bytes) -> bytes:
    """A well-formed ``GET /ws`` upgrade head (without a token), with the values of the
    headers named (``Sec_WebSocket_Protocol=...``) replaced."""
    headers = {
        "Host": b"127.0.0.1",
        "Upgrade": b"websocket",
        "Connection": b"Upgrade",
        "Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": b"13",
        "Sec-WebSocket-Protocol": b"chatengine.v1.json",
    }
    headers.update({name.replace("_", "-"): value for name, value in replaced.items()})
    lines = b"".join(b"%s: %s\r\n" % (name.encode(), value) for name, value in headers.items())
    return b"GET /ws HTTP/1.1\r\n" + lines + b"\r\n"


UNDECODABLE_HEADS = [
    {"Sec_WebSocket_Protocol": b"chatengine.v1.json, \xff"},
    {"Sec_WebSocket_Extensions": b"permessage-deflate; \xe9"},
    {"Connection": b"Upgrade, \xe9t\xe9"},
    {"Host": b"caf\xe9.example"},
    {"Host": b"xn--zz.example"},  # ASCII, but bad punycode: IDNA refuses it too
]


def test_an_upgrade_header_that_does_not_decode_is_answered_400_not_counted_as_a_bug(
    tmp_path: Path,
) -> None:
    """A byte past ASCII in an upgrade's Connection, Sec-WebSocket-* or Host header (or a
    Host that is no host name): the upgrade is answered 400 with the JSON error body and
    logged as a refusal, whether it opens the connection or follows a request on a
    kept-alive one; no error line, no traceback, no count of server errors."""
    log = tmp_path / "server.log"
    server = start_server("--in-memory", "--access-log", log_path=log)
    try:
        before = metric(server, WS_ERRORS)
        for replaced in UNDECODABLE_HEADS:
            for kept_alive in (False, True):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    if kept_alive:
                        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                        assert read_answer(sock)[0] == 200
                    sock.sendall(upgrade_head(**replaced))
                    status, headers, body = read_answer(sock)
                assert (status, headers[b"content-type"]) == (400, b"application/json"), replaced
                assert orjson.loads(body)["code"] == "invalid"
        assert metric(server, WS_ERRORS) == before
        assert httpx.get(f"{server.base_url}/healthz", timeout=10).status_code == 200
        assert server.process.poll() is None
    finally:
        server.stop()
    lines = log_lines(log)
    assert not [line for line in lines if line["level"] in ("error", "critical") or "exc" in line]
    refused = [line for line in lines if line["msg"] == "refused" and line.get("path") == "/ws"]
    assert len(refused) == 2 * len(UNDECODABLE_HEADS)
    assert all(line["status"] == 400 for line in refused)
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", line["client"]) for line in refused)


def connect_from(source: str, port: int) -> socket.socket:
    """A connection to the server on 127.0.0.1 from ``source`` (any 127.0.0.0/8 address
    is this host's on Linux's loopback)."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def test_one_address_cannot_take_every_connection_slot(tmp_path: Path) -> None:
    """From 127.0.0.2, as many connections as the whole cap, each sending a body slowly:
    the first 20 are held (the per-address cap), every later one is answered 429 at once
    and closed; clients from other addresses are served quickly meanwhile. WebSocket
    sessions leave the count once admitted, and a slot given back is taken again."""
    cap, per_address = 60, 20
    log = tmp_path / "server.log"
    server = start_server(
        "--in-memory",
        "--max-connections",
        str(cap),
        "--http-connections-per-address",
        str(per_address),
        log_path=log,
    )
    held: list[socket.socket] = []
    sessions: list[socket.socket] = []
    try:
        # admitted sessions leave the count: 25 from 127.0.0.2, open through what follows
        for _ in range(25):
            sock = connect_from("127.0.0.2", server.port)
            held.append(sock)
            sock.sendall(upgrade_request(ADMIN_TOKEN))
            assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        sessions, held = held, []
        for _ in range(per_address):
            sock = connect_from("127.0.0.2", server.port)
            sock.sendall(
                b"POST /api/v5/client/visitors HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            held.append(sock)
        # connections are accepted in order: each one past the 20 finds them counted
        for _ in range(cap - per_address):
            with connect_from("127.0.0.2", server.port) as past:
                status, headers, body = read_answer(past)
            assert (status, headers[b"retry-after"]) == (429, b"1")
            assert orjson.loads(body) == {
                "code": "rate_limited",
                "detail": f"Too many connections from this address ({per_address} open); "
                "try again later.",
            }
        for source in ("127.0.0.1", "127.0.0.3"):
            started = time.monotonic()
            with connect_from(source, server.port) as normal:
                normal.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_answer(normal)[0] == 200
            assert time.monotonic() - started < NORMAL_BOUND
        # still waiting for their bodies: nothing to read (no answer, no close)
        assert select.select(held, [], [], 0)[0] == []

        held.pop().close()  # a slot given back is taken again, once the server saw it
        deadline = time.monotonic() + 10
        while True:
            with connect_from("127.0.0.2", server.port) as again:
                again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status = read_answer(again)[0]
            if status == 200:
                break
            assert status == 429 and time.monotonic() < deadline
            time.sleep(0.05)
        assert server.process.poll() is None
        assert select.select(sessions, [], [], 0)[0] == []  # the sessions were not touched
    finally:
        for sock in held + sessions:
            sock.close()
        server.stop()
    warnings = [
        line for line in log_lines(log) if line["msg"] == "connection cap per address reached"
    ]
    assert warnings[0]["address"] == "127.0.0.2"
    assert warnings[0]["http_connections_per_address"] == per_address


async def test_a_token_that_stops_working_closes_its_sessions_with_4001(
    server: ServerProcess,
) -> None:
    """A visitor re-keyed by its org, a user's and the org's rotated tokens: each of their
    open sessions is closed with 4001, the old tokens are 401 from then on, and another
    visitor's session carries on."""
    admin = {"Authorization": f"Token {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        org = client.post("/api/v5/orgs", json={"name": "Rekey"}, headers=admin).json()
        as_org = {"Authorization": f"Token {org['token']}"}
        base = f"/api/v5/orgs/{org['id']}"
        visitor = client.post(f"{base}/visitors", json={}, headers=as_org).json()
        other = client.post(f"{base}/visitors", json={}, headers=as_org).json()
        person = {"first_name": "Ada", "last_name": "L", "alias": "Ada"}
        user = client.post(f"{base}/users", json=person, headers=as_org).json()
        before = metric(server, "chat_engine_revoked_token_closes_total")
        revoked = [
            await open_raw(server.port, token)
            for token in (visitor["token"], visitor["token"], user["token"], org["token"])
        ]
        bystander = await open_raw(server.port, other["token"])
        renewed = [
            client.post(f"{base}/visitors", json={"id": visitor["id"]}, headers=as_org),
            client.post(f"{base}/users/{user['id']}/token", headers=as_org),
            client.post(f"{base}/token", headers=as_org),
        ]
        assert [answer.status_code for answer in renewed] == [200, 200, 200]
        for peer in revoked:
            assert await peer.read_until_closed(10) == 4001
            await peer.aclose()
        await bystander.send(frame(OP_TEXT, orjson.dumps({"type": "ping", "id": 7})))
        assert orjson.loads(await bystander.read_message(10)) == {"type": "pong", "id": 7}
        await bystander.aclose()
        for token in (visitor["token"], user["token"], org["token"]):
            old = client.get("/api/v5/me", headers={"Authorization": f"Token {token}"})
            assert old.status_code == 401
        new_visitor = {"Authorization": f"Token {renewed[0].json()['token']}"}
        assert client.get("/api/v5/me", headers=new_visitor).status_code == 200
    assert metric(server, "chat_engine_revoked_token_closes_total") == before + 4


def test_forwarded_headers_from_a_trusted_peer_feed_links_logs_and_the_address_count(
    tmp_path: Path,
) -> None:
    """With ``--forwarded-allow-ips 127.0.0.1``: a request from 127.0.0.1 carrying
    ``X-Forwarded-*`` gets links on the forwarded scheme and host and is logged with the
    forwarded client; the same request from 127.0.0.2 gets the server's own links and is
    logged with its socket's address. The trusted peer's connections are not counted per
    address; another peer's are."""
    log = tmp_path / "server.log"
    server = start_server(
        "--in-memory",
        "--forwarded-allow-ips",
        "127.0.0.1",
        "--access-log",
        "--http-connections-per-address",
        "2",
        log_path=log,
    )
    forwarded = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "chat.example",
        "X-Forwarded-For": "198.51.100.7, 127.0.0.1",
    }
    held: list[socket.socket] = []
    try:
        admin = {"Authorization": f"Token {ADMIN_TOKEN}"}
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            org = client.post("/api/v5/orgs", json={"name": "Proxied"}, headers=admin).json()
            for name in ("One", "Two"):
                room = client.post(
                    f"/api/v5/orgs/{org['id']}/rooms", json={"name": name}, headers=admin
                )
                assert room.status_code == 201
        path = f"/api/v5/orgs/{org['id']}/rooms"
        links = {}
        for source in ("127.0.0.1", "127.0.0.2"):
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(base_url=server.base_url, transport=transport, timeout=10) as peer:
                page = peer.get(
                    path,
                    params={"page_size": 1},
                    headers={**forwarded, "Authorization": f"Token {org['token']}"},
                )
            assert page.status_code == 200
            links[source] = page.json()["next"]
        assert links["127.0.0.1"].startswith(f"https://chat.example{path}?")
        assert links["127.0.0.2"].startswith(f"{server.base_url}{path}?")

        # the proxy holds more connections than the per-address limit; 127.0.0.2 cannot
        for source, count in (("127.0.0.1", 4), ("127.0.0.2", 2)):
            for _ in range(count):
                held.append(connect_from(source, server.port))
                held[-1].sendall(b"GET /healthz HTTP/1.1\r\n")  # half a head
        with connect_from("127.0.0.2", server.port) as past:
            assert read_answer(past)[0] == 429
        with connect_from("127.0.0.1", server.port) as proxy:
            proxy.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(proxy)[0] == 200
    finally:
        for sock in held:
            sock.close()
        server.stop()
    listings = [
        line["client"]
        for line in log_lines(log)
        if line["msg"] == "request" and line.get("path") == path and line["method"] == "GET"
    ]
    assert listings[0] == "198.51.100.7:0"
    assert re.fullmatch(r"127\.0\.0\.2:\d+", listings[1])
