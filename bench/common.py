"""What every scenario's command line shares: where results go, the argument types that
refuse a size instead of clamping it, the ladder options of fanout and compare, the
tables' one style, and the record written beside each result (machine, commit)."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
# The runs docs/benchmarks.md cites, committed; `summary --results bench/results` reads them.
COMMITTED_RESULTS = ROOT / "bench" / "results"


def default_results() -> Path:
    """Where a run writes its JSON and PNG and where `summary` looks, unless told: a cache
    folder outside the repository, so a run leaves the checkout clean; a run worth citing
    is copied into bench/results/ by hand, with the docs that cite it."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "chat-engine-bench"


def bounded(kind: type, low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` in ``[low, high]``, else a clear error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, not {text}")
        return value

    return parse


def list_of(item: Callable[[str], Any], most: int) -> Callable[[str], list[Any]]:
    """An argparse type: 1 to ``most`` comma-separated values, each parsed by ``item``."""

    def parse(text: str) -> list[Any]:
        parts = text.split(",")
        if len(parts) > most:
            raise argparse.ArgumentTypeError(f"at most {most} values, not {len(parts)}")
        return [item(part.strip()) for part in parts]

    return parse


RATE = bounded(float, 0.1, 100_000.0)
GENERATORS = bounded(int, 1, 8)

Error = Callable[[str], Any]  # a subparser's ``error``: prints the usage line, exits 2


def add_ladder_options(
    parser: argparse.ArgumentParser,
    *,
    ladder: tuple[float, ...],
    seconds: float,
    max_rate: float,
    sessions: list[int],
    sessions_help: str,
) -> None:
    """The options of a rising ladder of message rates over S subscribers (fanout and
    compare run the same ladder, against different servers)."""
    parser.add_argument(
        "--sessions",
        type=list_of(bounded(int, 1, 10_000), 4),
        default=sessions,
        help=sessions_help,
    )
    parser.add_argument(
        "--generators", type=GENERATORS, default=1, help="subscriber processes (1-8)"
    )
    parser.add_argument(
        "--seconds",
        type=bounded(float, 0.5, 60),
        default=seconds,
        help="per ladder step (0.5-60)",
    )
    parser.add_argument(
        "--ladder",
        type=list_of(RATE, 20),
        default=list(ladder),
        help="comma-separated msg/s (up to 20 rates)",
    )
    parser.add_argument(
        "--max-rate", type=RATE, default=max_rate, help="skip ladder rates above it"
    )
    parser.add_argument(
        "--session-queue",
        type=bounded(int, 1, 1_000_000),
        default=None,
        help=f"the --session-queue of the servers it starts (default {SESSION_QUEUE}; "
        "not with --url)",
    )


SESSION_QUEUE = 5000


def check_ladder(options: argparse.Namespace, error: Error) -> None:
    if not any(rate <= options.max_rate for rate in options.ladder):
        error("every --ladder rate is above --max-rate")
    if options.session_queue is not None and options.url is not None:
        error("--session-queue sets a server the bench starts; not with --url")
    if options.session_queue is None:
        options.session_queue = SESSION_QUEUE


def table(title: str, columns: tuple[str, ...], *, left: int = 0) -> Table:
    """The tables' one style: no vertical rules and one space between columns, so that
    they fit an 80-column terminal or CI log; the first ``left`` columns are names,
    left-aligned."""
    result = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    for index, column in enumerate(columns):
        result.add_column(column, justify="left" if index < left else "right")
    return result


def figure(value: float | None, spec: str) -> str:
    """A table cell: the number, or "–" where the figure was unavailable (a deployment
    whose process metrics could not be read)."""
    return "–" if value is None else format(value, spec)


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def raise_open_file_limit() -> None:
    """Thousands of sessions need thousands of descriptors (inherited by the server)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# what the figures depend on (docs and earlier results do not count as changes)
CODE_PATHS = ("engine", "gateway", "persistence", "bench", ":!bench/results", "pyproject.toml")


def code_revision() -> dict[str, object]:
    """The commit the figures were measured on, and whether its code had changes on top
    (so a result is traceable to its code); empty outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit, "uncommitted_changes": bool(changes)}
