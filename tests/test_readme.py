"""The README's walk-through, run as written against a real server: its shell blocks
(all but the one that starts the server) are executed by bash with curl and jq, with only
the port, the admin token and the Python interpreter swapped for the test's, and what
the walk-through promises is checked in what they print."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serverproc import ADMIN_TOKEN, launch

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("bash", "curl", "jq")


def walk_through_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Walk-through") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def test_the_readme_walk_through_runs_as_written(tmp_path: Path) -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CHAT_ENGINE_REQUIRE_TOOLS"):
            pytest.fail(f"{', '.join(missing)} missing and CHAT_ENGINE_REQUIRE_TOOLS is set")
        pytest.skip(f"the walk-through needs {', '.join(missing)}, not installed")
    start, *steps = walk_through_blocks()
    assert "make serve" in start
    script = "\n".join(steps)
    assert "kill $WATCHER" in script
    # the background WebSocket is stopped by the test, once it printed what it must
    script = script.replace("kill $WATCHER", "true")
    server = launch(tmp_path / "data", "--in-memory")
    assert server.ready, server.stderr
    script = (
        script.replace("secret-admin", ADMIN_TOKEN)
        .replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
        .replace(".venv/bin/python", sys.executable)
    )
    output = tmp_path / "output"
    shell: subprocess.Popen[bytes] | None = None
    try:
        with open(output, "wb") as out:
            # its own process group: the watcher it starts in the background is in it too
            shell = subprocess.Popen(
                ["bash", "-e", "-c", script],
                cwd=ROOT,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
            returncode = shell.wait(timeout=120)
        text = output.read_text()
        assert returncode == 0, text
        # the background WebSocket prints Ada's answer as an event of the chat's channel
        deadline = time.monotonic() + 30
        while not any(
            '"channel":' in line and "It is! Shall I reserve one?" in line
            for line in text.splitlines()
        ):
            assert time.monotonic() < deadline, f"no event within 30 s:\n{text}"
            time.sleep(0.05)
            text = output.read_text()
    finally:
        if shell is not None:
            try:
                os.killpg(shell.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        server.stop()

    assert re.search(r"^HTTP/1\.1 201", text, re.M), "the first auto_resume creates a chat"
    assert '"code":"chat_already_taken"' in text
    assert '"message": "Hello! How can I help?"' in text  # the history, through jq
    frames = [line for line in text.splitlines() if '"channel":' in line]
    assert any('"type":"subscribed"' in f and '"resumed":true' in f for f in frames)
    assert any('"type":"join"' in frame for frame in frames)  # replayed from since 0
    assert any("Is the blue chair in stock?" in frame for frame in frames)  # live
    assert '"currently_present_user_count": 1' in text  # the visitor resumed Ada's chat
    assert "msg visitor: Is the blue chair in stock?" in text
    assert "msg Ada: It is! Shall I reserve one?" in text
