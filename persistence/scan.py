"""Reading the log back, and telling an incomplete last write from damage.

The log is read segment by segment, record by record. Where a record does not read
back (its header runs past the file, its CRC does not match, its payload does not
decode), the bytes after it are searched for the next record that does, so every
unreadable stretch is known by where it starts and ends, and by the log positions
(lsns) of the readable records on either side of it. Then:

- an unreadable stretch at the very end of the last segment that is an *incomplete*
  write (a header cut short, a length running past the end of the file, or bytes never
  written: zeros) is a **torn tail**: the last write of a crashed process, never
  acknowledged. Start-up cuts it off and says so.
- an unreadable stretch (or a gap in the lsns) whose records are all at or below the
  snapshot that recovery loaded is **harmless**: those records are not needed. It is
  logged and left alone.
- anything else is **damage**: acknowledged records that cannot be read. Start-up
  refuses, with nothing on disk changed, until an operator restores the directory or
  runs ``chat-engine repair``.

This module decides and reports; it never changes a file except to cut a torn tail.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.facts import Fact
from persistence.codec import decode_fact, unpack
from persistence.errors import StartupRefused
from persistence.wal import HEADER, MAX_RECORD_BYTES, segments

log = logging.getLogger("chat_engine.wal")

# Every payload is msgpack ``[lsn, [facts]]``: a two-item array, then an unsigned int.
# Looking for the next readable record only checks a CRC where these two bytes fit.
RECORD_START = 0x92
LSN_MARKERS = frozenset(range(0x80)) | {0xCC, 0xCD, 0xCE, 0xCF}

# The log's records after a position, as ``records`` hands them back: (lsn, facts).
Records = Generator[tuple[int, list[Fact]], None, None]

# What a refusal says was changed (docs/durability.md, "What a refused start leaves").
UNCHANGED = (
    "Nothing on disk was changed but the lock file (and loose modes, tightened to owner-only)"
)


@dataclass(slots=True)
class Region:
    """Unreadable bytes ``[offset, end)`` of one segment."""

    segment: Path
    offset: int
    end: int
    whole_record: bool  # one record, its header or content damaged
    incomplete: bool  # a header cut short, a length past the end of the file, or zeros


@dataclass(slots=True)
class Problem:
    # "damaged": unreadable bytes; "missing": lsns no segment holds; "out of place": a
    # readable record whose lsn is not above the one before it
    kind: str
    after_lsn: int  # the last readable record before it
    next_lsn: int | None  # the first readable record after it; None: none follows
    regions: list[Region] = field(default_factory=list)
    harmless: bool = False  # every record it hides is covered by the loaded snapshot
    torn: bool = False  # an incomplete last write, cut at start-up

    @property
    def lost(self) -> int | None:
        """How many records it hides, when a readable record follows it."""
        return None if self.next_lsn is None else self.next_lsn - self.after_lsn - 1

    def describe(self) -> str:
        if self.kind == "missing":
            assert self.next_lsn is not None
            return (
                f"records {self.after_lsn + 1}..{self.next_lsn - 1} are missing "
                "(no log segment holds them)"
            )
        first = self.regions[0]
        size = sum(region.end - region.offset for region in self.regions)
        where = f"{first.segment.name} at byte {first.offset} ({size} bytes)"
        if self.kind == "out of place":
            return f"a record out of place in {where}, after lsn {self.after_lsn}"
        if self.torn:
            return (
                f"an incomplete last write in {where}, after lsn {self.after_lsn} "
                "(never acknowledged)"
            )
        if self.next_lsn is None and len(self.regions) == 1 and first.whole_record:
            return (
                f"the last record, lsn {self.after_lsn + 1}, is whole but fails its check, "
                f"in {where}"
            )
        if self.next_lsn is None:
            return (
                f"unreadable bytes in {where} after lsn {self.after_lsn}, to the end of "
                "the log, that are not an incomplete write"
            )
        return (
            f"{self.lost} record(s) after lsn {self.after_lsn} unreadable in {where}; "
            f"readable records resume at lsn {self.next_lsn}"
        )


@dataclass(slots=True)
class SegmentInfo:
    path: Path
    size: int
    records: int = 0
    first_lsn: int | None = None
    last_lsn: int | None = None


@dataclass(slots=True)
class LogScan:
    after_lsn: int  # the loaded snapshot's position
    last_lsn: int = 0  # the last readable record (or ``after_lsn``)
    count: int = 0  # records after ``after_lsn`` handed back (or collected)
    readable: int = 0  # readable records in the whole log
    readable_after_damage: int = 0  # of which after the first harmful problem
    truncated_bytes: int = 0  # a torn tail's, once cut
    records: list[tuple[int, list[Fact]]] = field(default_factory=list)
    segments: list[SegmentInfo] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def harmful(self) -> list[Problem]:
        return [p for p in self.problems if not p.harmless and not p.torn]

    @property
    def torn(self) -> Problem | None:
        return next((p for p in self.problems if p.torn), None)


class RecordFailed(StartupRefused):
    """A record that reads back whole but cannot be decoded or applied."""

    def __init__(self, lsn: int, segment: Path, offset: int, error: BaseException) -> None:
        super().__init__(
            f"refusing to start: the log record at lsn {lsn} ({segment.name} at byte "
            f"{offset}, after lsn {lsn - 1}) reads back whole but cannot be applied: "
            f"{error!r}. {UNCHANGED}. Restore the data directory from a backup, or run "
            f"'chat-engine repair --data-dir {segment.parent}' to drop this record (and "
            "any that depend on it) and keep the rest"
        )
        self.lsn = lsn


def scan(directory: Path, after_lsn: int, *, collect: bool = True) -> LogScan:
    """Read the whole log without changing it. Every record with ``lsn > after_lsn`` is
    decoded (and collected in ``records`` when ``collect``) until the first harmful
    problem; the rest is still read, to report it."""
    result = LogScan(after_lsn=after_lsn, last_lsn=after_lsn)
    for record in records(directory, result):
        if collect:
            result.records.append(record)
    return result


def records(directory: Path, result: LogScan) -> Records:
    """Read the whole log without changing it, into ``result`` (its segments, problems,
    counts), and hand back each record with ``lsn > result.after_lsn``, decoded, as it
    is read, until the first harmful problem; the rest is still read, to report it. An
    exception thrown in where a record was handed back (``generator.throw``: the
    caller could not apply it) comes out as ``RecordFailed``, naming that record."""
    after_lsn = result.after_lsn
    found = segments(directory)
    last: int | None = None
    regions: list[Region] = []
    applying = True

    def problem_before(next_lsn: int) -> None:
        nonlocal regions, applying
        assert last is not None
        problem = Problem(
            "damaged" if regions else "missing",
            last,
            next_lsn,
            regions,
            harmless=next_lsn - 1 <= after_lsn,
        )
        result.problems.append(problem)
        if not problem.harmless:
            applying = False
        regions = []

    for first, path in found:
        data = path.read_bytes()
        info = SegmentInfo(path, len(data))
        result.segments.append(info)
        if last is None:
            last = first - 1
            if first > after_lsn + 1:  # the records between the snapshot and the log
                result.problems.append(Problem("missing", after_lsn, first))
                applying = False
        offset = 0
        while offset < len(data):
            parsed = parse(data, offset)
            if parsed is None:
                end = _next_record(data, offset + 1)
                regions.append(_region(path, data, offset, end))
                offset = end
                continue
            lsn, raw_facts, end = parsed
            if lsn <= last:  # a record out of place (a segment copied in twice?)
                if lsn > after_lsn:
                    result.problems.append(
                        Problem(
                            "out of place", last, None, [Region(path, offset, end, True, False)]
                        )
                    )
                    applying = False
                offset = end
                continue
            if lsn != last + 1 or regions:
                problem_before(lsn)
            last = lsn
            info.records += 1
            info.first_lsn = lsn if info.first_lsn is None else info.first_lsn
            info.last_lsn = lsn
            result.readable += 1
            if not applying:
                result.readable_after_damage += 1
            elif lsn > after_lsn:
                result.count += 1
                try:
                    facts = [decode_fact(fact) for fact in raw_facts]
                except Exception as error:
                    raise RecordFailed(lsn, path, offset, error) from error
                try:
                    yield lsn, facts
                except Exception as error:  # the caller could not apply it
                    raise RecordFailed(lsn, path, offset, error) from error
            offset = end
    if regions:  # unreadable bytes with nothing readable after them
        assert last is not None
        problem = Problem("damaged", last, None, regions)
        only = regions[0]
        if len(regions) == 1 and only.segment == found[-1][1] and only.incomplete:
            problem.torn = True
        elif len(regions) == 1 and only.whole_record and last + 1 <= after_lsn:
            problem.harmless = True
        result.problems.append(problem)
    if last is not None:
        result.last_lsn = max(after_lsn, last)


def read_log(directory: Path, after_lsn: int, *, context: str = "") -> LogScan:
    """``scan`` (collecting every record), then ``refuse_damage`` and ``settle``."""
    result = scan(directory, after_lsn)
    refuse_damage(directory, result, context=context)
    settle(result)
    return result


def refuse_damage(directory: Path, result: LogScan, *, context: str = "") -> None:
    """Raise ``StartupRefused`` (nothing changed) if damage hides needed records.
    ``context`` (which snapshots were unreadable) is added to the refusal."""
    harmful = result.harmful
    if not harmful:
        return
    problem = harmful[0]
    more = f" ({len(harmful) - 1} more problem(s) after it)" if len(harmful) > 1 else ""
    if any(found.kind == "missing" for found in harmful):
        # nothing of them is left to keep: repair refuses this, only a copy can help
        advice = (
            "Those records are not in the data directory, and 'chat-engine repair' cannot "
            "bring them back: restore the data directory from a backup, or put back the "
            "log segments (or a sound copy of the snapshot) that held them "
            f"('chat-engine check --data-dir {directory}' lists what is there)"
        )
    else:
        advice = (
            "Restore the data directory from a backup, or "
            f"run 'chat-engine repair --data-dir {directory}' to drop the damaged records "
            f"and keep the rest ('chat-engine check --data-dir {directory}' lists them)"
        )
    raise StartupRefused(
        f"refusing to start: the log is damaged: {problem.describe()}{more}; "
        f"{result.readable_after_damage} readable record(s) follow, up to lsn "
        f"{result.last_lsn}; the loaded snapshot covers lsn {result.after_lsn}{context}. "
        f"{UNCHANGED}. {advice}"
    )


def settle(result: LogScan) -> None:
    """Once the start is sure: cut a torn tail, and log what was skipped."""
    after_lsn = result.after_lsn
    for problem in result.problems:
        if problem.harmless:
            log.warning(
                "damaged log records skipped: the snapshot covers them",
                extra={"fields": {"problem": problem.describe(), "snapshot_lsn": after_lsn}},
            )
    torn = result.torn
    if torn is not None:
        region = torn.regions[0]
        result.truncated_bytes = region.end - region.offset
        with open(region.segment, "r+b") as handle:
            handle.truncate(region.offset)
            os.fsync(handle.fileno())
        log.warning(
            "log tail truncated",
            extra={
                "fields": {
                    "segment": region.segment.name,
                    "offset": region.offset,
                    "bytes_dropped": result.truncated_bytes,
                    "records_dropped": 1,
                    "dropped_lsn": torn.after_lsn + 1,
                    "last_lsn": torn.after_lsn,
                }
            },
        )


def parse(data: bytes, offset: int) -> tuple[int, list[Any], int] | None:
    if offset + HEADER.size > len(data):
        return None
    length, crc = HEADER.unpack_from(data, offset)
    start = offset + HEADER.size
    if length > MAX_RECORD_BYTES or start + length > len(data):
        return None
    payload = data[start : start + length]
    if zlib.crc32(payload) != crc:
        return None
    try:
        lsn, raw_facts = unpack(payload)
    except Exception:  # a CRC collision on garbage: unreadable
        return None
    if not isinstance(lsn, int) or not isinstance(raw_facts, list):
        return None
    return lsn, raw_facts, start + length


def _next_record(data: bytes, start: int) -> int:
    """Where the next readable record after ``start`` begins (``len(data)``: none)."""
    position = data.find(RECORD_START, start + HEADER.size)
    while position != -1:
        if position + 1 < len(data) and data[position + 1] in LSN_MARKERS:
            if parse(data, position - HEADER.size) is not None:
                return position - HEADER.size
        position = data.find(RECORD_START, position + 1)
    return len(data)


def _region(segment: Path, data: bytes, offset: int, end: int) -> Region:
    if offset + HEADER.size > len(data):
        return Region(segment, offset, end, whole_record=False, incomplete=True)
    length, crc = HEADER.unpack_from(data, offset)
    start = offset + HEADER.size
    # A write cut short leaves a true header over fewer bytes than it announces: the
    # bytes present are then not the whole record (if they are, the length is damaged).
    cut_short = (
        length <= MAX_RECORD_BYTES
        and start + length > len(data)
        and zlib.crc32(data[start:]) != crc
    )
    never_written = end == len(data) and not data[offset:].strip(b"\0")
    # One record whose header or content is damaged, if its own length spans the region,
    # or if the region's bytes are the payload its CRC names (only the length damaged).
    whole_record = start + length == end or zlib.crc32(data[start:end]) == crc
    return Region(
        segment,
        offset,
        end,
        whole_record=whole_record,
        incomplete=end == len(data) and (cut_short or never_written),
    )
