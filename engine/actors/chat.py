"""ChatActor work: joins, leaves, messages and resumes of one chat.

Each method runs inside the chat's own actor (``ActorPool`` keyed by the chat id), so
the chat's commands are applied one at a time, in arrival order: that is what makes an
exclusive join exclusive. The rules themselves live in ``engine.chat.ChatState``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from engine import errors
from engine.access import may_serve
from engine.chat import ChatState, JoinOutcome
from engine.facts import Fact
from engine.model import SENDER_USER, Cart, Message, Product, User
from engine.resume import choose_chat

if TYPE_CHECKING:
    from engine.actors.supervisor import Engine


class ChatActors:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _may_serve(self, chat: ChatState, user: User) -> bool:
        return may_serve(user, self._engine.state.rooms[chat.room_id])

    async def join(self, chat: ChatState, user: User, *, exclusive: bool) -> JoinOutcome:
        async def work() -> JoinOutcome:
            outcome, facts = chat.decide_join(
                user.id,
                exclusive=exclusive,
                may_serve=self._may_serve(chat, user),
                at=self._engine.now(),
            )
            if facts:
                await self._engine.commit(facts)
                outcome.presence = chat.presences[user.id]
                self._engine.reachability.touch(user.id)
            return outcome

        return await self._engine.pool.run(chat.id, work)

    async def resume(self, chat: ChatState, user: User) -> bool:
        """auto_resume's step inside the chosen chat: join ``user`` if the chat is still
        the one ``engine.resume`` would choose. ``False`` means choose again without it."""

        async def work() -> bool:
            engine = self._engine
            now = engine.now()
            room = engine.state.rooms[chat.room_id]
            window_ms = engine.config.resume_window_ms
            if choose_chat([chat], user=user, room=room, now=now, window_ms=window_ms) is None:
                return False
            if user.id in chat.presences:
                return True
            _, facts = chat.decide_join(user.id, exclusive=False, may_serve=True, at=now)
            await engine.commit(facts)
            engine.reachability.touch(user.id)
            return True

        return await self._engine.pool.run(chat.id, work)

    async def leave(self, chat: ChatState, user_id: str, *, expiring: bool = False) -> None:
        """A DELETE of the presence, or its expiry (``expiring``), which re-checks inside
        the actor that the user is still unreachable: it may have come back meanwhile."""

        async def work() -> None:
            engine = self._engine
            if expiring and engine.reachability.is_reachable(user_id, trio.current_time()):
                raise errors.NotFound("The user is reachable again.")
            facts = chat.decide_leave(user_id, at=engine.now())
            await engine.commit(facts)

        await self._engine.pool.run(chat.id, work)

    async def post(
        self,
        chat: ChatState,
        *,
        sender_type: str,
        sender_id: str,
        type: str,
        message: str,
        page_url: str | None,
        page_title: str | None,
    ) -> Message:
        async def work() -> Message:
            engine = self._engine
            if sender_type == SENDER_USER:
                serving = self._may_serve(chat, engine.state.users[sender_id])
            else:
                serving = False
            facts = chat.decide_post(
                sender_type=sender_type,
                sender_id=sender_id,
                type=type,
                message=message,
                page_url=page_url,
                page_title=page_title,
                may_serve=serving,
                at=engine.now(),
            )
            await engine.commit(facts)
            return chat.messages[-1]

        return await self._engine.pool.run(chat.id, work)

    async def update(self, chat: ChatState, *, is_ended: bool, is_private: bool | None) -> None:
        """PATCH of a chat: end it (never reopens) and/or set ``is_private``."""

        async def work() -> None:
            engine = self._engine
            at = engine.now()
            facts: list[Fact] = []
            if is_private is not None:
                facts += chat.decide_privacy(is_private, at=at)
            if is_ended:
                facts += chat.decide_end(at=at)
            if facts:
                await engine.commit(facts)

        await self._engine.pool.run(chat.id, work)

    async def tag(self, chat: ChatState, name: str, *, add: bool) -> None:
        async def work() -> None:
            facts = chat.decide_tag(name, add=add, at=self._engine.now())
            if facts:
                await self._engine.commit(facts)

        await self._engine.pool.run(chat.id, work)

    async def create_cart(
        self, chat: ChatState, currency: str, products: list[tuple[Any, ...]]
    ) -> Cart:
        async def work() -> Cart:
            facts = chat.decide_cart(currency, products, at=self._engine.now())
            await self._engine.commit(facts)
            return chat.cart(facts[0].cart_id)

        return await self._engine.pool.run(chat.id, work)

    async def lock_cart(self, chat: ChatState, cart_id: str, *, locked: bool) -> Cart:
        """``locked: false`` changes nothing (a purchase is not undone)."""

        async def work() -> Cart:
            if locked:
                facts = chat.decide_lock(cart_id, at=self._engine.now())
                if facts:
                    await self._engine.commit(facts)
            return chat.cart(cart_id)

        return await self._engine.pool.run(chat.id, work)

    async def add_product(self, chat: ChatState, cart_id: str, product: tuple[Any, ...]) -> Product:
        async def work() -> Product:
            facts = chat.decide_product(cart_id, product, at=self._engine.now())
            await self._engine.commit(facts)
            return chat.cart(cart_id).products[-1]

        return await self._engine.pool.run(chat.id, work)

    async def delete_product(self, chat: ChatState, cart_id: str, product_id: str) -> None:
        async def work() -> None:
            facts = chat.decide_product_delete(cart_id, product_id, at=self._engine.now())
            if facts:
                await self._engine.commit(facts)

        await self._engine.pool.run(chat.id, work)
