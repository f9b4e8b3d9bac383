"""The engine: the state, the actors that write it, and the nursery that owns them.

``Engine.run`` opens the nursery every actor lives in; the engine is usable once
``started`` is set. Reads go straight to ``engine.state`` through its query methods:
they are synchronous (no checkpoint), so under trio's cooperative scheduling a read
always sees a state between two applied facts. Every write goes through an actor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from engine import errors
from engine.actors.chat import ChatActors
from engine.actors.directory import DirectoryActor
from engine.actors.mailbox import ActorPool
from engine.actors.presence import Reachability
from engine.actors.router import ChannelRouter
from engine.chat import ChangeSet
from engine.facts import Fact
from engine.fanout import fan_out
from engine.ids import new_secret
from engine.state import State


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class EngineConfig:
    resume_window: float = 1800.0
    presence_timeout: float = 120.0
    mailbox_capacity: int = 64
    actor_idle_timeout: float = 30.0
    send_timeout: float = 10.0
    history_limit: int = 1000  # events kept per channel
    total_history_limit: int = 500_000  # events kept across channels

    @property
    def resume_window_ms(self) -> int:
        return int(self.resume_window * 1000)


class Engine:
    def __init__(
        self, config: EngineConfig | None = None, *, clock: Callable[[], int] = wall_clock_ms
    ) -> None:
        self.config = config or EngineConfig()
        self.state = State()
        self._clock = clock
        self._last_time = 0
        self._pool: ActorPool | None = None
        self.started = trio.Event()
        self.chats = ChatActors(self)
        self.directory = DirectoryActor(self)
        # The epoch names the life of the channel histories: in memory, this process.
        self.router = ChannelRouter(
            epoch=new_secret()[:16],
            history_limit=self.config.history_limit,
            total_history_limit=self.config.total_history_limit,
        )
        self._reachability: Reachability | None = None

    @property
    def pool(self) -> ActorPool:
        if self._pool is None:
            raise errors.Unavailable("The engine is not running.")
        return self._pool

    def now(self) -> int:
        """Wall-clock milliseconds, never going backwards within the engine."""
        self._last_time = max(self._last_time, self._clock())
        return self._last_time

    @property
    def reachability(self) -> Reachability:
        if self._reachability is None:
            raise errors.Unavailable("The engine is not running.")
        return self._reachability

    async def commit(self, facts: Sequence[Fact]) -> list[ChangeSet]:
        """Make facts durable, then apply them in order, then hand their events to the
        router as one batch. In memory there is nothing to wait for; a write-ahead log
        plugs in before the apply (see docs/architecture.md). Callers are actors, so the
        events of one chat reach the router in commit order."""
        changes = []
        publications = []
        for fact in facts:
            change = self.state.apply(fact)
            if change is not None:
                changes.append(change)
                publications += fan_out(self.state, change)
        await self.router.publish(publications)
        return changes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._pool = ActorPool(
                nursery,
                capacity=self.config.mailbox_capacity,
                idle_timeout=self.config.actor_idle_timeout,
                send_timeout=self.config.send_timeout,
            )
            self._reachability = Reachability(self, self.config.presence_timeout)
            await nursery.start(self.router.run)
            await nursery.start(self._reachability.run)
            self.started.set()
            task_status.started()
