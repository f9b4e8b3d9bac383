"""auto_resume's choice as a pure rule (no trio): which chat a resume returns, for an
operator (``auto_resume=<user>``) and for the visitor's own resume."""

from __future__ import annotations

import itertools

import pytest

from engine import errors
from engine.chat import ChatState
from engine.facts import ChatCreated
from engine.model import Room, User
from engine.resume import choose_chat, is_recent, require_resumer

VISITOR = "v" * 32
ORG = "o1"
WINDOW = 30 * 60 * 1000
NOW = 10_000_000
ROOM = Room("r1", "Sales", ORG, False, 0, 1)
ALAN = User("u1", ORG, "Alan", "T", "alan", None, 0, 2, "h1")
ADA = User("u2", ORG, "Ada", "L", "ada", None, 0, 3, "h2")
_seq = itertools.count(10)


def chat(*, updated_at: int = NOW, private: bool = False, room: Room = ROOM) -> ChatState:
    """A chat of VISITOR in ``room`` created ``updated_at`` (seq gives creation order)."""
    fact = ChatCreated(
        f"c{next(_seq)}", "t" * 48, room.id, ORG, VISITOR, False, updated_at, None, None
    )
    created = ChatState.create(fact, seq=next(_seq))
    created.apply_created(fact, presence_seq=0)
    if private:
        created.apply(created.decide_privacy(True, at=updated_at)[0], seq=next(_seq))
    return created


def join(target: ChatState, user: User) -> None:
    _, facts = target.decide_join(user.id, exclusive=False, may_serve=True, at=target.updated_at)
    target.apply(facts[0], seq=next(_seq))


def end(target: ChatState) -> None:
    target.apply(target.decide_end(at=target.updated_at)[0], seq=next(_seq))


def choose(candidates: list[ChatState], user: User | None, now: int = NOW) -> ChatState | None:
    return choose_chat(candidates, user=user, room=ROOM, now=now, window_ms=WINDOW)


@pytest.mark.parametrize("user", [ALAN, None], ids=["operator", "visitor"])
def test_the_newest_of_two_resumable_chats_wins(user: User | None) -> None:
    older, newer = chat(updated_at=NOW - 5), chat(updated_at=NOW - 10)
    # newest means created last, whatever the order given and however recently updated
    assert choose([older, newer], user) is newer
    assert choose([newer, older], user) is newer


@pytest.mark.parametrize("user", [ALAN, None], ids=["operator", "visitor"])
def test_the_window_includes_its_edge(user: User | None) -> None:
    edge = chat(updated_at=NOW - WINDOW)
    assert choose([edge], user) is edge
    assert choose([edge], user, now=NOW + 1) is None


@pytest.mark.parametrize("user", [ALAN, None], ids=["operator", "visitor"])
def test_a_stale_newer_chat_yields_to_a_recent_older_one(user: User | None) -> None:
    recent = chat(updated_at=NOW - 1000)
    stale = chat(updated_at=NOW - WINDOW - 1)
    assert choose([stale, recent], user) is recent


@pytest.mark.parametrize("user", [ALAN, None], ids=["operator", "visitor"])
def test_an_ended_chat_is_never_resumed(user: User | None) -> None:
    older, ended = chat(), chat()
    end(ended)
    assert not is_recent(ended, now=NOW, window_ms=WINDOW)
    assert choose([older, ended], user) is older
    end(older)
    assert choose([older, ended], user) is None


def test_no_candidates_means_create() -> None:
    assert choose([], ALAN) is None
    assert choose([], None) is None


def test_a_private_chat_the_user_may_not_join_is_skipped_for_an_older_one() -> None:
    older, private = chat(), chat(private=True)
    assert choose([older, private], ALAN) is older
    # the visitor's own resume joins nobody: privacy does not matter to it
    assert choose([older, private], None) is private


def test_a_private_chat_the_user_is_present_in_is_resumed() -> None:
    older, private = chat(), chat()
    join(private, ALAN)
    private.apply(private.decide_privacy(True, at=NOW)[0], seq=next(_seq))
    assert choose([older, private], ALAN) is private
    assert choose([older, private], ADA) is older


def test_a_user_who_may_not_serve_the_room_resumes_nothing() -> None:
    other_rooms_only = User("u3", ORG, "Bo", "B", "bo", ["elsewhere"], 0, 4, "h3")
    assert choose([chat()], other_rooms_only) is None
    foreign = User("u4", "o2", "Cy", "C", "cy", None, 0, 5, "h4")
    assert choose([chat()], foreign) is None


def test_a_user_already_present_is_chosen_again() -> None:
    present = chat()
    join(present, ALAN)
    assert choose([present], ALAN) is present


def test_a_resumer_who_may_not_serve_the_room_is_refused_before_anything() -> None:
    require_resumer(ALAN, ROOM)  # may serve: no error
    limited = User("u5", ORG, "Di", "D", "di", ["elsewhere"], 0, 6, "h5")
    with pytest.raises(errors.PermissionDenied):
        require_resumer(limited, ROOM)
