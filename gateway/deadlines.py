"""Connection timeouts without a timed cancel scope per wait.

A trio cancel scope with a deadline is not free to enter and leave, and an HTTP
request paid for two (the front door's peek, then the wait for its head): a share of
what the built-in server spends on a whole request too large to keep (figures in
docs/benchmarks.md, "Figures behind choices in the code"). Instead each connection runs in
one cancel scope, opened when it is accepted, and a wait records its deadline in a
dict; one task checks the dict every ``resolution`` seconds and cancels the scopes
whose deadline passed. A timeout therefore fires up to ``resolution`` late, which is
noise next to timeouts of seconds.
"""

from __future__ import annotations

import trio

RESOLUTION = 0.25  # seconds


class Deadlines:
    def __init__(self, resolution: float = RESOLUTION) -> None:
        self.resolution = resolution
        self._due: dict[trio.CancelScope, float] = {}

    def set(self, scope: trio.CancelScope, seconds: float) -> None:
        """Cancel ``scope`` once ``seconds`` have passed, unless cleared or set again."""
        self._due[scope] = trio.current_time() + seconds

    def clear(self, scope: trio.CancelScope) -> None:
        self._due.pop(scope, None)

    def __len__(self) -> int:
        return len(self._due)

    async def run(self) -> None:
        while True:
            await trio.sleep(self.resolution)
            now = trio.current_time()
            expired = [scope for scope, due in self._due.items() if due <= now]
            for scope in expired:
                del self._due[scope]
                scope.cancel()
