"""`python -m bench <scenario>`: self-contained benchmarks of the chat engine.

Each scenario starts its own server on 127.0.0.1 (a free port, a temporary data dir),
drives it from separate load-generator processes, stops it, and writes JSON + PNG, with
the command that produced them, to a results folder outside the repository (--out).
With --url (and --admin-token), http, fanout, storm and conns measure a running
deployment instead. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import (
    common,
    compare_scenario,
    conns_scenario,
    deployment,
    fanout_scenario,
    http_scenario,
    recovery_scenario,
    storm_scenario,
    summary,
)
from bench.server import BenchError

# This module only dispatches: each scenario module owns its options (add_options and,
# where options depend on each other, check_options), its run, its plot and its table.
SCENARIOS: dict[str, ModuleType] = {
    "http": http_scenario,
    "fanout": fanout_scenario,
    "compare": compare_scenario,
    "storm": storm_scenario,
    "conns": conns_scenario,
    "recovery": recovery_scenario,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument(
        "--out",
        type=Path,
        default=common.default_results(),
        help="directory for the JSON and PNG (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="scenario", required=True)
    parsers = {}
    for name, module in [*SCENARIOS.items(), ("summary", summary)]:
        parents = [] if module is summary else [out]
        parsers[name] = commands.add_parser(name, help=module.HELP, parents=parents)
        module.add_options(parsers[name])
        if module is not summary:
            deployment.add_options(parsers[name])
    options = parser.parse_args(argv)
    module = summary if options.scenario == "summary" else SCENARIOS[options.scenario]
    error = parsers[options.scenario].error
    if module is not summary:
        # a scenario that must own its server says why in OWNS_SERVER
        owns = getattr(module, "OWNS_SERVER", None)
        deployment.check_options(options, error, scenario=options.scenario, owns_server=owns)
        options.deployment = None  # filled in by main when --url is given
    check = getattr(module, "check_options", None)
    if check is not None:
        check(options, error)
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse(argv)
    if options.scenario == "summary":
        summary.show(options)
        return
    common.raise_open_file_limit()
    module = SCENARIOS[options.scenario]
    console = Console()
    given = sys.argv[1:] if argv is None else argv
    command = "python -m bench " + shlex.join(deployment.redact(given))
    try:
        if options.url is not None:
            options.deployment = deployment.Deployment.of_options(options)
            options.deployment.verify()
            target = options.deployment.describe()
        else:
            target = {"started_by_bench": True}
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            result = module.run(options, progress)
    except BenchError as error:
        print(f"python -m bench {options.scenario}: {error}", file=sys.stderr)
        sys.exit(1)
    report = {
        "scenario": options.scenario,
        "command": command,
        # what was measured: servers the bench started, or the deployment at --url
        "target": target,
        "machine": common.machine(),
        # server settings given through the environment (tokens left out)
        "server_env": {
            name: value
            for name, value in sorted(os.environ.items())
            if name.startswith("CHAT_ENGINE_") and "TOKEN" not in name
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": common.code_revision(),
        "result": result,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    stem = options.out / f"{options.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    module.plot(report, str(stem.with_suffix(".png")))
    console.print(module.table(result, command))
    if not target["started_by_bench"]:
        console.print(deployment.summary_line(target), markup=False)
    console.print(f"written: {stem}.json, {stem}.png")


if __name__ == "__main__":
    main()
