"""``chat-engine replica``: a replica's life, built on ``serve``'s pieces.

Listen first (``/healthz`` answers, ``/readyz`` says 503), load the primary's snapshot,
start the engine (no log, no presence expiry), then follow the stream until SIGTERM,
which closes sessions with 1001 and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os

import trio

from engine.actors.supervisor import Engine, EngineConfig
from engine.ids import hash_token
from gateway import openfiles
from gateway.app import create_app
from gateway.cli import ENV_ONLY, gateway_settings, http_servers
from gateway.cluster.replica import Replica
from gateway.lifecycle import StartupError, serve_node
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

    async def start(nursery: trio.Nursery) -> None:
        await replica.bootstrap()
        await nursery.start(engine.run)
        await nursery.start(replica.run)

    await serve_node(
        options,
        engine,
        gateway,
        http_servers(options, gateway),
        start=start,
        finish=replica.aclose,
        listening={"role": "replica"},
        task_status=task_status,
    )
