"""Presence expiry: which users are reachable, and whose presences expire.

A user is reachable while it has an open WebSocket session authenticated with its own
token, and for ``timeout`` seconds after the latest of: its last request with its own
token, the close of its last such session, the creation of one of its presences, the
server's start. Org and admin tokens (and their sessions) never make a user reachable:
``counts_for_reachability`` says which callers the ledger hears of. A presence of an
unreachable user is removed as a DELETE would remove it.

In a cluster a user may be reachable through another node: replicas report the users
reachable there (``reachable_ages``: each with how long ago it was last seen there, 0
for an open session) to the primary at least every quarter of the timeout, and a report
counts as a sign of life of each user it names at the time it was seen (``reported``),
so the primary expires a presence once no node saw its user within the timeout, not a
timeout after the last report. Users not seen within the timeout are forgotten
(``forget``), so the ledger holds only users seen lately.

Every time is passed in (the runtime uses trio's clock), so the rule is tested without
a clock at all; ``engine.actors.presence`` only sweeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.state import PRINCIPAL_USER


def counts_for_reachability(principal_kind: str) -> bool:
    """Only a user's own token shows that the user is there: an org or the admin acting
    on a user's behalf, or holding a session, says nothing about it."""
    return principal_kind == PRINCIPAL_USER


def sweep_interval(timeout: float) -> float:
    """How often expired presences are looked for: often enough that none outlives its
    timeout by more than a quarter of it (and never by more than a second), seldom
    enough that a tiny timeout does not keep the engine busy sweeping."""
    return max(0.05, min(1.0, timeout / 4))


def report_interval(timeout: float) -> float:
    """How often a replica reports its reachable users: a fifth of the timeout, so a
    report late by a little still arrives within the quarter the primary counts on."""
    return max(0.05, timeout / 5)


class ReachabilityLedger:
    """What the rule needs to remember per user: open sessions and when it last
    showed a sign of life."""

    def __init__(self, *, timeout: float, started_at: float) -> None:
        self.timeout = timeout
        # a user never seen since the start is as fresh as the start: a restart gives
        # every restored presence a whole timeout to come back
        self.started_at = started_at
        self._last_seen: dict[str, float] = {}
        self._sessions: dict[str, int] = {}

    def touch(self, user_id: str, at: float) -> None:
        """A request with the user's own token, or one of its presences was created."""
        self._last_seen[user_id] = at

    def session_opened(self, user_id: str) -> None:
        self._sessions[user_id] = self._sessions.get(user_id, 0) + 1

    def session_closed(self, user_id: str, at: float) -> None:
        left = self._sessions.get(user_id, 0) - 1
        if left > 0:
            self._sessions[user_id] = left
        else:
            self._sessions.pop(user_id, None)
        self.touch(user_id, at)

    def is_reachable(self, user_id: str, now: float) -> bool:
        if self._sessions.get(user_id):
            return True
        last = self._last_seen.get(user_id, self.started_at)
        return now - last < self.timeout

    def reported(self, ages: Mapping[str, float] | Iterable[str], at: float) -> None:
        """Another node reports these users seen there ``age`` seconds before ``at``
        (a plain list: seen at ``at``); a user's newest sign of life counts."""
        pairs = ages.items() if isinstance(ages, Mapping) else ((user, 0.0) for user in ages)
        for user_id, age in pairs:
            seen = at - min(max(age, 0.0), self.timeout)
            if seen > self._last_seen.get(user_id, seen - 1):
                self._last_seen[user_id] = seen

    def reachable_ages(self, now: float) -> dict[str, float]:
        """Every user reachable through this node at ``now``, with the seconds since it
        was last seen here (0: an open session); what a replica reports."""
        found = {
            user_id: now - last
            for user_id, last in self._last_seen.items()
            if now - last < self.timeout
        }
        found.update((user_id, 0.0) for user_id in self._sessions)
        return found

    def reachable_users(self, now: float) -> list[str]:
        """Every user reachable through this node at ``now``."""
        return sorted(self.reachable_ages(now))

    def forget(self, now: float) -> int:
        """Drop the users last seen a timeout ago or more with no open session (they
        are unreachable either way); returns how many."""
        stale = [
            user_id
            for user_id, last in self._last_seen.items()
            if now - last >= self.timeout and user_id not in self._sessions
        ]
        for user_id in stale:
            del self._last_seen[user_id]
        return len(stale)

    def expired(self, present_users: Iterable[str], now: float) -> list[str]:
        """Those of ``present_users`` (users with at least one presence) whose
        presences expire at ``now``."""
        return [user_id for user_id in present_users if not self.is_reachable(user_id, now)]
