"""Positions that followers of the log have reached, kept on disk.

One small JSON file, ``<data-dir>/webhook-cursors.json``, maps a name (a webhook's id)
to the last log position whose events that follower has finished with. It is replaced
whole, atomically (a temporary file, fsynced, renamed, the directory fsynced) and is
owner-only like every file of the data directory. A follower saves it now and then, not
after every record: after a crash it resumes from the saved position and repeats what
came after it (at-least-once).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from persistence.datadir import create_private

log = logging.getLogger("chat_engine.store")

CURSORS_FILE = "webhook-cursors.json"


class CursorFile:
    def __init__(self, directory: Path) -> None:
        self.path = directory / CURSORS_FILE
        # written first, then renamed into place (datadir.TEMPORARY_FILES names it)
        self.temporary = self.path.with_name(f".{self.path.name}.tmp")

    def load(self) -> dict[str, int]:
        """The saved positions (none if the file is missing or unreadable: a follower
        then starts from its own beginning and the log says what it repeats)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.error(
                "cursor file unreadable; starting over",
                extra={"fields": {"path": str(self.path), "error": str(error)}},
            )
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            str(name): value
            for name, value in data.items()
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0
        }

    def save(self, positions: Mapping[str, int]) -> None:
        """Blocking (a worker thread): replace the file with ``positions``."""
        temporary = self.temporary
        data = json.dumps(dict(positions), sort_keys=True).encode()
        try:
            with open(create_private(temporary), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
