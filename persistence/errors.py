"""The one way the disk layer says "this process must not start"."""

from __future__ import annotations


class StartupRefused(Exception):
    """Start-up cannot go on without an operator: the data directory is held by another
    process, unusable, or holds damage that recovery must not paper over. The message is
    one line meant for a person; the command line prints it and exits with status 2."""


def refusal_in(error: BaseException) -> StartupRefused | None:
    """The ``StartupRefused`` inside ``error``, which trio may have wrapped in exception
    groups on its way out of nurseries."""
    if isinstance(error, StartupRefused):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = refusal_in(inner)
            if found is not None:
                return found
    return None
