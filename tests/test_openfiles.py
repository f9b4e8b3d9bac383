"""``serve`` and the open-files limit: the soft limit is raised to the hard one, and a
``--max-connections`` the limit cannot hold is refused at start in one line (exit 2)
instead of exhausting descriptors later, when the log needs one."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.server import ADMIN_TOKEN, free_port
from gateway.frontdoor import FD_RESERVE


def limited(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def serve(tmp_path: Path, soft: int, hard: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--in-memory", "--log-level", "info"]
        + ["--port", str(free_port()), *extra],
        env=dict(os.environ, CHAT_ENGINE_ADMIN_TOKEN=ADMIN_TOKEN),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "stderr", "wb"),  # noqa: SIM115 - closed with the process
        preexec_fn=limited(soft, hard),
    )


def test_a_cap_above_the_hard_limit_is_refused_in_one_line(tmp_path: Path) -> None:
    process = serve(tmp_path, 120, 120, "--max-connections", "1000")
    assert process.wait(timeout=20) == 2
    lines = (tmp_path / "stderr").read_text().strip().splitlines()
    refusal = lines[-1]
    assert refusal.startswith("chat-engine: --max-connections 1000 needs more open files")
    assert f"at most {120 - FD_RESERVE}" in refusal
    assert "Traceback" not in "\n".join(lines)


def test_the_soft_limit_is_raised_so_a_cap_under_the_hard_one_starts(
    tmp_path: Path,
) -> None:
    process = serve(tmp_path, 120, 2048, "--max-connections", "1000")
    try:
        port = int(process.args[process.args.index("--port") + 1])  # type: ignore[union-attr]
        ready = False
        for _ in range(600):
            assert process.poll() is None, (tmp_path / "stderr").read_text()
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                pass
            if ready:
                break
            time.sleep(0.05)  # polling another process's readiness
        assert ready
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == ["2048", "2048"]
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert '"open-files limit raised"' in (tmp_path / "stderr").read_text()


def test_a_cap_within_the_limit_is_accepted_without_a_raise_needed() -> None:
    from gateway import openfiles

    assert openfiles.cap_refusal(None) is None
    assert openfiles.cap_refusal(1) is None
    room = openfiles.most_connections()
    assert openfiles.cap_refusal(room) is None
    assert openfiles.cap_refusal(room + 1) is not None
