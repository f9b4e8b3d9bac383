"""Following the write-ahead log (persistence/follow.py) while it is written, and the
cluster's digest (persistence/replication.py): a node built from a snapshot and one
built by replaying the same records agree on it."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from engine.actors.supervisor import Engine
from engine.facts import Fact, OrgCreated
from engine.model import SENDER_USER
from engine.realtime.history import Histories
from engine.state import State
from gateway.cluster.shipper import Shipper
from persistence import snapshot
from persistence.follow import READ_BYTES, LogFollower, LogGap, decode
from persistence.replication import digest, load_snapshot
from persistence.store import Store
from persistence.wal import FileOps, WriteAheadLog, encode, segments


async def busy_engine(records: list[tuple[int, list[Fact]]]) -> Engine:
    """A running in-memory engine after a few dozen mutations, each record kept."""
    engine = Engine()

    def keep(lsn: int, facts: Sequence[Fact]) -> None:
        records.append((lsn, list(facts)))

    engine.record_listeners.append(keep)
    return engine


async def mutate(engine: Engine) -> None:
    org, _ = await engine.directory.create_org("Acme")
    room = await engine.directory.create_room(org.id, "Sales", False)
    users = [
        (
            await engine.directory.create_user(
                org.id, first_name=name, last_name="T", alias=name, room_ids=None
            )
        )[0]
        for name in ("Ada", "Alan", "Grace")
    ]
    for index in range(6):
        _, visitor, _ = await engine.directory.register_visitor(org.id, None)
        _, chat = await engine.directory.create_chat(
            room, visitor, auto_resume=users[index % len(users)]
        )
        for line in range(5):
            await engine.chats.post(
                chat,
                sender_type=SENDER_USER,
                sender_id=users[index % len(users)].id,
                type="msg",
                message=f"line {line}",
                page_url=None,
                page_title=None,
            )
        if index % 2:
            await engine.chats.leave(chat, users[index % len(users)].id)


def replayed(records: list[tuple[int, list[Fact]]], epoch: str) -> Engine:
    engine = Engine()
    engine.realtime.histories.epoch = epoch
    for lsn, facts in records:
        engine.apply_record(lsn, facts)
    return engine


async def test_a_snapshot_and_a_replay_of_the_same_records_give_the_same_digest() -> None:
    records: list[tuple[int, list[Fact]]] = []
    engine = await busy_engine(records)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await mutate(engine)
        middle = len(records) // 2
        # a snapshot at the middle: what a replica loads, then the rest from the stream
        at_middle = replayed(records[:middle], engine.realtime.epoch)
        data = snapshot.encode(middle, at_middle.state, at_middle.realtime.histories.export())
        nursery.cancel_scope.cancel()
    epoch = engine.realtime.epoch
    whole = digest(engine.state, engine.realtime.histories)
    assert digest(*parts(replayed(records, epoch))) == whole
    state, histories = State(), Histories(epoch=epoch)
    assert load_snapshot(data, state, histories) == middle
    follower = Engine()
    follower.take_over(middle, state, histories)
    for lsn, facts in records[middle:]:
        follower.apply_record(lsn, facts)
    assert follower.applied_lsn == engine.applied_lsn
    assert digest(*parts(follower)) == whole
    # and a node one record short does not agree
    assert digest(*parts(replayed(records[:-1], epoch))) != whole


def parts(engine: Engine) -> tuple[State, Histories]:
    return engine.state, engine.realtime.histories


def test_a_record_survives_encode_and_decode() -> None:
    records: list[tuple[int, list[Fact]]] = []

    async def main() -> None:
        engine = await busy_engine(records)
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            await engine.directory.create_org("Acme")
            nursery.cancel_scope.cancel()

    trio.run(main)
    lsn, facts = records[0]
    assert decode(encode(lsn, facts)) == (lsn, facts)


async def write_log(directory: Path, count: int, segment_bytes: int) -> WriteAheadLog:
    """A log of ``count`` one-fact records (their facts: real ones, an org each)."""
    records: list[tuple[int, list[Fact]]] = []
    engine = await busy_engine(records)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        for index in range(count):
            await engine.directory.create_org(f"Org {index}")
        nursery.cancel_scope.cancel()
    log = WriteAheadLog(directory, fsync="off", segment_bytes=segment_bytes)
    log.open(0)
    for _, facts in records:
        await log.append([facts])
    return log


async def test_the_follower_reads_every_record_in_order_across_segments(tmp_path: Path) -> None:
    log = await write_log(tmp_path, 60, segment_bytes=1024)
    assert len(segments(tmp_path)) > 3
    follower = LogFollower(tmp_path)
    seen: list[int] = []
    for _ in range(100):  # bounded: 60 records, 7 at a time
        batch = follower.read(len(seen), 60, limit=7)
        if not batch:
            break
        assert len(batch) <= 7
        seen += [lsn for lsn, _ in batch]
        assert all(decode(payload)[0] == lsn for lsn, payload in batch)
    assert seen == list(range(1, 61))
    # from any position, not only where it stopped
    assert [lsn for lsn, _ in follower.read(29, 33)] == [30, 31, 32, 33]
    assert follower.read(60, 60) == []
    log.close()


async def test_the_follower_reads_on_as_the_log_grows_and_stops_at_up_to(tmp_path: Path) -> None:
    log = await write_log(tmp_path, 10, segment_bytes=1 << 20)
    follower = LogFollower(tmp_path)
    assert [lsn for lsn, _ in follower.read(0, 5)] == [1, 2, 3, 4, 5]
    assert [lsn for lsn, _ in follower.read(5, 100)] == [6, 7, 8, 9, 10]
    records: list[tuple[int, list[Fact]]] = []
    engine = await busy_engine(records)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await engine.directory.create_org("Later")
        nursery.cancel_scope.cancel()
    await log.append([records[0][1]])
    assert [lsn for lsn, _ in follower.read(10, 100)] == [11]
    log.close()


async def test_a_position_whose_segment_was_removed_is_a_gap(tmp_path: Path) -> None:
    log = await write_log(tmp_path, 60, segment_bytes=1024)
    held = segments(tmp_path)
    removed = log.remove_segments_before(held[2][0] - 1)
    assert removed == 2
    follower = LogFollower(tmp_path)
    assert follower.first_lsn() == held[2][0]
    with pytest.raises(LogGap) as gap:
        follower.read(0, 60)
    assert gap.value.first == held[2][0]
    assert follower.read(held[2][0] - 1, held[2][0])[0][0] == held[2][0]
    log.close()


async def test_a_segment_removed_under_a_follower_is_a_gap_naming_the_oldest_held(
    tmp_path: Path,
) -> None:
    log = await write_log(tmp_path, 60, segment_bytes=1024)
    held = segments(tmp_path)
    follower = LogFollower(tmp_path)
    assert [lsn for lsn, _ in follower.read(0, 3)] == [1, 2, 3]  # its place: segment 1
    log.remove_segments_before(held[2][0] - 1)
    with pytest.raises(LogGap) as gap:
        follower.read(3, 60)
    assert gap.value.first == held[2][0]
    log.close()


async def test_reading_stops_before_a_half_written_record_and_damage_is_an_error(
    tmp_path: Path,
) -> None:
    log = await write_log(tmp_path, 10, segment_bytes=1 << 20)
    log.close()
    (path,) = [path for _, path in segments(tmp_path)]
    with open(path, "ab") as handle:  # a write in progress: a header, part of its record
        handle.write(b"\x00\x00\x01\x00garbage")
    follower = LogFollower(tmp_path)
    batch = follower.read(7, 200, 10)
    assert [lsn for lsn, _ in batch] == [8, 9, 10]
    fact = decode(batch[0][1])[1][0]
    assert isinstance(fact, OrgCreated) and fact.name == "Org 7"
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # inside the first record
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad CRC"):
        LogFollower(tmp_path).read(0, 10)
    with pytest.raises(ValueError, match="bad CRC"):  # and again: it does not skip it
        follower.read(0, 10)


async def test_a_record_longer_than_a_read_is_read_whole(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, fsync="off")
    log.open(0)
    names = ["a" * 10, "b" * (READ_BYTES + 1000), "c" * 10]
    for name in names:
        await log.append([[OrgCreated(name, name, 1, "h")]])
    log.close()
    follower = LogFollower(tmp_path)
    read = [decode(payload) for _, payload in follower.read(0, 3)]
    assert [(lsn, facts) for lsn, facts in read] == [
        (lsn, [OrgCreated(name, name, 1, "h")]) for lsn, name in enumerate(names, 1)
    ]


def test_segments_are_kept_for_every_reader_that_holds_the_log_back(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.removable_up_to(500) == 500
    store.holds.append(lambda: 120)  # a reader is done up to 120
    assert store.removable_up_to(500) == 120
    store.holds.append(lambda: None)  # one that holds nothing back
    store.holds.append(lambda: 80)
    assert store.removable_up_to(500) == 80
    store.holds[:] = [lambda: 900]
    assert store.removable_up_to(500) == 500


def test_the_shippers_hold_keeps_unshipped_records_within_its_bound() -> None:
    engine = Engine()
    shipper = Shipper(engine, "redis://127.0.0.1:1/0", "p", 1000, Path("unused"))
    engine.applied_lsn, shipper.shipped = 5000, 1200
    assert shipper.hold() == 1200  # everything not shipped stays
    engine.applied_lsn = 1_000_000 + 3000
    assert shipper.hold() == 3000  # but no more than RETAIN_RECORDS of it


def test_a_snapshot_keeps_which_events_go_first_past_the_total_history_limit() -> None:
    """A replica loads the primary's snapshot and applies the same records: once the
    total history limit is reached it must drop the same events (digest included)."""
    from engine.channels import key_of
    from engine.fanout import Publication

    def batches(start: int, count: int) -> list[list[Publication]]:
        names = ["/api/v5/orgs/o1/rooms", "/api/v5/orgs/o1/users", "/api/v5/orgs/o1/rooms/r1/chats"]
        return [
            [Publication([key_of(names[number % 3])], "changed", f"x{number}", None)]
            for number in range(start, start + count)
        ]

    primary = Histories(epoch="e1", total_history_limit=10)
    for batch in batches(0, 9):
        primary.append(batch)
    data = snapshot.encode(9, State(), primary.export())
    replica = Histories(epoch="e1", total_history_limit=10)
    assert load_snapshot(data, State(), replica) == 9
    assert digest(State(), replica) == digest(State(), primary)
    for batch in batches(9, 7):  # past the limit: 6 of the oldest go
        primary.append(batch)
        replica.append(batch)
    assert replica.export() == primary.export()
    assert digest(State(), replica) == digest(State(), primary)


class FailingDisk(FileOps):
    """Writes half a batch then fails (ENOSPC), or fails the fsync (EIO), on demand."""

    def __init__(self) -> None:
        self.fail_write = False
        self.fail_fsync = False

    def write(self, fd: int, data: bytes) -> None:
        if self.fail_write:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.fail_fsync:
            raise OSError(errno.EIO, "I/O error")
        super().fsync(fd)


async def test_only_batches_the_log_kept_reach_its_written_listeners(tmp_path: Path) -> None:
    """The shipper ships what ``written_listeners`` hand it: a batch whose write or
    fsync failed (cut back, its positions given again) must never be handed over, and
    what is handed over is byte for byte what the log reads back."""
    disk = FailingDisk()
    log = WriteAheadLog(tmp_path, fsync="always", file_ops=disk)
    log.open(0)
    handed: list[tuple[int, bytes]] = []
    log.written_listeners.append(lambda first, payloads: handed.extend(enumerate(payloads, first)))

    def org(name: str) -> list[Fact]:
        return [OrgCreated(name, name, 1, "h")]

    await log.append([org("a"), org("b")])
    disk.fail_write = True
    with pytest.raises(OSError):
        await log.append([org("lost 1"), org("lost 2")])
    disk.fail_write, disk.fail_fsync = False, True
    with pytest.raises(OSError):
        await log.append([org("lost 3")])
    disk.fail_fsync = False
    await log.append([org("c")])
    log.close()
    assert [lsn for lsn, _ in handed] == [1, 2, 3]
    assert [decode(payload)[1] for _, payload in handed] == [org("a"), org("b"), org("c")]
    assert handed == LogFollower(tmp_path).read(0, 3)
