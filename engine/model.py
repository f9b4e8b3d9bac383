"""The directory's records: orgs, rooms, users, visitors, and a chat's small parts.

Times are integer milliseconds since the epoch (see ``engine.timefmt``). ``seq`` is the
engine-wide sequence number given when a record was applied: it fixes creation order,
which every ordered collection and keyset cursor relies on.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# The ids that many records repeat (an org's, a room's, a user's, a visitor's) and the
# few words a message's type and sender type can be: every record that keeps one keeps
# the one shared string (``sys.intern``), not its own copy, which a request or a decoded
# snapshot would otherwise hand each message: a saving on every stored message
# (docs/benchmarks.md, "Figures behind choices in the code").
shared = sys.intern

MSG = "msg"
AUTOSUGGEST = "autosuggest"
JOIN = "join"
LEAVE = "leave"
COUNTED_TYPES = frozenset({MSG, AUTOSUGGEST})
POSTABLE_TYPES = COUNTED_TYPES

SENDER_USER = "user"
SENDER_VISITOR = "visitor"


@dataclass(slots=True)
class Org:
    id: str
    name: str
    created_at: int
    seq: int
    token_hash: str


@dataclass(slots=True)
class Room:
    id: str
    name: str
    organization_id: str
    private_chats: bool
    created_at: int
    seq: int
    shared_with: set[str] = field(default_factory=set)


@dataclass(slots=True)
class User:
    id: str
    organization_id: str
    first_name: str
    last_name: str
    alias: str
    room_ids: list[str] | None
    created_at: int
    seq: int
    token_hash: str

    @property
    def full_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


@dataclass(slots=True, frozen=True)
class JwtKey:
    """A key an org registered to verify the signed tokens (JWT) its application issues.
    ``key`` is the HS256 shared secret or the RS256/ES256 public key (PEM)."""

    org_id: str
    kid: str
    algorithm: str
    key: str


NO_API_DATA: Mapping[str, list[dict[str, object]]] = MappingProxyType({})


@dataclass(slots=True)
class Visitor:
    id: str
    organization_id: str | None
    created_at: int
    token_hash: str
    # api_data is per org (each org sees only what it set): org id -> [{"name", "value"}]; replaced whole
    # on each change, so visitors without any share one empty mapping (not an empty dict each)
    api_data: Mapping[str, list[dict[str, object]]] = field(default_factory=lambda: NO_API_DATA)


@dataclass(slots=True)
class Message:
    id: str
    type: str
    created_at: int
    sender_type: str
    sender_id: str
    message: str | None
    page_url: str | None
    page_title: str | None


@dataclass(slots=True)
class Presence:
    user_id: str
    created_at: int
    seq: int


@dataclass(slots=True)
class Product:
    id: str
    name: str
    description: str | None
    category: str | None
    product_number: str | None
    price: str  # a decimal string, kept exactly as given
    quantity: int
    monthly_price: str | None
    monthly_quantity: int | None
    stock_balance: int | None
    added_at: int
    deleted_at: int | None = None


@dataclass(slots=True)
class Cart:
    id: str
    currency: str
    opened_at: int
    locked_at: int | None = None
    products: list[Product] = field(default_factory=list)
