"""Actors: one task per key, a bounded mailbox, commands run strictly one at a time.

``ActorPool.run(key, work)`` sends ``work`` (an async function) to the actor owning
``key`` and waits for its result. The actor runs each piece of work to completion in its
own task, so a caller that gives up (a client that disconnects) never leaves a mutation
half done, and two pieces of work for one key never interleave.

Actors start on first use and retire after ``idle_timeout`` seconds without work (at
most half as long again: one sweeper task checks them every ``idle_timeout / 2``), so a
store of 100,000 chats does not keep 100,000 tasks. An actor counts the calls sent to it
and not yet finished (``pending``: raised together with a send that succeeds at once,
before a send that has to wait, and with no checkpoint since the sender looked the actor
up), and the sweeper retires only one with none: never one that holds a call handed
straight to its waiting receive, or a sender waiting for room. A sender that
still holds the retired actor sees its mailbox closed and retries with a fresh one.
An idle actor waits on its mailbox with no timer of its own: a timed cancel scope per
wait was a large share of a hand-off to an idle actor (figures in docs/benchmarks.md,
"Figures behind choices in the code"). Overflow policy: a full mailbox makes senders wait (back-pressure on the
request); a sender that cannot deliver within ``send_timeout`` gets ``Unavailable``.
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
    __slots__ = ("key", "send", "receive", "pending", "idle_since")

    def __init__(self, key: Hashable, capacity: int) -> None:
        self.key = key
        self.send, self.receive = trio.open_memory_channel[_Call](capacity)
        self.pending = 0  # calls sent (or being sent) and not finished
        self.idle_since = trio.current_time()


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
        nursery.start_soon(self._retire_idle, name="actors: retire idle")

    @property
    def live_actors(self) -> int:
        return len(self._actors)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        call = _Call(work)
        actor = self._actors.get(key) or self._spawn(key)
        try:
            # The common case, without the cost of a timed cancel scope:
            # there is room in the mailbox, and the actor in the table is alive (one
            # retires only after leaving it, with no checkpoint in between).
            actor.send.send_nowait(call)
            actor.pending += 1
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
                actor.pending += 1  # it may not retire while we wait for room
                try:
                    await actor.send.send(call)
                    break
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    actor.pending -= 1
                    continue  # it retired between our lookup and our send
                except BaseException:  # the send timed out, or the caller gave up
                    actor.pending -= 1
                    raise
        if scope.cancelled_caught:
            raise errors.Unavailable("The engine is overloaded; try again.")

    def _spawn(self, key: Hashable) -> _Actor:
        actor = _Actor(key, self._capacity)
        self._actors[key] = actor
        self._nursery.start_soon(self._serve, actor, name=f"actor:{key}")
        return actor

    async def _retire_idle(self) -> None:
        interval = self._idle_timeout / 2
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for key, actor in list(self._actors.items()):
                if actor.pending == 0 and now - actor.idle_since >= self._idle_timeout:
                    del self._actors[key]
                    actor.send.close()  # its receive ends; late senders retry afresh

    async def _serve(self, actor: _Actor) -> None:
        receive = actor.receive
        while True:
            try:
                # queued work: no checkpoint needed. Work that never checkpoints (a
                # refused join) then runs back to back without yielding, but only for
                # what was queued when the run began: senders are other tasks, and they
                # cannot add to the mailbox (at most ``capacity``) until this one yields.
                call = receive.receive_nowait()
            except trio.WouldBlock:
                try:
                    call = await receive.receive()
                except trio.EndOfChannel:  # retired while idle
                    return
            except trio.EndOfChannel:
                return
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
                actor.pending -= 1
                if not actor.pending:
                    actor.idle_since = trio.current_time()
