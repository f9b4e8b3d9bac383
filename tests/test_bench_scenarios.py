"""The bench suite is a product feature: every scenario must run end to end, from the
command line, and report what it measured truthfully.

Each test runs one ``python -m bench <scenario>`` at a small size as a real process (it
starts its own server and load-generator processes on 127.0.0.1), writes into a
temporary ``--out``, and then checks the JSON it wrote: the command, the code revision,
the plot, and the scenario's own correctness figures. Sizes are tiny, so no figure here
says anything about speed; that is the bench's job, not the tests'.

The ``--url`` tests start a real server the way a user runs one (default limits, its
own admin token), then point the scenario at it, as a user load-testing their install
would.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from bench.__main__ import parse
from bench.client import loopback
from bench.cluster import start_cluster
from bench.compare_scenario import _met
from bench.deployment import redact
from bench.fanout_scenario import PUBLISH_GRACE_SECONDS, _publish
from bench.server import ADMIN_TOKEN, free_port
from bench.summary import summarize
from gateway.cli import version
from tests.redisproc import redis_binary
from tests.serverproc import Outcome, launch

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 180  # seconds; each run below takes 4-20 s here
TOKEN_ENV = "CHAT_ENGINE_ADMIN_TOKEN"
DEPLOYMENT_TOKEN = "a-deployment-s-own-admin-token"


def run_bench(out: Path, *args: str, token: str | None = None) -> dict[str, Any]:
    """Run one scenario to completion and return the report it wrote (``token``: the
    deployment's admin token, given through the environment)."""
    env = dict(os.environ)
    env.pop(TOKEN_ENV, None)
    if token is not None:
        env[TOKEN_ENV] = token
    completed = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    reports = sorted(out.glob(f"{args[0]}-*.json"))
    assert len(reports) == 1, reports
    report: dict[str, Any] = orjson.loads(reports[0].read_bytes())
    plot = reports[0].with_suffix(".png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["scenario"] == args[0]
    assert report["command"] == "python -m bench " + " ".join(redact([*args, "--out", str(out)]))
    assert set(report["code"]) == {"commit", "uncommitted_changes"}
    assert report["machine"]["cpus"] >= 1
    # the terminal gets the summary table and where the files are
    assert b"written: " in completed.stdout
    return report


def test_storm_checks_every_winner_exactly(tmp_path: Path) -> None:
    report = run_bench(
        tmp_path,
        *("storm", "--joins", "30", "--chats", "3", "--resumes", "30", "--visitors", "3"),
    )
    bursts = report["result"]["bursts"]
    joins, resumes = bursts["exclusive_joins"], bursts["auto_resume"]
    assert (joins["calls"], joins["chats"], joins["winners"], joins["correct"]) == (30, 3, 3, True)
    assert (resumes["calls"], resumes["visitors_served"], resumes["chats_created"]) == (30, 3, 3)
    assert resumes["correct"] is True
    assert joins["problems"] == resumes["problems"] == []
    for baseline in report["result"]["baselines"].values():
        assert baseline["calls"] == 30
        assert baseline["p99_ms"] > 0


def test_fanout_delivers_every_event_at_each_rate(tmp_path: Path) -> None:
    report = run_bench(
        tmp_path, "fanout", "--sessions", "10,20", "--ladder", "5,20", "--seconds", "1"
    )
    by_sessions = report["result"]["by_sessions"]
    assert list(by_sessions) == ["10", "20"]
    for sessions, run in by_sessions.items():
        steps = run["steps"]
        assert [step["offered_msgs_per_s"] for step in steps] == [5.0, 20.0]
        for step in [*steps, run["half_rate"]]:
            assert step["expected_events"] == step["posted"] * int(sessions) > 0
            assert step["received_events"] == step["expected_events"]
            assert step["delivery_ratio"] == 1.0
            assert step["session_closes"] == 0
            assert step["server_cpu_s"] >= 0 and step["server_rss_bytes"] > 0
        # both rates passed, so the best is the ladder's top and half of it was run
        assert run["best"]["offered_msgs_per_s"] == 20.0 and run["top_of_ladder"] is True
        assert run["half_rate"]["offered_msgs_per_s"] == 10.0


def test_compare_runs_all_three_servers_and_gives_ratios(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "compare", "--sessions", "20", "--ladder", "5", "--seconds", "1")
    by_sessions = report["result"]["by_sessions"]["20"]
    assert set(by_sessions["runs"]) == {"engine", "socketio", "websockets"}
    for run in by_sessions["runs"].values():
        (step,) = run["steps"]
        assert step["delivery_ratio"] == 1.0, run
    # every server passed the only rate, so each ratio is exactly 1
    assert by_sessions["ratio_vs_socketio"] == by_sessions["ratio_vs_websockets"] == 1.0
    met = by_sessions["targets_met"]
    assert (met["ratio_vs_socketio"], met["ratio_vs_websockets"]) == (False, True)
    # the engine is also run at half its best rate, for the latency target
    half = by_sessions["half_rate_p99_ms"]
    assert half is not None and met["half_rate_p99_ms"] is (half <= 50)


@pytest.mark.parametrize(
    ("ratio", "above", "met"),
    [
        (3.0, None, True),
        (2.9, None, False),
        (None, 240.0, True),
        (None, 2.0, False),
        (None, None, False),
    ],
)
def test_a_peer_that_met_no_rate_bounds_the_ratio(
    ratio: float | None, above: float | None, met: bool
) -> None:
    """At 1,000 subscribers python-socketio can miss even the lowest rate: the engine's
    ratio to it is then only known to be above (engine's best / lowest rate), and the
    target counts as met when that bound reaches it; with no engine rate at all, not."""
    assert _met(ratio, above, 3.0) is met


def test_http_measures_each_storage_mode(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "http", "--seconds", "1", "--connections", "2", "--chats", "2")
    modes = report["result"]["modes"]
    assert set(modes) == {"always", "off"}
    for mode in modes.values():
        for name, phase in mode["phases"].items():
            assert phase["throughput_rps"] > 0, name
    assert report["result"]["comparisons"]["post_always_over_off"] > 0


def test_http_webhook_phases_deliver_every_post(tmp_path: Path) -> None:
    report = run_bench(
        tmp_path,
        "http",
        *("--modes", "off", "--webhook", "--seconds", "0.5", "--connections", "2", "--chats", "2"),
    )
    phases = report["result"]["modes"]["off"]["phases"]
    hooked = phases["post_webhook"]
    assert phases["post_again"]["throughput_rps"] > 0 and hooked["requests"] > 0
    assert hooked["webhooks_received_within_60s"] == hooked["requests"]
    assert report["result"]["comparisons"]["post_webhook_over_post [off]"] > 0


def test_conns_opens_and_reaches_every_session(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "conns", "--sessions", "40", "--steps", "2")
    result = report["result"]
    assert result["sessions"] == 40
    assert [step["sessions"] for step in result["steps"]] == [20, 40]
    assert result["broadcast"]["received"] == result["broadcast"]["expected"] == 40
    assert result["session_closes"] == 0 and result["subscribe_errors"] == []
    assert result["rss_bytes_per_session"] > 0


def test_recovery_restarts_with_everything_it_stored(tmp_path: Path) -> None:
    report = run_bench(
        tmp_path, "recovery", "--chats", "10", "--messages", "500", "--log-records", "100"
    )
    result = report["result"]
    assert result["restore_problems"] == [] and result["restored"] is True
    assert (result["log_records"], result["messages"]) == (100, 500)
    assert result["snapshot_fork_pause_ms"] is not None
    assert result["report_first_page_ms"]["no filter"]["count"] == 10


URL = "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["storm", "--joins", "0"], "argument --joins: must be between 1 and 5,000, not 0"),
        (["storm", "--joins", "10", "--chats", "20"], "--chats must be at most --joins"),
        (["storm", "--resumes", "5", "--visitors", "6"], "--visitors must be at most --resumes"),
        (["fanout", "--seconds", "500"], "argument --seconds: must be between 0.5 and 60"),
        (["fanout", "--seconds", "nan"], "argument --seconds: must be between 0.5 and 60"),
        (["fanout", "--ladder", "5,x"], "argument --ladder: not a number: 'x'"),
        (["fanout", "--ladder", "5000", "--max-rate", "10"], "every --ladder rate is above"),
        (["compare", "--sessions", "1,2,3,4,5"], "argument --sessions: at most 4 values"),
        (["http", "--modes", "always,bogus"], "argument --modes: distinct values among"),
        (["http", "--modes", "off,off"], "argument --modes: distinct values among"),
        (["conns", "--steps", "30"], "argument --steps: must be between 1 and 20"),
        (["conns", "--sessions", "3", "--steps", "4"], "--steps must be at most --sessions"),
        (["recovery", "--messages", "-1"], "argument --messages: must be between 1 and"),
        (["recovery", "--url", URL, "--admin-token", "t"], "recovery cannot target --url: it"),
        (["compare", "--url", URL, "--admin-token", "t"], "compare cannot target --url: it"),
        (["http", "--url", URL], "--url needs the deployment's admin token: --admin-token"),
        (["storm", "--admin-token", "t"], "--write-url and --admin-token go with --url"),
        (["http", "--url", "https://example.org"], "https is not supported"),
        (["http", "--url", "http://h:1/api"], "give the server's root, no path or query"),
        (["http", "--url", URL, "--admin-token", "t", "--modes", "off"], "--modes picks"),
        (["storm", "--url", URL, "--admin-token", "t", "--in-memory"], "--in-memory sets"),
        (["fanout", "--url", URL, "--admin-token", "t", "--session-queue", "9"], "sets a server"),
        (["fanout", "--url", URL, "--admin-token", "t", "--replicas", "2"], "--replicas starts"),
        (["http", "--url", URL, "--admin-token", "t", "--redis"], "--redis starts its own"),
        (["http", "--url", URL, "--admin-token", "t", "--webhook"], "--webhook needs a server"),
        (["fanout", "--replicas", "9"], "argument --replicas: must be between 1 and 8"),
    ],
)
def test_bad_options_are_refused_with_the_rule(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out-of-range sizes are refused before anything starts, naming the rule; none is
    quietly clamped to something else than what the user asked for. So are options that
    cannot go together: a scenario that must own its server refuses --url."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        parse(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"python -m bench {args[0]}: error: " in error
    assert message in error


def test_defaults_are_the_documented_workloads() -> None:
    """The defaults are the issue's workloads, which docs/benchmarks.md reports."""
    storm = parse(["storm"])
    assert (storm.joins, storm.chats, storm.resumes, storm.visitors) == (1000, 100, 1000, 100)
    assert parse(["conns"]).sessions == 10_000
    assert parse(["compare"]).sessions == [500, 1000]
    assert parse(["fanout"]).sessions == [100, 500, 1000]
    recovery = parse(["recovery"])
    assert recovery.messages == 1_000_000
    assert parse(["http"]).modes == ["always", "off"]


def test_results_go_outside_the_repository_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run leaves the checkout clean; `summary` reads where runs write by default."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert parse(["fanout"]).out == tmp_path / "chat-engine-bench"
    assert not parse(["storm"]).out.resolve().is_relative_to(ROOT)
    (tmp_path / "chat-engine-bench").mkdir()
    assert parse(["summary"]).results == tmp_path / "chat-engine-bench"


def write_report(results: Path, name: str, result: dict[str, Any]) -> None:
    report = {"code": {"commit": "abcdef0123", "uncommitted_changes": False}, "result": result}
    (results / f"{name}.json").write_bytes(orjson.dumps(report))


def storm_result(calls: int, joins_p99: float, correct: bool = True) -> dict[str, Any]:
    burst = {"calls": calls, "correct": correct, "problems": [], "p99_vs_healthz": 2.0}
    return {
        "bursts": {
            "exclusive_joins": {**burst, "p99_ms": joins_p99},
            "auto_resume": {**burst, "p99_ms": 250.0},
        }
    }


def test_summary_judges_the_latest_full_size_run_of_each_scenario(tmp_path: Path) -> None:
    write_report(tmp_path, "storm-20261127-100000", storm_result(1000, 95.0))
    # the newest storm run is the one judged; a smaller run is never judged met
    write_report(tmp_path, "storm-20261127-110000", storm_result(1000, 140.0))
    write_report(
        tmp_path,
        "recovery-20261127-100000",
        {"messages": 500, "ready_seconds": 0.5, "rss_bytes_per_message": 900.0, "restored": True},
    )
    write_report(
        tmp_path,
        "compare-20261127-100000",
        {
            "ladder": [1.0, 2.0],
            "by_sessions": {
                "1000": {
                    "best_msgs_per_s": {"engine": 240, "socketio": 0.0, "websockets": 80},
                    "ratio_vs_socketio": None,
                    "ratio_vs_websockets": 3.0,
                    "half_rate_p99_ms": 58.0,
                }
            },
        },
    )
    rows = {
        (row["scenario"], row["target"]): (row["figure"], row["verdict"], row["source"])
        for row in summarize(tmp_path)
    }
    joins = rows[("storm", "joins: p99 ≤ 100 ms")]
    assert joins[1] == "MISSED" and joins[2] == "storm-20261127-110000 (abcdef0)"
    assert rows[("storm", "auto_resume: exact")][1] == "met"
    assert rows[("recovery", "1M messages back in ≤ 15 s")][1] == "not judged"
    assert rows[("recovery", "RSS ≤ 1,024 B a message")][1] == "not judged"
    assert rows[("compare", "1000: ≥ 3× socketio")][:2] == ("> 240× (socketio met no rate)", "met")
    assert rows[("compare", "1000: ≥ 0.5× websockets")][1] == "met"
    assert rows[("compare", "1000: half-rate p99 ≤ 50 ms")][1] == "MISSED"
    for scenario in ("conns", "http", "fanout"):
        assert rows[(scenario, "-")][:2] == ("no result yet", "not judged")


def test_summary_command_prints_the_verdicts(tmp_path: Path) -> None:
    write_report(tmp_path, "storm-20261127-100000", storm_result(1000, 95.0, correct=False))
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "summary", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert completed.returncode == 0, completed.stderr.decode()
    out = completed.stdout.decode()
    assert "storm-20261127-100000 (abcdef0)" in out
    assert "joins: exact" in out and "MISSED" in out and "no result yet" in out
    missing = subprocess.run(
        [sys.executable, "-m", "bench", "summary", "--results", str(tmp_path / "nowhere")],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert missing.returncode == 2 and b"--results: no directory" in missing.stderr


async def test_the_publisher_gives_up_on_a_server_that_never_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every bench loop is bounded in time: posts that get no answer are not counted,
    and publishing ends ``PUBLISH_GRACE_SECONDS`` after the step, not never."""

    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()  # reads nothing, answers nothing

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, mute, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        started = trio.current_time()
        with trio.fail_after(2.0 + PUBLISH_GRACE_SECONDS + 60):  # fails rather than hangs
            posted = await _publish(
                loopback(port), "/api/v5/orgs/o/chats/c/messages", "u", 1, 10.0, 2.0
            )
        assert posted == 0
        assert trio.current_time() - started == pytest.approx(2.0 + PUBLISH_GRACE_SECONDS)
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """A server as a user runs it: durable storage, the default rate and session limits,
    its own admin token (not the one the bench gives the servers it starts)."""
    data = tmp_path_factory.mktemp("deployment") / "data"
    data.mkdir()
    server = launch(data, admin_token=DEPLOYMENT_TOKEN)
    assert server.ready, server.stderr
    yield server
    server.stop()


def check_target(report: dict[str, Any], *urls: str, write: str | None = None) -> None:
    """The report says what it measured: the URLs, where writes went, each node's
    version, and the tag under which the run's own data was created."""
    target = report["target"]
    assert target["started_by_bench"] is False
    assert target["urls"] == list(urls) and target["write_url"] == (write or urls[0])
    for node in target["nodes"]:
        assert node["version"] == version() and node["process_metrics"] is True
    assert target["created_under"].startswith("bench-")


def test_fanout_measures_a_deployment_given_by_url(tmp_path: Path, deployment: Outcome) -> None:
    url = deployment.base_url
    report = run_bench(
        tmp_path,
        *("fanout", "--url", url, "--sessions", "10", "--ladder", "5", "--seconds", "1"),
        token=DEPLOYMENT_TOKEN,
    )
    check_target(report, url)
    run = report["result"]["by_sessions"]["10"]
    for step in [*run["steps"], run["half_rate"]]:
        assert step["received_events"] == step["expected_events"] == step["posted"] * 10 > 0
        assert step["session_closes"] == 0
        # CPU and memory come from the deployment's /metrics, not from a pid of ours
        assert step["server_cpu_s"] is not None and step["server_rss_bytes"] > 0
    assert "server_args" not in run
    assert DEPLOYMENT_TOKEN.encode() not in next(tmp_path.glob("fanout-*.json")).read_bytes()


def test_http_on_a_deployment_keeps_the_token_out_of_the_results(
    tmp_path: Path, deployment: Outcome
) -> None:
    url = deployment.base_url
    args = ("http", "--url", url, "--admin-token", DEPLOYMENT_TOKEN, "--seconds", "0.5")
    report = run_bench(tmp_path, *args, "--connections", "2", "--chats", "2")
    check_target(report, url)
    assert "--admin-token REDACTED " in report["command"]
    (phases,) = [mode["phases"] for mode in report["result"]["modes"].values()]
    assert list(report["result"]["modes"]) == ["deployment"]
    for name, phase in phases.items():
        assert phase["requests"] > 0 and phase["errors"] == 0, name
        assert phase["server_cpu_s"] is not None, name
    for written in tmp_path.iterdir():
        assert DEPLOYMENT_TOKEN.encode() not in written.read_bytes(), written


def test_storm_and_conns_on_a_deployment_with_its_default_limits(
    tmp_path: Path, deployment: Outcome
) -> None:
    """More sessions than the deployment lets one client address hold (100 by default)
    still all open: the bench's sessions use the admin token, which those limits leave
    out, so what is measured is the server, not its policy."""
    url = deployment.base_url
    storm = run_bench(
        tmp_path / "storm",
        *("storm", "--url", url, "--joins", "20", "--chats", "2", "--resumes", "20"),
        *("--visitors", "2"),
        token=DEPLOYMENT_TOKEN,
    )
    check_target(storm, url)
    bursts = storm["result"]["bursts"]
    assert bursts["exclusive_joins"]["correct"] and bursts["exclusive_joins"]["winners"] == 2
    assert bursts["auto_resume"]["correct"] and bursts["auto_resume"]["chats_created"] == 2
    # a bare server on the bench's machine is no floor for someone else's deployment
    assert list(storm["result"]["baselines"]) == ["healthz"]
    conns = run_bench(
        tmp_path / "conns",
        *("conns", "--url", url, "--sessions", "120", "--steps", "2"),
        token=DEPLOYMENT_TOKEN,
    )
    result = conns["result"]
    assert result["broadcast"]["received"] == result["broadcast"]["expected"] == 120
    assert result["session_closes"] == 0 and result["session_token"] == "admin"
    assert all(step["server_rss_bytes"] > 0 for step in result["steps"])


class Relay:
    """A second address for the same server: a TCP relay on 127.0.0.1 that forwards
    every connection and remembers the first bytes each one sent (its request line)."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = port
        self.first_lines: list[bytes] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        poller = select.epoll()
        poller.register(self.listener.fileno(), select.EPOLLIN)
        # fd -> [its socket, the other end, whether it is a client not yet heard from]
        ends: dict[int, list[Any]] = {}
        try:
            while not self.stopping.is_set():
                for fd, _ in poller.poll(0.1):
                    if fd == self.listener.fileno():
                        client, _ = self.listener.accept()
                        upstream = socket.create_connection(("127.0.0.1", self.target))
                        ends[client.fileno()] = [client, upstream, True]
                        ends[upstream.fileno()] = [upstream, client, False]
                        poller.register(client.fileno(), select.EPOLLIN)
                        poller.register(upstream.fileno(), select.EPOLLIN)
                        continue
                    end = ends[fd]
                    source, sink, first = end
                    data = source.recv(65536)
                    if not data:
                        for sock in (source, sink):
                            poller.unregister(sock.fileno())
                            del ends[sock.fileno()]
                            sock.close()
                        continue
                    if first:
                        self.first_lines.append(data.split(b"\r\n", 1)[0])
                        end[2] = False
                    sink.sendall(data)
        finally:
            for sock, _, _ in ends.values():
                sock.close()
            poller.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.listener.close()


def test_several_urls_share_the_sessions_and_writes_go_to_the_first(
    tmp_path: Path, deployment: Outcome
) -> None:
    """Two URLs (the server, and a relay to it): the subscribers are dealt to them in
    turn, and every write (the setup and the posts) goes to the first, none through
    the relay."""
    relay = Relay(deployment.port)
    try:
        urls = (deployment.base_url, loopback(relay.port).url)
        report = run_bench(
            tmp_path,
            *("fanout", "--url", ",".join(urls), "--sessions", "6", "--generators", "2"),
            *("--ladder", "5", "--seconds", "1"),
            token=DEPLOYMENT_TOKEN,
        )
    finally:
        relay.close()
    check_target(report, *urls)
    run = report["result"]["by_sessions"]["6"]
    assert all(step["delivery_ratio"] == 1.0 for step in [*run["steps"], run["half_rate"]])
    upgrades = [line for line in relay.first_lines if line.startswith(b"GET /ws")]
    assert len(upgrades) == 3, relay.first_lines
    assert not [line for line in relay.first_lines if not line.startswith(b"GET ")]


def test_writes_to_a_node_without_sessions_measure_the_lag_to_the_others(
    tmp_path: Path, deployment: Outcome
) -> None:
    """``--write-url`` a node that is not among ``--url`` (a cluster's primary, with
    the sessions on its replicas; here the server, with the sessions through a relay
    to it): every session and no write goes through the relay, and a probe session
    on each node times every message's arrival on the others against the write node."""
    relay = Relay(deployment.port)
    try:
        url = loopback(relay.port).url
        report = run_bench(
            tmp_path,
            *("fanout", "--url", url, "--write-url", deployment.base_url),
            *("--sessions", "4", "--ladder", "5", "--seconds", "1"),
            token=DEPLOYMENT_TOKEN,
        )
    finally:
        relay.close()
    check_target(report, url, write=deployment.base_url)
    run = report["result"]["by_sessions"]["4"]
    steps = [*run["steps"], run["half_rate"]]
    for step in steps:
        assert step["delivery_ratio"] == 1.0
        lag = step["replication_lag"]
        assert lag["messages"] == lag["samples"] == step["posted"] and lag["missing"] == 0
    upgrades = [line for line in relay.first_lines if line.startswith(b"GET /ws")]
    assert len(upgrades) == 4 + len(steps)  # the subscribers, and one probe a step
    assert not [line for line in relay.first_lines if not line.startswith(b"GET ")]


def test_a_deployment_that_does_not_answer_stops_the_run_in_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "http", "--url", url, "--admin-token", "x"]
        + ["--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert completed.returncode == 1
    assert completed.stderr.decode().strip().splitlines() == [
        f"python -m bench http: {url}: not reachable ([Errno 111] Connection refused)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_admin_token_is_named_with_the_call_it_failed(
    tmp_path: Path, deployment: Outcome
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "storm", "--url", deployment.base_url]
        + ["--admin-token", "not-the-token", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert completed.returncode == 1
    (line,) = completed.stderr.decode().strip().splitlines()
    assert line.startswith(f"python -m bench storm: POST {deployment.base_url}/api/v5/orgs")
    assert "answered 401" in line


def test_the_admin_token_is_left_out_of_the_recorded_command() -> None:
    assert redact(["http", "--admin-token", "s3cret", "--url", "http://h:1"]) == [
        "http",
        "--admin-token",
        "REDACTED",
        "--url",
        "http://h:1",
    ]
    assert redact(["--admin-token=s3cret"]) == ["--admin-token=REDACTED"]


def test_fanout_over_replicas_against_the_primary_s_own(tmp_path: Path) -> None:
    """``--replicas 2``: a real redis-server, primary and two replicas. The subscribers
    are first all on the primary (its own fan-out), then dealt to the two replicas with
    none left on the primary, while the posts go to the primary; every event reaches
    every session both times, and every message reaches both replicas' probes, so the
    replication lag has a sample per message and replica."""
    redis_binary()  # skips, naming the package, without redis-server (fails if required)
    report = run_bench(
        tmp_path,
        *("fanout", "--replicas", "2", "--sessions", "6", "--ladder", "5", "--seconds", "1"),
    )
    assert report["target"] == {"started_by_bench": True}
    run = report["result"]["by_sessions"]["6"]
    primary = run["on_primary"]
    for step in [*primary["steps"], *run["steps"], run["half_rate"]]:
        assert step["received_events"] == step["expected_events"] == step["posted"] * 6 > 0
    assert list(primary["sessions_by_url"].values()) == [6]
    on_replicas = list(run["sessions_by_url"].values())
    assert on_replicas == [3, 3, 0]  # the replicas, then the primary (writes only)
    for step in [*run["steps"], run["half_rate"]]:
        lag = step["replication_lag"]
        assert lag["messages"] == step["posted"] and lag["missing"] == 0
        assert lag["samples"] == 2 * step["posted"] and lag["p99_ms"] is not None
    assert run["replicas_over_primary"] == pytest.approx(1.0, rel=0.5)
    assert len(run["replica_args"]) == 2


def test_http_with_redis_gives_the_primary_s_post_ratio(tmp_path: Path) -> None:
    redis_binary()
    report = run_bench(
        tmp_path,
        *("http", "--redis", "--modes", "off", "--seconds", "0.5", "--connections", "2"),
        *("--chats", "2"),
    )
    modes = report["result"]["modes"]
    assert list(modes) == ["off", "off+redis"]
    assert "--redis" in " ".join(modes["off+redis"]["server_args"])
    for mode in modes.values():
        assert all(phase["errors"] == 0 for phase in mode["phases"].values())
    assert report["result"]["comparisons"]["post_off_redis_over_alone"] > 0


def test_summary_judges_the_cluster_ratios_and_never_a_deployment(tmp_path: Path) -> None:
    """The cluster's two targets (a shipping primary's POSTs, a replica's fan-out at 500
    sessions, each ≥ 0.8 of the lone figure) are judged, each target on the newest run
    that measured it; a run against a deployment at --url is listed but never judged:
    it measured someone else's machine."""
    best = {"offered_msgs_per_s": 40.0, "delivered_events_per_s": 20_000.0}
    lag = {"p50_ms": 3.0, "p99_ms": 12.0, "missing": 0}
    write_report(
        tmp_path,
        "fanout-20261205-100000",
        {
            "by_sessions": {
                "500": {
                    "best": best,
                    "half_rate": None,
                    "on_primary": {"best": best},
                    "replicas_over_primary": 0.75,
                    "replication_lag_at_best": lag,
                }
            }
        },
    )
    write_report(
        tmp_path, "http-20261205-100000", {"comparisons": {"post_always_redis_over_alone": 0.9}}
    )
    # an older run of the other variant: the newer --redis run does not hide its figure
    write_report(tmp_path, "http-20261204-100000", {"comparisons": {"post_always_over_off": 0.93}})
    (tmp_path / "storm-20261205-100000.json").write_bytes(
        orjson.dumps({"target": {"started_by_bench": False}, "result": storm_result(1000, 95.0)})
    )
    rows = {(row["scenario"], row["target"]): row for row in summarize(tmp_path)}
    assert rows[("fanout", "500: replicas/primary events/s ≥ 0.8")]["verdict"] == "MISSED"
    assert rows[("fanout", "500: replication lag p99")]["figure"] == "12 ms"
    redis = rows[("http", "POST always: --redis/alone ≥ 0.8")]
    assert (redis["figure"], redis["verdict"]) == ("0.90", "met")
    fsync = rows[("http", "POST fsync always/off ≥ 0.5")]
    assert (fsync["figure"], fsync["source"]) == ("0.93", "http-20261204-100000 (abcdef0)")
    joins = rows[("storm", "joins: p99 ≤ 100 ms")]
    assert joins["verdict"] == "not judged" and "(a deployment at --url)" in joins["figure"]


def test_fanout_on_a_running_cluster_names_each_node_s_role(tmp_path: Path) -> None:
    """A cluster the test starts (Redis, a primary, two replicas), measured as a user
    would theirs: the replicas as --url, the primary as --write-url. The report names
    each node's role, the sessions are on the replicas only, and every message reached
    both replicas' probes."""
    redis_binary()
    cluster = start_cluster(2, "--in-memory")
    try:
        replicas = [replica.base_url for replica in cluster.replicas]
        report = run_bench(
            tmp_path,
            *("fanout", "--url", ",".join(replicas), "--write-url", cluster.primary.base_url),
            *("--sessions", "4", "--ladder", "5", "--seconds", "1"),
            token=ADMIN_TOKEN,
        )
    finally:
        cluster.stop()
    check_target(report, *replicas, write=cluster.primary.base_url)
    roles = {node["url"]: node["role"] for node in report["target"]["nodes"]}
    assert roles == {**dict.fromkeys(replicas, "replica"), cluster.primary.base_url: "primary"}
    run = report["result"]["by_sessions"]["4"]
    assert list(run["sessions_by_url"].values()) == [2, 2, 0]
    for step in [*run["steps"], run["half_rate"]]:
        assert step["delivery_ratio"] == 1.0
        lag = step["replication_lag"]
        assert lag["samples"] == 2 * step["posted"] and lag["missing"] == 0
