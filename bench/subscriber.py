"""The fan-out load generator: many WebSocket subscribers in one process, on one epoll.

A general client (a task per connection, a full protocol library) spends more CPU per
event than the servers under test, and the generator became the bottleneck at 1,000
sessions. This one is a plain ``select.epoll`` loop with a minimal RFC 6455 client: it
parses unmasked server frames, answers pings, masks what it sends with a zero key, and
hands each text/binary payload to the protocol adapter. The same loop and frame code
drive all three servers of ``python -m bench compare``; only the adapter differs:

- ``engine``: subscribes to a channel; frames are JSON objects or arrays of them;
- ``socketio``: Engine.IO v4 over the websocket transport (``0`` open → ``40``
  connect; ``2`` ping → ``3`` pong; ``42["message", text]`` events);
- ``websockets``: every text frame is one message.

A message's text is ``"<step>:<unix time>"``; the receiver counts it for that step and
files its latency in 1 ms buckets. Each session connects to the address it is given (the
scenario's own server on 127.0.0.1, or one of a deployment's ``--url`` addresses);
connecting is bounded in time, and the loop stops on the parent's ``stop``.
"""

from __future__ import annotations

import select
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import orjson

from bench.client import Address, connect

MAX_LATENCY_BUCKET_MS = 60_000
CONNECT_TIMEOUT = 60.0
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame; the key is zero, so the payload goes as it is."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


def parse_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every whole server frame off the front of ``buffer``: (first byte, payload)."""
    frames = []
    data = bytes(buffer)
    end = len(data)
    pos = 0
    while end - pos >= 2:
        length = data[pos + 1] & 0x7F
        offset = pos + 2
        if length == 126:
            if end - pos < 4:
                break
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            offset = pos + 4
        elif length == 127:
            if end - pos < 10:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            offset = pos + 10
        if offset + length > end:
            break
        frames.append((data[pos], data[offset : offset + length]))
        pos = offset + length
    if pos:
        del buffer[:pos]
    return frames


def upgrade_request(path: str, address: Address) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {address.authority}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Tally:
    """Counts and latency histograms per step."""

    def __init__(self) -> None:
        self.received: dict[int, int] = {}
        self.histogram: dict[int, dict[int, int]] = {}
        self.closes: list[int] = []
        self.errors: list[str] = []

    def record(self, text: str, now: float) -> None:
        step, _, sent = text.partition(":")
        if not sent or not step.isdigit():
            return  # not one of the bench's messages
        number = int(step)
        self.received[number] = self.received.get(number, 0) + 1
        bucket = min(MAX_LATENCY_BUCKET_MS, int((now - float(sent)) * 1000))
        counts = self.histogram.setdefault(number, {})
        counts[bucket] = counts.get(bucket, 0) + 1

    def report(self, step: int) -> dict[str, Any]:
        return {
            "received": self.received.pop(step, 0),
            "histogram": self.histogram.pop(step, {}),
            "closes": list(self.closes),
            "errors": list(self.errors),
        }


class Adapter:
    """What differs between servers: the upgrade path, the first frames, the payloads."""

    def __init__(self, kind: str, token: str = "", channels: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.token = token
        self.channels = channels
        # answers that make a session ready: one `subscribed` per channel, Socket.IO's
        # namespace `40`, nothing for bare websockets
        self.acks_needed = {"engine": len(channels), "socketio": 1}.get(kind, 0)

    def path(self) -> str:
        if self.kind == "engine":
            return f"/ws?token={self.token}"
        if self.kind == "socketio":
            return "/socket.io/?EIO=4&transport=websocket"
        return "/"

    def on_open(self) -> bytes:
        """Bytes to send once the upgrade is accepted."""
        if self.kind == "engine":
            return b"".join(
                client_frame(
                    OP_TEXT, orjson.dumps({"type": "subscribe", "id": number, "channel": channel})
                )
                for number, channel in enumerate(self.channels, start=1)
            )
        return b""

    def on_payload(self, payload: bytes, tally: Tally, now: float) -> tuple[bytes, int]:
        """Record the messages in one payload; returns (bytes to answer, acks in it)."""
        kind = self.kind
        if kind == "websockets":
            tally.record(payload.decode(), now)
            return b"", 0
        if kind == "socketio":
            if payload.startswith(b"42"):
                event = orjson.loads(payload[2:])
                if event[0] == "message":
                    tally.record(event[1], now)
                return b"", 0
            if payload == b"2":
                return client_frame(OP_TEXT, b"3"), 0
            if payload.startswith(b"0{"):
                return client_frame(OP_TEXT, b"40"), 0
            if payload.startswith(b"40"):
                return b"", 1
            return b"", 0
        if b'{"type":"' not in payload:  # events only: no answer object in the frame
            record_added_messages(payload, tally, now)
            return b"", 0
        decoded = orjson.loads(payload)
        acks = 0
        for item in decoded if isinstance(decoded, list) else (decoded,):
            if item.get("action") == "added":
                text = (item.get("resource") or {}).get("message")
                if text:
                    tally.record(text, now)
            elif item.get("type") == "subscribed":
                acks += 1
            elif item.get("type") == "error":
                tally.errors.append(item.get("code", "?"))
        return b"", acks


ADDED = b'"action":"added"'
ACTION = b'"action":"'
MESSAGE = b'"message":"'


def record_added_messages(payload: bytes, tally: Tally, now: float) -> None:
    """Record the text of every ``added`` event's message in an engine frame (one event
    or a JSON array of them) without decoding the whole frame: at 1,000 sessions the
    generator reads ~1,000 frames per write pass, and a full ``orjson.loads`` of each
    made it, not the server, the slower side of the latency measured. Same result as
    decoding (``tests/test_bench_subscriber.py``) for the bench's own messages, whose
    text has no escapes."""
    position = 0
    while True:
        added = payload.find(ADDED, position)
        if added < 0:
            return
        following = payload.find(ACTION, added + len(ADDED))
        start = payload.find(MESSAGE, added)
        if start < 0:
            return
        if following >= 0 and start > following:  # this event's message is not text
            position = following
            continue
        start += len(MESSAGE)
        end = payload.find(b'"', start)
        if end > start:
            tally.record(payload[start:end].decode(), now)
        position = end


class Subscriber:
    __slots__ = ("sock", "buffer", "upgraded", "ready", "acks", "parts")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.upgraded = False
        self.ready = False
        self.acks = 0
        self.parts: list[bytes] = []


def _connect(address: Address, adapter: Adapter) -> Subscriber:
    sock = connect(address, timeout=CONNECT_TIMEOUT)
    sock.sendall(upgrade_request(adapter.path(), address))
    sock.setblocking(False)
    return Subscriber(sock)


def _process(sub: Subscriber, adapter: Adapter, tally: Tally, now: float) -> bool:
    """Consume whole frames from the buffer; False when the connection ended."""
    buffer = sub.buffer
    if not sub.upgraded:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return True
        status = bytes(buffer[9:12])
        if status != b"101":
            tally.closes.append(int(status))
            return False
        del buffer[: end + 4]
        sub.upgraded = True
        sub.sock.sendall(adapter.on_open())
        sub.ready = adapter.acks_needed == 0
    for first, payload in parse_frames(buffer):
        opcode = first & 0x0F
        if opcode == OP_PING:
            sub.sock.sendall(client_frame(OP_PONG, payload))
            continue
        if opcode == OP_CLOSE:
            tally.closes.append(int.from_bytes(payload[:2], "big") if payload else 1005)
            return False
        if opcode not in (OP_TEXT, OP_BINARY, OP_CONT):
            continue
        if not first & 0x80:  # a fragment: keep it until the final one
            sub.parts.append(payload)
            continue
        if sub.parts:
            payload = b"".join(sub.parts) + payload
            sub.parts.clear()
        answer, acks = adapter.on_payload(payload, tally, now)
        if answer:
            sub.sock.sendall(answer)
        if acks:
            sub.acks += acks
            sub.ready = sub.acks >= adapter.acks_needed
    return True


def run(addresses: list[Address], adapter: Adapter, sessions: int, control: Connection) -> None:
    """Hold ``sessions`` sessions, the n-th on ``addresses[n % len(addresses)]``; answer
    '<step>' with that step's counts, 'stop' ends."""
    tally = Tally()
    poller = select.epoll()
    subs: dict[int, Subscriber] = {}
    deadline = time.monotonic() + CONNECT_TIMEOUT
    for number in range(sessions):
        opened = _connect(Address(*addresses[number % len(addresses)]), adapter)
        subs[opened.sock.fileno()] = opened
        poller.register(opened.sock.fileno(), select.EPOLLIN)
    # one buffer for every recv: a fresh 256 KiB bytes object per call costs an
    # mmap/munmap pair, more than the events in it
    receive_buffer = bytearray(262144)
    receive_view = memoryview(receive_buffer)
    control_fd = control.fileno()
    poller.register(control_fd, select.EPOLLIN)
    announced = False
    try:
        while True:
            if not announced and all(sub.ready for sub in subs.values()):
                control.send("ready")
                announced = True
            if not announced and time.monotonic() > deadline:
                control.send(f"only {sum(s.ready for s in subs.values())} of {sessions} ready")
                return
            for fd, _ in poller.poll(0.5):
                if fd == control_fd:
                    command = control.recv()
                    if command == "stop":
                        return
                    control.send(tally.report(int(command)))
                    continue
                sub = subs.get(fd)
                if sub is None:
                    continue
                try:
                    count = sub.sock.recv_into(receive_buffer)
                except BlockingIOError:
                    continue
                except OSError:
                    count = 0
                alive = count > 0
                if alive:
                    sub.buffer += receive_view[:count]
                    alive = _process(sub, adapter, tally, time.time())
                if not alive:
                    poller.unregister(fd)
                    del subs[fd]
                    sub.sock.close()
                    sub.ready = True  # gone: not waited for
    finally:
        for each in subs.values():
            each.sock.close()
        poller.close()


def process_main(
    addresses: list[Address],
    kind: str,
    token: str,
    channels: tuple[str, ...],
    sessions: int,
    control: Any,
) -> None:
    """Entry point of a generator process (spawned by the scenario)."""
    run(addresses, Adapter(kind, token, channels), sessions, control)
    control.send("stopped")
