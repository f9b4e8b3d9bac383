"""Structured logs: one JSON object a line on stderr."""

from __future__ import annotations

import logging
import sys
import time

import orjson


def _clean(value: object) -> object:
    """``value`` with every string made valid UTF-8: orjson refuses lone surrogates,
    which a path decoded with ``surrogateescape`` (``/x%ff``) carries, and the record
    would be lost behind a traceback. They are written as ``\\udcff``, visible and
    parseable."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {str(_clean(key)): _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return _clean(str(value))


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:
            # Rare (a surrogate, a key that is not a string): the slow path, which
            # cannot fail, so no record is ever lost to a "Logging error" block.
            return orjson.dumps(_clean(entry)).decode()


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
