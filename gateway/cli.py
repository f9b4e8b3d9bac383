"""``chat-engine serve``: the command line and the server's life.

Every flag can also be given as an environment variable named after it
(``--presence-timeout`` -> ``CHAT_ENGINE_PRESENCE_TIMEOUT``); a flag on the command line
wins over its variable. The flags are the rows of ``gateway.settings.SERVE_OPTIONS``.
A bad value, a port in use or an unusable data dir is one line on stderr and exit status
2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NoReturn

import orjson
import trio

from engine.actors.supervisor import Engine, EngineConfig
from engine.ids import hash_token, new_secret
from engine.webhooks import Allow
from gateway import frontdoor, hypercorn_edge, logs, maintenance, openfiles, wsquota
from gateway.app import Gateway, GatewaySettings, create_app
from gateway.cluster import redislog
from gateway.cluster.shipper import Primary, Shipper
from gateway.http1 import Http1Server
from gateway.lifecycle import StartupError, only, reason, serve_node
from gateway.settings import (
    ENV_PREFIX,
    REPLICA_OPTIONS,
    SERVE_OPTIONS,
    SettingsError,
    add_options,
    resolve,
    unknown_variables,
)
from gateway.ws import WsSettings
from gateway.wsconn import WsLimits
from persistence import datadir
from persistence.errors import StartupRefused
from persistence.store import Store

log = logging.getLogger("chat_engine")
# hypercorn (HTTP/2, and HTTP/1.x with --http1-server hypercorn) has no deadline on a
# connection by default, and its idle timer stops while a stream is open: a peer that
# opens a stream and goes silent held its slot forever. This closes a connection from
# which nothing arrived for this long, as the built-in server's head deadline does.
HYPERCORN_READ_TIMEOUT = 30  # seconds
# Variables read directly rather than through the option table: a secret is not a flag
# (a command line is visible to every user of the machine in ps).
ENV_ONLY = (ENV_PREFIX + "ADMIN_TOKEN",)


# What main() reports as one line and exit status 2 instead of a traceback.
STARTUP_ERRORS: tuple[type[Exception], ...] = (SettingsError, StartupError, StartupRefused)


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose usage errors are a ``SettingsError`` (one line, exit 2) rather
    than a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"{message} (see {self.prog} --help)")


class CommandLine(OneLineParser):
    """The top-level parser: after parsing, each option of the chosen command is
    resolved against the environment (``gateway.settings.resolve``)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        options, extra = super().parse_known_args(args, namespace)
        resolve(options, os.environ)
        return options, extra


def version() -> str:
    try:
        return metadata.version("chat-engine")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLine(
        prog="chat-engine",
        description="A real-time chat engine: rooms, chats, messages and live channels.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    serve = commands.add_parser(
        "serve",
        help="run the HTTP + WebSocket server",
        description="Run the HTTP + WebSocket server. Every flag can also be set by the "
        "environment variable named in its help; a flag wins over its variable.",
    )
    add_options(serve, SERVE_OPTIONS)
    replica = commands.add_parser(
        "replica",
        help="run a cluster replica: follow a primary through Redis, serve reads and sessions",
        description="Run a replica of a cluster (docs/cluster.md): load the primary's "
        "snapshot, apply its log from the Redis stream, serve every read and WebSocket "
        "session, forward writes to the primary. The admin token comes from "
        "CHAT_ENGINE_ADMIN_TOKEN (the primary's). Every flag can also be set by the "
        "environment variable named in its help.",
    )
    add_options(replica, REPLICA_OPTIONS)
    maintenance.add_commands(commands)
    return parser


@dataclass(slots=True)
class AdminToken:
    hash: str
    printed: str | None  # the token, when it was made now and must be shown once
    path: Path | None = None  # where a new one is stored, once recovery has succeeded

    def store(self) -> None:
        """Write a new token (a refused start creates no file, so nothing is written
        before recovery succeeds); a token that already existed is left alone."""
        if self.path is None or self.printed is None:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.printed + "\n")


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
    token = new_secret()
    return AdminToken(hash_token(token), token, path)


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


def create_engine(options: argparse.Namespace) -> Engine:
    store = None
    if not options.in_memory:
        store = Store(
            Path(options.data_dir),
            fsync=options.fsync,
            snapshot_interval=options.snapshot_interval,
            snapshot_records=options.snapshot_records,
        )
    return Engine(
        EngineConfig(
            resume_window=options.resume_window,
            presence_timeout=options.presence_timeout,
            history_limit=options.history_limit,
        ),
        store=store,
    )


async def serve(
    options: argparse.Namespace,
    *,
    engine: Engine | None = None,
    ws_limits: WsLimits | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT. ``engine`` lets tests inject one with its own clock,
    ``ws_limits`` shorter WebSocket timeouts."""
    for name in unknown_variables(
        os.environ, [option.env for option in SERVE_OPTIONS] + list(ENV_ONLY)
    ):
        log.warning("ignored: %s names no option", name, extra={"fields": {"variable": name}})
    before, after = openfiles.raise_soft_limit()
    if after != before:
        log.info("open-files limit raised", extra={"fields": {"from": before, "to": after}})
    refusal = openfiles.cap_refusal(options.max_connections)
    if refusal is not None:
        raise StartupError(refusal)
    # One process per data directory, claimed before anything in it is read; held until
    # serve returns, however it returns (the kernel drops it if the process dies).
    if options.in_memory:
        await _serve(options, engine, ws_limits, task_status)
        return
    data_dir_lock = datadir.claim(Path(options.data_dir))
    try:
        await _serve(options, engine, ws_limits, task_status)
    finally:
        data_dir_lock.release()


async def _serve(
    options: argparse.Namespace,
    engine: Engine | None,
    ws_limits: WsLimits | None,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    try:
        token = admin_token(options)
        running = engine if engine is not None else create_engine(options)
    except OSError as error:
        raise StartupError(data_dir_unusable(options.data_dir, error)) from None
    shipper = await primary_shipper(options, running)
    gateway = create_app(
        running,
        gateway_settings(options, token.hash, ws_limits),
        None if shipper is None else Primary(shipper),
    )

    async def start(nursery: trio.Nursery) -> None:
        try:
            await nursery.start(running.run)  # recovery: /readyz says 503 until it is done
        except (OSError, BaseExceptionGroup) as error:
            failure = only(error, OSError)
            if not isinstance(failure, OSError):
                raise
            raise StartupError(data_dir_unusable(options.data_dir, failure)) from None
        if shipper is not None:
            await nursery.start(shipper.run)
        await nursery.start(gateway.webhooks.run)
        try:
            token.store()
        except OSError as error:
            raise StartupError(data_dir_unusable(options.data_dir, error)) from None
        await announce(options, running, token.printed)

    async def finish() -> None:
        # The HTTP servers returned (sessions closed with 1001, in-flight requests
        # answered): the log is flushed, a final snapshot is written, the actors stop.
        await running.drain()
        if shipper is not None:
            await shipper.finish()

    await serve_node(
        options,
        running,
        gateway,
        http_servers(options, gateway),
        start=start,
        finish=finish,
        listening={"in_memory": options.in_memory},
        task_status=task_status,
    )


async def announce(options: argparse.Namespace, engine: Engine, printed: str | None) -> None:
    """Once recovered: a generated admin token, and with ``--demo`` the demo data."""
    if printed:
        print(f"admin token: {printed}", flush=True)
    if options.demo:
        if engine.state.orgs:
            log.info("demo skipped: the store is not empty")
        else:
            demo = await create_demo(engine)
            print(orjson.dumps(demo, option=orjson.OPT_INDENT_2).decode(), flush=True)


async def primary_shipper(options: argparse.Namespace, engine: Engine) -> Shipper | None:
    """With ``--redis``: refuse to start if another primary holds the prefix, and the
    shipper that will send every record to the stream."""
    if not options.redis:
        return None
    data_dir = None if options.in_memory else Path(options.data_dir)
    instance = redislog.instance_id(data_dir)
    holder = redislog.holder(engine.realtime.epoch, instance)
    await redislog.claim_at_start(options.redis, options.redis_prefix, holder)
    shipper = Shipper(
        engine,
        options.redis,
        options.redis_prefix,
        options.redis_log_length,
        data_dir,
        instance,
    )
    if engine.store is not None:  # segments stay until shipped
        engine.store.holds.append(shipper.hold)
    return shipper


def gateway_settings(
    options: argparse.Namespace, admin_token_hash: str, ws_limits: WsLimits | None
) -> GatewaySettings:
    return GatewaySettings(
        admin_token_hash=admin_token_hash,
        public_url=options.public_url,
        open_registration=not options.no_open_registration,
        rate_limit=options.rate_limit,
        registration_rate_limit=options.registration_rate_limit,
        cors_origins=options.cors_origins,
        forwarded_allow_ips=options.forwarded_allow_ips,
        # only a primary names positions: a replica passes on its primary's header
        position_header=getattr(options, "command", "serve") == "serve"
        and bool(getattr(options, "redis", None)),
        # deliveries run on the primary only (a replica has no webhook flags)
        webhook_allow=getattr(options, "webhook_allow", Allow()),
        ws=WsSettings(
            queue_limit=options.session_queue,
            queue_bytes=options.session_queue_bytes,
            queue_budget=options.session_queue_budget,
            flush_interval=options.flush_interval,
            limits=ws_limits or WsLimits(),
            sessions_per_token=options.ws_sessions_per_token,
            sessions_per_address=options.ws_sessions_per_address,
            max_sessions=wsquota.most_sessions(
                options.max_connections or frontdoor.default_max_connections()
            ),
            forwarded_allow_ips=options.forwarded_allow_ips,
            access_log=logging.getLogger("chat_engine.access") if options.access_log else None,
        ),
    )


def http_servers(
    options: argparse.Namespace, gateway: Gateway
) -> tuple[hypercorn_edge.EdgeConfig, Http1Server | None]:
    """hypercorn's settings, and the built-in HTTP/1.1 server unless hypercorn serves
    HTTP/1.1 too (``--http1-server``). hypercorn's own refusals get the JSON body
    (``gateway/hypercorn_edge.py``)."""
    hypercorn_edge.install()
    config = hypercorn_edge.EdgeConfig()
    config.http2 = options.http2
    config.accesslog = logging.getLogger("hypercorn.access") if options.access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 5.0
    config.read_timeout = HYPERCORN_READ_TIMEOUT
    # WebSocket sessions bypass hypercorn (gateway/frontdoor.py): their message size,
    # pings and timeouts are gateway.wsconn.WsLimits, not hypercorn settings.
    if options.http1_server != "builtin":
        return config, None
    http1 = Http1Server(
        gateway.web.handle,
        keep_alive_timeout=config.keep_alive_timeout,
        access_log=logging.getLogger("chat_engine.access") if options.access_log else None,
    )
    return config, http1


def data_dir_unusable(data_dir: str, error: OSError) -> str:
    path = Path(data_dir)
    if path.exists() and not path.is_dir():
        return f"cannot use the data dir {data_dir}: it is not a directory"
    where = f" ({error.filename})" if error.filename and error.filename != data_dir else ""
    return f"cannot use the data dir {data_dir}: {reason(error)}{where}"


def main(argv: Sequence[str] | None = None) -> None:
    try:
        options = build_parser().parse_args(argv)
        logs.setup(options.log_level)
        if options.command in maintenance.COMMANDS:
            sys.exit(maintenance.run(options))
        if options.command == "serve":
            trio.run(serve, options)
        if options.command == "replica":
            from gateway.cluster.run import serve_replica  # it builds on this module

            trio.run(serve_replica, options)
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C
        sys.exit(130)
    except BaseException as error:
        failure = only(error, STARTUP_ERRORS)
        if failure is None:
            raise
        print(f"chat-engine: {failure}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
