"""Signed tokens (JWT) at the edge: PyJWT checks the signature, ``engine.tokens`` says
what the claims mean.

The key is chosen by the token's ``org`` claim and ``kid`` header, and PyJWT is called
with ``algorithms=[key.algorithm]``: a token can only be verified with the algorithm
its key was registered with, so ``alg: none`` and an HS256 token "signed" with an RSA
public key are refused (``engine.tokens.find_key`` already refuses them by their
header). Time claims are checked by the engine against its own clock, not PyJWT's.

Keys are checked when they are registered: an HS256 secret is a string of at least 32
bytes that is not a PEM key, an RS256 key a PEM RSA public key of at least 2048 bits,
an ES256 key a PEM P-256 public key. A private key is refused (it would be shown back
as the "public" key).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import Any
from weakref import WeakKeyDictionary

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import HMACAlgorithm

from engine import errors
from engine.state import State
from engine.tokens import Subject, find_key, key_still_valid, subject_of_claims

MIN_RSA_BITS = 2048
# What PyJWT would check itself is checked by the engine (time claims, with its clock)
# or by engine.tokens (sub); aud, iss and jti are not used.
_DECODE_OPTIONS: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}
_UNVERIFIED: Any = {"verify_signature": False}


CACHE_SIZE = 4096  # verified tokens remembered per state (a few hundred bytes each)
_verified: WeakKeyDictionary[State, OrderedDict[str, Subject]] = WeakKeyDictionary()


def verify(state: State, token: str, *, now_ms: int) -> Subject:
    """The principal a signed token names, or ``NotAuthenticated`` saying why not.

    A token verified once is remembered (the exact string; the most recently used
    kept): a client sends the same token with every request until it expires, and each
    would otherwise parse it three times and check its signature again. A remembered
    token is still refused once its ``exp`` has passed or its key was removed or
    replaced."""
    cache = _verified.get(state)
    if cache is None:
        cache = _verified[state] = OrderedDict()
    subject = cache.get(token)
    if subject is not None:
        if now_ms < subject.expires_ms and key_still_valid(state, subject.key):
            cache.move_to_end(token)
            return subject
        del cache[token]
    subject = _verify(state, token, now_ms=now_ms)
    cache[token] = subject
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return subject


def _verify(state: State, token: str, *, now_ms: int) -> Subject:
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options=_UNVERIFIED)
    except jwt.PyJWTError:
        raise errors.NotAuthenticated("The token is not a well-formed JWT.") from None
    key = find_key(state, header, unverified)
    try:
        claims = jwt.decode(
            token,
            _verifier(key.algorithm, key.key),
            algorithms=[key.algorithm],
            options=_DECODE_OPTIONS,
        )
    except jwt.InvalidSignatureError:
        raise errors.NotAuthenticated("The token's signature does not verify.") from None
    except jwt.PyJWTError:
        raise errors.NotAuthenticated("The token is not valid.") from None
    return subject_of_claims(state, claims, key, now_ms=now_ms)


@lru_cache(maxsize=1024)
def _verifier(algorithm: str, key: str) -> Any:
    """The key as PyJWT verifies with it, parsed once per key rather than per token."""
    if algorithm == "HS256":
        return key.encode("utf-8")
    return load_pem_public_key(key.encode("utf-8"))


def key_problem(algorithm: str, key: str) -> str | None:
    """Why ``key`` cannot verify ``algorithm`` tokens, or None."""
    if algorithm == "HS256":
        try:
            HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(key)
        except jwt.InvalidKeyError:
            return "An HS256 secret must not be a PEM or SSH key."
        return None
    try:
        public = load_pem_public_key(key.encode("utf-8"))
    except (ValueError, TypeError):
        return "Must be a PEM public key (-----BEGIN PUBLIC KEY-----); private keys are refused."
    except Exception:  # noqa: BLE001 - cryptography's unsupported-algorithm errors
        return "Must be a PEM public key of a supported type."
    if algorithm == "RS256":
        if not isinstance(public, rsa.RSAPublicKey):
            return "An RS256 key must be an RSA public key."
        if public.key_size < MIN_RSA_BITS:
            return f"An RS256 key must have at least {MIN_RSA_BITS} bits."
        return None
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        return "An ES256 key must be an EC public key on the P-256 curve."
    return None


def keys_problems(keys: list[tuple[str, str, str]]) -> dict[str, list[str]]:
    """Each key that cannot be used, named by its index (``"keys.0.key"``)."""
    found: dict[str, list[str]] = {}
    for index, (_kid, algorithm, key) in enumerate(keys):
        problem = key_problem(algorithm, key)
        if problem is not None:
            found[f"keys.{index}.key"] = [problem]
    return found
