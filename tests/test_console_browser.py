"""The operator console and the visitor page in headless Chromium, against a real
server process: a conversation between an operator page and a visitor page; an
exclusive take in one operator's page shown as taken in another's; a kill -9 and
restart of the server (same data dir, same port) in the middle of a conversation, after
which both pages carry on with every message once; a room of 1,000 open chats.

Debian's chromium is driven by Playwright (``executable_path``; Playwright's own browser
download is never used). Without chromium these tests skip, saying so, unless
``CHAT_ENGINE_REQUIRE_BROWSER=1`` (CI sets it), which makes a missing browser a failure.
The tests are plain functions: Playwright's sync API runs its own loop, apart from
pytest-trio's.

The first test takes the screenshot the README shows; it replaces docs/console.png only
when ``CHAT_ENGINE_UPDATE_SCREENSHOT=1`` (ids and times differ at every run, so a plain
test run leaves the tree unchanged), and otherwise writes it to a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serverproc import HEADERS, Outcome, launch

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "console.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRE = os.environ.get("CHAT_ENGINE_REQUIRE_BROWSER", "") not in ("", "0")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 20_000  # the most any one expectation waits (CI machines are slow)
RESTART_WAIT_MS = 45_000  # reconnecting after a restart: the client's back-off included


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


MISSING = _missing()
if MISSING is not None:
    if REQUIRE:
        raise RuntimeError(f"CHAT_ENGINE_REQUIRE_BROWSER is set but {MISSING}")
    pytest.skip(f"browser tests skipped: {MISSING}", allow_module_level=True)

from playwright.sync_api import (  # noqa: E402
    Browser,
    BrowserContext,
    Page,
    expect,
    sync_playwright,
)

expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Site:
    """A running server with an org, a room and two operators made over HTTP."""

    server: Outcome
    data_dir: Path
    org: dict[str, Any]
    room: dict[str, Any]
    users: list[dict[str, Any]]
    contexts: list[BrowserContext]

    def page(self, browser: Browser, width: int) -> Page:
        context = browser.new_context(viewport={"width": width, "height": 800})
        self.contexts.append(context)
        return context.new_page()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def http(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Token {token}"}, timeout=30
        )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    data_dir = tmp_path / "data"
    server = launch(data_dir)
    assert server.ready, server.stderr
    made = Site(server, data_dir, {}, {}, [], [])
    try:
        with httpx.Client(base_url=server.base_url, headers=HEADERS, timeout=30) as admin:
            made.org = admin.post("/api/v5/orgs", json={"name": "Acme"}).json()
        with made.http(made.org["token"]) as org:
            path = f"/api/v5/orgs/{made.org['id']}"
            made.room = org.post(f"{path}/rooms", json={"name": "Sales"}).json()
            for first, last in (("Ada", "Lovelace"), ("Alan", "Turing")):
                body = {"first_name": first, "last_name": last, "alias": first}
                made.users.append(org.post(f"{path}/users", json=body).json())
        yield made
    finally:
        for context in made.contexts:  # first: a page would reconnect to a stopping server
            context.close()
        made.server.stop()


def operator_page(browser: Browser, site: Site, user: dict[str, Any]) -> Page:
    page = site.page(browser, 1280)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{site.base_url}/console/")
    page.get_by_label("Operator token").fill(user["token"])
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_text(f"Signed in as {user['full_name']}")).to_be_visible()
    expect(page.locator("#connection")).to_have_text("Live")
    return page


def visitor_page(browser: Browser, site: Site) -> Page:
    """A visitor that registers and starts a chat in the site's room."""
    page = site.page(browser, 900)
    page.goto(f"{site.base_url}/console/visitor.html?room={site.room['id']}")
    page.get_by_role("button", name="Register", exact=True).click()
    expect(page.get_by_label("Room id")).to_have_value(site.room["id"])
    page.get_by_role("button", name="Start chat", exact=True).click()
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.get_by_text("Waiting for an operator…")).to_be_visible()
    return page


def chat_id_of(visitor: Page) -> str:
    found = visitor.evaluate("sessionStorage.getItem('chat-engine.visitor.chat')")
    assert isinstance(found, str) and len(found) == 36
    return found


def send(page: Page, label: str, text: str) -> None:
    box = page.get_by_label(label)
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")  # cleared once the server took it


def expect_messages(page: Page, texts: list[str], timeout: int = WAIT_MS) -> None:
    """The log holds exactly these messages, in this order: none missing, none twice."""
    expect(page.locator("#messages .message .text")).to_have_text(texts, timeout=timeout)


def waiting_chat(site: Site, text: str) -> str:
    """A chat of a new visitor in the site's room, with one message from the visitor."""
    with site.http(site.org["token"]) as org:
        visitor = org.post(f"/api/v5/orgs/{site.org['id']}/visitors", json={}).json()
    path = f"/api/v5/client/visitors/{visitor['id']}"
    with site.http(visitor["token"]) as http:
        chat = http.post(f"{path}/rooms/{site.room['id']}/chats", json={}).json()
        answer = http.post(f"{path}/chats/{chat['id']}/messages", json={"message": text})
        assert answer.status_code == 201, answer.text
    return str(chat["id"])


def history_reads(*pages: Page) -> dict[Page, list[str]]:
    """From now on, each page's HTTP reads of a chat's history."""
    reads: dict[Page, list[str]] = {page: [] for page in pages}
    for page in pages:
        page.on(
            "request",
            lambda request, page=page: (
                reads[page].append(request.url)
                if request.method == "GET" and request.url.split("?")[0].endswith("/messages")
                else None
            ),
        )
    return reads


def open_chat(page: Page, chat_id: str) -> None:
    page.locator(f'#room-chats li[data-chat-id="{chat_id}"] button').click()
    expect(page.locator("#chat-heading")).to_have_text(f"Chat {chat_id[:8]}")


def test_operators_and_a_visitor_hold_a_conversation_and_a_take_shows_in_both_consoles(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    ada, alan = site.users
    visitor = visitor_page(browser, site)
    chat_id = chat_id_of(visitor)
    send(visitor, "Your message", "Hello, is anyone there?")
    expect_messages(visitor, ["Hello, is anyone there?"])

    first = operator_page(browser, site, ada)
    second = operator_page(browser, site, alan)
    for page in (first, second):
        row = page.locator(f'#room-chats li[data-chat-id="{chat_id}"]')
        expect(row).to_contain_text("Waiting")
        expect(row).to_contain_text("Free")
        expect(page.locator(f'#rooms [data-room-id="{site.room["id"]}"]')).to_contain_text(
            "1 waiting · 1 open"
        )
        expect(page).to_have_title("(1) Operator console · chat engine")

    open_chat(first, chat_id)
    expect_messages(first, ["Hello, is anyone there?"])
    first.get_by_role("button", name="Take", exact=True).click()
    expect(first.locator("#presences")).to_have_text("Ada Lovelace (you)")
    expect(first.get_by_role("button", name="Leave", exact=True)).to_be_enabled()
    expect(first.locator(f'#current-chats li[data-chat-id="{chat_id}"]')).to_be_visible()

    # the other operator's console shows the chat taken, live, without a reload
    taken = second.locator(f'#room-chats li[data-chat-id="{chat_id}"]')
    expect(taken).to_have_attribute("data-taken", "true")
    expect(taken).to_contain_text("Taken (1 present)")
    open_chat(second, chat_id)
    expect(second.locator("#presences")).to_have_text("Ada Lovelace")
    expect(second.locator("#chat-status")).to_contain_text("taken (1 present)")
    second.get_by_role("button", name="Take", exact=True).click()
    expect(second.locator("#notice")).to_contain_text("Another operator has this chat")
    expect(second.locator("#presences")).to_have_text("Ada Lovelace")
    expect(second.locator("#current-empty")).to_be_visible()

    expect(visitor.locator("#operators")).to_have_text("With you: Ada")
    send(first, "Your answer", "Hi! Ada here. How can I help?")
    expect_messages(visitor, ["Hello, is anyone there?", "Hi! Ada here. How can I help?"])
    send(visitor, "Your message", "My order has not arrived.")
    send(first, "Your answer", "Let me look it up.")
    conversation = [
        "Hello, is anyone there?",
        "Hi! Ada here. How can I help?",
        "My order has not arrived.",
        "Let me look it up.",
    ]
    for page in (visitor, first, second):
        expect_messages(page, conversation)
    expect(first.locator("#messages .event")).to_have_text(re.compile("Ada Lovelace joined"))
    expect(first.locator("#participants")).to_contain_text("Ada Lovelace")
    # answered: no longer waiting, in every console
    expect(second.locator(f'#room-chats li[data-chat-id="{chat_id}"]')).to_have_count(0)
    second.get_by_label("All open chats").check()
    expect(second.locator(f'#room-chats li[data-chat-id="{chat_id}"]')).to_have_attribute(
        "data-waiting", "false"
    )
    # new chats from other visitors appear in the room's list, live
    others = [waiting_chat(site, f"Question {number}") for number in (1, 2, 3)]
    for chat in others:
        expect(first.locator(f'#room-chats li[data-chat-id="{chat}"]')).to_contain_text("Waiting")
    expect(first.locator(f'#rooms [data-room-id="{site.room["id"]}"]')).to_contain_text(
        "3 waiting · 4 open"
    )
    if os.environ.get("CHAT_ENGINE_UPDATE_SCREENSHOT") == "1":
        first.screenshot(path=str(SCREENSHOT))
    else:
        assert first.screenshot(path=str(tmp_path / "console.png"))

    # leave, then end: the visitor sees the chat end, the consoles drop it
    first.get_by_role("button", name="Leave", exact=True).click()
    expect(first.locator("#current-empty")).to_be_visible()
    expect(visitor.locator("#operators")).to_have_text("Waiting for an operator…")
    first.get_by_role("button", name="End chat", exact=True).click()
    expect(first.locator("#chat-status")).to_have_attribute("data-ended", "true")
    expect(visitor.locator("#chat-status")).to_have_attribute("data-ended", "true")
    expect(visitor.get_by_label("Your message")).to_be_disabled()
    expect(second.locator(f'#room-chats li[data-chat-id="{chat_id}"]')).to_have_count(0)


def test_both_pages_carry_on_after_the_server_is_killed_and_restarted(
    browser: Browser, site: Site
) -> None:
    ada = site.users[0]
    visitor = visitor_page(browser, site)
    chat_id = chat_id_of(visitor)
    send(visitor, "Your message", "before 1")
    operator = operator_page(browser, site, ada)
    open_chat(operator, chat_id)
    operator.get_by_role("button", name="Take", exact=True).click()
    expect(operator.locator("#presences")).to_have_text("Ada Lovelace (you)")
    send(operator, "Your answer", "before 2")
    before = ["before 1", "before 2"]
    expect_messages(visitor, before)
    expect_messages(operator, before)

    site.server.kill()  # SIGKILL: no close frames, no final snapshot
    for page in (visitor, operator):
        expect(page.locator("#connection")).to_have_attribute(
            "data-state", re.compile("reconnecting|connecting")
        )
    # the pages stay away (offline) while the restarted server takes two messages, so
    # that these can reach them only by the resumed channels' replay
    for context in site.contexts:
        context.set_offline(True)
    site.server = launch(site.data_dir, port=site.server.port)
    assert site.server.ready, site.server.stderr
    token = visitor.evaluate("sessionStorage.getItem('chat-engine.visitor.token')")
    visitor_id = visitor.evaluate("sessionStorage.getItem('chat-engine.visitor.id')")
    away = f"/api/v5/client/visitors/{visitor_id}/chats/{chat_id}/messages"
    with site.http(token) as http:
        answer = http.post(away, json={"message": "while away 1"})
        assert answer.status_code == 201, answer.text
    with site.http(ada["token"]) as http:
        answer = http.post(
            f"/api/v5/orgs/{site.org['id']}/chats/{chat_id}/messages",
            json={"sender_id": ada["id"], "message": "while away 2"},
        )
        assert answer.status_code == 201, answer.text
    for page in (visitor, operator):
        assert page.locator("#connection").get_attribute("data-state") != "open"
        expect_messages(page, before)
        expect(page.get_by_role("button", name="Reconnect now", exact=True)).to_be_visible()
    reads = history_reads(visitor, operator)
    for context in site.contexts:
        context.set_offline(False)
    for page in (visitor, operator):
        expect(page.locator("#connection")).to_have_text("Live", timeout=RESTART_WAIT_MS)
    send(visitor, "Your message", "after 1")
    send(operator, "Your answer", "after 2")
    send(visitor, "Your message", "after 3")
    everything = [*before, "while away 1", "while away 2", "after 1", "after 2", "after 3"]
    expect_messages(visitor, everything)
    expect_messages(operator, everything)
    assert reads == {visitor: [], operator: []}  # replayed by the channels, not read again
    # the presence and the operator's current chats came through the restart as well
    expect(operator.locator("#presences")).to_have_text("Ada Lovelace (you)")
    expect(operator.locator(f'#current-chats li[data-chat-id="{chat_id}"]')).to_be_visible()
    expect(visitor.locator("#operators")).to_have_text("With you: Ada")


def test_a_room_of_a_thousand_open_chats_is_shown_a_page_at_a_time_and_stays_live(
    browser: Browser, site: Site
) -> None:
    org_id, room_id = site.org["id"], site.room["id"]
    with site.http(site.org["token"]) as org:
        visitors = [org.post(f"/api/v5/orgs/{org_id}/visitors", json={}).json() for _ in range(8)]

    def start_chats(visitor: dict[str, Any]) -> None:  # 125 chats of one visitor
        path = f"/api/v5/orgs/{org_id}/rooms/{room_id}/visitors/{visitor['id']}/chats"
        with site.http(site.org["token"]) as org:
            for _ in range(125):
                answer = org.post(path)
                assert answer.status_code == 201, answer.text

    with ThreadPoolExecutor(len(visitors)) as pool:  # eight visitors' chats at once
        list(pool.map(start_chats, visitors))
    with site.http(site.org["token"]) as org:  # the room's order: oldest first
        chats: list[str] = []
        owners: dict[str, str] = {}
        link: str | None = f"/api/v5/orgs/{org_id}/rooms/{room_id}/chats?page_size=100"
        while link:
            listed = org.get(link).json()
            for chat in listed["results"]:
                chats.append(chat["id"])
                owners[chat["id"]] = chat["visitor_id"]
            link = listed["next"]
    assert len(chats) == 1000
    visitor = next(v for v in visitors if v["id"] == owners[chats[-1]])
    operator = operator_page(browser, site, site.users[0])
    expect(operator.locator("#room-summary")).to_have_text("0 waiting of 1000 open")
    expect(operator.locator("#room-chats li")).to_have_count(0)
    operator.get_by_label("All open chats").check()
    rows = operator.locator("#room-chats li")
    expect(rows).to_have_count(50)  # a page is drawn, not the thousand
    expect(operator.locator("#page-label")).to_have_text("1–50 of 1000")
    expect(rows.first).to_have_attribute("data-chat-id", chats[0])
    operator.get_by_role("button", name="Next", exact=True).click()
    expect(operator.locator("#page-label")).to_have_text("51–100 of 1000")
    expect(rows.first).to_have_attribute("data-chat-id", chats[50])
    expect(operator.get_by_role("button", name="Previous", exact=True)).to_be_enabled()

    # a visitor writes in the last chat: it turns waiting in the open console
    with site.http(visitor["token"]) as http:
        answer = http.post(
            f"/api/v5/client/visitors/{visitor['id']}/chats/{chats[-1]}/messages",
            json={"message": "anyone?"},
        )
        assert answer.status_code == 201, answer.text
    expect(operator.locator("#room-summary")).to_have_text("1 waiting of 1000 open")
    operator.get_by_label("Waiting for an answer").check()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-chat-id", chats[-1])
    expect(operator.locator("#room-pager")).to_be_hidden()
    expect(operator.locator(f'#rooms [data-room-id="{room_id}"]')).to_contain_text(
        "1 waiting · 1000 open"
    )


def test_a_visitor_page_whose_token_stops_working_says_so_and_asks_for_a_new_one(
    browser: Browser, site: Site
) -> None:
    visitor = visitor_page(browser, site)
    send(visitor, "Your message", "hello")
    visitor_id = visitor.evaluate("sessionStorage.getItem('chat-engine.visitor.id')")
    with site.http(site.org["token"]) as org:  # the org re-keys its visitor
        answer = org.post(f"/api/v5/orgs/{site.org['id']}/visitors", json={"id": visitor_id})
        assert answer.status_code == 200, answer.text
        fresh = answer.json()["token"]
    expect(visitor.locator("#notice")).to_contain_text("This visitor token stopped working")
    expect(visitor.get_by_label("Visitor token")).to_be_visible()
    assert visitor.evaluate("sessionStorage.getItem('chat-engine.visitor.token')") is None
    visitor.get_by_label("Visitor token").fill(fresh)
    visitor.get_by_role("button", name="Use this token", exact=True).click()
    expect(visitor.locator("#connection")).to_have_text("Live")
    visitor.get_by_role("button", name="Start chat", exact=True).click()
    expect_messages(visitor, ["hello"])  # the same chat, resumed


LIVE_SCENARIO = """
async () => {
  const { LiveCollection } = await import("./live.js");
  const handlers = {};
  const client = {
    subscribe(channel, given) {
      Object.assign(handlers, given);
      return { ready: Promise.resolve({ seq: 7 }), unsubscribe() {} };
    },
  };
  const reads = [];
  const changes = [];
  const live = new LiveCollection({
    client,
    channel: "/c",
    load: () => new Promise((resolve) => reads.push(resolve)),
    onChange: (events) => changes.push(events === null ? "read" : events.length),
  });
  const started = live.start();
  while (reads.length < 1) await new Promise((r) => setTimeout(r, 1));
  const ev = (seq, action, id, resource) =>
    handlers.onEvent({ channel: "/c", seq, action, resource_id: id, resource });
  // arrive while the read is under way; the read already reflects the first three
  ev(8, "changed", "a", { id: "a", n: 3 });
  ev(9, "changed", "a", { id: "a", n: 4 });
  ev(10, "removed", "gone");
  ev(11, "added", "c", { id: "c", n: 1 });
  reads[0]([{ id: "a", n: 4, name: "A" }, { id: "b", n: 0, name: "B" }]);
  await started;
  const first = [...live.items.values()];
  ev(12, "changed", "b", { id: "b", n: 5 });
  // a reset: read again; what comes meanwhile is applied over the new read
  handlers.onReset({ channel: "/c" });
  ev(20, "changed", "b", { id: "b", n: 9 });
  while (reads.length < 2) await new Promise((r) => setTimeout(r, 1));
  reads[1]([{ id: "b", n: 6, name: "B" }]);
  while (changes.length < 3) await new Promise((r) => setTimeout(r, 1));
  return { first, second: [...live.items.values()], changes };
}
"""


def test_a_live_collection_applies_what_came_during_its_read_over_the_read(
    browser: Browser, site: Site
) -> None:
    """The subscribe-then-read merge, with a client whose events the test sends: events
    older than the read change nothing in the end, newer ones apply, a reset reads again."""
    page = site.page(browser, 800)
    page.goto(f"{site.base_url}/console/visitor.html")
    outcome = page.evaluate(LIVE_SCENARIO)
    assert outcome["first"] == [
        {"id": "a", "n": 4, "name": "A"},
        {"id": "b", "n": 0, "name": "B"},
        {"id": "c", "n": 1},
    ]
    assert outcome["second"] == [{"id": "b", "n": 9, "name": "B"}]
    assert outcome["changes"] == ["read", 1, "read"]


def test_the_token_stays_in_its_tab_and_wrong_tokens_are_refused_with_a_reason(
    browser: Browser, site: Site
) -> None:
    ada = site.users[0]
    page = site.page(browser, 1280)
    page.goto(f"{site.base_url}/console/")
    expect(page.get_by_label("Operator token")).to_be_focused()
    page.get_by_label("Operator token").fill("not-a-token")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#notice")).to_contain_text("This token is not valid")
    with site.http(site.org["token"]) as org:
        visitor = org.post(f"/api/v5/orgs/{site.org['id']}/visitors", json={}).json()
    for token, reason in (
        (visitor["token"], "That is a visitor's token"),
        (site.org["token"], "sign in with a user's own token"),
    ):
        page.get_by_label("Operator token").fill(token)
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.locator("#notice")).to_contain_text(reason)
        expect(page.get_by_label("Operator token")).to_be_visible()

    page.get_by_label("Operator token").fill(ada["token"])
    page.get_by_label("Operator token").press("Enter")
    expect(page.locator("#connection")).to_have_text("Live")
    assert page.evaluate("localStorage.length") == 0  # the tab's storage only
    page.reload()  # the same tab keeps it
    expect(page.get_by_text("Signed in as Ada Lovelace")).to_be_visible()
    other_tab = page.context.new_page()  # another tab does not
    other_tab.goto(f"{site.base_url}/console/")
    expect(other_tab.get_by_label("Operator token")).to_be_visible()
    other_tab.close()
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_label("Operator token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("#connection")).to_have_text("Not connected")


def test_pages_that_missed_more_than_the_server_keeps_read_the_chat_again(
    browser: Browser, site: Site
) -> None:
    """Pages away (a restart, then offline) while more happened than a channel's history
    keeps: the server answers their resume with resumed: false, and they read the
    collections again over HTTP, ending with every message once."""
    site.server.stop()
    site.server = launch(site.data_dir, "--history-limit", "5", port=site.server.port)
    assert site.server.ready, site.server.stderr
    ada = site.users[0]
    visitor = visitor_page(browser, site)
    chat_id = chat_id_of(visitor)
    send(visitor, "Your message", "first")
    operator = operator_page(browser, site, ada)
    open_chat(operator, chat_id)
    expect_messages(operator, ["first"])
    # offline emulation stops new connections only: a restart ends the open ones
    for context in site.contexts:
        context.set_offline(True)
    site.server.kill()
    for page in (visitor, operator):
        expect(page.locator("#connection")).to_have_attribute(
            "data-state", re.compile("reconnecting|connecting")
        )
    site.server = launch(site.data_dir, "--history-limit", "5", port=site.server.port)
    assert site.server.ready, site.server.stderr
    token = visitor.evaluate("sessionStorage.getItem('chat-engine.visitor.token')")
    visitor_id = visitor.evaluate("sessionStorage.getItem('chat-engine.visitor.id')")
    missed = [f"missed {number}" for number in range(1, 9)]  # more than the 5 kept
    with site.http(token) as http:
        for text in missed:
            answer = http.post(
                f"/api/v5/client/visitors/{visitor_id}/chats/{chat_id}/messages",
                json={"message": text},
            )
            assert answer.status_code == 201, answer.text
    reads = history_reads(visitor, operator)
    for context in site.contexts:
        context.set_offline(False)
    for page in (visitor, operator):
        expect(page.locator("#connection")).to_have_text("Live", timeout=RESTART_WAIT_MS)
        expect_messages(page, ["first", *missed])
    assert reads[visitor] and reads[operator]  # read again, not replayed
    send(operator, "Your answer", "and after")
    for page in (visitor, operator):
        expect_messages(page, ["first", *missed, "and after"])
