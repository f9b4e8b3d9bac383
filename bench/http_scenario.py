"""`python -m bench http`: message POST and history GET throughput and latency.

Phases, each run for ``--seconds`` with ``--connections`` keep-alive connections in each
of ``--generators`` load-generator processes:

- ``healthz``: GET /healthz, the framework's floor cost per request: the **baseline**
  every other phase is reported against (same run, same machine, same generator);
- ``post``: POST a message to one of the bootstrapped chats (each chat has an operator);
- ``history``: GET the first page (25) of a chat's history.

Closed loop: each connection sends its next request when the previous answer arrived,
so the throughput is the server's capacity at that concurrency and the latency the one
seen at that load.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from typing import Any

import orjson
import trio

from bench.client import HttpConnection
from bench.server import ADMIN_TOKEN, bootstrap, cpu_seconds, rss_bytes, start_server

PHASES = ("healthz", "post", "history")
MAX_REQUESTS_PER_CONNECTION = 1_000_000  # a hard bound besides the time limit


def _generator(args: tuple[int, str, int, float, str, list[list[str]], int]) -> dict[str, Any]:
    port, phase, connections, seconds, org_id, chats, seed = args
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        connection = await HttpConnection.open(port, ADMIN_TOKEN)
        deadline = time.perf_counter() + seconds
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                chat_id, user_id = rng.choice(chats)
                started = time.perf_counter()
                if started >= deadline:
                    break
                if phase == "healthz":
                    status, _ = await connection.request("GET", "/healthz")
                elif phase == "post":
                    body = orjson.dumps({"sender_id": user_id, "message": "Hello from the bench"})
                    status, _ = await connection.request(
                        "POST", f"/api/v5/orgs/{org_id}/chats/{chat_id}/messages", body
                    )
                else:
                    status, _ = await connection.request(
                        "GET", f"/api/v5/orgs/{org_id}/chats/{chat_id}/messages?page_size=25"
                    )
                latencies.append((time.perf_counter() - started) * 1000)
                if status >= 400:
                    errors += 1
        finally:
            await connection.aclose()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(worker)

    cpu_before = time.process_time()
    trio.run(main)
    return {"latencies": latencies, "errors": errors, "cpu": time.process_time() - cpu_before}


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(options: Any, progress: Any) -> dict[str, Any]:
    """Every phase against one server per storage mode (``--modes``): ``memory``
    (``--in-memory``) or an ``--fsync`` mode with a data directory."""
    results: dict[str, Any] = {}
    for mode in options.modes:
        extra = ["--in-memory"] if mode == "memory" else ["--fsync", mode]
        results[mode] = _run_mode(options, progress, mode, extra)
    comparisons = {}
    if "always" in results and "off" in results:
        comparisons["post_always_over_off"] = (
            results["always"]["phases"]["post"]["throughput_rps"]
            / results["off"]["phases"]["post"]["throughput_rps"]
        )
    return {"modes": results, "comparisons": comparisons}


def _run_mode(options: Any, progress: Any, mode: str, extra: list[str]) -> dict[str, Any]:
    server = start_server(*extra)
    try:
        world = bootstrap(server, chats=options.chats)
        chats = [list(pair) for pair in world["chats"]]
        results: dict[str, Any] = {}
        context = multiprocessing.get_context("spawn")
        with context.Pool(options.generators) as pool:
            for phase in PHASES:
                task = progress.add_task(f"http [{mode}]: {phase}", total=options.seconds)
                cpu_before, wall_before = cpu_seconds(server.process.pid), time.perf_counter()
                pending = pool.map_async(
                    _generator,
                    [
                        (
                            server.port,
                            phase,
                            options.connections,
                            options.seconds,
                            world["org"]["id"],
                            chats,
                            seed,
                        )
                        for seed in range(options.generators)
                    ],
                )
                while not pending.ready():
                    pending.wait(0.25)
                    progress.update(
                        task, completed=min(options.seconds, time.perf_counter() - wall_before)
                    )
                outputs = pending.get()
                wall = time.perf_counter() - wall_before
                server_cpu = cpu_seconds(server.process.pid) - cpu_before
                latencies = [value for output in outputs for value in output["latencies"]]
                results[phase] = {
                    "requests": len(latencies),
                    "errors": sum(output["errors"] for output in outputs),
                    "throughput_rps": len(latencies) / wall,
                    "p50_ms": percentile(latencies, 0.50),
                    "p95_ms": percentile(latencies, 0.95),
                    "p99_ms": percentile(latencies, 0.99),
                    "server_cpu_s": server_cpu,
                    "server_cpu_ms_per_request": 1000 * server_cpu / max(1, len(latencies)),
                    "generator_cpu_s": sum(output["cpu"] for output in outputs),
                    "wall_s": wall,
                }
                progress.update(task, completed=options.seconds)
        baseline = results["healthz"]["throughput_rps"]
        for phase in PHASES:
            results[phase]["ratio_to_healthz"] = results[phase]["throughput_rps"] / baseline
        return {
            "phases": results,
            "server_args": server.args[1:],
            "server_rss_bytes_end": rss_bytes(server.process.pid),
        }
    finally:
        server.stop()


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = report["result"]["modes"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(modes))
    for offset, (mode, result) in enumerate(modes.items()):
        phases = result["phases"]
        xs = [i + offset * width for i in range(len(PHASES))]
        left.bar(xs, [phases[name]["throughput_rps"] for name in PHASES], width, label=mode)
        right.bar(xs, [phases[name]["p99_ms"] for name in PHASES], width, label=mode)
    for axis, title, unit in (
        (left, "Throughput (closed loop)", "requests / s"),
        (right, "p99 latency", "ms"),
    ):
        axis.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(PHASES))], PHASES)
        axis.set_title(title)
        axis.set_ylabel(unit)
        axis.legend(title="storage")
    figure.suptitle(report["command"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
