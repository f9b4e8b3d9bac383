"""A cluster for a bench run: a ``redis-server`` (from PATH, on a free port of 127.0.0.1,
in a temporary directory), a primary (``serve --redis``) and K replicas
(``chat-engine replica``), each its own process, all stopped at the end.

Without ``redis-server`` on PATH the run stops with one line naming the package
(Debian: ``redis-server``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import loopback
from bench.deployment import Deployment
from bench.server import (
    ADMIN_TOKEN,
    BenchError,
    ServerProcess,
    free_port,
    start_replica,
    start_server,
)

REDIS_START_SECONDS = 10.0
PREFIX = "bench"


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    directory: tempfile.TemporaryDirectory[str]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        finally:
            self.directory.cleanup()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
            probe.sendall(b"PING\r\n")
            return probe.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis() -> RedisServer:
    """A throw-away ``redis-server``: no persistence, 127.0.0.1 only."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError(
            "--replicas needs redis-server on PATH (Debian: apt-get install redis-server)"
        )
    directory = tempfile.TemporaryDirectory(prefix="chat-engine-bench-redis-")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory.name]
    args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    log = open(Path(directory.name) / "redis.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = RedisServer(process, port, directory)
    deadline = time.monotonic() + REDIS_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            raise BenchError(f"redis-server exited with {process.returncode}")
        if _answers(port):
            return server
        time.sleep(0.02)
    server.stop()
    raise BenchError(f"redis-server did not answer within {REDIS_START_SECONDS:g} s")


@dataclass
class Cluster:
    redis: RedisServer
    primary: ServerProcess
    replicas: list[ServerProcess] = field(default_factory=list)

    @property
    def nodes(self) -> list[ServerProcess]:
        return [self.primary, *self.replicas]

    def pids(self) -> list[int]:
        """Every process of the cluster, Redis included (its CPU is the cluster's too)."""
        return [node.process.pid for node in self.nodes] + [self.redis.process.pid]

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
