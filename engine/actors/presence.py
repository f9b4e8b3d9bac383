"""The presence sweeper: removes the presences of users who are no longer reachable.

The rule (who is reachable, whose presences expire) is ``engine.reachability``; this
actor feeds it trio's clock, so tests drive it with ``MockClock``, and sweeps.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from engine import errors
from engine.reachability import ReachabilityLedger, sweep_interval

if TYPE_CHECKING:
    from engine.actors.supervisor import Engine

log = logging.getLogger("chat_engine.presence")


class Reachability:
    def __init__(self, engine: Engine, timeout: float) -> None:
        self._engine = engine
        self.timeout = timeout
        self.ledger = ReachabilityLedger(timeout=timeout, started_at=trio.current_time())

    def touch(self, user_id: str) -> None:
        """A request with the user's own token, or one of its presences was created."""
        self.ledger.touch(user_id, trio.current_time())

    def session_opened(self, user_id: str) -> None:
        self.ledger.session_opened(user_id)

    def session_closed(self, user_id: str) -> None:
        self.ledger.session_closed(user_id, trio.current_time())

    def reported(self, ages: dict[str, float]) -> None:
        """Another node reports these users seen there, each so many seconds ago."""
        self.ledger.reported(ages, trio.current_time())

    def reachable_users(self) -> list[str]:
        return self.ledger.reachable_users(trio.current_time())

    def reachable_ages(self) -> dict[str, float]:
        return self.ledger.reachable_ages(trio.current_time())

    def is_reachable(self, user_id: str, now: float) -> bool:
        return self.ledger.is_reachable(user_id, now)

    def expired_users(self, now: float) -> list[str]:
        current = self._engine.state.user_current_chats
        return self.ledger.expired((user_id for user_id, chats in current.items() if chats), now)

    async def sweep_once(self) -> int:
        """Remove every presence of every unreachable user; returns how many."""
        removed = 0
        engine = self._engine
        self.ledger.forget(trio.current_time())
        for user_id in self.expired_users(trio.current_time()):
            for chat in list(engine.state.user_current_chats[user_id].values()):
                try:
                    await engine.chats.leave(chat, user_id, expiring=True)
                    removed += 1
                except errors.NotFound:
                    pass  # it left (or came back) meanwhile
        if removed:
            log.info("presences expired", extra={"fields": {"count": removed}})
        return removed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        interval = sweep_interval(self.timeout)
        task_status.started()
        while True:
            await trio.sleep(interval)
            await self.sweep_once()
