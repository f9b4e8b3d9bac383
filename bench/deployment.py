"""What a scenario measures: servers it started itself, or an existing deployment
given with ``--url URL[,URL…]`` (how a user load-tests their own install).

A ``Deployment`` is the list of addresses the load is spread over (round-robin: HTTP
connections and WebSocket sessions alike), the address every write goes to
(``--write-url``, the first ``--url`` unless told), the admin token, and where the
server's own figures come from: ``/proc`` of the pids the bench started, or the
``process_*`` series of each address's ``/metrics`` for a deployment the bench did not
start (its pids are someone else's, often on another machine), or nothing at all
(``None``, shown as unavailable) when neither is readable.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.client import Address, loopback
from bench.server import ADMIN_TOKEN, BenchError, ServerProcess, cpu_seconds, rss_bytes

TOKEN_ENV = "CHAT_ENGINE_ADMIN_TOKEN"
MOST_URLS = 64
HIDDEN = "REDACTED"  # what a result records instead of the admin token
SCRAPE_TIMEOUT = 10.0


def parse_url(text: str) -> Address:
    """``http://host[:port]``, nothing after the authority but an optional ``/``."""
    parts = urlsplit(text.strip())
    if parts.scheme == "https":
        raise argparse.ArgumentTypeError(
            f"{text}: https is not supported (the load generators speak plain HTTP/1.1); "
            "give the engine's own http:// listener"
        )
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http://host:port URL: {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise argparse.ArgumentTypeError(f"{text}: give the server's root, no path or query")
    try:
        port = parts.port or 80
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a port number") from None
    return Address(parts.hostname, port)


def parse_urls(text: str) -> list[Address]:
    """An argparse type: 1 to ``MOST_URLS`` comma-separated http:// URLs."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("no URL given")
    if len(parts) > MOST_URLS:
        raise argparse.ArgumentTypeError(f"at most {MOST_URLS} URLs, not {len(parts)}")
    return [parse_url(part) for part in parts]


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options every scenario takes (those that must own their server refuse them)."""
    group = parser.add_argument_group("target an existing deployment")
    group.add_argument(
        "--url",
        type=parse_urls,
        default=None,
        metavar="URL[,URL…]",
        help="measure this running deployment instead of starting a server: HTTP requests "
        "and WebSocket sessions are spread over the URLs round-robin",
    )
    group.add_argument(
        "--write-url",
        type=parse_url,
        default=None,
        metavar="URL",
        help="where every write goes (setup, posts, bursts; default: the first --url)",
    )
    group.add_argument(
        "--admin-token",
        default=None,
        metavar="TOKEN",
        help=f"the deployment's admin token (default: ${TOKEN_ENV}); never written to the results",
    )


def check_options(
    options: argparse.Namespace, error: Any, *, scenario: str, owns_server: str | None
) -> None:
    """Refuse what cannot work, in one line, before anything starts; fill in
    ``options.admin_token`` from the environment when targeting a URL."""
    if options.url is None:
        if options.write_url is not None or options.admin_token is not None:
            error("--write-url and --admin-token go with --url")
        return
    if owns_server is not None:
        error(f"{scenario} cannot target --url: {owns_server}")
    if options.admin_token is None:
        options.admin_token = os.environ.get(TOKEN_ENV) or None
    if options.admin_token is None:
        error(f"--url needs the deployment's admin token: --admin-token or ${TOKEN_ENV}")


def redact(argv: list[str]) -> list[str]:
    """The command line as recorded in a result: the admin token's value left out."""
    shown = []
    hide = False
    for arg in argv:
        if hide:
            shown.append(HIDDEN)
            hide = False
        elif arg == "--admin-token":
            shown.append(arg)
            hide = True
        elif arg.startswith("--admin-token="):
            shown.append(f"--admin-token={HIDDEN}")
        else:
            shown.append(arg)
    return shown


def run_tag() -> str:
    """A prefix for the names of what one run creates (orgs, rooms, users), so that on a
    deployment it is told apart from the deployment's own data and from other runs."""
    return f"bench-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def scrape(address: Address) -> dict[str, float] | None:
    """The unlabelled samples of ``/metrics`` (``name -> value``), labelled ones under
    ``name{labels}``; None when the address has no readable /metrics."""
    try:
        response = httpx.get(f"{address.url}/metrics", timeout=SCRAPE_TIMEOUT)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


@dataclass
class Deployment:
    addresses: list[Address]
    write: Address
    token: str
    pids: list[int] = field(default_factory=list)  # servers the bench started
    pid_names: list[str] = field(default_factory=list)  # their roles, where several
    started_by_bench: bool = True
    tag: str = field(default_factory=run_tag)

    @classmethod
    def of_server(cls, server: ServerProcess) -> Deployment:
        address = loopback(server.port)
        return cls([address], address, ADMIN_TOKEN, [server.process.pid])

    @classmethod
    def of_options(cls, options: argparse.Namespace) -> Deployment:
        addresses = list(options.url)
        return cls(
            addresses,
            options.write_url or addresses[0],
            options.admin_token,
            started_by_bench=False,
        )

    @property
    def write_url(self) -> str:
        return self.write.url

    @property
    def base_url(self) -> str:
        """Where setup writes go (``bench.server.bootstrap``)."""
        return self.write.url

    @property
    def everywhere(self) -> list[Address]:
        """Each address once (a URL given twice takes twice the load, but its server is
        scraped once): the load's, then the write address if it is not one of them."""
        return list(dict.fromkeys([*self.addresses, self.write]))

    def verify(self) -> None:
        """Every address answers ``/readyz`` with 200, or the run stops, naming it."""
        for address in self.everywhere:
            try:
                response = httpx.get(f"{address.url}/readyz", timeout=SCRAPE_TIMEOUT)
            except httpx.HTTPError as error:
                raise BenchError(f"{address.url}: not reachable ({error})") from None
            if response.status_code != 200:
                raise BenchError(
                    f"{address.url}: /readyz answered {response.status_code}, not ready"
                )

    def spread(self, index: int) -> Address:
        """The address of the ``index``-th connection or session (round-robin)."""
        return self.addresses[index % len(self.addresses)]

    def name(self, what: str) -> str:
        return f"{self.tag} {what}"

    def cpu_seconds(self) -> float | None:
        """CPU seconds the server processes used so far (summed), or None if unknown."""
        if self.pids:
            return sum(cpu_seconds(pid) for pid in self.pids)
        return self._summed("process_cpu_seconds_total")

    def cpu_by_process(self) -> dict[str, float]:
        """Each named process's CPU seconds so far (a cluster the bench started; empty
        for anything else)."""
        if not self.pid_names:
            return {}
        return {name: cpu_seconds(pid) for name, pid in zip(self.pid_names, self.pids, strict=True)}

    def rss_bytes(self) -> int | None:
        if self.pids:
            return sum(rss_bytes(pid) for pid in self.pids)
        total = self._summed("process_resident_memory_bytes")
        return None if total is None else int(total)

    def _summed(self, sample: str) -> float | None:
        total = 0.0
        for address in self.everywhere:
            samples = scrape(address)
            if samples is None or sample not in samples:
                return None
            total += samples[sample]
        return total

    def counters(self, names: tuple[str, ...]) -> dict[str, float] | None:
        """The engine's own counters from /metrics, summed over the addresses."""
        found = dict.fromkeys(names, 0.0)
        for address in self.everywhere:
            samples = scrape(address)
            if samples is None:
                return None
            for name in names:
                if name not in samples:
                    return None
                found[name] += samples[name]
        return found

    def describe(self) -> dict[str, Any]:
        """What was measured, for the result: the URLs, where writes went, and each
        address's version (``chat_engine_build_info``) and role, where it says them."""
        if self.started_by_bench:
            return {"started_by_bench": True, "servers": len(self.pids)}
        nodes = []
        for address in self.everywhere:
            node: dict[str, Any] = {
                "url": address.url,
                "load": address in self.addresses,
                "writes": address == self.write,
                "version": None,
                "role": None,
            }
            samples = scrape(address) or {}
            for name in samples:
                if name.startswith("chat_engine_build_info{"):
                    node["version"] = _label(name, "version")
            node["process_metrics"] = "process_cpu_seconds_total" in samples
            node["role"] = self._role(address)
            nodes.append(node)
        return {
            "started_by_bench": False,
            "urls": [address.url for address in self.addresses],
            "write_url": self.write_url,
            "nodes": nodes,
            "created_under": self.tag,
        }

    def _role(self, address: Address) -> str | None:
        """A cluster node's role from its status route, where it has one."""
        try:
            response = httpx.get(
                f"{address.url}/internal/v1/status",
                headers={"Authorization": f"Token {self.token}"},
                timeout=SCRAPE_TIMEOUT,
            )
            if response.status_code == 200:
                role = response.json().get("role")
                return str(role) if role is not None else None
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        return None


def _label(sample: str, label: str) -> str | None:
    marker = f'{label}="'
    start = sample.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = sample.find('"', start)
    return sample[start:end] if end > start else None


def summary_line(target: dict[str, Any]) -> str:
    """One line under the table: what was measured, as the report's ``target`` says."""
    nodes = ", ".join(
        f"{node['url']} ({node['version'] or 'version unknown'}"
        + (f", {node['role']}" if node["role"] else "")
        + ("" if node["process_metrics"] else ", no process metrics")
        + ")"
        for node in target["nodes"]
    )
    return f"measured: {nodes}; writes to {target['write_url']}; created under {target['created_under']}"
