"""A replica: the primary's state, kept by applying its log from the Redis stream.

It loads the primary's snapshot (``GET /internal/v1/snapshot``), then reads the stream
from that position and hands each record to ``Engine.apply_record``, the primary's own
apply path, so its state, channel seqs, histories and epoch equal the primary's at
every position. It serves reads and WebSocket sessions itself and forwards writes to
the primary; a write's answer waits until this replica applied the position the
primary named (``Chat-Engine-Position``), so a client reads its own writes here.

When it loses its place (the stream no longer holds the next record, or holds another
epoch, or is behind it), it loads a fresh snapshot and closes its sessions with 1012;
their clients resume with ``since`` as after any reconnect. It reports the users
reachable through it to the primary, which alone expires presences.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import coredis
import httpx
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine import errors
from engine.actors.supervisor import Engine
from engine.reachability import report_interval
from engine.realtime.history import DEFAULT_HISTORY_LIMIT
from engine.state import State
from gateway.cluster import redislog
from gateway.cluster.node import ClusterNode
from gateway.routes.internal import EPOCH_HEADER, HISTORY_LIMIT_HEADER, POSITION_HEADER
from gateway.web import Request, Response, error_response
from gateway.ws import WsGateway
from persistence.follow import decode
from persistence.replication import load_snapshot

log = logging.getLogger("chat_engine.cluster")
logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded write

WRITE_WAIT = 10.0  # seconds a forwarded write takes at most, the primary's answer included
HEAD_INTERVAL = 0.5  # seconds between looks at the stream's head
READ_COUNT = 500  # entries per XREAD
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0)
# Between reloads that were lost again before any record applied: the stream holds
# what this primary does not serve (another primary, another prefix's leftovers).
RELOAD_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
REPORT_CHUNK = 1000  # user ids per reachability report (the primary caps a body at 64 KiB)
HEAD_TIMEOUT = 5.0  # seconds a look at the stream's head may take
# The stream counts as reachable while it answered within this many seconds (a blocked
# XREAD answers every BLOCK_MS, a look at the head every HEAD_INTERVAL).
CONTACT_SECONDS = 3 * redislog.BLOCK_MS / 1000
# Answers that say a request never reached the primary: a retry cannot duplicate it.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The answer headers of the primary a forwarded write passes on.
PASSED_HEADERS = (
    "retry-after",
    "location",
    "allow",
    POSITION_HEADER.lower(),
    EPOCH_HEADER.lower(),
)


def _shipped_at(entry: Any) -> float | None:
    """The primary's wall clock (s) when it shipped ``entry``."""
    if entry is None:
        return None
    value = entry.field_values.get(redislog.SHIPPED_AT)
    try:
        return int(value) / 1000 if value is not None else None
    except ValueError:
        return None


class LostPlace(Exception):
    """The stream cannot take this replica on from where it is."""


class Replica(ClusterNode):
    role = "replica"
    forwards_writes = True

    def __init__(
        self,
        engine: Engine,
        *,
        redis_url: str,
        prefix: str,
        primary: str,
        admin_token: str,
        max_lag: int,
    ) -> None:
        self.engine = engine
        self.redis_url = redis_url
        self.stream = redislog.stream_key(prefix)
        self.primary = primary.rstrip("/")
        self.admin_token = admin_token
        self.max_lag = max_lag
        self.ws: WsGateway | None = None  # set once the gateway exists
        self.head = 0  # the stream's newest position, as last seen
        self.behind_since: float | None = None  # trio time the lag began (None: caught up)
        self.bootstraps = 0
        self.redis_connected = False
        self.last_contact: float | None = None  # trio time the stream last answered
        self.read_since_bootstrap = False  # the stream was read since the last snapshot
        self.next_shipped_at: float | None = None  # wall clock (s) of the oldest unapplied
        self.reload_streak = 0  # reloads lost again before a record applied
        self.apply_failure: str | None = None
        self.primary_presence_timeout: float | None = None  # as the primary last said
        self._lost = False
        self._progress = trio.Event()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))

    # -- the edge's questions -------------------------------------------------------------
    @property
    def lag(self) -> int:
        return max(0, self.head - self.engine.applied_lsn)

    @property
    def contact_age(self) -> float | None:
        """Seconds since the stream last answered (None: never since the start)."""
        return None if self.last_contact is None else trio.current_time() - self.last_contact

    def lag_seconds(self) -> float:
        """How old the oldest record not applied yet is (0: caught up)."""
        if not self.lag or self.next_shipped_at is None:
            return 0.0
        return max(0.0, redislog.now_ms() / 1000 - self.next_shipped_at)

    def not_ready(self) -> str | None:
        # Not before the stream was read once since the last snapshot: a replica that
        # never reached Redis does not know how far behind it is. Then lag against the
        # head last seen: with Redis away the replica goes on serving what it has (as
        # while the primary is down), rather than leaving a balancer with no node at
        # all; chat_engine_replica_redis_connected says so.
        if self.apply_failure is not None:
            return f"The replica could not apply a record: {self.apply_failure}"
        if not self.read_since_bootstrap:
            return "The replica has not read the Redis stream since it loaded its state."
        if self.lag > self.max_lag:
            return f"The replica is {self.lag} records behind the primary."
        return None

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "chat_engine_replica_lag_records",
            "Records on the stream this replica has not applied yet.",
            value=self.lag,
        )
        yield GaugeMetricFamily(
            "chat_engine_replica_lag_seconds",
            "Age of the oldest stream entry not applied yet, by the primary's clock when "
            "it shipped it (0: caught up).",
            value=self.lag_seconds(),
        )
        age = self.contact_age
        yield GaugeMetricFamily(
            "chat_engine_replica_stream_contact_age_seconds",
            "Seconds since the Redis stream last answered this replica (-1: never).",
            value=-1.0 if age is None else age,
        )
        yield GaugeMetricFamily(
            "chat_engine_replica_position",
            "The log position applied.",
            value=self.engine.applied_lsn,
        )
        yield GaugeMetricFamily(
            "chat_engine_replica_redis_connected",
            "1 while this replica reads the stream.",
            value=1 if self.redis_connected and age is not None and age < CONTACT_SECONDS else 0,
        )
        yield CounterMetricFamily(
            "chat_engine_replica_bootstraps",
            "Snapshots loaded from the primary (the first, and each lost place).",
            value=self.bootstraps,
        )

    async def forward(self, request: Request) -> Response:
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in request.headers
            if name in (b"authorization", b"content-type", b"accept", b"user-agent")
        }
        if request.remote_addr:
            headers["x-forwarded-for"] = request.remote_addr
        headers["x-forwarded-host"] = request.host
        headers["x-forwarded-proto"] = request.scheme
        url = self.primary + request.path
        if request.query_string:
            url += "?" + request.query_string.decode("latin-1")
        # The whole forward, the primary's answer and the wait to show it, takes at most
        # WRITE_WAIT. A request that never reached the primary may be sent again; one
        # that did but got no answer may have been made, and the answer says so.
        answer: httpx.Response | None = None
        with trio.move_on_after(WRITE_WAIT):
            try:
                answer = await self._http.request(
                    request.method, url, content=request.body, headers=headers
                )
            except NOT_SENT:
                return error_response(
                    errors.Unavailable("The primary is unreachable; the write was not made.")
                )
            except httpx.HTTPError:
                pass
            if answer is not None:
                position = answer.headers.get(POSITION_HEADER)
                if position is not None and position.isdigit():
                    await self.wait_for(int(position), answer.headers.get(EPOCH_HEADER))
        if answer is None:
            return error_response(
                errors.Unavailable(
                    "The primary did not answer in time; the write may have been made. "
                    "Check before sending it again."
                )
            )
        position = answer.headers.get(POSITION_HEADER)
        if position is not None and position.isdigit():
            if not self.shows(int(position), answer.headers.get(EPOCH_HEADER)):
                return error_response(
                    errors.Unavailable("The write was made, but this node does not show it yet.")
                )
        passed = [(name, answer.headers[name]) for name in PASSED_HEADERS if name in answer.headers]
        return Response(
            answer.content, answer.status_code, answer.headers.get("content-type"), passed
        )

    def shows(self, position: int, epoch: str | None = None) -> bool:
        """Whether this replica applied ``position`` of the primary's history ``epoch``."""
        engine = self.engine
        if epoch is not None and epoch != engine.realtime.epoch:
            return False
        return engine.applied_lsn >= position

    async def wait_for(self, position: int, epoch: str | None = None) -> None:
        """Until this node shows ``position`` (of ``epoch``: the primary's history,
        which changes when its data directory is replaced; then this node reloads)."""
        while not self.shows(position, epoch):
            if epoch is not None and epoch != self.engine.realtime.epoch:
                self._lost = True  # another history: the follower loads a snapshot
            await self._progress.wait()

    # -- running --------------------------------------------------------------------------
    async def bootstrap(self, redis: coredis.Redis[bytes] | None = None) -> None:
        """Load the primary's snapshot (retrying until it answers, and, given the
        stream, until the stream holds the snapshot's epoch)."""
        failures = 0
        while True:
            try:
                await self._load_snapshot(redis)
                return
            except Exception as error:  # unreachable, refused, a bad answer: again
                if failures == 0:
                    log.warning(
                        "cannot load the primary's snapshot yet",
                        extra={"fields": {"error": f"{type(error).__name__}: {error}"}},
                    )
                failures += 1
                await trio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1])

    async def _load_snapshot(self, redis: coredis.Redis[bytes] | None) -> None:
        answer = await self._http.get(
            self.primary + "/internal/v1/snapshot",
            headers={"authorization": f"Token {self.admin_token}"},
        )
        if answer.status_code != 200:
            raise errors.Unavailable(f"the primary answered {answer.status_code}")
        epoch = answer.headers[EPOCH_HEADER]
        if redis is not None:
            await self._check_stream_epoch(redis, epoch)
        histories = self.engine.realtime.histories.empty_copy()
        histories.epoch = epoch
        limit = answer.headers.get(HISTORY_LIMIT_HEADER)
        histories.history_limit = DEFAULT_HISTORY_LIMIT if limit is None else int(limit)
        self.engine.realtime.histories.history_limit = histories.history_limit
        state = State()
        lsn = await trio.to_thread.run_sync(load_snapshot, answer.content, state, histories)
        if lsn != int(answer.headers[POSITION_HEADER]):
            raise ValueError("the snapshot's position is not the one announced")
        if self.ws is not None:
            self.ws.restart_sessions()  # before the state changes under them
        self.engine.take_over(lsn, state, histories)
        self.bootstraps += 1
        self._lost = False
        self.read_since_bootstrap = False
        self.apply_failure = None
        self._notify()
        log.info("snapshot loaded", extra={"fields": {"lsn": lsn, "epoch": epoch}})

    async def _check_stream_epoch(self, redis: coredis.Redis[bytes], epoch: str) -> None:
        """Refuse (no take-over, sessions left open) a snapshot whose epoch is not the
        stream head's: reloading would only lose the place again at once."""
        with trio.fail_after(HEAD_TIMEOUT):
            entries = await redis.xrevrange(self.stream, count=1)
        if not entries:
            return
        stream_epoch = redislog.text(entries[0].field_values.get(redislog.EPOCH, b""))
        if stream_epoch != epoch:
            raise errors.Unavailable(
                f"the stream {self.stream} holds epoch {stream_epoch}, the primary serves {epoch}"
            )

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the stream (and report reachability) until cancelled; call once
        ``bootstrap`` returned and the engine runs."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._report_reachability)
            task_status.started()
            failures = 0
            while True:
                try:
                    async with redislog.client(self.redis_url) as redis:
                        async with trio.open_nursery() as inner:
                            inner.start_soon(self._watch_head, redis)
                            await self._follow(redis)
                except Exception as error:
                    if self.redis_connected or failures == 0:
                        log.warning(
                            "Redis unavailable; the replica waits",
                            extra={"fields": {"error": redislog.describe(error)}},
                        )
                    self.redis_connected = False
                    failures += 1
                    await trio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1])
                    continue
                failures = 0

    async def _follow(self, redis: coredis.Redis[bytes]) -> None:
        while True:
            if self._lost:
                if self.reload_streak:
                    pause = RELOAD_BACKOFF[min(self.reload_streak, len(RELOAD_BACKOFF)) - 1]
                    log.warning(
                        "lost its place again right after a reload; waiting before the next",
                        extra={"fields": {"seconds": pause, "reloads": self.reload_streak}},
                    )
                    await trio.sleep(pause)
                else:
                    log.warning(
                        "lost its place in the stream; loading a fresh snapshot",
                        extra={"fields": {"lsn": self.engine.applied_lsn, "head": self.head}},
                    )
                self.reload_streak += 1
                await self.bootstrap(redis)
                continue
            found = await redis.xread(
                {self.stream: redislog.entry_id(self.engine.applied_lsn)},
                count=READ_COUNT,
                block=redislog.BLOCK_MS,
            )
            self._contact()
            self.read_since_bootstrap = True
            if not found:
                continue
            for entries in found.values():
                try:
                    self._apply(entries)
                except LostPlace as lost:
                    if self.reload_streak == 0:
                        log.error(
                            "the stream cannot take this replica on",
                            extra={"fields": {"reason": str(lost)}},
                        )
                    self._lost = True
            self._notify()

    def _contact(self) -> None:
        self.redis_connected = True
        self.last_contact = trio.current_time()

    def _apply(self, entries: Any) -> None:
        engine = self.engine
        epoch = engine.realtime.epoch
        for entry in entries:
            lsn = redislog.lsn_of(entry.identifier)
            fields = entry.field_values
            if redislog.text(fields.get(redislog.EPOCH, b"")) != epoch:
                raise LostPlace("another epoch")
            if lsn <= engine.applied_lsn:
                continue
            if lsn != engine.applied_lsn + 1:
                raise LostPlace("a gap")
            try:
                record_lsn, facts = decode(fields[redislog.RECORD])
            except Exception as error:  # not a record: the stream is wrong here, reload
                raise LostPlace(f"entry {lsn} does not decode: {error!r}") from None
            if record_lsn != lsn:
                raise LostPlace("an entry whose record is not at its position")
            try:
                engine.apply_record(lsn, facts)
            except Exception as error:  # the state may be half changed: not ready, reload
                self.apply_failure = f"{lsn}: {error!r}"
                log.error(
                    "a record could not be applied; not ready, reloading",
                    extra={"fields": {"lsn": lsn, "error": repr(error)}},
                )
                raise LostPlace(f"record {lsn} could not be applied") from None
            self.reload_streak = 0
            self.head = max(self.head, lsn)
            self.next_shipped_at = _shipped_at(entry)
        self._caught_up_check()

    def _caught_up_check(self) -> None:
        if self.lag == 0:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = trio.current_time()

    async def _watch_head(self, redis: coredis.Redis[bytes]) -> None:
        """The stream's head, for the lag; and whether it still continues this node."""
        while True:
            with trio.fail_after(HEAD_TIMEOUT):
                entries = await redis.xrevrange(self.stream, count=1)
                if entries and redislog.lsn_of(entries[0].identifier) > self.engine.applied_lsn:
                    following = await redis.xrange(
                        self.stream,
                        start=redislog.entry_id(self.engine.applied_lsn + 1),
                        count=1,
                    )
                    self.next_shipped_at = _shipped_at(following[0] if following else None)
            self._contact()
            if entries:
                head = entries[0]
                lsn = redislog.lsn_of(head.identifier)
                epoch = redislog.text(head.field_values.get(redislog.EPOCH, b""))
                # Another history: the follower reloads. A head behind this node is no
                # reason to: a Redis that lost the stream gets it shipped again from the
                # primary's log, and this node goes on where it is.
                if epoch != self.engine.realtime.epoch:
                    self._lost = True
                self.head = lsn
            else:
                self.head = self.engine.applied_lsn
            self._caught_up_check()
            await trio.sleep(HEAD_INTERVAL)

    async def _report_reachability(self) -> None:
        while True:
            interval = report_interval(self.presence_timeout())
            await self.report(self.engine.reachability.reachable_ages(), max(interval, 1.0))
            await trio.sleep(interval)

    def presence_timeout(self) -> float:
        """The smaller of this replica's ``--presence-timeout`` and the primary's (as its
        last reachability answer said): reports must come often enough for both."""
        own = self.engine.config.presence_timeout
        theirs = self.primary_presence_timeout
        return own if theirs is None else min(own, theirs)

    def _heard_timeout(self, answer: httpx.Response) -> None:
        try:
            theirs = answer.json().get("presence_timeout")
        except ValueError:
            return
        if not isinstance(theirs, int | float) or isinstance(theirs, bool) or theirs <= 0:
            return
        own = self.engine.config.presence_timeout
        if theirs != own and theirs != self.primary_presence_timeout:
            log.warning(
                "--presence-timeout differs from the primary's; give every node the same",
                extra={"fields": {"replica": own, "primary": theirs}},
            )
        self.primary_presence_timeout = float(theirs)

    async def report(self, ages: dict[str, float], timeout: float = 5.0) -> int:
        """Report the users reachable here, each with the seconds since it was seen
        here, to the primary, in bodies well under its 64 KiB cap; how many it took
        (it ignores ids it does not know). A refusal is logged as a warning."""
        taken = 0
        users = [(user_id, round(age, 1)) for user_id, age in ages.items()]
        for start in range(0, max(len(users), 1), REPORT_CHUNK):
            chunk = dict(users[start : start + REPORT_CHUNK])
            try:
                answer = await self._http.post(
                    self.primary + "/internal/v1/reachability",
                    headers={"authorization": f"Token {self.admin_token}"},
                    json={"users": chunk},
                    timeout=timeout,
                )
            except httpx.HTTPError as error:
                log.debug("reachability report failed", extra={"fields": {"error": str(error)}})
                return taken
            if not answer.is_success:
                log.warning(
                    "the primary refused a reachability report",
                    extra={"fields": {"status": answer.status_code, "users": len(chunk)}},
                )
                return taken
            taken += len(chunk)
            self._heard_timeout(answer)
        return taken

    async def aclose(self) -> None:
        await self._http.aclose()
