"""The console's files as a browser fetches them from a real server: their types, the
caching and security headers, revalidation, 404 for anything else (no way out of the
folder), the redirects to /console/, and that they stay out of /openapi.json. Also
``GET /api/v5/me``, which the pages read first to learn who a token belongs to."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import trio

from tests.conftest import ADMIN_TOKEN, Server, World, start_server

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "gateway" / "static"
PAGES = ("index.html", "visitor.html")


def names_of(kind: str) -> list[str]:
    return sorted(path.name for path in STATIC.iterdir() if path.name.endswith(kind))


async def test_pages_styles_and_modules_have_their_types_and_headers(server: Server) -> None:
    async with server.client() as http:
        index = await http.get("/console/")
        assert index.status_code == 200
        assert index.headers["content-type"] == "text/html; charset=utf-8"
        assert index.content == (STATIC / "index.html").read_bytes()
        for name in PAGES:
            page = await http.get(f"/console/{name}")
            assert page.status_code == 200, name
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert page.content == (STATIC / name).read_bytes()
        expected = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
        for kind, content_type in expected.items():
            assert names_of(kind), kind
            for name in names_of(kind):
                answer = await http.get(f"/console/{name}")
                assert answer.status_code == 200, name
                assert answer.headers["content-type"] == content_type, name
                assert answer.content == (STATIC / name).read_bytes(), name
        for name in [*PAGES, *names_of(".js"), *names_of(".css")]:
            answer = await http.get(f"/console/{name}")
            headers = answer.headers
            assert headers["cache-control"] == "no-cache", name
            assert headers["etag"].startswith('"'), name
            assert headers["x-content-type-options"] == "nosniff", name
            policy = headers["content-security-policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
            assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


async def test_the_javascript_client_is_served_from_its_one_copy(server: Server) -> None:
    served = STATIC / "chat-engine.js"
    assert served.is_symlink()  # no second copy in the repository
    assert served.resolve() == (ROOT / "clients" / "js" / "chat-engine.js").resolve()
    async with server.client() as http:
        answer = await http.get("/console/chat-engine.js")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert answer.content == (ROOT / "clients" / "js" / "chat-engine.js").read_bytes()
    assert b"export class ChatEngineClient" in answer.content


async def test_an_unchanged_file_revalidates_with_304_and_a_changed_tag_gets_the_file(
    server: Server,
) -> None:
    async with server.client() as http:
        first = await http.get("/console/visitor.html")
        etag = first.headers["etag"]
        again = await http.get("/console/visitor.html", headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "no-cache"
        listed = await http.get("/console/visitor.html", headers={"If-None-Match": f'"x", {etag}'})
        assert listed.status_code == 304
        other = await http.get("/console/visitor.html", headers={"If-None-Match": '"other"'})
        assert other.status_code == 200 and other.content == first.content
        index = await http.get("/console/", headers={"If-None-Match": etag})
        assert index.status_code == 200  # another file, another tag
        head = await http.head("/console/visitor.html")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["etag"] == etag


async def test_unknown_files_are_404_with_the_api_error_body(server: Server) -> None:
    async with server.client() as http:
        for path in (
            "/console/missing.html",
            "/console/nothing",
            "/console/.hidden",
            "/console/console",
            "/console/sub/index.html",
            "/console/index.html/",
        ):
            answer = await http.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["code"] == "not_found", path


async def raw_get(port: int, target: bytes) -> bytes:
    """One request sent byte for byte (an HTTP client would clean the path first)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


async def test_no_path_leads_out_of_the_folder(server: Server) -> None:
    port = int(server.base_url.rsplit(":", 1)[1])
    secrets = (b"root:", b"[build-system]", b"import ")
    for target in (
        b"/console/../pyproject.toml",
        b"/console/../../pyproject.toml",
        b"/console/..%2f..%2fpyproject.toml",
        b"/console/%2e%2e/%2e%2e/pyproject.toml",
        b"/console/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        b"/console/....//....//etc/passwd",
        b"/console/%2e%2e",
        b"/console/..",
        b"/console/../routes/console.py",
        b"/console/%2fetc%2fpasswd",
        b"/console/..%5c..%5cpyproject.toml",
        b"/console/chat-engine.js%00.html",
    ):
        answer = await raw_get(port, target)
        status = answer.split(b"\r\n", 1)[0]
        assert b" 404 " in status or b" 400 " in status, (target, status)
        assert not any(secret in answer for secret in secrets), target


async def test_the_root_and_the_bare_prefix_redirect_to_the_console(server: Server) -> None:
    async with server.client() as http:
        for path in ("/", "/console"):
            answer = await http.get(path)
            assert answer.status_code == 302, path
            assert answer.headers["location"] == "/console/"
            assert answer.json() == {"location": "/console/"}
        followed = await http.get("/", follow_redirects=True)
        assert followed.status_code == 200
        assert followed.content == (STATIC / "index.html").read_bytes()


async def test_the_console_is_not_part_of_the_api_document(server: Server) -> None:
    async with server.client() as http:
        document = (await http.get("/openapi.json")).json()
    paths = document["paths"]
    assert not [path for path in paths if not path.startswith("/api/")]
    assert "/api/v5/me" in paths


async def test_me_names_the_tokens_principal(world: World) -> None:
    ada = world.users[0]
    async with world.client(ada["token"]) as http:
        me = (await http.get("/api/v5/me")).json()
    assert me["kind"] == "user" and me["id"] == ada["id"]
    assert me["organization_id"] == world.org["id"]
    assert me["user"]["alias"] == ada["alias"] and "token" not in me["user"]
    async with world.client(world.visitor["token"]) as http:
        me = (await http.get("/api/v5/me")).json()
    assert me == {
        "kind": "visitor",
        "id": world.visitor["id"],
        "organization_id": None,
        "user": None,
    }
    async with world.org_client as http:
        me = (await http.get("/api/v5/me")).json()
    assert me == {
        "kind": "org",
        "id": world.org["id"],
        "organization_id": world.org["id"],
        "user": None,
    }
    async with world.client(ADMIN_TOKEN) as http:
        assert (await http.get("/api/v5/me")).json()["kind"] == "admin"
    async with world.client("not-a-token") as http:
        assert (await http.get("/api/v5/me")).status_code == 401
    async with world.server.client() as http:
        assert (await http.get("/api/v5/me")).status_code == 401


@pytest.mark.parametrize("name", PAGES)
def test_pages_load_only_their_own_scripts_and_styles(name: str) -> None:
    """What the CSP allows is what the pages use: no inline script or style, no other
    origin."""
    text = (STATIC / name).read_text()
    assert "<script>" not in text and "style=" not in text and "<style" not in text
    assert "http://" not in text and "https://" not in text
    assert '<script type="module" src="' in text


def test_a_wheel_carries_the_pages_and_the_client_as_files(tmp_path: Path) -> None:
    """The client is one file in the repository (clients/js) and a link in the package;
    a wheel built from the tree holds it as a file, beside the pages."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    for package in ("engine", "gateway", "persistence", "bench"):
        shutil.copytree(
            ROOT / package,
            tree / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "results"),
        )
    (tree / "clients" / "js").mkdir(parents=True)
    shutil.copy2(ROOT / "clients" / "js" / "chat-engine.js", tree / "clients" / "js")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("chat_engine-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        inside = {info.filename: info for info in archive.infolist()}
        client = archive.read("gateway/static/chat-engine.js")
        assert client == (ROOT / "clients" / "js" / "chat-engine.js").read_bytes()
        for path in STATIC.iterdir():
            info = inside[f"gateway/static/{path.name}"]
            assert stat.S_ISREG(info.external_attr >> 16), path.name  # a file, not a link
            assert archive.read(info) == path.read_bytes(), path.name


async def test_hypercorn_serves_the_same_files_and_headers(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ENGINE_ADMIN_TOKEN", ADMIN_TOKEN)
    builtin = await start_server(nursery)
    hypercorn = await start_server(nursery, "--http1-server", "hypercorn")
    kept = ("content-type", "etag", "cache-control", "content-security-policy", "location")
    seen = []
    for server in (builtin, hypercorn):
        answers = []
        async with server.client() as http:
            for path in ("/console/", "/console/operator.js", "/console/console.css", "/"):
                answer = await http.get(path)
                answers.append(
                    (answer.status_code, answer.content, {k: answer.headers.get(k) for k in kept})
                )
            etag = answers[0][2]["etag"]
            again = await http.get("/console/", headers={"If-None-Match": etag})
            answers.append((again.status_code, again.content, {}))
            missing = await http.get("/console/nope.js")
            answers.append((missing.status_code, missing.content, {}))
        seen.append(answers)
    assert seen[0] == seen[1]
    assert [status for status, _, _ in seen[0]] == [200, 200, 200, 302, 304, 404]
