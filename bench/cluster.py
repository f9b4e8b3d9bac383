"""A cluster for a bench run: a ``redis-server`` (``bench.redisproc``: from PATH, on a
free port of 127.0.0.1, in a temporary directory), a primary (``serve --redis``) and K
replicas (``chat-engine replica``), each its own process, all stopped at the end.

Without ``redis-server`` on PATH the run stops with one line naming the package
(Debian: ``redis-server``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.client import loopback
from bench.deployment import Deployment
from bench.redisproc import TemporaryRedis, start_redis
from bench.server import ADMIN_TOKEN, ServerProcess, free_port, start_replica, start_server

PREFIX = "bench"


@dataclass
class Cluster:
    redis: TemporaryRedis
    primary: ServerProcess
    replicas: list[ServerProcess] = field(default_factory=list)

    @property
    def nodes(self) -> list[ServerProcess]:
        return [self.primary, *self.replicas]

    def pids(self) -> list[int]:
        """Every process of the cluster, Redis included (its CPU is the cluster's too)."""
        return [node.process.pid for node in self.nodes] + [self.redis.pid]

    def names(self) -> list[str]:
        return ["primary", *(f"replica{n}" for n in range(1, len(self.replicas) + 1)), "redis"]

    def on_replicas(self) -> Deployment:
        """Sessions spread over the replicas, writes to the primary."""
        return Deployment(
            [loopback(replica.port) for replica in self.replicas],
            loopback(self.primary.port),
            ADMIN_TOKEN,
            self.pids(),
            self.names(),
        )

    def on_primary(self) -> Deployment:
        """Sessions and writes on the primary: its own fan-out, the baseline."""
        primary = loopback(self.primary.port)
        return Deployment([primary], primary, ADMIN_TOKEN, self.pids(), self.names())

    def stop(self) -> None:
        try:
            for node in reversed(self.nodes):
                node.stop()
        finally:
            self.redis.stop()


def start_cluster(
    replicas: int, *primary_flags: str, replica_flags: tuple[str, ...] = ()
) -> Cluster:
    """Redis, a primary shipping to it, and ``replicas`` replicas following it."""
    redis = start_redis()
    try:
        primary = start_server("--redis", redis.url, "--redis-prefix", PREFIX, *primary_flags)
    except BaseException:
        redis.stop()
        raise
    cluster = Cluster(redis, primary)
    try:
        for _ in range(replicas):
            cluster.replicas.append(
                start_replica(
                    redis.url,
                    primary,
                    "--redis-prefix",
                    PREFIX,
                    *replica_flags,
                    port=free_port(),
                )
            )
    except BaseException:
        cluster.stop()
        raise
    return cluster
