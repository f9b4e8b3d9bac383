"""The actor pool under trio's MockClock: order, isolation, retirement, overflow."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from engine import errors
from engine.actors.mailbox import ActorPool


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_work_for_one_key_never_interleaves(autojump_clock: trio.testing.MockClock) -> None:
    trace: list[str] = []
    async with trio.open_nursery() as nursery:
        pool = ActorPool(nursery, capacity=100, idle_timeout=5)

        async def step(name: str) -> str:
            trace.append(f"{name}:start")
            await trio.sleep(1)  # a commit that takes time
            trace.append(f"{name}:end")
            return name

        async def ask(name: str) -> None:
            assert await pool.run("chat", lambda: step(name)) == name

        async with trio.open_nursery() as callers:
            for index in range(10):
                callers.start_soon(ask, f"w{index}")
        nursery.cancel_scope.cancel()
    for position in range(0, 20, 2):
        assert trace[position].split(":")[0] == trace[position + 1].split(":")[0]
        assert trace[position].endswith(":start") and trace[position + 1].endswith(":end")


async def test_different_keys_run_in_parallel(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        pool = ActorPool(nursery, idle_timeout=5)
        start = trio.current_time()
        async with trio.open_nursery() as callers:
            for key in range(5):
                callers.start_soon(pool.run, key, lambda: trio.sleep(1))
        assert trio.current_time() - start == pytest.approx(1)
        nursery.cancel_scope.cancel()


async def test_idle_actors_retire_and_come_back(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        pool = ActorPool(nursery, idle_timeout=30)

        async def nothing() -> int:
            return 1

        await pool.run("a", nothing)
        await pool.run("b", nothing)
        assert pool.live_actors == 2
        await trio.sleep(31)
        assert pool.live_actors == 0
        assert await pool.run("a", nothing) == 1  # a fresh actor serves it
        assert pool.live_actors == 1
        nursery.cancel_scope.cancel()


async def test_a_caller_that_gives_up_does_not_abort_the_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    finished = trio.Event()
    async with trio.open_nursery() as nursery:
        pool = ActorPool(nursery, idle_timeout=30)

        async def slow_commit() -> None:
            await trio.sleep(5)
            finished.set()

        with trio.move_on_after(1):
            await pool.run("chat", slow_commit)
        assert not finished.is_set()
        await finished.wait()  # the actor completed it regardless
        nursery.cancel_scope.cancel()


async def test_errors_reach_the_caller_and_the_actor_survives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pool = ActorPool(nursery, idle_timeout=30)

        async def refuse() -> None:
            raise errors.ChatEnded("ended")

        async def fine() -> str:
            return "ok"

        with pytest.raises(errors.ChatEnded):
            await pool.run("chat", refuse)
        assert await pool.run("chat", fine) == "ok"
        nursery.cancel_scope.cancel()


async def test_full_mailbox_gives_unavailable_after_the_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        pool = ActorPool(nursery, capacity=1, idle_timeout=100, send_timeout=2)
        release = trio.Event()
        for _ in range(2):  # one running, one waiting in the mailbox
            nursery.start_soon(pool.run, "chat", release.wait)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(errors.Unavailable):
            await pool.run("chat", release.wait)
        release.set()
        nursery.cancel_scope.cancel()


async def test_an_actor_with_calls_in_hand_or_waiting_is_never_retired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Retirement is a sweep every ``idle_timeout / 2``; it must skip an actor that is
    busy, that holds a queued call, or that a sender waits on for room — else a fresh
    actor would run work for the same key alongside it."""
    trace: list[str] = []
    async with trio.open_nursery() as nursery:
        pool = ActorPool(nursery, capacity=1, idle_timeout=1, send_timeout=60)

        async def step(name: str) -> None:
            trace.append(f"{name}:start")
            await trio.sleep(5)  # far longer than the idle timeout
            trace.append(f"{name}:end")

        async with trio.open_nursery() as callers:
            for index in range(3):  # one running, one queued, one waiting to send
                callers.start_soon(pool.run, "chat", lambda name=f"w{index}": step(name))
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(3)
            assert pool.live_actors == 1
        assert trace == [f"w{i}:{edge}" for i in range(3) for edge in ("start", "end")]
        await trio.sleep(2)  # now idle for longer than the timeout, and swept
        assert pool.live_actors == 0
        nursery.cancel_scope.cancel()
