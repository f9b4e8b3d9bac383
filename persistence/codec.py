"""msgpack encoding of facts (log records) and of the whole state (snapshots).

Facts are frozen dataclasses: a fact is ``[name, field, field, ...]`` in declaration
order. No fact field is a list, so lists read back become tuples (``room_ids``,
``leaves``). The state codec writes every record as a flat list of its fields, in
declaration order too, so adding a field at the end stays readable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from engine import facts as fact_types
from engine.chat import ChatState
from engine.facts import Fact
from engine.model import Cart, Message, Org, Presence, Product, Room, User, Visitor
from engine.state import State

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
        "rooms": [
            [*_row(room, ("shared_with",)), sorted(room.shared_with)]
            for room in state.rooms.values()
        ],
        "users": [_row(user) for user in state.users.values()],
        "visitors": [_row(visitor) for visitor in state.visitors.values()],
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
    }


def decode_state(data: dict[str, Any], state: State | None = None) -> State:
    """Rebuild a state, indexes included, from ``encode_state``'s output, into ``state``
    (which must be empty) or a new one."""
    state = state if state is not None else State()
    for row in data["orgs"]:
        state.restore_org(Org(*row))
    for row in data["rooms"]:
        room = Room(*row[:-1])
        room.shared_with = set(row[-1])
        state.restore_room(room)
    for row in data["users"]:
        state.restore_user(User(*row))
    for row in data["visitors"]:
        state.restore_visitor(Visitor(*row))
    scalar_fields = [f.name for f in dataclasses.fields(ChatState) if f.name not in _CHAT_NESTED]
    for scalars, messages, presences, ever_present, participants, tags, carts in sorted(
        data["chats"], key=lambda chat: chat[0][scalar_fields.index("seq")]
    ):
        chat = ChatState(**dict(zip(scalar_fields, scalars, strict=True)))
        chat.messages = [Message(*row) for row in messages]
        chat.presences = {row[0]: Presence(*row) for row in presences}
        chat.ever_present = set(ever_present)
        chat.user_participants = list(participants)
        chat.tags = list(tags)
        for *cart_fields, products in carts:
            cart = Cart(*cart_fields)
            cart.products = [Product(*row) for row in products]
            chat.carts.append(cart)
        state.restore_chat(chat)
    state.seq = data["seq"]
    return state
