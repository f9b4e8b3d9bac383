"""``chat-engine serve``: flags, their ``CHAT_ENGINE_*`` env twins, and the server's life.

Every flag can also be given as an environment variable named after it
(``--presence-timeout`` -> ``CHAT_ENGINE_PRESENCE_TIMEOUT``); a flag on the command line
wins over its variable.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import trio
from hypercorn.config import Config as HypercornConfig

from engine.actors.supervisor import Engine, EngineConfig
from engine.ids import hash_token, new_secret
from gateway import frontdoor, logs, maintenance
from gateway.app import GatewaySettings, create_app
from gateway.http1 import Http1Server
from gateway.ws import WsSettings
from gateway.wsconn import WsLimits
from persistence import datadir
from persistence.errors import refusal_in
from persistence.store import DEFAULT_SNAPSHOT_RECORDS, Store
from persistence.wal import FSYNC_MODES

log = logging.getLogger("chat_engine")
ENV_PREFIX = "CHAT_ENGINE_"
GC_THRESHOLDS = tuple(
    int(x) for x in os.environ.get("CHAT_ENGINE_GC_THRESHOLDS", "100000,50,100").split(",")
)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _env_flag(name: str) -> bool:
    return (_env(name) or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP + WebSocket server")
    serve.add_argument("--host", default=_env("host", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(_env("port", "8080") or 8080))
    serve.add_argument("--data-dir", default=_env("data-dir", "./data"))
    serve.add_argument(
        "--in-memory",
        action="store_true",
        default=_env_flag("in-memory"),
        help="keep nothing on disk (the admin token is printed at every start)",
    )
    serve.add_argument(
        "--presence-timeout",
        type=float,
        default=float(_env("presence-timeout", "120") or 120),
        help="seconds an unreachable user's presences survive",
    )
    serve.add_argument(
        "--resume-window",
        type=float,
        default=float(_env("resume-window", "1800") or 1800),
        help="seconds since a chat's last update during which auto_resume may pick it",
    )
    serve.add_argument(
        "--public-url",
        default=_env("public-url"),
        help="base URL for pagination links (default: from the request's Host)",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        default=_env_flag("demo"),
        help="on an empty store, create a demo org and print its tokens",
    )
    serve.add_argument(
        "--no-open-registration",
        action="store_true",
        default=_env_flag("no-open-registration"),
        help="turn off POST /api/v5/client/visitors",
    )
    serve.add_argument(
        "--fsync",
        choices=FSYNC_MODES,
        default=_env("fsync", "always"),
        help="always: acknowledge after fsync (group commit); interval: fsync every 50 ms; "
        "off: never (interval and off may lose the last moments in a machine crash)",
    )
    serve.add_argument(
        "--snapshot-interval",
        type=float,
        default=float(_env("snapshot-interval", "60") or 60),
        help="seconds between snapshots",
    )
    serve.add_argument(
        "--snapshot-records",
        type=_positive_int,
        default=int(_env("snapshot-records", "") or DEFAULT_SNAPSHOT_RECORDS),
        help="take a snapshot sooner once this many records were logged since the last "
        "one (bounds the log a restart replays)",
    )
    serve.add_argument(
        "--history-limit",
        type=int,
        default=int(_env("history-limit", "1000") or 1000),
        help="events kept per channel for resuming with 'since'",
    )
    serve.add_argument(
        "--session-queue",
        type=int,
        default=int(_env("session-queue", "2000") or 2000),
        help="items a WebSocket session may have waiting before it is closed with 4008",
    )
    serve.add_argument(
        "--flush-interval",
        type=float,
        default=float(_env("flush-interval", "0.025") or 0.025),
        help="most seconds a WebSocket write pass waits after the previous one (it waits "
        "half as long as that one's writing took, up to this; 0: back to back)",
    )
    serve.add_argument("--log-level", default=_env("log-level", "info"))
    serve.add_argument("--access-log", action="store_true", default=_env_flag("access-log"))
    serve.add_argument(
        "--http1-server",
        choices=("builtin", "hypercorn"),
        default=_env("http1-server", "builtin"),
        help="what serves HTTP/1.x requests: the built-in server (gateway/http1.py, which "
        "calls the routes directly) or hypercorn (through quart-trio, ~4x the CPU per "
        "request; HTTP/2 is always hypercorn's)",
    )
    maintenance.add_commands(commands)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


@dataclass(slots=True)
class AdminToken:
    hash: str
    printed: str | None  # the token, when it was made now and must be shown once


def admin_token(options: argparse.Namespace) -> AdminToken:
    given = os.environ.get(ENV_PREFIX + "ADMIN_TOKEN")
    if given:
        return AdminToken(hash_token(given), None)
    if options.in_memory:
        token = new_secret()
        return AdminToken(hash_token(token), token)
    path = Path(options.data_dir) / "admin.token"
    if path.exists():
        return AdminToken(hash_token(path.read_text().strip()), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return AdminToken(hash_token(token), token)


async def create_demo(engine: Engine) -> dict[str, object]:
    """A demo org with two rooms, three operators and two visitors."""
    org, org_token = await engine.directory.create_org("Demo Org")
    sales = await engine.directory.create_room(org.id, "Sales", False)
    support = await engine.directory.create_room(org.id, "Support", True)
    users = []
    for first, last, alias in (
        ("Ada", "Lovelace", "Ada"),
        ("Alan", "Turing", "Alan"),
        ("Grace", "Hopper", "Grace"),
    ):
        user, token = await engine.directory.create_user(
            org.id, first_name=first, last_name=last, alias=alias, room_ids=None
        )
        users.append({"id": user.id, "name": user.full_name, "token": token})
    visitors = []
    for _ in range(2):
        _, visitor, token = await engine.directory.register_visitor(org.id, None)
        visitors.append({"id": visitor.id, "token": token})
    return {
        "org": {"id": org.id, "token": org_token},
        "rooms": {"Sales": sales.id, "Support (private chats)": support.id},
        "users": users,
        "visitors": visitors,
    }


async def serve(
    options: argparse.Namespace,
    *,
    engine: Engine | None = None,
    ws_limits: WsLimits | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT. ``engine`` lets tests inject one with its own clock,
    ``ws_limits`` shorter WebSocket timeouts."""
    # One process per data directory, claimed before anything in it is read; held until
    # serve returns (the kernel drops it if the process dies).
    data_dir_lock = None if options.in_memory else datadir.claim(Path(options.data_dir))
    token = admin_token(options)
    if engine is None:
        store = None
        if not options.in_memory:
            store = Store(
                Path(options.data_dir),
                fsync=options.fsync,
                snapshot_interval=options.snapshot_interval,
                snapshot_records=options.snapshot_records,
            )
        engine = Engine(
            EngineConfig(
                resume_window=options.resume_window,
                presence_timeout=options.presence_timeout,
                history_limit=options.history_limit,
            ),
            store=store,
        )
    settings = GatewaySettings(
        admin_token_hash=token.hash,
        public_url=options.public_url,
        open_registration=not options.no_open_registration,
        ws=WsSettings(
            queue_limit=options.session_queue,
            flush_interval=max(0.0, options.flush_interval),
            limits=ws_limits or WsLimits(),
        ),
    )
    gateway = create_app(engine, settings)
    config = HypercornConfig()
    config.accesslog = logging.getLogger("hypercorn.access") if options.access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 5.0
    # WebSocket sessions bypass hypercorn (gateway/frontdoor.py): their message size,
    # pings and timeouts are gateway.wsconn.WsLimits, not hypercorn settings.
    ws_gateway = gateway.ws
    http1 = None
    if options.http1_server == "builtin":
        http1 = Http1Server(
            gateway.web.handle,
            keep_alive_timeout=config.keep_alive_timeout,
            access_log=logging.getLogger("chat_engine.access") if options.access_log else None,
        )

    async def shutdown_trigger() -> None:
        await stopping.wait()
        ws_gateway.shutdown()  # sessions flush their queues and close with 1001

    stopping = trio.Event()

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
                    ws_gateway.handle_connection,
                    shutdown_trigger=shutdown_trigger,
                    http1=http1,
                    task_status=task_status,
                )
            finally:
                http_done.set()

        await nursery.start(ws_gateway.run_flusher)
        # Listen first: /healthz answers and /readyz says 503 while recovery runs.
        binds = await nursery.start(serve_http)
        log.info("listening", extra={"fields": {"binds": binds, "in_memory": options.in_memory}})
        await nursery.start(engine.run)
        if token.printed:
            print(f"admin token: {token.printed}", flush=True)
        if options.demo:
            if engine.state.orgs:
                log.info("demo skipped: the store is not empty")
            else:
                demo = await create_demo(engine)
                print(orjson.dumps(demo, option=orjson.OPT_INDENT_2).decode(), flush=True)
        tune_gc()
        task_status.started(binds)
        # hypercorn returns once its shutdown trigger fired (sessions closed with 1001)
        # and in-flight requests finished; then the log is flushed, a final snapshot is
        # written, and the engine's actors stop.
        await http_done.wait()
        await engine.drain()
        log.info("stopped", extra={"fields": {"lsn": engine.applied_lsn}})
        nursery.cancel_scope.cancel()
    if data_dir_lock is not None:
        data_dir_lock.release()


def tune_gc() -> None:
    """Keep the cyclic GC off the hot path.

    Every frame a session sends allocates a few objects; with the default thresholds
    (700, 10, 10) that triggers collections whose older passes rescan a heap that grows
    with every session. Measured with ``python -m bench fanout --sessions 1000 --ladder 5
    --seconds 4`` (two runs each, noisy 2-core machine): p99 725-1187 ms with the
    defaults, 332-526 ms with these thresholds. ``gc.freeze()`` showed no measurable
    effect on top, so it is not used.
    """
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: Sequence[str] | None = None) -> None:
    options = build_parser().parse_args(argv)
    logs.setup(options.log_level)
    if options.command in maintenance.COMMANDS:
        sys.exit(maintenance.run(options))
    if options.command == "serve":
        try:
            trio.run(serve, options)
        except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C
            sys.exit(130)
        except BaseException as error:  # a refusal: one line and status 2, no traceback
            refusal = refusal_in(error)
            if refusal is None:
                raise
            print(f"chat-engine: {refusal}", file=sys.stderr, flush=True)
            sys.exit(2)


if __name__ == "__main__":
    main()
