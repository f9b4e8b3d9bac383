"""Actors: one task per key, a bounded mailbox, commands run strictly one at a time.

``ActorPool.run(key, work)`` sends ``work`` (an async function) to the actor owning
``key`` and waits for its result. The actor runs each piece of work to completion in its
own task, so a caller that gives up (a client that disconnects) never leaves a mutation
half done, and two pieces of work for one key never interleave.

Actors start on first use and retire after ``idle_timeout`` seconds without work, so a
store of 100,000 chats does not keep 100,000 tasks. Retiring happens only when the
mailbox is empty and nobody is waiting to send, checked and done without a checkpoint in
between; a sender that still holds the retired actor sees its mailbox closed and retries
with a fresh one. Overflow policy: a full mailbox makes senders wait (back-pressure on
the request); a sender that cannot deliver within ``send_timeout`` gets ``Unavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import outcome
import trio

from engine import errors

T = TypeVar("T")
log = logging.getLogger("chat_engine.actors")


class _Call:
    __slots__ = ("work", "done", "result")

    def __init__(self, work: Callable[[], Awaitable[Any]]) -> None:
        self.work = work
        self.done = trio.Event()
        self.result: outcome.Outcome[Any] | None = None


class _Actor:
    __slots__ = ("key", "send", "receive")

    def __init__(self, key: Hashable, capacity: int) -> None:
        self.key = key
        self.send, self.receive = trio.open_memory_channel[_Call](capacity)


class ActorPool:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        capacity: int = 64,
        idle_timeout: float = 30.0,
        send_timeout: float = 10.0,
    ) -> None:
        self._nursery = nursery
        self._capacity = capacity
        self._idle_timeout = idle_timeout
        self._send_timeout = send_timeout
        self._actors: dict[Hashable, _Actor] = {}

    @property
    def live_actors(self) -> int:
        return len(self._actors)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        call = _Call(work)
        actor = self._actors.get(key) or self._spawn(key)
        try:
            # The common case, without the cost of a timed cancel scope (~7 µs in trio):
            # there is room in the mailbox, and the actor in the table is alive (one
            # retires only after leaving it, with no checkpoint in between).
            actor.send.send_nowait(call)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send_waiting(key, call)
        await call.done.wait()
        assert call.result is not None
        return call.result.unwrap()

    async def _send_waiting(self, key: Hashable, call: _Call) -> None:
        """A full mailbox: wait for room, up to ``send_timeout``."""
        with trio.move_on_after(self._send_timeout) as scope:
            while True:
                actor = self._actors.get(key)
                if actor is None:
                    actor = self._spawn(key)
                try:
                    await actor.send.send(call)
                    break
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    continue  # it retired between our lookup and our send
        if scope.cancelled_caught:
            raise errors.Unavailable("The engine is overloaded; try again.")

    def _spawn(self, key: Hashable) -> _Actor:
        actor = _Actor(key, self._capacity)
        self._actors[key] = actor
        self._nursery.start_soon(self._serve, actor, name=f"actor:{key}")
        return actor

    async def _serve(self, actor: _Actor) -> None:
        receive = actor.receive
        while True:
            call: _Call | None = None
            try:
                # queued work: no timer needed. Work that never checkpoints (a refused
                # join) then runs back to back without yielding, but only for what was
                # queued when the run began: senders are other tasks, and they cannot
                # add to the mailbox (at most ``capacity``) until this one yields.
                call = receive.receive_nowait()
            except trio.WouldBlock:
                with trio.move_on_after(self._idle_timeout):
                    call = await receive.receive()
            if call is None:
                stats = receive.statistics()
                if stats.current_buffer_used == 0 and stats.tasks_waiting_send == 0:
                    if self._actors.get(actor.key) is actor:
                        del self._actors[actor.key]
                    receive.close()
                    return
                continue
            try:
                call.result = outcome.Value(await call.work())
            except errors.EngineError as error:
                call.result = outcome.Error(error)
            except Exception as error:
                log.exception("actor %s failed", actor.key)
                call.result = outcome.Error(error)
            except BaseException:
                # Cancelled at shutdown: the caller hears "unavailable", we stop.
                call.result = outcome.Error(errors.Unavailable("The engine is shutting down."))
                raise
            finally:
                call.done.set()
