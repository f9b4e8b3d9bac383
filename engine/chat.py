"""ChatState: one chat's state and every rule about it (its counts, flags, presences and messages).

The state machine is pure: no trio, no I/O, no clock. A command is first *decided*
(``decide_*``: the rules are checked against the current state, ids are chosen, the
time comes in with the command) which yields a result and the facts to commit, and the
facts are then *applied* (``apply``) once committed, which mutates the state and returns
the deltas that real-time fan-out turns into channel events. Deciding never mutates, so a
commit that fails leaves the state exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine import errors
from engine.facts import (
    CartCreated,
    CartLocked,
    ChatCreated,
    ChatEnded,
    MessagePosted,
    PrivacySet,
    ProductAdded,
    ProductDeleted,
    ProductRow,
    TagAdded,
    TagRemoved,
    UserJoined,
    UserLeft,
)
from engine.ids import new_uuid
from engine.model import (
    AUTOSUGGEST,
    COUNTED_TYPES,
    JOIN,
    LEAVE,
    MSG,
    SENDER_USER,
    SENDER_VISITOR,
    Cart,
    Message,
    Presence,
    Product,
    shared,
)


@dataclass(slots=True, frozen=True)
class Delta:
    """One change of a chat, as fan-out needs it.

    ``kind`` is one of ``chat_added``, ``chat_changed``, ``chat_ended``,
    ``presence_added``, ``presence_removed``, ``current_added``, ``current_removed``,
    ``message_added``, ``participation_added``; ``subject`` is the presence's user id,
    the message, or the participation ``(id, type)``. Their order is the order of the
    events of the channel fan-out (engine/fanout.py).
    """

    kind: str
    subject: Any = None


@dataclass(slots=True)
class ChangeSet:
    """The deltas of one applied fact, with what fan-out needs to address them."""

    chat_id: str
    users_before: frozenset[str]
    users_after: frozenset[str]
    present_before: tuple[str, ...]
    present_after: tuple[str, ...]
    # users whose chats collection held the chat before (ever present or participant)
    collection_before: frozenset[str]
    deltas: list[Delta] = field(default_factory=list)
    # the chat's collection view before the change (None for a new chat)
    before_view: dict[str, Any] | None = None


@dataclass(slots=True)
class JoinOutcome:
    created: bool
    presence: Presence


@dataclass(slots=True)
class ChatState:
    id: str
    token: str
    seq: int
    room_id: str
    organization_id: str
    visitor_id: str
    private_room: bool
    start_time: int
    updated_at: int
    end_time: int | None = None
    is_private: bool = False
    messages: list[Message] = field(default_factory=list)
    presences: dict[str, Presence] = field(default_factory=dict)  # in join order
    user_participants: list[str] = field(default_factory=list)  # by first message
    # every user ever present, each once, in no meaningful order (a list: a fraction of a
    # set's size)
    ever_present: list[str] = field(default_factory=list)
    message_count: int = 0
    user_message_count: int = 0
    visitor_message_count: int = 0
    visitor_sent_msg: bool = False
    user_sent_msg: bool = False
    is_waiting_response: bool = False
    is_autosuggested: bool = False
    autosuggest_url: str | None = None
    autosuggest_url_title: str | None = None
    visitor_has_posted: bool = False
    first_visitor_message_url: str | None = None
    first_visitor_message_url_title: str | None = None
    # most chats have neither: the shared empty tuple (not an empty list each), and a
    # new list on each change
    tags: Sequence[str] = ()
    carts: Sequence[Cart] = ()

    # -- derived fields -------------------------------------------------------------
    @property
    def is_real_conversation(self) -> bool:
        return self.visitor_sent_msg and self.user_sent_msg

    @property
    def currently_present_user_count(self) -> int:
        return len(self.presences)

    @property
    def participation_count(self) -> int:
        return 1 + len(self.user_participants)

    @property
    def user_participation_count(self) -> int:
        return len(self.user_participants)

    @property
    def visitor_participation_count(self) -> int:
        return 1

    @property
    def tag_count(self) -> int:
        return len(self.tags)

    def involved_users(self) -> frozenset[str]:
        """The chat's **Users** for fan-out: participant users and present users."""
        return frozenset(self.user_participants).union(self.presences)

    def participations(self) -> list[tuple[str, str]]:
        """``(id, type)``: the visitor first, then users by their first message."""
        return [(self.visitor_id, SENDER_VISITOR)] + [
            (user_id, SENDER_USER) for user_id in self.user_participants
        ]

    # -- rules ----------------------------------------------------------------------
    def may_join(self, user_id: str, may_serve: bool) -> bool:
        """A user may join (or post to) this chat: it may serve the room, and a private
        chat admits only its participants and present users."""
        if not may_serve:
            return False
        if self.is_private:
            return user_id in self.presences or user_id in self.user_participants
        return True

    def _require_open(self) -> None:
        if self.end_time is not None:
            raise errors.ChatEnded("The chat has ended.")

    # -- decisions ------------------------------------------------------------------
    def decide_join(
        self, user_id: str, *, exclusive: bool, may_serve: bool, at: int
    ) -> tuple[JoinOutcome, list[UserJoined]]:
        self._require_open()
        present = self.presences.get(user_id)
        if present is not None:
            return JoinOutcome(False, present), []
        if not self.may_join(user_id, may_serve):
            raise errors.PermissionDenied("The user may not join this chat.")
        if exclusive and self.presences:
            raise errors.ChatAlreadyTaken("Another user is already present in the chat.")
        fact = UserJoined(self.id, user_id, at, new_uuid())
        # The presence's seq is known only once applied; the caller reads it back.
        return JoinOutcome(True, Presence(user_id, at, -1)), [fact]

    def decide_leave(self, user_id: str, *, at: int) -> list[UserLeft]:
        if user_id not in self.presences:
            raise errors.NotFound("The user is not present in the chat.")
        return [UserLeft(self.id, user_id, at, new_uuid())]

    def decide_post(
        self,
        *,
        sender_type: str,
        sender_id: str,
        type: str,
        message: str,
        page_url: str | None,
        page_title: str | None,
        may_serve: bool,
        at: int,
    ) -> list[MessagePosted]:
        self._require_open()
        if type not in COUNTED_TYPES:
            raise errors.invalid_field("type", "Must be 'msg' or 'autosuggest'.")
        if sender_type == SENDER_USER and not self.may_join(sender_id, may_serve):
            raise errors.PermissionDenied("The sender may not post to this chat.")
        if sender_type == SENDER_VISITOR and sender_id != self.visitor_id:
            raise errors.PermissionDenied("Only the chat's own visitor may post as visitor.")
        fact = MessagePosted(
            self.id, new_uuid(), at, type, sender_type, sender_id, message, page_url, page_title
        )
        return [fact]

    def decide_end(self, *, at: int) -> list[ChatEnded]:
        """Ending twice changes nothing (no fact)."""
        if self.end_time is not None:
            return []
        leaves = tuple((user_id, new_uuid()) for user_id in self.presences)
        return [ChatEnded(self.id, at, leaves)]

    def decide_privacy(self, is_private: bool, *, at: int) -> list[PrivacySet]:
        if is_private == self.is_private:
            return []
        return [PrivacySet(self.id, is_private, at)]

    def decide_tag(self, name: str, *, add: bool, at: int) -> list[TagAdded | TagRemoved]:
        """Idempotent: adding a tag already there, or removing an absent one, is no fact.
        Tags may change on an ended chat too."""
        if add:
            return [] if name in self.tags else [TagAdded(self.id, name, at)]
        return [TagRemoved(self.id, name, at)] if name in self.tags else []

    def cart(self, cart_id: str) -> Cart:
        for cart in self.carts:
            if cart.id == cart_id:
                return cart
        raise errors.NotFound("Cart not found.")

    def decide_cart(
        self, currency: str, products: list[tuple[Any, ...]], *, at: int
    ) -> list[CartCreated]:
        """``products``: product rows without their id (ids are chosen here)."""
        rows = tuple(_product_row(product) for product in products)
        return [CartCreated(self.id, new_uuid(), currency, rows, at)]

    def decide_lock(self, cart_id: str, *, at: int) -> list[CartLocked]:
        """``locked_at`` is set once; locking a locked cart changes nothing."""
        return (
            [] if self.cart(cart_id).locked_at is not None else [CartLocked(self.id, cart_id, at)]
        )

    def decide_product(
        self, cart_id: str, product: tuple[Any, ...], *, at: int
    ) -> list[ProductAdded]:
        self.cart(cart_id)
        return [ProductAdded(self.id, cart_id, _product_row(product), at)]

    def decide_product_delete(
        self, cart_id: str, product_id: str, *, at: int
    ) -> list[ProductDeleted]:
        for product in self.cart(cart_id).products:
            if product.id == product_id:
                return (
                    []
                    if product.deleted_at is not None
                    else [ProductDeleted(self.id, cart_id, product_id, at)]
                )
        raise errors.NotFound("Product not found.")

    # -- application ----------------------------------------------------------------

    @classmethod
    def create(cls, fact: ChatCreated, *, seq: int) -> ChatState:
        return cls(
            id=shared(fact.chat_id),  # also in the keys of its channels
            token=fact.token,
            seq=seq,
            room_id=shared(fact.room_id),
            organization_id=shared(fact.org_id),
            visitor_id=shared(fact.visitor_id),
            private_room=fact.private_room,
            start_time=fact.at,
            updated_at=fact.at,
        )

    def _begin(self) -> ChangeSet:
        return ChangeSet(
            chat_id=self.id,
            users_before=self.involved_users(),
            users_after=frozenset(),
            present_before=tuple(self.presences),
            present_after=(),
            collection_before=frozenset(self.ever_present).union(self.user_participants),
        )

    def _finish(self, changes: ChangeSet) -> ChangeSet:
        changes.users_after = self.involved_users()
        changes.present_after = tuple(self.presences)
        return changes

    def apply_created(self, fact: ChatCreated, *, presence_seq: int) -> ChangeSet:
        """Apply the creation fact to a freshly made state (``create``)."""
        changes = self._begin()
        if fact.join_user_id is not None and fact.join_message_id is not None:
            self._join(fact.join_user_id, fact.at, fact.join_message_id, presence_seq, None)
        changes.deltas.append(Delta("chat_added"))
        changes.deltas.append(Delta("participation_added", (self.visitor_id, SENDER_VISITOR)))
        if fact.join_user_id is not None:
            changes.deltas.append(Delta("presence_added", fact.join_user_id))
            changes.deltas.append(Delta("message_added", self.messages[-1]))
            changes.deltas.append(Delta("current_added", fact.join_user_id))
        return self._finish(changes)

    def apply(
        self,
        fact: UserJoined
        | UserLeft
        | MessagePosted
        | ChatEnded
        | PrivacySet
        | TagAdded
        | TagRemoved,
        *,
        seq: int,
    ) -> ChangeSet:
        changes = self._begin()
        if isinstance(fact, UserJoined):
            self._join(fact.user_id, fact.at, fact.message_id, seq, changes)
        elif isinstance(fact, UserLeft):
            changes.deltas.append(Delta("chat_changed"))
            self._leave(fact.user_id, fact.at, fact.message_id, changes)
        elif isinstance(fact, MessagePosted):
            self._post(fact, changes)
        elif isinstance(fact, ChatEnded):
            self._end(fact, changes)
        elif isinstance(fact, (CartCreated, CartLocked, ProductAdded, ProductDeleted)):
            self._cart_fact(fact)
            self.updated_at = fact.at
            changes.deltas.append(Delta("chat_changed"))
        elif isinstance(fact, (TagAdded, TagRemoved)):
            if isinstance(fact, TagAdded):
                self.tags = [*self.tags, shared(fact.name)]
            else:
                self.tags = [name for name in self.tags if name != fact.name]
            self.updated_at = fact.at
            changes.deltas.append(Delta("chat_changed"))
        else:
            self.is_private = fact.is_private
            self.updated_at = fact.at
            changes.deltas.append(Delta("chat_changed"))
        return self._finish(changes)

    def _cart_fact(self, fact: CartCreated | CartLocked | ProductAdded | ProductDeleted) -> None:
        if isinstance(fact, CartCreated):
            cart = Cart(fact.cart_id, fact.currency, fact.at)
            cart.products = [Product(*row, added_at=fact.at) for row in fact.products]
            self.carts = [*self.carts, cart]
        elif isinstance(fact, CartLocked):
            self.cart(fact.cart_id).locked_at = fact.at
        elif isinstance(fact, ProductAdded):
            self.cart(fact.cart_id).products.append(Product(*fact.product, added_at=fact.at))
        else:
            for product in self.cart(fact.cart_id).products:
                if product.id == fact.product_id:
                    product.deleted_at = fact.at

    def touch(self, at: int) -> ChangeSet:
        """Something shown with the chat changed elsewhere (its visitor's api_data)."""
        changes = self._begin()
        self.updated_at = at
        changes.deltas.append(Delta("chat_changed"))
        return self._finish(changes)

    def _join(
        self, user_id: str, at: int, message_id: str, seq: int, changes: ChangeSet | None
    ) -> None:
        user_id = shared(user_id)
        self.presences[user_id] = Presence(user_id, at, seq)
        if user_id not in self.ever_present:
            self.ever_present.append(user_id)
        if self.private_room:
            self.is_private = True
        message = Message(message_id, JOIN, at, SENDER_USER, user_id, None, None, None)
        self.messages.append(message)
        self.updated_at = at
        if changes is not None:
            changes.deltas.append(Delta("chat_changed"))
            changes.deltas.append(Delta("presence_added", user_id))
            changes.deltas.append(Delta("message_added", message))
            changes.deltas.append(Delta("current_added", user_id))

    def _leave(self, user_id: str, at: int, message_id: str, changes: ChangeSet) -> None:
        del self.presences[user_id]
        message = Message(message_id, LEAVE, at, SENDER_USER, shared(user_id), None, None, None)
        self.messages.append(message)
        self.updated_at = at
        changes.deltas.append(Delta("presence_removed", user_id))
        changes.deltas.append(Delta("message_added", message))
        changes.deltas.append(Delta("current_removed", user_id))

    def _end(self, fact: ChatEnded, changes: ChangeSet) -> None:
        # an ended chat's events: one "changed" chat first (with the final present count), then the
        # rest of each leave, presence by presence in join order.
        self.end_time = fact.at
        self.updated_at = fact.at
        changes.deltas.append(Delta("chat_ended"))
        for user_id, message_id in fact.leaves:
            self._leave(user_id, fact.at, message_id, changes)

    def _post(self, fact: MessagePosted, changes: ChangeSet) -> None:
        sender_id = shared(fact.sender_id)
        message = Message(
            fact.message_id,
            shared(fact.type),
            fact.at,
            shared(fact.sender_type),
            sender_id,
            fact.message,
            fact.page_url,
            fact.page_title,
        )
        if self.message_count == 0 and fact.type == AUTOSUGGEST:
            self.is_autosuggested = True
            self.autosuggest_url = fact.page_url
            self.autosuggest_url_title = fact.page_title
        self.message_count += 1
        new_participant = False
        if fact.sender_type == SENDER_USER:
            self.user_message_count += 1
            if sender_id not in self.user_participants:
                self.user_participants.append(sender_id)
                new_participant = True
            if fact.type == MSG:
                self.user_sent_msg = True
                self.is_waiting_response = False
        else:
            self.visitor_message_count += 1
            if not self.visitor_has_posted:
                self.visitor_has_posted = True
                self.first_visitor_message_url = fact.page_url
                self.first_visitor_message_url_title = fact.page_title
            if fact.type == MSG:
                self.visitor_sent_msg = True
                self.is_waiting_response = True
        self.messages.append(message)
        self.updated_at = fact.at
        changes.deltas.append(Delta("chat_changed"))
        changes.deltas.append(Delta("message_added", message))
        if new_participant:
            changes.deltas.append(Delta("participation_added", (fact.sender_id, SENDER_USER)))


def _product_row(fields: tuple[Any, ...]) -> ProductRow:
    row: ProductRow = (new_uuid(), *fields)
    return row
