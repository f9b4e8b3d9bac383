"""The data directory: one server at a time, private to its owner whatever the umask,
and a snapshot writer that neither outlives the server nor keeps its sockets."""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import stat
import time
from pathlib import Path

import httpx
import pytest

from gateway.cluster.redislog import INSTANCE_FILE
from persistence import datadir, snapshot
from persistence.cursors import CursorFile
from persistence.scan import scan
from persistence.snapshot import TEST_DELAY_ENV
from tests.serverproc import HEADERS, launch


def modes(directory: Path) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}


def test_a_second_server_on_a_busy_data_dir_exits_2_naming_the_holder(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = launch(data_dir)
    assert first.ready
    try:
        second = launch(data_dir, stderr_path=tmp_path / "second.stderr")
        assert second.returncode == 2
        lines = second.stderr.splitlines()
        assert len(lines) == 1, lines
        assert f"in use by process {first.process.pid}" in lines[0]
        # the first one is unharmed
        assert httpx.get(f"{first.base_url}/readyz").status_code == 200
    finally:
        assert first.stop() == 0
    again = launch(data_dir)  # released at exit: the next one starts
    assert again.ready
    again.kill()
    restarted = launch(data_dir)  # and after a kill -9 too: the kernel dropped the lock
    assert restarted.ready
    assert restarted.stop() == 0


def test_the_data_dir_is_0700_and_every_file_0600_under_umask_000(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o777)
    os.chmod(data_dir, 0o777)  # an existing, too open directory is tightened
    (data_dir / "epoch").write_text("0123456789abcdef\n")
    os.chmod(data_dir / "epoch", 0o666)
    server = launch(data_dir, umask=0, admin_token=False)  # generates admin.token
    assert server.ready
    token = (data_dir / "admin.token").read_text().strip()
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Token {token}"}) as c:
        assert c.post("/api/v5/orgs", json={"name": "Private"}).status_code == 201
    assert server.stop() == 0  # writes a snapshot
    found = modes(data_dir)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert {"admin.token", "epoch", "lock"} <= set(found)
    assert any(name.startswith("wal-") for name in found)
    assert any(name.startswith("snapshot-") for name in found)
    assert found == dict.fromkeys(found, 0o600), found
    # both were tightened loudly: the directory, and each file with its old mode
    assert '"data directory permissions tightened"' in server.stderr
    assert '"data directory files tightened"' in server.stderr
    assert '"was":{"epoch":"0o666"}' in server.stderr


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(x) for x in (task / "children").read_text().split()]
    return children


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_kill_9_during_a_snapshot_then_an_immediate_restart_on_the_same_port(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    server = launch(
        data_dir,
        "--snapshot-records",
        "3",
        "--snapshot-interval",
        "3600",
        env={TEST_DELAY_ENV: "60"},  # the writer sits on its temporary file for a minute
        umask=0,
    )
    writer = None
    try:
        assert server.ready
        with httpx.Client(base_url=server.base_url, headers=HEADERS) as client:
            org = client.post("/api/v5/orgs", json={"name": "Snap"}).json()
            for index in range(3):
                response = client.post(
                    f"/api/v5/orgs/{org['id']}/rooms", json={"name": f"R{index}"}
                )
                assert response.status_code == 201
        deadline = time.monotonic() + 10
        while not list(data_dir.glob(".snapshot-*.tmp")):
            assert time.monotonic() < deadline, "no snapshot started"
            time.sleep(0.02)
        (temporary,) = data_dir.glob(".snapshot-*.tmp")
        assert stat.S_IMODE(temporary.stat().st_mode) == 0o600
        (writer,) = child_pids(server.process.pid)
        # the writer kept nothing of the server's (listening socket, connections, log,
        # lock): beside stdio, its only descriptor is the file it writes
        held = {
            int(fd): os.readlink(f"/proc/{writer}/fd/{fd}")
            for fd in os.listdir(f"/proc/{writer}/fd")
        }
        assert [target for fd, target in held.items() if fd > 2] == [str(temporary)]
        assert not any(target.startswith("socket:") for target in held.values())
    except BaseException:
        if writer is not None:  # a failed test leaves no writer behind
            os.kill(writer, signal.SIGKILL)
        raise
    finally:
        server.kill()  # kill -9, mid-snapshot
    restarted = launch(data_dir, port=server.port)  # at once, on the same port
    try:
        assert restarted.ready, restarted.stderr
        deadline = time.monotonic() + 5
        while not gone(writer):
            assert time.monotonic() < deadline, "the snapshot writer outlived the server"
            time.sleep(0.02)
        assert not list(data_dir.glob(".snapshot-*.tmp")), "half-written snapshot left"
        with httpx.Client(base_url=restarted.base_url, headers=HEADERS) as client:
            rooms = client.get(f"/api/v5/orgs/{org['id']}/rooms").json()["results"]
        assert [room["name"] for room in rooms] == ["R0", "R1", "R2"]
    finally:
        if restarted.process.poll() is None:
            assert restarted.stop() == 0
        if writer is not None and not gone(writer):  # a failed test leaves no writer
            os.kill(writer, signal.SIGKILL)


def test_a_start_removes_every_half_written_file_and_only_those(tmp_path: Path) -> None:
    """Each writer that renames a file into place leaves its temporary file if killed
    mid-write (kill -9 during a save); the next start removes every one of them."""
    data_dir = tmp_path / "data"
    server = launch(data_dir)
    assert server.ready, server.stderr
    assert server.stop() == 0
    half_written = [
        data_dir / f".{snapshot.snapshot_name(99)}.tmp",
        CursorFile(data_dir).temporary,
        (data_dir / INSTANCE_FILE).with_suffix(".tmp"),  # as redislog writes it
        data_dir / ".wal-00000000000000000001.log.repair",
    ]
    for path in half_written:  # the one list start-up removes names each of them
        assert any(fnmatch.fnmatch(path.name, p) for p in datadir.TEMPORARY_FILES), path
        path.write_bytes(b"half")
    kept = data_dir / "notes.tmp"  # not the server's: left alone
    kept.write_text("mine\n")
    restarted = launch(data_dir)
    try:
        assert restarted.ready, restarted.stderr
        assert [path.name for path in half_written if path.exists()] == []
        assert kept.read_text() == "mine\n"
        assert '"half-written files removed"' in restarted.stderr
        assert all(path.name in restarted.stderr for path in half_written)
    finally:
        assert restarted.stop() == 0


def test_an_unusable_data_dir_is_a_one_line_refusal(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data directory should be\n")
    outcome = launch(not_a_dir)
    assert outcome.returncode == 2
    (line,) = outcome.stderr.strip().splitlines()
    assert line.startswith("chat-engine: data directory") and "not a directory" in line


def test_a_snapshot_write_that_fails_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at shutdown used to leave a 0-byte temporary snapshot behind."""

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapshot.os, "fsync", disk_full)
    with pytest.raises(OSError):
        snapshot.write_file(tmp_path, 7, b"state" * 100)
    assert list(tmp_path.iterdir()) == []


def test_a_stop_during_a_snapshot_waits_for_it_and_writes_no_second_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = launch(
        data_dir,
        "--snapshot-records",
        "2",
        "--snapshot-interval",
        "3600",
        env={TEST_DELAY_ENV: "2"},  # the periodic writer is still writing at the stop
    )
    assert server.ready
    try:
        with httpx.Client(base_url=server.base_url, headers=HEADERS) as client:
            org = client.post("/api/v5/orgs", json={"name": "Snap"}).json()
            response = client.post(f"/api/v5/orgs/{org['id']}/rooms", json={"name": "R"})
            assert response.status_code == 201
        deadline = time.monotonic() + 10
        while not list(data_dir.glob(".snapshot-*.tmp")):
            assert time.monotonic() < deadline, "no snapshot started"
            time.sleep(0.02)
    finally:
        code = server.stop()  # SIGTERM while the periodic snapshot's child writes
    assert code == 0, server.stderr
    assert "snapshot failed" not in server.stderr
    last_lsn = scan(data_dir, 0).last_lsn
    assert [lsn for lsn, _ in snapshot.snapshots(data_dir)] == [last_lsn]
    assert not list(data_dir.glob(".snapshot-*.tmp"))
