"""The memory of verified signed tokens (gateway/jwtauth.py): a remembered token is
checked again against the state it is used with, and the memory stays bounded whatever
the tokens' length. And the directory's key changes and rotations check their caller
again in their turn."""

from __future__ import annotations

import sys

import jwt
import pytest
import trio

from engine import directory, errors, tokens
from engine.actors.supervisor import Engine
from engine.facts import OrgCreated, UserCreated
from engine.ids import hash_token
from engine.state import State
from gateway import jwtauth
from gateway.auth import principal_for_token
from persistence.codec import decode_state, encode_state

NOW = 1_700_000_000_000
SECRET = "s" * 32
ADMIN_HASH = hash_token("admin")


def _org_with_key() -> tuple[State, str]:
    state = State()
    org = directory.create_org("Org", at=1)
    assert isinstance(org.fact, OrgCreated)
    state.apply(org.fact)
    state.apply(tokens.jwt_keys_fact(org.fact.org_id, [("k1", "HS256", SECRET)], at=2))
    return state, org.fact.org_id


def _add_user(state: State, org_id: str) -> str:
    user = directory.create_user(
        state, org_id, first_name="A", last_name="B", alias="a", room_ids=None, at=3
    )
    assert isinstance(user.fact, UserCreated)
    state.apply(user.fact)
    return user.fact.user_id


def _token(org_id: str, sub: str, **extra: object) -> str:
    claims = {"sub": sub, "org": org_id, "role": "user", "exp": NOW // 1000 + 600, **extra}
    return jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "k1"})


def test_a_remembered_token_is_refused_once_its_subject_is_gone() -> None:
    """A state can be replaced whole by a restored one (a replica catching up from a
    snapshot keeps the state object): a token verified before must then be checked
    against what the state now holds, not answered from memory. Here the restored
    state has the same key but not the user."""
    state, org_id = _org_with_key()
    before_user = encode_state(state)
    user_id = _add_user(state, org_id)
    token = _token(org_id, user_id)
    assert principal_for_token(state, token, ADMIN_HASH, now_ms=NOW).id == user_id
    assert principal_for_token(state, token, ADMIN_HASH, now_ms=NOW).id == user_id  # remembered
    state.take_over(decode_state(before_user))
    with pytest.raises(errors.NotAuthenticated) as refused:
        principal_for_token(state, token, ADMIN_HASH, now_ms=NOW)
    assert "sub" in refused.value.detail


def test_the_memory_is_bounded_and_does_not_hold_the_tokens() -> None:
    """Tokens may be as long as a request head allows (16 KiB): remembering thousands
    of them must not keep their text, only a fixed-size digest each, and never more
    than ``CACHE_SIZE`` of them."""
    state, org_id = _org_with_key()
    user_id = _add_user(state, org_id)
    padding = "x" * 8192
    extra = 10
    for index in range(jwtauth.CACHE_SIZE + extra):
        token = _token(org_id, user_id, pad=padding, n=index)
        assert jwtauth.verify(state, token, now_ms=NOW).id == user_id
    remembered = jwtauth._verified[state]
    assert len(remembered) == jwtauth.CACHE_SIZE
    held = sum(sys.getsizeof(key) for key in remembered)
    assert held < jwtauth.CACHE_SIZE * 200  # a digest each, not 8 KiB each


async def test_keys_are_not_set_by_a_caller_whose_token_stopped_while_it_waited(
    nursery: trio.Nursery,
) -> None:
    """Keys let whoever registered them sign tokens for anyone of the org: a key change
    whose caller's token a rotation stopped while the change waited for its turn
    changes nothing (the route checks the caller again in that turn, as rotation does)."""
    engine = Engine(clock=lambda: NOW)
    await nursery.start(engine.run)
    org, _ = await engine.directory.create_org("Org")
    given = [("k1", "HS256", SECRET)]
    await engine.directory.set_jwt_keys(org.id, given)

    def stopped() -> object:
        raise errors.NotAuthenticated("Invalid token.")

    with pytest.raises(errors.NotAuthenticated):
        await engine.directory.set_jwt_keys(
            org.id, [("evil", "HS256", "e" * 32)], caller_still_valid=stopped
        )
    assert list(engine.state.jwt_keys[org.id]) == ["k1"]
    with pytest.raises(errors.NotAuthenticated):
        await engine.directory.rotate_token("org", org.id, caller_still_valid=stopped)
    assert engine.state.principal(org.token_hash) == ("org", org.id)
