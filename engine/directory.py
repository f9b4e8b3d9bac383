"""Decisions about the directory: orgs, rooms, shares, users, visitors, new chats.

Pure functions of the state: each checks the rules and returns the facts to commit
(and, where one is made, the new secret token, which never enters a fact).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import errors
from engine.access import org_can_access_room
from engine.facts import (
    ChatCreated,
    OrgCreated,
    RoomCreated,
    RoomShared,
    TokenRotated,
    UserCreated,
    VisitorRegistered,
)
from engine.ids import hash_token, is_uuid, new_chat_token, new_secret, new_uuid, new_visitor_id
from engine.state import State


@dataclass(slots=True, frozen=True)
class Issued:
    """A fact together with the plaintext token it made (returned once to the caller)."""

    fact: OrgCreated | UserCreated | VisitorRegistered | TokenRotated
    token: str


def create_org(name: str, *, at: int) -> Issued:
    token = new_secret()
    return Issued(OrgCreated(new_uuid(), name, at, hash_token(token)), token)


def rotate_token(principal_kind: str, principal_id: str, *, at: int) -> Issued:
    """A new token for an org or a user; applying the fact stops the old one."""
    token = new_secret()
    return Issued(TokenRotated(principal_kind, principal_id, hash_token(token), at), token)


def create_room(org_id: str, name: str, private_chats: bool, *, at: int) -> RoomCreated:
    return RoomCreated(new_uuid(), org_id, name, private_chats, at)


def share_room(state: State, room_id: str, org_id: object) -> RoomShared | None:
    """``None`` when the room is already shared with that org (sharing is idempotent)."""
    if not is_uuid(org_id) or org_id not in state.orgs:
        raise errors.invalid_field("organization_id", "Unknown organization.")
    assert isinstance(org_id, str)
    room = state.rooms[room_id]
    if org_id == room.organization_id:
        raise errors.invalid_field(
            "organization_id", "The room already belongs to this organization."
        )
    if org_id in room.shared_with:
        return None
    return RoomShared(room_id, org_id)


def create_user(
    state: State,
    org_id: str,
    *,
    first_name: str,
    last_name: str,
    alias: str,
    room_ids: list[str] | None,
    at: int,
) -> Issued:
    if room_ids is not None:
        for room_id in room_ids:
            room = state.rooms.get(room_id)
            if room is None or not org_can_access_room(org_id, room):
                raise errors.invalid_field("room_ids", f"Unknown room {room_id!r}.")
        room_ids = list(dict.fromkeys(room_ids))
    token = new_secret()
    fact = UserCreated(
        new_uuid(),
        org_id,
        first_name,
        last_name,
        alias,
        None if room_ids is None else tuple(room_ids),
        at,
        hash_token(token),
    )
    return Issued(fact, token)


def register_visitor(
    state: State, org_id: str | None, visitor_id: str | None, *, at: int
) -> tuple[bool, Issued]:
    """Returns ``(created, issued)``. An id this org (or nobody) already has gets a fresh
    token; an id of another org is a conflict that reveals nothing about it."""
    token = new_secret()
    if visitor_id is None:
        visitor_id = new_visitor_id()
        while visitor_id in state.visitors:  # pragma: no cover - 128 random bits
            visitor_id = new_visitor_id()
    existing = state.visitors.get(visitor_id)
    if existing is not None and existing.organization_id not in (None, org_id):
        raise errors.Conflict("This visitor id is not available.")
    if existing is not None and org_id is None:
        raise errors.Conflict("This visitor id is not available.")
    fact = VisitorRegistered(visitor_id, org_id, at, hash_token(token))
    return existing is None, Issued(fact, token)


def create_chat(
    state: State, room_id: str, visitor_id: str, *, join_user_id: str | None, at: int
) -> ChatCreated:
    room = state.rooms[room_id]
    return ChatCreated(
        chat_id=new_uuid(),
        token=new_chat_token(),
        room_id=room.id,
        org_id=room.organization_id,
        visitor_id=visitor_id,
        private_room=room.private_chats,
        at=at,
        join_user_id=join_user_id,
        join_message_id=None if join_user_id is None else new_uuid(),
    )


MAX_MESSAGE_LENGTH = 2000


def message_text_problem(text: str) -> str | None:
    """The message text rule: 1–2000 code points, not blank, no NUL."""
    if "\x00" in text:
        return "Must not contain NUL characters."
    if len(text) > MAX_MESSAGE_LENGTH:
        return f"Must be at most {MAX_MESSAGE_LENGTH} characters."
    if not text.strip():
        return "Must not be blank."
    return None
