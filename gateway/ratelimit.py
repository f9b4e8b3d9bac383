"""A token bucket per client address, for open visitor registration (CONTRACT §3).

Memory is bounded: at most ``max_clients`` buckets are kept, the least recently used
being dropped first (a dropped client simply starts with a full bucket again).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        max_clients: int = 10_000,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, client: str) -> float:
        """Take one token; returns 0 when allowed, else the seconds to wait."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(client, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - stamp) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return wait
