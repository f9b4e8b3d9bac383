"""The engine: the state, the actors that write it, and the nursery that owns them.

``Engine.run`` opens the nursery every actor lives in; the engine is usable once
``started`` is set. Reads go straight to ``engine.state`` through its query methods:
they are synchronous (no checkpoint), so under trio's cooperative scheduling a read
always sees a state between two applied facts. Every write goes through an actor.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from engine import errors
from engine.actors.chat import ChatActors
from engine.actors.commit import CommitLoop
from engine.actors.directory import DirectoryActor
from engine.actors.mailbox import ActorPool
from engine.actors.presence import Reachability
from engine.chat import ChangeSet
from engine.facts import Fact
from engine.fanout import fan_out
from engine.ids import new_secret
from engine.realtime.core import Realtime
from engine.realtime.history import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_TOTAL_HISTORY_LIMIT,
    Histories,
)
from engine.state import State
from persistence.store import Recovered, Store

log = logging.getLogger("chat_engine.engine")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class EngineConfig:
    resume_window: float = 1800.0
    presence_timeout: float = 120.0
    mailbox_capacity: int = 64
    actor_idle_timeout: float = 30.0
    send_timeout: float = 10.0
    history_limit: int = DEFAULT_HISTORY_LIMIT  # events kept per channel
    total_history_limit: int = DEFAULT_TOTAL_HISTORY_LIMIT  # events kept across channels
    # A replica: its state only changes by the primary's records (``apply_record``), so
    # it commits nothing and leaves presence expiry to the primary.
    replica: bool = False

    @property
    def resume_window_ms(self) -> int:
        return int(self.resume_window * 1000)


class Engine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        store: Store | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.store = store
        self.applied_lsn = 0
        self.recovery: Recovered | None = None
        self.state = State()
        self._clock = clock
        self._last_time = 0
        self._pool: ActorPool | None = None
        self.started = trio.Event()
        self.chats = ChatActors(self)
        self.directory = DirectoryActor(self)
        # The epoch names the life of the channel histories: in memory, this process;
        # with a data directory, the directory.
        self.realtime = Realtime(
            epoch=store.epoch() if store is not None else new_secret()[:16],
            history_limit=self.config.history_limit,
            total_history_limit=self.config.total_history_limit,
        )
        self._reachability: Reachability | None = None
        # called with each live record once applied (lsn, facts), in log order, on the
        # commit path (not while recovering): a listener must only take note and wake a
        # task; the cluster's shipper and webhook delivery listen
        self.record_listeners: list[Callable[[int, Sequence[Fact]], None]] = []
        self._snapshot_due = trio.Event()
        self._commits = CommitLoop(store.wal, self.apply_record) if store is not None else None
        # One snapshot at a time: two writers at one position would share a temporary
        # file, and the first to finish would remove the other's while it writes.
        self._snapshot_lock = trio.Lock()

    @property
    def pool(self) -> ActorPool:
        if self._pool is None:
            raise errors.Unavailable("The engine is not running.")
        return self._pool

    def now(self) -> int:
        """Wall-clock milliseconds, never going backwards within the engine."""
        self._last_time = max(self._last_time, self._clock())
        return self._last_time

    @property
    def reachability(self) -> Reachability:
        if self._reachability is None:
            raise errors.Unavailable("The engine is not running.")
        return self._reachability

    async def commit(self, facts: Sequence[Fact]) -> list[ChangeSet]:
        """Make one mutation's facts durable, then apply them and hand their events to
        the realtime core as one batch (``engine.actors.commit``); a write failure
        raises ``Unavailable`` and nothing is applied."""
        if self.config.replica:
            raise errors.Unavailable("A replica does not write; the primary does.")
        if self._commits is None:
            return self.apply_record(self.applied_lsn + 1, facts)
        changes: list[ChangeSet] = await self._commits.commit(facts)
        return changes

    def apply_record(self, lsn: int, facts: Sequence[Fact]) -> list[ChangeSet]:
        """Apply one durable log record and fan its events out: the one apply path, for
        records just committed, records replayed at start-up and by ``chat-engine repair``."""
        changes = []
        publications = []
        self.state.position = lsn
        for fact in facts:
            for change in self.state.apply(fact):
                changes.append(change)
                publications += fan_out(self.state, change)
        self.realtime.publish(publications)
        self.applied_lsn = lsn
        if self.started.is_set():  # not while recovering, in a worker thread
            self._check_snapshot_due()
            for listener in self.record_listeners:
                listener(lsn, facts)
        return changes

    def take_over(self, lsn: int, state: State, histories: Histories) -> None:
        """A replica's (re)bootstrap: become ``state`` and ``histories`` (loaded aside
        from the primary's snapshot, epoch included) at log position ``lsn``."""
        self.state.take_over(state)
        self.realtime.histories.take_over(histories)
        self.realtime.histories.epoch = histories.epoch
        self.applied_lsn = lsn

    def _check_snapshot_due(self) -> None:
        store = self.store
        if (
            store is not None
            and self.applied_lsn - store.last_snapshot_lsn >= store.snapshot_records
        ):
            self._snapshot_due.set()

    def _recover(self) -> None:
        """Blocking (a worker thread): nothing else touches the state until started."""
        assert self.store is not None
        # Recovery allocates millions of objects that all live on; the cyclic GC would
        # rescan the growing heap again and again, a large part of recovery's time
        # (docs/benchmarks.md, "Figures behind choices in the code"). Off meanwhile;
        # afterwards everything recovered is frozen out of its scans.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._recover_unguarded()
        finally:
            gc.freeze()
            if collecting:
                gc.enable()

    def _recover_unguarded(self) -> None:
        """The store loads the snapshot and reads the log back; the engine applies each
        record after it through ``apply_record``, as if just committed. A record that
        cannot be applied refuses the start, naming it (``Recovery.refuse``)."""
        assert self.store is not None
        recovery = self.store.recover(self.state, self.realtime.histories)
        self.applied_lsn = recovery.snapshot_lsn
        for lsn, facts in recovery:
            try:
                self.apply_record(lsn, facts)
            except Exception as error:
                recovery.refuse(error)
        self.recovery = recovery.finish()
        self.applied_lsn = self.recovery.last_lsn

    async def _snapshot_periodically(self) -> None:
        assert self.store is not None
        while True:
            # every snapshot_interval seconds, or sooner once snapshot_records records
            # were logged since the last one
            with trio.move_on_after(self.store.snapshot_interval):
                await self._snapshot_due.wait()
            self._snapshot_due = trio.Event()
            await self.snapshot()

    async def snapshot(self) -> None:
        """Take a snapshot now (forked: the event loop only pauses for the fork)."""
        if self.store is not None:
            try:
                # The position is read once the lock is held: one in flight that already
                # covers it (a shutdown during a periodic snapshot) makes this one a no-op.
                async with self._snapshot_lock:
                    await self.store.take_snapshot(
                        self.applied_lsn, self.state, self.realtime.histories.export
                    )
            except OSError:
                log.exception("snapshot failed; the log still has everything")

    async def drain(self) -> None:
        """Clean shutdown: let queued records commit, then write a final snapshot."""
        if self.store is not None:
            assert self._commits is not None
            await self._commits.flush()
            await self.snapshot()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._pool = ActorPool(
                nursery,
                capacity=self.config.mailbox_capacity,
                idle_timeout=self.config.actor_idle_timeout,
                send_timeout=self.config.send_timeout,
            )
            if self.store is not None:
                started = time.perf_counter()
                await trio.to_thread.run_sync(self._recover)
                assert self.recovery is not None
                self.store.wal.open(self.applied_lsn)
                assert self._commits is not None
                await nursery.start(self.store.wal.run)
                await nursery.start(self._commits.run)
                nursery.start_soon(self._snapshot_periodically)
                log.info(
                    "recovered",
                    extra={
                        "fields": {
                            "seconds": round(time.perf_counter() - started, 3),
                            "snapshot_lsn": self.recovery.snapshot_lsn,
                            "snapshot_seconds": round(self.recovery.snapshot_seconds, 3),
                            "records_replayed": self.recovery.records_replayed,
                            "replay_seconds": round(
                                self.recovery.seconds - self.recovery.snapshot_seconds, 3
                            ),
                            "tail_bytes_truncated": self.recovery.truncated_bytes,
                            "chats": len(self.state.chats),
                        }
                    },
                )
            self._reachability = Reachability(self, self.config.presence_timeout)
            if not self.config.replica:  # the primary expires presences for all nodes
                await nursery.start(self._reachability.run)
            self.started.set()
            self._check_snapshot_due()  # a long replayed tail: snapshot it at once
            task_status.started()
