"""msgpack encoding of facts (log records) and of the whole state (snapshots).

Facts are frozen dataclasses: a fact is ``[name, field, field, ...]`` in declaration
order. No fact field is a list, so lists read back become tuples (``room_ids``,
``leaves``). The state codec writes every record as a flat list of its fields, in
declaration order too, so adding a field at the end stays readable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgpack

from engine import facts as fact_types
from engine.chat import ChatState
from engine.facts import Fact
from engine.model import (
    NO_API_DATA,
    Cart,
    Message,
    Org,
    Presence,
    Product,
    Room,
    User,
    Visitor,
    shared,
)
from engine.state import State
from engine.webhooks import Webhook

FACT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in vars(fact_types).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls)
}


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(item) for item in value)
    return value


def encode_fact(fact: Fact) -> list[Any]:
    return [type(fact).__name__, *(getattr(fact, f.name) for f in dataclasses.fields(fact))]


def decode_fact(raw: list[Any]) -> Fact:
    cls = FACT_TYPES[raw[0]]
    fact: Fact = cls(*(_tupled(value) for value in raw[1:]))
    return fact


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# -- the whole state --------------------------------------------------------------------
def _row(obj: Any, skip: tuple[str, ...] = ()) -> list[Any]:
    return [getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in skip]


_CHAT_NESTED = ("messages", "presences", "ever_present", "user_participants", "tags", "carts")


def encode_state(state: State) -> dict[str, Any]:
    return {
        "seq": state.seq,
        "orgs": [_row(org) for org in state.orgs.values()],
        "jwt_keys": [
            [org_id, [[key.kid, key.algorithm, key.key] for key in keys.values()]]
            for org_id, keys in state.jwt_keys.items()
        ],
        "rooms": [
            [*_row(room, ("shared_with",)), sorted(room.shared_with)]
            for room in state.rooms.values()
        ],
        "users": [_row(user) for user in state.users.values()],
        "visitors": [
            [*_row(visitor, ("api_data",)), dict(visitor.api_data)]
            for visitor in state.visitors.values()
        ],
        "chats": [
            [
                _row(chat, _CHAT_NESTED),
                [_row(message) for message in chat.messages],
                [_row(presence) for presence in chat.presences.values()],
                sorted(chat.ever_present),
                list(chat.user_participants),
                list(chat.tags),
                [
                    [*_row(cart, ("products",)), [_row(p) for p in cart.products]]
                    for cart in chat.carts
                ],
            ]
            for chat in state.chats.values()
        ],
        "webhooks": [_row(hook) for hook in state.webhooks.by_id.values()],
    }


def decode_state(data: Mapping[str, Any], state: State | None = None) -> State:
    """Rebuild a state, indexes included, from ``encode_state``'s output, into ``state``
    (which must be empty) or a new one."""
    return decode_state_items(data.items(), state)


def decode_state_items(items: Iterable[tuple[str, Any]], state: State | None = None) -> State:
    """``decode_state`` from ``encode_state``'s entries in their written order, where a
    collection may be an iterator (``persistence.snapshot`` streams the chats one at a
    time, so a chat's decoded rows are freed before the next is read: a large snapshot
    then leaves no freed rows scattered among the live objects, docs/benchmarks.md,
    "Figures behind choices in the code"). Repeated ids are shared strings (``engine.model.shared``)."""
    state = state if state is not None else State()
    seq = None
    for key, value in items:
        if key == "seq":
            seq = value
        elif key == "orgs":
            for row in value:
                row[0] = shared(row[0])
                state.restore_org(Org(*row))
        elif key == "jwt_keys":
            for org_id, keys in value:
                state.restore_jwt_keys(org_id, (tuple(key) for key in keys))
        elif key == "rooms":
            for row in value:
                row[0], row[2] = shared(row[0]), shared(row[2])
                room = Room(*row[:-1])
                room.shared_with = {shared(org_id) for org_id in row[-1]}
                state.restore_room(room)
        elif key == "users":
            for row in value:
                row[0], row[1] = shared(row[0]), shared(row[1])
                state.restore_user(User(*row))
        elif key == "visitors":
            for row in value:
                row[0] = shared(row[0])
                if row[1] is not None:
                    row[1] = shared(row[1])
                if not row[4]:
                    row[4] = NO_API_DATA
                state.restore_visitor(Visitor(*row))
        elif key == "chats":
            state.restore_chats(_decode_chats(value))
        elif key == "webhooks":  # absent from snapshots older than webhooks
            for row in value:
                hook = Webhook(*row)
                hook.events = tuple(hook.events)
                state.webhooks.by_id[hook.id] = hook
        else:
            raise ValueError(f"unknown state section {key!r}")
    if seq is None:
        raise ValueError("state without seq")
    state.seq = seq
    return state


_SCALAR_FIELDS = [f.name for f in dataclasses.fields(ChatState) if f.name not in _CHAT_NESTED]
_SHARED_SCALARS = [
    _SCALAR_FIELDS.index(name) for name in ("id", "room_id", "organization_id", "visitor_id")
]


def _decode_chats(rows: Iterable[list[Any]]) -> Iterator[ChatState]:
    last_seq = 0
    for row in rows:
        chat = _decode_chat(row)
        if chat.seq <= last_seq:  # restore_chats needs creation order
            raise ValueError(f"chat {chat.id} out of creation order in the snapshot")
        last_seq = chat.seq
        yield chat


def _decode_chat(row: list[Any]) -> ChatState:
    scalars, messages, presences, ever_present, participants, tags, carts = row
    for index in _SHARED_SCALARS:
        scalars[index] = shared(scalars[index])
    chat = ChatState(**dict(zip(_SCALAR_FIELDS, scalars, strict=True)))
    for message in messages:  # type, sender_type, sender_id
        message[1], message[3], message[4] = (
            shared(message[1]),
            shared(message[3]),
            shared(message[4]),
        )
    chat.messages = [Message(*message) for message in messages]
    for presence in presences:
        presence[0] = shared(presence[0])
    chat.presences = {presence[0]: Presence(*presence) for presence in presences}
    chat.ever_present = [shared(user_id) for user_id in ever_present]
    chat.user_participants = [shared(user_id) for user_id in participants]
    if tags:
        chat.tags = [shared(name) for name in tags]
    if carts:
        chat.carts = [_decode_cart(row) for row in carts]
    return chat


def _decode_cart(row: list[Any]) -> Cart:
    *cart_fields, products = row
    cart = Cart(*cart_fields)
    cart.products = [Product(*product) for product in products]
    return cart
