"""`python -m bench <scenario>`: self-contained benchmarks of the chat engine.

Each scenario starts its own server on 127.0.0.1 (a free port, a temporary data dir),
drives it from separate load-generator processes, stops it, and writes JSON + PNG under
``bench/results/`` with the command that produced them.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench import http_scenario

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    http = scenarios.add_parser("http", help="message POST and history GET vs a /healthz baseline")
    http.add_argument("--seconds", type=float, default=8.0, help="per phase (max 120)")
    http.add_argument("--connections", type=int, default=16, help="per generator process (max 500)")
    http.add_argument("--generators", type=int, default=1, help="load-generator processes (max 8)")
    http.add_argument("--chats", type=int, default=50, help="chats to spread the load over")
    http.add_argument("--in-memory", action="store_true", default=True)
    options = parser.parse_args(argv)
    options.seconds = min(options.seconds, 120.0)
    options.connections = min(options.connections, 500)
    options.generators = min(options.generators, 8)

    console = Console()
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        result = http_scenario.run(options, progress)
    report = {
        "scenario": options.scenario,
        "command": command,
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "result": result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{options.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    http_scenario.plot(report, str(stem.with_suffix(".png")))

    table = Table(title=command)
    for column in (
        "phase",
        "req/s",
        "× healthz",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "server CPU ms/req",
        "generator CPU s",
    ):
        table.add_column(column, justify="right")
    for name, phase in result["phases"].items():
        if not isinstance(phase, dict):
            continue
        table.add_row(
            name,
            f"{phase['throughput_rps']:.0f}",
            f"{phase['ratio_to_healthz']:.2f}",
            f"{phase['p50_ms']:.1f}",
            f"{phase['p95_ms']:.1f}",
            f"{phase['p99_ms']:.1f}",
            str(phase["errors"]),
            f"{phase['server_cpu_ms_per_request']:.2f}",
            f"{phase['generator_cpu_s']:.1f}",
        )
    console.print(table)
    console.print(f"written: {stem}.json, {stem}.png")


if __name__ == "__main__":
    main()
