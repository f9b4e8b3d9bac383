"""What a cluster moves between nodes, in the disk's own formats: a snapshot as bytes
(made by the forked writer, so the primary does not pause to encode it) and loaded
back on a replica, and a digest of a whole state that every node at the same log
position agrees on.

The digest hashes a canonical export: the state's snapshot encoding and the channel
histories' export with every unordered collection sorted (orgs, rooms, users,
visitors, chats, presences, channels, map keys), so a node built from a snapshot and
one built by replaying the same records give the same digest whatever order their
dictionaries were filled in. Message lists and channel histories keep their order:
that order is part of the state.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from engine.realtime.history import Histories
from engine.state import State
from persistence import snapshot
from persistence.codec import encode_state, pack

SNAPSHOT_CONTENT_TYPE = "application/vnd.chat-engine.snapshot"


async def snapshot_bytes(
    position: Callable[[], int], state: State, histories: Callable[[], dict[str, Any]]
) -> tuple[int, bytes]:
    """The state as a snapshot file's bytes (``snapshot.encode``) and the log position
    it covers, written by a forked child into a private temporary directory and read
    back in a thread. ``position`` is read right before the fork, with no checkpoint
    in between: the child's image is exactly the state at that position."""
    directory = Path(await trio.to_thread.run_sync(tempfile.mkdtemp))
    try:
        lsn = position()
        await snapshot.take_forked(directory, lsn, state, histories)
        path = directory / snapshot.snapshot_name(lsn)
        return lsn, await trio.to_thread.run_sync(path.read_bytes)
    finally:
        await trio.to_thread.run_sync(shutil.rmtree, directory, True)


def load_snapshot(data: bytes, into: State, histories: Histories) -> int:
    """Load ``snapshot_bytes``'s output; returns its log position. Damage raises and
    leaves both untouched."""
    return snapshot.load_bytes(data, into, histories)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return [[str(key), _canonical(item)] for key, item in sorted(value.items(), key=str)]
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(_canonical(item) for item in value)
    return value


def _sorted_rows(rows: list[Any]) -> list[bytes]:
    return sorted(pack(_canonical(row)) for row in rows)


def digest(state: State, histories: Histories) -> str:
    """A hash of the whole state and every channel's history (sha256, hex)."""
    exported = encode_state(state)
    hasher = hashlib.sha256()
    hasher.update(pack(["seq", exported["seq"], "epoch", histories.epoch]))
    for section in ("orgs", "rooms", "users", "visitors"):
        hasher.update(pack(section))
        for row in _sorted_rows(exported[section]):
            hasher.update(row)
    chats = []
    for scalars, messages, presences, ever, participants, tags, carts in exported["chats"]:
        chats.append(
            [scalars, messages, sorted(_canonical(presences)), ever, participants, tags, carts]
        )
    hasher.update(pack("chats"))
    for row in _sorted_rows(chats):
        hasher.update(row)
    hasher.update(pack("channels"))
    exported_histories = histories.export()
    channels = exported_histories["channels"]
    for row in _sorted_rows(channels):
        hasher.update(row)
    # which events go first once the total history limit is reached
    hasher.update(pack(["order", [channels[row][0] for row in exported_histories["order"]]]))
    return hasher.hexdigest()
