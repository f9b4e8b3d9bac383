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
  within 60 s after it) is reported too. Only on servers the bench starts (they are
  given ``--webhook-allow 127.0.0.1``), not with ``--url``; with ``--redis`` the
  shipping primary runs them too.

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
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from rich.markup import escape
from rich.table import Table

from bench import common
from bench.client import Address, closed_loop, request_bytes
from bench.common import GENERATORS, Error, bounded
from bench.deployment import Deployment
from bench.redisproc import start_redis
from bench.server import admin_headers, bootstrap, created, start_server

PHASES = ("healthz", "post", "history", "report", "mix")
WEBHOOK_PHASES = ("post_again", "post_webhook")  # with --webhook, after PHASES; both post
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


@dataclass(frozen=True)
class GeneratorArgs:
    addresses: list[Address]  # every address a request may go to
    reads: int  # the first ``reads`` of them take the reads, round-robin
    write: int  # the index of the write address
    token: str
    phase: str
    connections: int
    seconds: float
    org_id: str
    chats: list[list[str]]
    seed: int  # also the generator's number: its slots' place in the round-robin
    report_org_id: str


def _generator(args: GeneratorArgs) -> dict[str, Any]:
    rng = random.Random(args.seed)
    base = f"/api/v5/orgs/{args.org_id}"
    addresses, token = args.addresses, args.token
    healthz = [request_bytes("GET", "/healthz", None, address, token) for address in addresses]
    reports = [
        [
            request_bytes(
                "GET", f"/api/v5/orgs/{args.report_org_id}/chats?{query}", None, address, token
            )
            for query in REPORT_QUERIES
        ]
        for address in addresses
    ]
    kinds, weights = list(MIX), list(MIX.values())

    def make(kind: str, slot: int) -> tuple[str, int, bytes]:
        # reads are spread over the read addresses, one per slot; writes go to the write one
        read = (args.seed * args.connections + slot) % args.reads
        if kind == "healthz":
            return kind, read, healthz[read]
        if kind == "report":
            return kind, read, rng.choice(reports[read])
        chat_id, user_id = rng.choice(args.chats)
        if kind == "post":
            body = orjson.dumps({"sender_id": user_id, "message": "Hello from the bench"})
            path = f"{base}/chats/{chat_id}/messages"
            return kind, args.write, request_bytes("POST", path, body, addresses[args.write], token)
        path = f"{base}/chats/{chat_id}/messages?page_size=25"
        return kind, read, request_bytes("GET", path, None, addresses[read], token)

    def next_request(slot: int) -> tuple[str, int, bytes]:
        if args.phase == "mix":
            return make(rng.choices(kinds, weights)[0], slot)
        return make("post" if args.phase in WEBHOOK_PHASES else args.phase, slot)

    cpu_before = time.process_time()
    samples, errors = closed_loop(
        addresses,
        args.connections,
        args.seconds,
        next_request,
        max_requests=MAX_REQUESTS_PER_GENERATOR,
    )
    return {"samples": samples, "errors": errors, "cpu": time.process_time() - cpu_before}


def _report_org(deployment: Deployment) -> str:
    """A second org for the report phase: ``REPORT_CHATS`` chats, each with an operator
    present and ``REPORT_MESSAGES`` messages, the operator and the visitor in turn."""
    admin = admin_headers(deployment)
    with httpx.Client(base_url=deployment.base_url, headers=admin, timeout=30) as client:
        org = created(client.post("/api/v5/orgs", json={"name": deployment.name("Report")}))
        base = f"/api/v5/orgs/{org['id']}"
        room = created(client.post(f"{base}/rooms", json={"name": "Report room"}))
        users = [
            created(
                client.post(
                    f"{base}/users",
                    json={"first_name": f"Op{i}", "last_name": "Report", "alias": f"op{i}"},
                )
            )["id"]
            for i in range(4)
        ]
        for index in range(REPORT_CHATS):
            visitor = created(client.post(f"{base}/visitors", json={}))
            user_id = users[index % len(users)]
            chat = created(
                client.post(
                    f"{base}/rooms/{room['id']}/visitors/{visitor['id']}/chats",
                    params={"auto_resume": user_id},
                )
            )
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
                created(response)
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


def _register_webhook(deployment: Deployment, org_id: str, port: int) -> None:
    admin = admin_headers(deployment)
    with httpx.Client(base_url=deployment.base_url, headers=admin, timeout=30) as client:
        created(
            client.post(
                f"/api/v5/orgs/{org_id}/webhooks",
                json={
                    "url": f"http://127.0.0.1:{port}/hook",
                    "events": ["message.created"],
                    "secret": "bench-webhook-secret-0123",
                },
            )
        )


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(options: Any, progress: Any) -> dict[str, Any]:
    """Every phase against one server per storage mode (``--modes``): ``memory``
    (``--in-memory``) or an ``--fsync`` mode with a data directory; or, with ``--url``,
    against the deployment as it is (its own storage, one set of phases)."""
    results: dict[str, Any] = {}
    if options.deployment is not None:
        results["deployment"] = _run_mode(options, progress, "deployment", options.deployment)
        return {"modes": results, "comparisons": {}}
    for mode in options.modes:
        extra = ["--in-memory"] if mode == "memory" else ["--fsync", mode]
        if options.webhook:
            extra += ["--webhook-allow", "127.0.0.1"]
        # with --redis each mode runs twice, alone and as a primary shipping its log
        for shipping in (False, True) if options.redis else (False,):
            redis = start_redis() if shipping else None
            flags = ["--redis", redis.url, "--redis-prefix", "bench"] if redis else []
            name = f"{mode}+redis" if shipping else mode
            try:
                server = start_server(*extra, *flags)
                try:
                    deployment = Deployment.of_server(server)
                    results[name] = _run_mode(options, progress, name, deployment)
                    results[name]["server_args"] = server.args[1:]
                finally:
                    server.stop()
            finally:
                if redis is not None:
                    redis.stop()
    comparisons = {}
    for mode, result in results.items():
        phases = result["phases"]
        if "post_webhook" in phases:
            comparisons[f"post_webhook_over_post [{mode}]"] = (
                phases["post_webhook"]["throughput_rps"] / phases["post_again"]["throughput_rps"]
            )
    if "always" in results and "off" in results:
        comparisons["post_always_over_off"] = _post(results, "always") / _post(results, "off")
    for mode in options.modes:
        if f"{mode}+redis" in results:
            comparisons[f"post_{mode}_redis_over_alone"] = _post(results, f"{mode}+redis") / _post(
                results, mode
            )
    return {"modes": results, "comparisons": comparisons}


def _post(results: dict[str, Any], mode: str) -> float:
    return float(results[mode]["phases"]["post"]["throughput_rps"])


def _run_mode(options: Any, progress: Any, mode: str, deployment: Deployment) -> dict[str, Any]:
    world = bootstrap(deployment, chats=options.chats, name=deployment.name("Bench"))
    chats = [list(pair) for pair in world["chats"]]
    task = progress.add_task(f"http [{mode}]: report org", total=None)
    report_org_id = _report_org(deployment)
    progress.remove_task(task)
    # the load's addresses (a URL given twice takes twice the reads), then the writes'
    addresses = [*deployment.addresses, deployment.write]
    results: dict[str, Any] = {}
    context = multiprocessing.get_context("spawn")
    phases = (*PHASES, *WEBHOOK_PHASES) if options.webhook else PHASES
    receiver = None
    try:
        with context.Pool(options.generators) as pool:
            for phase in phases:
                if phase == "post_webhook":
                    receiver, received, receiver_port = _webhook_receiver(context)
                    _register_webhook(deployment, world["org"]["id"], receiver_port)
                results[phase] = _run_phase(
                    options,
                    progress,
                    mode,
                    deployment,
                    pool,
                    phase,
                    addresses,
                    world,
                    chats,
                    report_org_id,
                )
                if phase == "post_webhook":
                    results[phase]["webhooks_received_in_phase"] = received.value
                    drain_until = time.perf_counter() + 60
                    posts = results[phase]["requests"]
                    while received.value < posts and time.perf_counter() < drain_until:
                        time.sleep(0.1)
                    results[phase]["webhooks_received_within_60s"] = received.value
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.join(10)
    baseline = results["healthz"]["throughput_rps"]
    for phase in phases:
        results[phase]["ratio_to_healthz"] = results[phase]["throughput_rps"] / baseline
    return {"phases": results, "server_rss_bytes_end": deployment.rss_bytes()}


def _run_phase(
    options: Any,
    progress: Any,
    mode: str,
    deployment: Deployment,
    pool: Any,
    phase: str,
    addresses: list[Address],
    world: dict[str, Any],
    chats: list[list[str]],
    report_org_id: str,
) -> dict[str, Any]:
    """One phase: ``--generators`` closed loops for ``--seconds``, and what they saw."""
    task = progress.add_task(f"http [{mode}]: {phase}", total=options.seconds)
    cpu_before, wall_before = deployment.cpu_seconds(), time.perf_counter()
    pending = pool.map_async(
        _generator,
        [
            GeneratorArgs(
                addresses,
                len(deployment.addresses),
                len(addresses) - 1,
                deployment.token,
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
        progress.update(task, completed=min(options.seconds, time.perf_counter() - wall_before))
    outputs = pending.get()
    wall = time.perf_counter() - wall_before
    cpu_after = deployment.cpu_seconds()
    # None: the deployment's CPU is not readable (no process_* in its /metrics)
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    samples = [sample for output in outputs for sample in output["samples"]]
    latencies = [ms for _, ms in samples]
    result: dict[str, Any] = {
        "requests": len(latencies),
        "errors": sum(output["errors"] for output in outputs),
        "throughput_rps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_request": None
        if server_cpu is None
        else 1000 * server_cpu / max(1, len(latencies)),
        "generator_cpu_s": sum(output["cpu"] for output in outputs),
        "wall_s": wall,
    }
    if phase == "mix":
        result["by_kind"] = {
            kind: {
                "requests": len(mine),
                "p50_ms": percentile(mine, 0.50),
                "p99_ms": percentile(mine, 0.99),
            }
            for kind in KINDS
            if (mine := [ms for name, ms in samples if name == kind])
        }
    progress.update(task, completed=options.seconds)
    return result


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
DEFAULT_MODES = ("always", "off")


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
        default=None,
        help="storage modes of the servers it starts, comma-separated: memory, always, "
        "interval, off (default: always,off; not with --url, which measures the "
        "deployment's own)",
    )
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="add two phases: post_again, then post_webhook with a webhook endpoint "
        "subscribed to message.created (reported against post_again; not with --url)",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="also run each mode as a cluster's primary shipping its log to a fresh "
        "redis-server (from PATH), and give each mode's POST throughput with it over "
        "without it",
    )


def check_options(options: argparse.Namespace, error: Error) -> None:
    if options.url is not None and options.redis:
        error("--redis starts its own primary and redis-server; not with --url")
    if options.url is not None and options.webhook:
        error(
            "--webhook needs a server the bench starts (one allowed to deliver to its "
            "receiver on 127.0.0.1); not with --url"
        )
    if options.url is not None and options.modes is not None:
        error("--modes picks the storage of a server the bench starts; not with --url")
    if options.modes is None and options.url is None:
        options.modes = list(DEFAULT_MODES)


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
                common.figure(phase["server_cpu_ms_per_request"], ".2f"),
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
    shown.caption = escape("\n".join(notes))  # "[off]" is a mode, not rich markup
    return shown
