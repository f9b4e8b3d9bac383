"""`python -m bench compare`: the fan-out workload against the engine and two peers.

For each subscriber count (500 and 1,000 by default) and each server — the engine,
python-socketio (``bench/peers/socketio_server.py``: AsyncServer + ASGIApp under
uvicorn, a room broadcast) and a bare ``websockets`` broadcast server
(``bench/peers/websockets_server.py``) — the same generator processes hold the
sessions and the same rate ladder runs until a step fails (< 99.9 % delivery, p99 >
250 ms, or the publisher falls behind). The figure per server is the highest passing
rate; the ratios are the engine's over each peer's. The engine also runs one more step
at half its best rate, where the target is p99 ≤ 50 ms.

What differs, by design: the engine's publisher posts over HTTP (a message is a
durable-format resource with an envelope, ~300 bytes of JSON per event); the peers'
publisher sends over one WebSocket, and each event is the bare text (~20 bytes) or
its Socket.IO packet. Each server runs as one process, as the engine does.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from typing import Any

from rich.table import Table

from bench import common
from bench.client import loopback
from bench.common import Error, add_ladder_options, check_ladder
from bench.deployment import Deployment
from bench.fanout_scenario import Target, engine_target, run_ladder
from bench.server import free_port, start_server

PEERS = {
    "socketio": "bench.peers.socketio_server",
    "websockets": "bench.peers.websockets_server",
    "bare_http": "bench.peers.bare_http_server",  # the storm scenario's floor
}
KINDS = ("engine", "socketio", "websockets")
# starts low enough to find python-socketio's rate at 1,000 subscribers
DEFAULT_LADDER = (1, 2, 3, 5, 10, 20, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960)
TARGET_VS_SOCKETIO = 3.0
TARGET_VS_WEBSOCKETS = 0.5
HALF_RATE_P99_MS = 50.0


def start_peer(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", PEERS[kind], "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} peer exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{kind} peer did not listen within 30 s")


def stop_peer(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _best_rate(run: dict[str, Any]) -> float:
    return run["best"]["offered_msgs_per_s"] if run["best"] else 0.0


PEER_TARGETS = {"socketio": TARGET_VS_SOCKETIO, "websockets": TARGET_VS_WEBSOCKETS}


def _met(ratio: float | None, above: float | None, target: float) -> bool:
    if ratio is not None:
        return ratio >= target
    return above is not None and above >= target


def judge(best: dict[str, float], half_p99: float | None, ladder: list[float]) -> dict[str, Any]:
    """The ratios and the verdict on each target for one subscriber count, from the
    best rates (0 when a server met no rate) and the engine's p99 at half its best rate.
    A peer that met no rate of the ladder has no ratio, only a bound: its best rate is
    below the lowest one, so the engine's ratio to it is above ``ratio_above``."""
    engine = best["engine"]
    ratios = {peer: engine / best[peer] if best[peer] else None for peer in PEER_TARGETS}
    above = {
        peer: engine / ladder[0] if engine and not best[peer] else None for peer in PEER_TARGETS
    }
    met = {
        f"ratio_vs_{peer}": _met(ratios[peer], above[peer], target)
        for peer, target in PEER_TARGETS.items()
    }
    met["half_rate_p99_ms"] = half_p99 is not None and half_p99 <= HALF_RATE_P99_MS
    return {
        "ratio_vs_socketio": ratios["socketio"],
        "ratio_vs_websockets": ratios["websockets"],
        "ratio_above": above,
        "half_rate_p99_ms": half_p99,
        "targets_met": met,
    }


def run(options: Any, progress: Any) -> dict[str, Any]:
    ladder = [rate for rate in options.ladder if rate <= options.max_rate]
    by_sessions: dict[str, Any] = {}
    for sessions in options.sessions:
        runs: dict[str, Any] = {}
        for kind in KINDS:
            label = f"{kind} × {sessions}"
            if kind == "engine":
                server = start_server("--in-memory", "--session-queue", str(options.session_queue))
                try:
                    runs[kind] = run_ladder(
                        engine_target(Deployment.of_server(server)),
                        sessions,
                        options.generators,
                        ladder,
                        options.seconds,
                        progress,
                        label,
                        half_rate_check=True,
                    )
                finally:
                    server.stop()
            else:
                process, port = start_peer(kind)
                try:
                    runs[kind] = run_ladder(
                        Target(
                            kind, Deployment([loopback(port)], loopback(port), "", [process.pid])
                        ),
                        sessions,
                        options.generators,
                        ladder,
                        options.seconds,
                        progress,
                        label,
                    )
                finally:
                    stop_peer(process)
        best = {kind: _best_rate(runs[kind]) for kind in KINDS}
        half = runs["engine"]["half_rate"]
        by_sessions[str(sessions)] = {
            "runs": runs,
            "best_msgs_per_s": best,
            **judge(best, half["p99_ms"] if half else None, ladder),
            "top_of_ladder": {kind: _best_rate(runs[kind]) >= ladder[-1] for kind in KINDS},
        }
    return {
        "sessions": options.sessions,
        "ladder": ladder,
        "generators": options.generators,
        "step_seconds": options.seconds,
        "targets": {
            "ratio_vs_socketio": TARGET_VS_SOCKETIO,
            "ratio_vs_websockets": TARGET_VS_WEBSOCKETS,
            "half_rate_p99_ms": HALF_RATE_P99_MS,
        },
        "by_sessions": by_sessions,
    }


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = report["result"]
    groups = result["by_sessions"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.25
    colours = {"engine": "#1f77b4", "socketio": "#ff7f0e", "websockets": "#2ca02c"}
    for offset, kind in enumerate(KINDS):
        xs = [index + (offset - 1) * width for index in range(len(groups))]
        values = [groups[key]["best_msgs_per_s"][kind] for key in groups]
        bars = left.bar(xs, values, width, label=kind, color=colours[kind])
        left.bar_label(bars, fmt="%g", fontsize=8)
    left.set_xticks(range(len(groups)), [f"{key} subscribers" for key in groups])
    left.set_ylabel("highest passing msg/s")
    left.set_title("Fan-out: highest rate with ≥ 99.9 % delivery and p99 ≤ 250 ms")
    left.legend()
    for key, group in groups.items():
        for kind in KINDS:
            steps = group["runs"][kind]["steps"]
            right.plot(
                [s["offered_msgs_per_s"] for s in steps],
                [s["p99_ms"] for s in steps],
                "o-" if key == str(result["sessions"][0]) else "s--",
                color=colours[kind],
                label=f"{kind} × {key}",
            )
    right.axhline(250, color="red", linestyle=":", label="250 ms")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("messages / s (log)")
    right.set_ylabel("p99 ms (log)")
    right.set_title("End-to-end p99 per ladder step")
    right.legend(fontsize=7, ncol=2)
    figure.suptitle(report["command"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


OWNS_SERVER = "it starts the engine and its two peers side by side on this machine"
HELP = "fanout against python-socketio and a bare websockets server"


def add_options(parser: argparse.ArgumentParser) -> None:
    add_ladder_options(
        parser,
        ladder=DEFAULT_LADDER,
        seconds=4.0,
        max_rate=2000.0,
        sessions=[500, 1000],
        sessions_help="comma-separated subscriber counts (up to 4, each 1-10,000)",
    )


def check_options(options: argparse.Namespace, error: Error) -> None:
    check_ladder(options, error)


def table(result: dict[str, Any], command: str) -> Table:
    shown = common.table(
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
        for kind in KINDS:
            best = group["runs"][kind]["best"]
            rate = group["best_msgs_per_s"][kind]
            top = " (top)" if group["top_of_ladder"][kind] else ""
            shown.add_row(
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
        judged = judge(group["best_msgs_per_s"], group["half_rate_p99_ms"], result["ladder"])
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
    shown.caption = "\n".join(captions)
    return shown


def _ratio(value: float | None, above: float | None) -> str:
    if value is not None:
        return f"{value:.2f}"
    # the peer met no rate of the ladder: only a lower bound is known
    return "-" if above is None else f"> {above:.0f} (it met no rate of the ladder)"
