"""Identifier and secret generation: UUIDs for resources, URL-safe secrets for tokens."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
VISITOR_ID_RE = re.compile(r"[0-9a-f]{32}")


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_visitor_id() -> str:
    return uuid.uuid4().hex


def new_chat_token() -> str:
    """48 random lower-case base32 characters (30 random bytes)."""
    return base64.b32encode(secrets.token_bytes(30)).decode("ascii").lower()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are stored hashed; a lookup compares digests, never the secret itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_uuid(text: object) -> bool:
    return isinstance(text, str) and UUID_RE.fullmatch(text) is not None


def is_visitor_id(text: object) -> bool:
    return isinstance(text, str) and VISITOR_ID_RE.fullmatch(text) is not None
