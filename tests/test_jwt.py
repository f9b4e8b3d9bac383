"""Signed tokens (JWT), token rotation and the directory listings, against a real
server over TCP: what an application that runs the engine behind its own API relies on
(docs/integration.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from trio_websocket import ConnectionClosed, ConnectionRejected

from engine.actors.supervisor import Engine
from engine.realtime.protocol import Close
from gateway.ws import WsGateway, WsSettings
from tests.conftest import ADMIN_TOKEN, World, make_org, make_room, make_user
from tests.serverproc import HEADERS, launch
from tests.wsclient import WsClient, ws_connect

HS_SECRET = "a-shared-secret-of-at-least-32-bytes!!"


def _pem(public: Any) -> str:
    raw: bytes = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return raw.decode()


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PUBLIC = _pem(RSA_KEY.public_key())
EC_PUBLIC = _pem(EC_KEY.public_key())
KEYS = [
    {"kid": "hs", "algorithm": "HS256", "key": HS_SECRET},
    {"kid": "rs", "algorithm": "RS256", "key": RSA_PUBLIC},
    {"kid": "es", "algorithm": "ES256", "key": EC_PUBLIC},
]
SIGNING = {"hs": ("HS256", HS_SECRET), "rs": ("RS256", RSA_KEY), "es": ("ES256", EC_KEY)}


def sign(kid: str, claims: dict[str, Any], *, headers: dict[str, Any] | None = None) -> str:
    algorithm, key = SIGNING[kid]
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid, **(headers or {})})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand: ``alg: none`` (no signature), or HMAC-SHA256 with any
    bytes as the secret (what PyJWT refuses to do with a PEM key)."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def now_s(world: World) -> int:
    return world.server.clock.ms // 1000


def claims(world: World, sub: str, role: str, *, ttl: int = 300, **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "org": world.org["id"], "role": role, "exp": now_s(world) + ttl, **extra}


async def put_keys(world: World, keys: list[dict[str, Any]] | None = None) -> httpx.Response:
    async with world.org_client as org:
        return await org.put(world.path("/jwt_keys"), json=keys if keys is not None else KEYS)


def bearer(world: World, token: str) -> httpx.AsyncClient:
    client = world.server.client()
    client.headers["Authorization"] = f"Bearer {token}"
    return client


async def closed_with(session: WsClient) -> ConnectionClosed:
    """Reads until the server closes the session (bounded: 15 s)."""
    with pytest.raises(ConnectionClosed) as closed, trio.fail_after(15):
        while True:
            await session.receive_frame()
    return closed.value


@pytest.fixture
async def keyed(world: World) -> World:
    response = await put_keys(world)
    assert response.status_code == 200, response.text
    return world


@pytest.mark.parametrize("kid", ["hs", "rs", "es"])
async def test_tokens_signed_with_each_algorithm_carry_their_principals_rights(
    keyed: World, kid: str
) -> None:
    world = keyed
    ada, alan = world.users
    visitor = world.visitor
    user_token = sign(kid, claims(world, ada["id"], "user"))
    visitor_token = sign(kid, claims(world, visitor["id"], "visitor"))
    async with bearer(world, user_token) as as_ada:
        assert (await as_ada.get(world.path(f"/users/{ada['id']}/chats"))).status_code == 200
        # exactly the user's rights: not another user's, not the org's
        acting = await as_ada.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{visitor['id']}/chats"),
            json={"auto_resume": alan["id"]},
        )
        assert acting.status_code == 403
        assert (await as_ada.post(world.path("/users"), json={})).status_code == 403
    async with bearer(world, visitor_token) as as_visitor:
        own = f"/api/v5/client/visitors/{visitor['id']}/chats"
        assert (await as_visitor.get(own)).status_code == 200
        started = await as_visitor.post(
            f"/api/v5/client/visitors/{visitor['id']}/rooms/{world.room['id']}/chats"
        )
        assert started.status_code == 201, started.text
        assert (await as_visitor.get(world.path("/rooms"))).status_code == 403
    base = world.server.base_url
    async with (
        ws_connect(base, visitor_token, query_token=True) as by_query,
        ws_connect(base, user_token, scheme="Bearer") as by_header,
    ):
        answer = await by_query.subscribe(f"/api/v5/client/visitors/{visitor['id']}/chats")
        assert answer["type"] == "subscribed"
        mine = await by_header.subscribe(world.path(f"/users/{ada['id']}/chats"))
        assert mine["type"] == "subscribed"
        theirs = await by_header.subscribe(world.path(f"/users/{alan['id']}/chats"))
        assert theirs["type"] == "error"


async def test_refused_tokens_are_401_and_say_why_without_key_material(keyed: World) -> None:
    world = keyed
    ada = world.users[0]
    good = claims(world, ada["id"], "user")
    signed = sign("rs", good)
    head, payload, signature = signed.split(".")
    tampered_claims = {**good, "sub": world.users[1]["id"]}
    async with world.server.client(ADMIN_TOKEN) as admin:
        other_org = await make_org(admin, "Other")
    async with world.server.client(other_org["token"]) as other:
        stranger = await make_user(other, other_org["id"], "Eve")
    cases = {
        "expired": (sign("hs", {**good, "exp": now_s(world) - 1}), "expired"),
        "tampered": (f"{head}.{_b64(orjson.dumps(tampered_claims))}.{signature}", "signature"),
        "bad signature": (
            jwt.encode(good, "another-secret-that-is-32-bytes-long!", "HS256", {"kid": "hs"}),
            "signature",
        ),
        "unknown kid": (sign("rs", good, headers={"kid": "nope"}), "kid"),
        "alg none": (forged({"alg": "none", "kid": "hs"}, good, None), "algorithm"),
        # an HS256 token whose "secret" is the RS256 public key: the classic confusion
        "HS/RS confusion": (
            forged({"alg": "HS256", "kid": "rs", "typ": "JWT"}, good, RSA_PUBLIC.encode()),
            "algorithm",
        ),
        "no exp": (sign("es", {k: v for k, v in good.items() if k != "exp"}), "exp"),
        "unknown subject": (sign("es", {**good, "sub": "0" * 32}), "sub"),
        "a user of another org": (sign("es", {**good, "sub": stranger["id"]}), "sub"),
        "a user named as a visitor": (sign("es", {**good, "role": "visitor"}), "sub"),
        "wrong role": (sign("es", {**good, "role": "admin"}), "role"),
        "another org's claim": (sign("hs", {**good, "org": other_org["id"]}), "kid"),
        "no org": (sign("hs", {k: v for k, v in good.items() if k != "org"}), "org"),
        "not a JWT": ("a.b.c", "well-formed"),
    }
    async with world.server.client() as anonymous:
        for name, (token, needle) in cases.items():
            for scheme in ("Bearer", "Token"):
                response = await anonymous.get(
                    world.path(f"/users/{ada['id']}/chats"),
                    headers={"Authorization": f"{scheme} {token}"},
                )
                assert response.status_code == 401, (name, response.text)
                body = response.json()
                assert body["code"] == "not_authenticated", name
                assert needle in body["detail"], (name, body["detail"])
                assert HS_SECRET not in response.text and "BEGIN" not in response.text
            with pytest.raises(ConnectionRejected) as rejected:
                async with ws_connect(world.server.base_url, token, query_token=True):
                    pass
            assert rejected.value.status_code == 401, name


async def test_keys_are_write_only_secrets_and_checked(keyed: World) -> None:
    world = keyed
    async with world.org_client as org:
        shown = (await org.get(world.path("/jwt_keys"))).json()
        assert shown == [
            {"kid": "hs", "algorithm": "HS256"},
            {"kid": "rs", "algorithm": "RS256", "key": RSA_PUBLIC},
            {"kid": "es", "algorithm": "ES256", "key": EC_PUBLIC},
        ]
        private_pem = RSA_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        refused = {
            "short secret": [{"kid": "a", "algorithm": "HS256", "key": "short"}],
            "private key": [{"kid": "a", "algorithm": "RS256", "key": private_pem}],
            "EC key as RS256": [{"kid": "a", "algorithm": "RS256", "key": EC_PUBLIC}],
            "RSA key as ES256": [{"kid": "a", "algorithm": "ES256", "key": RSA_PUBLIC}],
            "PEM as a secret": [{"kid": "a", "algorithm": "HS256", "key": RSA_PUBLIC}],
            "alg none": [{"kid": "a", "algorithm": "none", "key": HS_SECRET}],
            "twice the kid": [KEYS[0], {**KEYS[1], "kid": "hs"}],
            "eleven keys": [{**KEYS[0], "kid": str(n)} for n in range(11)],
        }
        for name, keys in refused.items():
            response = await org.put(world.path("/jwt_keys"), json=keys)
            assert response.status_code == 400, (name, response.text)
            assert response.json()["code"] == "invalid", name
            assert private_pem not in response.text
        # nothing refused changed anything
        assert (await org.get(world.path("/jwt_keys"))).json() == shown
        # the {"keys": [...]} form too
        response = await org.put(world.path("/jwt_keys"), json={"keys": KEYS[1:]})
        assert [key["kid"] for key in response.json()] == ["rs", "es"]
    async with world.client(world.users[0]["token"]) as operator:
        assert (await operator.get(world.path("/jwt_keys"))).status_code == 403
        assert (await operator.put(world.path("/jwt_keys"), json=KEYS)).status_code == 403
    async with world.server.client(ADMIN_TOKEN) as admin:
        assert (await admin.put(world.path("/jwt_keys"), json=KEYS)).status_code == 200
        other = await make_org(admin, "Other")
    async with world.server.client(other["token"]) as stranger:
        assert (await stranger.get(world.path("/jwt_keys"))).status_code == 403


async def test_a_removed_key_stops_its_tokens_and_closes_their_sessions(keyed: World) -> None:
    world = keyed
    visitor = world.visitor
    own = f"/api/v5/client/visitors/{visitor['id']}/chats"
    by_rs = sign("rs", claims(world, visitor["id"], "visitor"))
    by_es = sign("es", claims(world, visitor["id"], "visitor"))
    base = world.server.base_url
    async with ws_connect(base, by_rs, query_token=True) as doomed:
        async with ws_connect(base, by_es, query_token=True) as kept:
            assert (await doomed.subscribe(own))["type"] == "subscribed"
            assert (await kept.subscribe(own))["type"] == "subscribed"
            assert (await put_keys(world, [KEYS[0], KEYS[2]])).status_code == 200
            closed = await closed_with(doomed)
            assert closed.reason.code == 4001
            await kept.send({"type": "ping", "id": 7})
            assert (await kept.until(lambda f: f.get("type") == "pong"))["id"] == 7
    async with bearer(world, by_rs) as gone:
        response = await gone.get(own)
        assert response.status_code == 401
        assert "kid" in response.json()["detail"]


async def test_a_session_is_closed_with_4001_when_its_token_expires(keyed: World) -> None:
    world = keyed
    visitor = world.visitor
    own = f"/api/v5/client/visitors/{visitor['id']}/chats"
    short = sign("hs", claims(world, visitor["id"], "visitor", ttl=4))
    longer = sign("hs", claims(world, visitor["id"], "visitor", ttl=3600))
    base = world.server.base_url
    async with (
        ws_connect(base, short, query_token=True) as expiring,
        ws_connect(base, longer, query_token=True) as lasting,
    ):
        assert (await expiring.subscribe(own))["type"] == "subscribed"
        assert (await lasting.subscribe(own))["type"] == "subscribed"
        closed = await closed_with(expiring)
        assert closed.reason.code == 4001
        assert "expired" in (closed.reason.reason or "")
        await lasting.send({"type": "ping", "id": 1})
        assert (await lasting.until(lambda f: f.get("type") == "pong"))["id"] == 1
    # the engine's clock past exp: the same token is refused over HTTP
    world.server.clock.advance(5)
    async with bearer(world, short) as late:
        response = await late.get(own)
        assert response.status_code == 401
        assert "expired" in response.json()["detail"]


async def test_rotation_stops_the_old_token_at_once_and_closes_its_sessions(world: World) -> None:
    ada, alan = world.users
    base = world.server.base_url
    ada_channel = world.path(f"/users/{ada['id']}/chats")
    async with (
        ws_connect(base, world.org["token"]) as org_session,
        ws_connect(base, ada["token"]) as ada_session,
    ):
        assert (await org_session.subscribe(ada_channel))["type"] == "subscribed"
        assert (await ada_session.subscribe(ada_channel))["type"] == "subscribed"
        async with world.org_client as org:
            rotated = await org.post(world.path("/token"))
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["id"] == world.org["id"]
        new_org_token = rotated.json()["token"]
        assert new_org_token != world.org["token"]
        assert (await closed_with(org_session)).reason.code == 4001
        async with world.org_client as old:
            assert (await old.get(world.path())).status_code == 401
        # the user rotates its own token
        async with world.client(ada["token"]) as as_ada:
            mine = await as_ada.post(world.path(f"/users/{ada['id']}/token"))
            assert mine.status_code == 200, mine.text
            assert "token" in mine.json() and mine.json()["id"] == ada["id"]
            assert (await as_ada.get(ada_channel)).status_code == 401
        assert (await closed_with(ada_session)).reason.code == 4001
    new_ada = mine.json()["token"]
    async with world.client(new_ada) as as_ada:
        assert (await as_ada.get(ada_channel)).status_code == 200
        # another user's token may not be rotated by a user
        other = await as_ada.post(world.path(f"/users/{alan['id']}/token"))
        assert other.status_code == 403
        assert (await as_ada.post(world.path("/token"))).status_code == 403
    async with world.client(new_org_token) as org:
        assert (await org.get(world.path())).status_code == 200
        by_org = await org.post(world.path(f"/users/{alan['id']}/token"))
        assert by_org.status_code == 200
    async with world.server.client(ADMIN_TOKEN) as admin:
        assert (await admin.post(world.path(f"/users/{alan['id']}/token"))).status_code == 200
        assert (await admin.post(world.path("/token"))).status_code == 200
        unknown = world.path("/users/00000000-0000-4000-8000-000000000000/token")
        assert (await admin.post(unknown)).status_code == 404
    async with world.client(alan["token"]) as old_alan:
        assert (await old_alan.get(world.path(f"/users/{alan['id']}"))).status_code == 401


async def walk(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    """Every item of a cursor collection, following ``next`` (at most 50 pages)."""
    found: list[dict[str, Any]] = []
    next_url: str | None = url
    for _ in range(50):
        if next_url is None:
            return found
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        page = response.json()
        found += page["results"]
        next_url = page["next"]
    raise AssertionError("more than 50 pages")


async def test_listings_are_cursor_paginated_and_show_no_tokens(world: World) -> None:
    async with world.server.client(ADMIN_TOKEN) as admin:
        orgs = [world.org] + [await make_org(admin, f"Org {n}") for n in range(4)]
        first = (await admin.get("/api/v5/orgs", params={"page_size": 2})).json()
        assert first["previous"] is None and first["next"] is not None
        assert len(first["results"]) == 2
        listed = await walk(admin, "/api/v5/orgs?page_size=2")
        assert [org["id"] for org in listed] == [org["id"] for org in orgs]
        assert all("token" not in org for org in listed)
        assert (await admin.get("/api/v5/orgs", params={"cursor": "junk"})).status_code == 400
    async with world.org_client as org:
        assert (await org.get("/api/v5/orgs")).status_code == 403
        more = [await make_user(org, world.org["id"], f"U{n}") for n in range(3)]
        rooms = [await make_room(org, world.org["id"], f"R{n}") for n in range(3)]
    users = world.users + more
    async with world.client(world.users[0]["token"]) as member:
        listed = await walk(member, world.path("/users?page_size=2"))
        assert [user["id"] for user in listed] == [user["id"] for user in users]
        assert all("token" not in user for user in listed)
        room_ids = [room["id"] for room in await walk(member, world.path("/rooms?page_size=2"))]
        expected = [world.room["id"], world.private_room["id"]] + [room["id"] for room in rooms]
        assert room_ids == expected
        assert (await member.get("/api/v5/orgs")).status_code == 403
    async with world.server.client(orgs[1]["token"]) as stranger:
        assert (await stranger.get(world.path("/users"))).status_code == 403
    async with world.client(world.visitor["token"]) as visitor:
        assert (await visitor.get(world.path("/users"))).status_code == 403


def test_rotation_and_keys_survive_a_crash_and_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    def api(base: str, token: str) -> httpx.Client:
        return httpx.Client(base_url=base, headers={"Authorization": f"Token {token}"}, timeout=30)

    server = launch(data_dir)
    try:
        with httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=30) as admin:
            org = admin.post("/api/v5/orgs", json={"name": "Acme"}).json()
            path = f"/api/v5/orgs/{org['id']}"
            user = admin.post(
                path + "/users", json={"first_name": "A", "last_name": "B", "alias": "a"}
            ).json()
            visitor = admin.post(path + "/visitors", json={}).json()
            assert admin.put(path + "/jwt_keys", json=KEYS).status_code == 200
            new_org = admin.post(path + "/token").json()["token"]
            new_user = admin.post(path + f"/users/{user['id']}/token").json()["token"]
    finally:
        server.kill()  # kill -9: what was answered is in the log
    exp = 4_000_000_000  # the real clock now; far in the future
    signed = sign("es", {"sub": visitor["id"], "org": org["id"], "role": "visitor", "exp": exp})
    for restart in ("after kill -9", "after a clean stop"):
        server = launch(data_dir)
        try:
            with api(server.base_url, org["token"]) as old:
                assert old.get(path).status_code == 401, restart
            with api(server.base_url, user["token"]) as old:
                assert old.get(path + f"/users/{user['id']}").status_code == 401, restart
            with api(server.base_url, new_org) as renewed:
                assert renewed.get(path).status_code == 200, restart
                keys = renewed.get(path + "/jwt_keys").json()
                assert [key["kid"] for key in keys] == ["hs", "rs", "es"], restart
            with api(server.base_url, new_user) as renewed:
                assert renewed.get(path + f"/users/{user['id']}").status_code == 200, restart
            with httpx.Client(
                base_url=server.base_url, headers={"Authorization": f"Bearer {signed}"}
            ) as as_visitor:
                own = f"/api/v5/client/visitors/{visitor['id']}/chats"
                assert as_visitor.get(own).status_code == 200, restart
        finally:
            if restart == "after kill -9":
                assert server.stop() == 0  # a clean stop writes a snapshot
            else:
                server.kill()


async def test_openapi_describes_the_bearer_scheme(world: World) -> None:
    async with world.server.client() as anonymous:
        document = (await anonymous.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert {"bearer": []} in document["security"]
    for path in ("/jwt_keys", "/token", "/users/{user_id}/token", "/users"):
        assert "/api/v5/orgs/{org_id}" + path in document["paths"]
    assert "get" in document["paths"]["/api/v5/orgs"]


async def test_a_signed_token_for_a_visitor_of_no_org_is_refused(keyed: World) -> None:
    """An openly registered visitor belongs to no org until its first chat: no org's
    key may speak for it."""
    world = keyed
    async with world.server.client() as anonymous:
        opened = (await anonymous.post("/api/v5/client/visitors")).json()
    token = sign("hs", claims(world, opened["id"], "visitor"))
    async with bearer(world, token) as as_visitor:
        response = await as_visitor.get(f"/api/v5/client/visitors/{opened['id']}/chats")
    assert response.status_code == 401
    assert "sub" in response.json()["detail"]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_the_expiry_timer_runs_on_trios_clock(autojump_clock: trio.testing.MockClock) -> None:
    """A session's expiry waits on trio's clock from the engine's now to ``exp``; under
    a MockClock an hour passes at once."""
    now_ms = 1_700_000_000_000
    gateway = WsGateway(Engine(clock=lambda: now_ms), "admin-hash", WsSettings())
    reasons: list[str | None] = []

    class Probe:
        def revoke(self, close: Close | None = None) -> None:
            reasons.append(None if close is None else close.reason)

    started = trio.current_time()
    await gateway._expire(Probe(), now_ms + 3_600_000)  # type: ignore[arg-type]
    assert trio.current_time() - started == pytest.approx(3600)
    assert reasons == ["the token has expired"]
