"""Following the write-ahead log: its records after a position, in order, a bounded
batch at a time, while the server goes on writing it.

Recovery reads the whole log once (``persistence.scan``); a follower of the log (the
cluster's shipper, each webhook endpoint's delivery) instead asks, again and again, for
the next records after the position it has reached, up to a position it knows is
written. It reads them here as the bytes the log holds (``[lsn, [facts]]`` in msgpack,
checked against their CRC), so nothing is encoded twice to ship it; ``decode`` turns one
back into facts. A reader asks only for records the log already wrote whole (applied,
or durable), so an unreadable record where one should be is damage (``ValueError``),
not a write in progress; bytes past ``up_to`` (the last write, maybe half done) are
never looked at.

``LogFollower`` keeps its place (segment and offset), so reading on from where it
stopped costs one read of the new bytes, and holds no more than one chunk of a segment
in memory. A position whose segment was removed (the log keeps only what snapshots and
its followers need) raises ``LogGap``, naming the oldest position still held; the caller
decides what that means. Its calls block: run them in a worker thread.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import msgpack

from engine.facts import Fact
from persistence.codec import decode_fact, unpack
from persistence.wal import HEADER, MAX_RECORD_BYTES, segments

# At most this much of a segment is read at a time: a batch of a few hundred records
# (a few hundred bytes each) takes one or two reads, and a longer record is read whole.
READ_BYTES = 256 * 1024


class LogGap(Exception):
    """The records wanted are no longer in the log (their segments were removed);
    ``first`` is the oldest position it still holds (None: no record at all)."""

    def __init__(self, wanted: int, first: int | None) -> None:
        super().__init__(f"log record {wanted} is no longer held (oldest held: {first})")
        self.wanted = wanted
        self.first = first


def decode(payload: bytes) -> tuple[int, list[Fact]]:
    lsn, raw_facts = unpack(payload)
    return lsn, [decode_fact(fact) for fact in raw_facts]


def _lsn_of(payload: bytes) -> int:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload)
    unpacker.read_array_header()
    lsn = unpacker.unpack()
    if not isinstance(lsn, int):
        raise ValueError("a record without a position")
    return lsn


class LogFollower:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._first = 0  # the current segment's first lsn (0: no place yet)
        self._offset = 0
        self._next = 0  # the lsn expected at _offset

    def first_lsn(self) -> int | None:
        """The first position the log's oldest segment holds (None: no segment)."""
        held = segments(self.directory)
        return held[0][0] if held else None

    def read(self, after_lsn: int, up_to: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Records with ``after_lsn < lsn <= up_to`` (at most ``limit``), in order, as
        ``(lsn, payload)``. Raises ``LogGap`` when ``after_lsn + 1`` is no longer held,
        ``ValueError`` on a record that does not read back whole."""
        if after_lsn >= up_to or limit <= 0:
            return []
        try:
            return self._read(after_lsn, up_to, limit)
        except BaseException:
            self._first = self._offset = self._next = 0  # seek again on the next call
            raise

    def _read(self, after_lsn: int, up_to: int, limit: int) -> list[tuple[int, bytes]]:
        if self._next != after_lsn + 1:
            self._seek(after_lsn + 1)
        found: list[tuple[int, bytes]] = []
        while len(found) < limit and self._next <= up_to:
            before = len(found)
            done = self._read_segment(up_to, limit, found)
            if len(found) == before and done:
                if not self._next_segment():
                    break
            elif len(found) == before:
                break
        return found

    def _seek(self, wanted: int) -> None:
        held = segments(self.directory)
        candidates = [first for first, _ in held if first <= wanted]
        if not candidates:
            raise LogGap(wanted, held[0][0] if held else None)
        self._first, self._offset, self._next = candidates[-1], 0, candidates[-1]
        skipped: list[tuple[int, bytes]] = []
        while self._next < wanted:  # skip to it, a chunk at a time
            skipped.clear()
            before = self._next
            done = self._read_segment(wanted - 1, wanted - self._next, skipped)
            if self._next == before:
                if done and self._next_segment():
                    continue
                raise LogGap(wanted, candidates[-1])

    def _path(self) -> Path:
        return self.directory / f"wal-{self._first:020d}.log"

    def _next_segment(self) -> bool:
        """Move on to the segment that starts where this one ended, if there is one."""
        for first, _ in segments(self.directory):
            if first == self._next:
                self._first, self._offset = first, 0
                return True
        return False

    def _read_segment(self, up_to: int, limit: int, found: list[tuple[int, bytes]]) -> bool:
        """Read records of the current segment into ``found``; True when its end was
        reached (every byte of it read)."""
        try:
            with open(self._path(), "rb") as handle:
                handle.seek(self._offset)
                data = handle.read(READ_BYTES)
        except FileNotFoundError:  # removed since this follower found it
            if found:  # hand back what was read; the next call reports the gap
                return False
            raise LogGap(self._next, self.first_lsn()) from None
        offset = 0
        while offset + HEADER.size <= len(data) and len(found) < limit and self._next <= up_to:
            length, crc = HEADER.unpack_from(data, offset)
            start = offset + HEADER.size
            if length > MAX_RECORD_BYTES:
                raise ValueError(f"{self._path().name} at byte {self._offset + offset}: bad length")
            if start + length > len(data):
                if len(data) < READ_BYTES:  # the file ends here: nothing more yet
                    break
                if offset == 0:  # one record larger than a chunk
                    with open(self._path(), "rb") as handle:
                        handle.seek(self._offset)
                        data = handle.read(HEADER.size + length)
                    if len(data) < HEADER.size + length:  # the file ends inside it
                        break
                    continue
                break
            payload = data[start : start + length]
            if zlib.crc32(payload) != crc:
                raise ValueError(f"{self._path().name} at byte {self._offset + offset}: bad CRC")
            lsn = _lsn_of(payload)
            if lsn != self._next:
                raise ValueError(f"{self._path().name}: lsn {lsn} where {self._next} belongs")
            found.append((lsn, payload))
            self._next += 1
            offset = start + length
        self._offset += offset
        return offset == len(data) and len(data) < READ_BYTES
