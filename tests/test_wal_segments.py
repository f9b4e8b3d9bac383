"""Log segments rotate, are read back in order, and go once two snapshots cover them."""

from __future__ import annotations

from pathlib import Path

import trio

from engine.actors.supervisor import Engine
from persistence import snapshot
from persistence.store import Store
from persistence.wal import segments


async def run_engine(data_dir: Path, work: object) -> Engine:
    engine = Engine(store=Store(data_dir, segment_bytes=600))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        await work(engine)  # type: ignore[operator]
        nursery.cancel_scope.cancel()
    engine.store.wal.close()  # type: ignore[union-attr]
    return engine


async def test_segments_rotate_replay_in_order_and_are_removed(tmp_path: Path) -> None:
    texts: list[str] = []

    async def write(engine: Engine) -> None:
        org, _ = await engine.directory.create_org("Org")
        room = await engine.directory.create_room(org.id, "Room", False)
        user, _ = await engine.directory.create_user(
            org.id, first_name="A", last_name="B", alias="a", room_ids=None
        )
        _, visitor, _ = await engine.directory.register_visitor(org.id, None)
        _, chat = await engine.directory.create_chat(room, visitor, auto_resume=user)
        for index in range(30):
            texts.append(f"message {index}")
            await engine.chats.post(
                chat,
                sender_type="user",
                sender_id=user.id,
                type="msg",
                message=texts[-1],
                page_url=None,
                page_title=None,
            )
            if index in (9, 19):
                await engine.snapshot()

    await run_engine(tmp_path, write)
    assert len(snapshot.snapshots(tmp_path)) == 2
    remaining = segments(tmp_path)
    # segments entirely covered by the older kept snapshot are gone; the rest are in order
    older_snapshot_lsn = snapshot.snapshots(tmp_path)[0][0]
    assert remaining[0][0] <= older_snapshot_lsn + 1
    assert remaining[0][0] > 1, "the first segments were removed"
    assert len(remaining) >= 2, "the log rotated"
    assert [first for first, _ in remaining] == sorted(first for first, _ in remaining)

    async def read(engine: Engine) -> None:
        (chat,) = engine.state.chats.values()
        assert [m.message for m in chat.messages if m.type == "msg"] == texts
        assert chat.message_count == 30

    recovered = await run_engine(tmp_path, read)
    assert recovered.recovery is not None and recovered.recovery.records_replayed  # a log tail
