"""Reading the log after a position, a bounded batch at a time, while it is written.

Recovery reads the whole log once (``persistence.scan``); a follower of the log (webhook
delivery, and anything else that ships records onward) instead asks, again and again,
for the next few records after the position it has reached, up to a position known to
be applied. ``LogReader.read`` answers that without holding more than one batch in
memory: it finds the segment that holds the next record, reads records one by one from
there, and hands back a ``Place`` (segment, byte offset, position) that lets the next
call start where this one stopped instead of at the segment's start.

A record that does not read back whole is where the batch ends: it is the last write,
still in progress (the caller's ``upto`` keeps it from reading that far) or damage that
recovery reports. Records that are no longer on disk (their segments removed) show as a
batch whose first record is past the position asked for; the caller decides what that
means (``first_lsn`` says where the log now starts).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.facts import Fact
from persistence.codec import decode_fact, unpack
from persistence.wal import HEADER, MAX_RECORD_BYTES, segments


@dataclass(frozen=True, slots=True)
class Place:
    """Just after the record at ``lsn``: byte ``offset`` of segment ``segment``."""

    segment: int  # the segment's first lsn
    offset: int
    lsn: int


@dataclass(slots=True)
class Batch:
    records: list[tuple[int, list[Fact]]]
    place: Place | None  # after the last record read (None: nothing read)


class LogReader:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def first_lsn(self) -> int | None:
        """The first position the log's oldest segment holds (None: no segment)."""
        found = segments(self.directory)
        return found[0][0] if found else None

    def read(self, after_lsn: int, upto_lsn: int, limit: int, place: Place | None = None) -> Batch:
        """At most ``limit`` records with ``after_lsn < lsn <= upto_lsn``, in order.
        ``place``: where a previous call stopped (used when it stopped at ``after_lsn``).
        Blocking: run it in a worker thread."""
        batch = Batch([], None)
        if upto_lsn <= after_lsn or limit <= 0:
            return batch
        found = segments(self.directory)
        if not found:
            return batch
        if place is not None and place.lsn == after_lsn:
            start = next((i for i, (first, _) in enumerate(found) if first == place.segment), None)
            offset = place.offset if start is not None else 0
        else:
            start = None
            offset = 0
        if start is None:
            # the last segment starting at or before the next record (else the first)
            start = 0
            for index, (first, _) in enumerate(found):
                if first <= after_lsn + 1:
                    start = index
        for index in range(start, len(found)):
            first, path = found[index]
            if index != start:
                offset = 0
            try:
                handle = open(path, "rb")
            except FileNotFoundError:  # removed meanwhile: the next one, if any
                continue
            with handle:
                handle.seek(offset)
                while len(batch.records) < limit:
                    record = _next(handle)
                    if record is None:
                        break
                    lsn, raw, end = record
                    if lsn > upto_lsn:
                        return batch
                    batch.place = Place(first, end, lsn)
                    if lsn > after_lsn:
                        batch.records.append((lsn, [decode_fact(fact) for fact in raw]))
            if len(batch.records) >= limit:
                break
        return batch


def _next(handle: BinaryIO) -> tuple[int, list, int] | None:
    """The record at the handle's position and the offset after it, or None where no
    whole record is (the end, a write in progress, or damage)."""
    header = handle.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    length, crc = HEADER.unpack(header)
    if length > MAX_RECORD_BYTES:
        return None
    payload = handle.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    try:
        lsn, raw = unpack(payload)
    except Exception:
        return None
    if not isinstance(lsn, int) or not isinstance(raw, list):
        return None
    return lsn, raw, handle.tell()
