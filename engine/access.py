"""Who may see and do what: the visibility and serving rules."""

from __future__ import annotations

from engine.chat import ChatState
from engine.model import Room, User, Visitor


def org_can_access_room(org_id: str, room: Room) -> bool:
    """An org is a member of a room it owns or that is shared with it."""
    return room.organization_id == org_id or org_id in room.shared_with


def user_of_org(user: User, org_id: str) -> bool:
    """A user belongs to one org; to any other it is as unknown as a missing one."""
    return user.organization_id == org_id


def visitors_own_chat(visitor: Visitor, chat: ChatState) -> bool:
    """Through the client API a visitor sees only its own chats; another visitor's is
    as unknown as a missing one."""
    return chat.visitor_id == visitor.id


def may_serve(user: User, room: Room) -> bool:
    """A user may serve a room: its org is a member, and the room is among its rooms."""
    if not org_can_access_room(user.organization_id, room):
        return False
    return user.room_ids is None or room.id in user.room_ids


def visitor_usable_in_room(visitor: Visitor, org_id: str, room: Room) -> bool:
    """An org may start a chat for a visitor that is its own, the room owner's, or not
    yet anybody's (an openly registered visitor joins the room owner's org)."""
    return visitor.organization_id in (None, org_id, room.organization_id)


def visitor_may_use_room(visitor: Visitor, room: Room) -> bool:
    """Through the client API a visitor may chat in rooms of its own org (or of any org,
    while it belongs to none yet), including rooms shared with its org."""
    org_id = visitor.organization_id
    return org_id is None or org_can_access_room(org_id, room)


def may_share_room(org_id: str, room: Room) -> bool:
    """Only the org that owns a room may share it; an org it is shared with may not pass
    it on."""
    return room.organization_id == org_id


def may_set_api_data(org_id: str, visitor: Visitor) -> bool:
    """An org keeps api_data for its own visitors and for those of nobody yet; any other
    visitor is, to it, unknown."""
    return visitor.organization_id in (None, org_id)


def api_data_org(chat: ChatState) -> str:
    """api_data is per org: a chat shows what the org that owns it (its room's owner)
    set for the visitor, never another org's, even in a room shared with that one."""
    return chat.organization_id


def api_data_shown(visitor: Visitor, chat: ChatState) -> list[dict[str, object]]:
    """The visitor's api_data as ``chat`` (one of the visitor's chats) shows it."""
    return visitor.api_data.get(api_data_org(chat), [])
