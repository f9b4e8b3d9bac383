"""The cluster with real processes: a primary, two replicas and a real redis-server.

Events carry the primary's seqs on every node, a client resumes on another node with
the since and epoch it saw, a write sent to a replica is answered once that replica
shows it, a second primary on the same prefix refuses, a replica whose place was
trimmed from the stream reloads and converges, and a replica's WebSocket session keeps
its user's presences alive on the primary.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from bench.server import ADMIN_TOKEN, free_port
from tests.clusterproc import (
    ADMIN,
    Cluster,
    converged,
    make_scene,
    post_message,
    start_cluster,
    status,
)
from tests.redisproc import RedisProcess
from tests.test_webhooks import SECRET
from tests.webhook_receiver import Receiver
from tests.wsclient import ws_connect


@pytest.fixture(scope="module")
def shared(redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests that leave it as they found it (each its own org)."""
    made = start_cluster(redis, f"test-shared-{free_port()}", tmp_path_factory.mktemp("primary"))
    yield made
    made.stop()


@pytest.fixture
def cluster(
    redis: RedisProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    flags = getattr(request, "param", {})
    made = start_cluster(
        redis,
        f"test-{request.node.name[:40]}-{free_port()}",
        tmp_path / "primary",
        primary_flags=flags.get("primary", ()),
        replica_flags=flags.get("replica", ()),
    )
    yield made
    made.stop()


def added(frame: dict[str, Any]) -> bool:
    return frame.get("action") == "added"


async def test_events_carry_the_primarys_seq_on_every_node_and_resume_on_another(
    shared: Cluster,
) -> None:
    primary, a, b = shared.nodes
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, primary.base_url)
        await converged(client, shared.nodes)
        channel = scene.messages_channel
        async with (
            ws_connect(primary.base_url, ADMIN_TOKEN) as on_primary,
            ws_connect(b.base_url, ADMIN_TOKEN) as on_b,
        ):
            async with ws_connect(a.base_url, ADMIN_TOKEN) as on_a:
                answers = [await ws.subscribe(channel) for ws in (on_primary, on_a, on_b)]
                assert len({(x["seq"], x["epoch"]) for x in answers}) == 1, answers
                response = await post_message(client, primary.base_url, scene, "hello")
                assert response.status_code == 201, response.text
                events = [await ws.until(added) for ws in (on_primary, on_a, on_b)]
                assert {(e["seq"], e["resource_id"]) for e in events} == {
                    (answers[0]["seq"] + 1, response.json()["id"])
                }
                since, epoch = events[1]["seq"], answers[1]["epoch"]
            # A's client is gone; three more messages, then it resumes on B
            texts = ["one", "two", "three"]
            for text in texts:
                assert (await post_message(client, primary.base_url, scene, text)).is_success
            await converged(client, shared.nodes)
            async with ws_connect(b.base_url, ADMIN_TOKEN) as resumed:
                answer = await resumed.subscribe(channel, since=since, epoch=epoch)
                assert answer["resumed"] is True and answer["seq"] == since + 3
                await resumed.barrier()
                replayed = resumed.take_events()
            assert [(e["seq"], e["resource"]["message"]) for e in replayed] == [
                (since + 1, "one"),
                (since + 2, "two"),
                (since + 3, "three"),
            ]
            # B's live session saw the same events with the same seqs
            live = [await on_b.until(added) for _ in texts]
            assert [(e["seq"], e["resource"]["message"]) for e in live] == [
                (e["seq"], e["resource"]["message"]) for e in replayed
            ]


async def test_a_write_sent_to_a_replica_is_answered_once_that_replica_shows_it(
    shared: Cluster,
) -> None:
    primary, a, _ = shared.nodes
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, a.base_url)  # every write forwarded
        for index in range(20):
            response = await post_message(client, a.base_url, scene, f"message {index}")
            assert response.status_code == 201, response.text
            # read right away on the same replica: the write is there
            history = await client.get(a.base_url + scene.messages, headers=scene.org_headers)
            assert response.json()["id"] in [m["id"] for m in history.json()["results"]]
        # the primary's own answer names the position that carries a write
        direct = await post_message(client, primary.base_url, scene, "direct")
        position = int(direct.headers["Chat-Engine-Position"])
        # (a presence expiring meanwhile may add a record after it)
        assert position <= (await status(client, primary))["position"]
        # errors come back as the primary gave them
        refused = await client.post(
            a.base_url + scene.messages, json={"message": "x"}, headers=scene.org_headers
        )
        assert refused.status_code == 400 and refused.json()["code"] == "invalid"
        unauthenticated = await client.post(a.base_url + "/api/v5/orgs", json={"name": "x"})
        assert unauthenticated.status_code == 401
        final = await converged(client, shared.nodes)
        assert final["role"] == "primary"
        roles = [(await status(client, node))["role"] for node in shared.nodes]
        assert roles == ["primary", "replica", "replica"]


async def test_writes_on_a_replica_are_unavailable_while_the_primary_is_down_reads_go_on(
    cluster: Cluster,
) -> None:
    primary, a, _ = cluster.nodes
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, primary.base_url)
        await converged(client, cluster.nodes)
        primary.kill()
        refused = await post_message(client, a.base_url, scene, "while down")
        assert refused.status_code == 503 and refused.json()["code"] == "unavailable"
        history = await client.get(a.base_url + scene.messages, headers=scene.org_headers)
        assert history.status_code == 200
        assert (await client.get(a.base_url + "/readyz")).status_code == 200


def test_a_second_primary_on_the_same_prefix_refuses_to_start(
    shared: Cluster, tmp_path: Path
) -> None:
    cluster = shared
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "second"),
            "--redis",
            cluster.redis.url,
            "--redis-prefix",
            cluster.prefix,
        ],
        env={"CHAT_ENGINE_ADMIN_TOKEN": ADMIN_TOKEN, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another primary holds the Redis prefix" in lines[0], lines
    # the first goes on serving
    assert httpx.get(cluster.primary.base_url + "/readyz").status_code == 200


@pytest.mark.parametrize("cluster", [{"primary": ("--redis-log-length", "100")}], indirect=True)
async def test_a_replica_trimmed_out_of_the_stream_reloads_and_converges(
    cluster: Cluster,
) -> None:
    primary, a, b = cluster.nodes
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, primary.base_url)
        await converged(client, cluster.nodes)
        async with ws_connect(b.base_url, ADMIN_TOKEN) as session:
            await session.subscribe(scene.messages_channel)
            b_position = (await status(client, b))["position"]
            b.process.send_signal(19)  # SIGSTOP: B keeps its place but reads nothing
            try:
                for index in range(400):
                    assert (
                        await post_message(client, primary.base_url, scene, f"m{index}")
                    ).is_success
                # the stream no longer holds B's next record
                first = cluster.redis.command(
                    "XRANGE", f"{cluster.prefix}:log", "-", "+", "COUNT", "1"
                )
                oldest = int(first.split(b"-0\r\n")[0].rsplit(b"\n", 1)[-1])
                assert oldest > b_position + 1, (oldest, b_position)
            finally:
                b.process.send_signal(18)  # SIGCONT
            # B's sessions are closed with 1012 (resume with since), and B converges
            with trio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
                while True:
                    session.inbox += await session.receive_frame()
            assert closed.value.reason.code == 1012
        final = await converged(client, cluster.nodes)
        assert final["position"] >= 400
        metrics = (await client.get(b.base_url + "/metrics")).text
        reloads = [
            line
            for line in metrics.splitlines()
            if line.startswith("chat_engine_replica_bootstraps_total ")
        ]
        assert float(reloads[0].split()[1]) >= 2  # the first load, and at least one reload
        assert "chat_engine_replica_lag_records 0.0" in metrics


@pytest.mark.parametrize(
    "cluster",
    [{"primary": ("--presence-timeout", "5"), "replica": ("--presence-timeout", "5")}],
    indirect=True,
)
async def test_a_session_on_a_replica_keeps_its_users_presence_and_loses_it_after(
    cluster: Cluster,
) -> None:
    primary, a, _ = cluster.nodes
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, primary.base_url)  # Ada present (auto_resume)

        async def present() -> bool:
            listing = await client.get(
                primary.base_url + scene.presences, headers=scene.org_headers
            )
            return scene.user["id"] in [p["user_id"] for p in listing.json()["results"]]

        assert await present()
        async with ws_connect(a.base_url, scene.user["token"]):
            # more than two timeouts, with Ada's only sign of life on the replica: the
            # presence stays at every look (a report every second, each one enough)
            for _ in range(12):
                await trio.sleep(1)
                assert await present()
        # once the session is gone, the presence goes a timeout after Ada was last seen
        # on the replica (not a timeout after its last report); the bound leaves room
        with trio.fail_after(20):
            while await present():
                await trio.sleep(0.2)
        await converged(client, cluster.nodes)


async def test_an_in_memory_primary_serves_while_redis_is_down_and_ships_the_backlog(
    tmp_path: Path,
) -> None:
    redis = RedisProcess(tmp_path / "redis")  # no persistence: a restart loses the stream
    redis.directory.mkdir()
    redis.start()
    made = start_cluster(
        redis, "memory", tmp_path / "unused", replicas=1, primary_flags=("--in-memory",)
    )
    try:
        primary, replica = made.nodes
        async with httpx.AsyncClient(timeout=30) as client:
            scene = await make_scene(client, primary.base_url)
            await converged(client, made.nodes)
            redis.kill()
            for index in range(30):  # the primary answers every write meanwhile
                response = await post_message(client, primary.base_url, scene, f"m{index}")
                assert response.status_code == 201, response.text
            redis.start()  # empty: the primary ships again what the stream lost
            final = await converged(client, made.nodes)
            history = await client.get(
                replica.base_url + scene.messages + "?page_size=100", headers=scene.org_headers
            )
            texts = [m["message"] for m in history.json()["results"] if m["type"] == "msg"]
            assert texts == [f"m{index}" for index in range(30)]
            assert final["position"] == (await status(client, replica))["position"]
            # shipped again, not reloaded: the replica went on from where it was
            metrics = (await client.get(replica.base_url + "/metrics")).text
            assert "chat_engine_replica_bootstraps_total 1.0" in metrics
    finally:
        made.stop()
        redis.stop()


async def test_a_new_primary_history_makes_the_replicas_reload(
    redis: RedisProcess, tmp_path: Path
) -> None:
    made = start_cluster(redis, f"epoch-{free_port()}", tmp_path / "first", replicas=1)
    try:
        primary, replica = made.nodes
        async with httpx.AsyncClient(timeout=30) as client:
            scene = await make_scene(client, primary.base_url)
            before = await converged(client, made.nodes)
            async with ws_connect(replica.base_url, ADMIN_TOKEN) as session:
                answer = await session.subscribe(scene.messages_channel)
                assert answer["type"] == "subscribed"
                # a clean stop gives the lease up: a primary on another data directory
                # (another history, another epoch) starts at once on the same prefix
                assert primary.stop() == 0
                made.data_dir = tmp_path / "second"
                made.primary = made.start_primary(port=primary.port)
                await make_scene(client, made.primary.base_url)
                with trio.fail_after(30), pytest.raises(ConnectionClosed) as closed:
                    while True:
                        session.inbox += await session.receive_frame()
                assert closed.value.reason.code == 1012
            after = await converged(client, made.nodes)
            assert after["epoch"] != before["epoch"]
            orgs = await client.get(replica.base_url + "/api/v5/orgs", headers=ADMIN)
            assert len(orgs.json()["results"]) == 1  # the new history's only
    finally:
        made.stop()


@pytest.mark.parametrize(
    "cluster", [{"primary": ("--webhook-allow", "127.0.0.1", "--rate-limit", "off")}], indirect=True
)
async def test_webhooks_registered_on_a_replica_are_delivered_by_the_primary_alone(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    """A replica forwards the registration to the primary (whose --webhook-allow
    applies), only the primary delivers (each event arrives once, not once per node),
    and the deliveries view read on a replica is the primary's."""
    _, replica, _ = cluster.nodes
    target = Receiver(SECRET)
    await nursery.start(target.run)
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, replica.base_url)
        hook = await client.post(
            replica.base_url + scene.base + "/webhooks",
            json={"url": target.url, "events": ["message.created"], "secret": SECRET},
            headers=scene.org_headers,
        )
        assert hook.status_code == 201, hook.text
        sent = []
        for index in range(5):
            response = await post_message(client, replica.base_url, scene, f"hooked {index}")
            assert response.status_code == 201, response.text
            sent.append(response.json()["id"])
        await target.wait_for(lambda r: sent[-1] in [b["data"]["id"] for b in r.accepted()])
        await converged(client, cluster.nodes)
        bodies = [body for body in target.accepted() if body["data"]["id"] in sent]
        assert [body["data"]["id"] for body in bodies] == sent  # once each, in order
        assert all(d.signature_ok for d in target.deliveries)
        view = await client.get(
            f"{replica.base_url}{scene.base}/webhooks/{hook.json()['id']}/deliveries",
            headers=scene.org_headers,
        )
        assert view.status_code == 200, view.text
        delivered = [a["event_id"] for a in view.json()["results"] if a["outcome"] == "delivered"]
        assert [body["id"] for body in bodies] == delivered[::-1][-len(sent) :]
