"""A cluster of real processes for the tests: a primary (``serve --redis``) and
replicas (``chat-engine replica``) on one ``redis-server`` (tests/redisproc.py), and
the HTTP steps the cluster tests share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.server import ADMIN_TOKEN, ServerProcess, start_replica, start_server
from gateway.cluster import redislog
from persistence.follow import LogFollower, LogGap
from tests.redisproc import RedisProcess

ADMIN = {"Authorization": f"Token {ADMIN_TOKEN}"}


@dataclass
class Cluster:
    redis: RedisProcess
    prefix: str
    data_dir: Path
    primary: ServerProcess
    replicas: list[ServerProcess] = field(default_factory=list)
    primary_flags: tuple[str, ...] = ()
    replica_flags: tuple[str, ...] = ()

    @property
    def nodes(self) -> list[ServerProcess]:
        return [self.primary, *self.replicas]

    def start_primary(self, port: int | None = None) -> ServerProcess:
        flags = ("--redis", self.redis.url, "--redis-prefix", self.prefix, *self.primary_flags)
        return start_server(*flags, data_dir=self.data_dir, port=port)

    def add_replica(self, port: int | None = None) -> ServerProcess:
        replica = start_replica(
            self.redis.url,
            self.primary.base_url,
            "--redis-prefix",
            self.prefix,
            *self.replica_flags,
            port=port,
        )
        self.replicas.append(replica)
        return replica

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(
    redis: RedisProcess,
    prefix: str,
    data_dir: Path,
    *,
    replicas: int = 2,
    primary_flags: tuple[str, ...] = (),
    replica_flags: tuple[str, ...] = (),
) -> Cluster:
    """A primary on ``data_dir`` and ``replicas`` replicas, each ready."""
    cluster = Cluster(
        redis,
        prefix,
        data_dir,
        None,  # type: ignore[arg-type]  # set just below
        primary_flags=primary_flags,
        replica_flags=replica_flags,
    )
    cluster.primary = cluster.start_primary()
    try:
        for _ in range(replicas):
            cluster.add_replica()
    except BaseException:
        cluster.stop()
        raise
    return cluster


async def status(client: httpx.AsyncClient, node: ServerProcess) -> dict[str, Any]:
    answer = await client.get(node.base_url + "/internal/v1/status", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def converged(
    client: httpx.AsyncClient, nodes: list[ServerProcess], timeout: float = 30.0
) -> dict[str, Any]:
    """Wait (bounded) until every node reports the same position and digest; returns
    the primary's status. Fails naming each node's status if they never agree."""
    seen: list[dict[str, Any]] = []
    with trio.move_on_after(timeout):
        while True:
            try:
                seen = [await status(client, node) for node in nodes]
            except httpx.HTTPError:
                seen = []
            if seen and all(
                (s["position"], s["digest"], s["epoch"])
                == (seen[0]["position"], seen[0]["digest"], seen[0]["epoch"])
                for s in seen
            ):
                return seen[0]
            await trio.sleep(0.1)
    raise AssertionError(f"the nodes did not converge within {timeout} s: {seen}")


@dataclass
class Scene:
    """An org, a room, an operator and a visitor's chat the operator is present in."""

    org: dict[str, Any]
    room: dict[str, Any]
    user: dict[str, Any]
    visitor: dict[str, Any]
    chat: dict[str, Any]

    @property
    def base(self) -> str:
        return f"/api/v5/orgs/{self.org['id']}"

    @property
    def org_headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.org['token']}"}

    @property
    def messages(self) -> str:
        return f"{self.base}/chats/{self.chat['id']}/messages"

    @property
    def messages_channel(self) -> str:
        return f"{self.base}/rooms/{self.room['id']}/chats/{self.chat['id']}/messages"

    @property
    def presences(self) -> str:
        return f"{self.base}/chats/{self.chat['id']}/presences"


async def make_scene(client: httpx.AsyncClient, base_url: str) -> Scene:
    org = (
        await client.post(base_url + "/api/v5/orgs", json={"name": "Acme"}, headers=ADMIN)
    ).json()
    org_headers = {"Authorization": f"Token {org['token']}"}
    base = f"{base_url}/api/v5/orgs/{org['id']}"
    room = (await client.post(base + "/rooms", json={"name": "Sales"}, headers=org_headers)).json()
    user = (
        await client.post(
            base + "/users",
            json={"first_name": "Ada", "last_name": "Lovelace", "alias": "Ada"},
            headers=org_headers,
        )
    ).json()
    visitor = (await client.post(base + "/visitors", json={}, headers=org_headers)).json()
    chat = (
        await client.post(
            f"{base}/rooms/{room['id']}/visitors/{visitor['id']}/chats",
            params={"auto_resume": user["id"]},
            headers=org_headers,
        )
    ).json()
    return Scene(org, room, user, visitor, chat)


async def post_message(
    client: httpx.AsyncClient, base_url: str, scene: Scene, text: str
) -> httpx.Response:
    return await client.post(
        base_url + scene.messages,
        json={"sender_id": scene.user["id"], "message": text},
        headers=scene.org_headers,
    )


async def stream_equals_log(redis_url: str, prefix: str, data_dir: Path) -> list[int]:
    """Every entry of the cluster's Redis stream is the primary's log record at its
    position, byte for byte, in order, with no gap and no duplicate (where the log still
    holds the position); returns the stream's positions."""
    async with redislog.client(redis_url) as client:
        entries = await client.xrange(redislog.stream_key(prefix))
    positions = [redislog.lsn_of(entry.identifier) for entry in entries]
    assert positions, "the stream is empty"
    assert positions == list(range(positions[0], positions[0] + len(positions))), positions
    follower = LogFollower(data_dir)
    try:
        records = dict(follower.read(positions[0] - 1, positions[-1], len(positions)))
    except LogGap as gap:  # the oldest entries' segments are gone: compare the rest
        assert gap.first is not None
        records = dict(follower.read(gap.first - 1, positions[-1], len(positions)))
    assert records, "the log holds none of the stream's positions"
    for entry, lsn in zip(entries, positions, strict=True):
        if lsn in records:
            assert entry.field_values[redislog.RECORD] == records[lsn], f"entry {lsn} differs"
        else:
            assert lsn < min(records), f"the log lacks {lsn}"
    return positions
