"""Write rate limits (`--rate-limit RATE/BURST`): a token bucket per user and per visitor,
429 `rate_limited` with `Retry-After`, nothing changed by a refused write, bounded memory."""

from __future__ import annotations

import httpx
import pytest
import trio

from gateway.ratelimit import RateLimiter, Throttled, address_key
from tests.conftest import ADMIN_TOKEN, World, build_world, start_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(20, 100, clock)
    assert [limiter.acquire("ada") for _ in range(100)] == [0.0] * 100
    wait = limiter.acquire("ada")
    assert wait == pytest.approx(0.05)  # one token comes back every 1/20 s
    assert limiter.acquire("alan") == 0.0  # buckets are per key
    clock.now += 0.05
    assert limiter.acquire("ada") == 0.0
    assert limiter.acquire("ada") > 0
    clock.now += 10  # refills to the burst, not beyond
    assert [limiter.acquire("ada") for _ in range(100)] == [0.0] * 100
    assert limiter.acquire("ada") > 0


def test_a_refused_call_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 1, clock)
    assert limiter.acquire("ada") == 0.0
    for _ in range(50):  # hammering while refused does not push the next token back
        assert limiter.acquire("ada") == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.acquire("ada") == 0.0


def test_full_buckets_are_forgotten_and_the_count_is_capped() -> None:
    clock = Clock()
    limiter = RateLimiter(20, 100, clock, max_keys=1_000)
    for index in range(1_000):
        limiter.acquire(f"key-{index}")
    assert len(limiter) == 1_000
    clock.now += 5.0  # 100 tokens at 20 a second: every bucket is full again
    limiter.acquire("late")
    assert len(limiter) == 1
    for index in range(5_000):  # more keys at once than the cap
        limiter.acquire(f"flood-{index}")
        assert len(limiter) <= 1_000
    # the cap drops the least recently used key, which then starts full again
    assert limiter.acquire("late") == 0.0


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert Throttled("slow down", 0.01).retry_after == 1
    assert Throttled("slow down", 1.0).retry_after == 1
    assert Throttled("slow down", 2.1).retry_after == 3


def test_registration_buckets_are_per_address_and_per_ipv6_64() -> None:
    assert address_key("203.0.113.9") == "203.0.113.9"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert address_key(None) == "unknown"


# -- a real server ------------------------------------------------------------------------


async def visitor_chat(world: World) -> str:
    async with world.client(world.visitor["token"]) as visitor:
        response = await visitor.post(
            f"/api/v5/client/visitors/{world.visitor['id']}/rooms/{world.room['id']}/chats"
        )
    assert response.status_code == 201
    return str(response.json()["id"])


async def test_300_rapid_posts_of_one_visitor_are_cut_after_the_burst(world: World) -> None:
    chat_id = await visitor_chat(world)  # the first write of the visitor's bucket
    path = f"/api/v5/client/visitors/{world.visitor['id']}/chats/{chat_id}"
    statuses = []
    retry_after = set()
    async with world.client(world.visitor["token"]) as visitor:
        started = trio.current_time()
        for index in range(300):
            response = await visitor.post(f"{path}/messages", json={"message": f"m{index}"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.json() == {
                    "code": "rate_limited",
                    "detail": "Too many writes; slow down.",
                }
                retry_after.add(int(response.headers["Retry-After"]))
        elapsed = trio.current_time() - started
        reads = await visitor.get(path)  # reads are not limited
        assert reads.status_code == 200
    accepted = statuses.count(201)
    assert set(statuses) == {201, 429}
    assert statuses[:99] == [201] * 99  # the burst of 100, less the chat's creation
    # the bucket refills at 20 a second while the posts run
    assert 99 <= accepted <= 99 + int(elapsed * 20) + 1
    assert retry_after == {1}
    # nothing changed on a refused write: the chat counts only the accepted ones
    assert reads.json()["visitor_message_count"] == accepted
    async with world.org_client as org:
        history = await org.get(world.path(f"/chats/{chat_id}/messages"), params={"page_size": 100})
        count = 0
        page = history.json()
        while True:
            count += sum(1 for item in page["results"] if item["sender_type"] == "visitor")
            if page["next"] is None:
                break
            page = (await org.get(page["next"])).json()
    assert count == accepted


async def test_org_and_admin_tokens_are_not_limited(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, "--rate-limit", "1/2")
    world = await build_world(server)  # the org made 2 rooms, 2 users, a visitor
    async with world.org_client as org:
        for index in range(5):
            response = await org.post(world.path("/rooms"), json={"name": f"R{index}"})
            assert response.status_code == 201
    async with server.client(ADMIN_TOKEN) as admin:
        for index in range(5):
            response = await admin.post("/api/v5/orgs", json={"name": f"O{index}"})
            assert response.status_code == 201


@pytest.mark.parametrize("transport", ["builtin", "hypercorn"])
async def test_a_user_is_limited_on_both_http_paths(
    transport: str, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, "--rate-limit", "0.01/3", "--http1-server", transport)
    world = await build_world(server)
    ada = world.users[0]
    async with world.client(ada["token"]) as user:
        chat = await user.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats"),
            params={"auto_resume": ada["id"]},
        )
        assert chat.status_code == 201
        path = world.path(f"/chats/{chat.json()['id']}/messages")
        body = {"sender_id": ada["id"], "message": "hi"}
        statuses = [(await user.post(path, json=body)).status_code for _ in range(3)]
        assert statuses == [201, 201, 429]
        refused = await user.post(path, json=body)
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 99  # 1 token a 100 s
        # a bad token is still 401, not 429: the limit applies to principals only
        async with server.client("not-a-token") as nobody:
            assert (await nobody.post(path, json=body)).status_code == 401
    async with world.org_client as org:
        history = (await org.get(path)).json()["results"]
    assert [item["message"] for item in history if item["type"] == "msg"] == ["hi", "hi"]


async def test_rate_limit_off(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    # the registration limit refills slowly here, so a slow machine's 21 posts cannot
    # earn a token back in between
    server = await start_server(
        nursery, "--rate-limit", "off", "--registration-rate-limit", "0.01/20"
    )
    world = await build_world(server)
    chat_id = await visitor_chat(world)
    path = f"/api/v5/client/visitors/{world.visitor['id']}/chats/{chat_id}/messages"
    async with world.client(world.visitor["token"]) as visitor:
        for index in range(150):
            response = await visitor.post(path, json={"message": f"m{index}"})
            assert response.status_code == 201
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        # open registration keeps its own limit when the write limit is off
        answers = [(await anonymous.post("/api/v5/client/visitors")) for _ in range(21)]
        assert [answer.status_code for answer in answers] == [201] * 20 + [429]
        assert answers[-1].json()["code"] == "rate_limited"
        assert int(answers[-1].headers["retry-after"]) >= 99  # 1 token a 100 s


async def test_registration_rate_limit_off(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, "--registration-rate-limit", "off")
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        for _ in range(30):
            assert (await anonymous.post("/api/v5/client/visitors")).status_code == 201


async def test_registration_rate_limit_is_its_own(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    server = await start_server(nursery, "--registration-rate-limit", "0.01/3")
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        answers = [(await anonymous.post("/api/v5/client/visitors")) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [201, 201, 201, 429]
