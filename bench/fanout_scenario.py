"""`python -m bench fanout`: one chat's messages channel, S subscriber sessions, messages
posted at a rising ladder of rates.

For each step: the offered rate, delivered events/s, the delivery ratio (events
received / messages posted × sessions), end-to-end latency p50/p95/p99 (the message
text carries its send time; every process on this machine shares the clock), the
server's CPU per 1,000 delivered events and its RSS. The ladder stops after the first
step that misses ≥ 99.9 % delivery, p99 ≤ 250 ms, or posting at ≥ 95 % of the offered
rate; the highest passing step is the scenario's figure.

Subscribers live in separate processes (``--generators``), each holding its share of
the sessions with a minimal wsproto client; the publisher posts from this process over
a few keep-alive connections, open loop (on schedule, not waiting for answers).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson
import trio

from bench.client import HttpConnection
from bench.server import ADMIN_TOKEN, bootstrap, cpu_seconds, rss_bytes, start_server
from bench.wsclient import subscribe_and_listen

DEFAULT_LADDER = (5, 10, 20, 40, 60, 80, 120, 160, 240, 320)
DRAIN_SECONDS = 2.0
PUBLISHER_CONNECTIONS = 8
MAX_LATENCY_BUCKET_MS = 60_000


def _subscriber_process(port: int, channel: str, sessions: int, control: Connection) -> None:
    """Hold ``sessions`` sessions; answer 'report <step>' with that step's counts."""
    received: dict[int, int] = {}
    histogram: dict[int, dict[int, int]] = {}
    closes: list[int] = []

    def on_events(events: list[dict[str, Any]]) -> None:
        now = time.time()
        for event in events:
            resource = event.get("resource") or {}
            text = resource.get("message")
            if not text or event["action"] != "added":
                continue
            step, _, sent = text.partition(":")
            step_number = int(step)
            received[step_number] = received.get(step_number, 0) + 1
            bucket = min(MAX_LATENCY_BUCKET_MS, int((now - float(sent)) * 1000))
            counts = histogram.setdefault(step_number, {})
            counts[bucket] = counts.get(bucket, 0) + 1

    async def main() -> None:
        stop = trio.Event()

        async def session(task_status: trio.TaskStatus[None]) -> None:
            code = await subscribe_and_listen(
                port, ADMIN_TOKEN, channel, on_events, stop, task_status=task_status
            )
            if code is not None:
                closes.append(code)

        async with trio.open_nursery() as nursery:
            for _ in range(sessions):
                await nursery.start(session)
            control.send("ready")
            while True:
                command = await trio.to_thread.run_sync(control.recv)
                if command == "stop":
                    stop.set()
                    break
                step = int(command)
                control.send(
                    {
                        "received": received.pop(step, 0),
                        "histogram": histogram.pop(step, {}),
                        "closes": list(closes),
                    }
                )
            nursery.cancel_scope.cancel()

    trio.run(main)
    control.send("stopped")


def _percentile(histogram: dict[int, int], fraction: float) -> float:
    total = sum(histogram.values())
    if total == 0:
        return math.nan
    target = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= target:
            return float(bucket)
    return float(max(histogram))


async def _publish(
    port: int, path: str, user_id: str, step: int, rate: float, seconds: float
) -> int:
    """Post ``rate`` messages a second for ``seconds``, on schedule; returns how many."""
    total = max(1, int(rate * seconds))
    connections = [
        await HttpConnection.open(port, ADMIN_TOKEN) for _ in range(PUBLISHER_CONNECTIONS)
    ]
    start = trio.current_time()
    posted = 0

    async def lane(index: int) -> None:
        nonlocal posted
        for number in range(index, total, PUBLISHER_CONNECTIONS):
            await trio.sleep_until(start + number / rate)
            body = orjson.dumps({"sender_id": user_id, "message": f"{step}:{time.time():.6f}"})
            status, _ = await connections[index].request("POST", path, body)
            if status == 201:
                posted += 1

    async with trio.open_nursery() as nursery:
        for index in range(PUBLISHER_CONNECTIONS):
            nursery.start_soon(lane, index)
    for connection in connections:
        await connection.aclose()
    return posted


def run(options: Any, progress: Any) -> dict[str, Any]:
    server = start_server("--in-memory", "--session-queue", str(options.session_queue))
    pipes: list[Connection] = []
    processes: list[Any] = []
    try:
        world = bootstrap(server, chats=1, users=1)
        chat_id, user_id = world["chats"][0]
        org_id, room_id = world["org"]["id"], world["room"]["id"]
        channel = f"/api/v5/orgs/{org_id}/rooms/{room_id}/chats/{chat_id}/messages"
        context = multiprocessing.get_context("spawn")
        share = [
            options.sessions // options.generators
            + (1 if i < options.sessions % options.generators else 0)
            for i in range(options.generators)
        ]
        connect = progress.add_task(
            f"fanout: connecting {options.sessions} sessions", total=options.generators
        )
        for count in share:
            parent, child = context.Pipe()
            process = context.Process(
                target=_subscriber_process, args=(server.port, channel, count, child)
            )
            process.start()
            pipes.append(parent)
            processes.append(process)
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("subscriber process did not get ready in 120 s")
            assert pipe.recv() == "ready"
            progress.advance(connect)
        steps = []
        ladder = [rate for rate in options.ladder if rate <= options.max_rate]
        task = progress.add_task("fanout: rate ladder", total=len(ladder))
        path = f"/api/v5/orgs/{org_id}/chats/{chat_id}/messages"
        for number, rate in enumerate(ladder, start=1):
            progress.update(task, description=f"fanout: {rate} msg/s × {options.sessions} sessions")
            cpu_before = cpu_seconds(server.process.pid)
            generator_cpu_before = sum(_process_cpu(p.pid) for p in processes)
            started = time.perf_counter()
            posted = trio.run(_publish, server.port, path, user_id, number, rate, options.seconds)
            sending = time.perf_counter() - started
            time.sleep(DRAIN_SECONDS)
            server_cpu = cpu_seconds(server.process.pid) - cpu_before
            generator_cpu = sum(_process_cpu(p.pid) for p in processes) - generator_cpu_before
            received = 0
            histogram: dict[int, int] = {}
            closes: list[int] = []
            for pipe in pipes:
                pipe.send(str(number))
                report = pipe.recv()
                received += report["received"]
                closes += report["closes"]
                for bucket, count in report["histogram"].items():
                    histogram[bucket] = histogram.get(bucket, 0) + count
            expected = posted * options.sessions
            step = {
                "offered_msgs_per_s": rate,
                "posted": posted,
                "posted_per_s": posted / sending,
                "expected_events": expected,
                "received_events": received,
                "delivery_ratio": received / expected if expected else 0.0,
                "delivered_events_per_s": received / sending,
                "p50_ms": _percentile(histogram, 0.50),
                "p95_ms": _percentile(histogram, 0.95),
                "p99_ms": _percentile(histogram, 0.99),
                "server_cpu_s": server_cpu,
                "server_cpu_ms_per_1000_events": 1000 * 1000 * server_cpu / max(1, received),
                "server_cpu_share": server_cpu / (sending + DRAIN_SECONDS),
                "generator_cpu_s": generator_cpu,
                "server_rss_bytes": rss_bytes(server.process.pid),
                "session_closes": len(closes),
            }
            # a step only counts if the offered rate was really sustained: when the
            # server is saturated its answers slow the publisher down
            step["passed"] = (
                step["delivery_ratio"] >= 0.999
                and step["p99_ms"] <= 250
                and step["posted_per_s"] >= 0.95 * rate
            )
            steps.append(step)
            progress.advance(task)
            if not step["passed"]:
                break
        passing = [step for step in steps if step["passed"]]
        best = max(passing, key=lambda s: s["delivered_events_per_s"]) if passing else None
        return {
            "sessions": options.sessions,
            "generators": options.generators,
            "step_seconds": options.seconds,
            "steps": steps,
            "best": best,
            "server_args": server.args[1:],
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
        server.stop()


def _process_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except FileNotFoundError:
        return 0.0


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["result"]["steps"]
    rates = [s["offered_msgs_per_s"] for s in steps]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
    left.plot(rates, [s["delivered_events_per_s"] for s in steps], "o-", label="delivered")
    left.plot(
        rates,
        [s["offered_msgs_per_s"] * report["result"]["sessions"] for s in steps],
        "--",
        color="#999",
        label="offered × sessions",
    )
    left.set_xlabel("messages / s")
    left.set_ylabel("events / s")
    left.set_title("Delivered events / s")
    left.legend()
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        middle.plot(rates, [s[key] for s in steps], "o-", label=key.removesuffix("_ms"))
    middle.axhline(250, color="red", linestyle=":", label="250 ms target")
    middle.set_yscale("log")
    middle.set_xlabel("messages / s")
    middle.set_ylabel("ms (log)")
    middle.set_title("End-to-end latency")
    middle.legend()
    right.plot(rates, [100 * s["delivery_ratio"] for s in steps], "o-", label="delivery %")
    right.axhline(99.9, color="red", linestyle=":", label="99.9 %")
    right.set_xlabel("messages / s")
    right.set_ylabel("%")
    right.set_title("Delivery ratio")
    right.legend()
    figure.suptitle(report["command"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
