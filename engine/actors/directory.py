"""Directory work: orgs, rooms, users, visitors, and chat creation.

Directory changes are rare and run in one ``directory`` actor. Chat creation runs in an
actor per (room, visitor): concurrent ``auto_resume`` calls for one pair are serialised
there, which is what guarantees exactly one new chat, while creations for different
visitors proceed in parallel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import directory, tokens
from engine.chat import ChatState
from engine.facts import ApiDataSet, OrgCreated, UserCreated, VisitorRegistered
from engine.model import JwtKey, Org, Room, User, Visitor
from engine.resume import choose_chat, require_resumer

if TYPE_CHECKING:
    from engine.actors.supervisor import Engine

DIRECTORY = "directory"


class DirectoryActor:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def create_org(self, name: str) -> tuple[Org, str]:
        async def work() -> tuple[Org, str]:
            issued = directory.create_org(name, at=self._engine.now())
            assert isinstance(issued.fact, OrgCreated)
            await self._engine.commit([issued.fact])
            return self._engine.state.orgs[issued.fact.org_id], issued.token

        return await self._engine.pool.run(DIRECTORY, work)

    async def create_room(self, org_id: str, name: str, private_chats: bool) -> Room:
        async def work() -> Room:
            fact = directory.create_room(org_id, name, private_chats, at=self._engine.now())
            await self._engine.commit([fact])
            return self._engine.state.rooms[fact.room_id]

        return await self._engine.pool.run(DIRECTORY, work)

    async def share_room(self, room: Room, org_id: object) -> None:
        async def work() -> None:
            fact = directory.share_room(self._engine.state, room.id, org_id)
            if fact is not None:
                await self._engine.commit([fact])

        await self._engine.pool.run(DIRECTORY, work)

    async def create_user(
        self,
        org_id: str,
        *,
        first_name: str,
        last_name: str,
        alias: str,
        room_ids: list[str] | None,
    ) -> tuple[User, str]:
        async def work() -> tuple[User, str]:
            issued = directory.create_user(
                self._engine.state,
                org_id,
                first_name=first_name,
                last_name=last_name,
                alias=alias,
                room_ids=room_ids,
                at=self._engine.now(),
            )
            assert isinstance(issued.fact, UserCreated)
            await self._engine.commit([issued.fact])
            return self._engine.state.users[issued.fact.user_id], issued.token

        return await self._engine.pool.run(DIRECTORY, work)

    async def register_visitor(
        self, org_id: str | None, visitor_id: str | None
    ) -> tuple[bool, Visitor, str]:
        async def work() -> tuple[bool, Visitor, str]:
            created, issued = directory.register_visitor(
                self._engine.state, org_id, visitor_id, at=self._engine.now()
            )
            assert isinstance(issued.fact, VisitorRegistered)
            await self._engine.commit([issued.fact])
            visitor = self._engine.state.visitors[issued.fact.visitor_id]
            return created, visitor, issued.token

        return await self._engine.pool.run(DIRECTORY, work)

    async def rotate_token(self, principal_kind: str, principal_id: str) -> str:
        """A new token for an org or a user; the old one stops working once this
        returns (its WebSocket sessions are closed with 4001)."""

        async def work() -> str:
            issued = directory.rotate_token(principal_kind, principal_id, at=self._engine.now())
            await self._engine.commit([issued.fact])
            return issued.token

        return await self._engine.pool.run(DIRECTORY, work)

    async def set_jwt_keys(self, org_id: str, keys: list[tuple[str, str, str]]) -> list[JwtKey]:
        async def work() -> list[JwtKey]:
            fact = tokens.jwt_keys_fact(org_id, keys, at=self._engine.now())
            await self._engine.commit([fact])
            return list(self._engine.state.jwt_keys.get(org_id, {}).values())

        return await self._engine.pool.run(DIRECTORY, work)

    def _choose(
        self, candidates: list[ChatState], user: User | None, room: Room
    ) -> ChatState | None:
        engine = self._engine
        return choose_chat(
            candidates,
            user=user,
            room=room,
            now=engine.now(),
            window_ms=engine.config.resume_window_ms,
        )

    async def create_chat(
        self, room: Room, visitor: Visitor, *, auto_resume: User | None
    ) -> tuple[bool, ChatState]:
        """Returns ``(created, chat)``. With ``auto_resume`` the whole resume-or-create
        decision is one step for this (room, visitor): that is what makes concurrent
        calls produce exactly one chat."""
        engine = self._engine

        async def work() -> tuple[bool, ChatState]:
            if auto_resume is not None:
                require_resumer(auto_resume, room)
                candidates = engine.state.resume_candidates(room.id, visitor.id)
                while (chosen := self._choose(candidates, auto_resume, room)) is not None:
                    if await engine.chats.resume(chosen, auto_resume):
                        return False, chosen
                    # it changed while the join waited for its chat's actor
                    candidates.remove(chosen)
            fact = directory.create_chat(
                engine.state,
                room.id,
                visitor.id,
                join_user_id=None if auto_resume is None else auto_resume.id,
                at=engine.now(),
            )
            await engine.commit([fact])
            if auto_resume is not None:
                engine.reachability.touch(auto_resume.id)
            return True, engine.state.chats[fact.chat_id]

        return await engine.pool.run(("room-visitor", room.id, visitor.id), work)

    async def set_api_data(
        self, org_id: str, visitor: Visitor, items: list[tuple[str, object]]
    ) -> None:
        async def work() -> None:
            fact = ApiDataSet(org_id, visitor.id, tuple(items), self._engine.now())
            await self._engine.commit([fact])

        await self._engine.pool.run(("visitor", visitor.id), work)

    async def visitor_chat(
        self, room: Room, visitor: Visitor, *, resume: bool
    ) -> tuple[bool, ChatState]:
        """The client API's create-or-resume: with ``resume``, the
        visitor's newest recent chat in the room, joining nobody; else a new chat."""
        engine = self._engine

        async def work() -> tuple[bool, ChatState]:
            if resume:
                candidates = engine.state.resume_candidates(room.id, visitor.id)
                chosen = self._choose(candidates, None, room)
                if chosen is not None:
                    return False, chosen
            fact = directory.create_chat(
                engine.state, room.id, visitor.id, join_user_id=None, at=engine.now()
            )
            await engine.commit([fact])
            return True, engine.state.chats[fact.chat_id]

        return await engine.pool.run(("room-visitor", room.id, visitor.id), work)
