"""Facts: what a committed mutation did, in a form that can be replayed.

A command is *decided* against the current state (rules checked, ids and times chosen)
and produces facts; a fact is *applied* only once it is committed (durable, when a log is
in use). Applying is deterministic: replaying the same facts in the same order rebuilds
the same state, sequence numbers included. Facts hold token hashes, never tokens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class OrgCreated:
    org_id: str
    name: str
    at: int
    token_hash: str


@dataclass(slots=True, frozen=True)
class RoomCreated:
    room_id: str
    org_id: str
    name: str
    private_chats: bool
    at: int


@dataclass(slots=True, frozen=True)
class RoomShared:
    room_id: str
    org_id: str


@dataclass(slots=True, frozen=True)
class UserCreated:
    user_id: str
    org_id: str
    first_name: str
    last_name: str
    alias: str
    room_ids: tuple[str, ...] | None
    at: int
    token_hash: str


@dataclass(slots=True, frozen=True)
class VisitorRegistered:
    """A new visitor, or a fresh token for a known one (the old token stops working)."""

    visitor_id: str
    org_id: str | None
    at: int
    token_hash: str


@dataclass(slots=True, frozen=True)
class ChatCreated:
    chat_id: str
    token: str
    room_id: str
    org_id: str
    visitor_id: str
    private_room: bool
    at: int
    # auto_resume creates the chat with its user already present, in one fact, so no
    # intermediate state (a chat with nobody present) is ever visible.
    join_user_id: str | None
    join_message_id: str | None


@dataclass(slots=True, frozen=True)
class UserJoined:
    chat_id: str
    user_id: str
    at: int
    message_id: str


@dataclass(slots=True, frozen=True)
class UserLeft:
    chat_id: str
    user_id: str
    at: int
    message_id: str


@dataclass(slots=True, frozen=True)
class MessagePosted:
    chat_id: str
    message_id: str
    at: int
    type: str
    sender_type: str
    sender_id: str
    message: str
    page_url: str | None
    page_title: str | None


@dataclass(slots=True, frozen=True)
class ChatEnded:
    chat_id: str
    at: int
    # one leave event per presence, in join order: (user id, message id)
    leaves: tuple[tuple[str, str], ...]


@dataclass(slots=True, frozen=True)
class PrivacySet:
    chat_id: str
    is_private: bool
    at: int


@dataclass(slots=True, frozen=True)
class TagAdded:
    chat_id: str
    name: str
    at: int


@dataclass(slots=True, frozen=True)
class TagRemoved:
    chat_id: str
    name: str
    at: int


@dataclass(slots=True, frozen=True)
class ApiDataSet:
    """A visitor's api_data for one org, replaced whole; every chat of the visitor in
    that org is touched (its ``updated_at``)."""

    org_id: str
    visitor_id: str
    items: tuple[tuple[str, object], ...]
    at: int


@dataclass(slots=True, frozen=True)
class TokenRotated:
    """An org's or a user's token replaced by a new one; the old one stops working."""

    principal_kind: str  # "org" or "user"
    principal_id: str
    token_hash: str
    at: int


@dataclass(slots=True, frozen=True)
class JwtKeysSet:
    """An org's signed-token verification keys, replaced whole: (kid, algorithm, key)
    each. A shared (HS256) secret is kept here as given: it is what verifies."""

    org_id: str
    keys: tuple[tuple[str, str, str], ...]
    at: int


# A product as a fact carries: (id, name, description, category, product_number, price,
# quantity, monthly_price, monthly_quantity, stock_balance)
ProductRow = tuple[
    str, str, str | None, str | None, str | None, str, int, str | None, int | None, int | None
]


@dataclass(slots=True, frozen=True)
class CartCreated:
    chat_id: str
    cart_id: str
    currency: str
    products: tuple[ProductRow, ...]
    at: int


@dataclass(slots=True, frozen=True)
class CartLocked:
    chat_id: str
    cart_id: str
    at: int


@dataclass(slots=True, frozen=True)
class ProductAdded:
    chat_id: str
    cart_id: str
    product: ProductRow
    at: int


@dataclass(slots=True, frozen=True)
class ProductDeleted:
    chat_id: str
    cart_id: str
    product_id: str
    at: int


Fact = (
    OrgCreated
    | RoomCreated
    | RoomShared
    | UserCreated
    | VisitorRegistered
    | ChatCreated
    | UserJoined
    | UserLeft
    | MessagePosted
    | ChatEnded
    | PrivacySet
    | TagAdded
    | TagRemoved
    | ApiDataSet
    | TokenRotated
    | JwtKeysSet
    | CartCreated
    | CartLocked
    | ProductAdded
    | ProductDeleted
)

CART_FACTS = (CartCreated, CartLocked, ProductAdded, ProductDeleted)
