"""The OpenAPI 3.1 description served at ``/openapi.json``.

Built from the routes as they are registered (method, path, summary, body model, success
status), with request schemas taken from the same pydantic models that validate the
bodies, so the description cannot drift from what the server accepts.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

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


class OpenApi:
    def __init__(self) -> None:
        self._paths: dict[str, dict[str, Any]] = {}
        self._schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def add(
        self, method: str, path: str, summary: str, *, body: type[BaseModel] | None, status: int
    ) -> None:
        operation: dict[str, Any] = {
            "summary": summary,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"{(\w+)}", path)
            ],
            "responses": {
                str(status): {"description": "Success"},
                "default": {
                    "description": "Error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                },
            },
        }
        if method == "GET" and "{" not in path.rsplit("/", 1)[-1]:
            operation["parameters"] += [
                {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                {
                    "name": "page_size",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "default": 25},
                },
            ]
        if body is not None:
            self._schemas[body.__name__] = body.model_json_schema()
            operation["requestBody"] = {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{body.__name__}"}
                    }
                },
            }
        self._paths.setdefault(path, {})[method.lower()] = operation

    def document(self) -> dict[str, Any]:
        return {
            "openapi": "3.1.0",
            "info": {"title": "Chat engine", "version": "5"},
            "components": {
                "schemas": self._schemas,
                "securitySchemes": {
                    # "Authorization: Token <token>": the engine's own tokens
                    "token": {"type": "apiKey", "in": "header", "name": "Authorization"},
                    # "Authorization: Bearer <jwt>": a token the org's application signed
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                },
            },
            "security": [{"token": []}, {"bearer": []}],
            "paths": self._paths,
        }
