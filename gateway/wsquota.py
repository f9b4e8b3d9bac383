"""How many WebSocket sessions one token, one client address, and all clients together
may hold open at once.

Without these, one anonymous visitor (one ``POST /api/v5/client/visitors``) could open
sessions up to the connection cap and, by answering pings, hold every slot for as long
as it liked: new clients, ``/healthz`` included, would be refused. So a session counts
against its token and its client address from the moment its upgrade is admitted until
it ends, and WebSocket sessions together may take at most the connection cap less a
reserve kept for HTTP. As with the write rate limit, the per-token and per-address
limits are for the tokens anyone can hold (visitors') or a person uses (users'); the
admin and org tokens are secrets held by the operator's own services, which may need
many sessions from one host: the gateway counts their sessions in the total only
(token and address None). The checks are pure bookkeeping (no trio, no I/O): the gateway
asks ``refusal`` and, if it is None, calls ``take`` before its next ``await``, and
``give_back`` when the session ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from engine import errors

# The share of the connection cap that WebSocket sessions cannot take, so that HTTP
# (the API, /healthz, a visitor's registration) is still answered when sessions abound.
HTTP_RESERVE_FRACTION = 0.1


def most_sessions(max_connections: int) -> int:
    """The WebSocket sessions a connection cap allows: the cap less a tenth kept for
    HTTP (none kept under 10, so a tiny cap still serves a session)."""
    return max_connections - int(max_connections * HTTP_RESERVE_FRACTION)


@dataclass(slots=True)
class SessionQuota:
    per_token: int | None = 20  # None: no limit
    per_address: int | None = 100
    total: int | None = None  # most_sessions(cap); None: no limit of its own
    _by_token: Counter[str] = field(default_factory=Counter)
    _by_address: Counter[str] = field(default_factory=Counter)
    _open: int = 0

    def refusal(self, token_hash: str | None, address: str | None) -> errors.EngineError | None:
        """Why one more session for this token from this address is refused, or None."""
        if (
            token_hash is not None
            and self.per_token is not None
            and self._by_token[token_hash] >= self.per_token
        ):
            return errors.RateLimited(
                f"Too many WebSocket sessions for this token ({self.per_token} open); "
                "close one first."
            )
        if (
            address is not None
            and self.per_address is not None
            and self._by_address[address] >= self.per_address
        ):
            return errors.RateLimited(
                f"Too many WebSocket sessions from this address ({self.per_address} open); "
                "close one first."
            )
        if self.total is not None and self._open >= self.total:
            return errors.Unavailable("Too many WebSocket sessions; try again later.")
        return None

    def take(self, token_hash: str | None, address: str | None) -> None:
        if token_hash is not None:
            self._by_token[token_hash] += 1
        if address is not None:
            self._by_address[address] += 1
        self._open += 1

    def give_back(self, token_hash: str | None, address: str | None) -> None:
        """Undo one ``take``; a key that reaches zero is forgotten, so the counters
        hold only tokens and addresses with a session open."""
        self._open -= 1
        for counter, key in ((self._by_token, token_hash), (self._by_address, address)):
            if key is None:
                continue
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    @property
    def open(self) -> int:
        return self._open

    def held(self) -> tuple[int, int]:
        """(tokens, addresses) with a session open: what the counters hold."""
        return len(self._by_token), len(self._by_address)
