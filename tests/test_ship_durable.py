"""The primary's shipper hands on only what the primary's disk holds: under
``--fsync interval`` or ``off`` a record is on the Redis stream only once the log has
fsynced it, so a machine crash of the primary cannot take back a record a replica
applied. In process (the engine, its log on a real disk, the shipper) against a real
redis-server; the disk's fsync is held back to decide when records become durable."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from engine.actors.supervisor import Engine
from gateway.cluster import redislog
from gateway.cluster import shipper as shipper_module
from gateway.cluster.shipper import Shipper
from persistence.follow import LogFollower
from persistence.store import Store
from persistence.wal import FileOps
from tests.redisproc import RedisProcess


class HeldDisk(FileOps):
    """A disk whose fsyncs wait while ``held`` (a slow disk): ``waiting`` is set once
    one does."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.released.set()
        self.waiting = threading.Event()

    def hold(self) -> None:
        self.waiting.clear()
        self.released.clear()

    def fsync(self, fd: int) -> None:
        if not self.released.is_set():
            self.waiting.set()
            self.released.wait(timeout=60)
        super().fsync(fd)


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)


async def stream_positions(url: str, prefix: str) -> list[int]:
    async with redislog.client(url) as client:
        entries = await client.xrange(redislog.stream_key(prefix))
    return [redislog.lsn_of(entry.identifier) for entry in entries]


@pytest.mark.parametrize("mode", ["interval", "off"])
async def test_records_reach_the_stream_only_once_fsynced(
    redis: RedisProcess, tmp_path: Path, mode: str
) -> None:
    disk = HeldDisk()
    store = Store(tmp_path, fsync=mode, file_ops=disk)
    engine = Engine(store=store)
    prefix = f"durable-{mode}"
    shipper = Shipper(engine, redis.url, prefix, 1000, tmp_path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await nursery.start(shipper.run)
            await engine.directory.create_org("Shipped")
            # fsynced and shipped
            await until(lambda: store.wal.durable_lsn == shipper.shipped == engine.applied_lsn)
            durable = store.wal.durable_lsn

            disk.hold()
            for index in range(5):  # answered: written, not fsynced
                await engine.directory.create_org(f"Org {index}")
            assert engine.applied_lsn == durable + 5
            assert store.wal.durable_lsn == durable
            # an fsync is on its way: interval's periodic one, or with off the one the
            # shipper asks for before it ships (nothing else fsyncs)
            with trio.fail_after(30):
                await trio.to_thread.run_sync(disk.waiting.wait, 60)
            if mode == "interval":
                # the shipper has been round since the last record was applied: it
                # waits for news again (a new wake-up event, not set yet)
                await until(lambda: not shipper._wake.is_set())
            assert shipper.shipped == durable
            assert (await stream_positions(redis.url, prefix))[-1] == durable

            disk.released.set()  # the fsync completes: the records go
            await until(lambda: shipper.shipped == engine.applied_lsn)
            assert store.wal.durable_lsn == engine.applied_lsn
            positions = await stream_positions(redis.url, prefix)
            assert positions == list(range(1, engine.applied_lsn + 1))
            nursery.cancel_scope.cancel()
    finally:
        disk.released.set()
        store.wal.close()


async def stream_records(url: str, prefix: str) -> list[tuple[int, str | bytes]]:
    async with redislog.client(url) as client:
        entries = await client.xrange(redislog.stream_key(prefix))
    return [
        (redislog.lsn_of(entry.identifier), entry.field_values[redislog.RECORD])
        for entry in entries
    ]


class CountingFollower(LogFollower):
    """The log read back as the shipper would, counting the records it hands over."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.records_read = 0

    def read(self, after_lsn: int, up_to: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        found = super().read(after_lsn, up_to, limit)
        self.records_read += len(found)
        return found


async def test_the_stream_carries_the_logs_own_bytes_read_back_only_for_a_backlog(
    redis: RedisProcess, tmp_path: Path
) -> None:
    """Records written before the shipper existed (a restart's backlog) are read back
    from the log; those written while it keeps up are shipped as the log handed them
    over, with no read; either way each entry is the log's record byte for byte."""
    store = Store(tmp_path, fsync="always")
    engine = Engine(store=store)
    prefix = "tail"
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            for index in range(30):
                await engine.directory.create_org(f"Before {index}")
            backlog = engine.applied_lsn
            shipper = Shipper(engine, redis.url, prefix, 1000, tmp_path)
            follower = CountingFollower(tmp_path)
            shipper._follower = follower
            await nursery.start(shipper.run)
            await until(lambda: shipper.shipped == backlog)
            assert follower.records_read == backlog

            for index in range(40):
                await engine.directory.create_org(f"After {index}")
            await until(lambda: shipper.shipped == engine.applied_lsn)
            assert follower.records_read == backlog  # nothing more read back

            shipped = await stream_records(redis.url, prefix)
            assert shipped == LogFollower(tmp_path).read(0, engine.applied_lsn, 10_000)
            assert [lsn for lsn, _ in shipped] == list(range(1, engine.applied_lsn + 1))
            nursery.cancel_scope.cancel()
    finally:
        store.wal.close()


async def test_the_tail_kept_in_memory_is_bounded_in_bytes_and_the_rest_is_read_back(
    redis: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records as large as a request body allows would make 10,000 of them hundreds of
    MB: the tail is bounded in bytes too, and what fell out of it before the shipper
    could send it is read back from the log, so every record still reaches the stream
    whole."""
    monkeypatch.setattr(shipper_module, "TAIL_BYTES", 8 * 1024)
    store = Store(tmp_path, fsync="always")
    engine = Engine(store=store)
    prefix = "tail-bytes"
    shipper = Shipper(engine, redis.url, prefix, 1000, tmp_path)
    follower = CountingFollower(tmp_path)
    shipper._follower = follower
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            for index in range(40):  # ~2 KiB each; the shipper is not running yet
                await engine.directory.create_org(f"{index:04d}" + "x" * 2000)
            assert 1 <= len(shipper._tail) <= 4
            assert shipper._tail_bytes == sum(len(payload) for _, payload in shipper._tail)
            assert shipper._tail_bytes <= 8 * 1024
            await nursery.start(shipper.run)
            await until(lambda: shipper.shipped == engine.applied_lsn)
            assert follower.records_read == 40  # one read of the log: the whole backlog
            for index in range(3):  # kept up with: from memory again
                await engine.directory.create_org(f"after {index}" + "x" * 2000)
            await until(lambda: shipper.shipped == engine.applied_lsn)
            assert follower.records_read == 40

            shipped = await stream_records(redis.url, prefix)
            assert shipped == LogFollower(tmp_path).read(0, engine.applied_lsn, 10_000)
            nursery.cancel_scope.cancel()
    finally:
        store.wal.close()


async def test_without_a_log_the_tail_is_bounded_by_the_stream_length_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``--in-memory`` the tail is the only copy of what Redis has not taken yet:
    it keeps the newest ``--redis-log-length`` records whatever their size, as
    docs/cluster.md says, and never drops one for the byte bound."""
    monkeypatch.setattr(shipper_module, "TAIL_BYTES", 1024)
    engine = Engine()
    shipper = Shipper(engine, "redis://127.0.0.1:1/0", "mem", 50, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        for index in range(20):
            await engine.directory.create_org(f"{index:04d}" + "x" * 2000)
        assert [lsn for lsn, _ in shipper._tail] == list(range(1, 21))
        for index in range(40):
            await engine.directory.create_org(f"more {index}")
        assert [lsn for lsn, _ in shipper._tail] == list(range(11, 61))
        nursery.cancel_scope.cancel()
