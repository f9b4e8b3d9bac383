"""The options of ``chat-engine serve``, each defined once, in ``SERVE_OPTIONS``.

A row gives the flag, the function that parses a value (and says the rule when it
refuses one), the default as it would be typed, and the help. The ``CHAT_ENGINE_*``
variable is derived from the flag (``--presence-timeout`` ->
``CHAT_ENGINE_PRESENCE_TIMEOUT``). A value is taken from the command line, else from the
variable (an empty variable counts as unset), else the default, and goes through the same
parser whichever way it came, so a bad one is the same ``SettingsError`` line either way:
the flag, its variable, the rule and the value. The README's flag table is generated
from the rows (``python -m gateway.settings``), and a test keeps the two equal.

A default is written once. Where the option feeds a setting that has a default of its own
(``EngineConfig``, ``WsSettings``, ``Store``), the row reads that default
(``default_of``), so a test, an embedding or ``chat-engine serve`` with no flags all run
on the same values; only the options nothing else has a default for (the address, the
data directory, the log level...) are written in the row.

Why not pydantic-settings: its validation errors are several lines in pydantic's wording,
its lax booleans accept ``t``/``y``/``f``/``n`` as well, it would replace argparse's
``--help``, and most rows here need a parser of their own anyway (``RATE/BURST``, CIDR
lists, origins); a row with a plain function is less code than the custom validators.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from engine.actors.supervisor import EngineConfig
from engine.webhooks import Allow, parse_allow
from gateway.ws import WsSettings
from persistence.store import Store
from persistence.wal import FSYNC_MODES

ENV_PREFIX = "CHAT_ENGINE_"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(Exception):
    """A value that breaks its option's rule, or a malformed command line: one line."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate: float  # tokens a second
    burst: int  # the bucket's size

    def __str__(self) -> str:
        return f"{self.rate:g}/{self.burst}"


DEFAULT_RATE_LIMIT = RateLimit(20.0, 100)
DEFAULT_REGISTRATION_RATE_LIMIT = RateLimit(5.0, 20)


def default_of(owner: Any, name: str) -> str:
    """The default of field ``name`` of a dataclass, or of parameter ``name`` of a
    callable, as it would be typed on the command line (``1800.0`` -> ``1800``)."""
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        if field.default is not dataclasses.MISSING:
            value = field.default
        else:
            assert field.default_factory is not dataclasses.MISSING, (owner, name)
            value = field.default_factory()
    else:
        value = inspect.signature(owner).parameters[name].default
        assert value is not inspect.Parameter.empty, (owner, name)
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True, slots=True)
class Option:
    flag: str
    parse: Callable[[str], Any]  # raises ValueError whose text is the rule
    default: str | None  # as it would be typed; None: no value
    help: str
    switch: bool = False  # given alone on the command line (true); its variable is a boolean
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def shown_default(self) -> str:
        if self.switch:
            return "off"
        return self.default if self.default else "none"


# -- parsers: each returns the value or raises ValueError naming the rule -------------------


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    rule = (
        f"an integer from {minimum} to {maximum}"
        if maximum is not None
        else f"an integer, at least {minimum}"
    )

    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""), 10)
        except ValueError:
            raise ValueError(rule) from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(rule)
        return value

    return parse


def seconds(minimum: float, *, above: bool = False) -> Callable[[str], float]:
    rule = f"a number of seconds {'above' if above else 'at least'} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(rule) from None
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            raise ValueError(rule)
        return value

    return parse


def choice(*values: str) -> Callable[[str], str]:
    rule = f"one of {', '.join(values)}"

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in values:
            raise ValueError(rule)
        return value

    return parse


TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError("true or false (also 1/0, yes/no, on/off)")


def non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("not empty")
    return text.strip()


def http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError("an http:// or https:// URL with a host and no query")
    return text.strip().rstrip("/")


def redis_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("a redis:// or rediss:// URL with a host (redis://HOST:PORT/DB)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("a redis:// URL with a valid port") from None
    return text.strip()


def key_prefix(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("a Redis key prefix without spaces")
    return value


def rate_limit(text: str) -> RateLimit | None:
    rule = "RATE/BURST (writes a second / the most at once, e.g. 20/100) or off"
    value = text.strip().lower()
    if value == "off":
        return None
    rate_text, slash, burst_text = value.partition("/")
    try:
        rate, burst = float(rate_text), int(burst_text)
    except ValueError:
        raise ValueError(rule) from None
    if not slash or not math.isfinite(rate) or rate <= 0 or burst < 1:
        raise ValueError(rule)
    return RateLimit(rate, burst)


def count_or_off(text: str) -> int | None:
    rule = "an integer, at least 1, or off"
    value = text.strip().lower()
    if value == "off":
        return None
    try:
        return integer(1)(value)
    except ValueError:
        raise ValueError(rule) from None


def count_off_or_auto(text: str) -> int | Literal["auto"] | None:
    """A count, ``off`` (None: no limit) or ``auto`` (the default rule of the option)."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    try:
        return count_or_off(value)
    except ValueError:
        raise ValueError("an integer, at least 1, or off, or auto") from None


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def origins(text: str) -> tuple[str, ...]:
    """Browser origins (``https://shop.example``, ``http://localhost:3000``) or ``*``."""
    rule = "a comma-separated list of origins like https://shop.example (scheme, host, port), or *"
    found = []
    for item in _items(text):
        if item == "*":
            found.append(item)
            continue
        parts = urlsplit(item)
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(rule) from None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ValueError(rule)
        found.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(found)


def networks(text: str) -> tuple[Network, ...]:
    """Addresses and CIDRs (``10.0.0.0/8``, ``::1``); ``*`` is every address."""
    rule = "a comma-separated list of IP addresses or CIDRs (e.g. 127.0.0.1,10.0.0.0/8), or *"
    found: list[Network] = []
    for item in _items(text):
        if item == "*":
            found += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            continue
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(rule) from None
    return tuple(found)


def webhook_allow(text: str) -> Allow:
    """Webhook targets: host names, addresses, CIDRs."""
    return parse_allow(_items(text))


def gc_thresholds(text: str) -> tuple[int, int, int]:
    rule = "three integers, at least 1 (gc.set_threshold's, e.g. 100000,50,100)"
    parse = integer(1)
    items = text.split(",")
    if len(items) != 3:
        raise ValueError(rule)
    try:
        first, second, third = (parse(item) for item in items)
    except ValueError:
        raise ValueError(rule) from None
    return first, second, third


# -- the table ----------------------------------------------------------------------------
# To add an option: one row here (its dest is the flag's name with underscores, read as
# ``options.<dest>``); the README table is then regenerated with python -m gateway.settings.

SERVE_OPTIONS: tuple[Option, ...] = (
    Option("--host", non_empty, "127.0.0.1", "the address to listen on"),
    Option("--port", integer(0, 65535), "8080", "the port to listen on (0: any free one)"),
    Option(
        "--data-dir",
        non_empty,
        "./data",
        "the write-ahead log, snapshots, `epoch`, `admin.token`",
        metavar="PATH",
    ),
    Option(
        "--in-memory",
        boolean,
        None,
        "keep nothing on disk (a fresh admin token is printed at every start)",
        switch=True,
    ),
    Option(
        "--fsync",
        choice(*FSYNC_MODES),
        default_of(Store, "fsync"),
        "`always`: acknowledge after fsync (group commit); `interval`: fsync every 50 ms; "
        "`off`: never (the last two may lose the last moments in a machine crash; a "
        "cluster primary ships only what is fsynced)",
    ),
    Option(
        "--snapshot-interval",
        seconds(0, above=True),
        default_of(Store, "snapshot_interval"),
        "seconds between snapshots",
    ),
    Option(
        "--snapshot-records",
        integer(1),
        default_of(Store, "snapshot_records"),
        "take a snapshot sooner once this many records were logged since the last one "
        "(bounds the log a restart replays)",
    ),
    Option(
        "--presence-timeout",
        seconds(0, above=True),
        default_of(EngineConfig, "presence_timeout"),
        "seconds an unreachable user's presences survive",
    ),
    Option(
        "--resume-window",
        seconds(0),
        default_of(EngineConfig, "resume_window"),
        "seconds since a chat's last update during which `auto_resume` may pick it",
    ),
    Option(
        "--public-url",
        http_url,
        None,
        "base URL of pagination links (none: from the request's host)",
        metavar="URL",
    ),
    Option(
        "--demo",
        boolean,
        None,
        "on an empty store, create a demo org and print its tokens",
        switch=True,
    ),
    Option(
        "--no-open-registration",
        boolean,
        None,
        "turn off `POST /api/v5/client/visitors`",
        switch=True,
    ),
    Option(
        "--rate-limit",
        rate_limit,
        str(DEFAULT_RATE_LIMIT),
        "writes (POST, PUT, PATCH, DELETE) per user or visitor token: RATE a second, "
        "bursts of BURST, or `off`; over it: 429 `rate_limited` with `Retry-After`",
        metavar="RATE/BURST",
    ),
    Option(
        "--registration-rate-limit",
        rate_limit,
        str(DEFAULT_REGISTRATION_RATE_LIMIT),
        "open visitor registrations (`POST /api/v5/client/visitors`) per client address: "
        "RATE a second, bursts of BURST, or `off`; over it: 429 `rate_limited` with "
        "`Retry-After`",
        metavar="RATE/BURST",
    ),
    Option(
        "--cors-origins",
        origins,
        "",
        "browser origins (`https://shop.example`, or `*`) whose pages may call the API: "
        "preflights answered and `Access-Control-Allow-*` sent to those only",
        metavar="ORIGINS",
    ),
    Option(
        "--forwarded-allow-ips",
        networks,
        "",
        "proxies (addresses or CIDRs, or `*`) whose `X-Forwarded-Proto/Host/For` are "
        "trusted for links and logs",
        metavar="ADDRESSES",
    ),
    Option(
        "--webhook-allow",
        webhook_allow,
        "",
        "webhook targets (host names, addresses or CIDRs, e.g. `hooks.example.com,10.0.0.0/8`); "
        "a URL whose host is not named must resolve inside the networks, checked at "
        "registration and again at each delivery (none: every registration is refused)",
        metavar="TARGETS",
    ),
    Option(
        "--max-connections",
        integer(1),
        None,
        "connections (HTTP and WebSocket) served at once; one past it is answered 503 "
        "and closed (none: the soft limit on open files, less 64; the soft limit is raised "
        "to the hard one at start, and a cap above it less 64 is refused)",
    ),
    Option(
        "--http-connections-per-address",
        count_off_or_auto,
        "auto",
        "connections open at once from one peer address until they are WebSocket sessions "
        "(HTTP requests, and upgrades not yet admitted); one more is answered 429 "
        "`rate_limited` with `Retry-After: 1` and closed. Peers in `--forwarded-allow-ips` "
        "count only in `--max-connections` (`auto`: a tenth of `--max-connections`, at "
        "least 256 or the cap if smaller; `off`: no limit)",
        metavar="N",
    ),
    Option(
        "--ws-sessions-per-token",
        count_or_off,
        "20",
        "WebSocket sessions open at once with one visitor or user token; one more upgrade is answered "
        "429 `rate_limited` (`off`: no limit)",
        metavar="N",
    ),
    Option(
        "--ws-sessions-per-address",
        count_or_off,
        "100",
        "visitor and user WebSocket sessions open at once from one client address (the peer, or the "
        "`X-Forwarded-For` of a trusted proxy); one more upgrade is answered 429 "
        "`rate_limited` (`off`: no limit). WebSocket sessions together take at most 90% "
        "of `--max-connections`, the rest is kept for HTTP (one more: 503)",
        metavar="N",
    ),
    Option(
        "--history-limit",
        integer(1),
        default_of(EngineConfig, "history_limit"),
        "events kept per channel for resuming with `since`",
    ),
    Option(
        "--session-queue",
        integer(1),
        default_of(WsSettings, "queue_limit"),
        "items a WebSocket session may have waiting before it is closed with 4008",
    ),
    Option(
        "--session-queue-bytes",
        integer(1),
        default_of(WsSettings, "queue_bytes"),
        "encoded bytes a WebSocket session may have waiting before it is closed with 4008",
    ),
    Option(
        "--session-queue-budget",
        integer(1),
        default_of(WsSettings, "queue_budget"),
        "encoded bytes waiting in all WebSocket sessions together; past it, a session "
        "holding more than an equal share is closed with 4008",
    ),
    Option(
        "--flush-interval",
        seconds(0),
        default_of(WsSettings, "flush_interval"),
        "the most a WebSocket write pass waits after the previous one: half as long as "
        "that pass's writing took, up to this (0: back to back)",
    ),
    Option(
        "--log-level",
        choice("debug", "info", "warning", "error", "critical"),
        "info",
        "logs are JSON lines on stderr",
    ),
    Option(
        "--access-log",
        boolean,
        None,
        "log a line per HTTP answer and refused WebSocket upgrade (`chat_engine.access`)",
        switch=True,
    ),
    Option(
        "--http1-server",
        choice("builtin", "hypercorn"),
        "builtin",
        "what serves HTTP/1.x: `builtin` (gateway/http1.py, which calls the routes "
        "directly) or `hypercorn` (through quart-trio, several times the CPU a request); HTTP/2 "
        "is always hypercorn's",
    ),
    Option(
        "--http2",
        boolean,
        "on",
        "serve HTTP/2 with prior knowledge (hypercorn's); `off`: its preface is answered "
        "`505` with a JSON body and closed, and `Upgrade: h2c` is ignored",
    ),
    Option(
        "--redis",
        redis_url,
        None,
        "the cluster's Redis (7 or later): `serve` ships its log there as the primary, "
        "`replica` follows it (docs/cluster.md)",
        metavar="URL",
    ),
    Option(
        "--redis-prefix",
        key_prefix,
        "chat-engine",
        "the prefix of every Redis key of the cluster (`PREFIX:log`, `PREFIX:primary`)",
        metavar="PREFIX",
    ),
    Option(
        "--redis-log-length",
        integer(100),
        "100000",
        "records the Redis stream keeps (about; older ones are trimmed: a replica that "
        "falls further behind loads a fresh snapshot)",
        metavar="N",
    ),
    Option(
        "--gc-thresholds",
        gc_thresholds,
        "100000,50,100",
        "the cyclic garbage collector's thresholds (higher: fewer pauses on the hot path)",
        metavar="N,N,N",
    ),
)


# `chat-engine replica`'s own rows; the rest are serve's (REPLICA_OPTIONS below).
REPLICA_ONLY: tuple[Option, ...] = (
    Option(
        "--primary",
        http_url,
        None,
        "the primary's base URL (its snapshot, and where writes are forwarded)",
        metavar="URL",
    ),
    Option(
        "--max-lag",
        integer(0),
        "1000",
        "`/readyz` is 200 only while the replica is within this many records of the stream's head",
        metavar="N",
    ),
)


def pick(*flags: str) -> tuple[Option, ...]:
    """Rows of ``SERVE_OPTIONS`` for another command that takes the same options
    (``add_options(check, pick("--data-dir"))``)."""
    rows = {option.flag: option for option in SERVE_OPTIONS}
    return tuple(rows[flag] for flag in flags)


# -- argparse and the environment ---------------------------------------------------------


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add ``options`` to ``parser`` as raw strings; ``resolve`` parses them later, so a
    flag and its variable share one parser and one error."""
    for option in options:
        text = f"{option.help} [env {option.env}; default: {option.shown_default}]"
        if option.switch:
            parser.add_argument(
                option.flag,
                action="store_const",
                const="true",
                default=None,
                help=text.replace("%", "%%"),
            )
        else:
            parser.add_argument(
                option.flag,
                default=None,
                metavar=option.metavar or option.dest.upper(),
                help=text.replace("%", "%%"),
            )
    parser.set_defaults(option_table=tuple(options))


def _shown(value: str) -> str:
    shown = value if len(value) <= 60 else value[:57] + "..."
    return repr(shown)


def resolve(namespace: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Replace each raw value in ``namespace`` by its parsed value (flag, else variable,
    else default); a switch not given is false. Raises ``SettingsError``."""
    table: Iterable[Option] = getattr(namespace, "option_table", ())
    for option in table:
        raw = getattr(namespace, option.dest, None)
        if raw is None:
            raw = environ.get(option.env) or None
        if raw is None:
            raw = option.default
        if raw is None:
            setattr(namespace, option.dest, False if option.switch else None)
            continue
        try:
            value = option.parse(raw)
        except ValueError as error:
            raise SettingsError(
                f"{option.flag} (or {option.env}) must be {error}; got {_shown(raw)}"
            ) from None
        setattr(namespace, option.dest, value)


# The test suite's own switches (``CHAT_ENGINE_REQUIRE_REDIS``...: a missing component
# fails the run instead of skipping), set by CI for every process it starts; not options.
SUITE_PREFIX = ENV_PREFIX + "REQUIRE_"


def unknown_variables(environ: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """``CHAT_ENGINE_*`` variables that name no option (a typo is then not silent), but
    the test suite's ``CHAT_ENGINE_REQUIRE_*`` switches."""
    names = set(known)
    return sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX) and not name.startswith(SUITE_PREFIX) and name not in names
    )


def markdown_table(options: Sequence[Option] = SERVE_OPTIONS) -> str:
    rows = ["| flag | variable | default | meaning |", "|---|---|---|---|"]
    for option in options:
        default = option.shown_default
        default = default if default in ("off", "none") else f"`{default}`"
        rows.append(f"| `{option.flag}` | `{option.env}` | {default} | {option.help} |")
    return "\n".join(rows) + "\n"


REPLICA_OPTIONS: tuple[Option, ...] = (
    *pick(
        "--host",
        "--port",
        "--redis",
        "--redis-prefix",
        "--presence-timeout",
        "--log-level",
        "--access-log",
        "--http2",
        "--max-connections",
        "--http-connections-per-address",
        "--ws-sessions-per-token",
        "--ws-sessions-per-address",
        "--session-queue",
        "--session-queue-bytes",
        "--session-queue-budget",
        "--flush-interval",
        "--public-url",
        "--cors-origins",
        "--forwarded-allow-ips",
        "--gc-thresholds",
    ),
    *REPLICA_ONLY,
)


if __name__ == "__main__":
    print(markdown_table(), end="")
