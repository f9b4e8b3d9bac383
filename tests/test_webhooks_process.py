"""Webhook delivery across a ``kill -9``: a real server process on a data directory, a
receiver on 127.0.0.1 in the test. What was not acknowledged is delivered again after
the restart (duplicates allowed, losses not), in log order, and the registration
itself survives (log, then snapshot)."""

from __future__ import annotations

import json
import stat
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from gateway.webhooks import TEST_BACKOFF_ENV
from persistence.cursors import CURSORS_FILE
from persistence.follow import LogFollower
from persistence.store import TEST_SEGMENT_BYTES_ENV
from tests.serverproc import HEADERS, Outcome, launch
from tests.test_webhooks import SECRET, first_seen, log_order
from tests.webhook_receiver import Receiver

FLAGS = ("--webhook-allow", "127.0.0.1", "--rate-limit", "off", "--snapshot-records", "40")


def saved_position(cursors: Path) -> int:
    try:
        (position,) = json.loads(cursors.read_text()).values()
    except (FileNotFoundError, ValueError):
        return 0
    return int(position)


async def start(data_dir: Path) -> Outcome:
    outcome = await trio.to_thread.run_sync(
        partial(
            launch,
            data_dir,
            *FLAGS,
            env={TEST_BACKOFF_ENV: "0.05/0.2", TEST_SEGMENT_BYTES_ENV: "4096"},
        )
    )
    assert outcome.ready, outcome.stderr
    return outcome


async def setup(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    org = (await client.post("/api/v5/orgs", json={"name": "Acme"})).json()
    headers = {"Authorization": f"Token {org['token']}"}
    base = f"/api/v5/orgs/{org['id']}"
    room = (await client.post(f"{base}/rooms", json={"name": "Sales"}, headers=headers)).json()
    user = (
        await client.post(
            f"{base}/users",
            json={"first_name": "Ada", "last_name": "L", "alias": "Ada"},
            headers=headers,
        )
    ).json()
    visitor = (await client.post(f"{base}/visitors", json={}, headers=headers)).json()
    hook = await client.post(
        f"{base}/webhooks",
        json={"url": url, "events": ["message.created"], "secret": SECRET},
        headers=headers,
    )
    assert hook.status_code == 201, hook.text
    chat = await client.post(
        f"{base}/rooms/{room['id']}/visitors/{visitor['id']}/chats", headers=headers
    )
    assert chat.status_code == 201, chat.text
    return {
        "headers": headers,
        "messages": f"{base}/chats/{chat.json()['id']}/messages",
        "user": user["id"],
        "hooks": f"{base}/webhooks",
    }


async def post(client: httpx.AsyncClient, world: dict[str, Any], count: int, tag: str) -> list[str]:
    sent = []
    for n in range(count):
        response = await client.post(
            world["messages"],
            json={"sender_id": world["user"], "message": f"{tag} {n}"},
            headers=world["headers"],
        )
        assert response.status_code == 201, response.text
        sent.append(response.json()["id"])
    return sent


async def test_kill_9_mid_delivery_redelivers_what_was_not_acknowledged(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    receiver = Receiver(SECRET)
    await nursery.start(receiver.run)
    data_dir = tmp_path / "data"
    server = await start(data_dir)
    try:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers=HEADERS, timeout=30
        ) as client:
            world = await setup(client, receiver.url)
            sent = await post(client, world, 60, "before")
            # some are acknowledged, then the receiver stops answering mid-delivery
            await receiver.wait_for(lambda r: len(r.accepted()) >= 20)
            # the cursor is saved now and then (about every second): wait for a save
            # past the first message
            cursors = data_dir / CURSORS_FILE
            first_lsn = log_order(receiver.accepted()[0])[0]
            with trio.fail_after(20):
                while saved_position(cursors) < first_lsn:
                    await trio.sleep(0.05)
            receiver.hold = trio.Event()
            sent += await post(client, world, 20, "held")
            await receiver.wait_for(lambda r: r.held >= 1)
    finally:
        server.kill()  # SIGKILL, with a delivery in flight
    acknowledged_before = len(first_seen(receiver.accepted()))
    assert acknowledged_before < len(sent)
    receiver.hold.set()
    receiver.hold = None
    assert stat.S_IMODE(cursors.stat().st_mode) == 0o600
    # the segments after the saved cursor were kept, although snapshots cover them
    assert LogFollower(data_dir).first_lsn() <= saved_position(cursors) + 1
    assert len(list(data_dir.glob("snapshot-*.msgpack"))) >= 1
    restarted_at = len(receiver.deliveries)
    server = await start(data_dir)
    try:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers=HEADERS, timeout=30
        ) as client:
            listed = (await client.get(world["hooks"], headers=world["headers"])).json()
            assert len(listed["results"]) == 1  # the registration is durable
            sent += await post(client, world, 5, "after")
            await receiver.wait_for(lambda r: len(first_seen(r.accepted())) >= len(sent))
    finally:
        assert server.stop() == 0
    got = first_seen(receiver.accepted())
    assert [body["data"]["id"] for body in got] == sent  # nothing lost, in log order
    assert got == sorted(got, key=log_order)
    assert all(delivery.signature_ok for delivery in receiver.deliveries)
    # delivery resumed from the saved cursor, not from the start
    again = {d.body["data"]["id"] for d in receiver.deliveries[restarted_at:]}
    assert sent[0] not in again
