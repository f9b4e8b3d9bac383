"""Channel names (docs/protocol.md): building them, parsing them, and who may subscribe.

A channel is the path of the collection it mirrors. This module is the one place that
knows their shapes; fan-out builds names with it and the WebSocket gateway parses and
authorizes subscriptions with it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from engine.access import org_can_access_room
from engine.ids import is_uuid, is_visitor_id
from engine.state import State

SUB_COLLECTIONS = ("presences", "messages", "participations")
SUB_NAMES = {name: name for name in SUB_COLLECTIONS}  # the one string of each
MAX_SUBSCRIPTIONS = 1000  # per WebSocket session; one more: too_many_subscriptions

VISITOR_CHATS = "visitor_chats"
USER_CHATS = "user_chats"
ROOM_CHATS = "room_chats"
CURRENT_CHATS = "current_chats"
VISITOR_SUB = "visitor_sub"
USER_SUB = "user_sub"
ROOM_SUB = "room_sub"
CURRENT_PRESENCES = "current_presences"


def visitor_chats(visitor_id: str) -> str:
    return f"/api/v5/client/visitors/{visitor_id}/chats"


def user_chats(org_id: str, user_id: str) -> str:
    return f"/api/v5/orgs/{org_id}/users/{user_id}/chats"


def room_chats(org_id: str, room_id: str) -> str:
    return f"/api/v5/orgs/{org_id}/rooms/{room_id}/chats"


def current_chats(org_id: str, user_id: str) -> str:
    return f"/api/v5/orgs/{org_id}/users/{user_id}/current_chats"


def current_presences(org_id: str, user_id: str, chat_id: str) -> str:
    return f"/api/v5/orgs/{org_id}/users/{user_id}/current_chats/{chat_id}/presences"


def sub(collection_channel: str, chat_id: str, sub_collection: str) -> str:
    return f"{collection_channel}/{chat_id}/{sub_collection}"


# Inside the engine a chat's sub-channel is the key (collection channel, chat id, sub
# collection) of three shared strings, not its ~170-byte name: a store of 100,000 chats
# has ~600,000 such channels. ``key_of`` and ``name_of`` are exact inverses.
ChannelKey = str | tuple[str, str, str]


def sub_key(collection_channel: str, chat_id: str, sub_collection: str) -> tuple[str, str, str]:
    return (collection_channel, chat_id, sub_collection)


def key_of(name: str) -> ChannelKey:
    head, _, last = name.rpartition("/")
    if last in SUB_COLLECTIONS and "/" in head:
        collection, _, chat_id = head.rpartition("/")
        return (sys.intern(collection), sys.intern(chat_id), SUB_NAMES[last])
    return name


def name_of(key: ChannelKey) -> str:
    return key if isinstance(key, str) else f"{key[0]}/{key[1]}/{key[2]}"


@dataclass(slots=True, frozen=True)
class ChannelRef:
    kind: str
    org_id: str | None = None
    user_id: str | None = None
    room_id: str | None = None
    visitor_id: str | None = None
    chat_id: str | None = None
    sub: str | None = None


_SUB = "(presences|messages|participations)"
_PATTERNS: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = [
    (re.compile(r"/api/v5/client/visitors/([^/]+)/chats"), VISITOR_CHATS, ("visitor_id",)),
    (
        re.compile(rf"/api/v5/client/visitors/([^/]+)/chats/([^/]+)/{_SUB}"),
        VISITOR_SUB,
        ("visitor_id", "chat_id", "sub"),
    ),
    (re.compile(r"/api/v5/orgs/([^/]+)/users/([^/]+)/chats"), USER_CHATS, ("org_id", "user_id")),
    (
        re.compile(rf"/api/v5/orgs/([^/]+)/users/([^/]+)/chats/([^/]+)/{_SUB}"),
        USER_SUB,
        ("org_id", "user_id", "chat_id", "sub"),
    ),
    (re.compile(r"/api/v5/orgs/([^/]+)/rooms/([^/]+)/chats"), ROOM_CHATS, ("org_id", "room_id")),
    (
        re.compile(rf"/api/v5/orgs/([^/]+)/rooms/([^/]+)/chats/([^/]+)/{_SUB}"),
        ROOM_SUB,
        ("org_id", "room_id", "chat_id", "sub"),
    ),
    (
        re.compile(r"/api/v5/orgs/([^/]+)/users/([^/]+)/current_chats"),
        CURRENT_CHATS,
        ("org_id", "user_id"),
    ),
    (
        re.compile(r"/api/v5/orgs/([^/]+)/users/([^/]+)/current_chats/([^/]+)/presences"),
        CURRENT_PRESENCES,
        ("org_id", "user_id", "chat_id"),
    ),
]


def parse(channel: str) -> ChannelRef | None:
    """The channel's parts, or ``None`` for a path that is no channel (docs/protocol.md, "Channels")."""
    for pattern, kind, names in _PATTERNS:
        match = pattern.fullmatch(channel)
        if match is None:
            continue
        parts = dict(zip(names, match.groups(), strict=True))
        ids_ok = all(
            is_visitor_id(value) if name == "visitor_id" else is_uuid(value)
            for name, value in parts.items()
            if name != "sub"
        )
        return ChannelRef(kind, **parts) if ids_ok else None
    return None


def may_subscribe(state: State, principal_kind: str, principal_id: str, ref: ChannelRef) -> bool:
    """Who may subscribe where: a visitor its own channels; a user its own user channels and the
    room/chat channels of rooms its org can access; an org token its org (and its own
    visitors); the admin everything."""
    if principal_kind == "admin":
        return True
    if ref.visitor_id is not None:
        if principal_kind == "visitor":
            return principal_id == ref.visitor_id
        if principal_kind == "org":
            visitor = state.visitors.get(ref.visitor_id)
            return visitor is not None and visitor.organization_id == principal_id
        return False
    if principal_kind == "visitor":
        return False
    if principal_kind == "user":
        user = state.users.get(principal_id)
        if user is None or ref.org_id != user.organization_id:
            return False
        if ref.user_id is not None:
            return ref.user_id == user.id
    elif ref.org_id != principal_id:  # org token
        return False
    elif ref.user_id is not None:
        user = state.users.get(ref.user_id)
        return user is not None and user.organization_id == principal_id
    assert ref.room_id is not None and ref.org_id is not None
    room = state.rooms.get(ref.room_id)
    return room is not None and org_can_access_room(ref.org_id, room)


def subscribe_refusal(
    state: State,
    principal_kind: str,
    principal_id: str,
    channel: str,
    subscriptions: set[str],
    limit: int = MAX_SUBSCRIPTIONS,
) -> tuple[str, str] | None:
    """Why a session holding ``subscriptions`` may not subscribe to ``channel`` — the
    error code and detail the session is answered with — or ``None``. A path that is no
    channel is ``unknown_channel``; one outside the caller's rights, existing or not,
    ``forbidden``; subscribing again to a held channel never counts against the limit."""
    ref = parse(channel)
    if ref is None:
        return "unknown_channel", "No such channel."
    if not may_subscribe(state, principal_kind, principal_id, ref):
        return "forbidden", "You may not subscribe to this channel."
    if channel not in subscriptions and len(subscriptions) >= limit:
        return "too_many_subscriptions", f"At most {limit} subscriptions per session."
    return None
