"""What the primary and its replicas share in Redis, and how they name it.

``{prefix}:log`` is a stream with one entry per log record, its ID ``{lsn}-0`` (so
Redis itself refuses a position already there, or an older one), its fields the
epoch (``e``), the record as the log holds it (``r``: msgpack ``[lsn, [facts]]``)
and the primary's wall clock when it shipped it (``t``, milliseconds).
``{prefix}:primary`` is the primary's lease: its value is the epoch of the primary's
data (a restart of the same primary takes it back at once), renewed every few seconds
and gone ``LEASE_MS`` after its holder died.
"""

from __future__ import annotations

import logging
import time

import coredis
import trio

from persistence.errors import StartupRefused

log = logging.getLogger("chat_engine.cluster")

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
