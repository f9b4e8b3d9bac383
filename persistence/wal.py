"""The write-ahead log: framing, segments and group commit (reading it back and telling
a torn tail from damage: ``persistence.scan``).

A record is one committed mutation: ``[length u32][crc32 u32][msgpack [lsn, [facts]]]``.
Records go to segment files ``wal-<first lsn>.log``; the first write after a segment
passes ``segment_bytes`` starts a new one. Rotation failing (EMFILE, ENOSPC, EIO) is not
a write failure: the current segment stays open and takes the batch, and the next write
tries again.

Group commit: ``append`` takes a batch of records (the engine's commit loop gathers
every mutation queued meanwhile), gives them their positions, writes them with one
``write`` and (``fsync="always"``) one ``fsync`` in a worker thread, so the event loop
never blocks on the disk and concurrent mutations share the cost, and returns once they
are durable. The log never applies a record: the engine does, once told it is durable
(``engine.actors.commit``). ``"interval"`` fsyncs every 50 ms in the background (``run``)
and ``"off"`` never does: both report a batch durable once its bytes are written, and may
lose the last moments in a machine crash (not in a process crash).

``durable_lsn`` is the last position fsynced, whatever the mode: with ``"always"`` a
batch's last position once ``append`` returns; with ``"interval"`` it moves at each
periodic fsync, and with ``"off"`` only when someone asks for it (``sync``). Whoever must
never hand on a record that a machine crash could take back (the cluster's shipper)
reads no further, and ``durable_listeners`` tell it when it moves.

A failed write or fsync raises ``OSError`` for the whole batch (none of its records
counts; their positions are given again), and the segment is cut back to its last good
length before anything else is written, so a later success never follows garbage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
import zlib
from bisect import bisect_left
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from engine.facts import Fact
from persistence.codec import encode_fact, pack
from persistence.datadir import create_private

log = logging.getLogger("chat_engine.wal")

HEADER = struct.Struct(">II")
MAX_RECORD_BYTES = 64 * 1024 * 1024
FSYNC_MODES = ("always", "interval", "off")
INTERVAL_SECONDS = 0.05
# Upper bounds of the fsync latency histogram (seconds): a fast SSD fsyncs in ~0.1 ms,
# a loaded disk or a network volume takes tens of ms, and past 1 s something is wrong.
FSYNC_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


def segment_name(first_lsn: int) -> str:
    return f"wal-{first_lsn:020d}.log"


def segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("wal-*.log"):
        try:
            found.append((int(path.stem[4:]), path))
        except ValueError:
            continue
    return sorted(found)


def encode(lsn: int, facts: Sequence[Fact]) -> bytes:
    """A record's payload: ``[lsn, [facts]]`` in msgpack, as the log stores it and the
    cluster's stream carries it."""
    return pack([lsn, [encode_fact(fact) for fact in facts]])


def framed(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def frame(lsn: int, facts: Sequence[Fact]) -> bytes:
    return framed(encode(lsn, facts))


class FileOps:
    """The disk calls the log makes; tests replace them to inject failures."""

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fsync_dir(self, directory: Path) -> None:
        _fsync_dir(directory)


class WriteAheadLog:
    def __init__(
        self,
        directory: Path,
        *,
        fsync: str = "always",
        segment_bytes: int = 64 * 1024 * 1024,
        file_ops: FileOps | None = None,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {FSYNC_MODES}")
        self.directory = directory
        self.fsync_mode = fsync
        self.segment_bytes = segment_bytes
        self.file_ops = file_ops or FileOps()
        self.next_lsn = 1
        # the last position fsynced; each listener is called with it when it moves
        self.durable_lsn = 0
        self.durable_listeners: list[Callable[[int], None]] = []
        # called with a batch's first position and its payloads once it is written (not
        # necessarily fsynced): the shipper keeps the newest to ship without reading back
        self.written_listeners: list[Callable[[int, list[bytes]], None]] = []
        self._fd = -1
        self._segment_first = 0
        self._size = 0  # bytes of the current segment known to be good
        self._needs_cut = False
        self.stats = {
            "batches": 0,
            "records": 0,
            "bytes": 0,
            "fsync_seconds_total": 0.0,
            "fsync_seconds_max": 0.0,
            "write_failures": 0,
            "rotate_failures": 0,
        }
        # fsync latency as histogram counts, one per FSYNC_BUCKETS bound and one past
        # the last (not cumulative); read at scrape time by gateway.metrics
        self.fsync_counts = [0] * (len(FSYNC_BUCKETS) + 1)

    # -- opening --------------------------------------------------------------------------
    def open(self, last_lsn: int) -> None:
        """Append after ``last_lsn`` (the log has been read and its tail cut)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.next_lsn = last_lsn + 1
        found = segments(self.directory)
        if found:
            self._segment_first, path = found[-1]
        else:
            self._segment_first, path = self.next_lsn, self.directory / segment_name(self.next_lsn)
        self._fd = create_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        # what a process that died under "interval" or "off" wrote may still be only in
        # the page cache: on disk before it counts as durable (older segments were
        # fsynced when the log moved past them)
        self.file_ops.fsync(self._fd)
        _fsync_dir(self.directory)
        self.durable_lsn = last_lsn

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- committing -------------------------------------------------------------------------
    async def append(self, records: Sequence[Sequence[Fact]]) -> int:
        """Write ``records`` (each one mutation's facts) as one batch and return the
        position of the first once all are durable. Raises ``OSError`` if they could
        not be written: then none of them counts."""
        # Positions are given here, and given back if the write fails: the log's
        # positions stay continuous, so a gap always means damage.
        first_lsn = self.next_lsn
        payloads = [encode(lsn, facts) for lsn, facts in enumerate(records, first_lsn)]
        data = b"".join(framed(payload) for payload in payloads)
        try:
            await trio.to_thread.run_sync(self._write, data, first_lsn)
        except OSError as error:
            self._needs_cut = True
            # Cut the half-written batch off now, not only before the next write: a crash
            # in between would otherwise replay its whole records, answered 503, as writes.
            with contextlib.suppress(OSError):  # else the next write cuts first
                await trio.to_thread.run_sync(self._cut)
            self.stats["write_failures"] += 1
            log.error(
                "log write failed",
                extra={"fields": {"error": str(error), "records": len(records)}},
            )
            raise
        self.next_lsn = first_lsn + len(records)
        self._size += len(data)
        self.stats["batches"] += 1
        self.stats["records"] += len(records)
        self.stats["bytes"] += len(data)
        for listener in self.written_listeners:
            listener(first_lsn, payloads)
        if self.fsync_mode == "always":
            self._set_durable(self.next_lsn - 1)
        return first_lsn

    async def sync(self) -> int:
        """Fsync what was written, unless it is durable already; returns
        ``durable_lsn``. Raises ``OSError`` when the fsync fails (nothing moves)."""
        written = self.next_lsn - 1
        if written > self.durable_lsn and self._fd >= 0:
            await trio.to_thread.run_sync(self._timed_fsync)
            self._set_durable(written)
        return self.durable_lsn

    def _set_durable(self, lsn: int) -> None:
        if lsn > self.durable_lsn:
            self.durable_lsn = lsn
            for listener in self.durable_listeners:
                listener(lsn)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background fsync of ``fsync="interval"`` (nothing to do otherwise)."""
        task_status.started()
        if self.fsync_mode == "interval":
            await self._sync_periodically()

    def _cut(self) -> None:
        self.file_ops.truncate(self._fd, self._size)
        self.file_ops.fsync(self._fd)
        self._needs_cut = False

    def _write(self, data: bytes, first_lsn: int) -> None:
        ops = self.file_ops
        if self._needs_cut:
            self._cut()
        if self._size >= self.segment_bytes:  # a full segment is closed by the next write
            try:
                self._rotate(first_lsn)
            except OSError as error:
                # Not this batch's failure: the current segment stays open and takes it,
                # and the next batch tries again.
                self.stats["rotate_failures"] += 1
                log.error("log rotation failed", extra={"fields": {"error": str(error)}})
        ops.write(self._fd, data)
        if self.fsync_mode == "always":
            self._timed_fsync()

    def _timed_fsync(self) -> None:
        started = time.perf_counter()
        self.file_ops.fsync(self._fd)
        spent = time.perf_counter() - started
        self.stats["fsync_seconds_total"] += spent
        self.stats["fsync_seconds_max"] = max(self.stats["fsync_seconds_max"], spent)
        self.fsync_counts[bisect_left(FSYNC_BUCKETS, spent)] += 1

    def _rotate(self, first_lsn: int) -> None:
        # The old segment is closed only once the new one is open, synced and named in
        # its directory: any failure before that leaves the log appending where it was.
        # A new file that could not be synced is removed: its name would claim positions
        # the old segment goes on to hold.
        old_fd = self._fd
        self.file_ops.fsync(old_fd)
        path = self.directory / segment_name(first_lsn)
        new_fd = create_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            self.file_ops.fsync_dir(self.directory)
        except BaseException:
            os.close(new_fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd, self._segment_first, self._size = new_fd, first_lsn, 0
        os.close(old_fd)

    async def _sync_periodically(self) -> None:
        while True:
            await trio.sleep(INTERVAL_SECONDS)
            try:
                await self.sync()
            except OSError as error:
                log.error("periodic fsync failed", extra={"fields": {"error": str(error)}})

    # -- retention ------------------------------------------------------------------------
    def remove_segments_before(self, lsn: int) -> int:
        """Delete segments whose every record is ``<= lsn`` (covered by a snapshot)."""
        found = segments(self.directory)
        removed = 0
        for (first, path), (next_first, _) in zip(found, found[1:], strict=False):
            if next_first - 1 <= lsn and first != self._segment_first:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
