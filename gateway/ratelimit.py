"""Token buckets: writes per user and visitor, open visitor registration per address.

A bucket holds up to ``burst`` tokens and refills at ``rate`` a second; a request takes
one, and with none left it is refused with the seconds until one is back
(``Retry-After``, whole seconds, at least 1).

Memory is bounded two ways. A bucket that has refilled completely is the same as no
bucket, so it is forgotten: the buckets are kept in least-recently-used order, and each
call drops those at the old end that are full again (each key is dropped at most once
per time it was added, so this costs O(1) a call on average). And at most ``max_keys``
buckets are kept: past that the least recently used one is dropped, which gives its key
a full bucket again — under a flood of more distinct keys than that, the limit gets
looser for the quietest keys, never stricter for anyone.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable

from engine import errors

EPSILON = 1e-9


class Throttled(errors.RateLimited):  # type: ignore[valid-type,misc]
    """429 ``rate_limited``; ``gateway.web.error_response`` adds ``Retry-After``."""

    def __init__(self, detail: str, wait: float) -> None:
        super().__init__(detail)
        self.retry_after = max(1, math.ceil(wait))


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        max_keys: int = 10_000,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens left, when they were counted); oldest use first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Take one token; returns 0 when allowed, else the seconds to wait."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) * self._rate)
        wait = 0.0
        if tokens >= 1.0 - EPSILON:  # a retry exactly on time is not refused by rounding
            tokens = max(0.0, tokens - 1.0)
        else:
            wait = (1.0 - tokens) / self._rate
        self._forget_full(now)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait

    def _forget_full(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets))
            tokens, stamp = buckets[oldest]
            if tokens + (now - stamp) * self._rate < self._burst:
                return
            del buckets[oldest]


def address_key(address: str | None) -> str:
    """The bucket of a client address: the address itself for IPv4, its /64 for IPv6
    (one host commonly holds a whole /64, so single IPv6 addresses are free to vary)."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)
