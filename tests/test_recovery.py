"""Recovery from what a data directory may hold, on real server processes."""

from __future__ import annotations

import errno
import os
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from bench.server import ADMIN_TOKEN, ServerProcess, start_server
from engine.actors.supervisor import Engine, EngineConfig
from gateway.cli import build_parser, serve
from persistence import snapshot
from persistence.scan import read_log
from persistence.store import Store
from persistence.wal import FileOps, segments
from tests.wsclient import ws_connect

HEADERS = {"Authorization": f"Token {ADMIN_TOKEN}"}


async def boot(data_dir: Path, log_path: Path | None = None) -> ServerProcess:
    return await trio.to_thread.run_sync(
        partial(start_server, data_dir=data_dir, log_path=log_path)
    )


async def populate(server: ServerProcess, messages: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.base_url, headers=HEADERS) as client:
        org = (await client.post("/api/v5/orgs", json={"name": "Durable"})).json()
        base = f"/api/v5/orgs/{org['id']}"
        room = (await client.post(f"{base}/rooms", json={"name": "R"})).json()
        user = (
            await client.post(
                f"{base}/users", json={"first_name": "A", "last_name": "B", "alias": "a"}
            )
        ).json()
        visitor = (await client.post(f"{base}/visitors", json={})).json()
        chat = (
            await client.post(
                f"{base}/rooms/{room['id']}/visitors/{visitor['id']}/chats",
                params={"auto_resume": user["id"]},
            )
        ).json()
        world = {
            "base": base,
            "chat": chat["id"],
            "user": user["id"],
            "room": room["id"],
            "texts": [],
        }
        await add_messages(server, world, messages)
    return world


async def add_messages(server: ServerProcess, world: dict[str, Any], count: int) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, headers=HEADERS) as client:
        for _ in range(count):
            text = f"message {len(world['texts'])}"
            response = await client.post(
                f"{world['base']}/chats/{world['chat']}/messages",
                json={"sender_id": world["user"], "message": text},
            )
            assert response.status_code == 201
            world["texts"].append(text)


async def texts(server: ServerProcess, world: dict[str, Any]) -> list[str]:
    async with httpx.AsyncClient(base_url=server.base_url, headers=HEADERS) as client:
        page = (
            await client.get(
                f"{world['base']}/chats/{world['chat']}/messages", params={"page_size": 100}
            )
        ).json()
        chat = (await client.get(f"{world['base']}/chats/{world['chat']}")).json()
    found = [m["message"] for m in page["results"] if m["type"] == "msg"]
    assert chat["message_count"] == len(found)
    return found


async def test_empty_data_dir_starts_empty(tmp_path: Path) -> None:
    server = await boot(tmp_path / "fresh")
    try:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            assert (await client.get("/readyz")).status_code == 200
    finally:
        assert server.stop() == 0
    assert (tmp_path / "fresh" / "epoch").exists()


async def test_clean_shutdown_keeps_everything(tmp_path: Path) -> None:
    server = await boot(tmp_path)
    world = await populate(server, 5)
    assert server.stop() == 0
    assert snapshot.snapshots(tmp_path), "a clean shutdown writes a snapshot"
    server = await boot(tmp_path)
    try:
        assert await texts(server, world) == world["texts"]
    finally:
        server.stop()


async def test_torn_tail_is_truncated_and_logged(tmp_path: Path) -> None:
    server = await boot(tmp_path)
    world = await populate(server, 6)
    server.kill()
    ((_, segment),) = segments(tmp_path)
    size = segment.stat().st_size
    with open(segment, "r+b") as handle:  # the last record was half written
        handle.truncate(size - 7)
    log_path = tmp_path / "server.log"
    server = await boot(tmp_path, log_path)
    try:
        assert await texts(server, world) == world["texts"][:-1]
        await add_messages(server, world, 1)  # the log goes on cleanly after the cut
    finally:
        server.kill()
    assert b"log tail truncated" in log_path.read_bytes()
    server = await boot(tmp_path)
    try:
        assert await texts(server, world) == world["texts"][:5] + world["texts"][6:]
    finally:
        server.stop()


async def test_a_flipped_byte_in_the_last_record_refuses_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """The last record is whole (an acknowledged write), so it is damage, not a torn
    tail: cutting it would silently lose that write."""
    server = await boot(tmp_path)
    await populate(server, 6)
    server.kill()
    ((_, segment),) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="exited with 2"):
        await boot(tmp_path)
    assert segment.read_bytes() == bytes(data)


async def test_damage_the_snapshot_covers_never_stops_a_start(tmp_path: Path) -> None:
    """After a clean stop the snapshot covers every record: a byte flipped in the last
    record's length (or anywhere in the log) costs nothing, and changes nothing."""
    server = await boot(tmp_path)
    world = await populate(server, 4)
    assert server.stop() == 0
    ((_, segment),) = segments(tmp_path)
    last_offset = 0
    data = bytearray(segment.read_bytes())
    offset = 0
    while offset < len(data):  # find the last record's header
        last_offset = offset
        offset += 8 + int.from_bytes(data[offset : offset + 4], "big")
    data[last_offset + 3] ^= 0x04  # its length
    segment.write_bytes(bytes(data))
    server = await boot(tmp_path)
    try:
        assert await texts(server, world) == world["texts"]
    finally:
        server.stop()


async def test_corrupt_newest_snapshot_falls_back_to_the_older_one(tmp_path: Path) -> None:
    server = await boot(tmp_path)
    world = await populate(server, 3)
    assert server.stop() == 0  # snapshot 1
    server = await boot(tmp_path)
    await add_messages(server, world, 3)
    assert server.stop() == 0  # snapshot 2
    found = snapshot.snapshots(tmp_path)
    assert len(found) == 2
    newest = found[-1][1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    log_path = tmp_path / "server.log"
    server = await boot(tmp_path, log_path)
    try:
        assert await texts(server, world) == world["texts"]
        await add_messages(server, world, 2)
    finally:
        assert server.stop() == 0  # snapshot 3
    logged = log_path.read_bytes()
    assert b"snapshot unreadable, falling back" in logged
    assert b"unreadable snapshot moved aside" in logged
    # the corrupt one went aside and holds no place: the sound one is kept beside the new
    kept = snapshot.snapshots(tmp_path)
    assert [path for _, path in kept] == [found[0][1], kept[-1][1]]
    assert [path.name.split(".msgpack")[0] for path in (tmp_path / "damaged").iterdir()] == [
        newest.stem
    ]
    # so damage to the new one too still leaves the sound one and its log tail
    data = bytearray(kept[-1][1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    kept[-1][1].write_bytes(bytes(data))
    server = await boot(tmp_path)
    try:
        assert await texts(server, world) == world["texts"]
    finally:
        assert server.stop() == 0


async def test_many_records_bring_the_next_snapshot_forward(tmp_path: Path) -> None:
    """--snapshot-records bounds the log tail a restart replays, whatever the interval."""
    log_path = tmp_path / "server.log"
    server = await trio.to_thread.run_sync(
        partial(
            start_server,
            "--snapshot-interval",
            "3600",
            "--snapshot-records",
            "30",
            data_dir=tmp_path,
            log_path=log_path,
        )
    )
    try:
        world = await populate(server, 40)  # 45 records
        with trio.fail_after(30):  # the forked child writes it: wait for the file
            while not snapshot.snapshots(tmp_path):
                await trio.sleep(0.05)
    finally:
        server.kill()
    # read only now: records that came in while the first snapshot was written may have
    # made a second one due, which can land until the kill (its writer dies with it)
    covered = snapshot.snapshots(tmp_path)[-1][0]
    assert 30 <= covered <= 45
    server = await boot(tmp_path, log_path)
    try:
        assert await texts(server, world) == world["texts"]
    finally:
        assert server.stop() == 0
    recovered = [
        orjson.loads(line) for line in log_path.read_bytes().splitlines() if b'"recovered"' in line
    ]
    assert recovered[-1]["snapshot_lsn"] == covered
    assert recovered[-1]["records_replayed"] == 45 - covered
    # the line splits the time: loading the snapshot, then replaying the log after it
    assert 0 <= recovered[-1]["snapshot_seconds"] <= recovered[-1]["seconds"]
    assert recovered[-1]["replay_seconds"] >= 0


async def test_websocket_resumes_across_restarts(tmp_path: Path) -> None:
    server = await boot(tmp_path)
    world = await populate(server, 2)
    channel = f"{world['base']}/rooms/{world['room']}/chats/{world['chat']}/messages"
    async with ws_connect(server.base_url, ADMIN_TOKEN) as ws:
        first = await ws.subscribe(channel)
    head, epoch = first["seq"], first["epoch"]
    assert head == 3  # the join event and two messages
    server.kill()  # a crash: the history must come back from the log alone
    server = await boot(tmp_path)
    await add_messages(server, world, 2)
    assert server.stop() == 0  # and a clean restart: from the snapshot
    server = await boot(tmp_path)
    try:
        await add_messages(server, world, 1)
        async with ws_connect(server.base_url, ADMIN_TOKEN) as ws:
            answer = await ws.subscribe(channel, since=head, epoch=epoch)
            assert (answer["resumed"], answer["seq"], answer["epoch"]) == (True, 6, epoch)
            missed = [await ws.until(lambda f: "action" in f) for _ in range(3)]
    finally:
        server.stop()
    assert [e["seq"] for e in missed] == [4, 5, 6]
    assert [e["resource"]["message"] for e in missed] == world["texts"][2:]


class FlakyDisk(FileOps):
    """Fails writes on demand, after writing half the data (a realistic ENOSPC)."""

    def __init__(self) -> None:
        self.failing = False

    def write(self, fd: int, data: bytes) -> None:
        if self.failing:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.failing:
            raise OSError(errno.EIO, "I/O error")
        super().fsync(fd)


async def test_write_failures_answer_503_and_recover(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    disk = FlakyDisk()
    engine = Engine(EngineConfig(), store=Store(tmp_path, file_ops=disk))
    options = build_parser().parse_args(
        ["serve", "--port", "0", "--data-dir", str(tmp_path), "--log-level", "critical"]
    )
    binds = await nursery.start(partial(serve, options, engine=engine))
    async with httpx.AsyncClient(base_url=binds[0], headers=HEADERS) as client:
        org = (await client.post("/api/v5/orgs", json={"name": "Flaky"})).json()
        base = f"/api/v5/orgs/{org['id']}"
        room = (await client.post(f"{base}/rooms", json={"name": "R"})).json()
        user = (
            await client.post(
                f"{base}/users", json={"first_name": "A", "last_name": "B", "alias": "a"}
            )
        ).json()
        visitor = (await client.post(f"{base}/visitors", json={})).json()
        chat = (
            await client.post(f"{base}/rooms/{room['id']}/visitors/{visitor['id']}/chats")
        ).json()
        messages = f"{base}/chats/{chat['id']}/messages"
        assert (
            await client.post(messages, json={"sender_id": user["id"], "message": "before"})
        ).status_code == 201
        disk.failing = True
        seq = engine.state.seq
        statuses: list[int] = []

        async def lose(index: int) -> None:
            response = await client.post(
                messages, json={"sender_id": user["id"], "message": f"lost {index}"}
            )
            statuses.append(response.status_code)

        async with trio.open_nursery() as burst:  # concurrent writes share the failing batch
            for index in range(5):
                burst.start_soon(lose, index)
        assert statuses == [503] * 5
        failed = await client.post(messages, json={"sender_id": user["id"], "message": "lost"})
        assert failed.status_code == 503 and failed.json()["code"] == "unavailable"
        assert engine.state.seq == seq  # memory did not run ahead of the log
        history = (await client.get(messages)).json()["results"]
        assert [m["message"] for m in history] == ["before"]
        disk.failing = False
        assert (
            await client.post(messages, json={"sender_id": user["id"], "message": "after"})
        ).status_code == 201
        history = (await client.get(messages)).json()["results"]
        assert [m["message"] for m in history] == ["before", "after"]
    # the log holds exactly the acknowledged records: the half-written ones were cut
    log = read_log(tmp_path, 0)
    assert log.truncated_bytes == 0
    replayed = [
        fact.message
        for _, facts in log.records
        for fact in facts
        if type(fact).__name__ == "MessagePosted"
    ]
    assert replayed == ["before", "after"]


async def test_in_memory_writes_no_files(tmp_path: Path) -> None:
    server = await trio.to_thread.run_sync(
        partial(start_server, "--in-memory", data_dir=tmp_path / "unused")
    )
    try:
        await populate(server, 2)
    finally:
        assert server.stop() == 0
    assert not (tmp_path / "unused").exists()


async def test_metrics_show_the_log(tmp_path: Path) -> None:
    server = await boot(tmp_path)
    try:
        await populate(server, 3)
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            text = (await client.get("/metrics")).text
    finally:
        server.stop()
    records = next(
        line for line in text.splitlines() if line.startswith("chat_engine_wal_records_total")
    )
    assert float(records.split()[-1]) >= 8  # org, room, user, visitor, chat, 3 messages
    assert "chat_engine_wal_fsync_seconds_max" in text and "chat_engine_applied_lsn" in text
    # fsync latency is a histogram: one fsync per group commit, each in some bucket
    count = float(next_value(text, "chat_engine_wal_fsync_duration_seconds_count"))
    assert count >= 1
    assert (
        float(next_value(text, 'chat_engine_wal_fsync_duration_seconds_bucket{le="+Inf"}')) == count
    )
    assert (
        float(next_value(text, 'chat_engine_wal_fsync_duration_seconds_bucket{le="0.0001"}'))
        <= count
    )
    assert float(next_value(text, "chat_engine_wal_fsync_duration_seconds_sum")) > 0


def next_value(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(name + " ")).split()[-1]


class HalfWrites(FileOps):
    """Writes half of each batch, then fails (fsync and truncate still work)."""

    failing = False

    def write(self, fd: int, data: bytes) -> None:
        if self.failing:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(fd, data)


async def test_a_failed_batch_is_cut_off_at_once(tmp_path: Path) -> None:
    """A batch answered 503 must not come back as writes if the process dies before
    its next write: its half-written (some of them whole) records are cut at once."""
    disk = HalfWrites()
    engine = Engine(store=Store(tmp_path, file_ops=disk))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.directory.create_org("kept")
        disk.failing = True
        failures = []

        async def lose(index: int) -> None:
            try:
                await engine.directory.create_org(f"lost {index}")
            except Exception as error:
                failures.append(error)

        async with trio.open_nursery() as burst:  # one batch of four records
            for index in range(4):
                burst.start_soon(lose, index)
        assert len(failures) == 4
        # the process "dies" here: nothing else is written
        log = read_log(tmp_path, 0)
        assert [type(facts[0]).__name__ for _, facts in log.records] == ["OrgCreated"]
        assert log.problems == [] and log.truncated_bytes == 0
        nursery.cancel_scope.cancel()
    engine.store.wal.close()  # type: ignore[union-attr]
