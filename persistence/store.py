"""The durable store: what a data directory holds and how the engine comes back from it.

``<data-dir>/`` holds ``wal-*.log`` (the write-ahead log), ``snapshot-*.msgpack`` (the
newest two snapshots), ``epoch`` (names the life of the channel histories: it changes
only when the directory is wiped) and ``admin.token``.

Recovery: the newest readable snapshot (or an empty state), then every log record
after its position, handed back to the engine, which applies each exactly as when it
was first committed; an incomplete last write is cut, and damage that hides a needed
record refuses the start (``persistence.scan``), as does an unreadable snapshot whose
position nothing readable reaches. Log segments are kept back to the *older* of the two
snapshots, so falling back to it still finds every record since; a snapshot that did
not load goes to ``damaged/`` once the start succeeds, so it never takes the place of a
sound one. Half-written files (``datadir.TEMPORARY_FILES``) are removed then too.

The directory's lock and permissions are ``persistence.datadir``'s: whoever opens a
``Store`` on a real data directory claims it first.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from engine.facts import Fact
from engine.realtime.history import Histories
from engine.state import State
from persistence import snapshot
from persistence.datadir import create_private, make_private_dir, remove_temporary
from persistence.errors import StartupRefused
from persistence.scan import UNCHANGED, LogScan, records, refuse_damage, settle
from persistence.wal import FileOps, WriteAheadLog

log = logging.getLogger("chat_engine.store")


# A snapshot is due once this many records were logged since the last: it bounds the log a
# restart replays (a replayed record costs far more than one loaded from a snapshot), and
# costs a fork plus the child's encoding, on another core (figures in docs/benchmarks.md,
# "Figures behind choices in the code").
DEFAULT_SNAPSHOT_RECORDS = 25_000
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
# Tests only: a smaller log segment, so that a test server writes several of them.
TEST_SEGMENT_BYTES_ENV = "TEST_CHAT_ENGINE_SEGMENT_BYTES"


@dataclass(slots=True)
class Recovered:
    snapshot_lsn: int
    records_replayed: int = 0
    last_lsn: int = 0
    truncated_bytes: int = 0
    seconds: float = 0.0
    snapshot_seconds: float = 0.0  # of which loading the snapshot; the rest is the log


def lost_to_snapshots(unreadable: list[tuple[Path, str]], reach: int) -> str | None:
    """What is lost when ``reach`` (the loaded snapshot's position, or the last log
    record after it) is below an unreadable snapshot's position (read from its file
    name): those records are neither in a snapshot that loads nor in the log. ``None``
    when nothing is."""
    above = [
        (lsn, path, error)
        for path, error in unreadable
        if (lsn := snapshot.position(path)) is not None and lsn > reach
    ]
    if not above:
        return None
    lsn, path, error = max(above)
    where = f"the log ends at lsn {reach}" if reach else "no log record is left"
    more = f" (and {len(above) - 1} more unreadable snapshot(s) above it)" if len(above) > 1 else ""
    return (
        f"{path.name} (lsn {lsn}) is unreadable ({error}){more}, and records "
        f"{reach + 1}..{lsn} are nowhere else: {where}"
    )


class Recovery:
    """A recovery under way: the snapshot is loaded (at ``snapshot_lsn``); iterating
    reads the log and hands back each record after it, ``(lsn, facts)``, in order, for
    the engine to apply; ``refuse`` is how the engine says one could not be; ``finish``
    decides whether the start goes on."""

    def __init__(
        self,
        store: Store,
        base: int,
        unreadable: list[tuple[Path, str]],
        started: float,
        snapshot_seconds: float,
    ) -> None:
        self.store = store
        self.snapshot_lsn = base
        self.unreadable = unreadable
        self.started = started
        self.snapshot_seconds = snapshot_seconds
        self.scanned = LogScan(after_lsn=base, last_lsn=base)
        self._records = records(store.data_dir, self.scanned)
        self._done = False

    def __iter__(self) -> Iterator[tuple[int, list[Fact]]]:
        yield from self._records
        self._done = True

    def refuse(self, error: Exception) -> NoReturn:
        """The record last handed back cannot be applied: refuse the start naming it
        (``scan.RecordFailed``), nothing on disk changed."""
        self._records.throw(error)
        raise AssertionError("a failed record ends the log's reading")  # pragma: no cover

    def finish(self) -> Recovered:
        """Once every record was handed back and applied: refuse (``StartupRefused``,
        nothing on disk changed) on damage that hides needed records, or when an
        unreadable snapshot covered positions that nothing else holds; else cut a torn
        tail, move unreadable snapshots aside, write a new epoch and remove half-written
        files, in that order."""
        assert self._done, "every record must be handed back before finish"
        store, scanned, directory = self.store, self.scanned, self.store.data_dir
        context = "".join(
            f"; {path.name} is unreadable ({error})" for path, error in self.unreadable
        )
        refuse_damage(directory, scanned, context=context)
        reach = max(self.snapshot_lsn, scanned.last_lsn)
        lost = lost_to_snapshots(self.unreadable, reach)
        if lost is not None:
            raise StartupRefused(
                f"refusing to start: {lost}; starting would silently lose them. "
                f"{UNCHANGED}. Restore the data directory from a backup (or put back a "
                "sound copy of that snapshot, or the log segments that held those records)"
            )
        settle(scanned)
        # Only once the start is sure (a refusal changes nothing on disk): unreadable
        # snapshots go aside, so that retention counts only snapshots that load.
        for path, error in self.unreadable:
            try:
                moved = snapshot.move_aside(directory, path)
            except OSError as failure:
                log.error(
                    "unreadable snapshot could not be moved aside",
                    extra={"fields": {"snapshot": path.name, "error": str(failure)}},
                )
                continue
            log.warning(
                "unreadable snapshot moved aside",
                extra={"fields": {"snapshot": path.name, "to": str(moved), "error": error}},
            )
        if store._new_epoch is not None:
            with open(create_private(directory / "epoch"), "w") as handle:
                handle.write(store._new_epoch + "\n")
            store._new_epoch = None
        removed = remove_temporary(directory)  # writers killed mid-way
        if removed:
            log.warning("half-written files removed", extra={"fields": {"files": removed}})
        store.last_snapshot_lsn = self.snapshot_lsn
        return Recovered(
            snapshot_lsn=self.snapshot_lsn,
            records_replayed=scanned.count,
            last_lsn=reach,
            truncated_bytes=scanned.truncated_bytes,
            seconds=time.perf_counter() - self.started,
            snapshot_seconds=self.snapshot_seconds,
        )


class Store:
    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: str = "always",
        snapshot_interval: float = 60.0,
        snapshot_records: int = DEFAULT_SNAPSHOT_RECORDS,
        segment_bytes: int | None = None,
        file_ops: FileOps | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.snapshot_interval = snapshot_interval
        # a snapshot is also due once this many records were logged since the last one,
        # which bounds the log tail a restart replays (docs/durability.md)
        self.snapshot_records = snapshot_records
        if segment_bytes is None:
            segment_bytes = int(os.environ.get(TEST_SEGMENT_BYTES_ENV) or DEFAULT_SEGMENT_BYTES)
        self.wal = WriteAheadLog(
            data_dir, fsync=fsync, segment_bytes=segment_bytes, file_ops=file_ops
        )
        self.last_snapshot_lsn = 0
        self.last_snapshot_pause = 0.0
        self.max_snapshot_pause = 0.0
        self.snapshots_taken = 0
        self._new_epoch: str | None = None  # made up by epoch(), written by recover()
        # Followers of the log (webhook delivery) that still need records: each answers
        # the last position it is done with (None: it holds nothing back), and segments
        # after the lowest are kept even once a snapshot covers them.
        self.holds: list[Callable[[], int | None]] = []

    def epoch(self) -> str:
        """The directory's epoch; a new one is only written by a recovery that succeeds
        (a refused start must leave the directory as it found it)."""
        path = self.data_dir / "epoch"
        if path.exists():
            return path.read_text().strip()
        if self._new_epoch is None:
            self._new_epoch = secrets.token_hex(8)
        return self._new_epoch

    def recover(self, state: State, histories: Histories) -> Recovery:
        """Blocking (run it in a worker thread): load the newest readable snapshot into
        ``state`` and ``histories``, and return the recovery under way: the engine
        iterates it for every later log record, applies each itself, and calls
        ``finish``. The store never applies a record. Nothing on disk changes before
        ``finish`` has found the start sound."""
        started = time.perf_counter()
        make_private_dir(self.data_dir)
        unreadable: list[tuple[Path, str]] = []
        found = snapshot.load_newest(self.data_dir, state, histories, unreadable)
        base = found.lsn if found is not None else 0
        return Recovery(self, base, unreadable, started, time.perf_counter() - started)

    def removable_up_to(self, covered: int) -> int:
        """The last position whose segment may go: covered by the kept snapshots and
        done with by every follower that holds the log back."""
        for hold in self.holds:
            held = hold()
            if held is not None:
                covered = min(covered, held)
        return covered

    async def take_snapshot(
        self, lsn: int, state: State, histories: Callable[[], dict[str, Any]]
    ) -> None:
        """``histories`` exports the channel histories as plain data; it is called in
        the forked writer, so the server does not pause for it."""
        if lsn <= self.last_snapshot_lsn:
            return
        pause = await snapshot.take_forked(self.data_dir, lsn, state, histories)
        self.last_snapshot_lsn = lsn
        self.last_snapshot_pause = pause
        self.max_snapshot_pause = max(self.max_snapshot_pause, pause)
        self.snapshots_taken += 1
        kept = snapshot.remove_old(self.data_dir)
        removed = self.wal.remove_segments_before(self.removable_up_to(kept[0])) if kept else 0
        log.info(
            "snapshot taken",
            extra={
                "fields": {
                    "lsn": lsn,
                    "fork_pause_ms": round(pause * 1000, 2),
                    "segments_removed": removed,
                }
            },
        )
