"""``chat-engine check`` and ``chat-engine repair``: a data directory, without a server.

Both take the data directory's lock first, so neither runs beside a server on the
same directory (a server's log changes under a reader) and no server starts while a
repair rewrites segments; a held lock is one line on stderr and status 2.

``check`` changes nothing: it locks the existing lock file without writing its pid (a
directory without one is read unlocked), creates no file and tightens no mode. It
prints what it finds: every
snapshot and whether it loads, every log segment with its records and positions, and
every unreadable stretch or gap, with what start-up would do about it. Exit status: 0
when everything is sound, 1 when anything is damaged (start-up may still succeed: a
torn tail, damage the snapshot covers, a corrupt newest snapshot with a sound older
one), 2 when it could not look.

``repair`` is the operator's explicit choice to lose the damaged records and keep
everything after them. It copies each segment it will change to
``<data-dir>/damaged/`` first, then replaces each unreadable stretch by empty records
holding the lost positions (so the log's positions stay continuous and every later
record keeps its place), and cuts damage at the very end. Then it replays the whole
directory the way start-up does: a later record that no longer applies, because it
needed something a dropped record made (a message in a chat whose creation was
lost), is dropped the same way, until the replay is clean. It prints every position
it dropped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.actors.supervisor import Engine
from engine.realtime.history import Histories
from engine.state import State
from gateway.settings import add_options, pick
from persistence import datadir, scan, snapshot
from persistence.errors import StartupRefused
from persistence.store import Store, lost_to_snapshots
from persistence.wal import frame, segments

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

COMMANDS = ("check", "repair")
REPLAY_ROUNDS = 20


def add_commands(commands: Any) -> None:
    """Register ``check`` and ``repair`` on the CLI's sub-command parsers."""
    check = commands.add_parser(
        "check", help="read a data directory's snapshots and log and report any damage"
    )
    add_options(check, pick("--data-dir"))
    check.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    repair = commands.add_parser(
        "repair",
        help="drop a data directory's damaged log records and keep everything after them "
        "(copies changed segments to <data-dir>/damaged/ first)",
    )
    add_options(repair, pick("--data-dir"))
    repair.add_argument("--log-level", default="warning", choices=LOG_LEVELS)


def run(options: argparse.Namespace) -> int:
    path = Path(options.data_dir)
    try:
        if options.command == "check":
            lock = datadir.claim_to_read(path)
        else:
            lock = datadir.claim(path, create=False)
    except StartupRefused as refusal:
        print(f"chat-engine: {refusal}", file=sys.stderr, flush=True)
        return 2
    try:
        return check(path) if options.command == "check" else repair(path)
    except StartupRefused as found:  # a record that reads back whole but does not decode
        print(f"chat-engine: {found}", file=sys.stderr, flush=True)
        return 1
    finally:
        lock.release()


def _histories() -> Histories:
    return Histories(epoch="check")


def check(path: Path, out: Any = None) -> int:
    out = out or sys.stdout
    sound = True
    base: int | None = None  # the position of the snapshot start-up would load
    print(f"data directory {path}", file=out)
    found = snapshot.snapshots(path)
    unreadable: list[tuple[Path, str]] = []
    if not found:
        print("no snapshot: start-up replays the log from its start", file=out)
    for _, snapshot_path in reversed(found):
        try:
            loaded = snapshot.load_file(snapshot_path, State(), _histories())
        except Exception as error:
            sound = False
            unreadable.append((snapshot_path, str(error) or type(error).__name__))
            print(f"{snapshot_path.name}: UNREADABLE ({error})", file=out)
            continue
        print(f"{snapshot_path.name}: lsn {loaded}, loads", file=out)
        base = loaded if base is None else base
    base = base or 0
    report = scan.scan(path, base, collect=False)
    for info in report.segments:
        span = f"lsn {info.first_lsn}..{info.last_lsn}" if info.records else "no readable record"
        print(f"{info.path.name}: {info.records} records, {span}, {info.size} bytes", file=out)
    for problem in report.problems:
        sound = False
        if problem.torn:
            verdict = "start-up cuts it"
        elif problem.harmless:
            verdict = f"harmless: the snapshot at lsn {base} covers it"
        elif problem.kind == "missing":
            verdict = (
                "start-up refuses: these records are needed and no longer here ('chat-engine "
                "repair' cannot bring them back; restore from a backup, or put back what held them)"
            )
        else:
            verdict = "start-up refuses: these records are needed ('chat-engine repair' drops them)"
        print(f"DAMAGE: {problem.describe()} -> {verdict}", file=out)
    lost = lost_to_snapshots(unreadable, report.last_lsn)
    if lost is not None:
        print(
            f"DAMAGE: {lost} -> start-up refuses: restore from a backup (or put back a sound "
            "copy of that snapshot, or the log segments that held those records)",
            file=out,
        )
    if report.harmful or lost is not None:
        print("start-up would refuse", file=out)
    else:
        print(
            f"start-up would load the snapshot at lsn {base} and replay {report.count} "
            f"record(s), up to lsn {report.last_lsn}",
            file=out,
        )
    print("sound" if sound else "DAMAGED", file=out)
    return 0 if sound else 1


def repair(path: Path) -> int:
    base = 0
    try:
        loaded = snapshot.load_newest(path, State(), _histories())
        base = loaded.lsn if loaded is not None else 0
    except Exception:  # load_newest logs and skips what it cannot read
        base = 0
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    copied: set[Path] = set()
    dropped: list[str] = []
    for _ in range(REPLAY_ROUNDS):
        try:
            report = scan.scan(path, base, collect=False)
            break
        except scan.RecordFailed as undecodable:  # whole, but it does not decode: drop it
            _drop(path, {undecodable.lsn}, stamp, copied)
            dropped.append(f"lsn {undecodable.lsn}: reads back whole but cannot be applied")
    else:
        print("chat-engine: repair could not reach a readable log", file=sys.stderr)
        return 1
    harmful = report.harmful
    missing = [problem for problem in harmful if problem.kind == "missing"]
    if missing:
        for problem in missing:
            print(f"cannot repair: {problem.describe()}", file=sys.stderr)
        print(
            "chat-engine: repair only drops unreadable records; restore the data directory "
            "from a backup",
            file=sys.stderr,
        )
        return 1
    for segment, changes in _cuts(harmful, dropped).items():
        _rewrite(path, segment, changes, stamp, copied)
    if not _replay_until_clean(path, stamp, copied, dropped):
        return 1
    if not dropped:
        print("nothing to repair: start-up reads everything it needs")
        return 0
    for line in dropped:
        print(f"dropped {line}")
    for segment in sorted(copied):
        print(f"copied aside before changing: {segment}")
    print("repaired: the server starts with every other record")
    return 0


def _cuts(
    harmful: list[scan.Problem], dropped: list[str]
) -> dict[Path, list[tuple[int, int, bytes]]]:
    """The byte ranges to replace in each segment, (start, end, replacement), for each
    unreadable stretch of the log: empty records in place of lost ones that later
    records follow, nothing otherwise. Says what it drops in ``dropped``."""
    edits: dict[Path, list[tuple[int, int, bytes]]] = {}
    for problem in harmful:
        first, *rest = problem.regions
        if problem.next_lsn is not None:
            lost = range(problem.after_lsn + 1, problem.next_lsn)
            filler = b"".join(frame(lsn, []) for lsn in lost)
            what = f"lsn {lost.start}..{lost.stop - 1} ({len(lost)} record(s))" if lost else ""
        elif problem.kind == "out of place":
            filler = b""
            what = f"the record out of place in {first.segment.name} at byte {first.offset}"
        elif not rest and first.whole_record:
            filler = b""
            what = f"lsn {problem.after_lsn + 1} (1 record, the last)"
        else:
            filler = b""
            what = f"every record after lsn {problem.after_lsn} in {first.segment.name}"
        edits.setdefault(first.segment, []).append((first.offset, first.end, filler))
        for region in rest:
            edits.setdefault(region.segment, []).append((region.offset, region.end, b""))
        dropped.append(f"{what}: unreadable ({problem.describe()})")
    return edits


def _replay_until_clean(path: Path, stamp: str, copied: set[Path], dropped: list[str]) -> bool:
    """Replay the log, dropping the records that cannot be applied, until a replay is
    clean (True) or the rounds run out or start-up would refuse (False, said on
    stderr). Says what it drops in ``dropped``."""
    for round_ in range(REPLAY_ROUNDS):
        why = "cannot be applied" + (" without the dropped records" if dropped else "")
        try:
            failed = _replay(path)
        except scan.RecordFailed as refusal:  # whole, but it does not decode
            failed, why = {refusal.lsn}, "reads back whole but cannot be applied"
        except StartupRefused as refusal:
            print(f"chat-engine: repair could not finish: {refusal}", file=sys.stderr)
            return False
        if not failed:
            return True
        _drop(path, failed, stamp, copied)
        dropped.append(
            f"lsn {', '.join(str(lsn) for lsn in sorted(failed))}: {why} (round {round_ + 1})"
        )
    print("chat-engine: repair could not reach a clean replay", file=sys.stderr)
    return False


def _drop(directory: Path, lsns: set[int], stamp: str, copied: set[Path]) -> None:
    """Replace whole records by empty ones at the same positions."""
    for segment, changes in _locate(directory, lsns).items():
        _rewrite(directory, segment, changes, stamp, copied)


def _rewrite(
    directory: Path,
    segment: Path,
    changes: Iterable[tuple[int, int, bytes]],
    stamp: str,
    copied: set[Path],
) -> None:
    """Replace byte ranges of a segment, through a copy aside and a temporary file."""
    aside = directory / "damaged"
    datadir.make_private_dir(aside)
    target = aside / f"{segment.name}.{stamp}"
    if target not in copied:
        if target.exists():  # a second round changes an already changed segment
            target = aside / f"{segment.name}.{stamp}.{len(copied)}"
        shutil.copyfile(segment, target)
        target.chmod(datadir.FILE_MODE)
        copied.add(target)
    data = segment.read_bytes()
    pieces, position = [], 0
    for offset, end, replacement in sorted(changes):
        pieces += [data[position:offset], replacement]
        position = end
    pieces.append(data[position:])
    temporary = segment.with_name(f".{segment.name}.repair")
    with open(datadir.create_private(temporary), "wb") as handle:
        handle.write(b"".join(pieces))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, segment)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replay(directory: Path) -> set[int]:
    """Start-up's recovery, in this process: the positions of records that fail."""
    store = Store(directory)
    engine = Engine(store=store)
    failed: set[int] = set()
    recovery = store.recover(engine.state, engine.realtime.histories)
    for lsn, facts in recovery:
        try:
            engine.apply_record(lsn, facts)  # the server's own apply path
        except Exception:
            failed.add(lsn)
    recovery.finish()
    return failed


def _locate(directory: Path, lsns: set[int]) -> dict[Path, list[tuple[int, int, bytes]]]:
    """The byte range of each record in ``lsns``, with an empty record to put there."""
    found: dict[Path, list[tuple[int, int, bytes]]] = {}
    for _, segment in segments(directory):
        data = segment.read_bytes()
        offset = 0
        while offset < len(data):
            parsed = scan.parse(data, offset)
            if parsed is None:
                break
            lsn, _, end = parsed
            if lsn in lsns:
                found.setdefault(segment, []).append((offset, end, frame(lsn, [])))
            offset = end
    return found
