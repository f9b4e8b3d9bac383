"""A real process that does exactly what `chat-engine serve` does with its data
directory before it answers (claim it, recover the engine from it) and then, instead of
serving, prints every chat's message texts and the digest of the whole state
(persistence/replication.py) as JSON. A refusal is handled as by the CLI:
one line on stderr, exit status 2. The damage tests run it for their many seeded cases,
where a whole server (HTTP stack included) per case would cost seconds each.

    python -m tests.recovery_probe DATA_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import trio

from engine.actors.supervisor import Engine
from persistence import datadir
from persistence.errors import refusal_in
from persistence.replication import digest
from persistence.store import Store


async def recover(engine: Engine) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        nursery.cancel_scope.cancel()


def main(path: Path) -> None:
    try:
        lock = datadir.claim(path)
        engine = Engine(store=Store(path))
        trio.run(recover, engine)
    except BaseException as error:
        refusal = refusal_in(error)
        if refusal is None:
            raise
        print(f"chat-engine: {refusal}", file=sys.stderr, flush=True)
        sys.exit(2)
    chats = {
        chat.id: [m.message for m in chat.messages if m.type == "msg"]
        for chat in engine.state.chats.values()
    }
    state = digest(engine.state, engine.realtime.histories)
    sys.stdout.write(orjson.dumps({"chats": chats, "digest": state}).decode())
    lock.release()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
