"""The engine's commit loop against a log stand-in: the log only appends and reports
durability; the loop applies, in log order, and answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from engine import errors
from engine.actors.commit import CommitLoop


class FakeLog:
    def __init__(self) -> None:
        self.next_lsn = 1
        self.batches: list[list[Any]] = []
        self.failing = False
        self.release = trio.Event()

    async def append(self, records: Sequence[Sequence[Any]]) -> int:
        await self.release.wait()
        if self.failing:
            raise OSError("injected")
        self.batches.append([list(facts) for facts in records])
        first, self.next_lsn = self.next_lsn, self.next_lsn + len(records)
        return first


async def test_records_queued_meanwhile_share_a_batch_and_apply_in_log_order() -> None:
    log = FakeLog()
    applied: list[tuple[int, list[Any]]] = []

    def apply(lsn: int, facts: Sequence[Any]) -> str:
        applied.append((lsn, list(facts)))
        return f"applied {lsn}"

    loop = CommitLoop(log, apply)
    answers: dict[str, str] = {}

    async def commit(name: str) -> None:
        answers[name] = await loop.commit([name])

    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        nursery.start_soon(commit, "a")
        await trio.testing.wait_all_tasks_blocked()  # "a" is being written
        for name in ("b", "c", "d"):
            nursery.start_soon(commit, name)
        await trio.testing.wait_all_tasks_blocked()
        assert applied == []  # nothing is applied before the log reports it durable
        log.release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [len(batch) for batch in log.batches] == [1, 3]
    assert [lsn for lsn, _ in applied] == [1, 2, 3, 4]
    order = [facts[0] for _, facts in applied]
    assert answers == {name: f"applied {lsn}" for lsn, name in enumerate(order, 1)}


async def test_a_batch_the_log_could_not_write_is_refused_and_never_applied() -> None:
    log = FakeLog()
    log.failing = True
    log.release.set()
    applied: list[int] = []
    loop = CommitLoop(log, lambda lsn, facts: applied.append(lsn))
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        with pytest.raises(errors.Unavailable):
            await loop.commit(["lost"])
        log.failing = False
        await loop.commit(["kept"])
        nursery.cancel_scope.cancel()
    assert applied == [1]
