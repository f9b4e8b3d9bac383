"""`python -m bench http`: throughput and latency of the HTTP API's main calls, alone
and mixed.

Phases, each run for ``--seconds`` with ``--connections`` keep-alive connections in each
of ``--generators`` load-generator processes:

- ``healthz``: GET /healthz, the server's floor cost per request: the **baseline**
  every other phase is reported against (same run, same machine, same generator);
- ``post``: POST a message to one of the bootstrapped chats (each chat has an operator);
- ``history``: GET the first page (25) of a chat's history;
- ``report``: GET an org's chat report (``GET /orgs/{org}/chats``, 25 chats in rich
  form a page, each with its whole history), turning through four queries: the
  default, ``ordering=-start_time``, ``is_real_conversation=true`` and
  ``min_message_count=1``. The report's org is a second one, with ``REPORT_CHATS``
  chats of ``REPORT_MESSAGES`` messages each (half from the visitor), so that what a
  page holds does not depend on how many posts the other phases made;
- ``mix``: each request drawn at random, ``MIX`` weights: 2 posts, 5 history pages and
  3 report pages in 10; latency is also given per kind;
- ``post_again`` then ``post_webhook`` (with ``--webhook``, last): ``post`` twice more,
  the second time once the org has a webhook endpoint subscribed to
  ``message.created`` (a receiver in its own process on 127.0.0.1, answering 204).
  ``post_webhook_over_post`` compares these two neighbouring phases of one run (the
  first ``post`` ran on a smaller state): what delivery costs the writes (it never sits
  on their path, but shares the CPU).
  How many of the phase's messages the receiver got (by the end of the phase and
  within 60 s after it) is reported too.

Closed loop: each connection sends its next request when the previous answer arrived,
so the throughput is the server's capacity at that concurrency and the latency the one
seen at that load. The generator is one epoll loop per process
(``bench.client.closed_loop``), so that it costs less than the server even for
``healthz``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import time
from typing import Any

import httpx
import orjson
from rich.table import Table

from bench import common
from bench.client import closed_loop, request_bytes
from bench.common import GENERATORS, bounded
from bench.server import ADMIN_TOKEN, bootstrap, cpu_seconds, rss_bytes, start_server

PHASES = ("healthz", "post", "history", "report", "mix")
KINDS = ("post", "history", "report")
MIX = {"post": 2, "history": 5, "report": 3}
REPORT_QUERIES = (
    "page_size=25",
    "page_size=25&ordering=-start_time",
    "page_size=25&is_real_conversation=true",
    "page_size=25&min_message_count=1",
)
REPORT_CHATS = 50
REPORT_MESSAGES = 20
MAX_REQUESTS_PER_GENERATOR = 10_000_000  # a hard bound besides the time limit
GENERATOR_GRACE_SECONDS = 90.0  # beyond --seconds: start-up, and closed_loop's own 30 s

GeneratorArgs = tuple[int, str, int, float, str, list[list[str]], int, str]


def _generator(args: GeneratorArgs) -> dict[str, Any]:
    port, phase, connections, seconds, org_id, chats, seed, report_org_id = args
    rng = random.Random(seed)
    base = f"/api/v5/orgs/{org_id}"
    healthz = request_bytes("GET", "/healthz", None, port, ADMIN_TOKEN)
    reports = [
        request_bytes("GET", f"/api/v5/orgs/{report_org_id}/chats?{query}", None, port, ADMIN_TOKEN)
        for query in REPORT_QUERIES
    ]
    kinds, weights = list(MIX), list(MIX.values())

    def make(kind: str) -> tuple[str, bytes]:
        if kind == "healthz":
            return kind, healthz
        if kind == "report":
            return kind, rng.choice(reports)
        chat_id, user_id = rng.choice(chats)
        if kind == "post":
            body = orjson.dumps({"sender_id": user_id, "message": "Hello from the bench"})
            path = f"{base}/chats/{chat_id}/messages"
            return kind, request_bytes("POST", path, body, port, ADMIN_TOKEN)
        path = f"{base}/chats/{chat_id}/messages?page_size=25"
        return kind, request_bytes("GET", path, None, port, ADMIN_TOKEN)

    def next_request() -> tuple[str, bytes]:
        if phase == "mix":
            return make(rng.choices(kinds, weights)[0])
        return make("post" if phase in ("post_again", "post_webhook") else phase)

    cpu_before = time.process_time()
    samples, errors = closed_loop(
        port, connections, seconds, next_request, max_requests=MAX_REQUESTS_PER_GENERATOR
    )
    return {"samples": samples, "errors": errors, "cpu": time.process_time() - cpu_before}


def _report_org(server: Any) -> str:
    """A second org for the report phase: ``REPORT_CHATS`` chats, each with an operator
    present and ``REPORT_MESSAGES`` messages, the operator and the visitor in turn."""
    admin = {"Authorization": f"Token {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.base_url, headers=admin, timeout=30) as client:
        org = client.post("/api/v5/orgs", json={"name": "Report"}).json()
        base = f"/api/v5/orgs/{org['id']}"
        room = client.post(f"{base}/rooms", json={"name": "Report room"}).json()
        users = [
            client.post(
                f"{base}/users",
                json={"first_name": f"Op{i}", "last_name": "Report", "alias": f"op{i}"},
            ).json()["id"]
            for i in range(4)
        ]
        for index in range(REPORT_CHATS):
            visitor = client.post(f"{base}/visitors", json={}).json()
            user_id = users[index % len(users)]
            chat = client.post(
                f"{base}/rooms/{room['id']}/visitors/{visitor['id']}/chats",
                params={"auto_resume": user_id},
            ).json()
            as_visitor = {"Authorization": f"Token {visitor['token']}"}
            visitor_path = f"/api/v5/client/visitors/{visitor['id']}/chats/{chat['id']}/messages"
            for number in range(REPORT_MESSAGES):
                if number % 2:
                    response = client.post(
                        visitor_path, json={"message": f"Visitor line {number}"}, headers=as_visitor
                    )
                else:
                    response = client.post(
                        f"{base}/chats/{chat['id']}/messages",
                        json={"sender_id": user_id, "message": f"Operator line {number}"},
                    )
                response.raise_for_status()
    return str(org["id"])


def _receive(port: Any, received: Any) -> None:
    """The webhook receiver's process: counts deliveries, answers 204. A bare asyncio
    protocol (it reads ``Content-Length`` and nothing else), so that the receiver, which
    shares the machine's cores with the server, costs as little CPU as it can."""

    class Receiver(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                length = 0
                for line in self.buffer[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                with received.get_lock():
                    received.value += 1
                self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Receiver, "127.0.0.1", 0)
        port.value = server.sockets[0].getsockname()[1]
        await server.serve_forever()

    asyncio.run(serve())


def _webhook_receiver(context: Any) -> tuple[Any, Any, int]:
    port, received = context.Value("i", 0), context.Value("q", 0)
    process = context.Process(target=_receive, args=(port, received), daemon=True)
    process.start()
    deadline = time.perf_counter() + 30
    while port.value == 0:
        if time.perf_counter() > deadline or not process.is_alive():
            raise RuntimeError("the webhook receiver did not start")
        time.sleep(0.05)
    return process, received, port.value


def _register_webhook(server: Any, org_id: str, port: int) -> None:
    admin = {"Authorization": f"Token {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.base_url, headers=admin, timeout=30) as client:
        response = client.post(
            f"/api/v5/orgs/{org_id}/webhooks",
            json={
                "url": f"http://127.0.0.1:{port}/hook",
                "events": ["message.created"],
                "secret": "bench-webhook-secret-0123",
            },
        )
        response.raise_for_status()


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
        if options.webhook:
            extra += ["--webhook-allow", "127.0.0.1"]
        results[mode] = _run_mode(options, progress, mode, extra)
    comparisons = {}
    for mode, result in results.items():
        phases = result["phases"]
        if "post_webhook" in phases:
            comparisons[f"post_webhook_over_post [{mode}]"] = (
                phases["post_webhook"]["throughput_rps"] / phases["post_again"]["throughput_rps"]
            )
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
        report_org_id = _report_org(server)
        results: dict[str, Any] = {}
        context = multiprocessing.get_context("spawn")
        phases = (*PHASES, "post_again", "post_webhook") if options.webhook else PHASES
        receiver = None
        with context.Pool(options.generators) as pool:
            for phase in phases:
                if phase == "post_webhook":
                    receiver, received, receiver_port = _webhook_receiver(context)
                    _register_webhook(server, world["org"]["id"], receiver_port)
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
                            report_org_id,
                        )
                        for seed in range(options.generators)
                    ],
                )
                # the generators stop themselves within --seconds + 30 s (closed_loop)
                give_up = time.perf_counter() + options.seconds + GENERATOR_GRACE_SECONDS
                while not pending.ready():
                    if time.perf_counter() > give_up:
                        raise RuntimeError(f"{phase}: the load generators did not finish")
                    pending.wait(0.25)
                    progress.update(
                        task, completed=min(options.seconds, time.perf_counter() - wall_before)
                    )
                outputs = pending.get()
                wall = time.perf_counter() - wall_before
                server_cpu = cpu_seconds(server.process.pid) - cpu_before
                samples = [sample for output in outputs for sample in output["samples"]]
                latencies = [ms for _, ms in samples]
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
                if phase == "post_webhook":
                    results[phase]["webhooks_received_in_phase"] = received.value
                    drain_until = time.perf_counter() + 60
                    while received.value < len(latencies) and time.perf_counter() < drain_until:
                        time.sleep(0.1)
                    results[phase]["webhooks_received_within_60s"] = received.value
                if phase == "mix":
                    results[phase]["by_kind"] = {
                        kind: {
                            "requests": len(mine),
                            "p50_ms": percentile(mine, 0.50),
                            "p99_ms": percentile(mine, 0.99),
                        }
                        for kind in KINDS
                        if (mine := [ms for name, ms in samples if name == kind])
                    }
                progress.update(task, completed=options.seconds)
        if receiver is not None:
            receiver.terminate()
            receiver.join(10)
        baseline = results["healthz"]["throughput_rps"]
        for phase in phases:
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


HELP = "message POST, history and report GETs, alone and mixed, vs /healthz"
STORAGE_MODES = ("memory", "always", "interval", "off")


def _modes(text: str) -> list[str]:
    modes = text.split(",")
    unknown = [mode for mode in modes if mode not in STORAGE_MODES]
    if unknown or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(
            f"distinct values among {', '.join(STORAGE_MODES)}, not {text!r}"
        )
    return modes


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=bounded(float, 0.5, 120), default=8.0, help="per phase (0.5-120)"
    )
    parser.add_argument(
        "--connections",
        type=bounded(int, 1, 500),
        default=16,
        help="per generator process (1-500)",
    )
    parser.add_argument(
        "--generators", type=GENERATORS, default=1, help="load-generator processes (1-8)"
    )
    parser.add_argument(
        "--chats",
        type=bounded(int, 1, 10_000),
        default=50,
        help="chats to spread the load over (1-10,000)",
    )
    parser.add_argument(
        "--modes",
        type=_modes,
        default=["always", "off"],
        help="storage modes, comma-separated: memory, always, interval, off",
    )
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="add two phases: post_again, then post_webhook with a webhook endpoint "
        "subscribed to message.created (reported against post_again)",
    )


def table(result: dict[str, Any], command: str) -> Table:
    shown = common.table(
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
            shown.add_row(
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
        hooked = outcome["phases"].get("post_webhook")
        if hooked:
            notes.append(
                f"post_webhook ({mode}): {hooked['requests']} posts, "
                f"{hooked['webhooks_received_in_phase']} delivered by the phase's end, "
                f"{hooked['webhooks_received_within_60s']} within 60 s after"
            )
    shown.caption = "\n".join(notes)
    return shown
