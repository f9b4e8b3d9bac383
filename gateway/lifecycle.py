"""A node's life, the steps ``chat-engine serve`` and ``chat-engine replica`` share.

Listen first (``/healthz`` answers, ``/readyz`` says 503 while the node starts), run
the node's own start (recovery or a primary's snapshot, then its tasks), serve until
SIGTERM or SIGINT, which closes sessions with 1001, then run the node's own finish
once the HTTP servers have returned. What is a node's own is passed in; the signal
watcher, the shutdown trigger, the front door and the nursery are here, once.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig

from engine.actors.supervisor import Engine
from gateway import frontdoor
from gateway.app import Gateway
from gateway.http1 import Http1Server

log = logging.getLogger("chat_engine")


class StartupError(Exception):
    """The server cannot start (a port in use, an unusable data dir): one line, exit 2."""


async def serve_node(
    options: argparse.Namespace,
    engine: Engine,
    gateway: Gateway,
    servers: tuple[HypercornConfig, Http1Server | None],
    *,
    start: Callable[[trio.Nursery], Awaitable[None]],
    finish: Callable[[], Awaitable[None]],
    listening: dict[str, object],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``gateway`` on ``options.host``/``options.port`` until a signal.

    ``start`` runs once the node listens and starts the node's tasks in the nursery it
    is given; ``task_status`` reports the bound addresses after it. ``finish`` runs once
    the HTTP servers returned (sessions closed, requests in flight answered), before the
    node's tasks are cancelled. ``listening`` adds fields to the "listening" log line.
    """
    config, http1 = servers
    ws_gateway = gateway.ws
    stopping = trio.Event()
    http_done = trio.Event()

    async def shutdown_trigger() -> None:
        await stopping.wait()
        ws_gateway.shutdown()  # sessions flush their queues and close with 1001

    async def serve_http(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await frontdoor.serve(
                gateway.asgi,
                config,
                options.host,
                options.port,
                ws_gateway.handle_connection,
                shutdown_trigger=shutdown_trigger,
                http1=http1,
                max_connections=options.max_connections,
                per_address=options.http_connections_per_address,
                forwarded_allow_ips=options.forwarded_allow_ips,
                task_status=task_status,
            )
        finally:
            http_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, stopping)
        await nursery.start(ws_gateway.run_flusher)
        try:
            binds = await nursery.start(serve_http)
        except (OSError, BaseExceptionGroup) as error:
            failure = only(error, OSError)
            if not isinstance(failure, OSError):
                raise
            raise StartupError(
                f"cannot listen on {options.host}:{options.port}: {reason(failure)}"
            ) from None
        log.info("listening", extra={"fields": {"binds": binds, **listening}})
        await start(nursery)
        tune_gc(options.gc_thresholds)
        task_status.started(binds)
        await http_done.wait()
        await finish()
        log.info("stopped", extra={"fields": {"lsn": engine.applied_lsn}})
        nursery.cancel_scope.cancel()


async def _watch_signals(stopping: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
            stopping.set()
            return


def reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def only(
    error: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """``error`` if it is one of ``kinds``, or the first exception of an exception group
    (trio nests one per nursery) made of nothing else; None otherwise."""
    if isinstance(error, kinds):
        return error
    if isinstance(error, BaseExceptionGroup):
        matched, rest = error.split(kinds)
        if matched is not None and rest is None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf
    return None


def tune_gc(thresholds: tuple[int, int, int]) -> None:
    """Keep the cyclic GC off the hot path.

    Every frame a session sends allocates a few objects; with the default thresholds
    (700, 10, 10) that triggers collections whose older passes rescan a heap that grows
    with every session; these thresholds cut the fan-out's tail latency markedly
    (docs/benchmarks.md, "Figures behind choices in the code"). ``gc.freeze()`` showed
    no measurable effect on top, so it is not used.
    """
    gc.set_threshold(*thresholds)
