"""`python -m bench fanout`: one chat's messages channel, S subscriber sessions, messages
posted at a rising ladder of rates.

For each step: the offered rate, delivered events/s, the delivery ratio (events
received / messages posted × sessions), end-to-end latency p50/p95/p99 (the message
text carries its send time; every process on this machine shares the clock), the
server's CPU per 1,000 delivered events and its RSS. The ladder stops after the first
step that misses ≥ 99.9 % delivery, p99 ≤ 250 ms, or posting at ≥ 95 % of the offered
rate; the highest passing step is the scenario's figure. Each subscriber count of
``--sessions`` (default 100, 500 and 1,000) climbs the ladder on a fresh server, then
runs one more step at half its best rate.

Subscribers live in separate processes (``--generators``), each holding its share of
the sessions on one epoll loop (``bench/subscriber.py``); the publisher posts from this
process over a few keep-alive connections, open loop (on schedule, not waiting for
answers). ``python -m bench compare`` runs the same ladder against two peer servers.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson
import trio
from rich.table import Table

from bench import common, subscriber
from bench.client import Address, HttpConnection
from bench.common import Error, add_ladder_options, check_ladder
from bench.deployment import Deployment
from bench.server import ADMIN_TOKEN, bootstrap, cpu_seconds, start_server
from bench.subscriber import (
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Adapter,
    client_frame,
    parse_frames,
    upgrade_request,
)
from engine import channels

# the ladder stops at a session count's first failing step, so its top serves the
# smallest count (the fastest to pass) and costs the others nothing
DEFAULT_LADDER = (5, 10, 20, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920)
DEFAULT_SESSIONS = (100, 500, 1000)
DRAIN_SECONDS = 2.0
PUBLISHER_CONNECTIONS = 8
PUBLISH_GRACE_SECONDS = 30.0


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
    address: Address,
    path: str,
    user_id: str,
    step: int,
    rate: float,
    seconds: float,
    token: str = ADMIN_TOKEN,
) -> int:
    """Post ``rate`` messages a second for ``seconds``, on schedule; returns how many."""
    total = max(1, int(rate * seconds))
    connections = [await HttpConnection.open(address, token) for _ in range(PUBLISHER_CONNECTIONS)]
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

    # bounded: a server that stops answering leaves posts uncounted, and the step fails
    # on its posted rate instead of hanging the run
    with trio.move_on_after(seconds + PUBLISH_GRACE_SECONDS):
        async with trio.open_nursery() as nursery:
            for index in range(PUBLISHER_CONNECTIONS):
                nursery.start_soon(lane, index)
    for connection in connections:
        await connection.aclose()
    return posted


async def _publish_ws(address: Address, kind: str, step: int, rate: float, seconds: float) -> int:
    """The same schedule over one WebSocket connection (socketio / websockets peers)."""
    total = max(1, int(rate * seconds))
    stream = await trio.open_tcp_stream(*address)
    buffer = bytearray()
    await stream.send_all(upgrade_request(Adapter(kind).path(), address))
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        buffer += await stream.receive_some(65536)
    assert buffer[9:12] == b"101", bytes(buffer[:200])
    del buffer[: end + 4]
    joined = trio.Event()
    if kind != "socketio":
        joined.set()
    posted = 0

    async def read() -> None:
        while True:
            for first, payload in parse_frames(buffer):
                if first & 0x0F == OP_PING:
                    await stream.send_all(client_frame(OP_PONG, payload))
                elif payload == b"2":  # Engine.IO ping
                    await stream.send_all(client_frame(OP_TEXT, b"3"))
                elif payload.startswith(b"0{"):  # Engine.IO open: join the namespace
                    await stream.send_all(client_frame(OP_TEXT, b"40"))
                elif payload.startswith(b"40"):
                    joined.set()
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer.extend(data)

    async def send() -> None:
        nonlocal posted
        await joined.wait()
        start = trio.current_time()
        for number in range(total):
            await trio.sleep_until(start + number / rate)
            text = f"{step}:{time.time():.6f}"
            payload = orjson.dumps(["post", text]) if kind == "socketio" else text.encode()
            if kind == "socketio":
                payload = b"42" + payload
            await stream.send_all(client_frame(OP_TEXT, payload))
            posted += 1
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(send)
    await stream.aclose()
    return posted


WRITE_COUNTERS = ("chat_engine_ws_write_passes_total", "chat_engine_ws_write_seconds_total")
FRAMES_COUNTER = "chat_engine_ws_frames_total"


@dataclass
class Target:
    """A server under test: how to subscribe to it and how to publish to it. Its
    ``deployment`` says where the subscribers connect (spread over its addresses), where
    the publisher posts (its write address), and where the server's CPU and memory are
    read (the pids the bench started, or /metrics)."""

    kind: str  # engine | socketio | websockets
    deployment: Deployment
    channels: tuple[str, ...] = ()
    message_path: str = ""
    sender_id: str = ""

    @property
    def token(self) -> str:
        return self.deployment.token

    def write_stats(self) -> dict[str, float] | None:
        """The engine's write-pass counters from /metrics (None for the peers)."""
        if self.kind != "engine":
            return None
        found = self.deployment.counters((*WRITE_COUNTERS, FRAMES_COUNTER))
        if found is None:
            return None
        return {
            "passes": found[WRITE_COUNTERS[0]],
            "seconds": found[WRITE_COUNTERS[1]],
            "frames": found[FRAMES_COUNTER],
        }

    def publish(self, step: int, rate: float, seconds: float) -> int:
        write = self.deployment.write
        if self.kind == "engine":
            return trio.run(
                _publish,
                write,
                self.message_path,
                self.sender_id,
                step,
                rate,
                seconds,
                self.token,
            )
        return trio.run(_publish_ws, write, self.kind, step, rate, seconds)


def engine_target(deployment: Deployment) -> Target:
    """A fresh org with one chat (an operator present) whose messages are fanned out."""
    world = bootstrap(deployment, chats=1, users=1, name=deployment.name("Fanout"))
    chat_id, user_id = world["chats"][0]
    org_id, room_id = world["org"]["id"], world["room"]["id"]
    return Target(
        "engine",
        deployment,
        channels=(channels.sub(channels.room_chats(org_id, room_id), chat_id, "messages"),),
        message_path=f"/api/v5/orgs/{org_id}/chats/{chat_id}/messages",
        sender_id=user_id,
    )


REPORT_TIMEOUT = 60.0


def collect_reports(
    pipes: list[Connection], step: int
) -> tuple[int, dict[int, int], list[int], list[str]]:
    """Ask every subscriber process for ``step``'s counts and merge them: received,
    the latency histogram, close codes, error codes. A process that does not answer
    within ``REPORT_TIMEOUT`` fails the run instead of hanging it."""
    received = 0
    histogram: dict[int, int] = {}
    closes: list[int] = []
    errors: list[str] = []
    for pipe in pipes:
        pipe.send(str(step))
        if not pipe.poll(REPORT_TIMEOUT):
            raise RuntimeError(f"a subscriber process did not report in {REPORT_TIMEOUT:g} s")
        report = pipe.recv()
        received += report["received"]
        closes += report["closes"]
        errors += report["errors"]
        for bucket, count in report["histogram"].items():
            histogram[bucket] = histogram.get(bucket, 0) + count
    return received, histogram, closes, errors


class Generators:
    """Subscriber processes holding ``sessions`` sessions between them."""

    def __init__(self, target: Target, sessions: int, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        first = 0  # sessions are spread over the addresses round-robin, across processes
        for index in range(count):
            share = sessions // count + (1 if index < sessions % count else 0)
            addresses = [target.deployment.spread(first + number) for number in range(share)]
            first += share
            parent, child = context.Pipe()
            process = context.Process(
                target=subscriber.process_main,
                args=(addresses, target.kind, target.token, target.channels, share, child),
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def wait_ready(self, progress: Any, task: Any) -> None:
        for pipe in self.pipes:
            if not pipe.poll(120):
                raise RuntimeError("a subscriber process did not get ready in 120 s")
            answer = pipe.recv()
            if answer != "ready":
                raise RuntimeError(f"subscriber process: {answer}")
            progress.advance(task)

    def cpu(self) -> float:
        return sum(_process_cpu(p.pid) for p in self.processes)

    def report(self, step: int) -> tuple[int, dict[int, int], list[int]]:
        received, histogram, closes, _ = collect_reports(self.pipes, step)
        return received, histogram, closes

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send("stop")
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def run_step(
    target: Target, generators: Generators, number: int, rate: float, seconds: float, sessions: int
) -> dict[str, Any]:
    writes_before = target.write_stats()
    cpu_before = target.deployment.cpu_seconds()
    generator_cpu_before = generators.cpu()
    started = time.perf_counter()
    posted = target.publish(number, rate, seconds)
    sending = time.perf_counter() - started
    time.sleep(DRAIN_SECONDS)
    cpu_after = target.deployment.cpu_seconds()
    # None: not readable (a deployment whose /metrics has no process_* series)
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    writes_after = target.write_stats()
    generator_cpu = generators.cpu() - generator_cpu_before
    received, histogram, closes = generators.report(number)
    expected = posted * sessions
    step: dict[str, Any] = {
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
        "server_cpu_ms_per_1000_events": None
        if server_cpu is None
        else 1000 * 1000 * server_cpu / max(1, received),
        "server_cpu_share": None if server_cpu is None else server_cpu / (sending + DRAIN_SECONDS),
        "generator_cpu_s": generator_cpu,
        "server_rss_bytes": target.deployment.rss_bytes(),
        "session_closes": len(closes),
    }
    if writes_before and writes_after:  # the engine's write passes (its /metrics)
        passes = writes_after["passes"] - writes_before["passes"]
        writing = writes_after["seconds"] - writes_before["seconds"]
        step["write_passes"] = passes
        step["write_pass_ms"] = 1000 * writing / passes if passes else 0.0
        step["frames_per_pass"] = (
            (writes_after["frames"] - writes_before["frames"]) / passes if passes else 0.0
        )
        step["write_share"] = writing / (sending + DRAIN_SECONDS)
    # a step only counts if the offered rate was really sustained: when the server is
    # saturated its answers slow the publisher down
    step["passed"] = (
        step["delivery_ratio"] >= 0.999
        and step["p99_ms"] <= 250
        and step["posted_per_s"] >= 0.95 * rate
    )
    return step


def run_ladder(
    target: Target,
    sessions: int,
    generator_count: int,
    ladder: list[float],
    seconds: float,
    progress: Any,
    label: str,
    *,
    half_rate_check: bool = False,
) -> dict[str, Any]:
    """Connect, climb the ladder until a step fails; optionally re-run at half the best."""
    connect = progress.add_task(f"{label}: connecting {sessions} sessions", total=generator_count)
    generators = Generators(target, sessions, generator_count)
    try:
        generators.wait_ready(progress, connect)
        steps = []
        task = progress.add_task(f"{label}: rate ladder", total=len(ladder))
        for number, rate in enumerate(ladder, start=1):
            progress.update(task, description=f"{label}: {rate:g} msg/s × {sessions} sessions")
            step = run_step(target, generators, number, rate, seconds, sessions)
            steps.append(step)
            progress.advance(task)
            if not step["passed"]:
                break
        passing = [step for step in steps if step["passed"]]
        best = max(passing, key=lambda s: s["offered_msgs_per_s"]) if passing else None
        half = None
        if half_rate_check and best is not None:
            rate = best["offered_msgs_per_s"] / 2
            progress.update(task, description=f"{label}: half rate, {rate:g} msg/s")
            half = run_step(target, generators, len(ladder) + 1, rate, seconds, sessions)
        return {
            "kind": target.kind,
            "sessions": sessions,
            "generators": generator_count,
            "step_seconds": seconds,
            "steps": steps,
            "best": best,
            "half_rate": half,
        }
    finally:
        generators.stop()


def run(options: Any, progress: Any) -> dict[str, Any]:
    """The ladder once per session count, each on a fresh server (no history carried
    over from the count before), then at half the best rate (the latency target). With
    ``--url`` each count gets a fresh org and chat on the deployment instead."""
    ladder = [rate for rate in options.ladder if rate <= options.max_rate]
    by_sessions: dict[str, Any] = {}
    for sessions in options.sessions:
        server = None
        deployment = options.deployment
        if deployment is None:
            server = start_server("--in-memory", "--session-queue", str(options.session_queue))
            deployment = Deployment.of_server(server)
        try:
            result = run_ladder(
                engine_target(deployment),
                sessions,
                options.generators,
                ladder,
                options.seconds,
                progress,
                f"fanout × {sessions}",
                half_rate_check=True,
            )
            if server is not None:
                result["server_args"] = server.args[1:]
            result["top_of_ladder"] = bool(result["best"]) and (
                result["best"]["offered_msgs_per_s"] >= ladder[-1]
            )
            by_sessions[str(sessions)] = result
        finally:
            if server is not None:
                server.stop()
    return {
        "sessions": options.sessions,
        "ladder": ladder,
        "generators": options.generators,
        "step_seconds": options.seconds,
        "by_sessions": by_sessions,
    }


def _process_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except FileNotFoundError:
        return 0.0


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4))
    lowest = 99.0
    for sessions, run in report["result"]["by_sessions"].items():
        steps = run["steps"]
        rates = [s["offered_msgs_per_s"] for s in steps]
        line = left.plot(
            rates, [s["delivered_events_per_s"] for s in steps], "o-", label=f"{sessions} sessions"
        )[0]
        left.plot(
            rates,
            [s["offered_msgs_per_s"] * int(sessions) for s in steps],
            "--",
            color=line.get_color(),
            alpha=0.4,
        )
        color = line.get_color()
        middle.plot(rates, [s["p99_ms"] for s in steps], "o-", color=color)
        middle.plot(rates, [s["p50_ms"] for s in steps], ":", color=color)
        half = run["half_rate"]
        if half is not None:
            middle.plot(
                [half["offered_msgs_per_s"]],
                [half["p99_ms"]],
                "*",
                markersize=13,
                color=color,
            )
        right.plot(rates, [100 * s["delivery_ratio"] for s in steps], "o-", label=str(sessions))
        lowest = min([lowest, *(100 * s["delivery_ratio"] for s in steps)])
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("messages / s (log)")
    left.set_ylabel("events / s (log)")
    left.set_title("Delivered events / s (dashed: offered)")
    left.legend()
    middle.axhline(250, color="red", linestyle="--", linewidth=0.8)
    middle.axhline(50, color="#c60", linestyle="--", linewidth=0.8)
    # colours are the session counts (left legend); this one explains the marks
    marks = [
        Line2D([], [], color="#555", marker="o", label="p99"),
        Line2D([], [], color="#555", linestyle=":", label="p50"),
        Line2D(
            [],
            [],
            color="#555",
            marker="*",
            markersize=11,
            linestyle="",
            label="p99 at half the best rate",
        ),
        Line2D([], [], color="red", linestyle="--", label="250 ms (a step passes)"),
        Line2D([], [], color="#c60", linestyle="--", label="50 ms (half-rate target)"),
    ]
    middle.set_xscale("log")
    middle.set_yscale("log")
    middle.set_xlabel("messages / s (log)")
    middle.set_ylabel("ms (log)")
    middle.set_title("End-to-end latency")
    middle.legend(handles=marks, fontsize=7, loc="upper left")
    right.axhline(99.9, color="red", linestyle=":", label="99.9 %")
    right.set_ylim(lowest - 0.5, 100.3)
    right.set_xscale("log")
    right.set_xlabel("messages / s (log)")
    right.set_ylabel("%")
    right.set_title("Delivery ratio")
    right.legend()
    figure.suptitle(report["command"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


HELP = "S sessions on one messages channel, rising message rates"


def add_options(parser: argparse.ArgumentParser) -> None:
    add_ladder_options(
        parser,
        ladder=DEFAULT_LADDER,
        seconds=5.0,
        max_rate=2000.0,
        sessions=list(DEFAULT_SESSIONS),
        sessions_help="comma-separated subscriber counts (up to 4, each 1-10,000), "
        "each on a fresh server",
    )


def check_options(options: argparse.Namespace, error: Error) -> None:
    check_ladder(options, error)


def table(result: dict[str, Any], command: str) -> Table:
    """One row per step, grouped by session count; narrow enough for 80 columns."""
    shown = common.table(
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
            shown.add_row(
                sessions if index == 0 else "",
                f"{step['offered_msgs_per_s']:g}",
                f"{step['delivered_events_per_s']:,.0f}",
                f"{100 * step['delivery_ratio']:.2f}%",
                f"{step['p50_ms']:.0f}/{step['p99_ms']:.0f}",
                common.figure(step["server_cpu_ms_per_1000_events"], ".1f"),
                "–"
                if step["server_cpu_share"] is None
                else f"{100 * step['server_cpu_share']:.0f}%",
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
    shown.caption = "\n".join(captions)
    return shown
