"""What the primary and its replicas share in Redis, and how they name it.

``{prefix}:log`` is a stream with one entry per log record, its ID ``{lsn}-0`` (so
Redis itself refuses a position already there, or an older one), its fields the
epoch (``e``), the record as the log holds it (``r``: msgpack ``[lsn, [facts]]``)
and the primary's wall clock when it shipped it (``t``, milliseconds).
``{prefix}:primary`` is the primary's lease: its value is ``{epoch}:{instance}``, the
epoch of the primary's data and the id of the data directory's place (``instance_id``:
a restart on the same directory, on the same machine, takes it back at once; a copy
elsewhere is another holder), renewed every few seconds and gone ``LEASE_MS`` after its
holder died. The stream is changed (XADD, DEL) only by scripts that check the lease's
value first, so a primary that does not hold it never touches the stream.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path

import coredis
import trio

from persistence.errors import StartupRefused

log = logging.getLogger("chat_engine.cluster")
# coredis logs a long traceback at "error" on each connection retry; the cluster's own
# single warning says that Redis is unavailable.
logging.getLogger("coredis").setLevel(logging.CRITICAL)

EPOCH = b"e"
RECORD = b"r"
SHIPPED_AT = b"t"
LEASE_MS = 10_000
RENEW_SECONDS = 2.0
CONNECT_TIMEOUT = 2.0
# Above the longest blocking read (``BLOCK_MS``), so a blocked XREAD is not cut short.
STREAM_TIMEOUT = 10.0
BLOCK_MS = 1000
# Takes the lease if it is free or already ours, and renews it; 1 when held.
LEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
# Appends records to the stream, only while the lease is this holder's. KEYS: lease,
# stream; ARGV: holder, maxlen, epoch, shipped-at, then (id, record) pairs. Returns -1
# when the lease is not held, else how many were appended before the first refusal.
SHIP_SCRIPT = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return -1
end
local added = 0
for i = 5, #ARGV, 2 do
  local ok = redis.pcall('xadd', KEYS[2], 'MAXLEN', '~', ARGV[2], ARGV[i],
                         'e', ARGV[3], 'r', ARGV[i + 1], 't', ARGV[4])
  if type(ok) == 'table' and ok.err then
    return added
  end
  added = added + 1
end
return added
"""
# Deletes the stream, only while the lease is this holder's; 1 when deleted.
RESET_SCRIPT = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('del', KEYS[2])
return 1
"""
INSTANCE_FILE = "cluster-instance"
# Gives the lease up, if it is still this holder's.
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def stream_key(prefix: str) -> str:
    return f"{prefix}:log"


def lease_key(prefix: str) -> str:
    return f"{prefix}:primary"


def entry_id(lsn: int) -> str:
    return f"{lsn}-0"


def lsn_of(identifier: bytes | str) -> int:
    text = identifier.decode() if isinstance(identifier, bytes) else identifier
    return int(text.partition("-")[0])


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def client(url: str) -> coredis.Redis[bytes]:
    """A client for ``url``; use it inside ``async with`` (its connection pool)."""
    return coredis.Redis.from_url(
        url, connect_timeout=CONNECT_TIMEOUT, stream_timeout=STREAM_TIMEOUT
    )


async def hold_lease(redis: coredis.Redis[bytes], prefix: str, holder: str) -> bool:
    """Take or renew the lease; False when another primary holds it."""
    held = await redis.eval(LEASE_SCRIPT, keys=[lease_key(prefix)], args=[holder, LEASE_MS])
    return bool(held)


class LeaseLost(Exception):
    """The lease is another primary's: the stream was left as it was."""


def instance_id(data_dir: Path | None) -> str:
    """This primary's id in the lease. A data directory keeps the id it was last served
    with, with the machine and the path it was served at: the same directory restarted
    in place (which its lock makes the only one) takes its lease back at once, while a
    copy on another machine or path gets a new id and waits for the lease to expire."""
    if data_dir is None:
        return uuid.uuid4().hex
    place = f"{socket.gethostname()} {Path(data_dir).resolve()}"
    path = Path(data_dir) / INSTANCE_FILE
    return _instance_from(path, place)


def _instance_from(path: Path, place: str) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    if len(lines) == 2 and lines[0] == place and lines[1]:
        return lines[1]
    fresh = uuid.uuid4().hex
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as written:
        written.write(f"{place}\n{fresh}\n")
    os.replace(temporary, path)
    return fresh


def holder(epoch: str, instance: str) -> str:
    return f"{epoch}:{instance}"


async def append(
    redis: coredis.Redis[bytes],
    prefix: str,
    holder: str,
    epoch: str,
    log_length: int,
    records: list[tuple[int, bytes]],
) -> int:
    """XADD ``records`` while the lease is ``holder``'s; how many went on (fewer than
    all: the stream already holds a position). ``LeaseLost`` when not held."""
    args: list[str | bytes | int] = [holder, log_length, epoch, str(now_ms())]
    for lsn, payload in records:
        args += [entry_id(lsn), payload]
    added = await redis.eval(SHIP_SCRIPT, keys=[lease_key(prefix), stream_key(prefix)], args=args)
    if not isinstance(added, int) or added < 0:
        raise LeaseLost
    return added


async def reset(redis: coredis.Redis[bytes], prefix: str, holder: str) -> None:
    """DEL the stream while the lease is ``holder``'s; ``LeaseLost`` when not held."""
    done = await redis.eval(
        RESET_SCRIPT, keys=[lease_key(prefix), stream_key(prefix)], args=[holder]
    )
    if not done:
        raise LeaseLost


async def release(url: str, prefix: str, holder: str) -> None:
    """A clean stop: the lease goes at once, so that a successor need not wait for it
    to expire. Redis unreachable: it expires by itself."""
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            async with client(url) as redis:
                await redis.eval(RELEASE_SCRIPT, keys=[lease_key(prefix)], args=[holder])
    except Exception as error:
        log.warning(
            "the primary lease could not be released; it expires by itself",
            extra={"fields": {"error": describe(error)}},
        )


async def claim_at_start(url: str, prefix: str, holder: str) -> None:
    """A primary's start: refuse (``StartupRefused``: one line, exit 2) when another
    primary holds the prefix. Redis unreachable is no reason not to serve: the shipper
    takes the lease once it can."""
    try:
        with trio.fail_after(CONNECT_TIMEOUT * 2):
            async with client(url) as redis:
                if await hold_lease(redis, prefix, holder):
                    return
                ttl = await redis.pttl(lease_key(prefix))
    except Exception as error:  # unreachable, refused, timed out: serve alone for now
        log.warning(
            "Redis unreachable at start; shipping begins once it answers",
            extra={"fields": {"error": describe(error)}},
        )
        return
    raise StartupRefused(
        f"refusing to start: another primary holds the Redis prefix {prefix!r} "
        f"(key {lease_key(prefix)}, expires in {max(ttl, 0) / 1000:.1f} s unless renewed); "
        "run one primary per prefix, or give this one its own --redis-prefix"
    )


def describe(error: BaseException) -> str:
    """One line for a Redis failure (coredis raises some inside exception groups)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}"


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
