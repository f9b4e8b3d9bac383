"""Damage in the log, on real server processes: a flipped byte never costs an
acknowledged write silently. Either the server starts with every acknowledged write, or
it refuses (exit 2, one line) with every file byte for byte as it was; a torn tail is
cut; `chat-engine check` sees the damage, and `chat-engine repair` drops exactly the
damaged records (and what depended on them) after copying the segment aside.

One data directory is built once through a real server (three runs: two clean stops,
each writing a snapshot, then a kill -9), and each case damages a copy of it."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from engine.facts import ChatCreated, MessagePosted
from persistence import scan, snapshot
from persistence.codec import decode_fact, pack
from persistence.cursors import CursorFile
from persistence.store import TEST_SEGMENT_BYTES_ENV
from persistence.wal import HEADER, frame, segments
from tests.serverproc import HEADERS, files, launch

SEGMENT_BYTES = "4096"
CASES_PER_KIND = 6  # 3 places x 3 fields x 6 = 54 seeded flips


@dataclass
class World:
    directory: Path
    base: str
    chats: dict[str, list[str]]  # chat id -> acknowledged message texts, in order
    snapshot_lsn: int
    digest: str = ""  # of the whole state a sound start recovers (the recovery probe's)


@dataclass
class Record:
    segment: Path
    offset: int
    end: int
    lsn: int
    facts: list[Any]


def post(client: httpx.Client, world: World, chat: str, text: str, user: str) -> None:
    response = client.post(
        f"{world.base}/chats/{chat}/messages", json={"sender_id": user, "message": text}
    )
    assert response.status_code == 201
    world.chats[chat].append(text)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    directory = tmp_path_factory.mktemp("damage") / "pristine"
    env = {TEST_SEGMENT_BYTES_ENV: SEGMENT_BYTES}
    quiet = ("--snapshot-interval", "3600", "--snapshot-records", "1000000")
    server = launch(directory, *quiet, env=env)
    with httpx.Client(base_url=server.base_url, headers=HEADERS) as client:
        org = client.post("/api/v5/orgs", json={"name": "Damage"}).json()
        base = f"/api/v5/orgs/{org['id']}"
        room = client.post(f"{base}/rooms", json={"name": "R"}).json()
        user = client.post(
            f"{base}/users", json={"first_name": "A", "last_name": "B", "alias": "a"}
        ).json()["id"]
        visitor = client.post(f"{base}/visitors", json={}).json()
        first = client.post(
            f"{base}/rooms/{room['id']}/visitors/{visitor['id']}/chats",
            params={"auto_resume": user},
        ).json()["id"]
        world = World(directory, base, {first: []}, 0)
        for index in range(25):
            post(client, world, first, f"run 1 message {index}", user)
    assert server.stop() == 0  # snapshot 1
    server = launch(directory, *quiet, env=env)
    with httpx.Client(base_url=server.base_url, headers=HEADERS) as client:
        for index in range(25):
            post(client, world, first, f"run 2 message {index}", user)
    assert server.stop() == 0  # snapshot 2: the one recovery loads
    server = launch(directory, *quiet, env=env)
    with httpx.Client(base_url=server.base_url, headers=HEADERS) as client:
        other = client.post(f"{base}/visitors", json={}).json()
        second = client.post(
            f"{base}/rooms/{room['id']}/visitors/{other['id']}/chats",
            params={"auto_resume": user},
        ).json()["id"]
        world.chats[second] = []
        for index in range(25):
            post(client, world, first, f"run 3 message {index}", user)
            if index % 5 == 0:
                post(client, world, second, f"second chat message {index}", user)
    server.kill()  # the last records are only in the log
    world.snapshot_lsn = snapshot.snapshots(directory)[-1][0]
    sound = probe(tmp_path_factory.mktemp("damage") / "sound", world)
    assert sound.returncode == 0, sound.stderr
    recovered = orjson.loads(sound.stdout)
    assert recovered["chats"] == world.chats
    world.digest = recovered["digest"]
    return world


def probe(directory: Path, world: World) -> subprocess.CompletedProcess[str]:
    """The recovery probe on ``directory`` (a copy of the world's, if not there yet)."""
    if not directory.exists():
        shutil.copytree(world.directory, directory)
    return subprocess.run(
        [sys.executable, "-m", "tests.recovery_probe", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def records(directory: Path) -> list[Record]:
    found = []
    for _, segment in segments(directory):
        data = segment.read_bytes()
        offset = 0
        while offset < len(data):
            parsed = scan.parse(data, offset)
            assert parsed is not None, "the pristine log reads back whole"
            lsn, raw, end = parsed
            found.append(Record(segment, offset, end, lsn, [decode_fact(f) for f in raw]))
            offset = end
    return found


def texts(
    outcome_url: str, world: World, headers: dict[str, str] = HEADERS
) -> dict[str, list[str]]:
    found = {}
    with httpx.Client(base_url=outcome_url, headers=headers) as client:
        for chat in world.chats:
            page = client.get(
                f"{world.base}/chats/{chat}/messages", params={"page_size": 100}
            ).json()
            assert page["next"] is None
            found[chat] = [m["message"] for m in page["results"] if m["type"] == "msg"]
    return found


@dataclass
class Case:
    name: str
    segment: str
    position: int
    xor: int
    must_start: bool  # damage under the snapshot must not stop it; needed damage must
    # else the recovery probe: the same start, without HTTP, on a directory that has its
    # epoch and admin token; a real server gets a directory without both, so a refusal
    # that created either shows in the files compared
    real_server: bool = False


def flip_cases(world: World) -> Iterator[Case]:
    rng = random.Random(17)
    all_records = records(world.directory)
    newest = all_records[-1].segment
    needed_old = [r for r in all_records if r.lsn > world.snapshot_lsn and r.segment != newest]
    needed_new = [r for r in all_records if r.lsn > world.snapshot_lsn and r.segment == newest]
    covered = [r for r in all_records if r.lsn <= world.snapshot_lsn]
    assert needed_old and needed_new and covered, "the log spans old, newest and covered"
    assert len({r.segment for r in covered}) >= 2
    places = {"old segment": needed_old, "newest segment": needed_new, "under snapshot": covered}
    fields = {"length": (0, 4), "crc": (4, 8), "payload": (8, None)}
    for place, candidates in places.items():
        for field, (start, stop) in fields.items():
            for index in range(CASES_PER_KIND):
                record = rng.choice(candidates)
                last = record.end - record.offset if stop is None else stop
                yield Case(
                    f"{place}/{field}/lsn {record.lsn}",
                    record.segment.name,
                    record.offset + rng.randrange(start, last),
                    rng.randrange(1, 256),
                    place == "under snapshot",
                    real_server=index == 0 and place != "newest segment",
                )
    last = all_records[-1]  # the last acknowledged write is whole: never a torn tail
    for field, (start, stop) in fields.items():
        end = last.end - last.offset if stop is None else stop
        yield Case(
            f"last record/{field}",
            last.segment.name,
            last.offset + end - 1 - (end - 1 - start) // 2,
            0xFF,
            False,
            real_server=True,
        )


def run_case(world: World, numbered: tuple[int, Case], root: Path) -> str:
    number, case = numbered
    directory = root / f"case-{number}"
    shutil.copytree(world.directory, directory)
    segment = directory / case.segment
    data = bytearray(segment.read_bytes())
    data[case.position] ^= case.xor
    segment.write_bytes(bytes(data))
    half_written = [
        directory / f".{snapshot.snapshot_name(1)}.tmp",
        CursorFile(directory).temporary,
    ]
    if case.real_server:
        (directory / "epoch").unlink()
        (directory / "admin.token").unlink(missing_ok=True)
        for path in half_written:  # what writers killed mid-write leave
            path.write_bytes(b"half")
            path.chmod(0o600)
    before = files(directory)
    if case.real_server:
        outcome = launch(directory, admin_token=False)
        started, code, stderr = outcome.ready, outcome.returncode, ""
        if started:
            # made once recovery succeeded, and it works
            token = (directory / "admin.token").read_text().strip()
            assert (directory / "epoch").exists()
            assert not any(path.exists() for path in half_written)  # removed once sure
            try:
                found = texts(outcome.base_url, world, {"Authorization": f"Token {token}"})
            finally:
                outcome.kill()
        stderr = outcome.stderr
    else:
        probed = probe(directory, world)
        started, code, stderr = probed.returncode == 0, probed.returncode, probed.stderr
        if started:
            recovered = orjson.loads(probed.stdout)
            found = recovered["chats"]
            # not only the messages: the whole state and every channel's history
            assert recovered["digest"] == world.digest, f"{case.name}: another state"
    if started:
        assert found == world.chats, f"{case.name}: started without every acknowledged write"
        assert case.must_start is not False, f"{case.name}: started on needed damage"
        return "started"
    assert code == 2, f"{case.name}: exit {code}: {stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert case.segment in lines[0] and "at byte" in lines[0], lines[0]
    assert files(directory) == before, f"{case.name}: a refusal changed files"
    if case.real_server:  # a refusal removes nothing, half-written files included
        assert all(path.exists() for path in half_written), case.name
    assert case.must_start is not True, f"{case.name}: refused damage the snapshot covers"
    return "refused"


def test_a_flipped_byte_anywhere_never_loses_an_acknowledged_write_silently(
    world: World, tmp_path: Path
) -> None:
    cases = list(flip_cases(world))
    assert len(cases) >= 50
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(
            pool.map(lambda numbered: run_case(world, numbered, tmp_path), enumerate(cases))
        )
    assert outcomes.count("refused") >= 30 and outcomes.count("started") >= 18


def test_a_torn_tail_is_cut_and_logged_and_everything_acknowledged_stays(
    world: World, tmp_path: Path
) -> None:
    directory = tmp_path / "torn"
    shutil.copytree(world.directory, directory)
    last = records(directory)[-1]
    size = last.segment.stat().st_size
    # an incomplete write of the next record, as a kill -9 mid-write leaves it
    unfinished = frame(last.lsn + 1, last.facts)
    with open(last.segment, "ab") as handle:
        handle.write(unfinished[: len(unfinished) // 2])
    outcome = launch(directory, "--log-level", "info")
    assert outcome.ready
    try:
        assert texts(outcome.base_url, world) == world.chats
    finally:
        outcome.kill()
    assert last.segment.stat().st_size == size
    assert '"log tail truncated"' in outcome.stderr
    assert f'"dropped_lsn":{last.lsn + 1}' in outcome.stderr


def test_only_snapshots_corrupt_and_their_log_pruned_is_a_one_line_refusal(
    world: World, tmp_path: Path
) -> None:
    directory = tmp_path / "no-fallback"
    shutil.copytree(world.directory, directory)
    assert segments(directory)[0][0] > 1, "the first segments were pruned"
    for _, path in snapshot.snapshots(directory):
        corrupt(path)
    before = files(directory)
    # the snapshots' errors are logged (JSON lines) before the refusal's own line
    line = refusal_line(launch(directory))
    assert "missing" in line and "unreadable (checksum mismatch)" in line, line
    assert "restore the data directory from a backup" in line, line
    assert "to drop the damaged records" not in line, line
    assert files(directory) == before


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


def refusal_line(outcome: Any) -> str:
    """The refusal's one line (the structured log lines before it are JSON)."""
    if outcome.ready:
        outcome.kill()
        raise AssertionError("started instead of refusing")
    assert outcome.returncode == 2, outcome.stderr
    assert "Traceback" not in outcome.stderr
    (line,) = [x for x in outcome.stderr.strip().splitlines() if not x.startswith("{")]
    return line


def test_a_corrupt_snapshot_with_no_log_left_refuses_instead_of_starting_empty(
    world: World, tmp_path: Path
) -> None:
    """One snapshot, its log pruned and gone (a copy of the snapshot alone, say), and the
    snapshot corrupt: an empty start would serve nothing and reuse its positions."""
    directory = tmp_path / "snapshot-only"
    shutil.copytree(world.directory, directory)
    *older, (lsn, kept) = snapshot.snapshots(directory)
    for _, path in older:
        path.unlink()
    for _, path in segments(directory):
        path.unlink()
    corrupt(kept)
    before = files(directory)
    line = refusal_line(launch(directory))
    assert f"{kept.name} (lsn {lsn}) is unreadable (checksum mismatch)" in line, line
    assert f"records 1..{lsn} are nowhere else: no log record is left" in line, line
    assert "restore the data directory from a backup" in line.lower(), line
    assert files(directory) == before, "a refusal changed files"
    report = maintenance("check", directory)
    assert report.returncode == 1
    assert f"DAMAGE: {kept.name} (lsn {lsn}) is unreadable" in report.stdout, report.stdout
    assert "start-up would refuse" in report.stdout, report.stdout
    assert "start-up would load" not in report.stdout, report.stdout
    assert files(directory) == before


def test_a_log_that_ends_below_an_unreadable_snapshot_refuses(world: World, tmp_path: Path) -> None:
    """The older snapshot loads, but the log after it stops before the newer (corrupt)
    snapshot's position: the records in between are in no readable file."""
    directory = tmp_path / "short-log"
    shutil.copytree(world.directory, directory)
    (older, _), (newer, newest) = snapshot.snapshots(directory)
    found = segments(directory)
    holding = max(first for first, _ in found if first <= older + 1)
    for first, path in found:
        if first > holding:
            path.unlink()
    ends = records(directory)[-1].lsn
    assert older < ends < newer, "the kept log ends between the two snapshots"
    corrupt(newest)
    before = files(directory)
    line = refusal_line(launch(directory))
    assert f"{newest.name} (lsn {newer}) is unreadable" in line, line
    assert f"records {ends + 1}..{newer} are nowhere else: the log ends at lsn {ends}" in line
    assert files(directory) == before, "a refusal changed files"
    report = maintenance("check", directory)
    assert report.returncode == 1 and "start-up would refuse" in report.stdout, report.stdout


def test_missing_records_are_refused_with_a_backup_not_repair_as_the_way_out(
    world: World, tmp_path: Path
) -> None:
    """A log segment deleted above the snapshot: nothing of its records is left, so
    repair (which only drops unreadable records) cannot help; the advice says so."""
    directory = tmp_path / "deleted-segment"
    shutil.copytree(world.directory, directory)
    # one with a segment after it (a deleted newest segment leaves no trace at all)
    newest = segments(directory)[-1][1]
    needed = next(
        r.segment for r in records(directory) if r.lsn > world.snapshot_lsn and r.segment != newest
    )
    needed.unlink()
    before = files(directory)
    line = refusal_line(launch(directory))
    assert "missing" in line and "restore the data directory from a backup" in line, line
    assert "'chat-engine repair' cannot bring them back" in line, line
    assert "to drop the damaged records" not in line, line
    assert files(directory) == before
    report = maintenance("check", directory)
    assert report.returncode == 1
    assert "'chat-engine repair' cannot bring them back" in report.stdout, report.stdout
    assert "drops them" not in report.stdout, report.stdout
    assert maintenance("repair", directory).returncode == 1  # as the advice says
    assert files(directory) == before


def maintenance(command: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", command, "--data-dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reports_and_repair_drops_exactly_the_damaged_records(
    world: World, tmp_path: Path
) -> None:
    pristine = maintenance("check", world.directory)
    assert pristine.returncode == 0, pristine.stdout + pristine.stderr
    assert pristine.stdout.strip().endswith("sound")
    directory = tmp_path / "repair"
    shutil.copytree(world.directory, directory)
    needed = [r for r in records(directory) if r.lsn > world.snapshot_lsn]
    # damage the creation of the second chat: its messages can no longer apply either
    created = next(r for r in needed if isinstance(r.facts[0], ChatCreated))
    second = created.facts[0].chat_id
    hit = next(r for r in needed if r.lsn > created.lsn + 3 and r.segment != created.segment)
    for record in (created, hit):
        data = bytearray(record.segment.read_bytes())
        data[record.offset + 12] ^= 0x40  # in the payload
        record.segment.write_bytes(bytes(data))
    damaged = {r.segment.name: r.segment.read_bytes() for r in (created, hit)}
    report = maintenance("check", directory)
    assert report.returncode == 1
    assert report.stdout.count("DAMAGE:") == 2 and "start-up would refuse" in report.stdout
    assert launch(directory).returncode == 2
    repaired = maintenance("repair", directory)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"lsn {created.lsn}..{created.lsn} (1 record(s))" in repaired.stdout
    assert f"lsn {hit.lsn}..{hit.lsn} (1 record(s))" in repaired.stdout
    # the damaged segments were copied aside, byte for byte, before any change
    aside = {
        path.name.split(".log")[0] + ".log": path.read_bytes()
        for path in (directory / "damaged").iterdir()
    }
    assert aside == damaged
    dependents = [
        r.lsn
        for r in needed
        if isinstance(r.facts[0], MessagePosted) and r.facts[0].chat_id == second
    ]
    assert dependents and all(str(lsn) in repaired.stdout for lsn in dependents)
    assert maintenance("check", directory).returncode == 0
    outcome = launch(directory)
    assert outcome.ready, outcome.stderr
    try:
        found = texts_without(outcome.base_url, world, second)
    finally:
        outcome.kill()
    lost = hit.facts[0].message if isinstance(hit.facts[0], MessagePosted) else None
    expected = [text for text in world.chats[next(iter(world.chats))] if text != lost]
    assert found == expected


def texts_without(url: str, world: World, missing_chat: str) -> list[str]:
    """The first chat's messages; the second chat's creation was dropped, so it is 404."""
    first = next(iter(world.chats))
    with httpx.Client(base_url=url, headers=HEADERS) as client:
        assert client.get(f"{world.base}/chats/{missing_chat}").status_code == 404
        page = client.get(f"{world.base}/chats/{first}/messages", params={"page_size": 100})
    return [m["message"] for m in page.json()["results"] if m["type"] == "msg"]


def modes_and_files(directory: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under the directory (the directory itself as "."), with its mode and
    a file's bytes."""
    found: dict[str, tuple[int, bytes | None]] = {".": (directory.stat().st_mode, None)}
    for path in sorted(directory.rglob("*")):
        found[str(path.relative_to(directory))] = (
            path.stat().st_mode,
            path.read_bytes() if path.is_file() else None,
        )
    return found


def test_check_changes_nothing_not_even_modes(world: World, tmp_path: Path) -> None:
    directory = tmp_path / "copied"
    shutil.copytree(world.directory, directory)
    (directory / "lock").unlink()  # a copy made without it
    directory.chmod(0o755)
    segments(directory)[0][1].chmod(0o644)
    before = modes_and_files(directory)
    report = maintenance("check", directory)
    assert report.returncode == 0, report.stdout + report.stderr
    assert modes_and_files(directory) == before
    # with a lock file (a directory a server used) and a read-only directory
    (directory / "lock").write_text("1\n")
    directory.chmod(0o555)
    before = modes_and_files(directory)
    report = maintenance("check", directory)
    assert report.returncode == 0, report.stdout + report.stderr
    assert modes_and_files(directory) == before
    directory.chmod(0o755)  # so that the test's directory can be removed


def test_check_refuses_beside_a_running_server(world: World, tmp_path: Path) -> None:
    directory = tmp_path / "busy"
    shutil.copytree(world.directory, directory)
    server = launch(directory)
    try:
        assert server.ready, server.stderr
        report = maintenance("check", directory)
    finally:
        server.kill()
    assert report.returncode == 2
    assert f"in use by process {server.process.pid}" in report.stderr


def test_a_whole_record_that_cannot_be_applied_is_refused_then_repaired(
    world: World, tmp_path: Path
) -> None:
    directory = tmp_path / "undecodable"
    shutil.copytree(world.directory, directory)
    first = next(iter(world.chats))
    target = next(
        r
        for r in records(directory)
        if r.lsn > world.snapshot_lsn
        and isinstance(r.facts[0], MessagePosted)
        and r.facts[0].chat_id == first
    )
    # its length and CRC are right: only what it says cannot be applied
    payload = pack([target.lsn, [["NoSuchFact", 1]]])
    whole = HEADER.pack(len(payload), zlib.crc32(payload)) + payload
    data = target.segment.read_bytes()
    target.segment.write_bytes(data[: target.offset] + whole + data[target.end :])
    before = files(directory)
    refused = launch(directory)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert f"lsn {target.lsn} ({target.segment.name} at byte {target.offset}" in line, line
    assert "chat-engine repair" in line, line
    assert files(directory) == before
    report = maintenance("check", directory)
    assert report.returncode == 1 and "chat-engine repair" in report.stderr
    repaired = maintenance("repair", directory)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"lsn {target.lsn}: reads back whole but cannot be applied" in repaired.stdout
    # the segment was copied aside, as it was, before the change
    (aside,) = (directory / "damaged").iterdir()
    assert aside.read_bytes() == before[target.segment.name]
    outcome = launch(directory)
    assert outcome.ready, outcome.stderr
    try:
        found = texts(outcome.base_url, world)
    finally:
        outcome.kill()
    lost = target.facts[0].message
    assert found == {**world.chats, first: [t for t in world.chats[first] if t != lost]}
