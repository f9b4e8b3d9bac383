"""`python -m bench conns`: many idle authenticated sessions on one server process.

Generator processes (``bench/subscriber.py``) open ``--sessions`` WebSocket sessions
(up to 10,000), in ``--steps`` equal batches; each session authenticates with an
operator's token and subscribes to two channels (a chat's messages and the operator's
current chats). After each batch: the connect rate (sessions that became ready —
upgraded and both subscriptions answered — per second), the server's RSS, and the RSS
growth per session since the baseline taken before the first batch. At the end one
message is posted and every session must receive it (checks that they are all alive
and subscribed, and times that broadcast).

The open-file limit is raised to its hard limit by ``python -m bench`` before
anything starts; the server and the generators inherit it.

With ``--url`` the sessions are spread over the deployment's addresses and authenticate
with the admin token instead of operators' tokens: a deployment limits the sessions of
one user token and of one client address (all of the bench's come from one), and those
limits are not what this measures. The RSS figures are then the deployment's
``process_resident_memory_bytes`` (summed over its addresses), or unavailable.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

import httpx
import orjson
from rich.table import Table

from bench import common, subscriber
from bench.common import Error, bounded
from bench.deployment import Deployment
from bench.fanout_scenario import _percentile, collect_reports
from bench.server import admin_headers, bootstrap, start_server
from engine import channels

RSS_TARGET_BYTES = 40 * 1024
SESSIONS_PER_GENERATOR = 2500


def run(options: Any, progress: Any) -> dict[str, Any]:
    server = None
    deployment = options.deployment
    if deployment is None:
        server = start_server("--in-memory", "--session-queue", "200")
        deployment = Deployment.of_server(server)
    pipes: list[Connection] = []
    processes: list[Any] = []
    try:
        world = bootstrap(deployment, chats=1, users=8, name=deployment.name("Conns"))
        org_id, room_id = world["org"]["id"], world["room"]["id"]
        chat_id, sender_id = world["chats"][0]
        base = f"/api/v5/orgs/{org_id}"
        # channel names come from the engine's one definition of them
        messages = channels.sub(channels.room_chats(org_id, room_id), chat_id, "messages")
        time.sleep(1.0)  # let the server settle before the baseline
        baseline = deployment.rss_bytes()
        context = multiprocessing.get_context("spawn")
        per_step = options.sessions // options.steps
        steps = []
        task = progress.add_task(f"conns: {options.sessions} sessions", total=options.sessions)
        opened = 0
        started = time.perf_counter()
        for number in range(options.steps):
            batch = per_step if number < options.steps - 1 else options.sessions - opened
            batch_pipes = []
            cpu_before = deployment.cpu_seconds()
            batch_started = time.perf_counter()
            remaining = batch
            while remaining:
                share = min(remaining, SESSIONS_PER_GENERATOR)
                user = world["users"][len(processes) % len(world["users"])]
                subscribed = (messages, channels.current_chats(org_id, user["id"]))
                token = user["token"] if server is not None else deployment.token
                addresses = [
                    deployment.spread(opened + batch - remaining + n) for n in range(share)
                ]
                parent, child = context.Pipe()
                process = context.Process(
                    target=subscriber.process_main,
                    args=(addresses, "engine", token, subscribed, share, child),
                )
                process.start()
                pipes.append(parent)
                batch_pipes.append(parent)
                processes.append(process)
                remaining -= share
            for pipe in batch_pipes:
                if not pipe.poll(180):
                    raise RuntimeError("a generator did not get its sessions ready in 180 s")
                answer = pipe.recv()
                if answer != "ready":
                    raise RuntimeError(f"generator: {answer}")
            seconds = time.perf_counter() - batch_started
            opened += batch
            progress.update(task, completed=opened)
            time.sleep(0.5)
            rss = deployment.rss_bytes()
            cpu_after = deployment.cpu_seconds()
            steps.append(
                {
                    "sessions": opened,
                    "batch": batch,
                    "batch_seconds": seconds,
                    "connect_rate_per_s": batch / seconds,
                    # None: unavailable (a deployment's /metrics without process_*)
                    "server_cpu_ms_per_session": None
                    if cpu_before is None or cpu_after is None
                    else 1000 * (cpu_after - cpu_before) / batch,
                    "server_rss_bytes": rss,
                    "rss_bytes_per_session": None
                    if rss is None or baseline is None
                    else (rss - baseline) / opened,
                }
            )
        total_seconds = time.perf_counter() - started
        # every session alive and subscribed: one message reaches all of them
        with httpx.Client(
            base_url=deployment.base_url, headers=admin_headers(deployment), timeout=30
        ) as client:
            response = client.post(
                f"{base}/chats/{chat_id}/messages",
                content=orjson.dumps({"sender_id": sender_id, "message": f"1:{time.time():.6f}"}),
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 201, response.text
        time.sleep(3.0)
        received, histogram, closes, errors = collect_reports(pipes, 1)
        last = steps[-1]
        return {
            "sessions": options.sessions,
            "channels_per_session": 2,
            "generators": len(processes),
            "baseline_rss_bytes": baseline,
            "steps": steps,
            "connect_seconds": total_seconds,
            "connect_rate_per_s": options.sessions / total_seconds,
            "rss_bytes_per_session": last["rss_bytes_per_session"],
            "rss_target_bytes": RSS_TARGET_BYTES,
            "broadcast": {
                "received": received,
                "expected": options.sessions,
                "p50_ms": _percentile(histogram, 0.5),
                "p99_ms": _percentile(histogram, 0.99),
                "max_ms": float(max(histogram)) if histogram else math.nan,
            },
            "session_closes": len(closes),
            "subscribe_errors": errors[:10],
            "passed": last["rss_bytes_per_session"] is not None
            and last["rss_bytes_per_session"] <= RSS_TARGET_BYTES
            and received == options.sessions,
            "session_token": "user" if server is not None else "admin",
            "server_args": server.args[1:] if server is not None else None,
        }
    finally:
        for pipe in pipes:
            try:
                pipe.send("stop")
            except (BrokenPipeError, OSError):
                pass
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        if server is not None:
            server.stop()


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = report["result"]
    steps = result["steps"]
    xs = [step["sessions"] for step in steps]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    per_session = [_kib(step["rss_bytes_per_session"]) for step in steps]
    left.plot(xs, [math.nan if kib is None else kib for kib in per_session], "o-")
    left.axhline(RSS_TARGET_BYTES / 1024, color="red", linestyle=":", label="40 KiB target")
    left.set_xlabel("sessions")
    left.set_ylabel("KiB of server RSS per session")
    left.set_title("RSS per idle session (2 subscriptions each)")
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(xs, [step["connect_rate_per_s"] for step in steps], "o-")
    right.set_xlabel("sessions")
    right.set_ylabel("sessions ready / s")
    right.set_title("Connect rate per batch (upgrade + 2 subscribes)")
    right.set_ylim(bottom=0)
    figure.suptitle(report["command"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _kib(value: float | None) -> float | None:
    return None if value is None else value / 1024


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def _verdict(per_session: float | None, target: float) -> str:
    if per_session is None:
        return "unavailable (no process metrics)"
    return "met" if per_session <= target else "MISSED"


HELP = "N idle sessions, 2 subscriptions each"


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sessions", type=bounded(int, 1, 10_000), default=10_000, help="sessions (1-10,000)"
    )
    parser.add_argument(
        "--steps",
        type=bounded(int, 1, 20),
        default=4,
        help="batches to open them in (1-20, at most --sessions)",
    )


def check_options(options: argparse.Namespace, error: Error) -> None:
    if options.steps > options.sessions:
        error("--steps must be at most --sessions")


def table(result: dict[str, Any], command: str) -> Table:
    shown = common.table(
        command, ("sessions", "connect rate /s", "server RSS MiB", "RSS per session")
    )
    for step in result["steps"]:
        shown.add_row(
            f"{step['sessions']:,}",
            f"{step['connect_rate_per_s']:.0f}",
            common.figure(_mib(step["server_rss_bytes"]), ".0f"),
            common.figure(_kib(step["rss_bytes_per_session"]), ".1f") + " KiB",
        )
    broadcast = result["broadcast"]
    shown.caption = (
        f"target ≤ {result['rss_target_bytes'] / 1024:.0f} KiB per session: "
        f"{_verdict(result['rss_bytes_per_session'], result['rss_target_bytes'])}; "
        f"one message reached {broadcast['received']:,} of {broadcast['expected']:,} sessions "
        f"(p50 {broadcast['p50_ms']:.0f} ms, p99 {broadcast['p99_ms']:.0f} ms); "
        f"{result['session_closes']} closes"
    )
    return shown
