"""Every frame the server sends on a WebSocket, in both encodings, built here.

A session speaks one encoding for its whole life (its subprotocol): JSON
(``chatengine.v1.json``) or msgpack (``chatengine.v1.msgpack``). Control frames
(``subscribed``, ``unsubscribed``, ``pong``, ``error``) are plain maps; an event frame
carries a resource that is already serialised once per batch (``fanout.Payload``), so it
is spliced in rather than encoded again: ``orjson.Fragment`` for JSON, and for msgpack a
map written with the library's own header call followed by the packed resource.

How a session ends is here too: each close code the server sends, with its reason
(``Close``; wsproto writes the close frame). docs/protocol.md lists every code, and a
test holds the two to the same list.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack
import orjson

from engine.fanout import Payload

JSON = "json"
MSGPACK = "msgpack"
ENCODINGS = (JSON, MSGPACK)

# One event as every channel that carries it holds it: (action, resource_id, payload),
# shared by those channels; its channel and seq are the holder's.
Item = tuple[str, str, Payload | None]

_packer = msgpack.Packer()


class Close(NamedTuple):
    """A close code the server ends a session with, and the reason it gives."""

    code: int
    reason: str


GOING_AWAY = Close(1001, "server shutting down")
TOO_MANY_BAD_FRAMES = Close(1008, "too many invalid frames")
MESSAGE_TOO_BIG = Close(1009, "message too big")
INTERNAL_ERROR = Close(1011, "internal error")
STATE_RELOADED = Close(1012, "state reloaded: resume with since")
TOKEN_REVOKED = Close(4001, "the token is no longer valid")
TOKEN_EXPIRED = Close(4001, "the token has expired")
KEY_REMOVED = Close(4001, "the key that verified the token was removed or replaced")
SLOW_CONSUMER = Close(4008, "slow consumer: resume with since")
CLOSES = (
    GOING_AWAY,
    TOO_MANY_BAD_FRAMES,
    MESSAGE_TOO_BIG,
    INTERNAL_ERROR,
    STATE_RELOADED,
    TOKEN_REVOKED,
    TOKEN_EXPIRED,
    KEY_REMOVED,
    SLOW_CONSUMER,
)
# Codes wsproto sends on its own, named so that the list of codes is whole: a broken
# WebSocket framing, a text frame that is not UTF-8. (A close the client starts is
# answered with its own code.)
WSPROTO_CODES = (1002, 1007)
# A client's close without a code is answered with a close frame without one, which
# WebSocket APIs report as 1005 (a code never sent in a frame).
NO_CODE = 1005
CLOSE_CODES = frozenset(close.code for close in CLOSES) | frozenset(WSPROTO_CODES) | {NO_CODE}


def encode(frame: dict[str, Any], encoding: str) -> bytes:
    return orjson.dumps(frame) if encoding == JSON else msgpack.packb(frame)


def event(channel: str, seq: int, item: Item, encoding: str) -> bytes:
    """The frame of ``item`` as event ``seq`` of ``channel`` (its name)."""
    action, resource_id, payload = item
    if encoding == JSON:
        frame: dict[str, Any] = {
            "channel": channel,
            "action": action,
            "resource_id": resource_id,
            "seq": seq,
        }
        if payload is not None:
            frame["resource"] = orjson.Fragment(payload.as_json())
        return orjson.dumps(frame)
    head = (
        _packer.pack_map_header(4 if payload is None else 5)
        + msgpack.packb(
            ["channel", channel, "action", action, "resource_id", resource_id, "seq", seq]
        )[1:]
    )  # the pairs of the map: the array's items without the array's one-byte header
    if payload is None:
        return head
    return head + msgpack.packb("resource") + payload.as_msgpack()


def subscribed(
    channel: str, seq: int, resumed: bool, epoch: str, frame_id: Any, encoding: str
) -> bytes:
    return encode(
        with_id(
            {
                "type": "subscribed",
                "channel": channel,
                "seq": seq,
                "resumed": resumed,
                "epoch": epoch,
            },
            frame_id,
        ),
        encoding,
    )


def unsubscribed(channel: str, frame_id: Any, encoding: str) -> bytes:
    return encode(with_id({"type": "unsubscribed", "channel": channel}, frame_id), encoding)


def pong(frame_id: Any, encoding: str) -> bytes:
    return encode(with_id({"type": "pong"}, frame_id), encoding)


def error(code: str, detail: str, frame_id: Any, encoding: str) -> bytes:
    return encode(with_id({"type": "error", "code": code, "detail": detail}, frame_id), encoding)


def with_id(frame: dict[str, Any], frame_id: Any) -> dict[str, Any]:
    if frame_id is not None:
        frame["id"] = frame_id
    return frame


def batch(items: list[bytes], encoding: str) -> bytes:
    """Several frames ready at once go out as one: a JSON array or a msgpack array."""
    if len(items) == 1:
        return items[0]
    if encoding == JSON:
        return b"[" + b",".join(items) + b"]"
    return _packer.pack_array_header(len(items)) + b"".join(items)
