"""Webhooks as rules, with no I/O: the registry an org's endpoints live in, which log
record makes which event, who hears of it, how an event is rendered and signed, which
targets are allowed, and the retry schedule.

The delivery loop (``gateway.webhooks``) reads log records after an endpoint's cursor
and asks this module what to send; it decides nothing itself.

An event is identified by the log position of the record that made it and its index
among that record's events (``event_id``), so every redelivery of it, by this process or
after a restart, carries the same ``id``: receivers deduplicate by it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from engine import errors
from engine.chat import ChatState
from engine.facts import (
    ChatCreated,
    ChatEnded,
    Fact,
    MessagePosted,
    UserJoined,
    UserLeft,
    WebhookCreated,
    WebhookDeleted,
)
from engine.ids import new_uuid
from engine.model import JOIN, LEAVE, SENDER_USER, Message, Presence, User
from engine.timefmt import format_ms
from engine.views import chat_collection_view, message_view, presence_view

CHAT_CREATED = "chat.created"
CHAT_ENDED = "chat.ended"
MESSAGE_CREATED = "message.created"
PRESENCE_CREATED = "presence.created"
PRESENCE_DELETED = "presence.deleted"
EVENT_TYPES = (CHAT_CREATED, CHAT_ENDED, MESSAGE_CREATED, PRESENCE_CREATED, PRESENCE_DELETED)

MAX_PER_ORG = 20  # endpoints an org may register
SIGNATURE_HEADER = "Chat-Engine-Signature"

# The retry schedule: 1 s after the first failure, doubling up to 10 minutes between
# attempts, for 24 hours.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 600.0
RETRY_HORIZON_MS = 24 * 3600 * 1000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- the registry ---------------------------------------------------------------------------
@dataclass(slots=True)
class Webhook:
    id: str
    org_id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: int
    start_lsn: int  # the record that created it: events of later records are delivered


@dataclass(slots=True)
class Webhooks:
    """Every registered endpoint, in registration order."""

    by_id: dict[str, Webhook] = field(default_factory=dict)

    def of_org(self, org_id: str) -> list[Webhook]:
        return [hook for hook in self.by_id.values() if hook.org_id == org_id]

    def apply(self, fact: WebhookCreated | WebhookDeleted, lsn: int) -> None:
        if isinstance(fact, WebhookCreated):
            self.by_id[fact.webhook_id] = Webhook(
                fact.webhook_id,
                fact.org_id,
                fact.url,
                tuple(fact.events),
                fact.secret,
                fact.at,
                lsn,
            )
        else:
            self.by_id.pop(fact.webhook_id, None)


def webhook_view(hook: Webhook) -> dict[str, Any]:
    """An endpoint as the API shows it: never its secret."""
    return {
        "id": hook.id,
        "organization_id": hook.org_id,
        "url": hook.url,
        "events": list(hook.events),
        "created_at": format_ms(hook.created_at),
    }


# -- targets --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Allow:
    """``--webhook-allow``: host names (exact, any case) and networks. Empty: no target
    is allowed."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hosts or self.networks)

    def names(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def covers(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def parse_allow(items: Iterable[str]) -> Allow:
    """Host names and addresses or CIDRs (``hooks.example.com``, ``127.0.0.1``,
    ``10.0.0.0/8``); raises ValueError naming the rule."""
    hosts: set[str] = set()
    networks: list[Network] = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
            continue
        except ValueError:
            pass
        name = item.lower().rstrip(".")
        labels = name.split(".")
        if not name or not all(
            label and len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)
            for label in labels
        ):
            raise ValueError(
                "a comma-separated list of host names, IP addresses or CIDRs "
                "(e.g. hooks.example.com,127.0.0.1,10.0.0.0/8)"
            )
        hosts.add(name)
    return Allow(frozenset(hosts), tuple(networks))


def target_host(url: str) -> str:
    """The host of an endpoint URL; ``Invalid`` naming ``url`` unless it is an absolute
    http(s) URL with a host, a port from 1 to 65535 if any, no credentials and no
    fragment, written in printable ASCII with no space (what goes on the request line
    and in the Host header as it is: a non-ASCII path once crashed every delivery)."""
    if not all("!" <= char <= "~" for char in url):
        raise errors.invalid_field(
            "url",
            "Must be printable ASCII with no spaces: percent-encode other characters "
            "and write an international host name in its xn-- form.",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise errors.invalid_field("url", "Not a valid URL.") from None
    if port == 0:
        raise errors.invalid_field("url", "The port must be from 1 to 65535.")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.invalid_field("url", "Must be an http:// or https:// URL with a host.")
    if parts.username is not None or parts.fragment:
        raise errors.invalid_field("url", "Must hold no credentials and no fragment.")
    return parts.hostname


def literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def target_refusal(host: str, addresses: Sequence[Address], allow: Allow) -> str | None:
    """Why ``host`` (resolved to ``addresses``) may not be sent to, or None. A host named
    in the allow list may be sent to wherever it resolves; any other must resolve only
    to addresses inside the allowed networks (checked again at each delivery, so a name
    that later resolves elsewhere is refused then)."""
    if not allow:
        return (
            "No webhook target is allowed: the server runs without --webhook-allow "
            "(host names or CIDRs of the receivers)."
        )
    if allow.names(host):
        return None
    if not addresses:
        return f"The host {host!r} did not resolve to an address."
    outside = [str(address) for address in addresses if not allow.covers(address)]
    if outside:
        return f"The host {host!r} ({', '.join(outside)}) is not allowed by --webhook-allow."
    return None


def decide_create(
    registry: Webhooks, org_id: str, url: str, events: Sequence[str], secret: str, *, at: int
) -> WebhookCreated:
    unknown = [kind for kind in events if kind not in EVENT_TYPES]
    if unknown or not events:
        raise errors.invalid_field("events", f"A non-empty list of: {', '.join(EVENT_TYPES)}.")
    if len(registry.of_org(org_id)) >= MAX_PER_ORG:
        raise errors.Invalid(f"An organization may register at most {MAX_PER_ORG} webhooks.")
    target_host(url)
    return WebhookCreated(new_uuid(), org_id, url, tuple(dict.fromkeys(events)), secret, at)


def decide_delete(registry: Webhooks, org_id: str, webhook_id: str, *, at: int) -> WebhookDeleted:
    hook = registry.by_id.get(webhook_id)
    if hook is None or hook.org_id != org_id:
        raise errors.NotFound("Webhook not found.")
    return WebhookDeleted(webhook_id, org_id, at)


# -- events ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RawEvent:
    """One event a record made, before it is rendered for an endpoint."""

    index: int  # its place among the record's events
    type: str
    chat_id: str
    at: int
    subject: Any  # the Message, the user id (presences) or None (chats)


def events_of(facts: Sequence[Fact]) -> list[RawEvent]:
    """The events one log record makes, in the order they happened; for a join or a
    leave the presence before its message, for an ended chat the chat first, then each
    presence removed (in join order) with its leave message."""
    out: list[RawEvent] = []

    def add(kind: str, chat_id: str, at: int, subject: Any = None) -> None:
        out.append(RawEvent(len(out), kind, chat_id, at, subject))

    def joined(chat_id: str, user_id: str, message_id: str, at: int) -> None:
        add(PRESENCE_CREATED, chat_id, at, user_id)
        add(MESSAGE_CREATED, chat_id, at, _system(message_id, JOIN, user_id, at))

    def left(chat_id: str, user_id: str, message_id: str, at: int) -> None:
        add(PRESENCE_DELETED, chat_id, at, user_id)
        add(MESSAGE_CREATED, chat_id, at, _system(message_id, LEAVE, user_id, at))

    for fact in facts:
        kind = type(fact)
        if kind is MessagePosted:
            assert isinstance(fact, MessagePosted)
            message = Message(
                fact.message_id,
                fact.type,
                fact.at,
                fact.sender_type,
                fact.sender_id,
                fact.message,
                fact.page_url,
                fact.page_title,
            )
            add(MESSAGE_CREATED, fact.chat_id, fact.at, message)
        elif kind is ChatCreated:
            assert isinstance(fact, ChatCreated)
            add(CHAT_CREATED, fact.chat_id, fact.at)
            if fact.join_user_id is not None and fact.join_message_id is not None:
                joined(fact.chat_id, fact.join_user_id, fact.join_message_id, fact.at)
        elif kind is UserJoined:
            assert isinstance(fact, UserJoined)
            joined(fact.chat_id, fact.user_id, fact.message_id, fact.at)
        elif kind is UserLeft:
            assert isinstance(fact, UserLeft)
            left(fact.chat_id, fact.user_id, fact.message_id, fact.at)
        elif kind is ChatEnded:
            assert isinstance(fact, ChatEnded)
            add(CHAT_ENDED, fact.chat_id, fact.at)
            for user_id, message_id in fact.leaves:
                left(fact.chat_id, user_id, message_id, fact.at)
    return out


def _system(message_id: str, kind: str, user_id: str, at: int) -> Message:
    return Message(message_id, kind, at, SENDER_USER, user_id, None, None, None)


def orgs_of_chat(chat: ChatState, shared_with: Iterable[str]) -> list[str]:
    """The orgs that see a chat: its room's owner and every org the room is shared with
    (the same orgs whose room collections show it)."""
    return [chat.organization_id, *sorted(shared_with)]


def event_id(epoch: str, lsn: int, index: int) -> str:
    return f"{epoch}-{lsn}-{index}"


def render_data(event: RawEvent, chat: ChatState, users: dict[str, User]) -> dict[str, Any] | None:
    """The event's resource as its collection shows it (None: it cannot be rendered,
    e.g. a user unknown to the state). A message or a presence is rendered as it was
    made; a chat as it is when the event is rendered."""
    if event.type in (CHAT_CREATED, CHAT_ENDED):
        return chat_collection_view(chat)
    if event.type == MESSAGE_CREATED:
        return message_view(event.subject, users)
    user = users.get(event.subject)
    if user is None:
        return None
    if event.type == PRESENCE_CREATED:
        return presence_view(Presence(user.id, event.at, 0), chat.id, user)
    # deleted: the presence as it was, from the join that began it
    joined_at = next(
        (
            message.created_at
            for message in reversed(chat.messages)
            if message.type == JOIN
            and message.sender_id == user.id
            and message.created_at <= event.at
        ),
        event.at,
    )
    return presence_view(Presence(user.id, joined_at, 0), chat.id, user)


def envelope(event_id_: str, event: RawEvent, org_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id_,
        "type": event.type,
        "created_at": format_ms(event.at),
        "org_id": org_id,
        "data": data,
    }


def wanted(hook: Webhook, event: RawEvent, orgs: Sequence[str]) -> bool:
    return event.type in hook.events and hook.org_id in orgs


# -- signing and retrying -------------------------------------------------------------------
def signed_payload(timestamp: int, body: bytes) -> bytes:
    """What the signature covers: ``<unix seconds>.<the body's bytes>``."""
    return str(timestamp).encode("ascii") + b"." + body


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Chat-Engine-Signature`` header: ``t=<unix>,v1=<hex HMAC-SHA256>``."""
    digest = hmac.new(
        secret.encode("utf-8"), signed_payload(timestamp, body), hashlib.sha256
    ).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does (and the tests): the header's parts, recomputed, compared
    in constant time."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = signature(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def backoff(failures: int, first: float = BACKOFF_FIRST, most: float = BACKOFF_MAX) -> float:
    """Seconds before the next attempt after ``failures`` failed ones in a row (1 s,
    2 s, 4 s, ... up to 10 minutes)."""
    if failures <= 0:
        return 0.0
    return min(most, first * 2.0 ** min(failures - 1, 60))


def give_up(
    failing_since: int | None, event_at: int, now: int, horizon: int = RETRY_HORIZON_MS
) -> bool:
    """An event is skipped once its endpoint has been failing for the whole horizon and
    the event itself is at least that old. The head of a failing endpoint's backlog is
    thus retried for 24 hours; behind it, events that aged past the horizon meanwhile are
    skipped without an attempt, so a dead endpoint's backlog never reaches back more than
    24 hours. An endpoint that is not failing (a restart after a long stop, say) gets
    every event, however old."""
    return (
        failing_since is not None and now - failing_since >= horizon and now - event_at >= horizon
    )
