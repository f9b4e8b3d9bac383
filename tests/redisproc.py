"""A real ``redis-server`` for the cluster tests: ``bench.redisproc``'s (from PATH, on a
free port of 127.0.0.1, in its own directory, stopped afterwards), the same one bench
runs start.

Without ``redis-server`` on PATH the tests that need one are skipped with the reason
shown, unless ``CHAT_ENGINE_REQUIRE_REDIS=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil

import pytest

from bench import redisproc

REQUIRE_ENV = "CHAT_ENGINE_REQUIRE_REDIS"


def redis_binary() -> str:
    """The path of ``redis-server``; skips (or fails, when required) without one."""
    found = shutil.which("redis-server")
    if found is None:
        reason = f"{redisproc.MISSING}; the cluster tests need a real one"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return found


class RedisProcess(redisproc.RedisProcess):
    """``bench.redisproc.RedisProcess`` that skips the test without ``redis-server``."""

    def binary(self) -> str:
        return redis_binary()
