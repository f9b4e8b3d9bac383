"""The error codes of the API, each with its HTTP status.

Every failure the engine reports is an ``EngineError`` carrying the HTTP status and the
machine code clients see; the gateway renders it as
``{"code", "detail", "errors"?}`` and nothing else decides a status.
"""

from __future__ import annotations


class EngineError(Exception):
    status = 500
    code = "internal"

    def __init__(self, detail: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "detail": self.detail}
        if self.errors:
            body["errors"] = self.errors
        return body


def _error(name: str, status: int, code: str) -> type[EngineError]:
    return type(name, (EngineError,), {"status": status, "code": code})


Invalid = _error("Invalid", 400, "invalid")
InvalidJson = _error("InvalidJson", 400, "invalid_json")
InvalidBody = _error("InvalidBody", 400, "invalid_body")
InvalidCursor = _error("InvalidCursor", 400, "invalid_cursor")
ChatAlreadyTaken = _error("ChatAlreadyTaken", 400, "chat_already_taken")
PermissionDenied = _error("PermissionDenied", 400, "permission_denied")
ChatEnded = _error("ChatEnded", 400, "chat_ended")
NotAuthenticated = _error("NotAuthenticated", 401, "not_authenticated")
Forbidden = _error("Forbidden", 403, "forbidden")
NotFound = _error("NotFound", 404, "not_found")
InvalidPage = _error("InvalidPage", 404, "invalid_page")
MethodNotAllowed = _error("MethodNotAllowed", 405, "method_not_allowed")
Conflict = _error("Conflict", 409, "conflict")
BodyTooLarge = _error("BodyTooLarge", 413, "body_too_large")
UnsupportedMediaType = _error("UnsupportedMediaType", 415, "unsupported_media_type")
RateLimited = _error("RateLimited", 429, "rate_limited")
Unavailable = _error("Unavailable", 503, "unavailable")


def invalid_field(field: str, message: str) -> EngineError:
    """A 400 ``invalid`` naming one field, the most common validation failure."""
    return Invalid(f"Invalid value for '{field}'.", {field: [message]})
