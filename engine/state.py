"""The whole engine state: the directory, every chat, and the ordered indexes.

``State.apply(fact)`` is the only way the state changes. It hands out sequence numbers
in apply order, so replaying a log rebuilds identical state. Queries return ordered views
(``engine.collections``) for keyset pagination; they never copy a collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sortedcontainers import SortedDict

from engine.access import api_data_org
from engine.chat import ChangeSet, ChatState
from engine.collections import KeyedListView, ListView, SortedView
from engine.facts import (
    CART_FACTS,
    ApiDataSet,
    ChatCreated,
    ChatEnded,
    Fact,
    JwtKeysSet,
    MessagePosted,
    OrgCreated,
    PrivacySet,
    RoomCreated,
    RoomShared,
    TagAdded,
    TagRemoved,
    TokenRotated,
    UserCreated,
    UserJoined,
    UserLeft,
    VisitorRegistered,
    WebhookCreated,
    WebhookDeleted,
)
from engine.model import SENDER_USER, JwtKey, Org, Room, User, Visitor, shared
from engine.views import chat_collection_view
from engine.webhooks import Webhooks

PRINCIPAL_ORG = "org"
PRINCIPAL_USER = "user"
PRINCIPAL_VISITOR = "visitor"


def limited_per_token(principal_kind: str) -> bool:
    """Writes and WebSocket sessions are limited per user and per visitor token; an
    org's or the admin's token (a service acting for many) is not."""
    return principal_kind in (PRINCIPAL_USER, PRINCIPAL_VISITOR)


_IndexEntry = tuple[dict[Any, SortedDict], Any, Any]  # (index, key, position)


def _bucket(mapping: dict[Any, SortedDict], key: Any) -> SortedDict:
    """``mapping.setdefault(key, SortedDict())`` without building a SortedDict on every
    call: building one is dear, and this runs for every message posted and every record a
    restart replays (docs/benchmarks.md, "Figures behind choices in the code")."""
    found = mapping.get(key)
    if found is None:
        found = mapping[key] = SortedDict()
    return found


class State:
    def __init__(self) -> None:
        self.seq = 0
        self.orgs: dict[str, Org] = {}
        self.rooms: dict[str, Room] = {}
        self.users: dict[str, User] = {}
        self.visitors: dict[str, Visitor] = {}
        self.chats: dict[str, ChatState] = {}
        # token hash -> (principal kind, id)
        self.tokens: dict[str, tuple[str, str]] = {}
        # called with each token hash that stops working (a visitor re-keyed), as the
        # fact is applied: the gateway closes the sessions opened with it
        self.token_revoked: list[Callable[[str], None]] = []
        # org id -> kid -> the key that verifies that org's signed tokens
        self.jwt_keys: dict[str, dict[str, JwtKey]] = {}
        # called with an org's id when its keys were replaced, as the fact is applied:
        # the gateway closes the sessions whose key is gone or changed
        self.jwt_keys_changed: list[Callable[[str], None]] = []
        # indexes
        self.org_index: SortedDict = SortedDict()  # org seq -> org
        self.org_users: dict[str, SortedDict] = {}  # user seq -> user
        self.org_rooms: dict[str, SortedDict] = {}  # own and shared rooms by room seq
        self.room_open_chats: dict[str, SortedDict] = {}  # chat seq -> chat
        self.user_chats: dict[str, SortedDict] = {}  # chat seq -> chat
        self.user_current_chats: dict[str, SortedDict] = {}  # presence seq -> chat
        self.visitor_chats: dict[str, list[ChatState]] = {}  # creation order
        # the org chat report: for the owner org and for each room, chats by
        # (start_time, seq), ended chats by (end_time, seq), open chats by seq;
        # (org, tag name) -> chats
        self.report_by_start: dict[str, SortedDict] = {}
        self.report_by_end: dict[str, SortedDict] = {}
        self.report_open: dict[str, SortedDict] = {}
        self.tag_chats: dict[tuple[str, str], SortedDict] = {}  # by (start_time, seq)
        self.webhooks = Webhooks()
        # the log position of the record being applied (the engine's apply path sets it):
        # a webhook delivers the events of the records after the one that created it
        self.position = 0
        self._appliers: dict[type, Callable[[Any], ChangeSet | list[ChangeSet] | None]] = {
            OrgCreated: self._org_created,
            RoomCreated: self._room_created,
            RoomShared: self._room_shared,
            UserCreated: self._user_created,
            VisitorRegistered: self._visitor_registered,
            ChatCreated: self._chat_created,
            UserJoined: self._chat_fact,
            UserLeft: self._chat_fact,
            MessagePosted: self._chat_fact,
            ChatEnded: self._chat_fact,
            PrivacySet: self._chat_fact,
            TagAdded: self._chat_fact,
            TagRemoved: self._chat_fact,
            ApiDataSet: self._api_data_set,
            WebhookCreated: self._webhook_fact,
            WebhookDeleted: self._webhook_fact,
            TokenRotated: self._token_rotated,
            JwtKeysSet: self._jwt_keys_set,
            **{kind: self._chat_fact for kind in CART_FACTS},
        }

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- applying facts ------------------------------------------------------------
    def apply(self, fact: Fact) -> list[ChangeSet]:
        """Apply one committed fact; returns the change sets of the chats it changed."""
        result = self._appliers[type(fact)](fact)
        if result is None:
            return []
        return result if isinstance(result, list) else [result]

    def _org_created(self, fact: OrgCreated) -> None:
        self.orgs[fact.org_id] = Org(
            shared(fact.org_id), fact.name, fact.at, self._next_seq(), fact.token_hash
        )
        org = self.orgs[fact.org_id]
        self.tokens[fact.token_hash] = (PRINCIPAL_ORG, fact.org_id)
        self.org_rooms[fact.org_id] = SortedDict()
        self.org_index[org.seq] = org

    def _room_created(self, fact: RoomCreated) -> None:
        room = Room(
            shared(fact.room_id),
            fact.name,
            shared(fact.org_id),
            fact.private_chats,
            fact.at,
            self._next_seq(),
        )
        self.rooms[room.id] = room
        self.org_rooms[fact.org_id][room.seq] = room
        self.room_open_chats[room.id] = SortedDict()

    def _room_shared(self, fact: RoomShared) -> None:
        room = self.rooms[fact.room_id]
        room.shared_with.add(fact.org_id)
        self.org_rooms[fact.org_id][room.seq] = room

    def _user_created(self, fact: UserCreated) -> None:
        room_ids = None if fact.room_ids is None else list(fact.room_ids)
        user = User(
            shared(fact.user_id),
            shared(fact.org_id),
            fact.first_name,
            fact.last_name,
            fact.alias,
            room_ids,
            fact.at,
            self._next_seq(),
            fact.token_hash,
        )
        self.users[user.id] = user
        self.tokens[fact.token_hash] = (PRINCIPAL_USER, user.id)
        _bucket(self.org_users, user.organization_id)[user.seq] = user

    def _visitor_registered(self, fact: VisitorRegistered) -> None:
        visitor = self.visitors.get(fact.visitor_id)
        org_id = None if fact.org_id is None else shared(fact.org_id)
        if visitor is None:
            visitor = Visitor(shared(fact.visitor_id), org_id, fact.at, fact.token_hash)
            self.visitors[visitor.id] = visitor
        else:
            self._revoke(visitor.token_hash)
            visitor.token_hash = fact.token_hash
            if visitor.organization_id is None:
                visitor.organization_id = org_id
        self.tokens[fact.token_hash] = (PRINCIPAL_VISITOR, visitor.id)

    def _webhook_fact(self, fact: WebhookCreated | WebhookDeleted) -> None:
        self.webhooks.apply(fact, self.position)

    def _token_rotated(self, fact: TokenRotated) -> None:
        record: Org | User = (
            self.orgs[fact.principal_id]
            if fact.principal_kind == PRINCIPAL_ORG
            else self.users[fact.principal_id]
        )
        self._revoke(record.token_hash)
        record.token_hash = fact.token_hash
        self.tokens[fact.token_hash] = (fact.principal_kind, fact.principal_id)

    def _jwt_keys_set(self, fact: JwtKeysSet) -> None:
        self.restore_jwt_keys(fact.org_id, fact.keys)
        for listener in self.jwt_keys_changed:
            listener(fact.org_id)

    def _revoke(self, token_hash: str) -> None:
        if self.tokens.pop(token_hash, None) is not None:
            for listener in self.token_revoked:
                listener(token_hash)

    def _chat_created(self, fact: ChatCreated) -> ChangeSet:
        chat = ChatState.create(fact, seq=self._next_seq())
        presence_seq = self._next_seq() if fact.join_user_id is not None else 0
        changes = chat.apply_created(fact, presence_seq=presence_seq)
        self.chats[chat.id] = chat
        self.room_open_chats[chat.room_id][chat.seq] = chat
        self.visitor_chats.setdefault(chat.visitor_id, []).append(chat)
        self._index_report(chat)
        visitor = self.visitors[chat.visitor_id]
        if visitor.organization_id is None:
            visitor.organization_id = chat.organization_id
        if fact.join_user_id is not None:
            self._index_presence(chat, fact.join_user_id)
        return changes

    def _chat_fact(
        self,
        fact: UserJoined
        | UserLeft
        | MessagePosted
        | ChatEnded
        | PrivacySet
        | TagAdded
        | TagRemoved,
    ) -> ChangeSet:
        chat = self.chats[fact.chat_id]
        if isinstance(fact, UserLeft):
            self._unindex_presence(chat, fact.user_id)
        elif isinstance(fact, ChatEnded):
            for user_id in list(chat.presences):
                self._unindex_presence(chat, user_id)
            self.room_open_chats[chat.room_id].pop(chat.seq, None)
        before_view = chat_collection_view(chat)
        changes = chat.apply(fact, seq=self._next_seq())
        changes.before_view = before_view
        if isinstance(fact, ChatEnded):
            ended = (chat.end_time, chat.seq)
            for key in (chat.organization_id, chat.room_id):
                self.report_open[key].pop(chat.seq, None)
                _bucket(self.report_by_end, key)[ended] = chat
        elif isinstance(fact, TagAdded):
            tagged = _bucket(self.tag_chats, (chat.organization_id, fact.name))
            tagged[(chat.start_time, chat.seq)] = chat
        elif isinstance(fact, TagRemoved):
            tagged = self.tag_chats.get((chat.organization_id, fact.name))
            if tagged is not None:
                tagged.pop((chat.start_time, chat.seq), None)
        if isinstance(fact, UserJoined):
            self._index_presence(chat, fact.user_id)
        elif isinstance(fact, MessagePosted) and fact.sender_type == SENDER_USER:
            _bucket(self.user_chats, fact.sender_id)[chat.seq] = chat
        return changes

    def _index_report(self, chat: ChatState) -> None:
        for index, key, position in self._report_entries(chat):
            _bucket(index, key)[position] = chat

    def _report_entries(self, chat: ChatState) -> Iterator[_IndexEntry]:
        """Where the report's indexes hold ``chat``: (index, key, position)."""
        # one position tuple for the org's index and the room's
        started = (chat.start_time, chat.seq)
        ended = None if chat.end_time is None else (chat.end_time, chat.seq)
        for key in (chat.organization_id, chat.room_id):
            yield self.report_by_start, key, started
            if ended is None:
                yield self.report_open, key, chat.seq
            else:
                yield self.report_by_end, key, ended
        for name in chat.tags:
            yield self.tag_chats, (chat.organization_id, name), started

    def _restored_entries(self, chat: ChatState) -> Iterator[_IndexEntry]:
        """Every ordered index a restored chat is in (those a live chat enters one
        fact at a time)."""
        if chat.end_time is None:
            yield self.room_open_chats, chat.room_id, chat.seq
        yield from self._report_entries(chat)
        for user_id in set(chat.ever_present).union(chat.user_participants):
            yield self.user_chats, user_id, chat.seq
        for presence in chat.presences.values():
            yield self.user_current_chats, presence.user_id, presence.seq

    def _api_data_set(self, fact: ApiDataSet) -> list[ChangeSet]:
        visitor = self.visitors[fact.visitor_id]
        visitor.api_data = {
            **visitor.api_data,
            fact.org_id: [{"name": name, "value": value} for name, value in fact.items],
        }
        changes = []
        for chat in self.visitor_chats.get(fact.visitor_id, []):
            if api_data_org(chat) == fact.org_id:
                before_view = chat_collection_view(chat)
                change = chat.touch(fact.at)
                change.before_view = before_view
                changes.append(change)
        return changes

    def _unindex_presence(self, chat: ChatState, user_id: str) -> None:
        presence = chat.presences[user_id]
        self.user_current_chats[user_id].pop(presence.seq, None)

    def _index_presence(self, chat: ChatState, user_id: str) -> None:
        presence = chat.presences[user_id]
        _bucket(self.user_chats, user_id)[chat.seq] = chat
        _bucket(self.user_current_chats, user_id)[presence.seq] = chat

    # -- restoring from a snapshot (persistence.codec) ------------------------------------
    def take_over(self, other: State) -> None:
        """Become ``other`` (a state restored aside), keeping this object's identity:
        everything that holds a reference to this state sees the restored one."""
        for name, value in vars(other).items():
            if name not in ("_appliers", "token_revoked", "jwt_keys_changed"):
                setattr(self, name, value)

    def restore_org(self, org: Org) -> None:
        self.orgs[org.id] = org
        self.tokens[org.token_hash] = (PRINCIPAL_ORG, org.id)
        _bucket(self.org_rooms, org.id)
        self.org_index[org.seq] = org

    def restore_room(self, room: Room) -> None:
        self.rooms[room.id] = room
        self.room_open_chats[room.id] = SortedDict()
        for org_id in (room.organization_id, *room.shared_with):
            _bucket(self.org_rooms, org_id)[room.seq] = room

    def restore_user(self, user: User) -> None:
        self.users[user.id] = user
        self.tokens[user.token_hash] = (PRINCIPAL_USER, user.id)
        _bucket(self.org_users, user.organization_id)[user.seq] = user

    def restore_jwt_keys(self, org_id: str, keys: Iterable[tuple[str, str, str]]) -> None:
        org_id = shared(org_id)
        found = {kid: JwtKey(org_id, kid, algorithm, key) for kid, algorithm, key in keys}
        if found:
            self.jwt_keys[org_id] = found
        else:
            self.jwt_keys.pop(org_id, None)

    def restore_visitor(self, visitor: Visitor) -> None:
        self.visitors[visitor.id] = visitor
        self.tokens[visitor.token_hash] = (PRINCIPAL_VISITOR, visitor.id)

    def restore_chats(self, chats: Iterable[ChatState]) -> None:
        """Index restored chats, which must come in creation (``seq``) order. Each
        ordered index is collected aside and sorted into its ``SortedDict`` once at the
        end: inserting the positions one by one was a large part of a restart
        (docs/benchmarks.md, "Figures behind choices in the code")."""
        collected: dict[tuple[int, Any], tuple[dict[Any, SortedDict], Any, list[Any]]] = {}
        for chat in chats:
            self.chats[chat.id] = chat
            self.visitor_chats.setdefault(chat.visitor_id, []).append(chat)
            for index, key, position in self._restored_entries(chat):
                found = collected.get((id(index), key))
                if found is None:
                    found = collected[(id(index), key)] = (index, key, [])
                found[2].append((position, chat))
        for index, key, items in collected.values():
            _bucket(index, key).update(items)

    # -- queries -------------------------------------------------------------------
    def principal(self, token_hash: str) -> tuple[str, str] | None:
        return self.tokens.get(token_hash)

    def all_orgs(self) -> SortedView:
        return SortedView(self.org_index)

    def users_of_org(self, org_id: str) -> SortedView:
        return SortedView(self.org_users.get(org_id))

    def jwt_key(self, org_id: object, kid: object) -> JwtKey | None:
        if not isinstance(org_id, str) or not isinstance(kid, str):
            return None
        return self.jwt_keys.get(org_id, {}).get(kid)

    def rooms_of_org(self, org_id: str) -> SortedView:
        return SortedView(self.org_rooms.get(org_id))

    def open_chats_of_room(self, room_id: str, waiting: bool | None = None) -> SortedView:
        predicate = None if waiting is None else (lambda chat: chat.is_waiting_response is waiting)
        return SortedView(self.room_open_chats.get(room_id), predicate)

    def chats_of_user(self, user_id: str) -> SortedView:
        return SortedView(self.user_chats.get(user_id))

    def current_chats_of_user(self, user_id: str) -> SortedView:
        return SortedView(self.user_current_chats.get(user_id))

    def chats_of_visitor(self, visitor_id: str) -> ListView:
        return ListView(self.visitor_chats.get(visitor_id, []))

    def resume_candidates(self, room_id: str, visitor_id: str) -> list[ChatState]:
        """The visitor's chats in the room, newest first: what ``engine.resume`` chooses
        from."""
        # a visitor has a handful of chats: filtering them costs less than an index,
        # which every chat would pay for in memory
        chats = self.visitor_chats.get(visitor_id, [])
        return [chat for chat in reversed(chats) if chat.room_id == room_id]

    @staticmethod
    def messages_of_chat(chat: ChatState) -> ListView:
        return ListView(chat.messages)

    @staticmethod
    def presences_of_chat(chat: ChatState) -> KeyedListView:
        return KeyedListView(list(chat.presences.values()), key=lambda presence: presence.seq)

    @staticmethod
    def participations_of_chat(chat: ChatState) -> ListView:
        return ListView(chat.participations())
