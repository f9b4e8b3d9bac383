"""Start a chat-engine server process for a bench run, and bootstrap data over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

ADMIN_TOKEN = "bench-admin-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class ServerProcess:
    port: int
    process: subprocess.Popen[bytes]
    data_dir: Path
    temporary: tempfile.TemporaryDirectory[str] | None = None
    args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """``kill -9``: no drain, no snapshot, nothing flushed."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        try:
            if self.process.poll() is None:
                self.process.terminate()
            try:
                return self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()
        finally:
            if self.temporary is not None:
                self.temporary.cleanup()


def start_server(
    *extra: str,
    data_dir: Path | None = None,
    startup_timeout: float = 60.0,
    log_path: Path | None = None,
    port: int | None = None,
) -> ServerProcess:
    """A server process on ``port`` (default: a free one), with write rate limits off. Without
    ``data_dir`` a temporary one is used and removed at ``stop``; a given one is kept
    (restart tests reuse it)."""
    port = port or free_port()
    temporary = None
    if data_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="chat-engine-bench-")
        data_dir = Path(temporary.name)
    # BENCH_PROFILE=out.prof runs the server under cProfile (written at its clean stop)
    profile = (
        ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
        if "BENCH_PROFILE" in os.environ
        else []
    )
    args = [
        sys.executable,
        *profile,
        "-m",
        "gateway.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        "info" if log_path else "warning",
        # the scenarios measure the engine, and fire far more writes per user than a
        # person would: the per-token write limit (docs/edge.md) would refuse them
        "--rate-limit",
        "off",
        # and open thousands of sessions (and connections) from 127.0.0.1, often with
        # one token
        "--ws-sessions-per-token",
        "off",
        "--ws-sessions-per-address",
        "off",
        "--http-connections-per-address",
        "off",
        *extra,
    ]
    return _launch("server", args, port, data_dir, temporary, startup_timeout, log_path)


def start_replica(
    redis_url: str,
    primary: ServerProcess | str,
    *extra: str,
    port: int | None = None,
    startup_timeout: float = 60.0,
    log_path: Path | None = None,
) -> ServerProcess:
    """A ``chat-engine replica`` process following ``primary`` (a server started with
    ``start_server("--redis", redis_url)``, or its URL) through Redis; ready once it has
    loaded the primary's snapshot and caught up. Its ``data_dir`` is unused (a replica
    keeps nothing on disk)."""
    port = port or free_port()
    primary_url = primary if isinstance(primary, str) else primary.base_url
    args = [
        sys.executable,
        "-m",
        "gateway.cli",
        "replica",
        "--port",
        str(port),
        "--redis",
        redis_url,
        "--primary",
        primary_url,
        "--log-level",
        "info" if log_path else "warning",
        "--ws-sessions-per-token",
        "off",
        "--ws-sessions-per-address",
        "off",
        "--http-connections-per-address",
        "off",
        *extra,
    ]
    return _launch("replica", args, port, Path(os.devnull), None, startup_timeout, log_path)


def _launch(
    what: str,
    args: list[str],
    port: int,
    data_dir: Path,
    temporary: tempfile.TemporaryDirectory[str] | None,
    startup_timeout: float,
    log_path: Path | None,
) -> ServerProcess:
    """Start ``args`` with the bench's admin token and wait (bounded) for its /readyz."""
    env = dict(os.environ, CHAT_ENGINE_ADMIN_TOKEN=ADMIN_TOKEN)
    stderr = open(log_path, "ab") if log_path else None  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    server = ServerProcess(port, process, data_dir, temporary, args)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{what} did not become ready")


class BenchError(RuntimeError):
    """A run that cannot go on, said in one line (``python -m bench`` exits 1 with it)."""


def created(response: httpx.Response) -> Any:
    """The JSON of a setup call's answer; a refusal stops the run, naming the call."""
    if not response.is_success:
        request = response.request
        raise BenchError(
            f"{request.method} {request.url} answered {response.status_code}: {response.text[:200]}"
        )
    return response.json()


class Writable(Protocol):
    """Where a scenario's setup writes go: a server it started, or a deployment."""

    @property
    def base_url(self) -> str: ...


def admin_headers(target: Writable) -> dict[str, str]:
    return {"Authorization": f"Token {getattr(target, 'token', ADMIN_TOKEN)}"}


def bootstrap(
    target: Writable, *, chats: int, users: int = 4, name: str = "Bench"
) -> dict[str, Any]:
    """An org, a room, some operators, and ``chats`` chats each with one operator present."""
    with httpx.Client(
        base_url=target.base_url, headers=admin_headers(target), timeout=30
    ) as client:
        org = created(client.post("/api/v5/orgs", json={"name": name}))
        base = f"/api/v5/orgs/{org['id']}"
        room = created(client.post(f"{base}/rooms", json={"name": "Bench room"}))
        made = [
            created(
                client.post(
                    f"{base}/users",
                    json={"first_name": f"Op{i}", "last_name": "Bench", "alias": f"op{i}"},
                )
            )
            for i in range(users)
        ]
        chat_ids = []
        for index in range(chats):
            visitor = created(client.post(f"{base}/visitors", json={}))
            user = made[index % users]
            chat = created(
                client.post(
                    f"{base}/rooms/{room['id']}/visitors/{visitor['id']}/chats",
                    params={"auto_resume": user["id"]},
                )
            )
            chat_ids.append((chat["id"], user["id"]))
    return {"org": org, "room": room, "users": made, "chats": chat_ids}
