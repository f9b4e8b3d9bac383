"""auto_resume: which of a visitor's chats in a room a resume returns.

One rule serves both paths. An operator's ``auto_resume=<user>`` resumes the newest chat
that is still recent and that the user may join (one it is already present in counts);
the visitor's own ``auto_resume: true`` joins nobody, so only recency matters. When no
chat qualifies the caller creates one.

The actors call this twice: once over every candidate, in the (room, visitor) actor
that makes a resume-or-create atomic, and again over the chosen chat alone inside that
chat's actor, where the chat may have ended, gone quiet or turned private meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine import errors
from engine.access import may_serve
from engine.chat import ChatState
from engine.model import Room, User


def require_resumer(user: User, room: Room) -> None:
    """An operator's resume needs a user who may serve the room, whether or not there
    is a chat to resume: otherwise nothing is resumed and nothing created."""
    if not may_serve(user, room):
        raise errors.PermissionDenied("The user may not serve this room.")


def is_recent(chat: ChatState, *, now: int, window_ms: int) -> bool:
    """Not ended, and updated no longer than ``window_ms`` ago (the edge included)."""
    return chat.end_time is None and now - chat.updated_at <= window_ms


def choose_chat(
    candidates: Iterable[ChatState],
    *,
    user: User | None,
    room: Room,
    now: int,
    window_ms: int,
) -> ChatState | None:
    """The newest (latest created) of ``candidates`` — the visitor's chats in ``room`` —
    that a resume returns, or ``None``. With a ``user``, it must be allowed to join the
    chat; ``None`` stands for the visitor's own resume, which joins nobody."""
    serving = user is not None and may_serve(user, room)
    chosen: ChatState | None = None
    for chat in candidates:
        if chosen is not None and chat.seq < chosen.seq:
            continue
        if not is_recent(chat, now=now, window_ms=window_ms):
            continue
        if user is not None and not chat.may_join(user.id, serving):
            continue
        chosen = chat
    return chosen
