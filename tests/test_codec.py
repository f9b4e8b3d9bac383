"""Snapshot and log encodings round-trip every kind of record exactly."""

from __future__ import annotations

import itertools

import orjson

from engine import directory
from engine.facts import ApiDataSet
from engine.state import State
from engine.views import chat_collection_view, chat_rich_view
from persistence.codec import decode_fact, decode_state, encode_fact, encode_state, pack, unpack


def test_state_and_facts_round_trip() -> None:
    state = State()
    clock = itertools.count(1_000)
    facts = []

    def apply(fact: object) -> None:
        facts.append(fact)
        state.apply(fact)  # type: ignore[arg-type]

    org = directory.create_org("Org", at=next(clock))
    apply(org.fact)
    org_id = org.fact.org_id  # type: ignore[union-attr]
    room = directory.create_room(org_id, "Room", True, at=next(clock))
    apply(room)
    user = directory.create_user(
        state,
        org_id,
        first_name="A",
        last_name="B",
        alias="a",
        room_ids=[room.room_id],
        at=next(clock),
    )
    apply(user.fact)
    user_id = user.fact.user_id  # type: ignore[union-attr]
    _, visitor = directory.register_visitor(state, org_id, None, at=next(clock))
    apply(visitor.fact)
    visitor_id = visitor.fact.visitor_id  # type: ignore[union-attr]
    created = directory.create_chat(
        state, room.room_id, visitor_id, join_user_id=user_id, at=next(clock)
    )
    apply(created)
    chat = state.chats[created.chat_id]
    for fact in chat.decide_post(
        sender_type="user",
        sender_id=user_id,
        type="autosuggest",
        message="hi",
        page_url="http://x/",
        page_title="X",
        may_serve=True,
        at=next(clock),
    ):
        apply(fact)
    for fact in chat.decide_tag("vip", add=True, at=next(clock)):
        apply(fact)
    (cart_fact,) = chat.decide_cart(
        "EUR", [("W", None, None, None, "19.99", 3, "1.50", 2, 7)], at=next(clock)
    )
    apply(cart_fact)
    for fact in chat.decide_lock(cart_fact.cart_id, at=next(clock)):
        apply(fact)
    apply(ApiDataSet(org_id, visitor_id, (("name", "Milan"), ("list", ("a", 1))), next(clock)))
    for fact in chat.decide_end(at=next(clock)):
        apply(fact)

    for fact in facts:
        assert decode_fact(unpack(pack(encode_fact(fact)))) == fact
    restored = decode_state(unpack(pack(encode_state(state))))
    assert pack(encode_state(restored)) == pack(
        encode_state(state)
    )  # tuples and lists encode alike
    again = restored.chats[chat.id]
    api_data = restored.visitors[visitor_id].api_data[org_id]
    assert chat_collection_view(again) == chat_collection_view(chat)
    # what clients see: the JSON (a tuple and a list render alike)
    assert orjson.dumps(chat_rich_view(again, restored.users, api_data)) == orjson.dumps(
        chat_rich_view(chat, state.users, state.visitors[visitor_id].api_data[org_id])
    )
    assert restored.tokens == state.tokens and restored.seq == state.seq
    assert list(restored.report_by_end[org_id]) == list(state.report_by_end[org_id])
    assert restored.tag_chats == state.tag_chats
