"""Real `chat-engine serve` processes for the data-directory and damage tests: started
with a given environment, port and umask, and either ready or exited (a refusal)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.server import ADMIN_TOKEN, free_port

HEADERS = {"Authorization": f"Token {ADMIN_TOKEN}"}


@dataclass
class Outcome:
    process: subprocess.Popen[bytes]
    port: int
    ready: bool
    returncode: int | None
    stderr_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def launch(
    data_dir: Path,
    *extra: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    umask: int = -1,
    admin_token: bool | str = True,  # a string: that token instead of the bench's
    stderr_path: Path | None = None,
    timeout: float = 30.0,
) -> Outcome:
    """Start a server and wait until it is ready or has exited (within ``timeout``)."""
    port = port or free_port()
    environment = dict(os.environ, **(env or {}))
    environment.pop("CHAT_ENGINE_ADMIN_TOKEN", None)
    if admin_token:
        token = admin_token if isinstance(admin_token, str) else ADMIN_TOKEN
        environment["CHAT_ENGINE_ADMIN_TOKEN"] = token
    stderr_path = stderr_path or data_dir.with_name(data_dir.name + ".stderr")
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--log-level",
                "warning",
                *extra,
            ],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            umask=umask,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return Outcome(process, port, False, process.returncode, stderr_path)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return Outcome(process, port, True, None, stderr_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    process.kill()
    process.wait()
    raise AssertionError(f"server neither ready nor exited within {timeout} s")


def files(directory: Path) -> dict[str, bytes]:
    """Every file of a data directory and its bytes, but the lock (created if missing,
    and naming the pid of the last process that claimed the directory). Modes are left
    out on purpose: a start tightens them before it reads anything (docs/durability.md),
    so a refused start may have tightened a loose one."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != "lock"
    }
