"""hypercorn (pinned: ``PINNED``), brought to the edge's rules where it has no setting
for them. Each override is a method of hypercorn's own classes, replaced by ``install``:

- ``H11Protocol._send_error_response``: what h11 refuses (a malformed head or chunk, a
  head over 16 KiB) hypercorn answered with its status and an empty body; now with the
  status, detail and JSON body the built-in server gives (``http1.refused_by_h11``,
  ``gateway.web.error_body``).
- ``H11Protocol._maybe_recycle``, shielded: it runs in the app's task once an answer is
  written and, when the body was not whole (a 408, a 413), ends the connection; but it
  first tells the app the peer is gone, on which quart-trio cancels that task, and the
  close was cancelled with it: the connection stayed open, reading and dropping, for as
  long as the peer sent (170 s at a byte a second, in a test). Each of its steps is short.
- ``H2Protocol.initiate``: h11 reads HTTP/2's preface as a request and stops the
  keep-alive timer, which nothing restarted before a stream ended, so a connection that
  opened no stream was held for as long as it sent a PING within the read timeout. The
  timer now runs from the preface: no stream open for ``keep_alive_timeout`` (5 s),
  closed, whatever the peer sends.
- ``H11Protocol._check_protocol``: with ``EdgeConfig.http2`` off, ``Upgrade: h2c`` is
  ignored and the request served as HTTP/1.1, as the built-in server does (the front
  door answers HTTP/2's preface itself, gateway/frontdoor.py).

docs/decisions.md says why overrides rather than a fork or giving HTTP/2 up. ``install``
refuses another hypercorn version: these are its internals, to be read again (and
``tests/test_hypercorn_edge.py`` and ``tests/test_hypercorn_deadline.py`` run) before
the pin moves.
"""

from __future__ import annotations

import sys
from importlib.metadata import version

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Updated
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

from gateway.http1 import BadRequest, refused_by_h11
from gateway.web import JSON, error_body

PINNED = "0.18.0"


class EdgeConfig(Config):
    """hypercorn's settings and ours: ``http2`` False stops h2c upgrades (the front door
    refuses HTTP/2 with prior knowledge itself)."""

    http2 = True


def refusal(status: int) -> BadRequest:
    """What the built-in server says of the request h11 refused: the exception being
    handled, as hypercorn calls ``_send_error_response`` from its ``except``."""
    error = sys.exception()
    if isinstance(error, h11.RemoteProtocolError):
        error.__traceback__ = None  # the cycle h11's raise makes (see http1.Connection)
        return refused_by_h11(error)
    return BadRequest("Malformed request.", status)  # not called so in 0.18.0


def _json_headers(headers: list[tuple[bytes, bytes]], body: bytes) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if name.lower() != b"content-length"]
    return [(b"content-type", JSON.encode()), (b"content-length", b"%d" % len(body)), *kept]


async def _h11_error_response(self: H11Protocol, status_code: int) -> None:
    failure = refusal(status_code)
    body = error_body(failure.kind(failure.detail))
    headers = [(b"connection", b"close"), *self.config.response_headers("h11")]
    await self._send_h11_event(
        h11.Response(status_code=failure.status, headers=_json_headers(headers, body))
    )
    # h11 takes no body after a HEAD request's answer; hypercorn's _send_h11_event
    # drops that refusal (the peer's side is in error by now)
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


_check_protocol = H11Protocol._check_protocol


async def _check_protocol_unless_http2_off(self: H11Protocol, event: h11.Request) -> None:
    if getattr(self.config, "http2", True):
        await _check_protocol(self, event)


_maybe_recycle = H11Protocol._maybe_recycle


async def _maybe_recycle_shielded(self: H11Protocol) -> None:
    # the close must not be cancelled with the app's task (see the module's doc)
    with trio.CancelScope(shield=True):
        await _maybe_recycle(self)


_h2_initiate = H2Protocol.initiate


async def _h2_initiate_idle(
    self: H2Protocol,
    headers: list[tuple[bytes, bytes]] | None = None,
    settings: bytes | None = None,
) -> None:
    await _h2_initiate(self, headers, settings)
    if headers is None and not self.streams:
        # prior knowledge: the keep-alive timer runs until a stream opens (module doc)
        await self.send(Updated(idle=True))


def install() -> None:
    """Replace the methods the module doc names (once; idempotent)."""
    if getattr(H11Protocol, "_chat_engine_edge", False):
        return
    found = version("hypercorn")
    if found != PINNED:
        raise RuntimeError(
            f"hypercorn {found} is installed; gateway/hypercorn_edge.py overrides "
            f"internals of {PINNED}: read them again before raising the pin"
        )
    H11Protocol._send_error_response = _h11_error_response  # type: ignore[method-assign]
    H11Protocol._check_protocol = _check_protocol_unless_http2_off  # type: ignore[method-assign]
    H11Protocol._maybe_recycle = _maybe_recycle_shielded  # type: ignore[method-assign]
    H2Protocol.initiate = _h2_initiate_idle  # type: ignore[method-assign]
    H11Protocol._chat_engine_edge = True  # type: ignore[attr-defined]
