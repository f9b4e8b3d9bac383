"""Snapshots: the whole state (and the channel histories) at one log position.

A snapshot file is ``MAGIC, crc32 u32, length u64, msgpack {lsn, state, router}``,
written to a temporary file, fsynced, renamed into place, and the directory fsynced.
``router`` holds the channel histories (``Histories.export``), under the key they were
first written with, so older data directories still load.

Taking one must not stall the event loop, so it is written by a forked child process:
``fork`` gives the child a copy-on-write image of memory at a point between two applied
records, which is exactly the state at the log position ``lsn``; the child encodes and
writes it while the server goes on. The server only pauses for the ``fork`` call itself
(its page-table copy), which is measured and logged. The child touches no trio object,
no lock and no log handler, closes every descriptor it inherited, dies with the server
(``PR_SET_PDEATHSIG``), and leaves with ``os._exit``.
"""

from __future__ import annotations

import ctypes
import gc
import io
import logging
import os
import signal
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import trio

from engine.realtime.history import Histories
from engine.state import State
from persistence.codec import decode_state_items, encode_state, pack
from persistence.datadir import create_private, make_private_dir

log = logging.getLogger("chat_engine.snapshot")

MAGIC = b"CESNAP1\n"
HEADER = struct.Struct(">IQ")
KEEP = 2  # the newest snapshot, and the one before it as a fallback


def snapshot_name(lsn: int) -> str:
    return f"snapshot-{lsn:020d}.msgpack"


def position(path: Path) -> int | None:
    """The log position a snapshot file's name says it covers."""
    try:
        return int(path.stem[9:])
    except ValueError:
        return None


def snapshots(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("snapshot-*.msgpack"):
        lsn = position(path)
        if lsn is not None:
            found.append((lsn, path))
    return sorted(found)


def encode(lsn: int, state: State, histories: dict[str, Any]) -> bytes:
    """``histories``: the channel histories' plain export (``Histories.export``); the
    file keeps its historical key for them, ``router``."""
    payload = pack({"lsn": lsn, "state": encode_state(state), "router": histories})
    return MAGIC + HEADER.pack(zlib.crc32(payload), len(payload)) + payload


def write_file(directory: Path, lsn: int, data: bytes, *, delay: float = 0.0) -> Path:
    """Write through a temporary file (0600), removed again if anything fails (a full
    disk leaves nothing behind). ``delay``: seconds to wait with the temporary file open
    (tests only: it makes a snapshot slow enough to crash the server during one)."""
    path = directory / snapshot_name(lsn)
    temporary = directory / f".{path.name}.tmp"
    try:
        with open(create_private(temporary), "wb") as handle:
            if delay:
                time.sleep(delay)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


@dataclass(slots=True)
class Loaded:
    lsn: int
    path: Path


def load_newest(
    directory: Path,
    into: State,
    histories: Histories,
    unreadable: list[tuple[Path, str]] | None = None,
) -> Loaded | None:
    """Load the newest snapshot that reads back whole into ``into`` and ``histories``; a
    corrupt one is skipped (loudly, and added to ``unreadable`` with its error) in
    favour of the one before, whose longer log tail then gets replayed."""
    for _, path in reversed(snapshots(directory)):
        try:
            return Loaded(load_file(path, into, histories), path)
        except Exception as error:
            if unreadable is not None:
                unreadable.append((path, str(error) or type(error).__name__))
            log.error(
                "snapshot unreadable, falling back",
                extra={"fields": {"snapshot": path.name, "error": str(error)}},
            )
    return None


def load_file(path: Path, into: State, histories: Histories) -> int:
    """Load one snapshot into ``into`` and ``histories`` and return its log position; any
    damage raises, and leaves both untouched."""
    return load_bytes(path.read_bytes(), into, histories)


def load_bytes(data: bytes, into: State, histories: Histories) -> int:
    """``load_file`` from a snapshot's bytes (a replica's, fetched from its primary)."""
    if not data.startswith(MAGIC):
        raise ValueError("bad magic")
    crc, length = HEADER.unpack_from(data, len(MAGIC))
    payload = data[len(MAGIC) + HEADER.size :]
    if len(payload) != length or zlib.crc32(payload) != crc:
        raise ValueError("checksum mismatch")
    # a corrupt snapshot must not half-fill ``into`` or ``histories``
    fresh, fresh_histories = State(), histories.empty_copy()
    lsn = _read(payload, fresh, fresh_histories)
    into.take_over(fresh)
    histories.take_over(fresh_histories)
    return lsn


def _read(payload: bytes, state: State, histories: Histories) -> int:
    """Decode a snapshot's payload into ``state`` and ``histories``, streaming its chats
    and its channels one by one (``codec.decode_state_items``, ``histories.restoring``);
    returns its log position. What one chat or channel decodes to is freed before the
    next is read: decoded whole, a large snapshot left much of the process's memory in
    freed blocks scattered among the objects that live on (docs/benchmarks.md, "Figures
    behind choices in the code")."""
    unpacker = msgpack.Unpacker(
        io.BytesIO(payload),
        raw=False,
        strict_map_key=False,
        read_size=1 << 20,
        max_buffer_size=max(len(payload), 1 << 20),
    )

    def state_items() -> Iterator[tuple[str, Any]]:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "chats":
                yield key, (unpacker.unpack() for _ in range(unpacker.read_array_header()))
            else:
                yield key, unpacker.unpack()

    def restore_histories() -> None:
        restoring = histories.restoring()
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "channels":
                for _ in range(unpacker.read_array_header()):
                    restoring.channel(unpacker.unpack())
            elif key == "order":
                restoring.order(unpacker.unpack())
            else:
                unpacker.skip()  # the epoch: the data directory's file names it
        restoring.done()

    seen = set()
    lsn = 0
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        seen.add(key)
        if key == "state":
            decode_state_items(state_items(), state)
        elif key == "router":
            restore_histories()
        elif key == "lsn":
            lsn = unpacker.unpack()
        else:
            raise ValueError(f"unknown snapshot entry {key!r}")
    if seen != {"lsn", "state", "router"}:
        raise ValueError(f"snapshot has {sorted(seen)}")
    return lsn


def remove_old(directory: Path) -> list[int]:
    """Keep the newest ``KEEP`` snapshots; returns the lsns kept (oldest first)."""
    found = snapshots(directory)
    for _, path in found[:-KEEP]:
        path.unlink(missing_ok=True)
    remove_temporary(directory)
    return [lsn for lsn, _ in found[-KEEP:]]


def move_aside(directory: Path, path: Path) -> Path:
    """Move an unreadable snapshot into ``<directory>/damaged/``: left in place it would
    count as one of the ``KEEP`` newest and push out a sound one (and the log segments
    only that one still needs)."""
    aside = directory / "damaged"
    make_private_dir(aside)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = aside / f"{path.name}.{stamp}"
    suffix = 0
    while target.exists():  # never overwrite an earlier copy
        suffix += 1
        target = aside / f"{path.name}.{stamp}.{suffix}"
    os.replace(path, target)
    for changed in (aside, directory):
        fd = os.open(changed, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target


def remove_temporary(directory: Path) -> int:
    """Remove half-written snapshots (a full disk, a writer that failed). Only while no
    writer runs: after a writer ended (start-up removes those of a killed one, with the
    directory's other temporary files: ``datadir.remove_temporary``)."""
    removed = 0
    for stray in directory.glob(".snapshot-*.tmp"):
        stray.unlink(missing_ok=True)
        removed += 1
    return removed


# Tests only: seconds a snapshot writer waits with its temporary file open, so a test can
# kill the server while a snapshot is being written.
TEST_DELAY_ENV = "TEST_CHAT_ENGINE_SNAPSHOT_DELAY"
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup(parent: int) -> None:
    """In the forked writer, before anything else: die with the server (a ``kill -9``
    of the server must not leave a writer behind, holding memory and half a file), and
    close every descriptor it inherited but stdio: the listening socket, client
    connections, the log and the data directory's lock. A writer that kept the
    listening socket would take connections it never answers, and block a restart on
    the same port; one that kept the lock would block any restart."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the server died before prctl took effect
        os._exit(1)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


async def take_forked(
    directory: Path, lsn: int, state: State, histories: Callable[[], dict[str, Any]]
) -> float:
    """Write a snapshot of the current state from a forked child; returns the pause the
    fork caused in this process, in seconds. Raises ``OSError`` if the child failed."""
    delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
    parent = os.getpid()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: a frozen image of the state at ``lsn``
        code = 1
        try:
            # Objects with finalizers (sockets) must not close descriptors that
            # closerange freed and the writer reuses; and a collection would copy pages.
            gc.disable()
            _child_setup(parent)
            write_file(directory, lsn, encode(lsn, state, histories()), delay=delay)
            code = 0
        finally:
            os._exit(code)
    pause = time.perf_counter() - started
    _, status = await trio.to_thread.run_sync(os.waitpid, pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        remove_temporary(directory)  # what the failed writer left
        raise OSError(f"snapshot child failed with status {status}")
    return pause
