"""The ASGI face of the request pipeline: quart-trio, for the connections hypercorn
serves (HTTP/2, or HTTP/1.1 with ``--http1-server hypercorn``). It routes nothing itself:
one catch-all route hands every request to the same ``WebApp`` the built-in server
calls, so both answer alike.

Deadlines: the built-in server's for a body (``http1.BODY_TIMEOUT``, in all, from the
moment the route asks for it: quart-trio reads it under one ``move_on_after`` and raises
408, answered here with the JSON body) and for an answer to be handed to hypercorn
(``http1.WRITE_TIMEOUT``, quart's ``RESPONSE_TIMEOUT``).
"""

from __future__ import annotations

import quart
import trio
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from engine import errors
from gateway import http1
from gateway import validation as v
from gateway.frontdoor import HANDOVER_KEY
from gateway.http1 import WS_ONLY, is_upgrade_target
from gateway.web import METHODS, Request, WebApp, error_body
from gateway.wsconn import upgrade_head

HTTP_ERRORS = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.BodyTooLarge,
    415: errors.UnsupportedMediaType,
}


def origin_path(path: str) -> str:
    """The path as the built-in server reads a request target (``http1.split_target``):
    the asterisk form (``*``) and the absolute form (``http://host/p``) name the origin's
    ``/`` and ``/p``, so that both transports route them alike."""
    if path.startswith("/"):
        return path
    return "/" + path.split("://", 1)[-1].partition("/")[2]


def asgi_app(web: WebApp) -> QuartTrio:
    """quart-trio as the ASGI layer of ``web``: one catch-all route hands every request
    to the same pipeline the built-in server calls (quart reads the body and enforces
    its size; its own routing and errors see only that route)."""
    app = QuartTrio("chat_engine")
    app.config["MAX_CONTENT_LENGTH"] = v.MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = http1.BODY_TIMEOUT
    app.config["RESPONSE_TIMEOUT"] = http1.WRITE_TIMEOUT
    methods = list(METHODS)

    async def forward(path: str = "") -> quart.Response:
        incoming = quart.request
        body = await incoming.get_data(cache=False)
        assert isinstance(body, bytes)
        scope = incoming.scope
        answer = await web.handle(
            Request(
                incoming.method,
                origin_path(scope["path"]),
                scope["query_string"],
                [(name.lower(), value) for name, value in scope["headers"]],
                body,
                scheme=scope.get("scheme", "http"),
                server=scope.get("server"),  # type: ignore[arg-type]
                client=scope.get("client"),
            )
        )
        response = quart.Response(answer.body, status=answer.status)
        if answer.content_type is not None:
            response.headers["Content-Type"] = answer.content_type
        else:
            response.headers.pop("Content-Type", None)
        for name, value in answer.headers:
            response.headers[name] = value
        return response

    app.add_url_rule("/", "forward-root", forward, methods=methods, provide_automatic_options=False)
    app.add_url_rule(
        "/<path:path>", "forward", forward, methods=methods, provide_automatic_options=False
    )

    @app.websocket("/ws")
    async def websocket_endpoint() -> quart.Response:
        # The front door takes every connection that opens with GET /ws; one that
        # reaches here sent the upgrade after other requests on the same connection.
        # It goes back to the front door (gateway/frontdoor.py, _Handover) and on to the
        # WebSocket gateway, like one that opened the connection.
        scope = quart.websocket.scope
        handover = scope.get("state", {}).get(HANDOVER_KEY)
        query = scope["query_string"]
        target = scope["raw_path"] + (b"?" + query if query else b"")
        if handover is not None and is_upgrade_target(b"GET", target):
            version = scope.get("http_version", "1.1").encode("ascii")
            if handover.claim(upgrade_head(b"GET", target, version, scope["headers"])):
                # hypercorn now reads the end of the stream and ends the connection,
                # which cancels this; the front door then serves the session
                await trio.sleep_forever()
        return quart.Response(
            error_body(errors.Invalid(WS_ONLY)), 400, content_type="application/json"
        )

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> quart.Response:
        code = error.code or 500
        kind = HTTP_ERRORS.get(code)
        if code == 408:  # the body's deadline: code invalid, status 408 (as 431 is)
            failure: errors.EngineError = errors.Invalid(
                f"The body did not arrive within {app.config['BODY_TIMEOUT']:g} s."
            )
            status = 408
        else:
            failure = (
                errors.Invalid(error.description or "Bad request.")
                if kind is None
                else kind(error.description or kind.code)
            )
            status = failure.status
        return quart.Response(error_body(failure), status, content_type="application/json")

    return app
