"""The cluster when something is wrong, with real processes and a real redis-server: a
primary that does not hold the lease never touches the stream and takes no writes, a
bad entry on the stream is replaced and the replicas reload, a stream of another
history does not make the replicas reload in a loop, a hung primary bounds a forwarded
write, a replica that never read the stream is not ready, and a replica's reachability
report of thousands of users reaches the primary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import coredis
import httpx
import pytest
import trio

from bench.server import ADMIN_TOKEN, free_port, start_server
from engine.actors.supervisor import Engine, EngineConfig
from gateway.cluster import redislog
from gateway.cluster.replica import Replica
from tests.clusterproc import (
    ADMIN,
    Cluster,
    converged,
    make_scene,
    post_message,
    start_cluster,
    stream_equals_log,
)
from tests.redisproc import RedisProcess


@pytest.fixture
def cluster(redis: RedisProcess, tmp_path: Path) -> Iterator[Cluster]:
    made = start_cluster(redis, f"faults-{free_port()}", tmp_path / "primary", replicas=1)
    yield made
    made.stop()


async def metric(client: httpx.AsyncClient, base_url: str, name: str) -> float:
    for line in (await client.get(base_url + "/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def test_a_primary_that_loses_the_lease_takes_no_writes_and_leaves_the_stream(
    cluster: Cluster,
) -> None:
    primary, replica = cluster.nodes
    lease = redislog.lease_key(cluster.prefix)
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, primary.base_url)
        # a forwarded write names its position once
        forwarded = await post_message(client, replica.base_url, scene, "through the replica")
        assert forwarded.status_code == 201
        assert len(forwarded.headers.get_list("chat-engine-position")) == 1
        await converged(client, cluster.nodes)
        assert await metric(client, primary.base_url, "chat_engine_primary_lease_held") == 1
        length = cluster.redis.command("XLEN", redislog.stream_key(cluster.prefix))
        # another primary takes the lease (as after a pause longer than the lease)
        cluster.redis.command("SET", lease, "other:primary", "PX", "60000")
        with trio.fail_after(20):
            while (await client.get(primary.base_url + "/readyz")).status_code == 200:
                await trio.sleep(0.1)
        refused = await post_message(client, primary.base_url, scene, "split brain")
        assert refused.status_code == 503 and refused.json()["code"] == "unavailable"
        assert await metric(client, primary.base_url, "chat_engine_primary_lease_held") == 0
        assert cluster.redis.command("XLEN", redislog.stream_key(cluster.prefix)) == length
        # the other one is gone: this primary takes the lease back and writes again
        cluster.redis.command("DEL", lease)
        with trio.fail_after(20):
            while (await client.get(primary.base_url + "/readyz")).status_code != 200:
                await trio.sleep(0.1)
        assert (await post_message(client, primary.base_url, scene, "back")).status_code == 201
        await converged(client, cluster.nodes)
        await stream_equals_log(cluster.redis.url, cluster.prefix, cluster.data_dir)


async def test_a_primary_started_while_redis_hangs_does_not_take_the_stream(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary, replica = cluster.nodes
    stream = redislog.stream_key(cluster.prefix)
    async with httpx.AsyncClient(timeout=30) as client:
        await make_scene(client, primary.base_url)
        await converged(client, cluster.nodes)
        first = cluster.redis.command("XRANGE", stream, "-", "+", "COUNT", "1")
        assert cluster.redis.process is not None
        cluster.redis.process.send_signal(signal.SIGSTOP)
        try:  # it cannot ask Redis, so it serves alone for now
            second = start_server(
                "--redis", cluster.redis.url, "--redis-prefix", cluster.prefix,
                data_dir=tmp_path / "second",
            )  # fmt: skip
        finally:
            cluster.redis.process.send_signal(signal.SIGCONT)
        try:
            with trio.fail_after(30):
                while (await client.get(second.base_url + "/readyz")).status_code == 200:
                    await trio.sleep(0.1)
            assert (await client.post(second.base_url + "/api/v5/orgs", json={"name": "B"}, headers={
                "Authorization": f"Token {ADMIN_TOKEN}"})).status_code == 503  # fmt: skip
            assert cluster.redis.command("XRANGE", stream, "-", "+", "COUNT", "1") == first
        finally:
            second.stop()
        await make_scene(client, primary.base_url)
        await converged(client, cluster.nodes)
        await stream_equals_log(cluster.redis.url, cluster.prefix, cluster.data_dir)


async def test_an_entry_that_does_not_decode_is_replaced_and_the_replica_reloads(
    cluster: Cluster,
) -> None:
    primary, replica = cluster.nodes
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, primary.base_url)
        state = await converged(client, cluster.nodes)
        cluster.redis.command(
            "XADD", redislog.stream_key(cluster.prefix), f"{state['position'] + 1}-0",
            "e", state["epoch"], "r", "garbage", "t", "0",
        )  # fmt: skip
        for text in ("one", "two"):
            assert (await post_message(client, primary.base_url, scene, text)).status_code == 201
        final = await converged(client, cluster.nodes)
        assert final["position"] == state["position"] + 2
        await stream_equals_log(cluster.redis.url, cluster.prefix, cluster.data_dir)
        # ready again once it has read the stream after its last reload (equal digests
        # can come from the reload's snapshot, a moment before that first read)
        with trio.fail_after(30):
            while (await client.get(replica.base_url + "/readyz")).status_code != 200:
                await trio.sleep(0.1)


async def test_a_stream_of_another_history_makes_no_reload_loop(cluster: Cluster) -> None:
    primary, replica = cluster.nodes
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, primary.base_url)
        await converged(client, cluster.nodes)
        cluster.redis.command(
            "XADD", redislog.stream_key(cluster.prefix), "100000-0",
            "e", "otherepoch", "r", "x", "t", "0",
        )  # fmt: skip
        # the replica's next look at the head (every 0.5 s) sees it; before, it loaded
        # about 25 snapshots a second until the primary wrote again
        await trio.sleep(5)
        assert await metric(client, replica.base_url, "chat_engine_replica_bootstraps_total") <= 3
        # the primary's next write starts the stream over; the replica follows it
        assert (await post_message(client, primary.base_url, scene, "after")).status_code == 201
        await converged(client, cluster.nodes)


async def test_a_write_forwarded_to_a_hung_primary_ends_within_the_bound(
    cluster: Cluster,
) -> None:
    primary, replica = cluster.nodes
    async with httpx.AsyncClient(timeout=60) as client:
        scene = await make_scene(client, primary.base_url)
        await converged(client, cluster.nodes)
        primary.process.send_signal(signal.SIGSTOP)
        try:
            with trio.fail_after(25):  # 10 s, and room for a slow machine
                answer = await post_message(client, replica.base_url, scene, "hung")
        finally:
            primary.process.send_signal(signal.SIGCONT)
        assert answer.status_code == 503
        assert "may have been made" in answer.json()["detail"]  # not "try again"
        await converged(client, cluster.nodes)


async def test_a_replica_that_never_read_the_stream_is_not_ready(cluster: Cluster) -> None:
    args = [
        sys.executable, "-m", "gateway.cli", "replica", "--port", str(port := free_port()),
        "--redis", "redis://127.0.0.1:1/0", "--primary", cluster.primary.base_url,
    ]  # fmt: skip
    env = dict(os.environ, CHAT_ENGINE_ADMIN_TOKEN=ADMIN_TOKEN)
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            with trio.fail_after(60):  # the snapshot is loaded, the stream never read
                while True:
                    try:
                        answer = await client.get(f"http://127.0.0.1:{port}/readyz")
                        if "Redis stream" in answer.text:
                            break
                    except httpx.HTTPError:
                        pass
                    await trio.sleep(0.1)
            assert answer.status_code == 503
            connected = "chat_engine_replica_redis_connected"
            assert await metric(client, f"http://127.0.0.1:{port}", connected) == 0
    finally:
        process.terminate()
        process.wait(timeout=20)


async def test_a_report_of_thousands_of_reachable_users_reaches_the_primary(
    cluster: Cluster,
) -> None:
    primary, replica_node = cluster.nodes
    # given a longer timeout than the primary's (the default, 120 s)
    engine = Engine(EngineConfig(presence_timeout=600, replica=True))
    replica = Replica(
        engine,
        redis_url=cluster.redis.url,
        prefix=cluster.prefix,
        primary=primary.base_url,
        admin_token=ADMIN_TOKEN,
        max_lag=100,
    )
    ages = {str(uuid.uuid4()): 12.5 for _ in range(2500)}  # well over one 64 KiB body
    try:
        assert await replica.report(ages) == len(ages)  # every body taken
        # it reports often enough for the primary's timeout, the smaller one
        assert replica.primary_presence_timeout == 120
        assert replica.presence_timeout() == 120
    finally:
        await replica.aclose()
    async with httpx.AsyncClient(timeout=30) as client:
        scene = await make_scene(client, primary.base_url)
        route = "/internal/v1/reachability"
        body = {"users": {scene.user["id"]: 0, "x" * 60_000: 0, str(uuid.uuid4()): 1}}
        answer = await client.post(primary.base_url + route, json=body, headers=ADMIN)
        assert answer.status_code == 200 and answer.json()["users"] == 1  # known ids only
        # a replica takes no reports: only the primary expires presences
        answer = await client.post(replica_node.base_url + route, json=body, headers=ADMIN)
        assert answer.status_code == 403


def test_the_coredis_logger_says_no_traceback_per_retry() -> None:
    import logging

    assert redislog.log.name == "chat_engine.cluster"
    assert logging.getLogger("coredis").getEffectiveLevel() > logging.ERROR
    assert coredis is not None


async def test_a_write_through_a_replica_after_the_primary_changed_history_reads_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary, replica = cluster.nodes
    async with httpx.AsyncClient(timeout=30) as client:
        await make_scene(client, primary.base_url)
        old = await converged(client, cluster.nodes)
        # a clean stop gives the lease up; a new data directory is a new history whose
        # positions start again below the replica's
        assert primary.stop() == 0
        cluster.data_dir = tmp_path / "replaced"
        cluster.primary = cluster.start_primary(port=primary.port)
        stream = redislog.stream_key(cluster.prefix)
        with trio.fail_after(30):  # the new primary started the stream over
            while old["epoch"].encode() in cluster.redis.command("XRANGE", stream, "-", "+"):
                await trio.sleep(0.1)
        made = await client.post(
            replica.base_url + "/api/v5/orgs", json={"name": "New"}, headers=ADMIN
        )
        assert made.status_code == 201, made.text
        assert len(made.headers.get_list("chat-engine-epoch")) == 1
        # read back on the replica at once: the new history, not the old one
        read = await client.get(
            replica.base_url + f"/api/v5/orgs/{made.json()['id']}", headers=ADMIN
        )
        assert read.status_code == 200
        await converged(client, cluster.nodes)


async def test_after_redis_comes_back_empty_only_what_the_stream_keeps_is_shipped(
    tmp_path: Path,
) -> None:
    redis = RedisProcess(tmp_path / "redis")  # no persistence: a restart loses the stream
    redis.directory.mkdir()
    redis.start()
    made = start_cluster(
        redis,
        "empty",
        tmp_path / "primary",
        replicas=1,
        primary_flags=("--redis-log-length", "100"),
    )
    try:
        primary, replica = made.nodes
        async with httpx.AsyncClient(timeout=30) as client:
            scene = await make_scene(client, primary.base_url)
            for index in range(250):
                assert (await post_message(client, primary.base_url, scene, f"m{index}")).is_success
            before = await converged(client, made.nodes)
            redis.kill()
            redis.start()  # empty
            assert (await post_message(client, primary.base_url, scene, "after")).is_success
            final = await converged(client, made.nodes)
            assert final["position"] == before["position"] + 1
            positions = await stream_equals_log(redis.url, "empty", made.data_dir)
            # the last 100 or so, not the whole log again from position 1
            assert positions[0] >= before["position"] - 100, positions[:3]
    finally:
        made.stop()
        redis.stop()
