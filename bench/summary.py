"""`python -m bench summary`: the issue's targets, each judged from the newest result
in a results directory that measured it, in one table. It runs nothing: it reads the JSON the
scenarios wrote, so it shows what was measured, where, and on which commit.

Each target is judged on the newest run that measured it: a run of one variant (``http
--redis``, ``fanout --replicas``) does not hide the figures of the other. A target is
judged only on a run of the size it names (10,000 sessions, 1,000,000
messages, 1,000 calls, 500 and 1,000 subscribers); a smaller run is listed with its
figure and "not judged", never as met.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from bench import common
from bench.compare_scenario import HALF_RATE_P99_MS, PEER_TARGETS, judge
from bench.conns_scenario import RSS_TARGET_BYTES
from bench.recovery_scenario import RESTART_TARGET_S, RSS_PER_MESSAGE_TARGET
from bench.storm_scenario import P99_TARGET_MS

HELP = "every target, judged from the newest result that measured it (runs nothing)"
SCENARIO_NAMES = ("compare", "fanout", "conns", "storm", "recovery", "http")
FSYNC_RATIO_TARGET = 0.5
REDIS_RATIO_TARGET = 0.8  # a shipping primary's POST throughput over a lone server's
REPLICA_RATIO_TARGET = 0.8  # a replica's fan-out over the primary's own, at 500 sessions
MET, MISSED, NOT_JUDGED = "met", "MISSED", "not judged"


def runs(results: Path, scenario: str) -> list[Path]:
    """Every ``<scenario>-<YYYYmmdd-HHMMSS>.json``, the newest first (names sort by time)."""
    return sorted(results.glob(f"{scenario}-[0-9]*-[0-9]*.json"), reverse=True)


def latest(results: Path, scenario: str) -> Path | None:
    found = runs(results, scenario)
    return found[0] if found else None


def _verdict(ok: bool, judged: bool = True) -> str:
    if not judged:
        return NOT_JUDGED
    return MET if ok else MISSED


def _compare(result: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for sessions, group in result["by_sessions"].items():
        judged = int(sessions) in (500, 1000)
        best = group["best_msgs_per_s"]
        verdicts = judge(best, group["half_rate_p99_ms"], result["ladder"])
        for peer, target in PEER_TARGETS.items():
            ratio, above = verdicts[f"ratio_vs_{peer}"], verdicts["ratio_above"][peer]
            if ratio is not None:
                figure = f"{ratio:.1f}× ({best['engine']:g} vs {best[peer]:g} msg/s)"
            elif above is not None:
                figure = f"> {above:.0f}× ({peer} met no rate)"
            else:
                figure = "no engine rate passed"
            met = verdicts["targets_met"][f"ratio_vs_{peer}"]
            yield f"{sessions}: ≥ {target:g}× {peer}", figure, _verdict(met, judged)
        half = verdicts["half_rate_p99_ms"]
        yield (
            f"{sessions}: half-rate p99 ≤ {HALF_RATE_P99_MS:g} ms",
            "-" if half is None else f"{half:.0f} ms",
            _verdict(verdicts["targets_met"]["half_rate_p99_ms"], judged),
        )


def _fanout(result: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    # results from before 2026-11-27 hold one session count, not by_sessions
    runs = result.get("by_sessions") or {str(result.get("sessions", "?")): result}
    for sessions, run in runs.items():
        best, half = run["best"], run["half_rate"]
        figure = "no rate passed" if best is None else f"{best['offered_msgs_per_s']:g} msg/s"
        if half is not None:
            figure += f"; half-rate p99 {half['p99_ms']:.0f} ms"
        if "on_primary" not in run:
            yield f"{sessions} sessions: best rate", figure, "(none)"
        else:  # fanout --replicas
            yield f"{sessions} sessions on replicas: best rate", figure, "(none)"
            ratio = run["replicas_over_primary"]
            yield (
                f"{sessions}: replicas/primary events/s ≥ {REPLICA_RATIO_TARGET:g}",
                "-" if ratio is None else f"{ratio:.2f}",
                _verdict(
                    ratio is not None and ratio >= REPLICA_RATIO_TARGET,
                    int(sessions) == 500 and ratio is not None,
                ),
            )
            lag = run["replication_lag_at_best"]
            yield (
                f"{sessions}: replication lag p99",
                "-" if not lag or lag["p99_ms"] is None else f"{lag['p99_ms']:.0f} ms",
                "(none)",
            )


def _conns(result: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    per_session = result["rss_bytes_per_session"]
    reached = result["broadcast"]["received"] == result["broadcast"]["expected"]
    yield (
        f"10,000 sessions, ≤ {RSS_TARGET_BYTES // 1024} KiB each",
        f"{per_session / 1024:.1f} KiB ({result['sessions']:,} sessions)"
        + ("" if reached else "; the message did not reach every session"),
        _verdict(per_session <= RSS_TARGET_BYTES and reached, result["sessions"] >= 10_000),
    )


def _storm(result: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for name, burst in result["bursts"].items():
        judged = burst["calls"] >= 1000
        label = name.replace("exclusive_", "")
        yield (
            f"{label}: exact",
            "exact" if burst["correct"] else f"{len(burst['problems'])}+ problems",
            _verdict(burst["correct"], judged),
        )
        yield (
            f"{label}: p99 ≤ {P99_TARGET_MS:g} ms",
            f"{burst['p99_ms']:.0f} ms ({burst['p99_vs_healthz']:.1f}× healthz)",
            _verdict(burst["p99_ms"] <= P99_TARGET_MS, judged),
        )


def _recovery(result: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    judged = result["messages"] >= 1_000_000
    restored = result.get("restored", True)
    yield (
        f"1M messages back in ≤ {RESTART_TARGET_S:g} s",
        f"{result['ready_seconds']:.1f} s ({result['messages']:,})"
        + ("" if restored else "; NOT everything restored"),
        _verdict(result["ready_seconds"] <= RESTART_TARGET_S and restored, judged),
    )
    yield (
        f"RSS ≤ {RSS_PER_MESSAGE_TARGET:,} B a message",
        f"{result['rss_bytes_per_message']:.0f} B",
        _verdict(result["rss_bytes_per_message"] <= RSS_PER_MESSAGE_TARGET, judged),
    )


def _http(result: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    ratio = result.get("comparisons", {}).get("post_always_over_off")
    if ratio is not None:  # a run with both modes
        yield (
            f"POST fsync always/off ≥ {FSYNC_RATIO_TARGET:g}",
            f"{ratio:.2f}",
            _verdict(ratio >= FSYNC_RATIO_TARGET),
        )
    for name, ratio in result.get("comparisons", {}).items():
        if name.endswith("_redis_over_alone"):
            mode = name.removeprefix("post_").removesuffix("_redis_over_alone")
            yield (
                f"POST {mode}: --redis/alone ≥ {REDIS_RATIO_TARGET:g}",
                f"{ratio:.2f}",
                _verdict(ratio >= REDIS_RATIO_TARGET),
            )


JUDGES = {
    "compare": _compare,
    "fanout": _fanout,
    "conns": _conns,
    "storm": _storm,
    "recovery": _recovery,
    "http": _http,
}


def summarize(results: Path) -> list[dict[str, str]]:
    """One row per target: scenario, target, figure, verdict, and the file it came from
    with its commit (``+`` when the code had uncommitted changes)."""
    rows = []
    for scenario in SCENARIO_NAMES:
        judged: set[str] = set()
        for path in runs(results, scenario):
            report = orjson.loads(path.read_bytes())
            code = report.get("code") or {}
            commit = str(code.get("commit", "?"))[:7]
            commit += "+" if code.get("uncommitted_changes") else ""
            # someone's deployment at --url is not the engine's figure on this machine
            elsewhere = (report.get("target") or {}).get("started_by_bench") is False
            try:
                found = list(JUDGES[scenario](report["result"]))
            except (KeyError, TypeError, AttributeError):
                continue  # a result in an older format than these judges read
            for target, figure, verdict in found:
                if target in judged:
                    continue  # a newer run measured it
                judged.add(target)
                if elsewhere and verdict in (MET, MISSED):
                    figure, verdict = f"{figure} (a deployment at --url)", NOT_JUDGED
                rows.append(
                    {
                        "scenario": scenario,
                        "target": target,
                        "figure": figure,
                        "verdict": verdict,
                        "source": f"{path.stem} ({commit})",
                    }
                )
        if not judged:
            rows.append(
                {
                    "scenario": scenario,
                    "target": "-",
                    "figure": "no result yet",
                    "verdict": NOT_JUDGED,
                    "source": f"python -m bench {scenario}",
                }
            )
    return rows


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results",
        type=Path,
        default=common.default_results(),
        help="where the results are (default: %(default)s; the committed runs the docs "
        "cite: bench/results)",
    )


def check_options(options: argparse.Namespace, error: common.Error) -> None:
    if not options.results.is_dir():
        error(f"--results: no directory {options.results}")


def table(rows: list[dict[str, str]], title: str) -> Table:
    shown = common.table(title, ("target", "figure", "verdict"), left=2)
    heading = None
    for row in rows:
        if (row["scenario"], row["source"]) != heading:  # each scenario, each run
            heading = (row["scenario"], row["source"])
            shown.add_row(f"[bold]{row['scenario']}[/bold]", f"[dim]{row['source']}[/dim]", "")
        verdict = row["verdict"]
        style = {"met": "green", "MISSED": "bold red"}.get(verdict, "dim")
        shown.add_row(f"  {row['target']}", row["figure"], f"[{style}]{verdict}[/{style}]")
    return shown


def show(options: argparse.Namespace) -> None:
    rows = summarize(options.results)
    Console().print(table(rows, f"targets, from the latest results in {options.results}"))
