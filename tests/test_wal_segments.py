"""Log segments rotate, are read back in order, and go once two snapshots cover them."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import pytest
import trio

from engine.actors.supervisor import Engine
from engine.facts import OrgCreated
from persistence import snapshot
from persistence.scan import scan
from persistence.store import Store
from persistence.wal import FileOps, WriteAheadLog, segments


async def run_engine(data_dir: Path, work: object) -> Engine:
    engine = Engine(store=Store(data_dir, segment_bytes=600))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await work(engine)  # type: ignore[operator]
        nursery.cancel_scope.cancel()
    engine.store.wal.close()  # type: ignore[union-attr]
    return engine


async def test_segments_rotate_replay_in_order_and_are_removed(tmp_path: Path) -> None:
    texts: list[str] = []

    async def write(engine: Engine) -> None:
        org, _ = await engine.directory.create_org("Org")
        room = await engine.directory.create_room(org.id, "Room", False)
        user, _ = await engine.directory.create_user(
            org.id, first_name="A", last_name="B", alias="a", room_ids=None
        )
        _, visitor, _ = await engine.directory.register_visitor(org.id, None)
        _, chat = await engine.directory.create_chat(room, visitor, auto_resume=user)
        for index in range(30):
            texts.append(f"message {index}")
            await engine.chats.post(
                chat,
                sender_type="user",
                sender_id=user.id,
                type="msg",
                message=texts[-1],
                page_url=None,
                page_title=None,
            )
            if index in (9, 19):
                await engine.snapshot()

    await run_engine(tmp_path, write)
    assert len(snapshot.snapshots(tmp_path)) == 2
    remaining = segments(tmp_path)
    # segments entirely covered by the older kept snapshot are gone; the rest are in order
    older_snapshot_lsn = snapshot.snapshots(tmp_path)[0][0]
    assert remaining[0][0] <= older_snapshot_lsn + 1
    assert remaining[0][0] > 1, "the first segments were removed"
    assert len(remaining) >= 2, "the log rotated"
    assert [first for first, _ in remaining] == sorted(first for first, _ in remaining)

    async def read(engine: Engine) -> None:
        (chat,) = engine.state.chats.values()
        assert [m.message for m in chat.messages if m.type == "msg"] == texts
        assert chat.message_count == 30

    recovered = await run_engine(tmp_path, read)
    assert recovered.recovery is not None and recovered.recovery.records_replayed  # a log tail


def fill_descriptors() -> tuple[list[int], tuple[int, int]]:
    """Lower this process's descriptor limit and use up what is left of it, so that the
    next ``open`` fails with EMFILE, a real failure (root ignores permissions, not this)."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, limits[1]))
    spare = []
    try:
        while True:
            spare.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as error:
        assert error.errno == errno.EMFILE
    return spare, limits


async def test_a_failed_rotation_keeps_appending_and_rotates_later(tmp_path: Path) -> None:
    applied: list[int] = []  # the positions the log reported durable, in order
    wal = WriteAheadLog(tmp_path, segment_bytes=1)  # every batch rotates
    wal.open(0)
    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        applied.append(await wal.append([[]]))
        applied.append(await wal.append([[]]))  # a full segment is closed before the next write
        spare, limits = fill_descriptors()
        try:
            for _ in range(10):  # each finds its segment full and fails to rotate
                applied.append(await wal.append([[]]))
        finally:
            for fd in spare:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        assert wal.stats["rotate_failures"] == 10
        assert [first for first, _ in segments(tmp_path)] == [1, 2], "no half-made segment"
        applied.append(await wal.append([[]]))  # the log survived; this batch rotates
        nursery.cancel_scope.cancel()
    wal.close()
    assert applied == list(range(1, 14))
    assert [first for first, _ in segments(tmp_path)] == [1, 2, 13]
    read = scan(tmp_path, 0)
    assert not read.problems
    assert [lsn for lsn, _ in read.records] == applied


class FailingSync(FileOps):
    def __init__(self) -> None:
        self.failing = False

    def fsync(self, fd: int) -> None:
        if self.failing:
            raise OSError(errno.EIO, "I/O error")
        super().fsync(fd)


async def test_the_durable_position_moves_only_with_an_fsync(tmp_path: Path) -> None:
    """What the cluster's shipper may hand on: with "always" each batch once appended;
    with "interval" at the periodic fsync; with "off" when asked (``sync``); never past
    an fsync that failed."""
    facts = [[OrgCreated("o", "Acme", 1, "h")]]
    moves: list[int] = []
    always = WriteAheadLog(tmp_path / "always", fsync="always")
    always.durable_listeners.append(moves.append)
    always.open(0)
    await always.append(facts * 3)
    assert always.durable_lsn == 3 and moves == [3]
    always.close()

    disk = FailingSync()
    off = WriteAheadLog(tmp_path / "off", fsync="off", file_ops=disk)
    off.open(0)
    await off.append(facts * 2)
    assert off.durable_lsn == 0
    disk.failing = True
    with pytest.raises(OSError):
        await off.sync()
    assert off.durable_lsn == 0
    disk.failing = False
    assert await off.sync() == 2
    off.close()
    reopened = WriteAheadLog(tmp_path / "off", fsync="off")
    reopened.open(2)  # what recovery read is on disk once the log is open
    assert reopened.durable_lsn == 2
    reopened.close()

    interval = WriteAheadLog(tmp_path / "interval", fsync="interval")
    interval.open(0)
    synced = trio.Event()
    interval.durable_listeners.append(lambda lsn: synced.set())
    async with trio.open_nursery() as nursery:
        await nursery.start(interval.run)
        await interval.append(facts * 4)
        assert interval.durable_lsn == 0  # answered before the fsync
        with trio.fail_after(10):
            await synced.wait()
        assert interval.durable_lsn == 4
        nursery.cancel_scope.cancel()
    interval.close()
