"""Principals and the authorization checks (who may call what: docs/edge.md and the README).

A token is looked up by its SHA-256 digest (tokens are stored hashed); the admin token's
digest is compared with ``hmac.compare_digest``. A signed token (a JWT, sent as
``Authorization: Bearer`` or ``Token``, or ``?token=`` on ``/ws``) is verified by
``gateway.jwtauth`` and names a user or a visitor, with exactly its rights
(docs/integration.md). Checks raise the contract's errors:
401 with no or a bad token, 403 for a path of another org or a principal that may not
make the call, 404 for objects the caller's org cannot see.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from engine import errors
from engine.access import org_can_access_room, user_of_org, visitors_own_chat
from engine.chat import ChatState
from engine.ids import hash_token, is_uuid
from engine.model import JwtKey, Room, User, Visitor
from engine.state import PRINCIPAL_ORG, PRINCIPAL_USER, PRINCIPAL_VISITOR, State
from engine.tokens import looks_like_jwt
from gateway import jwtauth

ADMIN = "admin"


@dataclass(slots=True, frozen=True)
class Principal:
    kind: str  # admin, org, user, visitor
    id: str
    org_id: str | None  # the org of an org or user principal
    # a signed token's: when it expires (engine milliseconds) and the key that verified it
    expires_ms: int | None = None
    jwt_key: JwtKey | None = None


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization`` header: ``Token <token>`` or ``Bearer <jwt>``."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme not in ("Token", "Bearer"):
        return None
    return token.strip() or None


def authenticate(
    state: State, header: str | None, admin_token_hash: str, *, now_ms: int | None = None
) -> Principal:
    token = bearer(header)
    if token is None:
        raise errors.NotAuthenticated("Authentication credentials were not provided.")
    return principal_for_token(state, token, admin_token_hash, now_ms=now_ms)


def principal_for_token(
    state: State, token: str, admin_token_hash: str, *, now_ms: int | None = None
) -> Principal:
    """``now_ms`` is the engine's clock, against which a signed token's ``exp`` is
    checked (the wall clock when not given)."""
    digest = hash_token(token)
    if hmac.compare_digest(digest, admin_token_hash):
        return Principal(ADMIN, ADMIN, None)
    if looks_like_jwt(token):
        subject = jwtauth.verify(
            state, token, now_ms=time.time_ns() // 1_000_000 if now_ms is None else now_ms
        )
        return Principal(subject.kind, subject.id, subject.org_id, subject.expires_ms, subject.key)
    found = state.principal(digest)
    if found is None:
        raise errors.NotAuthenticated("Invalid token.")
    kind, ident = found
    if kind == PRINCIPAL_ORG:
        return Principal(kind, ident, ident)
    if kind == PRINCIPAL_USER:
        return Principal(kind, ident, state.users[ident].organization_id)
    return Principal(PRINCIPAL_VISITOR, ident, None)


def require_org(state: State, principal: Principal, org_id: str, *, users_too: bool = True) -> None:
    """The caller may act inside ``org_id``: admin, the org itself, and (unless
    ``users_too`` is false) the org's users. Another org's path is 403; an unknown org
    is 404 for the admin and 403 for everyone else (nothing is revealed)."""
    if principal.kind == ADMIN:
        if org_id not in state.orgs:
            raise errors.NotFound("Organization not found.")
        return
    if principal.org_id != org_id:
        raise errors.Forbidden("You do not have access to this organization.")
    if principal.kind == PRINCIPAL_USER and not users_too:
        raise errors.Forbidden("An operator token may not make this call.")


def require_admin(principal: Principal) -> None:
    if principal.kind != ADMIN:
        raise errors.Forbidden("Only the admin token may make this call.")


def require_self(principal: Principal, user_id: str, field: str | None = None) -> None:
    """A user token acts as itself only."""
    if principal.kind == PRINCIPAL_USER and principal.id != user_id:
        what = f"'{field}'" if field else "this path"
        raise errors.Forbidden(f"An operator may only act as itself ({what} names another user).")


def visible_room(state: State, org_id: str, room_id: str) -> Room:
    room = state.rooms.get(room_id)
    if room is None or not org_can_access_room(org_id, room):
        raise errors.NotFound("Room not found.")
    return room


def visible_chat(state: State, org_id: str, chat_id: str) -> ChatState:
    chat = state.chats.get(chat_id)
    if chat is None or not org_can_access_room(org_id, state.rooms[chat.room_id]):
        raise errors.NotFound("Chat not found.")
    return chat


def named_user(state: State, org_id: str, user_id: object, field: str) -> User:
    """A user named in a body or query field (``sender_id``, ``user_id``,
    ``auto_resume``): anything but a user of the org is 400 naming the field."""
    user = state.users.get(user_id) if isinstance(user_id, str) and is_uuid(user_id) else None
    if user is None or not user_of_org(user, org_id):
        raise errors.invalid_field(field, "Must be the id of a user of the organization.")
    return user


def org_user(state: State, org_id: str, user_id: str) -> User:
    user = state.users.get(user_id)
    if user is None or not user_of_org(user, org_id):
        raise errors.NotFound("User not found.")
    return user


def require_visitor(state: State, principal: Principal, visitor_id: str) -> Visitor:
    """The visitor's own token (or the admin's) on its own paths; anything else is 403."""
    if principal.kind == ADMIN or (
        principal.kind == PRINCIPAL_VISITOR and principal.id == visitor_id
    ):
        visitor = state.visitors.get(visitor_id)
        if visitor is None:
            raise errors.NotFound("Visitor not found.")
        return visitor
    raise errors.Forbidden("Only the visitor itself may use these paths.")


def own_chat(state: State, visitor: Visitor, chat_id: str) -> ChatState:
    """Another visitor's chat is exactly as unknown as a missing one."""
    chat = state.chats.get(chat_id)
    if chat is None or not visitors_own_chat(visitor, chat):
        raise errors.NotFound("Chat not found.")
    return chat
