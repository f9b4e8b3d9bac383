"""``chat-engine replica``: a replica's life, built on ``serve``'s pieces.

Listen first (``/healthz`` answers, ``/readyz`` says 503), load the primary's snapshot,
start the engine (no log, no presence expiry), then follow the stream until SIGTERM,
which closes sessions with 1001 and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

import trio

from engine.actors.supervisor import Engine, EngineConfig
from engine.ids import hash_token
from gateway import frontdoor, openfiles
from gateway.app import create_app
from gateway.cli import (
    ENV_ONLY,
    StartupError,
    gateway_settings,
    http_servers,
    only,
    reason,
    tune_gc,
)
from gateway.cluster.replica import Replica
from gateway.settings import ENV_PREFIX, REPLICA_OPTIONS, unknown_variables

log = logging.getLogger("chat_engine")


def _defaults(options: argparse.Namespace) -> None:
    """The serve options a replica does not take: writes are the primary's (its rate
    limits, its registration switch), and HTTP/1.1 is the built-in server's."""
    options.no_open_registration = False
    options.rate_limit = None
    options.registration_rate_limit = None
    options.http1_server = "builtin"
    options.in_memory = True


async def serve_replica(
    options: argparse.Namespace,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    for name in unknown_variables(
        os.environ, [option.env for option in REPLICA_OPTIONS] + list(ENV_ONLY)
    ):
        log.warning("ignored: %s names no option", name, extra={"fields": {"variable": name}})
    if not options.redis or not options.primary:
        raise StartupError("a replica needs --redis URL and --primary URL")
    token = os.environ.get(ENV_PREFIX + "ADMIN_TOKEN")
    if not token:
        raise StartupError(f"a replica needs the primary's admin token in {ENV_PREFIX}ADMIN_TOKEN")
    openfiles.raise_soft_limit()
    refusal = openfiles.cap_refusal(options.max_connections)
    if refusal is not None:
        raise StartupError(refusal)
    _defaults(options)
    engine = Engine(EngineConfig(presence_timeout=options.presence_timeout, replica=True))
    replica = Replica(
        engine,
        redis_url=options.redis,
        prefix=options.redis_prefix,
        primary=options.primary,
        admin_token=token,
        max_lag=options.max_lag,
    )
    gateway = create_app(engine, gateway_settings(options, hash_token(token), None), replica)
    replica.ws = gateway.ws
    config, http1 = http_servers(options, gateway)
    stopping = trio.Event()

    async def shutdown_trigger() -> None:
        await stopping.wait()
        gateway.ws.shutdown()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
                stopping.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals)
        http_done = trio.Event()

        async def serve_http(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await frontdoor.serve(
                    gateway.asgi,
                    config,
                    options.host,
                    options.port,
                    gateway.ws.handle_connection,
                    shutdown_trigger=shutdown_trigger,
                    http1=http1,
                    max_connections=options.max_connections,
                    per_address=options.http_connections_per_address,
                    forwarded_allow_ips=options.forwarded_allow_ips,
                    task_status=task_status,
                )
            finally:
                http_done.set()

        await nursery.start(gateway.ws.run_flusher)
        try:
            binds = await nursery.start(serve_http)
        except (OSError, BaseExceptionGroup) as error:
            failure = only(error, OSError)
            if not isinstance(failure, OSError):
                raise
            raise StartupError(
                f"cannot listen on {options.host}:{options.port}: {reason(failure)}"
            ) from None
        log.info("listening", extra={"fields": {"binds": binds, "role": "replica"}})
        await replica.bootstrap()
        await nursery.start(engine.run)
        await nursery.start(replica.run)
        tune_gc(options.gc_thresholds)
        task_status.started(binds)
        await http_done.wait()
        await replica.aclose()
        log.info("stopped", extra={"fields": {"lsn": engine.applied_lsn}})
        nursery.cancel_scope.cancel()
