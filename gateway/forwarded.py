"""``X-Forwarded-Proto/Host/For`` from trusted proxies (``--forwarded-allow-ips``).

Behind a reverse proxy the peer of every connection is the proxy, and the scheme and
host the client used are the proxy's to tell. Those headers are believed only when the
connection's peer is one of the listed addresses or networks; from anyone else they are
ignored, since any client can send them. What they change: the scheme and host of the
pagination links (unless ``--public-url`` is set, which wins), and the client address
the access log and per-address limits (open visitor registration) see.

Which value of a list: proxies append, so the rightmost entry is the one the nearest
(trusted) proxy wrote. ``X-Forwarded-For`` is walked from the right past the addresses
of trusted proxies; the first other address is the client's. A value that is not a
well-formed scheme, host or address is ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.web import Request, Response

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
SCHEMES = ("http", "https")


if TYPE_CHECKING:  # at run time settings imports this module's users
    from gateway.settings import Network


def parse_address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address


class Forwarded:
    """A request hook (``gateway.web.WebApp``): rewrites the request of a trusted peer."""

    def __init__(self, trusted: Sequence[Network]) -> None:
        self.trusted = tuple(trusted)

    def trusts(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.trusted)

    def enter(self, request: Request) -> Response | None:
        if request.client is None or not self.trusts(parse_address(request.client[0])):
            return None
        proto = request.header(b"x-forwarded-proto")
        if proto is not None:
            scheme = proto.rsplit(",", 1)[-1].strip().lower()
            if scheme in SCHEMES:
                request.scheme = scheme
        host = request.header(b"x-forwarded-host")
        if host is not None:
            value = host.rsplit(",", 1)[-1].strip()
            if HOST.fullmatch(value):
                request.forwarded_host = value
        chain = request.header(b"x-forwarded-for")
        if chain is not None:
            client = self.client_of(chain)
            if client is not None:
                request.client = (str(client), 0)
        return None

    def client_of(self, chain: str) -> Address | None:
        """The rightmost address of ``chain`` that is not a trusted proxy's (or the
        leftmost one, when every hop is trusted)."""
        found = None
        for item in reversed(chain.split(",")):
            address = parse_address(item)
            if address is None:
                break
            found = address
            if not self.trusts(address):
                break
        return found

    def leave(self, request: Request, response: Response) -> None:
        return None
