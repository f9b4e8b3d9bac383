"""The JSON Schema of every shape ``engine/views.py`` renders, for ``/openapi.json``.

One schema a view function, named as the OpenAPI document's components name it; nested
shapes are ``$ref``s to their own schema. Every object schema lists all its fields and
allows no others, so a field added to a view and not here (or the reverse) fails the
walk of every route against a real server (``tests/test_openapi_walk.py``), which
validates each real answer against the document.

A route states its answer's schema with ``Route(..., response=shapes.ref("Room"))``,
``shapes.cursor_page("Room")`` for a cursor-paginated collection, or
``shapes.report_page("ChatRich")`` for the numbered pages of the org report.
"""

from __future__ import annotations

from typing import Any

from engine.directory import MAX_MESSAGE_LENGTH
from engine.ids import UUID_RE, VISITOR_ID_RE
from engine.model import AUTOSUGGEST, JOIN, LEAVE, MSG, SENDER_USER, SENDER_VISITOR
from engine.tokens import ALGORITHMS
from engine.webhooks import EVENT_TYPES

Schema = dict[str, Any]
COMPONENTS = "#/components/schemas/"

TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}$"
TIME: Schema = {
    "type": "string",
    "pattern": TIME_PATTERN,
    "description": "UTC, ISO 8601 with milliseconds and no offset.",
    "examples": ["2026-12-05T07:30:00.042"],
}
TIME_OR_NULL: Schema = {**TIME, "type": ["string", "null"]}
UUID: Schema = {"type": "string", "format": "uuid", "pattern": f"^{UUID_RE.pattern}$"}
UUID_OR_NULL: Schema = {**UUID, "type": ["string", "null"]}
VISITOR_ID: Schema = {"type": "string", "pattern": f"^{VISITOR_ID_RE.pattern}$"}
SENDER_ID: Schema = {"anyOf": [UUID, VISITOR_ID], "description": "A user id or a visitor id."}
CHAT_TOKEN: Schema = {"type": "string", "pattern": "^[a-z2-7]{48}$"}
SECRET: Schema = {"type": "string", "minLength": 1, "description": "Shown once; keep it."}
STRING: Schema = {"type": "string"}
STRING_OR_NULL: Schema = {"type": ["string", "null"]}
BOOL: Schema = {"type": "boolean"}
COUNT: Schema = {"type": "integer", "minimum": 0}
DECIMAL: Schema = {
    "type": "string",
    "pattern": r"^\d+(\.\d+)?$",
    "description": "An exact decimal number as a string.",
}
DECIMAL_OR_NULL: Schema = {**DECIMAL, "type": ["string", "null"]}
COUNT_OR_NULL: Schema = {"type": ["integer", "null"], "minimum": 0}
MESSAGE_TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_LENGTH}
URL_OR_NULL: Schema = {"type": ["string", "null"]}


def ref(name: str) -> Schema:
    """The schema named ``name`` (a key of ``SCHEMAS``)."""
    if name not in SCHEMAS:
        raise KeyError(f"No shape named {name!r}.")
    return {"$ref": COMPONENTS + name}


def obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """An object with exactly these fields, all present but ``optional`` ones."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def cursor_page(item: str) -> Schema:
    """A page of a cursor-paginated collection of ``item``s."""
    link = {"type": ["string", "null"], "format": "uri"}
    return obj({"next": link, "previous": link, "results": {"type": "array", "items": ref(item)}})


def report_page(item: str) -> Schema:
    """A numbered page of the org's chat report."""
    number_or_null = {"type": ["integer", "null"], "minimum": 1}
    link = {"type": ["string", "null"], "format": "uri"}
    return obj(
        {
            "count": COUNT,
            "num_pages": {"type": "integer", "minimum": 1},
            "per_page": {"type": "integer", "minimum": 1},
            "current_page": {"type": "integer", "minimum": 1},
            "next_page": number_or_null,
            "previous_page": number_or_null,
            "next_page_url": link,
            "previous_page_url": link,
            "results": {"type": "array", "items": ref(item)},
        }
    )


_CHAT_COMMON: dict[str, Schema] = {
    "id": UUID,
    "token": CHAT_TOKEN,
    "start_time": TIME,
    "end_time": TIME_OR_NULL,
    "updated_at": TIME,
    "is_private": BOOL,
    "is_real_conversation": BOOL,
    "is_autosuggested": BOOL,
    "room_id": UUID,
}

_USER_NAMES: dict[str, Schema] = {
    "first_name": STRING,
    "last_name": STRING,
    "full_name": STRING,
    "alias": STRING,
}

_PRODUCT = obj(
    {
        "id": UUID,
        "name": STRING,
        "description": STRING_OR_NULL,
        "category": STRING_OR_NULL,
        "product_number": STRING_OR_NULL,
        "price": DECIMAL,
        "quantity": COUNT,
        "monthly_price": DECIMAL_OR_NULL,
        "monthly_quantity": COUNT_OR_NULL,
        "stock_balance": {"type": ["integer", "null"]},
        "added_at": TIME,
        "deleted_at": TIME_OR_NULL,
    }
)

SCHEMAS: dict[str, Schema] = {
    # views.org_view: the token only in the answer that creates the org
    "Org": obj(
        {"id": UUID, "name": STRING, "created_at": TIME, "token": SECRET}, optional=("token",)
    ),
    # views.room_view
    "Room": obj(
        {
            "id": UUID,
            "name": STRING,
            "organization_id": UUID,
            "private_chats": BOOL,
            "created_at": TIME,
        }
    ),
    # views.user_view: the token only in the answer that creates the user
    "User": obj(
        {
            "id": UUID,
            "organization_id": UUID,
            **_USER_NAMES,
            "room_ids": {"type": ["array", "null"], "items": UUID},
            "created_at": TIME,
            "token": SECRET,
        },
        optional=("token",),
    ),
    # a room shared with another org
    "Share": obj({"room_id": UUID, "organization_id": UUID}),
    # a registered (or re-keyed) visitor
    "VisitorCredentials": obj({"id": VISITOR_ID, "token": SECRET}),
    # views.chat_collection_view
    "ChatCollection": obj(
        {
            **_CHAT_COMMON,
            "message_count": COUNT,
            "user_message_count": COUNT,
            "visitor_message_count": COUNT,
            "first_visitor_message_url": URL_OR_NULL,
            "first_visitor_message_url_title": STRING_OR_NULL,
            "autosuggest_url": URL_OR_NULL,
            "autosuggest_url_title": STRING_OR_NULL,
            "tag_count": COUNT,
            "is_waiting_response": BOOL,
            "currently_present_user_count": COUNT,
            "participation_count": COUNT,
            "user_participation_count": COUNT,
            "visitor_participation_count": COUNT,
            "visitor_id": VISITOR_ID,
            "organization_id": UUID,
        }
    ),
    # views.chat_rich_view
    "ChatRich": obj(
        {
            **_CHAT_COMMON,
            "api_data": {"$ref": COMPONENTS + "ApiData"},
            "operator_message_count": COUNT,
            "visitor_message_count": COUNT,
            "message_count": COUNT,
            "start_url": URL_OR_NULL,
            "start_url_title": STRING_OR_NULL,
            "autosuggest_url": URL_OR_NULL,
            "autosuggest_url_title": STRING_OR_NULL,
            "logs": {"type": "array", "items": {"$ref": COMPONENTS + "LogEntry"}},
            "tags": {"type": "array", "items": {"$ref": COMPONENTS + "Tag"}},
            "shopping_carts": {"type": "array", "items": {"$ref": COMPONENTS + "Cart"}},
        }
    ),
    # an entry of the rich form's logs: msg (1) and autosuggest (2) messages only
    "LogEntry": obj(
        {
            "created_at": TIME,
            "type": {"type": "integer", "enum": [1, 2], "description": "1 msg, 2 autosuggest"},
            "sender_type": {
                "type": "integer",
                "enum": [1, 2],
                "description": "1 operator, 2 visitor",
            },
            "sender_id": SENDER_ID,
            "message": STRING,
            "display_name": STRING_OR_NULL,
        }
    ),
    "Tag": obj({"name": {"type": "string", "minLength": 1, "maxLength": 100}}),
    # views.message_view, operator view
    "Message": obj(
        {
            "id": UUID,
            "type": {"type": "string", "enum": [MSG, AUTOSUGGEST, JOIN, LEAVE]},
            "created_at": TIME,
            "sender_type": {"type": "string", "enum": [SENDER_USER, SENDER_VISITOR]},
            "sender_id": SENDER_ID,
            "sender_public_name": STRING_OR_NULL,
            "sender_name": STRING_OR_NULL,
            "message": MESSAGE_TEXT,
        },
        optional=("message",),
    ),
    # views.message_view, visitor view: no sender_name
    "VisitorMessage": obj(
        {
            "id": UUID,
            "type": {"type": "string", "enum": [MSG, AUTOSUGGEST, JOIN, LEAVE]},
            "created_at": TIME,
            "sender_type": {"type": "string", "enum": [SENDER_USER, SENDER_VISITOR]},
            "sender_id": SENDER_ID,
            "sender_public_name": STRING_OR_NULL,
            "message": MESSAGE_TEXT,
        },
        optional=("message",),
    ),
    # views.presence_view, operator view
    "Presence": obj(
        {
            "user_id": UUID,
            "chat_id": UUID,
            "user": obj({"id": UUID, **_USER_NAMES}),
            "created_at": TIME,
        }
    ),
    # views.presence_view, visitor view: the user's id and alias only, no join time
    "VisitorPresence": obj(
        {"user_id": UUID, "chat_id": UUID, "user": obj({"id": UUID, "alias": STRING})}
    ),
    # views.participation_view
    "Participation": obj(
        {"id": SENDER_ID, "type": {"type": "string", "enum": [SENDER_VISITOR, SENDER_USER]}}
    ),
    # a visitor's api_data as its org set it
    "ApiData": {
        "type": "array",
        "items": obj({"name": STRING, "value": {}}),
    },
    # views.cart_view
    "Cart": obj(
        {
            "id": UUID,
            "opened_at": TIME,
            "total_price": DECIMAL,
            "monthly_total_price": DECIMAL,
            "currency": STRING,
            "locked_at": TIME_OR_NULL,
            "products": {"type": "array", "items": {"$ref": COMPONENTS + "Product"}},
        }
    ),
    # views.product_view
    "Product": _PRODUCT,
    # views.me_view: who a token belongs to (GET /api/v5/me)
    "Me": obj(
        {
            "kind": {"type": "string", "enum": ["admin", "org", "user", "visitor"]},
            "id": {"type": ["string", "null"]},
            "organization_id": UUID_OR_NULL,
            "user": {"anyOf": [{"$ref": COMPONENTS + "User"}, {"type": "null"}]},
        }
    ),
    # views.jwt_key_view: an HS256 shared secret is never shown back, a public key is
    "JwtKey": obj(
        {"kid": STRING, "algorithm": {"type": "string", "enum": list(ALGORITHMS)}, "key": STRING},
        optional=("key",),
    ),
    "JwtKeys": {"type": "array", "items": {"$ref": COMPONENTS + "JwtKey"}},
    # webhooks.webhook_view: the secret is never shown back
    "Webhook": obj(
        {
            "id": UUID,
            "organization_id": UUID,
            "url": STRING,
            "events": {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}},
            "created_at": TIME,
        }
    ),
    # gateway.webhooks: the endpoint's position and its recent attempts, newest first
    "WebhookDeliveries": obj(
        {
            "position": {"type": ["integer", "null"], "minimum": 0},
            "failing_since": TIME_OR_NULL,
            "results": {
                "type": "array",
                "items": obj(
                    {
                        "event_id": STRING_OR_NULL,
                        "type": STRING_OR_NULL,
                        "attempt": COUNT,
                        "at": TIME,
                        "outcome": {"type": "string", "enum": ["delivered", "failed", "skipped"]},
                        "status": {"type": ["integer", "null"]},
                        "error": STRING_OR_NULL,
                        "duration_ms": {"type": ["number", "null"], "minimum": 0},
                    }
                ),
            },
        }
    ),
}
