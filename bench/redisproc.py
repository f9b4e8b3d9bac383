"""A private ``redis-server``: from PATH, on a free port of 127.0.0.1, in a directory of
its own, no snapshots (and, unless asked, no append-only file), stopped afterwards.

The one place a Redis is started: bench runs (``bench/cluster.py``: ``start_redis``)
and the tests (``tests/redisproc.py``, which skips a test without one) both use it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.server import BenchError, free_port

START_SECONDS = 10.0
MISSING = "redis-server is not on PATH (Debian: apt-get install redis-server)"


@dataclass
class RedisProcess:
    directory: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def binary(self) -> str:
        found = shutil.which("redis-server")
        if found is None:
            raise BenchError(MISSING)
        return found

    def start(self, timeout: float = START_SECONDS) -> None:
        """Start (or restart, on the same port and directory) and wait until it answers."""
        args = [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.directory), "--save", "", "--daemonize", "no"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"redis-server exited with {self.process.returncode}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise BenchError(f"redis-server did not answer within {timeout:g} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                return probe.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        """One command in RESP, its raw answer (to read a key or two)."""
        request = f"*{len(words)}\r\n".encode() + b"".join(
            f"${len(word.encode())}\r\n{word}\r\n".encode() for word in words
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            connection.sendall(request)
            return connection.recv(65536)

    def kill(self) -> None:
        """``kill -9``."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class TemporaryRedis(RedisProcess):
    """A ``RedisProcess`` in a temporary directory, removed when it stops."""

    temporary: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self.temporary is not None:
                self.temporary.cleanup()
                self.temporary = None


def start_redis() -> TemporaryRedis:
    """A throw-away ``redis-server`` (a bench run's): no persistence, 127.0.0.1 only."""
    temporary = tempfile.TemporaryDirectory(prefix="chat-engine-bench-redis-")
    server = TemporaryRedis(Path(temporary.name), temporary=temporary)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
