"""The pure state machine (no trio): every counter and flag rule."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import errors
from engine.chat import ChatState
from engine.facts import ChatCreated
from engine.model import AUTOSUGGEST, JOIN, LEAVE, MSG, SENDER_USER, SENDER_VISITOR

VISITOR = "v" * 32
USERS = ["u1", "u2", "u3"]


class Harness:
    """Decide then apply, as the actors do, with a sequence counter."""

    def __init__(self, private_room: bool = False, join_user: str | None = None) -> None:
        self.seq = itertools.count(1)
        self.time = itertools.count(1000, 10)
        fact = ChatCreated(
            "c1",
            "t" * 48,
            "r1",
            "o1",
            VISITOR,
            private_room,
            next(self.time),
            join_user,
            None if join_user is None else "m0",
        )
        self.chat = ChatState.create(fact, seq=next(self.seq))
        self.created = self.chat.apply_created(fact, presence_seq=next(self.seq))

    def commit(self, facts: list) -> list:
        return [self.chat.apply(fact, seq=next(self.seq)) for fact in facts]

    def join(self, user: str, exclusive: bool = False, may_serve: bool = True):
        outcome, facts = self.chat.decide_join(
            user, exclusive=exclusive, may_serve=may_serve, at=next(self.time)
        )
        changes = self.commit(facts)
        return outcome, changes

    def leave(self, user: str):
        return self.commit(self.chat.decide_leave(user, at=next(self.time)))

    def post(
        self,
        sender: str,
        type: str = MSG,
        url: str | None = None,
        title: str | None = None,
        may_serve: bool = True,
    ):
        sender_type = SENDER_VISITOR if sender == VISITOR else SENDER_USER
        facts = self.chat.decide_post(
            sender_type=sender_type,
            sender_id=sender,
            type=type,
            message="hello",
            page_url=url,
            page_title=title,
            may_serve=may_serve,
            at=next(self.time),
        )
        return self.commit(facts)


def test_new_chat_has_visitor_participation_and_nothing_else() -> None:
    chat = Harness().chat
    assert chat.participations() == [(VISITOR, SENDER_VISITOR)]
    assert (chat.message_count, chat.participation_count, chat.currently_present_user_count) == (
        0,
        1,
        0,
    )
    assert (
        not chat.is_waiting_response and not chat.is_real_conversation and not chat.is_autosuggested
    )


def test_created_with_user_present_in_one_step() -> None:
    harness = Harness(join_user="u1")
    assert list(harness.chat.presences) == ["u1"]
    assert [m.type for m in harness.chat.messages] == [JOIN]
    kinds = [d.kind for d in harness.created.deltas]
    assert kinds == [
        "chat_added",
        "participation_added",
        "presence_added",
        "message_added",
        "current_added",
    ]


def test_join_and_leave_events_are_in_history_but_not_counted() -> None:
    harness = Harness()
    outcome, _ = harness.join("u1")
    assert outcome.created
    again, changes = harness.join("u1", exclusive=True)
    assert not again.created and changes == []
    harness.leave("u1")
    chat = harness.chat
    assert [m.type for m in chat.messages] == [JOIN, LEAVE]
    assert chat.message_count == 0 and chat.currently_present_user_count == 0
    assert chat.ever_present == ["u1"] and chat.user_participants == []


def test_leave_when_absent_is_not_found() -> None:
    with pytest.raises(errors.NotFound):
        Harness().leave("u1")


def test_exclusive_join_refused_when_another_user_is_present() -> None:
    harness = Harness()
    harness.join("u1")
    with pytest.raises(errors.ChatAlreadyTaken):
        harness.join("u2", exclusive=True)
    outcome, _ = harness.join("u2")  # not exclusive: fine
    assert outcome.created


def test_join_without_serving_rights_is_denied() -> None:
    with pytest.raises(errors.PermissionDenied):
        Harness().join("u1", may_serve=False)


def test_private_chat_admits_only_participants_and_present_users() -> None:
    harness = Harness(private_room=True)
    assert not harness.chat.is_private
    harness.join("u1")
    assert harness.chat.is_private
    with pytest.raises(errors.PermissionDenied):
        harness.join("u2")
    with pytest.raises(errors.PermissionDenied):
        harness.post("u2")
    harness.post("u1")  # present: may post, becomes participant
    harness.leave("u1")
    outcome, _ = harness.join("u1")  # participant: may rejoin
    assert outcome.created


def test_waiting_response_follows_the_last_real_message() -> None:
    harness = Harness()
    harness.post(VISITOR)
    assert harness.chat.is_waiting_response
    harness.post("u1", AUTOSUGGEST)
    assert harness.chat.is_waiting_response  # autosuggest leaves it unchanged
    harness.post("u1")
    assert not harness.chat.is_waiting_response
    harness.post(VISITOR)
    assert harness.chat.is_waiting_response


def test_real_conversation_needs_a_user_msg_not_an_autosuggest() -> None:
    harness = Harness()
    harness.post("u1", AUTOSUGGEST)
    harness.post(VISITOR)
    assert not harness.chat.is_real_conversation
    harness.post("u1")
    assert harness.chat.is_real_conversation


def test_autosuggested_and_url_fields_come_from_first_messages() -> None:
    harness = Harness()
    harness.join("u1")  # join events do not count as the first message
    harness.post("u1", AUTOSUGGEST, url="http://shop/", title="Shop")
    harness.post(VISITOR, url=None, title=None)
    harness.post(VISITOR, url="http://shop/later", title="Later")
    chat = harness.chat
    assert chat.is_autosuggested
    assert (chat.autosuggest_url, chat.autosuggest_url_title) == ("http://shop/", "Shop")
    # the visitor's first message had no URL: stays null even though a later one has
    assert (chat.first_visitor_message_url, chat.first_visitor_message_url_title) == (None, None)


def test_not_autosuggested_when_first_message_is_a_msg() -> None:
    harness = Harness()
    harness.post(VISITOR, url="http://a/", title="A")
    harness.post("u1", AUTOSUGGEST, url="http://b/", title="B")
    chat = harness.chat
    assert not chat.is_autosuggested and chat.autosuggest_url is None
    assert chat.first_visitor_message_url == "http://a/"


def test_counts_and_participations() -> None:
    harness = Harness()
    harness.join("u2")
    changes = harness.post("u2")
    assert [d.kind for d in changes[0].deltas] == [
        "chat_changed",
        "message_added",
        "participation_added",
    ]
    harness.post("u1", AUTOSUGGEST)
    harness.post("u2")
    harness.post(VISITOR)
    chat = harness.chat
    assert chat.participations() == [
        (VISITOR, SENDER_VISITOR),
        ("u2", SENDER_USER),
        ("u1", SENDER_USER),
    ]
    assert (chat.message_count, chat.user_message_count, chat.visitor_message_count) == (4, 3, 1)
    assert (
        chat.participation_count,
        chat.user_participation_count,
        chat.visitor_participation_count,
    ) == (3, 2, 1)


def test_ending_removes_presences_with_leave_events_and_blocks_posts() -> None:
    harness = Harness()
    harness.join("u1")
    harness.join("u2")
    (changes,) = harness.commit(harness.chat.decide_end(at=next(harness.time)))
    chat = harness.chat
    assert chat.end_time is not None and chat.presences == {}
    assert [m.type for m in chat.messages] == [JOIN, JOIN, LEAVE, LEAVE]
    assert [m.sender_id for m in chat.messages[2:]] == ["u1", "u2"]  # join order
    assert [d.kind for d in changes.deltas] == [
        "chat_ended",
        *("presence_removed", "message_added", "current_removed") * 2,
    ]
    assert harness.chat.decide_end(at=next(harness.time)) == []  # twice: no change
    with pytest.raises(errors.ChatEnded):
        harness.post("u1")
    with pytest.raises(errors.ChatEnded):
        harness.join("u1")


def test_only_msg_and_autosuggest_may_be_posted() -> None:
    with pytest.raises(errors.EngineError) as caught:
        Harness().post("u1", JOIN)
    assert caught.value.errors == {"type": ["Must be 'msg' or 'autosuggest'."]}


def test_decide_never_mutates() -> None:
    harness = Harness()
    before = (len(harness.chat.messages), dict(harness.chat.presences), harness.chat.updated_at)
    harness.chat.decide_join("u1", exclusive=False, may_serve=True, at=99999)
    harness.chat.decide_post(
        sender_type=SENDER_VISITOR,
        sender_id=VISITOR,
        type=MSG,
        message="x",
        page_url=None,
        page_title=None,
        may_serve=False,
        at=99999,
    )
    assert before == (
        len(harness.chat.messages),
        dict(harness.chat.presences),
        harness.chat.updated_at,
    )


def test_change_sets_carry_the_users_before_and_after() -> None:
    harness = Harness()
    harness.join("u1")
    (changes,) = harness.leave("u1")
    assert changes.users_before == {"u1"} and changes.users_after == frozenset()
    assert changes.present_before == ("u1",) and changes.present_after == ()


# -- property: after any command sequence, every counter equals what the lists imply ----
commands = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from(USERS), st.booleans(), st.booleans()),
        st.tuples(st.just("leave"), st.sampled_from(USERS)),
        st.tuples(st.just("end")),
        st.tuples(
            st.just("post"),
            st.sampled_from([*USERS, VISITOR]),
            st.sampled_from([MSG, AUTOSUGGEST]),
            st.sampled_from([None, "http://x/"]),
        ),
    ),
    max_size=40,
)


def check_invariants(chat: ChatState) -> None:
    counted = [m for m in chat.messages if m.type in (MSG, AUTOSUGGEST)]
    assert chat.message_count == len(counted)
    assert chat.user_message_count == sum(m.sender_type == SENDER_USER for m in counted)
    assert chat.visitor_message_count == sum(m.sender_type == SENDER_VISITOR for m in counted)
    assert chat.message_count == chat.user_message_count + chat.visitor_message_count
    present: list[str] = []
    for m in chat.messages:
        if m.type == JOIN:
            present.append(m.sender_id)
        elif m.type == LEAVE:
            present.remove(m.sender_id)
    assert list(chat.presences) == present
    assert chat.currently_present_user_count == len(present)
    first_user_messages = list(
        dict.fromkeys(m.sender_id for m in counted if m.sender_type == SENDER_USER)
    )
    assert chat.user_participants == first_user_messages
    assert chat.participation_count == 1 + len(first_user_messages)
    real = [m for m in counted if m.type == MSG]
    assert chat.is_waiting_response == (bool(real) and real[-1].sender_type == SENDER_VISITOR)
    assert chat.is_real_conversation == (
        any(m.sender_type == SENDER_VISITOR for m in real)
        and any(m.sender_type == SENDER_USER for m in real)
    )
    assert chat.is_autosuggested == (bool(counted) and counted[0].type == AUTOSUGGEST)
    visitor_messages = [m for m in counted if m.sender_type == SENDER_VISITOR]
    assert chat.first_visitor_message_url == (
        visitor_messages[0].page_url if visitor_messages else None
    )
    if chat.end_time is not None:
        assert chat.presences == {}
    assert chat.updated_at == max(
        [chat.start_time, chat.end_time or 0] + [m.created_at for m in chat.messages]
    )


@settings(max_examples=300, deadline=None)
@given(commands, st.booleans())
def test_counters_always_match_the_lists(script: list, private_room: bool) -> None:
    harness = Harness(private_room=private_room)
    for command in script:
        try:
            if command[0] == "join":
                harness.join(command[1], exclusive=command[2], may_serve=command[3])
            elif command[0] == "leave":
                harness.leave(command[1])
            elif command[0] == "end":
                harness.commit(harness.chat.decide_end(at=next(harness.time)))
            else:
                harness.post(command[1], command[2], url=command[3])
        except errors.EngineError:
            pass
        check_invariants(harness.chat)
