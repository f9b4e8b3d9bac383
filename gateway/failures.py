"""What the edge does with an unexpected error in one connection: log it, count it,
and let only that connection go.

Every HTTP connection and every WebSocket session runs behind this boundary: each
connection is its own failure domain (docs/edge.md). ``/metrics`` reads the counts at scrape
time as ``chat_engine_connection_errors_total{kind=...}``.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("chat_engine.connection")

#: unexpected errors by kind of connection ("http", "ws", ...), since the start
connection_errors: Counter[str] = Counter()


def connection_failed(
    kind: str, peer: object, request_line: str | None, error: BaseException
) -> None:
    """Log one JSON line (with the traceback) naming the connection, and count it."""
    connection_errors[kind] += 1
    log.error(
        "connection error",
        exc_info=(type(error), error, error.__traceback__),
        extra={
            "fields": {
                "kind": kind,
                "peer": str(peer),
                "request": request_line,
                "error": f"{type(error).__name__}: {error}"[:500],
            }
        },
    )
