"""The documentation stands alone: docs/api.md has a section for every API route (and none
for a route that does not exist), docs/protocol.md's table of close codes lists every
code the server closes a WebSocket session with (and no other), and no file of the repository sends its reader to a
document outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from engine.realtime import protocol
from gateway.app import ROUTES

ROOT = Path(__file__).resolve().parent.parent


def documented_routes() -> set[tuple[str, str]]:
    text = (ROOT / "docs" / "api.md").read_text()
    return {
        (method, path)
        for method, path in re.findall(r"^### (GET|POST|PUT|PATCH|DELETE) (/\S+)", text, re.M)
    }


def test_docs_api_md_describes_every_api_route_and_only_those() -> None:
    # docs/api.md names path parameters by their resource: {org} for {org_id}
    routes = {
        (route.method, re.sub(r"{(\w+?)_id}", r"{\1}", route.path))
        for route in ROUTES
        if route.summary is not None
    }
    documented = documented_routes()
    assert not routes - documented, f"routes missing from docs/api.md: {routes - documented}"
    assert not documented - routes, f"docs/api.md describes no such route: {documented - routes}"


def documented_close_codes() -> set[int]:
    """The codes of the rows of docs/protocol.md's close-code table."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    table = text.split("| code | meaning | what the client should do |", 1)[1]
    rows = table.split("\n\n", 1)[0]
    return {int(code) for code in re.findall(r"^\| (\d{4}) \|", rows, re.M)}


def test_docs_protocol_md_lists_every_close_code_and_only_those() -> None:
    codes = set(protocol.CLOSE_CODES)
    documented = documented_close_codes()
    assert not codes - documented, (
        f"close codes missing from docs/protocol.md: {codes - documented}"
    )
    assert not documented - codes, (
        f"docs/protocol.md lists codes the server never sends: {documented - codes}"
    )
    # each reason the docs quote is the one the server gives
    text = (ROOT / "docs" / "protocol.md").read_text()
    for quoted in re.findall(r'\(reason "([^"]+)"\)', text):
        assert quoted in {close.reason for close in protocol.CLOSES}, quoted


def test_no_file_points_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    outside = re.compile(r"CONTRACT|§|\.\./shared|/work/shared")
    found = [
        name
        for name in files
        if name != "tests/test_api_docs.py" and outside.search(text_of(ROOT / name))
    ]
    assert not found, f"files pointing outside the repository: {found}"


def text_of(path: Path) -> str:
    """A text file's text; nothing for a binary file (a plot) or a file not checked out."""
    try:
        return path.read_text()
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return ""
