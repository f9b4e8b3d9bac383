"""The one way the server reads a connection's socket: ``receive``.

The built-in HTTP/1.1 server (``gateway/http1.py``, requests and the linger after a
refusal) and the WebSocket sessions (``gateway/wsconn.py``) read through it, so they
share three properties that the hostile-input tests hold them to:

- it yields to trio exactly once per call: by waiting for readiness when nothing is
  there, else by a checkpoint after a read that returned at once, so a peer whose bytes
  are always there (pipelining, one-byte chunks, a flood of pings) cannot hold the loop;
- a wake-up with nothing to read (epoll reports some) waits again instead of ending the
  connection;
- a peer that is gone, by the end of its stream or a broken connection (reset, timeout
  of the kernel's), is ``b""``: the callers end the connection the same way for both.

It has no deadline of its own: each caller bounds it by its own rule (the HTTP server by
its connection's deadlines, ``gateway/deadlines.py``; a WebSocket by timed scopes for
the handshake and the ping interval). The front door's peek (``gateway/frontdoor.py``)
does not read through it: it consumes nothing (``MSG_PEEK``) and, once it holds a prefix
of ``GET /ws``, waits on a raised low-water mark instead of reading again.
"""

from __future__ import annotations

import socket

import trio

RECV_SIZE = 65536  # bytes asked of the kernel per read


async def receive(sock: socket.socket, size: int = RECV_SIZE) -> bytes:
    """The next bytes from the non-blocking ``sock`` (at most ``size``), or ``b""`` when
    the peer is gone. Yields to trio exactly once."""
    try:
        data = sock.recv(size)
    except BlockingIOError:
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(size)
            except BlockingIOError:  # woken for nothing (it happens): wait again
                continue
            except OSError:
                return b""
    except OSError:
        data = b""
    await trio.lowlevel.checkpoint()
    return data
