"""The OpenAPI 3.1 description served at ``/openapi.json``.

Built from the routes as they are registered (``gateway.routes.context.Route``): method,
path, summary, query parameters, request body, success status and answer. Request
schemas come from the same pydantic models that validate the bodies; answer schemas from
``engine.shapes``, the schema of each shape ``engine/views.py`` renders; so the
description cannot drift from what the server accepts and answers
(``tests/test_openapi_walk.py`` checks every route's real answers against it).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from engine import shapes

if TYPE_CHECKING:  # the routes' context imports this module
    from gateway.routes.context import Route

TOKEN_SCHEME = "token"  # "Authorization: Token <token>": the engine's own tokens
BEARER_SCHEME = "bearer"  # "Authorization: Bearer <jwt>": a token the org's application signed
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "detail"],
    "properties": {
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "errors": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    },
}
ERROR_ANSWER = {
    "description": "Error: {code, detail} and, for a bad field, errors naming it",
    "content": {"application/json": {"schema": {"$ref": shapes.COMPONENTS + "Error"}}},
}
CURSOR_FIELDS = {"next", "previous", "results"}
CURSOR_PARAMETERS = [
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "Opaque; taken from a page's next or previous link.",
        "schema": {"type": "string"},
    },
    {
        "name": "page_size",
        "in": "query",
        "required": False,
        "description": "Items a page (above 100: 100).",
        "schema": {"type": "integer", "minimum": 1, "default": 25},
    },
]


class OpenApi:
    def __init__(self) -> None:
        self._paths: dict[str, dict[str, Any]] = {}
        self._schemas: dict[str, Any] = {"Error": ERROR_SCHEMA, **shapes.SCHEMAS}

    def add(self, route: Route) -> None:
        """Describe ``route`` (one with a summary: the API's routes)."""
        answer: dict[str, Any] = {"description": "Success"}
        if route.response is not None:
            answer["content"] = {"application/json": {"schema": route.response}}
        responses: dict[str, Any] = {
            str(status): answer for status in sorted({route.status, *route.also})
        }
        responses["default"] = ERROR_ANSWER
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
            for name in re.findall(r"{(\w+)}", route.path)
        ]
        parameters += [dict(parameter, **{"in": "query"}) for parameter in route.query]
        if _is_cursor_page(route.response):
            parameters += CURSOR_PARAMETERS
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": _operation_id(route),
            "parameters": parameters,
            "responses": responses,
        }
        if not route.token:
            operation["security"] = []
        body = route.body
        if body is not None:
            if isinstance(body, type) and issubclass(body, BaseModel):
                name = body.__name__
                schema = body.model_json_schema(ref_template=shapes.COMPONENTS + "{model}")
                self._schemas.update(schema.pop("$defs", {}))
            else:
                name, schema = body["title"], body
            self._schemas[name] = schema
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": {"$ref": shapes.COMPONENTS + name}}},
            }
        self._paths.setdefault(route.path, {})[route.method.lower()] = operation

    def document(self) -> dict[str, Any]:
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "Chat engine",
                "version": "5",
                "description": "The HTTP API; docs/api.md describes each route, "
                "docs/protocol.md the WebSocket protocol at /ws.",
            },
            "components": {
                "schemas": self._schemas,
                "securitySchemes": {
                    TOKEN_SCHEME: {
                        "type": "apiKey",
                        "in": "header",
                        "name": "Authorization",
                        "description": "The header's value is `Token <token>`: the admin "
                        "token, an org's service token, a user's or a visitor's token.",
                    },
                    BEARER_SCHEME: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                },
            },
            "security": [{TOKEN_SCHEME: []}, {BEARER_SCHEME: []}],
            "paths": self._paths,
        }


def _path_schema(name: str) -> dict[str, Any]:
    """An id in a path: a visitor's 32 hex characters, any other a UUID (a tag's name is
    any string). A malformed id is answered as an unknown one: 404."""
    if name == "visitor_id":
        return shapes.VISITOR_ID
    return shapes.UUID if name.endswith("_id") else shapes.STRING


def _is_cursor_page(schema: dict[str, Any] | None) -> bool:
    return schema is not None and set(schema.get("properties", ())) == CURSOR_FIELDS


def _operation_id(route: Route) -> str:
    return route.handler.__module__.rsplit(".", 1)[-1] + "." + route.handler.__name__
