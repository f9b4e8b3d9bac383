"""`chat-engine serve` operations: flags and env twins, the admin
token, JSON-lines logs, --demo, --no-open-registration."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from bench.server import free_port
from engine.ids import hash_token
from gateway.cli import admin_token, build_parser, serve
from gateway.logs import JsonLines


def test_every_flag_has_an_env_twin_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "HOST": "0.0.0.0",
        "PORT": "9999",
        "DATA_DIR": "/srv/chat",
        "IN_MEMORY": "true",
        "PRESENCE_TIMEOUT": "30",
        "RESUME_WINDOW": "60",
        "PUBLIC_URL": "https://c.example",
        "DEMO": "1",
        "FSYNC": "interval",
        "SNAPSHOT_INTERVAL": "5",
        "HISTORY_LIMIT": "10",
        "SESSION_QUEUE": "20",
        "FLUSH_INTERVAL": "0.01",
        "NO_OPEN_REGISTRATION": "yes",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"CHAT_ENGINE_{name}", value)
    options = build_parser().parse_args(["serve"])
    assert (options.host, options.port, options.data_dir, options.in_memory) == (
        "0.0.0.0",
        9999,
        "/srv/chat",
        True,
    )
    assert (options.presence_timeout, options.resume_window, options.public_url) == (
        30,
        60,
        "https://c.example",
    )
    assert (options.demo, options.fsync, options.snapshot_interval) == (True, "interval", 5)
    assert (options.history_limit, options.session_queue, options.no_open_registration) == (
        10,
        20,
        True,
    )
    assert options.flush_interval == 0.01
    assert build_parser().parse_args(["serve", "--port", "1234"]).port == 1234


def test_admin_token_is_made_once_stored_0600_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHAT_ENGINE_ADMIN_TOKEN", raising=False)
    options = build_parser().parse_args(["serve", "--data-dir", str(tmp_path)])
    first = admin_token(options)
    assert first.printed is not None and first.hash == hash_token(first.printed)
    path = tmp_path / "admin.token"
    assert not path.exists(), "written only once recovery succeeded"
    first.store()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = admin_token(options)
    assert again.printed is None and again.hash == first.hash  # printed once only
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", "from-env")
    assert admin_token(options).hash == hash_token("from-env")


def test_logs_are_one_json_object_a_line() -> None:
    record = logging.LogRecord(
        "chat_engine", logging.INFO, __file__, 1, "hello %s", ("world",), None
    )
    record.fields = {"lsn": 7}
    line = JsonLines().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["msg"], entry["lsn"]) == (
        "info",
        "chat_engine",
        "hello world",
        7,
    )
    assert entry["ts"].endswith("Z")


async def read_line(stream: Any) -> bytes:
    """One line from a child's pipe, within 30 s (the read is abandoned after that)."""
    with trio.fail_after(30):
        line: bytes = await trio.to_thread.run_sync(stream.readline, abandon_on_cancel=True)
    return line


async def test_demo_prints_tokens_that_work(tmp_path: Path) -> None:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--demo",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
        "--log-level",
        "warning",
    ]
    env = {k: v for k, v in os.environ.items() if k != "CHAT_ENGINE_ADMIN_TOKEN"}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None
        admin_line = await read_line(process.stdout)
        assert admin_line.startswith(b"admin token: ")
        printed = b""
        for _ in range(200):  # the demo is a JSON object of bounded size
            printed += await read_line(process.stdout)
            if printed.rstrip().endswith(b"}") and printed.count(b"{") == printed.count(b"}"):
                break
        demo = orjson.loads(printed)
        assert len(demo["rooms"]) == 2 and len(demo["users"]) == 3 and len(demo["visitors"]) == 2
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Token {demo['org']['token']}"}
        ) as client:
            rooms = (await client.get(f"/api/v5/orgs/{demo['org']['id']}/rooms")).json()["results"]
        assert [room["name"] for room in rooms] == ["Sales", "Support"]
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Token {demo['users'][0]['token']}"}
        ) as client:
            response = await client.get(
                f"/api/v5/orgs/{demo['org']['id']}/users/{demo['users'][0]['id']}/chats"
            )
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(partial(process.wait, timeout=20))
        if process.stdout is not None:
            process.stdout.close()
    # a second start on the same (now non-empty) store creates nothing more
    args[args.index("warning")] = "info"  # "demo skipped" is an info line
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        line = b""
        for _ in range(200):
            assert process.stderr is not None
            line = await read_line(process.stderr)
            if b"demo skipped" in line or not line:
                break
        assert b"demo skipped" in line
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = await trio.to_thread.run_sync(partial(process.communicate, timeout=20))
    assert b'"org"' not in out


async def test_open_registration_can_be_turned_off(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", "adm")
    options = build_parser().parse_args(
        ["serve", "--in-memory", "--port", "0", "--no-open-registration", "--log-level", "warning"]
    )
    binds = await nursery.start(serve, options)
    async with httpx.AsyncClient(base_url=binds[0]) as client:
        response = await client.post("/api/v5/client/visitors")
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
