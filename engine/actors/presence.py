"""Presence expiry (CONTRACT §5): who is reachable, and the sweeper that removes the
presences of users who are not.

A user is reachable while it has an open WebSocket session authenticated with its own
token, and for ``presence_timeout`` seconds after the latest of: its last request with
its own token, the close of its last such session, the creation of one of its
presences, the server's start. Times are trio's clock, so tests drive them with
``MockClock``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from engine import errors

if TYPE_CHECKING:
    from engine.actors.supervisor import Engine

log = logging.getLogger("chat_engine.presence")


class Reachability:
    def __init__(self, engine: Engine, timeout: float) -> None:
        self._engine = engine
        self.timeout = timeout
        self._started_at = trio.current_time()
        self._last_seen: dict[str, float] = {}
        self._sessions: dict[str, int] = {}

    def touch(self, user_id: str) -> None:
        """A request with the user's own token, or one of its presences was created."""
        self._last_seen[user_id] = trio.current_time()

    def session_opened(self, user_id: str) -> None:
        self._sessions[user_id] = self._sessions.get(user_id, 0) + 1

    def session_closed(self, user_id: str) -> None:
        left = self._sessions.get(user_id, 0) - 1
        if left > 0:
            self._sessions[user_id] = left
        else:
            self._sessions.pop(user_id, None)
        self.touch(user_id)

    def is_reachable(self, user_id: str, now: float) -> bool:
        if self._sessions.get(user_id):
            return True
        last = self._last_seen.get(user_id, self._started_at)
        return now - last < self.timeout

    def expired_users(self, now: float) -> list[str]:
        current = self._engine.state.user_current_chats
        return [
            user_id
            for user_id, chats in current.items()
            if chats and not self.is_reachable(user_id, now)
        ]

    async def sweep_once(self) -> int:
        """Remove every presence of every unreachable user; returns how many."""
        removed = 0
        engine = self._engine
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
        interval = max(0.05, min(1.0, self.timeout / 4))
        task_status.started()
        while True:
            await trio.sleep(interval)
            await self.sweep_once()
