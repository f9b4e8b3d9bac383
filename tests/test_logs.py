"""The JSON log lines: any string a peer can put into a record (a path decoded with
``surrogateescape``) becomes a valid line, never a "Logging error" traceback."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import orjson

from bench.server import start_server
from gateway.logs import JsonLines


def record(msg: str, fields: dict[object, object] | None = None) -> logging.LogRecord:
    entry = logging.LogRecord("chat_engine.access", logging.INFO, __file__, 1, msg, None, None)
    if fields is not None:
        entry.fields = fields
    return entry


def test_a_lone_surrogate_is_written_escaped_not_raised() -> None:
    path = b"/x\xff".decode("utf-8", "surrogateescape")
    line = JsonLines().format(record("request", {"path": path, "status": 404}))
    entry = orjson.loads(line)
    assert entry["path"] == "/x\\udcff"
    assert entry["status"] == 404
    assert entry["msg"] == "request"


def test_surrogates_in_the_message_keys_and_lists_are_escaped_too() -> None:
    odd = "\udcfe"
    line = JsonLines().format(record(f"m{odd}", {odd: [odd, 1, None], 7: "seven"}))
    entry = orjson.loads(line)
    assert entry["msg"] == "m\\udcfe"
    assert entry["\\udcfe"] == ["\\udcfe", 1, None]
    assert entry["7"] == "seven"


def test_valid_text_is_kept_as_it_is() -> None:
    line = JsonLines().format(record("héllo ✓", {"path": "/ü"}))
    assert orjson.loads(line)["path"] == "/ü"
    assert orjson.loads(line)["msg"] == "héllo ✓"


def test_a_served_path_with_an_invalid_byte_logs_one_access_line(tmp_path: Path) -> None:
    log_path = tmp_path / "stderr"
    server = start_server("--in-memory", "--access-log", log_path=log_path)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /x%ff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 404")
    finally:
        server.stop()
    text = log_path.read_text(errors="replace")
    assert "Logging error" not in text and "Traceback" not in text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "chat_engine.access"]
    assert any("%ff" in str(line) or "\\udcff" in str(line) for line in access), access
