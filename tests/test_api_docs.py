"""The documentation stands alone: docs/api.md has a section for every API route (and none
for a route that does not exist), and no file of the repository sends its reader to a
document outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

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
