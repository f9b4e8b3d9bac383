"""The signed-token rules (engine/tokens.py) and token rotation, on the pure state: which
claims name which principal, which keys an org may register, and that rotation and keys
replay and round-trip through the snapshot codec."""

from __future__ import annotations

from typing import Any

import pytest

from engine import directory, errors, tokens
from engine.facts import JwtKeysSet, OrgCreated, UserCreated
from engine.state import State
from persistence.codec import decode_fact, decode_state, encode_fact, encode_state

NOW = 1_700_000_000_000
SECRET = "s" * 32


def world() -> tuple[State, str, str, str]:
    state = State()
    org = directory.create_org("Org", at=1)
    assert isinstance(org.fact, OrgCreated)
    state.apply(org.fact)
    org_id = org.fact.org_id
    user = directory.create_user(
        state, org_id, first_name="A", last_name="B", alias="a", room_ids=None, at=2
    )
    assert isinstance(user.fact, UserCreated)
    state.apply(user.fact)
    _, visitor = directory.register_visitor(state, org_id, None, at=3)
    state.apply(visitor.fact)
    state.apply(tokens.jwt_keys_fact(org_id, [("k1", "HS256", SECRET)], at=4))
    return state, org_id, user.fact.user_id, visitor.fact.visitor_id  # type: ignore[union-attr]


def refusal(call: Any) -> str:
    with pytest.raises(errors.NotAuthenticated) as refused:
        call()
    return refused.value.detail


def test_claims_name_a_user_or_a_visitor_of_the_keys_org() -> None:
    state, org_id, user_id, visitor_id = world()
    key = tokens.find_key(state, {"alg": "HS256", "kid": "k1"}, {"org": org_id})
    exp = NOW // 1000 + 60
    as_user = tokens.subject_of_claims(
        state, {"sub": user_id, "org": org_id, "role": "user", "exp": exp}, key, now_ms=NOW
    )
    assert (as_user.kind, as_user.id, as_user.org_id) == ("user", user_id, org_id)
    assert as_user.expires_ms == exp * 1000
    as_visitor = tokens.subject_of_claims(
        state, {"sub": visitor_id, "org": org_id, "role": "visitor", "exp": exp}, key, now_ms=NOW
    )
    assert (as_visitor.kind, as_visitor.id, as_visitor.org_id) == ("visitor", visitor_id, None)


def test_each_refusal_says_which_check_failed() -> None:
    state, org_id, user_id, visitor_id = world()
    key = tokens.find_key(state, {"alg": "HS256", "kid": "k1"}, {"org": org_id})
    good = {"sub": user_id, "org": org_id, "role": "user", "exp": NOW // 1000 + 60}

    def check(**changes: Any) -> str:
        claims = {**good, **changes}
        claims = {name: value for name, value in claims.items() if value is not None}
        return refusal(lambda: tokens.subject_of_claims(state, claims, key, now_ms=NOW))

    assert "no 'exp'" in check(exp=None)
    assert "expired" in check(exp=NOW // 1000)  # exp is exclusive
    assert "must be a number" in check(exp="soon")
    assert "must be a number" in check(exp=True)
    # what JSON may carry and no clock can reach
    assert "out of range" in check(exp=float("inf"))
    assert "out of range" in check(exp=10**400)
    assert "out of range" in check(exp=1e300)
    assert "not valid yet" in check(nbf=NOW // 1000 + 10)
    assert "role" in check(role="admin")
    assert "no user" in check(sub=visitor_id)
    assert "no visitor" in check(role="visitor", sub=user_id)
    assert "no 'sub'" in check(sub=None)
    assert "org" in check(org="another")


def test_the_key_is_found_by_org_and_kid_and_pins_the_algorithm() -> None:
    state, org_id, _, _ = world()
    assert "kid" in refusal(lambda: tokens.find_key(state, {"alg": "HS256"}, {"org": org_id}))
    assert "org" in refusal(lambda: tokens.find_key(state, {"alg": "HS256", "kid": "k1"}, {}))
    unknown = refusal(
        lambda: tokens.find_key(state, {"alg": "HS256", "kid": "k2"}, {"org": org_id})
    )
    assert "Unknown key id" in unknown
    # another org's id and an unknown org read the same: nothing is revealed
    assert unknown == refusal(
        lambda: tokens.find_key(state, {"alg": "HS256", "kid": "k1"}, {"org": "x"})
    )
    for alg in ("none", "RS256", "HS512", None):
        detail = refusal(
            lambda a=alg: tokens.find_key(state, {"alg": a, "kid": "k1"}, {"org": org_id})
        )
        assert "algorithm" in detail and SECRET not in detail


def test_key_lists_are_checked_as_a_whole() -> None:
    assert tokens.keys_problem([("a", "HS256", SECRET), ("a", "RS256", "pem")]) == (
        "keys.1.kid",
        "Each 'kid' may appear once.",
    )
    field, _ = tokens.keys_problem([("a", "HS256", "short")]) or ("", "")
    assert field == "keys.0.key"
    assert tokens.keys_problem([(str(n), "HS256", SECRET) for n in range(11)]) is not None
    assert tokens.keys_problem([]) is None
    with pytest.raises(errors.EngineError):
        tokens.jwt_keys_fact("org", [("a", "HS256", "short")], at=1)


def test_rotation_replaces_a_token_and_tells_the_listeners() -> None:
    state, org_id, user_id, _ = world()
    old_org = state.orgs[org_id].token_hash
    old_user = state.users[user_id].token_hash
    revoked: list[str] = []
    state.token_revoked.append(revoked.append)
    rotated_org = directory.rotate_token("org", org_id, at=5)
    rotated_user = directory.rotate_token("user", user_id, at=6)
    state.apply(rotated_org.fact)
    state.apply(rotated_user.fact)
    assert revoked == [old_org, old_user]
    assert state.principal(old_org) is None and state.principal(old_user) is None
    assert state.principal(rotated_org.fact.token_hash) == ("org", org_id)
    assert state.principal(rotated_user.fact.token_hash) == ("user", user_id)
    assert rotated_org.token not in repr(rotated_org.fact)  # facts hold hashes only


def test_replacing_keys_tells_the_listeners_and_an_empty_list_removes_them() -> None:
    state, org_id, _, _ = world()
    changed: list[str] = []
    state.jwt_keys_changed.append(changed.append)
    old = state.jwt_key(org_id, "k1")
    assert old is not None and tokens.key_still_valid(state, old)
    state.apply(tokens.jwt_keys_fact(org_id, [("k1", "HS256", "t" * 32)], at=5))
    assert changed == [org_id]
    assert not tokens.key_still_valid(state, old)  # same kid, another secret
    state.apply(JwtKeysSet(org_id, (), 6))
    assert state.jwt_keys == {}


def test_keys_rotation_and_listings_round_trip_through_log_and_snapshot() -> None:
    state, org_id, user_id, _ = world()
    rotated = directory.rotate_token("user", user_id, at=5)
    state.apply(rotated.fact)
    fact = tokens.jwt_keys_fact(org_id, [("k1", "HS256", SECRET), ("k2", "ES256", "pem")], at=6)
    assert decode_fact(encode_fact(fact)) == fact
    assert decode_fact(encode_fact(rotated.fact)) == rotated.fact
    state.apply(fact)
    restored = decode_state(encode_state(state))
    assert restored.jwt_keys == state.jwt_keys
    assert restored.principal(rotated.fact.token_hash) == ("user", user_id)
    assert [org.id for _, org in restored.all_orgs().after(None)] == [org_id]
    assert [user.id for _, user in restored.users_of_org(org_id).after(None)] == [user_id]
