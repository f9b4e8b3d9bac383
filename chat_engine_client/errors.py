"""The exceptions of the client."""

from __future__ import annotations

from typing import Any


class ChatEngineError(Exception):
    """Base class of every error this client raises on purpose."""


class ApiError(ChatEngineError):
    """An HTTP answer of 400 or more. ``code`` is the machine code of the answer
    (``not_found``, ``chat_already_taken``, ...; ``http_<status>`` when the body was not
    the API's JSON error), ``detail`` its human sentence, ``errors`` the per-field
    messages of a validation error, ``retry_after`` the seconds a 429 or 503 asked for."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        errors: dict[str, list[str]] | None = None,
        *,
        method: str = "",
        url: str = "",
        retry_after: float | None = None,
    ) -> None:
        where = f" ({method} {url})" if method else ""
        super().__init__(f"{status} {code}: {detail}{where}")
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or {}
        self.method = method
        self.url = url
        self.retry_after = retry_after

    @classmethod
    def from_body(
        cls, status: int, body: Any, *, method: str, url: str, retry_after: float | None
    ) -> ApiError:
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            errors = body.get("errors")
            return cls(
                status,
                body["code"],
                str(body.get("detail", "")),
                errors if isinstance(errors, dict) else None,
                method=method,
                url=url,
                retry_after=retry_after,
            )
        return cls(
            status,
            f"http_{status}",
            str(body)[:200],
            method=method,
            url=url,
            retry_after=retry_after,
        )


class ChannelError(ChatEngineError):
    """The channel client stopped for good; ``code`` is the WebSocket close code or the
    HTTP status that stopped it, when there was one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TokenInvalid(ChannelError):
    """The token stopped working (close 4001, or 401 on connecting) and no token
    provider gave a working one."""


class SubscriptionError(ChatEngineError):
    """The server refused a subscribe: ``code`` is ``forbidden``, ``unknown_channel``,
    ``bad_frame`` or ``too_many_subscriptions``."""

    def __init__(self, channel: str, code: str, detail: str) -> None:
        super().__init__(f"subscribe to {channel} refused: {code}: {detail}")
        self.channel = channel
        self.code = code
        self.detail = detail
