"""Webhooks against a real server and a real receiver on 127.0.0.1 that checks every
signature: registration and its rules, a whole conversation delivered in order, a
receiver that fails for a while, and a slow receiver that holds back only itself."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import trio

from engine.facts import WebhookCreated
from engine.ids import new_uuid
from gateway.hookclient import HookConnection, ReceiverError, Target
from gateway.webhooks import TEST_BACKOFF_ENV
from tests.conftest import ADMIN_TOKEN, Server, World, build_world, start_server
from tests.webhook_receiver import Receiver

SECRET = "a-receiver-secret-0123456789"
ALL_EVENTS = [
    "chat.created",
    "chat.ended",
    "message.created",
    "presence.created",
    "presence.deleted",
]


@pytest.fixture
async def hooked(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> Server:
    """A server that allows webhooks to 127.0.0.1, retrying after 50 ms up to 200 ms."""
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv(TEST_BACKOFF_ENV, "0.05/0.2")
    return await start_server(nursery, "--webhook-allow", "127.0.0.1", "--rate-limit", "off")


async def receiver(nursery: trio.Nursery) -> Receiver:
    found = Receiver(SECRET)
    await nursery.start(found.run)
    return found


async def register(
    world: World, url: str, events: list[str] | None = None, secret: str = SECRET
) -> dict[str, Any]:
    async with world.org_client as client:
        response = await client.post(
            world.path("/webhooks"),
            json={"url": url, "events": events or ALL_EVENTS, "secret": secret},
        )
    assert response.status_code == 201, response.text
    return response.json()


async def new_chat(world: World, client: httpx.AsyncClient) -> str:
    room, visitor = world.room["id"], world.visitor["id"]
    response = await client.post(world.path(f"/rooms/{room}/visitors/{visitor}/chats"))
    assert response.status_code == 201, response.text
    chat_id: str = response.json()["id"]
    return chat_id


async def say(world: World, client: httpx.AsyncClient, chat_id: str, text: str) -> str:
    response = await client.post(
        world.path(f"/chats/{chat_id}/messages"),
        json={"sender_id": world.users[0]["id"], "message": text},
    )
    assert response.status_code == 201, response.text
    message_id: str = response.json()["id"]
    return message_id


def first_seen(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event once, where it first arrived (redeliveries dropped by id)."""
    seen: dict[str, dict[str, Any]] = {}
    for body in bodies:
        seen.setdefault(body["id"], body)
    return list(seen.values())


def log_order(body: dict[str, Any]) -> tuple[int, int]:
    _, lsn, index = body["id"].rsplit("-", 2)
    return int(lsn), int(index)


async def test_every_event_of_a_conversation_arrives_in_order(
    hooked: Server, nursery: trio.Nursery
) -> None:
    world = await build_world(hooked)
    target = await receiver(nursery)
    hook = await register(world, target.url)
    assert set(hook) == {"id", "organization_id", "url", "events", "created_at"}  # no secret
    ada = world.users[0]["id"]
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        joined = await client.post(world.path(f"/chats/{chat_id}/presences"), json={"user_id": ada})
        assert joined.status_code == 201
        hello = await say(world, client, chat_id, "hello")
        left = await client.delete(world.path(f"/chats/{chat_id}/presences/{ada}"))
        assert left.status_code == 204
        ended = await client.patch(world.path(f"/chats/{chat_id}"), json={"is_ended": True})
        assert ended.status_code == 200, ended.text
        messages = (await client.get(world.path(f"/chats/{chat_id}/messages"))).json()["results"]
    await target.wait_for(lambda r: any(b["type"] == "chat.ended" for b in r.accepted()))
    got = first_seen(target.accepted())
    assert all(delivery.signature_ok for delivery in target.deliveries)
    assert [body["type"] for body in got] == [
        "chat.created",
        "presence.created",
        "message.created",  # the join
        "message.created",  # hello
        "presence.deleted",
        "message.created",  # the leave
        "chat.ended",
    ]
    assert got == sorted(got, key=log_order)
    assert {body["org_id"] for body in got} == {world.org["id"]}
    assert got[0]["data"]["id"] == chat_id and got[-1]["data"]["end_time"] is not None
    # a message is the one its collection shows
    delivered = [body["data"] for body in got if body["type"] == "message.created"]
    assert delivered == messages
    assert any(data["id"] == hello for data in delivered)
    assert got[1]["data"]["user_id"] == ada == got[4]["data"]["user_id"]
    assert got[1]["data"]["created_at"] == got[4]["data"]["created_at"]


async def test_registration_listing_and_removal(hooked: Server, nursery: trio.Nursery) -> None:
    world = await build_world(hooked)
    target = await receiver(nursery)
    async with world.org_client as client:
        path = world.path("/webhooks")
        refused = await client.post(
            path, json={"url": "http://10.1.2.3/hook", "events": ALL_EVENTS, "secret": SECRET}
        )
        assert refused.status_code == 400
        assert "--webhook-allow" in refused.json()["errors"]["url"][0]
        unknown = await client.post(
            path, json={"url": target.url, "events": ["chat.exploded"], "secret": SECRET}
        )
        assert unknown.status_code == 400 and "events" in unknown.json()["errors"]
        short = await client.post(
            path, json={"url": target.url, "events": ALL_EVENTS, "secret": "x"}
        )
        assert short.status_code == 400 and "secret" in short.json()["errors"]
        created = await client.post(
            path, json={"url": target.url, "events": ["message.created"], "secret": SECRET}
        )
        assert created.status_code == 201
        listed = (await client.get(path)).json()
        assert [item["id"] for item in listed["results"]] == [created.json()["id"]]
        assert "secret" not in listed["results"][0]
        gone = await client.delete(f"{path}/{created.json()['id']}")
        assert gone.status_code == 204
        assert (await client.get(path)).json()["results"] == []
        again = await client.delete(f"{path}/{created.json()['id']}")
        assert again.status_code == 404
    async with world.client(world.users[0]["token"]) as operator:
        assert (await operator.get(path)).status_code == 403


async def test_without_webhook_allow_every_registration_is_refused(server: Server) -> None:
    world = await build_world(server)
    async with world.org_client as client:
        response = await client.post(
            world.path("/webhooks"),
            json={"url": "http://127.0.0.1:9/hook", "events": ALL_EVENTS, "secret": SECRET},
        )
    assert response.status_code == 400
    assert "without --webhook-allow" in response.json()["errors"]["url"][0]


async def test_a_receiver_failing_for_a_while_gets_everything_afterwards(
    hooked: Server, nursery: trio.Nursery
) -> None:
    world = await build_world(hooked)
    target = await receiver(nursery)
    target.status = 500
    hook = await register(world, target.url, ["message.created"])
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        sent = [await say(world, client, chat_id, f"message {n}") for n in range(5)]
        await target.wait_for(lambda r: len(r.deliveries) >= 4)
        # every attempt so far was the first message, retried
        assert {d.body["data"]["id"] for d in target.deliveries} == {sent[0]}
        attempts = (await client.get(world.path(f"/webhooks/{hook['id']}/deliveries"))).json()
        assert attempts["failing_since"] is not None
        assert {a["outcome"] for a in attempts["results"]} == {"failed"}
        assert attempts["results"][0]["error"] == "answered 500"
        metrics = (await client.get("/metrics")).text
        assert "chat_engine_webhook_failing_endpoints 1.0" in metrics
        assert 'chat_engine_webhook_attempts_total{outcome="failed"}' in metrics
        target.status = 200
        # one more: once it arrives, the answer to the one before was taken in
        sent.append(await say(world, client, chat_id, "marker"))
        await target.wait_for(lambda r: len(first_seen(r.accepted())) == len(sent))
        assert [body["data"]["id"] for body in first_seen(target.accepted())] == sent
        attempts = (await client.get(world.path(f"/webhooks/{hook['id']}/deliveries"))).json()
        assert attempts["failing_since"] is None
        assert "delivered" in {a["outcome"] for a in attempts["results"][:2]}
        metrics = (await client.get("/metrics")).text
        assert "chat_engine_webhook_failing_endpoints 0.0" in metrics
        assert "chat_engine_webhook_backlog_records" in metrics
    assert all(delivery.signature_ok for delivery in target.deliveries)


async def test_a_slow_receiver_delays_neither_answers_nor_another_receiver(
    hooked: Server, nursery: trio.Nursery
) -> None:
    world = await build_world(hooked)
    slow, fast = await receiver(nursery), await receiver(nursery)
    slow.hold = trio.Event()  # answers nothing until the test lets it
    await register(world, slow.url, ["message.created"])
    await register(world, fast.url, ["message.created"])
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        # every post is answered while the slow receiver holds its first delivery
        sent = [await say(world, client, chat_id, f"message {n}") for n in range(20)]
        await fast.wait_for(lambda r: len(r.accepted()) == len(sent))
        assert [body["data"]["id"] for body in fast.accepted()] == sent
        assert slow.deliveries == []
        slow.hold.set()

        def answered(receiver: Receiver) -> list[dict[str, Any]]:  # the held one too
            return first_seen([d.body for d in receiver.deliveries if d.answered == 200])

        await slow.wait_for(lambda r: len(answered(r)) == len(sent))
        assert [body["data"]["id"] for body in answered(slow)] == sent


async def test_a_receiver_closing_idle_connections_costs_no_failed_attempt(
    hooked: Server, nursery: trio.Nursery
) -> None:
    """A kept-alive connection the receiver closed meanwhile is replaced at once: no
    attempt fails, no backoff delays the next event."""
    world = await build_world(hooked)
    target = await receiver(nursery)
    target.drop_connections = True
    hook = await register(world, target.url, ["message.created"])
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        sent = []
        for n in range(5):
            sent.append(await say(world, client, chat_id, f"message {n}"))
            count = len(sent)
            await target.wait_for(lambda r, count=count: len(r.accepted()) == count)
        attempts = (await client.get(world.path(f"/webhooks/{hook['id']}/deliveries"))).json()
    assert [body["data"]["id"] for body in target.accepted()] == sent
    # (the last answer may still be on its way back when the view is read)
    outcomes = [a["outcome"] for a in attempts["results"]]
    assert set(outcomes) == {"delivered"} and len(outcomes) >= len(sent) - 1


async def test_another_orgs_events_are_not_delivered(hooked: Server, nursery: trio.Nursery) -> None:
    world = await build_world(hooked)
    other = await build_world(hooked)
    target = await receiver(nursery)
    await register(world, target.url, ["chat.created"])
    async with other.org_client as client:
        await new_chat(other, client)
    async with world.org_client as client:
        mine = await new_chat(world, client)
    await target.wait_for(lambda r: len(r.accepted()) >= 1)
    assert [body["data"]["id"] for body in target.accepted()] == [mine]


async def test_an_event_failing_for_a_day_is_skipped_and_recorded(
    hooked: Server, nursery: trio.Nursery
) -> None:
    world = await build_world(hooked)
    target = await receiver(nursery)
    target.status = 500
    hook = await register(world, target.url, ["message.created"])
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        lost = await say(world, client, chat_id, "nobody hears this")
        await target.wait_for(lambda r: len(r.deliveries) >= 2)
        hooked.clock.advance(25 * 3600)  # the engine's clock: a day of retries has passed
        # its next turn skips it (the check comes before any further attempt)
        target.status = 200
        heard = await say(world, client, chat_id, "this one arrives")
        await target.wait_for(lambda r: len(r.accepted()) == 1)
        attempts = (await client.get(world.path(f"/webhooks/{hook['id']}/deliveries"))).json()
    assert [body["data"]["id"] for body in target.accepted()] == [heard]
    assert lost not in [body["data"]["id"] for body in target.accepted()]
    skipped = [a for a in attempts["results"] if a["outcome"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["error"] == "gave up"


async def test_a_dead_endpoints_backlog_is_given_up_with_a_few_log_lines(
    hooked: Server, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """After a day of failures the backlog behind the stuck event is given up at
    reading speed: the log says so at the 1st, 2nd, 4th, 8th ... event, not for each."""
    world = await build_world(hooked)
    target = await receiver(nursery)
    target.status = 500
    hook = await register(world, target.url, ["message.created"])
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        lost = [await say(world, client, chat_id, "nobody hears this")]
        await target.wait_for(lambda r: len(r.deliveries) >= 2)
        lost += [await say(world, client, chat_id, f"behind it {n}") for n in range(8)]
        hooked.clock.advance(25 * 3600)
        target.status = 200
        with caplog.at_level(logging.WARNING, logger="chat_engine.webhooks"):
            heard = await say(world, client, chat_id, "this one arrives")
            await target.wait_for(lambda r: len(r.accepted()) == 1)
        attempts = (await client.get(world.path(f"/webhooks/{hook['id']}/deliveries"))).json()
    assert [body["data"]["id"] for body in target.accepted()] == [heard]
    assert [a["outcome"] for a in attempts["results"]].count("skipped") == len(lost) == 9
    given_up = [r for r in caplog.records if r.getMessage() == "webhook event given up"]
    assert [r.fields["given_up_in_a_row"] for r in given_up] == [1, 2, 4, 8]  # type: ignore[attr-defined]


async def test_a_removed_endpoint_gets_nothing_more(hooked: Server, nursery: trio.Nursery) -> None:
    world = await build_world(hooked)
    removed, kept = await receiver(nursery), await receiver(nursery)
    gone = await register(world, removed.url, ["message.created"])
    await register(world, kept.url, ["message.created"])
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        first = await say(world, client, chat_id, "both hear this")
        await removed.wait_for(lambda r: len(r.accepted()) == 1)
        assert (await client.delete(world.path(f"/webhooks/{gone['id']}"))).status_code == 204
        second = await say(world, client, chat_id, "only one hears this")
        await kept.wait_for(lambda r: len(r.accepted()) == 2)
    assert [body["data"]["id"] for body in kept.accepted()] == [first, second]
    assert [body["data"]["id"] for body in removed.accepted()] == [first]


async def test_a_url_no_request_line_can_carry_is_refused_and_delivery_goes_on(
    hooked: Server, nursery: trio.Nursery
) -> None:
    """A non-ASCII path once got through registration and then ended every endpoint's
    deliveries, and the server with them, at its first event (and again at each
    restart)."""
    world = await build_world(hooked)
    target = await receiver(nursery)
    async with world.org_client as client:
        for url in (target.url + "/caf\u00e9", target.url + "/a b", "http://127.0.0.1:0/hook"):
            refused = await client.post(
                world.path("/webhooks"),
                json={"url": url, "events": ALL_EVENTS, "secret": SECRET},
            )
            assert refused.status_code == 400, url
            assert "url" in refused.json()["errors"]
    await register(world, target.url + "/%C3%A9?q=%20", ["message.created"])
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        sent = await say(world, client, chat_id, "hello")
        await target.wait_for(lambda r: len(r.accepted()) >= 1)
        assert target.accepted()[0]["data"]["id"] == sent
        assert (await client.get("/readyz")).status_code == 200


async def test_the_client_turns_an_unsendable_request_into_a_failed_attempt(
    nursery: trio.Nursery,
) -> None:
    """Behind the registration's check: a path h11 cannot encode is one endpoint's failed
    attempt (ReceiverError), never an exception that ends the delivery tasks."""
    target = await receiver(nursery)
    connection = HookConnection()
    hook = Target(
        "http", "127.0.0.1", target.port, "127.0.0.1", f"127.0.0.1:{target.port}", "/\u00e9"
    )
    try:
        with trio.fail_after(10), pytest.raises(ReceiverError):
            await connection.post(hook, [], b"{}")
    finally:
        await connection.aclose()
    assert target.deliveries == []


async def test_an_endpoint_registered_before_the_url_check_fails_alone(
    hooked: Server, nursery: trio.Nursery
) -> None:
    """A log written before registrations refused non-ASCII URLs may hold one: its
    attempts fail (shown in its deliveries view) and every other endpoint, and the
    server, go on."""
    world = await build_world(hooked)
    target = await receiver(nursery)
    engine = hooked.engine
    old = WebhookCreated(
        new_uuid(), world.org["id"], target.url + "/caf\u00e9", ("message.created",), SECRET, 1
    )
    await engine.commit([old])
    await register(world, target.url, ["message.created"])
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        sent = await say(world, client, chat_id, "hello")
        await target.wait_for(lambda r: len(r.accepted()) >= 1)
        assert [body["data"]["id"] for body in target.accepted()] == [sent]
        path = world.path(f"/webhooks/{old.webhook_id}/deliveries")
        with trio.fail_after(30):
            while not (await client.get(path)).json()["results"]:
                await trio.sleep(0.05)
        attempt = (await client.get(path)).json()["results"][0]
        assert attempt["outcome"] == "failed" and "cannot be sent" in attempt["error"]
        assert (await client.get("/readyz")).status_code == 200


async def test_an_attempts_error_quotes_little_of_what_a_receiver_sent(
    hooked: Server, nursery: trio.Nursery
) -> None:
    """h11's complaint about a malformed answer quotes the offending line, up to 16 kB:
    the deliveries view keeps 100 attempts per endpoint, so each error is cut short."""
    world = await build_world(hooked)
    arrived = trio.Event()

    async def answer_badly(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(10):
                await stream.receive_some(65536)
                await stream.send_all(b"HTTP/1.1 200 OK\r\n" + b"bad header " * 1000 + b"\r\n\r\n")
                arrived.set()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, answer_badly, listeners)
    hook = await register(world, f"http://127.0.0.1:{port}/hook", ["message.created"])
    async with world.org_client as client:
        chat_id = await new_chat(world, client)
        await say(world, client, chat_id, "hello")
        path = world.path(f"/webhooks/{hook['id']}/deliveries")
        with trio.fail_after(30):
            await arrived.wait()
            while not (await client.get(path)).json()["results"]:
                await trio.sleep(0.05)
        attempt = (await client.get(path)).json()["results"][0]
    assert attempt["outcome"] == "failed"
    assert attempt["error"].startswith("RemoteProtocolError: illegal header line")
    assert len(attempt["error"]) <= 300
