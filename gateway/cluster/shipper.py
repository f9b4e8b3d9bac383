"""The primary's shipper: every log record, once fsynced and applied, appended in log
order to the Redis stream, never twice, never blocking a write.

The engine tells the shipper (``Engine.record_listeners``) that records were applied,
and the log (``WriteAheadLog.durable_listeners``) that they reached the disk. It ships
the bytes the log wrote: the newest (within ``TAIL_RECORDS`` and ``TAIL_BYTES``) as the
log hands them over (``written_listeners``), older ones read back from the write-ahead
log (``persistence.follow``), so a Redis that is slow, away or restarted costs nothing
but lag: on (re)connecting it reads the stream's head and ships the backlog from the
log on disk. Entry IDs are the log positions, so Redis refuses a position already on
the stream. Log segments are kept until shipped (``Store.holds``, bounded by
``RETAIN_RECORDS``).

Only fsynced records are shipped (``ship_limit``): a replica must never hold a record
that a machine crash of the primary could take back. With ``--fsync always`` that is
every record once applied; with ``interval`` records wait for the next periodic fsync
(at most 50 ms); with ``off``, which never fsyncs for a write, the shipper asks the log
for one fsync of everything written before each batch it ships (``WriteAheadLog.sync``).

With ``--in-memory`` there is no log to read back: the shipper ships applied records
and keeps the newest (as many as the stream keeps) in memory; after an outage longer
than that the stream has a gap, and replicas load a fresh snapshot.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import coredis
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.actors.supervisor import Engine
from engine.facts import Fact
from gateway.cluster import redislog
from gateway.cluster.node import ClusterNode
from persistence.follow import LogFollower, LogGap
from persistence.wal import encode

log = logging.getLogger("chat_engine.cluster")

BATCH = 500  # records per pipeline
LINGER = 0.005  # seconds a batch of fewer than BATCH records waits for more
# The most records the shipper keeps in the log beyond what the snapshots need: a Redis
# outage longer than this lets the segments go, and the stream then has a gap (replicas
# reload a snapshot) rather than the disk filling up.
RETAIN_RECORDS = 1_000_000
# The newest records the shipper keeps in memory as the log wrote them, so that a
# shipper keeping up never reads its own log back (a worker thread's hop and a read per
# batch); one further behind (after an outage, a restart) reads the log.
TAIL_RECORDS = 10_000
TAIL_BYTES = 16 * 1024 * 1024  # and no more bytes than this (a record can be 64 KiB)
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


class Shipper:
    def __init__(
        self,
        engine: Engine,
        url: str,
        prefix: str,
        log_length: int,
        data_dir: Path | None,
        instance: str | None = None,
    ) -> None:
        self.engine = engine
        # the lease's id of this primary (``redislog.instance_id``; none given: its own)
        self.instance = instance or uuid.uuid4().hex
        self.url = url
        self.prefix = prefix
        self.stream = redislog.stream_key(prefix)
        self.log_length = log_length
        self.shipped = 0  # the newest position known to be on the stream
        self.connected = False
        self.lease_held = False
        # Redis answered that another primary holds the lease: this one is out of the
        # cluster (not ready, refuses writes) until it takes the lease back.
        self.lease_elsewhere = False
        self._lease_known = False  # the first answer is logged whatever it is
        self._synced = False  # the stream's head was read while holding the lease
        self.entries_shipped = 0
        self.outages = 0
        self._follower = LogFollower(data_dir) if data_dir is not None else None
        # the newest records, contiguous, as ``(lsn, payload)``: with a log, as it wrote
        # them; without one, as applied. Bounded by TAIL_RECORDS and TAIL_BYTES only where
        # the follower can read the rest back; otherwise it is all there is.
        self._tail: deque[tuple[int, bytes]] = deque()
        self._tail_records = log_length if data_dir is None else min(log_length, TAIL_RECORDS)
        self._tail_bytes = 0
        self._wake = trio.Event()
        engine.record_listeners.append(self._applied)
        self._wal = engine.store.wal if engine.store is not None else None
        if self._wal is not None:
            self._wal.written_listeners.append(self._keep)
            self._wal.durable_listeners.append(self._durable)

    def hold(self) -> int:
        """The last position the shipper is done with, for ``Store.holds``: the log's
        segments after it stay, within ``RETAIN_RECORDS`` of the newest record."""
        return max(self.shipped, self.engine.applied_lsn - RETAIN_RECORDS)

    @property
    def epoch(self) -> str:
        return self.engine.realtime.epoch

    @property
    def holder(self) -> str:
        """The lease's value while this primary holds it."""
        return redislog.holder(self.epoch, self.instance)

    def ship_limit(self) -> int:
        """The newest position that may go on the stream: applied, and fsynced when
        there is a log (``--in-memory``: applied)."""
        applied = self.engine.applied_lsn
        return applied if self._wal is None else min(applied, self._wal.durable_lsn)

    def _applied(self, lsn: int, facts: Sequence[Fact]) -> None:
        if self._wal is None:
            self._keep(lsn, [encode(lsn, facts)])
        self._wake.set()

    def _keep(self, first_lsn: int, payloads: list[bytes]) -> None:
        tail = self._tail
        if tail and tail[-1][0] + 1 != first_lsn:  # never expected: keep it contiguous
            tail.clear()
            self._tail_bytes = 0
        for record in enumerate(payloads, first_lsn):
            tail.append(record)
            self._tail_bytes += len(record[1])
        bounded = self._follower is not None  # else the tail is all there is
        while len(tail) > self._tail_records or (
            bounded and self._tail_bytes > TAIL_BYTES and len(tail) > 1
        ):
            self._tail_bytes -= len(tail.popleft()[1])

    def _durable(self, lsn: int) -> None:
        self._wake.set()

    async def _sync_log(self) -> None:
        """Fsync what the log wrote (``--fsync off``, or a clean stop); a failure is
        the log's to report, and shipping waits for the next fsync that works."""
        assert self._wal is not None
        try:
            await self._wal.sync()
        except OSError as error:
            log.error("log fsync for shipping failed", extra={"fields": {"error": str(error)}})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        while True:
            try:
                async with redislog.client(self.url) as redis:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._renew, redis)
                        await self._ship(redis)
            except Exception as error:
                if self.connected or failures == 0:
                    log.warning(
                        "Redis unavailable; records wait in the log",
                        extra={"fields": {"error": redislog.describe(error)}},
                    )
                    self.outages += 1
                self.connected = False
                self.lease_held = False  # lease_elsewhere stays as Redis last said
                self._synced = False
            await trio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
            failures = 0 if self.connected else failures + 1

    async def finish(self, timeout: float = 2.0) -> None:
        """A clean stop: let what was applied reach the stream (for up to ``timeout``
        seconds), then give up the lease."""
        with trio.move_on_after(timeout):
            if self._wal is not None and self._wal.durable_lsn < self.engine.applied_lsn:
                await self._sync_log()
            while self.connected and self.shipped < self.ship_limit():
                await trio.sleep(0.01)
        await redislog.release(self.url, self.prefix, self.holder)

    async def _renew(self, redis: coredis.Redis[bytes]) -> None:
        while True:
            with trio.fail_after(redislog.STREAM_TIMEOUT):
                held = await redislog.hold_lease(redis, self.prefix, self.holder)
            self._set_lease(held)
            await trio.sleep(redislog.RENEW_SECONDS)

    def _set_lease(self, held: bool) -> None:
        if not held and (self.lease_held or not self._lease_known):
            log.error(
                "another primary holds the Redis prefix; not shipping, not ready, "
                "refusing writes until the lease is this primary's again",
                extra={"fields": {"key": redislog.lease_key(self.prefix)}},
            )
        elif held and not self.lease_held and self.lease_elsewhere:
            log.info("the primary lease is this primary's again; shipping")
        if not held:
            self._synced = False
        self._lease_known = True
        self.lease_held = held
        self.lease_elsewhere = not held
        self._wake.set()

    def write_refusal(self) -> str | None:
        if self.lease_elsewhere:
            return "Another primary holds the cluster; this one takes no writes."
        return None

    def _fresh_start(self) -> int:
        """Where shipping starts on an empty stream: no further back than the stream
        keeps (a replica further behind reloads a snapshot anyway)."""
        return max(0, self.engine.applied_lsn - self.log_length)

    async def _reset(self, redis: coredis.Redis[bytes]) -> None:
        await redislog.reset(redis, self.prefix, self.holder)
        self.shipped = self._fresh_start()

    async def _sync_head(self, redis: coredis.Redis[bytes]) -> None:
        """Where the stream is: its newest position, if it is this epoch's, not ahead
        of this log and byte for byte this log's record; otherwise the stream is another
        history's (or holds a bad entry), and starts over. Call while holding the lease."""
        entries = await redis.xrevrange(self.stream, count=1)
        if not entries:
            exists = await redis.exists([self.stream])
            self.shipped = self._fresh_start()
            if exists:  # emptied by trimming: its last ID still bars lower ones
                info = await redis.xinfo_stream(self.stream)
                last = info.get("last-generated-id")
                self.shipped = redislog.lsn_of(last) if isinstance(last, bytes | str) else 0
                if self.shipped > self.engine.applied_lsn:
                    await self._reset(redis)
            return
        head = entries[0]
        lsn = redislog.lsn_of(head.identifier)
        epoch = redislog.text(head.field_values.get(redislog.EPOCH, b""))
        if epoch != self.epoch or lsn > self.engine.applied_lsn:
            log.warning(
                "the stream holds another history; starting it over",
                extra={"fields": {"stream_epoch": epoch, "stream_lsn": lsn}},
            )
            await self._reset(redis)
        elif not await self._is_ours(lsn, head.field_values.get(redislog.RECORD)):
            log.error(
                "the stream's newest entry is not this log's record; starting it over",
                extra={"fields": {"stream_lsn": lsn}},
            )
            await self._reset(redis)
        else:
            self.shipped = lsn

    async def _is_ours(self, lsn: int, payload: object) -> bool:
        """Whether ``payload`` is this log's record at ``lsn`` (True when the log no
        longer holds it: nothing to compare with)."""
        try:
            records = await self._read_raw(lsn - 1, lsn, 1)
        except LogGap:
            return True
        if not records or records[0][0] != lsn:
            return True
        return records[0][1] == payload

    async def _ship(self, redis: coredis.Redis[bytes]) -> None:
        # the lease first: a primary that does not hold it never touches the stream
        with trio.fail_after(redislog.STREAM_TIMEOUT):
            self._set_lease(await redislog.hold_lease(redis, self.prefix, self.holder))
        self.connected = True
        lingered = False
        while True:
            if not self.lease_held:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            try:
                if not self._synced:
                    await self._sync_head(redis)
                    self._synced = True
                    log.info(
                        "shipping", extra={"fields": {"stream": self.stream, "from": self.shipped}}
                    )
                limit = self.ship_limit()
                if self.shipped >= limit:
                    self._wake = trio.Event()
                    if (
                        self._wal is not None
                        and self._wal.fsync_mode == "off"
                        and self.shipped < self.engine.applied_lsn
                    ):
                        await self._linger()
                        await self._sync_log()  # nothing else fsyncs: ask for it
                        lingered = True
                        if self.ship_limit() > limit:
                            continue
                    await self._wake.wait()
                    continue
                if not lingered:
                    await self._linger()
                    limit = self.ship_limit()
                lingered = False
                records = await self._read(self.shipped, limit)
                if not records:
                    continue
                added = await redislog.append(
                    redis, self.prefix, self.holder, self.epoch, self.log_length, records
                )
            except redislog.LeaseLost:
                self._set_lease(False)
                continue
            if added:
                self.shipped = records[added - 1][0]
                self.entries_shipped += added
            if added < len(records):  # the stream holds a position: read where it is
                self._synced = False

    async def _linger(self) -> None:
        """Unless a whole batch waits, let the next commits join the records waiting:
        one read (and fsync) and one XADD then carry many records, where under load
        shipping each commit's few records on their own cost the primary most of what
        shipping costs it. A record waits at most ``LINGER`` seconds more for it."""
        if LINGER and self.engine.applied_lsn - self.shipped < BATCH:
            await trio.sleep(LINGER)

    async def _read_raw(self, after: int, up_to: int, count: int) -> list[tuple[int, bytes]]:
        tail = self._tail
        if self._follower is None or (tail and tail[0][0] <= after + 1):
            return self._from_tail(after, up_to, count)
        return await trio.to_thread.run_sync(self._follower.read, after, up_to, count)

    async def _read(self, after: int, up_to: int) -> list[tuple[int, bytes]]:
        try:
            return await self._read_raw(after, up_to, BATCH)
        except LogGap as gap:
            first = gap.first if gap.first is not None else up_to + 1
            log.error(
                "records no longer held were never shipped; replicas will reload",
                extra={"fields": {"from": after + 1, "to": first - 1}},
            )
            self.shipped = max(after, first - 1)
            return []

    def _from_tail(self, after: int, up_to: int, count: int) -> list[tuple[int, bytes]]:
        tail = self._tail
        if not tail or tail[-1][0] <= after:
            return []
        first = tail[0][0]
        if after + 1 < first:
            raise LogGap(after + 1, first)
        start = after + 1 - first
        # a deque's items are reached fastest from its nearer end, which for a shipper
        # keeping up is the right one
        return [tail[i] for i in range(start, min(len(tail), start + count, up_to - first + 1))]


class Primary(ClusterNode):
    """A cluster's primary: the single-node engine plus the shipper."""

    role = "primary"

    def __init__(self, shipper: Shipper) -> None:
        self.shipper = shipper

    def not_ready(self) -> str | None:
        return self.shipper.write_refusal()

    def write_refusal(self) -> str | None:
        return self.shipper.write_refusal()

    def collect(self) -> Iterator[Metric]:
        shipper = self.shipper
        yield GaugeMetricFamily(
            "chat_engine_shipped_position",
            "The newest log position known to be on the Redis stream.",
            value=shipper.shipped,
        )
        yield GaugeMetricFamily(
            "chat_engine_ship_lag_records",
            "Applied log records not yet on the Redis stream.",
            value=max(0, shipper.engine.applied_lsn - shipper.shipped),
        )
        yield GaugeMetricFamily(
            "chat_engine_redis_connected",
            "1 while Redis answers the shipper.",
            value=1 if shipper.connected else 0,
        )
        yield GaugeMetricFamily(
            "chat_engine_primary_lease_held",
            "1 while this primary holds the cluster's lease (Redis said so last).",
            value=1 if shipper.lease_held else 0,
        )
        yield CounterMetricFamily(
            "chat_engine_redis_outages", "Times the shipper lost Redis.", value=shipper.outages
        )
