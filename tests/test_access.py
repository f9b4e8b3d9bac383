"""Access rules (no trio): serving, room sharing, visitor api_data per org."""

from __future__ import annotations

from engine.access import (
    api_data_org,
    api_data_shown,
    may_serve,
    may_set_api_data,
    may_share_room,
    org_can_access_room,
    user_of_org,
    visitors_own_chat,
)
from engine.chat import ChatState
from engine.facts import ChatCreated
from engine.model import Room, User, Visitor
from engine.report import reported
from engine.state import PRINCIPAL_ORG, PRINCIPAL_USER, PRINCIPAL_VISITOR, limited_per_token

OWNER, GUEST, STRANGER = "o1", "o2", "o3"


def room() -> Room:
    shared = Room("r1", "Sales", OWNER, False, 0, 1)
    shared.shared_with.add(GUEST)
    return shared


def visitor(org_id: str | None) -> Visitor:
    return Visitor("v" * 32, org_id, 0, "h")


def test_only_the_owner_may_share_a_room() -> None:
    assert may_share_room(OWNER, room())
    # the org it is shared with is a member, but may not pass it on
    assert org_can_access_room(GUEST, room())
    assert not may_share_room(GUEST, room())
    assert not may_share_room(STRANGER, room())


def test_users_of_a_shared_room_may_serve_it_within_their_rooms() -> None:
    guest_user = User("u1", GUEST, "A", "B", "ab", None, 0, 2, "h")
    assert may_serve(guest_user, room())
    limited = User("u2", GUEST, "A", "B", "ab", ["r2"], 0, 3, "h")
    assert not may_serve(limited, room())
    stranger = User("u3", STRANGER, "A", "B", "ab", None, 0, 4, "h")
    assert not may_serve(stranger, room())


def test_an_org_sets_api_data_for_its_own_visitors_and_for_nobodys() -> None:
    assert may_set_api_data(OWNER, visitor(OWNER))
    assert may_set_api_data(OWNER, visitor(None))
    assert not may_set_api_data(GUEST, visitor(OWNER))


def chat_of(org_id: str) -> ChatState:
    """A chat of the visitor in a room ``org_id`` owns."""
    fact = ChatCreated("c1", "t" * 48, "r1", org_id, "v" * 32, False, 0, None, None)
    return ChatState.create(fact, seq=5)


def test_a_chat_shows_only_its_own_orgs_api_data() -> None:
    someone = visitor(OWNER)
    someone.api_data = {
        OWNER: [{"name": "name", "value": "Ada"}],
        GUEST: [{"name": "name", "value": "not for the owner's chats"}],
    }
    # a chat in the owner's room, even when the guest org serves it, shows the owner's
    assert api_data_org(chat_of(OWNER)) == OWNER
    assert api_data_shown(someone, chat_of(OWNER)) == [{"name": "name", "value": "Ada"}]
    assert api_data_shown(someone, chat_of(GUEST)) == [
        {"name": "name", "value": "not for the owner's chats"}
    ]
    assert api_data_shown(someone, chat_of(STRANGER)) == []
    assert api_data_shown(visitor(None), chat_of(OWNER)) == []


def test_a_user_belongs_to_its_own_org_only() -> None:
    alan = User("u1", OWNER, "A", "B", "ab", None, 0, 2, "h")
    assert user_of_org(alan, OWNER)
    assert not user_of_org(alan, GUEST)


def test_a_visitor_sees_only_its_own_chats() -> None:
    mine = chat_of(OWNER)
    assert visitors_own_chat(visitor(OWNER), mine)
    assert not visitors_own_chat(Visitor("w" * 32, OWNER, 0, "h2"), mine)


def test_only_user_and_visitor_tokens_are_limited_per_token() -> None:
    assert limited_per_token(PRINCIPAL_USER) and limited_per_token(PRINCIPAL_VISITOR)
    assert not limited_per_token(PRINCIPAL_ORG) and not limited_per_token("admin")


def test_the_report_covers_only_the_orgs_own_rooms() -> None:
    assert reported("org-a", "org-a")
    assert not reported("org-a", "org-b")  # a room shared with org-a stays out
