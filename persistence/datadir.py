"""The data directory: one process at a time, and nobody else can read it.

``claim`` is the first thing a process does with a data directory, before it reads
anything in it: it creates the directory if needed, makes it (and every file in it)
private to its owner, and takes an exclusive ``flock`` on ``<data-dir>/lock``, writing
its pid there so that a second process can say who holds it. The lock is the kernel's:
it goes away with the process however it ends (``kill -9`` included), so a stale lock
file never blocks a restart.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from pathlib import Path

from persistence.errors import StartupRefused

log = logging.getLogger("chat_engine.datadir")

LOCK_NAME = "lock"
DIR_MODE = 0o700
FILE_MODE = 0o600

# Every file a writer in the data directory puts down before renaming it into place,
# which a process killed mid-write leaves behind: the one list start-up removes
# (``remove_temporary``), once recovery succeeded. docs/durability.md lists them too.
TEMPORARY_FILES = (
    ".snapshot-*.msgpack.tmp",  # persistence.snapshot.write_file
    ".webhook-cursors.json.tmp",  # persistence.cursors.CursorFile.save
    "cluster-instance.tmp",  # the cluster's instance id (gateway/cluster/redislog.py)
    ".wal-*.log.repair",  # a segment being rewritten by chat-engine repair
)


def create_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open`` for a file in the data directory: mode 0600 whatever the umask."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private_dir(path: Path) -> None:
    """Create ``path`` 0700 whatever the umask, or tighten an existing one (loudly)."""
    existed = path.is_dir()
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != DIR_MODE:
        path.chmod(DIR_MODE)
    if existed and mode != DIR_MODE:
        log.warning(
            "data directory permissions tightened",
            extra={"fields": {"path": str(path), "was": oct(mode), "now": oct(DIR_MODE)}},
        )


class DataDirLock:
    """Held while the object lives (or until ``release``)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1

    def __del__(self) -> None:
        self.release()


def holder(path: Path) -> str:
    try:
        return (path / LOCK_NAME).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def claim(path: Path, *, create: bool = True) -> DataDirLock:
    """Lock ``path`` for this process; raises ``StartupRefused`` if another process
    holds it or the directory cannot be used. ``create=False`` (check, repair) refuses
    a directory that does not exist instead of making an empty one."""
    try:
        if not path.is_dir():
            if not create or path.exists():
                raise StartupRefused(f"data directory {path} does not exist or is not a directory")
        make_private_dir(path)
        fd = create_private(path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    except OSError as error:
        raise StartupRefused(f"data directory {path} is unusable: {error}") from None
    _lock(path, fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        tighten_files(path)
    except OSError as error:
        os.close(fd)
        raise StartupRefused(f"data directory {path} is unusable: {error}") from None
    return DataDirLock(path, fd)


def _lock(path: Path, fd: int) -> None:
    """Take the exclusive lock on ``fd`` (the lock file), or close it and refuse, naming
    the process that holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StartupRefused(
                f"data directory {path} is in use by process {holder(path)} "
                "(one process per data directory; stop it first)"
            ) from None
        raise StartupRefused(f"data directory {path} cannot be locked: {error}") from None


def claim_to_read(path: Path) -> DataDirLock:
    """``claim`` for a reader that must change nothing (``chat-engine check``): no
    directory or lock file is created, no mode tightened, no pid written. It locks the
    lock file if there is one, so it never reads beside a server and no server starts
    meanwhile; a directory without one has never been served by this version, and is
    read without a lock."""
    if not path.is_dir():
        raise StartupRefused(f"data directory {path} does not exist or is not a directory")
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return DataDirLock(path, -1)
    except OSError as error:
        raise StartupRefused(f"data directory {path} is unusable: {error}") from None
    _lock(path, fd)
    return DataDirLock(path, fd)


def remove_temporary(path: Path) -> list[str]:
    """Remove every temporary file of ``TEMPORARY_FILES`` left in ``path``; their names.
    Only while no writer runs: at start-up, under the lock, before anything is served
    (the snapshot writer cleans up its own when it fails)."""
    removed = []
    for pattern in TEMPORARY_FILES:
        for stray in sorted(path.glob(pattern)):
            stray.unlink(missing_ok=True)
            removed.append(stray.name)
    return removed


def tighten_files(path: Path) -> None:
    """Every file in the directory to 0600 (files written by older versions, or copied
    in by an operator, may be looser); sub-directories (repair's copies) to 0700. One
    warning names every entry changed, with its old mode."""
    changed = _tighten(path, path)
    if changed:
        log.warning(
            "data directory files tightened",
            extra={"fields": {"path": str(path), "was": changed, "now": "0600, directories 0700"}},
        )


def _tighten(root: Path, path: Path) -> dict[str, str]:
    changed = {}
    for entry in os.scandir(path):
        if entry.is_symlink():
            continue
        directory = entry.is_dir()
        wanted = DIR_MODE if directory else FILE_MODE
        mode = stat.S_IMODE(entry.stat().st_mode)
        if mode != wanted:
            os.chmod(entry.path, wanted)
            changed[os.path.relpath(entry.path, root)] = oct(mode)
        if directory:
            changed.update(_tighten(root, Path(entry.path)))
    return changed
