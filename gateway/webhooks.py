"""Webhook delivery: one task per endpoint, following the log.

Each endpoint has a cursor: the last log position whose events it is done with
(delivered, or skipped after the retry horizon). Its task reads the records after the
cursor, asks ``engine.webhooks`` which events they make for it and how they look, and
POSTs them (``gateway.hookclient``) one at a time, in log order, each until it is answered 2xx or given up. The
cursor then moves on; it is written to disk now and then (``persistence.cursors``), so
a restart, or a ``kill -9``, resumes from the last saved position and repeats what
came after it: delivery is at least once, and receivers deduplicate by the event's id.

Nothing here sits on the write path. The commit loop only calls ``_on_record``, which
keeps the record in a bounded ring of recent records and wakes the tasks. An endpoint
that has caught up reads from that ring; one that is behind (failing, slow, or after a
restart) reads the log itself (``persistence.follow``), a bounded batch at a time, in a
worker thread: a backlog is never queued in memory, whatever its length. Segments that
an endpoint still needs are kept (``Store.holds``), except behind an endpoint that has
been failing for longer than the retry horizon.

With ``--in-memory`` there is no log to fall back on: an endpoint that falls further
behind than the ring loses the records it missed (skipped, and shown as such), and a
restart forgets everything, endpoints included.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine import errors
from engine.actors.supervisor import Engine
from engine.facts import Fact, WebhookCreated, WebhookDeleted
from engine.timefmt import format_ms
from engine.webhooks import (
    RETRY_HORIZON_MS,
    SIGNATURE_HEADER,
    Address,
    Allow,
    RawEvent,
    Webhook,
    backoff,
    envelope,
    event_id,
    events_of,
    give_up,
    literal_address,
    orgs_of_chat,
    render_data,
    signature,
    target_host,
    target_refusal,
)
from gateway.hookclient import HookConnection, ReceiverError, Target
from persistence.cursors import CursorFile
from persistence.follow import LogFollower, LogGap, decode

log = logging.getLogger("chat_engine.webhooks")

MAX_ERROR_CHARS = 300  # of an attempt's error in the deliveries view
GIVE_WAY_STEP = 0.005  # seconds between looks at how busy the event loop is

# Tests only: "FIRST/MOST" seconds of the retry schedule instead of 1 s doubling to 600 s.
TEST_BACKOFF_ENV = "TEST_CHAT_ENGINE_WEBHOOK_BACKOFF"


@dataclass(slots=True)
class DeliverySettings:
    allow: Allow = field(default_factory=Allow)
    backoff_first: float = 1.0
    backoff_max: float = 600.0
    horizon_ms: int = RETRY_HORIZON_MS
    timeout: float = 10.0  # one attempt, in all
    batch: int = 64  # records read (from the log or the ring) at a time
    recent_records: int = 4096  # the ring the caught-up endpoints read from
    cursor_interval: float = 1.0  # seconds between cursor saves
    attempts_kept: int = 100  # per endpoint, for GET .../deliveries
    # Writes first: while a turn of the event loop takes longer than ``busy_turn``
    # seconds (the other tasks have that much work queued: it is answering clients as
    # fast as it can), a delivery waits for a quieter moment, up to
    # ``give_way_seconds``, before its attempt (0: never waits).
    busy_turn: float = 0.0005
    give_way_seconds: float = 0.05

    @classmethod
    def from_environment(cls, allow: Allow) -> DeliverySettings:
        settings = cls(allow=allow)
        given = os.environ.get(TEST_BACKOFF_ENV)
        if given:
            first, most = given.split("/")
            settings.backoff_first, settings.backoff_max = float(first), float(most)
        return settings


class Endpoint:
    """One registered webhook's delivery state (in memory; its cursor also on disk)."""

    def __init__(self, hook: Webhook, cursor: int, kept: int, now: int) -> None:
        self.hook = hook
        self.cursor = cursor
        self.place: LogFollower | None = None  # its place in the log, once read from disk
        self.failures = 0  # failed attempts in a row
        self.failing_since: int | None = None  # wall ms of the first of them
        self.given_up = 0  # events given up since the last one delivered
        self.caught_up_at = now  # wall ms it last had nothing left to send (or began)
        self.attempts: deque[dict[str, Any]] = deque(maxlen=kept)
        self.scope = trio.CancelScope()
        self.connection = HookConnection()  # kept alive between deliveries


class Deliverer:
    def __init__(self, engine: Engine, settings: DeliverySettings) -> None:
        self.engine = engine
        self.settings = settings
        store = engine.store
        self._file = CursorFile(store.data_dir) if store is not None else None
        self._log_dir = store.data_dir if store is not None else None
        self.cursors: dict[str, int] = self._file.load() if self._file is not None else {}
        # as last written to disk: after a crash delivery resumes from these, so the log
        # is kept from them on, not from the (later) positions in memory
        self._saved = dict(self.cursors)
        self._dirty = False
        self.endpoints: dict[str, Endpoint] = {}
        self._recent: deque[tuple[int, Sequence[Fact]]] = deque(maxlen=settings.recent_records)
        self._new_record = trio.Event()
        self._registry_changed = trio.Event()
        self._reads = trio.CapacityLimiter(4)  # log reads in worker threads at once
        self._nursery: trio.Nursery | None = None
        self.outcomes = {"delivered": 0, "failed": 0, "skipped": 0}  # attempts, by outcome
        self.gave_way = 0  # deliveries that waited for the loop to be less busy
        if store is not None:
            store.holds.append(self.hold)
        engine.record_listeners.append(self._on_record)

    # -- the write path's only part: note the record, wake the tasks ----------------------
    def _on_record(self, lsn: int, facts: Sequence[Fact]) -> None:
        # not running (a replica never runs it: deliveries are the primary's): no ring
        # of records nobody reads
        if self._nursery is None:
            return
        if self.engine.state.webhooks.by_id:
            recent = self._recent
            if recent and recent[-1][0] != lsn - 1:
                recent.clear()  # the ring holds consecutive records only
            recent.append((lsn, facts))
            self._new_record.set()
            self._new_record = trio.Event()
        for fact in facts:
            if type(fact) in (WebhookCreated, WebhookDeleted):
                self._registry_changed.set()

    def hold(self) -> int | None:
        """The lowest position an endpoint is done with, as saved on disk (segments
        after it are kept), not counting endpoints failing for longer than the retry
        horizon, nor endpoints that have not caught up for that long (a slow receiver
        that answers every event, but slower than they come, would otherwise keep the
        whole log from then on)."""
        now = self.engine.now()
        horizon = self.settings.horizon_ms
        held: int | None = None
        for name, cursor in self.cursors.items():
            endpoint = self.endpoints.get(name)
            if endpoint is not None and (
                (endpoint.failing_since is not None and now - endpoint.failing_since >= horizon)
                or now - endpoint.caught_up_at >= horizon
            ):
                continue
            # never saved yet: after a crash it starts again from its registration
            saved = self._saved.get(name)
            if saved is None and endpoint is not None:
                saved = endpoint.hook.start_lsn
            cursor = min(cursor, cursor if saved is None else saved)
            held = cursor if held is None else min(held, cursor)
        return held

    def attempts(self, webhook_id: str) -> list[dict[str, Any]]:
        """Recent attempts, newest first."""
        endpoint = self.endpoints.get(webhook_id)
        return list(reversed(endpoint.attempts)) if endpoint is not None else []

    def status(self, webhook_id: str) -> dict[str, Any]:
        endpoint = self.endpoints.get(webhook_id)
        if endpoint is None:
            return {"position": None, "failing_since": None}
        return {
            "position": endpoint.cursor,
            "failing_since": None
            if endpoint.failing_since is None
            else format_ms(endpoint.failing_since),
        }

    # -- the tasks -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run once the engine has started (the state recovered)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._save_periodically)
                task_status.started()
                while True:
                    self._registry_changed = trio.Event()
                    self._sync_endpoints(nursery)
                    await self._registry_changed.wait()
        finally:
            if self._dirty and self._file is not None:
                with trio.CancelScope(shield=True):
                    await self._save()

    def _sync_endpoints(self, nursery: trio.Nursery) -> None:
        registered = self.engine.state.webhooks.by_id
        for webhook_id, endpoint in list(self.endpoints.items()):
            if webhook_id not in registered:
                endpoint.scope.cancel()
                del self.endpoints[webhook_id]
        for webhook_id in [name for name in self.cursors if name not in registered]:
            del self.cursors[webhook_id]
            self._dirty = True
        for webhook_id, hook in registered.items():
            if webhook_id not in self.endpoints:
                cursor = max(self.cursors.get(webhook_id, hook.start_lsn), hook.start_lsn)
                if self.cursors.get(webhook_id) != cursor:
                    self.cursors[webhook_id] = cursor
                    self._dirty = True
                endpoint = Endpoint(hook, cursor, self.settings.attempts_kept, self.engine.now())
                self.endpoints[webhook_id] = endpoint
                nursery.start_soon(self._follow, endpoint)

    async def _save_periodically(self) -> None:
        while True:
            await trio.sleep(self.settings.cursor_interval)
            if self._dirty and self._file is not None:
                await self._save()

    async def _save(self) -> None:
        assert self._file is not None
        self._dirty = False
        saving = dict(self.cursors)
        try:
            await trio.to_thread.run_sync(self._file.save, saving)
            self._saved = saving
        except OSError as error:
            self._dirty = True
            log.error("webhook cursors not saved", extra={"fields": {"error": str(error)}})

    async def _follow(self, endpoint: Endpoint) -> None:
        """Follow the log for one endpoint until it is removed. An unexpected error
        (a bug, a log record that does not decode) stops this endpoint for a while, never
        the other endpoints nor the server: it resumes from its cursor after a pause."""
        stops = 0
        try:
            with endpoint.scope:
                while True:
                    try:
                        await self._follow_unguarded(endpoint)
                    except Exception:
                        stops += 1
                        endpoint.place = None
                        log.error(
                            "webhook delivery stopped unexpectedly; resuming",
                            exc_info=True,
                            extra={"fields": {"webhook": endpoint.hook.id, "at": endpoint.cursor}},
                        )
                        await endpoint.connection.aclose()
                        await trio.sleep(
                            backoff(stops, self.settings.backoff_first, self.settings.backoff_max)
                        )
        finally:
            await endpoint.connection.aclose()

    async def _follow_unguarded(self, endpoint: Endpoint) -> None:
        while True:
            woken = self._new_record
            upto = self.engine.applied_lsn
            if endpoint.cursor >= upto:
                endpoint.caught_up_at = self.engine.now()
                await woken.wait()
                continue
            for lsn, facts in await self._records(endpoint, upto):
                await self._deliver_record(endpoint, lsn, facts)
                self._advance(endpoint, lsn)
            # a batch with nothing for this endpoint sends nothing: still yield
            await trio.lowlevel.checkpoint()

    def _advance(self, endpoint: Endpoint, lsn: int) -> None:
        endpoint.cursor = lsn
        if self.endpoints.get(endpoint.hook.id) is endpoint:  # not removed meanwhile
            self.cursors[endpoint.hook.id] = lsn
            self._dirty = True

    async def _records(self, endpoint: Endpoint, upto: int) -> list[tuple[int, Sequence[Fact]]]:
        """The next records after the endpoint's cursor, up to ``upto``: from the ring of
        recent records when it still holds them, else from the log."""
        wanted = endpoint.cursor + 1
        recent = self._recent
        if recent and recent[0][0] <= wanted:
            start = wanted - recent[0][0]
            stop = min(start + self.settings.batch, upto - recent[0][0] + 1)
            return list(itertools.islice(recent, start, stop))
        if self._log_dir is None:
            # in memory: records older than the ring are gone
            first = recent[0][0] if recent else upto + 1
            self._skip(endpoint, wanted, first - 1, "no longer held in memory")
            return []
        if endpoint.place is None:
            endpoint.place = LogFollower(self._log_dir)
        try:
            records = await trio.to_thread.run_sync(
                endpoint.place.read,
                endpoint.cursor,
                upto,
                self.settings.batch,
                limiter=self._reads,
            )
        except LogGap as gap:
            if gap.first is not None and gap.first > wanted:
                self._skip(endpoint, wanted, gap.first - 1, "no longer in the log")
            else:  # no segment holds it (none at all): look again in a moment
                await trio.sleep(1.0)
            return []
        if not records:  # not readable yet: look again in a moment
            await trio.sleep(1.0)
        return [decode(payload) for _, payload in records]

    def _skip(self, endpoint: Endpoint, first: int, last: int, why: str) -> None:
        if last < first:
            return
        self._advance(endpoint, last)
        self._note(endpoint, None, None, 0, None, None, "skipped", f"records {first}..{last} {why}")
        log.warning(
            "webhook records skipped",
            extra={"fields": {"webhook": endpoint.hook.id, "from": first, "to": last, "why": why}},
        )

    async def _deliver_record(self, endpoint: Endpoint, lsn: int, facts: Sequence[Fact]) -> None:
        hook = endpoint.hook
        state = self.engine.state
        for event in events_of(facts):
            if event.type not in hook.events:
                continue
            chat = state.chats.get(event.chat_id)
            if chat is None:
                continue
            room = state.rooms.get(chat.room_id)
            if hook.org_id not in orgs_of_chat(chat, room.shared_with if room else ()):
                continue
            data = render_data(event, chat, state.users)
            if data is None:
                continue
            name = event_id(self.engine.realtime.epoch, lsn, event.index)
            body = orjson.dumps(envelope(name, event, hook.org_id, data))
            await self._deliver(endpoint, name, event, body)

    async def _deliver(self, endpoint: Endpoint, name: str, event: RawEvent, body: bytes) -> None:
        """Attempt until a 2xx answer, or until the event is given up."""
        settings = self.settings
        attempt = 0
        waited = False
        while True:
            if give_up(endpoint.failing_since, event.at, self.engine.now(), settings.horizon_ms):
                self._note(endpoint, name, event.type, attempt, None, None, "skipped", "gave up")
                endpoint.given_up += 1
                # a dead endpoint's backlog is given up at reading speed: logged at the
                # 1st, 2nd, 4th, 8th ... of a run, not once per event
                if endpoint.given_up & (endpoint.given_up - 1) == 0:
                    log.warning(
                        "webhook event given up",
                        extra={
                            "fields": {
                                "webhook": endpoint.hook.id,
                                "event": name,
                                "given_up_in_a_row": endpoint.given_up,
                            }
                        },
                    )
                return
            if endpoint.failures and not waited:
                await trio.sleep(
                    backoff(endpoint.failures, settings.backoff_first, settings.backoff_max)
                )
                waited = True
                continue
            waited = False
            if attempt == 0:
                await self._give_way()
            attempt += 1
            now = self.engine.now()
            if await self._attempt(endpoint, name, event.type, attempt, body):
                endpoint.given_up = 0
                endpoint.failures = 0
                endpoint.failing_since = None
                return
            endpoint.failures += 1
            if endpoint.failing_since is None:
                endpoint.failing_since = now

    async def _give_way(self) -> None:
        """Writes first: a delivery costs the event loop about what a write does, so
        while the loop is saturated with clients' requests, deliveries wait (each up to
        ``give_way_seconds``) and the writes keep their pace; the endpoint falls behind
        and catches up from the log once the load eases. Without a log (``--in-memory``)
        falling behind loses events, so there deliveries never wait."""
        settings = self.settings
        if self._log_dir is None or settings.give_way_seconds <= 0:
            return
        if not await loop_busy(settings.busy_turn):
            return
        self.gave_way += 1
        until = trio.current_time() + settings.give_way_seconds
        while trio.current_time() < until:
            await trio.sleep(min(GIVE_WAY_STEP, until - trio.current_time()))
            if not await loop_busy(settings.busy_turn):
                return

    async def _attempt(
        self, endpoint: Endpoint, name: str, kind: str, attempt: int, body: bytes
    ) -> bool:
        hook = endpoint.hook
        started = trio.current_time()
        status: int | None = None
        error: str | None = None
        try:
            # the name's resolution too is bounded: a resolver that never answers is a
            # failed attempt like a receiver that never answers
            with trio.fail_after(self.settings.timeout):
                target = await self._target(hook.url)
                headers = [
                    ("Content-Type", "application/json"),
                    ("User-Agent", "chat-engine-webhooks"),
                    (SIGNATURE_HEADER, signature(hook.secret, self.engine.now() // 1000, body)),
                ]
                status = await endpoint.connection.post(target, headers, body)
            if not 200 <= status < 300:
                error = f"answered {status}"
        except (Refused, ReceiverError) as refused:
            error = str(refused)
        except trio.TooSlowError:
            await endpoint.connection.aclose()
            error = f"no answer within {self.settings.timeout:g} s"
        except Exception as unexpected:  # noqa: BLE001 - one endpoint's failure, not the process's
            # whatever an endpoint's URL or its receiver makes happen is a failed attempt
            # of that endpoint: it never ends the other endpoints' deliveries or the server
            await endpoint.connection.aclose()
            error = f"internal error: {type(unexpected).__name__}"
            log.error(
                "webhook attempt failed unexpectedly",
                exc_info=True,
                extra={"fields": {"webhook": hook.id, "event": name}},
            )
        elapsed = trio.current_time() - started
        outcome = "delivered" if error is None else "failed"
        self._note(endpoint, name, kind, attempt, status, elapsed, outcome, error)
        return error is None

    async def _target(self, url: str) -> Target:
        """Where to connect: the address that was checked against ``--webhook-allow``
        (so a name cannot resolve elsewhere between the check and the connection), with
        the Host header and TLS server name of the original."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await resolve(host, port)
        refusal = target_refusal(host, addresses, self.settings.allow)
        if refusal is not None:
            raise Refused(refusal)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(
            parts.scheme,
            str(addresses[0]),
            port,
            host,
            parts.netloc.rsplit("@", 1)[-1],
            path,
        )

    def _note(
        self,
        endpoint: Endpoint,
        name: str | None,
        kind: str | None,
        attempt: int,
        status: int | None,
        elapsed: float | None,
        outcome: str,
        error: str | None,
    ) -> None:
        self.outcomes[outcome] += 1
        if error is not None and len(error) > MAX_ERROR_CHARS:
            # a parser's complaint may quote kilobytes of what the receiver sent
            error = error[: MAX_ERROR_CHARS - 1] + "\u2026"
        endpoint.attempts.append(
            {
                "event_id": name,
                "type": kind,
                "attempt": attempt,
                "at": format_ms(self.engine.now()),
                "outcome": outcome,
                "status": status,
                "error": error,
                "duration_ms": None if elapsed is None else round(elapsed * 1000, 1),
            }
        )


class WebhookCollector(Collector):
    """``/metrics``: endpoints, how far behind the furthest is, attempts by outcome."""

    def __init__(self, deliverer: Deliverer) -> None:
        self._deliverer = deliverer

    def collect(self) -> Iterator[Metric]:
        deliverer = self._deliverer
        endpoints = list(deliverer.endpoints.values())
        applied = deliverer.engine.applied_lsn
        yield GaugeMetricFamily(
            "chat_engine_webhook_endpoints", "Webhook endpoints delivered to.", len(endpoints)
        )
        yield GaugeMetricFamily(
            "chat_engine_webhook_failing_endpoints",
            "Webhook endpoints whose last attempt failed.",
            sum(1 for endpoint in endpoints if endpoint.failing_since is not None),
        )
        yield GaugeMetricFamily(
            "chat_engine_webhook_backlog_records",
            "Log records the furthest-behind webhook endpoint has still to go through.",
            max((applied - endpoint.cursor for endpoint in endpoints), default=0),
        )
        attempts = CounterMetricFamily(
            "chat_engine_webhook_attempts",
            "Webhook delivery attempts by outcome (skipped: given up, or records gone).",
            labels=["outcome"],
        )
        for outcome, count in deliverer.outcomes.items():
            attempts.add_metric([outcome], count)
        yield attempts
        yield CounterMetricFamily(
            "chat_engine_webhook_gave_way",
            "Webhook deliveries that waited for the event loop to be less busy (writes first).",
            deliverer.gave_way,
        )


async def loop_busy(turn: float) -> bool:
    """Whether the event loop's other tasks took longer than ``turn`` seconds to let
    this one run again (it yields once)."""
    started = time.perf_counter()
    await trio.lowlevel.checkpoint()
    return time.perf_counter() - started > turn


async def resolve(host: str, port: int) -> list[Address]:
    """The addresses ``host`` stands for (itself, if it is one); ``Refused`` if it does
    not resolve."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        found = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as error:
        raise Refused(f"The host {host!r} did not resolve: {error}.") from None
    return list(
        dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found)
    )


async def check_target(url: str, allow: Allow) -> None:
    """A registration's check of its URL against ``--webhook-allow`` (400 naming
    ``url``); each delivery checks the address again."""
    host = target_host(url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        refusal = target_refusal(
            host, [] if allow.names(host) or not allow else await resolve(host, port), allow
        )
    except Refused as refused:
        refusal = str(refused)
    if refusal is not None:
        raise errors.invalid_field("url", refusal)


class Refused(Exception):
    """The target may not be sent to (``--webhook-allow``) or could not be resolved."""
