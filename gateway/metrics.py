"""``/metrics`` in Prometheus text format (prometheus-client).

Counters that the engine already keeps (the realtime core's statistics, session closes) are read at
scrape time by a collector rather than mirrored on every event, so the hot path pays
nothing for them. Only the HTTP latency histogram is observed per request. The process
itself (memory, CPU, file descriptors) is prometheus-client's process collector, also
read at scrape time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from engine.actors.supervisor import Engine
from gateway import failures
from gateway.web import METHODS
from gateway.ws import Session, WsGateway
from persistence.wal import FSYNC_BUCKETS, WriteAheadLog

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KNOWN_METHODS = frozenset(METHODS)


class EngineCollector(Collector):
    def __init__(self, engine: Engine, ws: WsGateway) -> None:
        self._engine = engine
        self._ws = ws

    def collect(self) -> Iterator[Metric]:
        sessions = list(self._ws.sessions)
        yield from self._channels(sessions)
        yield from self._queues(sessions)
        yield from self._engine_state()
        yield from self._log()

    def _channels(self, sessions: list[Session]) -> Iterator[Metric]:
        stats = self._engine.realtime.stats
        yield GaugeMetricFamily(
            "chat_engine_ws_sessions", "Open WebSocket sessions.", value=len(sessions)
        )
        yield GaugeMetricFamily(
            "chat_engine_subscriptions", "Channel subscriptions.", value=stats.subscriptions
        )
        yield CounterMetricFamily(
            "chat_engine_events_published",
            "Channel events published.",
            value=stats.events_published,
        )
        yield CounterMetricFamily(
            "chat_engine_events_delivered",
            "Events handed to session queues.",
            value=stats.events_delivered,
        )
        yield CounterMetricFamily(
            "chat_engine_slow_consumer_closes",
            "Sessions closed with 4008.",
            value=self._ws.slow_consumer_closes,
        )
        yield CounterMetricFamily(
            "chat_engine_bad_frame_closes",
            "Sessions closed with 1008.",
            value=self._ws.bad_frame_closes,
        )
        yield CounterMetricFamily(
            "chat_engine_revoked_token_closes",
            "Sessions closed with 4001 because their token stopped working.",
            value=self._ws.revoked_closes,
        )

    def _queues(self, sessions: list[Session]) -> Iterator[Metric]:
        writes = self._ws.write_stats
        yield CounterMetricFamily(
            "chat_engine_ws_write_passes",
            "WebSocket write passes (each writes every session with queued items).",
            value=writes.passes,
        )
        yield CounterMetricFamily(
            "chat_engine_ws_write_seconds",
            "Time write passes held the event loop.",
            value=writes.seconds,
        )
        yield CounterMetricFamily(
            "chat_engine_ws_frames", "WebSocket frames written by passes.", value=writes.frames
        )
        errors = CounterMetricFamily(
            "chat_engine_connection_errors",
            "Unexpected errors that closed one connection (and only it), by kind.",
            labels=["kind"],
        )
        for kind in ("http", "ws"):
            errors.add_metric([kind], failures.connection_errors[kind])
        yield errors
        depths = [session.depth for session in sessions]
        yield GaugeMetricFamily(
            "chat_engine_session_queue_depth_max",
            "Deepest session queue (items).",
            value=max(depths, default=0),
        )
        yield GaugeMetricFamily(
            "chat_engine_session_queue_depth_total",
            "Items waiting in all session queues.",
            value=sum(depths),
        )
        yield GaugeMetricFamily(
            "chat_engine_session_queue_bytes_total",
            "Encoded bytes waiting in all session queues.",
            value=self._ws.budget.total,
        )

    def _engine_state(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "chat_engine_live_actors",
            "Chat and directory actors running.",
            value=self._engine.pool.live_actors if self._engine.started.is_set() else 0,
        )
        yield GaugeMetricFamily(
            "chat_engine_chats", "Chats in memory.", value=len(self._engine.state.chats)
        )

    def _log(self) -> Iterator[Metric]:
        store = self._engine.store
        if store is None:
            return
        wal = store.wal.stats
        yield CounterMetricFamily(
            "chat_engine_wal_records", "Log records written.", value=wal["records"]
        )
        yield CounterMetricFamily(
            "chat_engine_wal_batches",
            "Group commits (one write, one fsync).",
            value=wal["batches"],
        )
        yield CounterMetricFamily("chat_engine_wal_bytes", "Log bytes written.", value=wal["bytes"])
        yield fsync_histogram(store.wal)
        yield GaugeMetricFamily(
            "chat_engine_wal_fsync_seconds_max",
            "Longest fsync so far.",
            value=wal["fsync_seconds_max"],
        )
        yield CounterMetricFamily(
            "chat_engine_wal_write_failures",
            "Failed group commits (answered 503).",
            value=wal["write_failures"],
        )
        yield GaugeMetricFamily(
            "chat_engine_snapshot_pause_seconds_max",
            "Longest event-loop pause a snapshot caused (its fork).",
            value=store.max_snapshot_pause,
        )
        yield GaugeMetricFamily(
            "chat_engine_applied_lsn",
            "Last applied log position.",
            value=self._engine.applied_lsn,
        )


def _version() -> str:
    try:
        return metadata.version("chat-engine")
    except metadata.PackageNotFoundError:
        return "unknown"


def fsync_histogram(wal: WriteAheadLog) -> HistogramMetricFamily:
    """The log's fsync latency, from the counts its committer keeps per bucket (an
    increment in the worker thread that already timed the fsync; no lock, no call)."""
    buckets, cumulative = [], 0
    for bound, count in zip((*FSYNC_BUCKETS, math.inf), wal.fsync_counts, strict=True):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    return HistogramMetricFamily(
        "chat_engine_wal_fsync_duration_seconds",
        "Latency of the log's fsyncs (one per group commit under --fsync=always, one "
        "every 50 ms under --fsync=interval).",
        buckets=buckets,
        sum_value=wal.stats["fsync_seconds_total"],
    )


class Metrics:
    def __init__(self, engine: Engine, ws: WsGateway) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine, ws))
        # process_* (resident memory, CPU seconds, open and maximum fds, start time), read
        # from /proc at scrape time; python_info (the interpreter's version)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        # chat_engine_build_info{version=...}: which release a scrape (or a load test
        # run with `python -m bench ... --url`) talked to
        Info("chat_engine_build", "The running chat-engine release.", registry=self.registry).info(
            {"version": _version()}
        )
        self.http_latency = Histogram(
            "chat_engine_http_request_seconds",
            "HTTP request latency by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )

        self._latency_children: dict[tuple[str, str, int], Any] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP answer. The labelled child is looked up once per (method, route,
        status): ``labels()`` costs a lock, a tuple and string checks every time."""
        if method not in KNOWN_METHODS:  # a client picks it: bound the label's values
            method = "other"
        key = (method, route, status)
        child = self._latency_children.get(key)
        if child is None:
            child = self._latency_children[key] = self.http_latency.labels(
                method, route, str(status)
            )
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
