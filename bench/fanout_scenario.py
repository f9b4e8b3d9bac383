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

With ``--url`` the ladder runs against a deployment (sessions dealt to its URLs, posts to
``--write-url``); with ``--replicas K`` against a cluster it starts (``run_cluster``).
Where the posts go to a node that holds no subscriber (a cluster's primary), probe
sessions on every node time each message's arrival on the others: the replication lag.
Latency and lag are both read on this machine's clock (the publisher, the subscribers
and the probes all run here), whichever machines the nodes are on.
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
from bench.client import Address, HttpConnection, loopback
from bench.cluster import start_cluster
from bench.common import Error, add_ladder_options, bounded, check_ladder
from bench.deployment import Deployment, scrape
from bench.server import ADMIN_TOKEN, BenchError, bootstrap, cpu_seconds, start_server
from bench.subscriber import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Adapter,
    Tally,
    client_frame,
    parse_frames,
    upgrade_request,
)
from engine import channels

# the ladder stops at a session count's first failing step, so its top serves the
# smallest count (the fastest to pass) and costs the others nothing; from 320 to 960 its
# steps are at most 25 % apart, so a ratio of two ladders' best rates (fanout
# --replicas) is not pushed under 0.8 by the ladder's own coarseness
DEFAULT_LADDER = (
    5, 10, 20, 40, 60, 80, 120, 160, 240, 320, 400, 480, 560, 640, 800, 960, 1280, 1920,
)  # fmt: skip
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
    # a cluster's primary then its replicas: one probe session on each times every
    # message's arrival, for the replication lag (``fanout --replicas``)
    probes: tuple[Address, ...] = ()

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

    def sessions_by_url(self) -> dict[str, float | None] | None:
        """Each node's open sessions (its /metrics), once the subscribers are ready:
        where they went. None for the peers."""
        if self.kind != "engine":
            return None
        found: dict[str, float | None] = {}
        for address in self.deployment.everywhere:
            samples = scrape(address) or {}
            found[address.url] = samples.get("chat_engine_ws_sessions")
        return found

    def publish(self, step: int, rate: float, seconds: float) -> tuple[int, float, Any]:
        """Publish one step, then let it drain for ``DRAIN_SECONDS``: (messages posted,
        seconds spent posting, the replication lag figures or None)."""
        if self.probes:
            return trio.run(self._publish_probed, step, rate, seconds)
        started = time.perf_counter()
        if self.kind == "engine":
            posted = trio.run(
                _publish,
                self.deployment.write,
                self.message_path,
                self.sender_id,
                step,
                rate,
                seconds,
                self.token,
            )
        else:
            posted = trio.run(_publish_ws, self.deployment.write, self.kind, step, rate, seconds)
        sending = time.perf_counter() - started
        time.sleep(DRAIN_SECONDS)
        return posted, sending, None

    async def _publish_probed(
        self, step: int, rate: float, seconds: float
    ) -> tuple[int, float, dict[str, Any]]:
        arrivals = [Arrivals() for _ in self.probes]
        async with trio.open_nursery() as nursery:
            for address, seen in zip(self.probes, arrivals, strict=True):
                with trio.fail_after(PROBE_CONNECT_SECONDS):
                    await nursery.start(_probe, address, self.token, self.channels[0], seen)
            started = time.perf_counter()
            posted = await _publish(
                self.deployment.write,
                self.message_path,
                self.sender_id,
                step,
                rate,
                seconds,
                self.token,
            )
            sending = time.perf_counter() - started
            await trio.sleep(DRAIN_SECONDS)
            nursery.cancel_scope.cancel()
        return posted, sending, replication_lag(arrivals[0], arrivals[1:])


PROBE_CONNECT_SECONDS = 30.0


class Arrivals(Tally):
    """When each of the bench's messages reached one probe session (first arrival)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[str, float] = {}

    def record(self, text: str, now: float) -> None:
        self.times.setdefault(text, now)


async def _probe(
    address: Address,
    token: str,
    channel: str,
    arrivals: Arrivals,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One session on ``address`` subscribed to ``channel``, noting when each message
    arrives; started once the subscription is answered."""
    adapter = Adapter("engine", token, (channel,))
    stream = await trio.open_tcp_stream(*address)
    try:
        buffer = bytearray()
        await stream.send_all(upgrade_request(adapter.path(), address))
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            data = await stream.receive_some(65536)
            if not data:
                raise BenchError(f"{address.url}: the probe's upgrade got no answer")
            buffer += data
        if buffer[9:12] != b"101":
            raise BenchError(f"{address.url}: the probe's upgrade answered {bytes(buffer[9:12])!r}")
        del buffer[: end + 4]
        await stream.send_all(adapter.on_open())
        subscribed = False
        while True:
            for first, payload in parse_frames(buffer):
                opcode = first & 0x0F
                if opcode == OP_PING:
                    await stream.send_all(client_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    return
                elif opcode == OP_TEXT:
                    _, acks = adapter.on_payload(payload, arrivals, time.time())
                    if acks and not subscribed:
                        subscribed = True
                        task_status.started()
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer.extend(data)
    finally:
        await stream.aclose()


def replication_lag(primary: Arrivals, replicas: list[Arrivals]) -> dict[str, Any]:
    """Per message and replica: its arrival on the replica less its arrival on the
    primary (both probe sessions in this process, one clock), in ms; messages the
    primary's probe saw that a replica's never did are counted as missing."""
    lags: list[float] = []
    missing = 0
    for text, seen in primary.times.items():
        for replica in replicas:
            arrived = replica.times.get(text)
            if arrived is None:
                missing += 1
            else:
                lags.append((arrived - seen) * 1000)
    lags.sort()

    def at(fraction: float) -> float | None:
        return lags[min(len(lags) - 1, math.ceil(fraction * len(lags)) - 1)] if lags else None

    return {
        "messages": len(primary.times),
        "samples": len(lags),
        "missing": missing,
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": lags[-1] if lags else None,
    }


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
    by_process_before = target.deployment.cpu_by_process()
    generator_cpu_before = generators.cpu()
    posted, sending, lag = target.publish(number, rate, seconds)
    cpu_after = target.deployment.cpu_seconds()
    by_process_after = target.deployment.cpu_by_process()
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
    if lag is not None:
        step["replication_lag"] = lag
    if by_process_before:  # a cluster: each process's share of the work
        step["cpu_ms_per_1000_events_by_process"] = {
            name: 1000 * 1000 * (by_process_after[name] - before) / max(1, received)
            for name, before in by_process_before.items()
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
        spread = target.sessions_by_url()
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
            "sessions_by_url": spread,
        }
    finally:
        generators.stop()


def run(options: Any, progress: Any) -> dict[str, Any]:
    """The ladder once per session count, each on a fresh server (no history carried
    over from the count before), then at half the best rate (the latency target). With
    ``--url`` each count gets a fresh org and chat on the deployment instead; with
    ``--replicas K``, a fresh cluster (``run_cluster``)."""
    ladder = [rate for rate in options.ladder if rate <= options.max_rate]
    by_sessions: dict[str, Any] = {}
    for sessions in options.sessions:
        if options.replicas:
            by_sessions[str(sessions)] = run_cluster(options, progress, ladder, sessions)
            continue
        server = None
        deployment = options.deployment
        if deployment is None:
            server = start_server("--in-memory", "--session-queue", str(options.session_queue))
            deployment = Deployment.of_server(server)
        target = engine_target(deployment)
        if deployment.write not in deployment.addresses:
            # the posts go to a node no subscriber is on (a cluster's primary, with the
            # sessions on its replicas): probe the lag from it to each of the others
            target.probes = (deployment.write, *dict.fromkeys(deployment.addresses))
        try:
            result = run_ladder(
                target,
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
            result["top_of_ladder"] = _top(result, ladder)
            by_sessions[str(sessions)] = result
        finally:
            if server is not None:
                server.stop()
    return {
        "sessions": options.sessions,
        "ladder": ladder,
        "generators": options.generators,
        "step_seconds": options.seconds,
        "replicas": options.replicas,
        "by_sessions": by_sessions,
    }


def _top(result: dict[str, Any], ladder: list[float]) -> bool:
    return bool(result["best"]) and result["best"]["offered_msgs_per_s"] >= ladder[-1]


def _best_events(result: dict[str, Any]) -> float:
    return result["best"]["delivered_events_per_s"] if result["best"] else 0.0


def run_cluster(options: Any, progress: Any, ladder: list[float], sessions: int) -> dict[str, Any]:
    """A fresh cluster (Redis, a primary, ``--replicas`` replicas, all in memory): the
    ladder first with the subscribers on the primary (its own fan-out, the baseline),
    then with them spread over the replicas while the posts still go to the primary.
    During the replicas' steps one probe session on the primary and one on each replica
    time every message: the replication lag. The figures: each ladder's best delivered
    events/s and their ratio (replicas over primary), and the lag's p50/p99."""
    queue = ("--session-queue", str(options.session_queue))
    task = progress.add_task(f"fanout × {sessions}: starting a cluster", total=None)
    cluster = start_cluster(options.replicas, "--in-memory", *queue, replica_flags=queue)
    progress.remove_task(task)
    try:
        primary = run_ladder(
            engine_target(cluster.on_primary()),
            sessions,
            options.generators,
            ladder,
            options.seconds,
            progress,
            f"fanout × {sessions} on the primary",
        )
        primary["top_of_ladder"] = _top(primary, ladder)
        target = engine_target(cluster.on_replicas())
        target.probes = tuple(loopback(node.port) for node in cluster.nodes)
        result = run_ladder(
            target,
            sessions,
            options.generators,
            ladder,
            options.seconds,
            progress,
            f"fanout × {sessions} on {options.replicas} replicas",
            half_rate_check=True,
        )
    finally:
        cluster.stop()
    result["top_of_ladder"] = _top(result, ladder)
    result["server_args"] = cluster.primary.args[1:]
    result["replica_args"] = [replica.args[1:] for replica in cluster.replicas]
    result["on_primary"] = primary
    baseline = _best_events(primary)
    result["replicas_over_primary"] = _best_events(result) / baseline if baseline else None
    lags = [step["replication_lag"] for step in result["steps"] if "replication_lag" in step]
    best = result["best"]
    result["replication_lag_at_best"] = best["replication_lag"] if best else None
    result["replication_lag_p99_ms_max"] = max(
        (lag["p99_ms"] for lag in lags if lag["p99_ms"] is not None), default=None
    )
    return result


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
    for label, sessions, run in _series(report):
        steps = run["steps"]
        rates = [s["offered_msgs_per_s"] for s in steps]
        line = left.plot(rates, [s["delivered_events_per_s"] for s in steps], "o-", label=label)[0]
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
        lags = [(rate, s.get("replication_lag")) for rate, s in zip(rates, steps, strict=True)]
        lags = [(rate, lag["p99_ms"]) for rate, lag in lags if lag and lag.get("samples")]
        if lags:
            middle.plot(*zip(*lags, strict=True), "x--", color=color, alpha=0.7)
        right.plot(rates, [100 * s["delivery_ratio"] for s in steps], "o-", label=label)
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
        Line2D([], [], color="#555", marker="x", linestyle="--", label="replication lag p99"),
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


def _series(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """The ladders to draw: one a session count; with ``--replicas``, the primary's own
    (P) beside the replicas' (R)."""
    series = []
    for sessions, run in report["result"]["by_sessions"].items():
        primary = run.get("on_primary")
        if primary is None:
            series.append((f"{sessions} sessions", sessions, run))
            continue
        replicas = report["result"].get("replicas")
        series.append((f"{sessions} on the primary (P)", sessions, primary))
        series.append((f"{sessions} on {replicas} replica(s) (R)", sessions, run))
    return series


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
    parser.add_argument(
        "--replicas",
        type=bounded(int, 1, 8),
        default=None,
        metavar="K",
        help="start a cluster instead (redis-server from PATH, a primary, K replicas, 1-8): "
        "the ladder on the primary's own sessions, then with the sessions spread over the "
        "replicas and the posts on the primary; reports both, their ratio and the "
        "replication lag",
    )


def check_options(options: argparse.Namespace, error: Error) -> None:
    check_ladder(options, error)
    if options.replicas and options.url is not None:
        error("--replicas starts its own cluster; not with --url")


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
        # with --replicas: the primary's own ladder first, then the replicas'
        ladders = [(sessions, run)]
        if "on_primary" in run:
            ladders = [(f"{sessions} P", run["on_primary"]), (f"{sessions} R", run)]
        for label, ladder in ladders:
            for index, step in enumerate(ladder["steps"]):
                shown.add_row(
                    label if index == 0 else "",
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
                    end_section=index == len(ladder["steps"]) - 1,
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
        if "on_primary" in run:
            ratio = run["replicas_over_primary"]
            lag = run["replication_lag_at_best"] or {}
            captions.append(
                f"{sessions}: P = on the primary, R = on {result['replicas']} replica(s); "
                f"R/P best events/s = {common.figure(ratio, '.2f')}; replication lag at "
                f"R's best: p50 {common.figure(lag.get('p50_ms'), '.1f')} / p99 "
                f"{common.figure(lag.get('p99_ms'), '.1f')} ms, {lag.get('missing', 0)} missing"
            )
    shown.caption = "\n".join(captions)
    return shown
