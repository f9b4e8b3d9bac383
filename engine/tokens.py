"""Signed tokens (JWT) and token rotation: the rules, with no cryptography.

An org registers keys (``kid``, algorithm, key); its application signs short-lived
tokens whose claims name one user or visitor of the org. The gateway checks the
signature with PyJWT, pinned to the key's own algorithm; what the claims mean is
decided here:

- the key is found by the ``org`` claim and the ``kid`` header, and the token's ``alg``
  must be that key's algorithm (``none`` and an HS256 token against an RS256 key are
  refused before any signature is checked);
- ``exp`` is required and compared with the engine's clock; ``nbf``, when present, too;
- ``role`` is ``user`` or ``visitor`` and ``sub`` must be a user of the org, or a
  visitor that belongs to the org. The token then has exactly that principal's rights.

Every refusal is ``NotAuthenticated`` with a detail that says which check failed and
never shows key material.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine import errors
from engine.access import user_of_org
from engine.facts import JwtKeysSet
from engine.model import JwtKey
from engine.state import PRINCIPAL_USER, PRINCIPAL_VISITOR, State

ALGORITHMS = ("HS256", "RS256", "ES256")
SHARED_SECRET = "HS256"
MAX_KEYS = 10
MAX_KID_LENGTH = 128
MIN_SECRET_BYTES = 32  # RFC 7518: an HS256 key is at least as long as the hash (256 bits)
ROLES = (PRINCIPAL_USER, PRINCIPAL_VISITOR)
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z: later is no date


@dataclass(slots=True, frozen=True)
class Subject:
    """Whom a verified token names: a principal kind (user or visitor), its id, its org
    (a user's; None for a visitor, as with its static token), when the token expires
    (engine milliseconds) and the key that verified it."""

    kind: str
    id: str
    org_id: str | None
    expires_ms: int
    key: JwtKey


def looks_like_jwt(token: str) -> bool:
    """A compact JWS has three dot-separated parts; the engine's own tokens have no dot."""
    return token.count(".") == 2


def _refuse(detail: str) -> errors.EngineError:
    return errors.NotAuthenticated(detail)


def find_key(state: State, header: dict[str, Any], unverified_claims: dict[str, Any]) -> JwtKey:
    """The key that must verify the token, from its (not yet verified) ``org`` claim and
    ``kid`` header; the token's ``alg`` must be the key's."""
    org_id = unverified_claims.get("org")
    if not isinstance(org_id, str) or not org_id:
        raise _refuse("The token has no 'org' claim.")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _refuse("The token has no 'kid' header.")
    key = state.jwt_key(org_id, kid)
    if key is None:
        raise _refuse("Unknown key id ('kid') for the token's organization.")
    algorithm = header.get("alg")
    if algorithm != key.algorithm:
        shown = algorithm if isinstance(algorithm, str) and len(algorithm) <= 16 else "?"
        raise _refuse(
            f"The token's algorithm ({shown}) is not its key's ({key.algorithm}); refused."
        )
    return key


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"The token's '{name}' claim must be a number (seconds since the epoch).")
    try:
        seconds = float(value)
    except OverflowError:  # an integer past a float's range
        seconds = math.inf
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        raise _refuse(f"The token's '{name}' claim is out of range.")
    return seconds


def subject_of_claims(state: State, claims: dict[str, Any], key: JwtKey, *, now_ms: int) -> Subject:
    """The principal a token whose signature ``key`` verified names, or a refusal."""
    expires = _numeric_date(claims, "exp")
    if expires is None:
        raise _refuse("The token has no 'exp' claim; signed tokens must expire.")
    if now_ms >= expires * 1000:
        raise _refuse("The token has expired.")
    not_before = _numeric_date(claims, "nbf")
    if not_before is not None and now_ms < not_before * 1000:
        raise _refuse("The token is not valid yet ('nbf').")
    if claims.get("org") != key.org_id:
        raise _refuse("The token's 'org' claim does not name the key's organization.")
    role = claims.get("role")
    if role not in ROLES:
        raise _refuse("The token's 'role' claim must be 'user' or 'visitor'.")
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise _refuse("The token has no 'sub' claim.")
    expires_ms = int(expires * 1000)
    if role == PRINCIPAL_USER:
        user = state.users.get(sub)
        if user is None or not user_of_org(user, key.org_id):
            raise _refuse("The token's 'sub' is no user of its organization.")
        return Subject(PRINCIPAL_USER, user.id, user.organization_id, expires_ms, key)
    visitor = state.visitors.get(sub)
    if visitor is None or visitor.organization_id != key.org_id:
        raise _refuse("The token's 'sub' is no visitor of its organization.")
    return Subject(PRINCIPAL_VISITOR, visitor.id, None, expires_ms, key)


def keys_problem(keys: list[tuple[str, str, str]]) -> tuple[str, str] | None:
    """What is wrong with a key list as a whole, as (field, message), or None. Each key's
    own shape (kid length, algorithm) is the request model's; whether a key parses is
    the gateway's (it needs cryptography)."""
    if len(keys) > MAX_KEYS:
        return "keys", f"At most {MAX_KEYS} keys."
    seen: set[str] = set()
    for index, (kid, algorithm, key) in enumerate(keys):
        if kid in seen:
            return f"keys.{index}.kid", "Each 'kid' may appear once."
        seen.add(kid)
        if algorithm == SHARED_SECRET and len(key.encode("utf-8")) < MIN_SECRET_BYTES:
            return (
                f"keys.{index}.key",
                f"An HS256 secret must be at least {MIN_SECRET_BYTES} bytes.",
            )
    return None


def jwt_keys_fact(org_id: str, keys: list[tuple[str, str, str]], *, at: int) -> JwtKeysSet:
    problem = keys_problem(keys)
    if problem is not None:
        raise errors.invalid_field(*problem)
    return JwtKeysSet(org_id, tuple(keys), at)


def key_still_valid(state: State, key: JwtKey) -> bool:
    """A session opened with a token this key verified stays open while the org still
    has this very key (same kid, algorithm and key)."""
    return state.jwt_key(key.org_id, key.kid) == key
