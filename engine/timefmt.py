"""Timestamps: integer milliseconds since the epoch inside, the seed's format outside.

The contract's format is UTC ISO 8601 with exactly three fractional digits and no offset
(``2015-02-13T11:31:36.042``). Inputs also accept a trailing ``Z`` or ``+00:00``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INPUT = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{3})(Z|\+00:00)?")


@lru_cache(maxsize=65536)
def _format_seconds(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def format_ms(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return f"{_format_seconds(seconds)}.{millis:03d}"


def format_opt(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)


def parse_ms(text: str) -> int:
    """Parse the contract's input form; raise ``ValueError`` for anything else."""
    match = _INPUT.fullmatch(text)
    if match is None:
        raise ValueError("expected UTC time like 2015-02-13T11:31:36.042")
    moment = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int((moment - _EPOCH).total_seconds()) * 1000 + int(match.group(2))
