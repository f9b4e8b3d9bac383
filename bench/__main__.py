"""`python -m bench <scenario>`: self-contained benchmarks of the chat engine.

Each scenario starts its own server on 127.0.0.1 (a free port, a temporary data dir),
drives it from separate load-generator processes, stops it, and writes JSON + PNG under
``bench/results/`` with the command that produced them. Every loop is bounded in count
and time.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import (
    compare_scenario,
    conns_scenario,
    fanout_scenario,
    http_scenario,
    recovery_scenario,
    storm_scenario,
    summary,
)
from persistence.store import DEFAULT_SNAPSHOT_RECORDS

RESULTS = Path(__file__).parent / "results"


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


def _table(title: str, columns: tuple[str, ...], *, left: int = 0) -> Table:
    """The summary tables' one style: no vertical rules and one space between columns,
    so that they fit an 80-column terminal or CI log; the first ``left`` columns are
    names, left-aligned."""
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index < left else "right")
    return table


def http_table(result: dict[str, Any], command: str) -> Table:
    table = _table(
        command,
        (
            "storage",
            "phase",
            "req/s",
            "×\nhealthz",
            "p50\nms",
            "p95\nms",
            "p99\nms",
            "errors",
            "server CPU\nms/req",
            "gen\nCPU s",
        ),
        left=2,
    )
    for mode, outcome in result["modes"].items():
        for name, phase in outcome["phases"].items():
            table.add_row(
                mode,
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
    notes = [f"{name} = {value:.2f}" for name, value in result.get("comparisons", {}).items()]
    for mode, outcome in result["modes"].items():
        by_kind = outcome["phases"].get("mix", {}).get("by_kind", {})
        if by_kind:
            parts = ", ".join(
                f"{kind} p50 {kind_stats['p50_ms']:.1f} / p99 {kind_stats['p99_ms']:.1f} ms"
                for kind, kind_stats in by_kind.items()
            )
            notes.append(f"mix ({mode}): {parts}")
    table.caption = "\n".join(notes)
    return table


def fanout_table(result: dict[str, Any], command: str) -> Table:
    """One row per step, grouped by session count; narrow enough for 80 columns."""
    table = _table(
        command,
        (
            "sessions",
            "msg/s",
            "events/s",
            "delivery",
            "p50/p99\nms",
            "CPU ms\n/1k ev",
            "server\nCPU",
            "gen\nCPU s",
            "pass\nms",
            "ok",
        ),
    )
    captions = []
    for sessions, run in result["by_sessions"].items():
        for index, step in enumerate(run["steps"]):
            table.add_row(
                sessions if index == 0 else "",
                f"{step['offered_msgs_per_s']:g}",
                f"{step['delivered_events_per_s']:,.0f}",
                f"{100 * step['delivery_ratio']:.2f}%",
                f"{step['p50_ms']:.0f}/{step['p99_ms']:.0f}",
                f"{step['server_cpu_ms_per_1000_events']:.1f}",
                f"{100 * step['server_cpu_share']:.0f}%",
                f"{step['generator_cpu_s']:.1f}",
                f"{step['write_pass_ms']:.1f}" if "write_pass_ms" in step else "",
                "yes" if step["passed"] else "NO",
                end_section=index == len(run["steps"]) - 1,
            )
        best, half = run["best"], run["half_rate"]
        if best is None:
            captions.append(f"{sessions} sessions: no rate passed")
            continue
        top = " (the top of the ladder)" if run.get("top_of_ladder") else ""
        captions.append(
            f"{sessions} sessions: best {best['offered_msgs_per_s']:g} msg/s{top}, "
            f"{best['delivered_events_per_s']:,.0f} events/s; at half that rate p99 "
            + ("-" if half is None else f"{half['p99_ms']:.0f} ms")
        )
    table.caption = "\n".join(captions)
    return table


def recovery_table(result: dict[str, Any], command: str) -> Table:
    table = _table(
        f"{command}  ({result['chats']:,} chats, {result['messages']:,} messages)",
        ("figure", "value", "target"),
        left=1,
    )
    table.add_row(
        "records in snapshot / log",
        f"{result['snapshot_records']:,} / {result['log_records']:,}",
        "",
    )
    table.add_row(
        "everything restored",
        "yes" if result["restored"] else "NO: " + "; ".join(result["restore_problems"]),
        "yes",
    )
    table.add_row(
        "restart to /readyz",
        f"{result['ready_seconds']:.1f} s",
        f"≤ {recovery_scenario.RESTART_TARGET_S:g} s",
    )
    if result.get("recovery_seconds") is not None:
        table.add_row(
            "  of which recovery: snapshot + log",
            f"{result['snapshot_load_seconds']:.1f} s + {result['log_replay_seconds']:.1f} s",
            "",
        )
    table.add_row(
        "RSS per stored message",
        f"{result['rss_bytes_per_message']:.0f} B",
        f"≤ {recovery_scenario.RSS_PER_MESSAGE_TARGET:,} B",
    )
    table.add_row("disk per stored message", f"{result['disk_bytes_per_message']:.0f} B", "")
    pause = result["snapshot_fork_pause_ms"]
    table.add_row("snapshot pause (fork)", "n/a" if pause is None else f"{pause:.1f} ms", "≤ 50 ms")
    for name, figures in result.get("report_first_page_ms", {}).items():
        table.add_row(
            f"report first page: {name} ({figures['count']:,} chats)",
            f"p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms",
            "",
        )
    return table


def compare_table(result: dict[str, Any], command: str) -> Table:
    table = _table(
        command,
        (
            "subscribers",
            "server",
            "best msg/s",
            "events/s",
            "p99 ms",
            "CPU ms\n/1k ev",
            "engine\n÷ this",
        ),
    )
    for sessions, group in result["by_sessions"].items():
        engine = group["best_msgs_per_s"]["engine"]
        for kind in compare_scenario.KINDS:
            best = group["runs"][kind]["best"]
            rate = group["best_msgs_per_s"][kind]
            top = " (top)" if group["top_of_ladder"][kind] else ""
            table.add_row(
                sessions,
                kind,
                f"{rate:g}{top}" if rate else f"< {result['ladder'][0]:g} (none met)",
                f"{best['delivered_events_per_s']:.0f}" if best else "-",
                f"{best['p99_ms']:.0f}" if best else "-",
                f"{best['server_cpu_ms_per_1000_events']:.1f}" if best else "-",
                f"{engine / rate:.2f}" if rate else "-",
            )
    targets = result["targets"]
    captions = []
    for sessions, group in result["by_sessions"].items():
        judged = compare_scenario.judge(
            group["best_msgs_per_s"], group["half_rate_p99_ms"], result["ladder"]
        )
        half, above = judged["half_rate_p99_ms"], judged["ratio_above"]
        verdict = {name: "met" if met else "MISSED" for name, met in judged["targets_met"].items()}
        captions.append(
            f"{sessions}: engine ÷ socketio "
            f"{_ratio(judged['ratio_vs_socketio'], above['socketio'])} "
            f"(≥ {targets['ratio_vs_socketio']:g}: {verdict['ratio_vs_socketio']}), "
            f"÷ websockets {_ratio(judged['ratio_vs_websockets'], above['websockets'])} "
            f"(≥ {targets['ratio_vs_websockets']:g}: {verdict['ratio_vs_websockets']}), "
            f"p99 at half rate {'-' if half is None else f'{half:.0f} ms'} "
            f"(≤ {targets['half_rate_p99_ms']:g}: {verdict['half_rate_p99_ms']})"
        )
    table.caption = "\n".join(captions)
    return table


def _ratio(value: float | None, above: float | None) -> str:
    if value is not None:
        return f"{value:.2f}"
    # the peer met no rate of the ladder: only a lower bound is known
    return "-" if above is None else f"> {above:.0f} (it met no rate of the ladder)"


def storm_table(result: dict[str, Any], command: str) -> Table:
    table = _table(
        command,
        (
            "burst",
            "calls\n/keys",
            "correct",
            "p50\nms",
            "p95\nms",
            "p99\nms",
            "wall\ns",
            "server\nCPU s",
            "gen\nCPU s",
            "pass",
        ),
        left=1,
    )
    for name, baseline in result.get("baselines", {}).items():
        table.add_row(
            f"{name.replace('_', ' ')} (base)",
            f"{baseline['calls']}/–",
            "–",
            f"{baseline['p50_ms']:.0f}",
            f"{baseline['p95_ms']:.0f}",
            f"{baseline['p99_ms']:.0f}",
            f"{baseline['wall_s']:.2f}",
            f"{baseline['server_cpu_s']:.2f}",
            f"{baseline['generator_cpu_s']:.2f}",
            "–",
        )
    for name, burst in result["bursts"].items():
        table.add_row(
            name.replace("_joins", " joins"),
            f"{burst['calls']}/{burst['keys']}",
            "yes" if burst["correct"] else "NO",
            f"{burst['p50_ms']:.0f}",
            f"{burst['p95_ms']:.0f}",
            f"{burst['p99_ms']:.0f}",
            f"{burst['wall_s']:.2f}",
            f"{burst['server_cpu_s']:.2f}",
            f"{burst['generator_cpu_s']:.2f}",
            "yes" if burst["passed"] else "NO",
        )
    ratios = "; ".join(
        f"{name} p99 = {burst['p99_vs_bare_server']:.1f}× the bare server's, "
        f"{burst['p99_vs_healthz']:.1f}× healthz"
        for name, burst in result["bursts"].items()
        if "p99_vs_bare_server" in burst
    )
    table.caption = (
        f"target: exact correctness, p99 ≤ {result['p99_target_ms']:g} ms per call. {ratios}"
    )
    return table


def conns_table(result: dict[str, Any], command: str) -> Table:
    table = _table(command, ("sessions", "connect rate /s", "server RSS MiB", "RSS per session"))
    for step in result["steps"]:
        table.add_row(
            f"{step['sessions']:,}",
            f"{step['connect_rate_per_s']:.0f}",
            f"{step['server_rss_bytes'] / 2**20:.0f}",
            f"{step['rss_bytes_per_session'] / 1024:.1f} KiB",
        )
    broadcast = result["broadcast"]
    table.caption = (
        f"target ≤ {result['rss_target_bytes'] / 1024:.0f} KiB per session: "
        f"{'met' if result['rss_bytes_per_session'] <= result['rss_target_bytes'] else 'MISSED'}; "
        f"one message reached {broadcast['received']:,} of {broadcast['expected']:,} sessions "
        f"(p50 {broadcast['p50_ms']:.0f} ms, p99 {broadcast['p99_ms']:.0f} ms); "
        f"{result['session_closes']} closes"
    )
    return table


SCENARIOS = {
    "conns": (conns_scenario, conns_table),
    "storm": (storm_scenario, storm_table),
    "compare": (compare_scenario, compare_table),
    "http": (http_scenario, http_table),
    "fanout": (fanout_scenario, fanout_table),
    "recovery": (recovery_scenario, recovery_table),
}


def _bounded(kind: type, low: float, high: float) -> Any:
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


def _list_of(item: Any, most: int) -> Any:
    """An argparse type: 1 to ``most`` comma-separated values, each parsed by ``item``."""

    def parse(text: str) -> list[Any]:
        parts = text.split(",")
        if len(parts) > most:
            raise argparse.ArgumentTypeError(f"at most {most} values, not {len(parts)}")
        return [item(part.strip()) for part in parts]

    return parse


def _modes(text: str) -> list[str]:
    modes = text.split(",")
    unknown = [mode for mode in modes if mode not in STORAGE_MODES]
    if unknown or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(
            f"distinct values among {', '.join(STORAGE_MODES)}, not {text!r}"
        )
    return modes


STORAGE_MODES = ("memory", "always", "interval", "off")
RATE = _bounded(float, 0.1, 100_000.0)
GENERATORS = _bounded(int, 1, 8)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="directory for the JSON and PNG (default: bench/results)",
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    parsers: dict[str, argparse.ArgumentParser] = {}

    def scenario(name: str, text: str) -> argparse.ArgumentParser:
        parsers[name] = scenarios.add_parser(name, help=text, parents=[common])
        return parsers[name]

    http = scenario("http", "message POST, history and report GETs, alone and mixed, vs /healthz")
    http.add_argument(
        "--seconds", type=_bounded(float, 0.5, 120), default=8.0, help="per phase (0.5-120)"
    )
    http.add_argument(
        "--connections",
        type=_bounded(int, 1, 500),
        default=16,
        help="per generator process (1-500)",
    )
    http.add_argument(
        "--generators", type=GENERATORS, default=1, help="load-generator processes (1-8)"
    )
    http.add_argument(
        "--chats",
        type=_bounded(int, 1, 10_000),
        default=50,
        help="chats to spread the load over (1-10,000)",
    )
    http.add_argument(
        "--modes",
        type=_modes,
        default=["always", "off"],
        help="storage modes, comma-separated: memory, always, interval, off",
    )
    fanout = scenario("fanout", "S sessions on one messages channel, rising message rates")
    compare = scenario("compare", "fanout against python-socketio and a bare websockets server")
    fanout.add_argument(
        "--sessions",
        type=_list_of(_bounded(int, 1, 10_000), 4),
        default=list(fanout_scenario.DEFAULT_SESSIONS),
        help="comma-separated subscriber counts (up to 4, each 1-10,000), each on a fresh server",
    )
    compare.add_argument(
        "--sessions",
        type=_list_of(_bounded(int, 1, 10_000), 4),
        default=[500, 1000],
        help="comma-separated subscriber counts (up to 4, each 1-10,000)",
    )
    for ladder, module, seconds, max_rate in (
        (fanout, fanout_scenario, 5.0, 2000.0),
        (compare, compare_scenario, 4.0, 2000.0),
    ):
        ladder.add_argument(
            "--generators", type=GENERATORS, default=1, help="subscriber processes (1-8)"
        )
        ladder.add_argument(
            "--seconds",
            type=_bounded(float, 0.5, 60),
            default=seconds,
            help="per ladder step (0.5-60)",
        )
        ladder.add_argument(
            "--ladder",
            type=_list_of(RATE, 20),
            default=list(module.DEFAULT_LADDER),
            help="comma-separated msg/s (up to 20 rates)",
        )
        ladder.add_argument(
            "--max-rate", type=RATE, default=max_rate, help="skip ladder rates above it"
        )
        ladder.add_argument(
            "--session-queue",
            type=_bounded(int, 1, 1_000_000),
            default=5000,
            help="the server's --session-queue",
        )
    storm = scenario("storm", "bursts of exclusive joins and auto_resume calls, checked exactly")
    storm.add_argument(
        "--joins", type=_bounded(int, 1, 5000), default=1000, help="exclusive joins (1-5,000)"
    )
    storm.add_argument(
        "--chats",
        type=_bounded(int, 1, 5000),
        default=100,
        help="chats they contend for (at most --joins)",
    )
    storm.add_argument(
        "--resumes", type=_bounded(int, 1, 5000), default=1000, help="auto_resume calls (1-5,000)"
    )
    storm.add_argument(
        "--visitors",
        type=_bounded(int, 1, 5000),
        default=100,
        help="visitors they contend for (at most --resumes)",
    )
    storm.add_argument(
        "--generators", type=GENERATORS, default=2, help="load-generator processes (1-8)"
    )
    storm.add_argument(
        "--in-memory", action="store_true", help="no storage (default: fsync always)"
    )
    conns = scenario("conns", "N idle sessions, 2 subscriptions each")
    conns.add_argument(
        "--sessions", type=_bounded(int, 1, 10_000), default=10_000, help="sessions (1-10,000)"
    )
    conns.add_argument(
        "--steps",
        type=_bounded(int, 1, 20),
        default=4,
        help="batches to open them in (1-20, at most --sessions)",
    )
    recovery = scenario("recovery", "restart time, RSS and snapshot pause with a large store")
    recovery.add_argument(
        "--chats",
        type=_bounded(int, 1, 1_000_000),
        default=100_000,
        help="chats the messages are spread over (1-1,000,000)",
    )
    recovery.add_argument(
        "--messages",
        type=_bounded(int, 1, 5_000_000),
        default=1_000_000,
        help="messages stored (1-5,000,000)",
    )
    recovery.add_argument(
        "--log-records",
        type=_bounded(int, 0, 5_000_000),
        default=DEFAULT_SNAPSHOT_RECORDS,
        help="mutations in the log after the snapshot (default: the server's "
        "--snapshot-records, the longest tail it leaves)",
    )
    summary_parser = scenarios.add_parser(
        "summary",
        help="every target, judged from the latest result of each scenario (runs nothing)",
    )
    summary_parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="where the results are (default: bench/results)",
    )
    options = parser.parse_args(argv)
    if options.scenario == "summary":
        if not options.results.is_dir():
            summary_parser.error(f"--results: no directory {options.results}")
        return options
    error = parsers[options.scenario].error
    if options.scenario == "storm":
        if options.chats > options.joins:
            error("--chats must be at most --joins")
        if options.visitors > options.resumes:
            error("--visitors must be at most --resumes")
    elif options.scenario == "conns" and options.steps > options.sessions:
        error("--steps must be at most --sessions")
    elif options.scenario in ("fanout", "compare"):
        if not any(rate <= options.max_rate for rate in options.ladder):
            error("every --ladder rate is above --max-rate")
    return options


# what the figures depend on (docs and earlier results do not count as changes)
CODE_PATHS = ("engine", "gateway", "persistence", "bench", ":!bench/results", "pyproject.toml")


def code_revision() -> dict[str, object]:
    """The commit the figures were measured on, and whether its code had changes on top
    (so a result is traceable to its code); empty outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit, "uncommitted_changes": bool(changes)}


def summary_table(rows: list[dict[str, str]], title: str) -> Table:
    table = _table(title, ("target", "figure", "verdict"), left=2)
    scenario = None
    for row in rows:
        if row["scenario"] != scenario:
            scenario = row["scenario"]
            table.add_row(f"[bold]{scenario}[/bold]", f"[dim]{row['source']}[/dim]", "")
        verdict = row["verdict"]
        style = {"met": "green", "MISSED": "bold red"}.get(verdict, "dim")
        table.add_row(f"  {row['target']}", row["figure"], f"[{style}]{verdict}[/{style}]")
    return table


def main(argv: list[str] | None = None) -> None:
    options = parse(argv)
    if options.scenario == "summary":
        rows = summary.summarize(options.results)
        Console().print(
            summary_table(rows, f"targets, from the latest results in {options.results}")
        )
        return
    raise_open_file_limit()
    module, table = SCENARIOS[options.scenario]
    console = Console()
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        result = module.run(options, progress)
    report = {
        "scenario": options.scenario,
        "command": command,
        "machine": machine(),
        # server settings given through the environment (tokens left out)
        "server_env": {
            name: value
            for name, value in sorted(os.environ.items())
            if name.startswith("CHAT_ENGINE_") and "TOKEN" not in name
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": code_revision(),
        "result": result,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    stem = options.out / f"{options.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    module.plot(report, str(stem.with_suffix(".png")))
    console.print(table(result, command))
    console.print(f"written: {stem}.json, {stem}.png")


if __name__ == "__main__":
    main()
