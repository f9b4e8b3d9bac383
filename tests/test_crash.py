"""kill -9 under concurrent load loses no acknowledged mutation.

A real server process runs on one data directory through 20 rounds. Each round drives
concurrent messages, joins, leaves and chat creations, sends SIGKILL at a random moment,
restarts on the same directory, and checks every mutation that was acknowledged before
the kill — in this round and every earlier one — exactly once, with every counter
consistent with the history.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.server import ADMIN_TOKEN, ServerProcess, start_server

ROUNDS = 20
WORKERS = 8


@dataclass
class Ledger:
    org: str = ""
    room: str = ""
    users: list[str] = field(default_factory=list)
    visitors: list[str] = field(default_factory=list)
    chats: set[str] = field(default_factory=set)
    chat_visitor: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)  # message id -> chat id
    # (chat, user) -> acknowledged presence, for pairs with no request left in flight
    presence: dict[tuple[str, str], bool] = field(default_factory=dict)
    in_flight: Counter[tuple[str, str]] = field(default_factory=Counter)
    # pairs whose acknowledged presence cannot be told from the answers' order: a resume
    # that joined a chat this worker did not know of when it asked (created meanwhile),
    # so joins and leaves of that pair may have been applied on either side of it
    uncertain: set[tuple[str, str]] = field(default_factory=set)
    # pairs with two requests in flight at once since the last one sent alone: the
    # server applies them in its own order, and their answers may be read in the other
    # (a join applied before a leave, its answer read after it), so the last answer
    # read does not tell the outcome; the next request sent alone does
    overlapped: set[tuple[str, str]] = field(default_factory=set)
    acknowledged: int = 0

    def sent(self, pair: tuple[str, str]) -> None:
        if self.in_flight[pair]:
            self.overlapped.add(pair)
        else:
            self.overlapped.discard(pair)
        self.in_flight[pair] += 1
        self.presence.pop(pair, None)

    def answered(self, pair: tuple[str, str]) -> bool:
        """Whether this answer, the last in flight, tells the pair's presence."""
        self.in_flight[pair] -= 1
        return (
            self.in_flight[pair] == 0 and pair not in self.uncertain and pair not in self.overlapped
        )


async def bootstrap(client: httpx.AsyncClient, ledger: Ledger) -> None:
    org = (await client.post("/api/v5/orgs", json={"name": "Crash"})).json()
    ledger.org = org["id"]
    base = f"/api/v5/orgs/{ledger.org}"
    ledger.room = (await client.post(f"{base}/rooms", json={"name": "R"})).json()["id"]
    for index in range(4):
        user = await client.post(
            f"{base}/users", json={"first_name": f"U{index}", "last_name": "X", "alias": "x"}
        )
        ledger.users.append(user.json()["id"])
    for _ in range(6):
        ledger.visitors.append((await client.post(f"{base}/visitors", json={})).json()["id"])
    for visitor in ledger.visitors[:3]:
        chat = await client.post(f"{base}/rooms/{ledger.room}/visitors/{visitor}/chats")
        ledger.chats.add(chat.json()["id"])
        ledger.chat_visitor[chat.json()["id"]] = visitor


async def worker(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random) -> None:
    base = f"/api/v5/orgs/{ledger.org}"
    for _ in range(10_000):  # bounded; the kill ends it much sooner
        chat = rng.choice(sorted(ledger.chats))
        user = rng.choice(ledger.users)
        roll = rng.random()
        if roll < 0.55:
            response = await client.post(
                f"{base}/chats/{chat}/messages",
                json={"sender_id": user, "message": f"m{rng.random()}"},
            )
            if response.status_code == 201:
                ledger.messages[response.json()["id"]] = chat
                ledger.acknowledged += 1
        elif roll < 0.9:
            pair = (chat, user)
            ledger.sent(pair)
            joining = roll < 0.75
            if joining:
                response = await client.post(
                    f"{base}/chats/{chat}/presences", json={"user_id": user}
                )
                ok = response.status_code in (200, 201)
            else:
                response = await client.delete(f"{base}/chats/{chat}/presences/{user}")
                ok = response.status_code in (204, 404)
            if ledger.answered(pair) and ok:
                ledger.presence[pair] = joining
                ledger.acknowledged += 1
        else:
            visitor = rng.choice(ledger.visitors)
            resume = rng.random() < 0.5
            params = {"auto_resume": user} if resume else {}
            # an auto_resume may join the user to any open chat of this visitor
            touched = (
                [(c, user) for c, v in ledger.chat_visitor.items() if v == visitor]
                if resume
                else []
            )
            for pair in touched:
                ledger.sent(pair)
            response = await client.post(
                f"{base}/rooms/{ledger.room}/visitors/{visitor}/chats", params=params
            )
            tells = {pair: ledger.answered(pair) for pair in touched}
            if response.status_code in (200, 201):
                chat_id = response.json()["id"]
                known = chat_id in ledger.chats  # others may have joined or left it already
                ledger.chats.add(chat_id)
                ledger.chat_visitor[chat_id] = visitor
                ledger.acknowledged += 1
                pair = (chat_id, user)
                if not resume:
                    pass
                elif pair in touched:
                    if tells[pair]:
                        ledger.presence[pair] = True
                elif response.status_code == 201 and not known:  # a chat nobody else knew
                    if ledger.in_flight[pair] == 0 and pair not in ledger.uncertain:
                        ledger.presence[pair] = True
                else:  # a chat others may have joined or left while this call was in flight
                    ledger.uncertain.add(pair)
                    ledger.presence.pop(pair, None)


async def all_pages(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    next_url: str | None = url + ("&" if "?" in url else "?") + "page_size=100"
    for _ in range(10_000):
        if next_url is None:
            break
        page = (await client.get(next_url)).json()
        items += page["results"]
        next_url = page["next"]
    return items


async def verify(client: httpx.AsyncClient, ledger: Ledger) -> None:
    base = f"/api/v5/orgs/{ledger.org}"
    seen: Counter[str] = Counter()
    for chat_id in sorted(ledger.chats):
        rich = await client.get(f"{base}/chats/{chat_id}")
        assert rich.status_code == 200, f"acknowledged chat {chat_id} lost"
        history = await all_pages(client, f"{base}/chats/{chat_id}/messages")
        presences = {
            p["user_id"] for p in await all_pages(client, f"{base}/chats/{chat_id}/presences")
        }
        seen.update(m["id"] for m in history)
        counted = [m for m in history if m["type"] in ("msg", "autosuggest")]
        chat = rich.json()
        assert chat["message_count"] == len(counted)
        assert chat["operator_message_count"] == sum(m["sender_type"] == "user" for m in counted)
        present: set[str] = set()
        for message in history:  # presences must equal what the join/leave events imply
            if message["type"] == "join":
                present.add(message["sender_id"])
            elif message["type"] == "leave":
                present.discard(message["sender_id"])
        assert present == presences, chat_id
        for (pair_chat, user), expected in ledger.presence.items():
            if pair_chat == chat_id:
                assert (user in presences) == expected, (chat_id, user, expected)
    duplicated = [message for message, count in seen.items() if count > 1]
    assert not duplicated, duplicated
    lost = [message for message in ledger.messages if message not in seen]
    assert not lost, f"{len(lost)} acknowledged messages lost"
    room_chats = await all_pages(client, f"{base}/rooms/{ledger.room}/chats")
    for chat in room_chats:
        assert chat["currently_present_user_count"] == len(
            await all_pages(client, f"{base}/chats/{chat['id']}/presences")
        )


async def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    ledger = Ledger()
    data_dir = tmp_path / "data"
    server: ServerProcess | None = None
    try:
        for round_number in range(ROUNDS):
            server = await trio.to_thread.run_sync(lambda: start_server(data_dir=data_dir))
            async with httpx.AsyncClient(
                base_url=server.base_url,
                timeout=30,
                headers={"Authorization": f"Token {ADMIN_TOKEN}"},
            ) as client:
                if round_number == 0:
                    await bootstrap(client, ledger)
                else:
                    await verify(client, ledger)  # what the previous kill left
                before = ledger.acknowledged
                kill_after = rng.uniform(0.3, 1.5)
                with trio.move_on_after(kill_after + 5):
                    async with trio.open_nursery() as nursery:
                        for _ in range(WORKERS):
                            nursery.start_soon(worker, client, ledger, random.Random(rng.random()))
                        await trio.sleep(kill_after)
                        server.kill()  # SIGKILL while requests are in flight
                        nursery.cancel_scope.cancel()
                assert ledger.acknowledged > before, "the load made no progress before the kill"
        server = await trio.to_thread.run_sync(lambda: start_server(data_dir=data_dir))
        async with httpx.AsyncClient(
            base_url=server.base_url, timeout=30, headers={"Authorization": f"Token {ADMIN_TOKEN}"}
        ) as client:
            await verify(client, ledger)
        assert len(ledger.messages) > 100
    finally:
        if server is not None:
            server.stop()
