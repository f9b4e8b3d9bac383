"""The open-files limit the connection cap depends on.

Every connection is a file descriptor, and so are a log segment, a snapshot and the
listener. With the soft ``RLIMIT_NOFILE`` left at a distribution's default (often
1,024) a cap above it only moves the failure: accepts fail with EMFILE and so does
opening the next log segment, which stops the server. So ``serve`` first raises the
soft limit to the hard one (what an unprivileged process may do, and what servers such
as nginx and hypercorn's users commonly do), then refuses a ``--max-connections`` that
the raised limit still cannot hold, in one line, before anything is opened.
"""

from __future__ import annotations

import resource

from gateway.frontdoor import FD_RESERVE

# The kernel refuses a soft limit above fs.nr_open (1,048,576 by default) even when the
# hard limit is "unlimited".
CEILING = 1 << 20


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft limit on open files toward the hard one; returns (before, after).
    A refusal leaves it as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def most_connections() -> int:
    """The largest cap the current soft limit holds with ``FD_RESERVE`` kept free."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = CEILING
    return soft - FD_RESERVE


def cap_refusal(max_connections: int | None) -> str | None:
    """Why ``max_connections`` cannot be served (one line), or None when it can."""
    room = most_connections()
    if max_connections is None or max_connections <= room:
        return None
    soft = room + FD_RESERVE
    return (
        f"--max-connections {max_connections} needs more open files than the limit allows "
        f"(soft limit {soft}, less {FD_RESERVE} kept for the log and snapshots: at most "
        f"{max(room, 0)}); raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower it"
    )
