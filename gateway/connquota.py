"""How many connections one client address may hold before they become WebSocket
sessions (``--http-connections-per-address``).

Without it, one host could take every slot of ``--max-connections``: a peer that sends a
request slowly holds its slot up to the deadlines of its phases (10 s to show what the
connection is, 30 s for a head, 30 s for a body) and reconnects as soon as it is
closed, so a few hundred such connections from one address refuse everyone else. So the
front door counts each connection against its peer's address from its accept until it
ends or becomes a WebSocket session: an admitted session leaves this count
(``became_session``), since sessions have limits of their own (``gateway/wsquota.py``),
and a service holding many admin sessions from one host must not be refused by this one.
Up to the admission, a ``GET /ws`` connection counts here: a slow handshake holds a slot
like a slow request.

Which address: the TCP peer's. A connection is counted before a byte of it is read, so
the client a proxy's ``X-Forwarded-For`` names is not known yet; a peer in
``--forwarded-allow-ips`` (a proxy, which carries many clients' connections) is therefore
not counted per address, only in ``--max-connections``. The per-address session and
registration limits, which do read the request, count the forwarded client instead.

The bookkeeping is pure (no trio, no I/O). Which slot the running connection holds is a
context variable: set by the front door in the connection's own task, where the HTTP
server and the WebSocket gateway run too, so the gateway can give it back at admission
without every layer in between passing it along.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Literal

from gateway.forwarded import parse_address

if TYPE_CHECKING:  # at run time settings imports this module's users
    from gateway.settings import Network

# The default per-address limit: a tenth of the connection cap, but never below
# MIN_DEFAULT (or the cap, if smaller), so that a small cap does not refuse one client's
# ordinary handful of connections.
DEFAULT_FRACTION = 0.1
MIN_DEFAULT = 256

PerAddress = int | Literal["auto"] | None  # None: no limit


def per_address_limit(setting: PerAddress, max_connections: int) -> int | None:
    """The limit ``setting`` means under a connection cap of ``max_connections``."""
    if setting == "auto":
        return max(int(max_connections * DEFAULT_FRACTION), min(max_connections, MIN_DEFAULT))
    return setting


class Slot:
    """One connection's place in its address's count; given back once."""

    __slots__ = ("_slots", "_key")

    def __init__(self, slots: AddressSlots, key: str) -> None:
        self._slots: AddressSlots | None = slots
        self._key = key

    def release(self) -> None:
        if self._slots is not None:
            self._slots.give_back(self._key)
            self._slots = None


class AddressSlots:
    def __init__(self, limit: int | None, trusted: Sequence[Network] = ()) -> None:
        self.limit = limit
        self.trusted = tuple(trusted)
        self._open: Counter[str] = Counter()

    def key(self, host: str) -> str | None:
        """What a connection from ``host`` counts against: None when it is not counted
        (no limit, or a trusted proxy)."""
        if self.limit is None:
            return None
        if self.trusted:
            address = parse_address(host)
            if address is not None and any(address in network for network in self.trusted):
                return None
        return host

    def full(self, key: str) -> bool:
        return self.limit is not None and self._open[key] >= self.limit

    def take(self, key: str) -> Slot:
        self._open[key] += 1
        return Slot(self, key)

    def give_back(self, key: str) -> None:
        """A key that reaches zero is forgotten: the counter holds only addresses with a
        connection open."""
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def held(self) -> int:
        """Addresses with a counted connection open."""
        return len(self._open)


_current: ContextVar[Slot | None] = ContextVar("chat_engine_connection_slot", default=None)


def hold(slot: Slot | None) -> None:
    """The running task's connection holds ``slot`` (the front door's connection task)."""
    _current.set(slot)


def became_session() -> None:
    """The running task's connection is an admitted WebSocket session: it leaves the
    per-address count of connections (a no-op where nothing is counted)."""
    slot = _current.get()
    if slot is not None:
        _current.set(None)
        slot.release()
