"""Signed tokens and rotation under attack, against a real server over TCP: what a
hostile review of the integration surface found (docs/integration.md), each case a
regression test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import ConnectionRejected

from tests.conftest import ADMIN_TOKEN, World, build_world, make_org, start_server
from tests.serverproc import HEADERS, launch
from tests.test_jwt import (
    EC_PUBLIC,
    KEYS,
    RSA_KEY,
    RSA_PUBLIC,
    bearer,
    claims,
    closed_with,
    put_keys,
    sign,
)
from tests.wsclient import ws_connect

PARALLEL = 6  # rotations sent at once with the same token


@pytest.fixture
async def keyed(world: World) -> World:
    response = await put_keys(world)
    assert response.status_code == 200, response.text
    return world


async def _at_once(client: httpx.AsyncClient, path: str, count: int) -> list[httpx.Response]:
    """``count`` POSTs to ``path`` in flight together, on separate connections."""
    answers: list[httpx.Response] = []

    async def post() -> None:
        answers.append(await client.post(path))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(post)
    return answers


@pytest.mark.parametrize("whose", ["org", "user"])
async def test_rotations_sent_together_with_one_token_leave_one_working_token(
    world: World, whose: str
) -> None:
    """Rotation is how a leaked token is taken back: a rotation authenticated with a
    token that an earlier rotation already stopped must not succeed, or the holder of
    the leaked token could rotate again right behind the owner and keep a working
    token. So of several rotations sent at once with one token, exactly one answers
    200 and the others 401, and only the token that one answered works."""
    ada = world.users[0]
    old, path = (
        (world.org["token"], world.path("/token"))
        if whose == "org"
        else (ada["token"], world.path(f"/users/{ada['id']}/token"))
    )
    async with world.client(old) as caller:
        answers = await _at_once(caller, path, PARALLEL)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] + [401] * (PARALLEL - 1), [a.text for a in answers]
    (winner,) = [answer.json()["token"] for answer in answers if answer.status_code == 200]
    check = world.path() if whose == "org" else world.path(f"/users/{ada['id']}")
    async with world.client(winner) as renewed, world.client(old) as stale:
        assert (await renewed.get(check)).status_code == 200
        assert (await stale.get(check)).status_code == 401


def _private_pem() -> str:
    raw: bytes = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return raw.decode()


async def test_a_public_key_is_kept_as_the_key_alone_never_with_what_came_with_it(
    keyed: World,
) -> None:
    """A PEM public key pasted together with its private key, or with other text, must
    never be stored or shown back: a private key anywhere in the field is refused, and
    a public key is kept (and shown) in its standard form only."""
    world = keyed
    private = _private_pem()
    pkcs1 = (
        RSA_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        .decode()
    )
    async with world.org_client as org:
        before = (await org.get(world.path("/jwt_keys"))).json()
        for pasted in (RSA_PUBLIC + private, private + RSA_PUBLIC):
            refused = await org.put(
                world.path("/jwt_keys"), json=[{"kid": "rs", "algorithm": "RS256", "key": pasted}]
            )
            assert refused.status_code == 400, refused.text
            assert list(refused.json()["errors"]) == ["keys.0.key"]
            assert "PRIVATE" not in refused.text.replace("private keys", "")
        assert (await org.get(world.path("/jwt_keys"))).json() == before
        noisy = [
            {"kid": "rs", "algorithm": "RS256", "key": f"my notes: not for sharing\n{pkcs1}bye"},
            {"kid": "es", "algorithm": "ES256", "key": f"\n\n{EC_PUBLIC}\n-- end --\n"},
        ]
        stored = await org.put(world.path("/jwt_keys"), json=noisy)
        assert stored.status_code == 200, stored.text
        expected = [
            {"kid": "rs", "algorithm": "RS256", "key": RSA_PUBLIC},
            {"kid": "es", "algorithm": "ES256", "key": EC_PUBLIC},
        ]
        assert stored.json() == expected
        shown = await org.get(world.path("/jwt_keys"))
        assert shown.json() == expected
        assert "not for sharing" not in shown.text and "-- end --" not in shown.text
    # the kept keys verify exactly as the ones given would
    visitor = world.visitor
    token = sign("rs", claims(world, visitor["id"], "visitor"))
    async with bearer(world, token) as as_visitor:
        own = f"/api/v5/client/visitors/{visitor['id']}/chats"
        assert (await as_visitor.get(own)).status_code == 200


async def test_a_signed_token_longer_than_a_request_head_may_be_is_431(keyed: World) -> None:
    """A token is read only from a head within the edge's bound (16 KiB), however it
    arrives: a validly signed one padded past it is 431 on HTTP and on /ws, never
    verified nor remembered."""
    world = keyed
    visitor = world.visitor
    token = sign("hs", claims(world, visitor["id"], "visitor", pad="x" * 20_000))
    async with bearer(world, token) as as_visitor:
        response = await as_visitor.get(f"/api/v5/client/visitors/{visitor['id']}/chats")
    assert response.status_code == 431, response.text
    assert response.json()["code"] == "invalid"
    for query_token in (True, False):
        with pytest.raises(ConnectionRejected) as rejected:
            async with ws_connect(
                world.server.base_url, token, query_token=query_token, scheme="Bearer"
            ):
                pass
        assert rejected.value.status_code == 431


async def test_the_authorization_scheme_is_read_in_any_case(keyed: World) -> None:
    """HTTP authentication schemes are case-insensitive; clients send ``bearer`` as
    well as ``Bearer``."""
    world = keyed
    visitor = world.visitor
    own = f"/api/v5/client/visitors/{visitor['id']}/chats"
    signed = sign("es", claims(world, visitor["id"], "visitor"))
    async with world.server.client() as anonymous:
        for scheme, token in (("bearer", signed), ("BEARER", signed), ("token", visitor["token"])):
            response = await anonymous.get(own, headers={"Authorization": f"{scheme} {token}"})
            assert response.status_code == 200, (scheme, response.text)
        wrong = await anonymous.get(own, headers={"Authorization": f"Basic {signed}"})
        assert wrong.status_code == 401
    async with ws_connect(world.server.base_url, signed, scheme="bearer") as session:
        assert (await session.subscribe(own))["type"] == "subscribed"


async def test_signed_tokens_share_their_principals_write_budget(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes are limited per user and per visitor, not per token string: an
    application that signs a fresh token for every request, or a visitor given many,
    draws on the same budget as the principal's own engine token."""
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, "--rate-limit", "0.01/3")  # 3, then 1 a 100 s
    world = await build_world(server)
    assert (await put_keys(world)).status_code == 200
    visitor, ada = world.visitor, world.users[0]
    start = f"/api/v5/client/visitors/{visitor['id']}/rooms/{world.room['id']}/chats"
    for ttl in (300, 301, 302):  # three different tokens, one visitor
        async with bearer(world, sign("hs", claims(world, visitor["id"], "visitor", ttl=ttl))) as c:
            assert (await c.post(start)).status_code in (200, 201)
    async with world.client(visitor["token"]) as own:
        refused = await own.post(start)
    assert refused.status_code == 429, refused.text
    # an operator's signed tokens likewise (rotating its own token is a write)
    rotate = world.path(f"/users/{ada['id']}/token")
    for ttl in (300, 301):
        async with bearer(world, sign("rs", claims(world, ada["id"], "user", ttl=ttl))) as c:
            answer = await c.post(rotate)
            assert answer.status_code == 200, answer.text
    async with world.client(answer.json()["token"]) as own:
        assert (await own.post(rotate)).status_code == 200
    async with bearer(world, sign("rs", claims(world, ada["id"], "user", ttl=999))) as c:
        assert (await c.post(rotate)).status_code == 429
    # another principal's budget is its own
    alan = world.users[1]
    async with bearer(world, sign("rs", claims(world, alan["id"], "user"))) as c:
        assert (await c.post(world.path(f"/users/{alan['id']}/token"))).status_code == 200


async def test_an_orgs_key_change_closes_only_its_own_changed_sessions(keyed: World) -> None:
    """Replacing one org's keys closes (4001) that org's sessions whose key is gone, and
    no other: not its sessions verified by a key it kept, not another org's sessions
    verified by a key of the same kid and the same public key."""
    world = keyed
    async with world.server.client(ADMIN_TOKEN) as admin:
        other = await make_org(admin, "Other")
        path = f"/api/v5/orgs/{other['id']}"
        same = [{"kid": "rs", "algorithm": "RS256", "key": RSA_PUBLIC}]
        assert (await admin.put(path + "/jwt_keys", json=same)).status_code == 200
        stranger = (await admin.post(path + "/visitors", json={})).json()
    visitor = world.visitor
    own = f"/api/v5/client/visitors/{visitor['id']}/chats"
    theirs = f"/api/v5/client/visitors/{stranger['id']}/chats"
    by_rs = sign("rs", claims(world, visitor["id"], "visitor"))
    by_es = sign("es", claims(world, visitor["id"], "visitor"))
    other_rs = sign("rs", {**claims(world, stranger["id"], "visitor"), "org": other["id"]})
    base = world.server.base_url
    async with (
        ws_connect(base, by_rs, query_token=True) as doomed,
        ws_connect(base, by_es, query_token=True) as kept,
        ws_connect(base, other_rs, query_token=True) as elsewhere,
    ):
        assert (await doomed.subscribe(own))["type"] == "subscribed"
        assert (await kept.subscribe(own))["type"] == "subscribed"
        assert (await elsewhere.subscribe(theirs))["type"] == "subscribed"
        assert (await put_keys(world, [KEYS[0], KEYS[2]])).status_code == 200
        assert (await closed_with(doomed)).reason.code == 4001
        for index, session in enumerate((kept, elsewhere)):
            await session.send({"type": "ping", "id": index})
            assert (await session.until(lambda f: f.get("type") == "pong"))["id"] == index


def test_check_reads_key_changes_and_rotations_after_a_crash(tmp_path: Path) -> None:
    """``chat-engine check`` reads a log holding key changes and rotations (the new
    records) as sound after ``kill -9``, and a restart then holds exactly them."""
    data_dir = tmp_path / "data"
    server = launch(data_dir)
    try:
        with httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=30) as admin:
            org = admin.post("/api/v5/orgs", json={"name": "Acme"}).json()
            path = f"/api/v5/orgs/{org['id']}"
            assert admin.put(path + "/jwt_keys", json=KEYS).status_code == 200
            assert admin.put(path + "/jwt_keys", json=KEYS[2:]).status_code == 200
            renewed = admin.post(path + "/token").json()["token"]
    finally:
        server.kill()
    report = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    assert report.stdout.strip().endswith("sound")
    assert "replay 4 record(s)" in report.stdout  # the org, two key changes, a rotation
    server = launch(data_dir)
    try:
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Token {renewed}"}, timeout=30
        ) as org_client:
            keys = org_client.get(path + "/jwt_keys")
            assert [key["kid"] for key in keys.json()] == ["es"], keys.text
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Token {org['token']}"}
        ) as stale:
            assert stale.get(path).status_code == 401
    finally:
        server.kill()


def _rsa_public_pem(bits: int) -> str:
    """An RSA public key of exactly ``bits`` bits: an odd modulus with its top bit set
    (a public key needs no primes, and making a real one this big is slow)."""
    modulus = (1 << (bits - 1)) | (0xC0FFEE << 64) | 1
    public = rsa.RSAPublicNumbers(65537, modulus).public_key()
    raw: bytes = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return raw.decode()


async def test_an_rsa_key_past_4096_bits_is_refused(keyed: World) -> None:
    """Anyone who knows an org's id and a kid can make the engine check a signature
    with that key, so the key's size bounds what each forged token costs."""
    world = keyed
    async with world.org_client as org:
        for bits in (4104, 8192, 16384):
            big = [{"kid": "big", "algorithm": "RS256", "key": _rsa_public_pem(bits)}]
            refused = await org.put(world.path("/jwt_keys"), json=big)
            assert refused.status_code == 400, (bits, refused.text)
            assert "4096" in refused.json()["errors"]["keys.0.key"][0]
        kept = [{"kid": "top", "algorithm": "RS256", "key": _rsa_public_pem(4096)}]
        assert (await org.put(world.path("/jwt_keys"), json=kept)).status_code == 200
