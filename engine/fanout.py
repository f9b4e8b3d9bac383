"""Fan-out: the deltas of one committed mutation -> the exact (channel, event) list.

This is the table of which channels hear of what (docs/realtime.md), in one place. For a chat C in room R owned by org O with
visitor V, **Users** is participants ∪ present users, before ∪ after the mutation (so a
leaving user still hears its own leave), and **Orgs** is O and every org R is shared
with. Visitor channels get the visitor view of messages and presences.

Resources are rendered once per view and shared by every channel that carries them
(``Payload``); encoding happens later, in the realtime core (``engine/realtime/``): a
live event once per channel and encoding (``hub.py``), a replayed one per session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from engine import channels
from engine.channels import ChannelKey
from engine.chat import ChangeSet, ChatState
from engine.model import Message, shared
from engine.state import State
from engine.views import (
    chat_collection_view,
    message_view,
    participation_view,
    presence_view,
)

ADDED, CHANGED, REMOVED = "added", "changed", "removed"


class Payload:
    """A rendered resource shared by several events.

    It starts as a dict (``data``); its JSON encoding is made once, on first need.
    Once its batch is published, ``compact`` keeps only the JSON bytes: that is what
    channel histories hold (hundreds of thousands of events), at a fraction of the
    dict's memory. msgpack is then derived from the JSON, for msgpack sessions only.
    """

    __slots__ = ("data", "json")

    def __init__(self, data: dict[str, Any] | None, json: bytes | None = None) -> None:
        self.data = data
        self.json = json

    def as_json(self) -> bytes:
        if self.json is None:
            # orjson returns a bytes object with its whole output buffer allocated
            # (several times the JSON's size); histories hold hundreds of thousands of
            # these, so keep an exact-size copy
            self.json = bytes(memoryview(orjson.dumps(self.data)))
        return self.json

    def as_msgpack(self) -> bytes:
        data = self.data if self.data is not None else orjson.loads(self.as_json())
        return msgpack.packb(data)

    def compact(self) -> None:
        if self.data is not None:
            self.as_json()
            self.data = None


@dataclass(slots=True)  # not frozen: a frozen __init__ is several times slower
class Publication:
    """One event, and every channel that carries it (each gives it its own ``seq``)."""

    channels: list[ChannelKey]  # channels.key_of(a name): a sub-channel's is a tuple
    action: str
    resource_id: str
    payload: Payload | None  # None for "removed"


def _ordered_union(*groups: Any) -> list[str]:
    return list(dict.fromkeys(item for group in groups for item in group))


class _Addresses:
    """The channels of one chat, computed once per change set."""

    def __init__(self, state: State, chat: ChatState, changes: ChangeSet) -> None:
        room = state.rooms[chat.room_id]
        users = state.users
        self.user_org = {
            user_id: users[user_id].organization_id
            for user_id in _ordered_union(
                sorted(changes.users_before),
                sorted(changes.users_after),
                changes.present_before,
                changes.present_after,
            )
        }
        self.users = _ordered_union(sorted(changes.users_before), sorted(changes.users_after))
        self.present = _ordered_union(changes.present_before, changes.present_after)
        self.orgs = [room.organization_id, *sorted(room.shared_with)]
        # shared: they are the first part of every sub-channel key (channels.sub_key)
        self.visitor_chats = shared(channels.visitor_chats(chat.visitor_id))
        self.user_chats = {u: shared(channels.user_chats(self.user_org[u], u)) for u in self.users}
        self.room_chats = [shared(channels.room_chats(org, room.id)) for org in self.orgs]

    def subs(self, chat_id: str, collection: str) -> tuple[list[ChannelKey], list[ChannelKey]]:
        """([the visitor's sub-channel], the operators' sub-channels)."""
        sub_key = channels.sub_key
        operators: list[ChannelKey] = [
            sub_key(self.user_chats[u], chat_id, collection) for u in self.users
        ]
        operators += [sub_key(room, chat_id, collection) for room in self.room_chats]
        return [sub_key(self.visitor_chats, chat_id, collection)], operators


def fan_out(state: State, changes: ChangeSet) -> list[Publication]:
    chat = state.chats[changes.chat_id]
    where = _Addresses(state, chat, changes)
    out: list[Publication] = []
    emit = out.append
    chat_view: Payload | None = None
    chat_diff: Payload | None = None

    def full_chat() -> Payload:
        nonlocal chat_view
        if chat_view is None:
            chat_view = Payload(chat_collection_view(chat))
        return chat_view

    def changed_chat() -> Payload:
        nonlocal chat_diff
        if chat_diff is None:
            after = full_chat().data
            assert after is not None  # compacted only once the batch is published
            before = changes.before_view or {}
            # updated_at always travels with a change, even within one millisecond
            diff = {"id": chat.id, "updated_at": after["updated_at"]}
            diff.update((k, v) for k, v in after.items() if before.get(k) != v)
            chat_diff = Payload(diff)
        return chat_diff

    for delta in changes.deltas:
        kind = delta.kind
        if kind == "chat_added":
            added: list[ChannelKey] = [where.visitor_chats]
            added += [where.user_chats[user_id] for user_id in sorted(changes.users_after)]
            added += where.room_chats
            emit(Publication(added, ADDED, chat.id, full_chat()))
        elif kind in ("chat_changed", "chat_ended"):
            changed: list[ChannelKey] = [where.visitor_chats]
            entered: list[ChannelKey] = []  # user chats that did not hold the chat yet
            for user_id in where.users:
                if user_id in changes.collection_before:
                    changed.append(where.user_chats[user_id])
                else:
                    entered.append(where.user_chats[user_id])
            if kind == "chat_changed":
                changed += where.room_chats
            emit(Publication(changed, CHANGED, chat.id, changed_chat()))
            if entered:
                emit(Publication(entered, ADDED, chat.id, full_chat()))
            if kind == "chat_ended":
                emit(Publication(list(where.room_chats), REMOVED, chat.id, None))
        elif kind == "participation_added":
            visitor_channel, operator_channels = where.subs(chat.id, "participations")
            payload = Payload(participation_view(delta.subject))
            emit(Publication(visitor_channel + operator_channels, ADDED, delta.subject[0], payload))
        elif kind in ("presence_added", "presence_removed"):
            _presence(state, chat, where, delta.subject, kind == "presence_added", emit)
        elif kind == "message_added":
            _message(state, chat, where, delta.subject, emit)
        elif kind == "current_added":
            channel = channels.current_chats(where.user_org[delta.subject], delta.subject)
            emit(Publication([channel], ADDED, chat.id, full_chat()))
        elif kind == "current_removed":
            channel = channels.current_chats(where.user_org[delta.subject], delta.subject)
            emit(Publication([channel], REMOVED, chat.id, None))
    return out


def _presence(
    state: State, chat: ChatState, where: _Addresses, user_id: str, added: bool, emit: Any
) -> None:
    visitor_channel, operator_channels = where.subs(chat.id, "presences")
    current: list[ChannelKey] = [
        channels.sub_key(
            shared(channels.current_chats(where.user_org[present], present)), chat.id, "presences"
        )
        for present in where.present
    ]
    if not added:
        emit(Publication(visitor_channel + operator_channels + current, REMOVED, user_id, None))
        return
    presence = chat.presences[user_id]
    user = state.users[user_id]
    visitor_payload = Payload(presence_view(presence, chat.id, user, visitor_view=True))
    operator_payload = Payload(presence_view(presence, chat.id, user))
    emit(Publication(visitor_channel, ADDED, user_id, visitor_payload))
    emit(Publication(operator_channels + current, ADDED, user_id, operator_payload))


def _message(state: State, chat: ChatState, where: _Addresses, message: Message, emit: Any) -> None:
    visitor_channel, operator_channels = where.subs(chat.id, "messages")
    emit(
        Publication(
            visitor_channel,
            ADDED,
            message.id,
            Payload(message_view(message, state.users, visitor_view=True)),
        )
    )
    emit(
        Publication(
            operator_channels, ADDED, message.id, Payload(message_view(message, state.users))
        )
    )
