"""The durable store: what a data directory holds and how the engine comes back from it.

``<data-dir>/`` holds ``wal-*.log`` (the write-ahead log), ``snapshot-*.msgpack`` (the
newest two snapshots), ``epoch`` (names the life of the channel histories: it changes
only when the directory is wiped) and ``admin.token``.

Recovery: the newest readable snapshot (or an empty state), then every log record
after its position, applied exactly as when they were first committed; an incomplete
last write is cut, and damage that hides a needed record refuses the start
(``persistence.scan``). Log segments are kept back to the *older* of the two snapshots,
so falling back to it still finds every record since; a snapshot that did not load goes
to ``damaged/`` once the start succeeds, so it never takes the place of a sound one.

The directory's lock and permissions are ``persistence.datadir``'s: whoever opens a
``Store`` on a real data directory claims it first.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.facts import Fact
from engine.realtime.history import Histories
from engine.state import State
from persistence import snapshot
from persistence.datadir import create_private, make_private_dir
from persistence.scan import read_log
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
    state: State
    snapshot_lsn: int
    records_replayed: int = 0
    last_lsn: int = 0
    truncated_bytes: int = 0
    seconds: float = 0.0
    snapshot_seconds: float = 0.0  # of which loading the snapshot; the rest is the log


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

    def recover(
        self,
        state: State,
        histories: Histories,
        apply: Callable[[int, list[Fact]], object],
        *,
        loaded: Callable[[int], object] = lambda lsn: None,
    ) -> Recovered:
        """Blocking (run it in a worker thread): load the snapshot into ``state`` and
        ``histories``, tell ``loaded`` its log position, then hand every log record after
        it back to the engine's ``apply``, in order, as it is read. The store never
        applies a record itself."""
        started = time.perf_counter()
        make_private_dir(self.data_dir)
        removed = snapshot.remove_temporary(self.data_dir)  # a writer killed mid-way
        for stray in self.data_dir.glob(".wal-*.log.repair"):  # a repair killed mid-way
            stray.unlink()
            removed += 1
        if removed:
            log.warning("half-written files removed", extra={"fields": {"files": removed}})
        unreadable: list[tuple[Path, str]] = []
        found = snapshot.load_newest(self.data_dir, state, histories, unreadable)
        base = found.lsn if found is not None else 0
        snapshot_seconds = time.perf_counter() - started
        loaded(base)
        context = "".join(f"; {path.name} is unreadable ({error})" for path, error in unreadable)
        tail = read_log(self.data_dir, after_lsn=base, apply=apply, context=context)
        # Only once the start is sure (a refusal changes nothing on disk): unreadable
        # snapshots go aside, so that retention counts only snapshots that load.
        for path, error in unreadable:
            try:
                moved = snapshot.move_aside(self.data_dir, path)
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
        if self._new_epoch is not None:
            with open(create_private(self.data_dir / "epoch"), "w") as handle:
                handle.write(self._new_epoch + "\n")
            self._new_epoch = None
        recovered = Recovered(
            state=state,
            snapshot_lsn=base,
            records_replayed=tail.count,
            last_lsn=max(base, tail.last_lsn),
            truncated_bytes=tail.truncated_bytes,
        )
        self.last_snapshot_lsn = base
        recovered.seconds = time.perf_counter() - started
        recovered.snapshot_seconds = snapshot_seconds
        return recovered

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
