"""kill -9 in a running cluster: a replica, the primary and redis-server (with its
append-only file), each at a random moment while writes flow through every node, 20
rounds in all. No acknowledged write is lost, no session on any replica sees a
channel with a gap or a reordering (resuming with since after every disconnect), and
once all are back every node reports the same digest."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bench.server import ADMIN_TOKEN, ServerProcess, start_replica
from tests.clusterproc import (
    Cluster,
    Scene,
    converged,
    make_scene,
    post_message,
    start_cluster,
    stream_equals_log,
)
from tests.redisproc import RedisProcess, redis_binary
from tests.wsclient import ws_connect

ROUNDS = 20
SEED = 19


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    redis_binary()
    redis = RedisProcess(tmp_path / "redis", appendonly=True)
    redis.directory.mkdir()
    redis.start()
    made = start_cluster(redis, "chaos", tmp_path / "primary")
    yield made
    made.stop()
    redis.stop()


@dataclass
class Watch:
    """What one replica's sessions saw of the channel, across reconnects."""

    node: ServerProcess
    seqs: list[int] = field(default_factory=list)
    log: list[tuple[int, int, str]] = field(default_factory=list)  # (session, seq, action)
    epoch: str | None = None
    sessions: int = 0
    not_resumed: int = 0


async def watch(
    watcher: Watch, channel: str, stop: trio.Event, task_status: trio.TaskStatus[None]
) -> None:
    """Keep a session on the node, resuming with the last seq seen after each drop;
    record every event. Started once the first subscribe succeeded."""
    started = False
    while not stop.is_set():
        try:
            async with ws_connect(watcher.node.base_url, ADMIN_TOKEN) as ws:
                since = watcher.seqs[-1] if watcher.seqs else None
                answer = await ws.subscribe(channel, since=since, epoch=watcher.epoch)
                if answer["type"] != "subscribed":  # still loading its snapshot
                    raise ConnectionError(answer)
                watcher.sessions += 1
                if since is not None and not answer["resumed"]:
                    watcher.not_resumed += 1
                watcher.epoch = answer["epoch"]
                if not started:
                    started = True
                    task_status.started()
                frames, ws.inbox = ws.inbox, []  # the replay may have come with the answer
                while not stop.is_set():
                    for frame in frames:
                        if "action" in frame and frame.get("channel") == channel:
                            watcher.seqs.append(frame["seq"])
                            watcher.log.append((watcher.sessions, frame["seq"], frame["action"]))
                    frames = await ws.receive_frame()
        except AssertionError:
            raise
        except Exception:  # the node died, or closed the session (1012): resume
            await trio.sleep(0.1)


async def write(
    client: httpx.AsyncClient,
    nodes: list[ServerProcess],
    scene: Scene,
    acked: list[str],
    stop: trio.Event,
) -> None:
    """Post messages through every node in turn; remember those answered 201."""
    index = 0
    while not stop.is_set():
        node = nodes[index % len(nodes)]
        text = f"w{index}"
        index += 1
        try:
            response = await post_message(client, node.base_url, scene, text)
        except httpx.HTTPError:
            await trio.sleep(0.05)
            continue
        if response.status_code == 201:
            acked.append(text)
        else:
            await trio.sleep(0.05)


async def messages_on(client: httpx.AsyncClient, node: ServerProcess, scene: Scene) -> list[str]:
    found: list[str] = []
    url: str | None = node.base_url + scene.messages + "?page_size=100"
    for _ in range(1000):
        if url is None:
            return found
        page: dict[str, Any] = (await client.get(url, headers=scene.org_headers)).json()
        found += [m["message"] for m in page["results"] if m["type"] == "msg"]
        url = page.get("next")
    raise AssertionError("more pages than expected")


async def test_kill_9_of_replicas_primary_and_redis_loses_no_acknowledged_write(
    cluster: Cluster,
) -> None:
    chooser = random.Random(SEED)
    victims = ["replica", "primary", "redis"] * 7  # 21: every kind, in a random order
    chooser.shuffle(victims)
    victims = victims[:ROUNDS]
    killed: dict[str, int] = {}
    acked: list[str] = []
    async with httpx.AsyncClient(timeout=15) as client:
        scene = await make_scene(client, cluster.primary.base_url)
        await converged(client, cluster.nodes)
        watches = [Watch(replica) for replica in cluster.replicas]
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for watcher in watches:
                await nursery.start(watch, watcher, scene.messages_channel, stop)
            nursery.start_soon(write, client, list(cluster.nodes), scene, acked, stop)
            for victim in victims:
                await trio.sleep(chooser.uniform(0.1, 0.8))  # a random moment of the flow
                killed[victim] = killed.get(victim, 0) + 1
                if victim == "redis":
                    cluster.redis.kill()
                    await trio.sleep(chooser.uniform(0.0, 0.5))
                    await trio.to_thread.run_sync(cluster.redis.start)
                elif victim == "primary":
                    port = cluster.primary.port
                    cluster.primary.kill()
                    cluster.primary = await trio.to_thread.run_sync(cluster.start_primary, port)
                else:
                    index = chooser.randrange(len(cluster.replicas))
                    old = cluster.replicas[index]
                    old.kill()
                    cluster.replicas[index] = await trio.to_thread.run_sync(
                        partial(
                            start_replica,
                            cluster.redis.url,
                            cluster.primary.base_url,
                            "--redis-prefix",
                            cluster.prefix,
                            port=old.port,
                        )
                    )
                    watches[index].node = cluster.replicas[index]
            await trio.sleep(0.5)
            stop.set()
            nursery.cancel_scope.cancel()  # the watchers may be waiting for a frame
        final = await converged(client, cluster.nodes, timeout=60)
        assert len(acked) > 20, "too few writes went through to show anything"
        for node in cluster.nodes:
            on_node = await messages_on(client, node, scene)
            missing = set(acked) - set(on_node)
            assert not missing, f"{node.base_url} lost acknowledged writes: {sorted(missing)[:5]}"
            assert len(on_node) == len(set(on_node)), "a message appears twice"
        for watcher in watches:
            # every session's events, across reconnects: contiguous seqs, no reordering
            breaks = [
                (watcher.log[i - 1], watcher.log[i])
                for i in range(1, len(watcher.log))
                if watcher.log[i][1] != watcher.log[i - 1][1] + 1
            ]
            assert not breaks, f"{watcher.node.base_url}: seq breaks {breaks[:5]}"
            assert watcher.not_resumed == 0
            assert watcher.sessions >= 1
    assert final["position"] > len(acked)
    # the stream is the primary's log: no gap, no duplicate, no reordering, same bytes
    positions = await stream_equals_log(cluster.redis.url, cluster.prefix, cluster.data_dir)
    assert positions[-1] >= final["position"]
    assert set(killed) == {"replica", "primary", "redis"}, killed
