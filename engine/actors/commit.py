"""The commit loop: log append -> durable -> apply -> fan out -> answer.

Actors ``commit`` one mutation's facts each and wait. One task (``run``) takes every
record queued since its last pass, hands them to the log as one batch (one write and,
with ``fsync="always"``, one fsync: concurrent mutations share the cost), and once the
log reports them durable applies them itself, in log order, through the engine's apply
path, which also fans their events out. Only then is each waiting actor answered. The
state in memory never runs ahead of the log, and replaying the log applies the same
records in the same order through the same code.

A batch the log could not write fails each of its records with ``Unavailable``:
nothing of it is applied, nothing acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from engine import errors
from engine.facts import Fact

log = logging.getLogger("chat_engine.engine")


class Log(Protocol):
    async def append(self, records: Sequence[Sequence[Fact]]) -> int:
        """Make ``records`` durable, in order; return the log position of the first.
        Raises ``OSError`` when they could not be written (none of them counts)."""
        ...


class _Pending:
    __slots__ = ("facts", "done", "result", "error")

    def __init__(self, facts: Sequence[Fact]) -> None:
        self.facts = facts
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class CommitLoop:
    def __init__(self, log: Log, apply: Callable[[int, Sequence[Fact]], Any]) -> None:
        self._log = log
        self._apply = apply
        # Bounded without a cap of its own: only actors commit, and an actor has at most
        # one record in flight, so this holds at most one record per busy actor (itself
        # bounded by the requests in flight; each actor's mailbox is bounded).
        self._pending: list[_Pending] = []
        self._wakeup = trio.Event()

    async def commit(self, facts: Sequence[Fact]) -> Any:
        """Queue a record; return what applying it returned once it is durable and
        applied. Raises ``Unavailable`` if it could not be written."""
        pending = _Pending(facts)
        self._pending.append(pending)
        self._wakeup.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def flush(self) -> None:
        """Wait until everything queued so far is durable and applied."""
        while self._pending:
            await self._pending[-1].done.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            while not self._pending:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            await self._commit_batch()

    async def _commit_batch(self) -> None:
        batch, self._pending = self._pending, []
        try:
            first_lsn = await self._log.append([item.facts for item in batch])
        except OSError:
            for item in batch:
                item.error = errors.Unavailable("The change could not be stored; try again.")
                item.done.set()
            return
        for lsn, item in enumerate(batch, first_lsn):  # in log order: replay order
            try:
                item.result = self._apply(lsn, item.facts)
            except Exception as error:  # a bug; keep the others going
                log.exception("applying record %s failed", lsn)
                item.error = error
            item.done.set()
