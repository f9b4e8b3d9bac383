"""What the edge asks of a node's place in a cluster: its role, whether it is ready,
its metrics, and (a replica) how a write reaches the primary."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gateway.web import Request, Response


class ClusterNode(Collector):
    """A node of no cluster (``chat-engine serve`` without ``--redis``)."""

    role = "single"
    forwards_writes = False

    def not_ready(self) -> str | None:
        """Why ``/readyz`` is 503 beyond the engine's start (None: ready)."""
        return None

    def write_refusal(self) -> str | None:
        """Why this node refuses the API's writes with 503 (None: it takes them)."""
        return None

    def collect(self) -> Iterator[Metric]:
        """Extra ``/metrics`` families (a prometheus-client collector)."""
        return iter(())

    async def forward(self, request: Request) -> Response:  # pragma: no cover - replicas only
        raise NotImplementedError
