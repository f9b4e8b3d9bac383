"""Request input: JSON bodies through strict pydantic models, query parameters by hand
(the report's filters among them).

Every failure becomes an ``EngineError`` in the contract's shape: 400
``invalid`` with ``errors`` naming each bad field, ``invalid_json`` / ``invalid_body`` for
a body that is not a JSON object, 415 for a body that is not JSON at all. Unknown body
fields are ignored; an empty body reads as ``{}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine import errors
from engine.chat import ChatState
from engine.directory import MAX_MESSAGE_LENGTH, message_text_problem
from engine.ids import VISITOR_ID_RE, is_uuid, is_visitor_id
from engine.model import POSTABLE_TYPES
from engine.report import ORDERINGS, ReportQuery, reported
from engine.timefmt import parse_ms
from engine.tokens import MAX_KEYS, MAX_KID_LENGTH

MAX_BODY_BYTES = 64 * 1024
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25

M = TypeVar("M", bound=BaseModel)


# What /openapi.json states of the rules the validators below apply by code.
NOT_BLANK: dict[str, Any] = {"pattern": r"\S"}
UUID_FIELD: dict[str, Any] = {"format": "uuid"}
POSTABLE: dict[str, Any] = {"enum": sorted(POSTABLE_TYPES)}
MESSAGE_RULE: dict[str, Any] = {"minLength": 1, "maxLength": MAX_MESSAGE_LENGTH, **NOT_BLANK}


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("Must not be blank.")
    return value


def _message_text(value: str) -> str:
    """The message rule lives in the engine; this only reports it on its field."""
    problem = message_text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class OrgCreate(Body):
    name: str = Field(max_length=200, json_schema_extra=NOT_BLANK)
    _check_name = field_validator("name")(_not_blank)


class RoomCreate(Body):
    name: str = Field(max_length=200, json_schema_extra=NOT_BLANK)
    private_chats: bool = False
    _check_name = field_validator("name")(_not_blank)


class ShareCreate(Body):
    organization_id: str = Field(json_schema_extra=UUID_FIELD)


class UserCreate(Body):
    first_name: str = Field(max_length=200, json_schema_extra=NOT_BLANK)
    last_name: str = Field(max_length=200)
    alias: str = Field(max_length=200)
    room_ids: list[str] | None = Field(
        default=None, max_length=10_000, json_schema_extra={"items": UUID_FIELD}
    )
    _check_first = field_validator("first_name")(_not_blank)

    @field_validator("room_ids")
    @classmethod
    def _room_ids_are_uuids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not all(is_uuid(item) for item in value):
            raise ValueError("Must be a list of room ids.")
        return value


class VisitorCreate(Body):
    id: str | None = Field(
        default=None, json_schema_extra={"pattern": f"^{VISITOR_ID_RE.pattern}$"}
    )

    @field_validator("id")
    @classmethod
    def _visitor_id(cls, value: str | None) -> str | None:
        if value is not None and not is_visitor_id(value):
            raise ValueError("Must be 32 lower-case hexadecimal characters.")
        return value


class ChatCreate(Body):
    auto_resume: str | None = Field(default=None, json_schema_extra=UUID_FIELD)


class ChatUpdate(Body):
    is_ended: bool = False
    is_private: bool | None = None


class VisitorChatCreate(Body):
    auto_resume: bool = True


class VisitorChatUpdate(Body):
    is_ended: bool = False


class VisitorMessageCreate(Body):
    message: str = Field(json_schema_extra=MESSAGE_RULE)
    page_url: str | None = Field(default=None, max_length=4096)
    page_title: str | None = Field(default=None, max_length=1024)

    _check_message = field_validator("message")(_message_text)


DECIMAL = re.compile(r"\d{1,12}(\.\d{1,6})?")
DECIMAL_FIELD: dict[str, Any] = {"pattern": f"^{DECIMAL.pattern}$"}


def _decimal_string(value: str | None) -> str | None:
    if value is not None and DECIMAL.fullmatch(value) is None:
        raise ValueError("Must be a non-negative decimal string like '19.99'.")
    return value


class ProductCreate(Body):
    name: str = Field(max_length=200, json_schema_extra=NOT_BLANK)
    description: str | None = Field(default=None, max_length=4000)
    category: str | None = Field(default=None, max_length=200)
    product_number: str | None = Field(default=None, max_length=200)
    price: str = Field(json_schema_extra=DECIMAL_FIELD)
    quantity: int = Field(ge=0, le=1_000_000)
    monthly_price: str | None = Field(default=None, json_schema_extra=DECIMAL_FIELD)
    monthly_quantity: int | None = Field(default=None, ge=0, le=1_000_000)
    stock_balance: int | None = None
    _check_name = field_validator("name")(_not_blank)
    _check_prices = field_validator("price", "monthly_price")(_decimal_string)

    def row(self) -> tuple[Any, ...]:
        """The fields in the order of ``engine.facts.ProductRow`` (id excluded)."""
        return (
            self.name,
            self.description,
            self.category,
            self.product_number,
            self.price,
            self.quantity,
            self.monthly_price,
            self.monthly_quantity,
            self.stock_balance,
        )


class CartCreate(Body):
    currency: str = Field(max_length=10, json_schema_extra=NOT_BLANK)
    products: list[ProductCreate] = Field(default_factory=list, max_length=1000)
    _check_currency = field_validator("currency")(_not_blank)


class CartUpdate(Body):
    locked: bool = False


class TagCreate(Body):
    name: str = Field(max_length=100, json_schema_extra=NOT_BLANK)
    _check_name = field_validator("name")(_not_blank)


class PresenceCreate(Body):
    user_id: str = Field(json_schema_extra=UUID_FIELD)
    exclusive: bool = False


class MessageCreate(Body):
    sender_id: str = Field(json_schema_extra=UUID_FIELD)
    message: str = Field(json_schema_extra=MESSAGE_RULE)
    type: str = Field(default="msg", json_schema_extra=POSTABLE)
    page_url: str | None = Field(default=None, max_length=4096)
    page_title: str | None = Field(default=None, max_length=1024)

    _check_message = field_validator("message")(_message_text)

    @field_validator("type")
    @classmethod
    def _postable_type(cls, value: str) -> str:
        if value not in POSTABLE_TYPES:
            raise ValueError("Must be 'msg' or 'autosuggest'.")
        return value


class JwtKeySpec(Body):
    kid: str = Field(min_length=1, max_length=MAX_KID_LENGTH)
    algorithm: Literal["HS256", "RS256", "ES256"]
    # an HS256 shared secret (at least 32 bytes) or a PEM public key
    key: str = Field(min_length=1, max_length=16_384)


class JwtKeysPut(Body):
    """An org's verification keys, replacing the ones it had (an empty list removes
    them). The body may also be the bare list."""

    keys: list[JwtKeySpec] = Field(max_length=MAX_KEYS)


def parse_jwt_keys(raw: bytes, content_type: str | None) -> list[tuple[str, str, str]]:
    """``[{"kid", "algorithm", "key"}, ...]`` or ``{"keys": [...]}``."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if raw.strip() and mime != "application/json":
        raise errors.UnsupportedMediaType("The body must be application/json.")
    try:
        data = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        raise errors.InvalidJson("The body is not valid JSON.") from None
    if isinstance(data, list):
        data = {"keys": data}
    if not isinstance(data, dict):
        raise errors.InvalidBody("The body must be a JSON array of {kid, algorithm, key}.")
    body = validate(JwtKeysPut, data)
    return [(item.kid, item.algorithm, item.key) for item in body.keys]


def parse_json_object(raw: bytes, content_type: str | None) -> dict[str, Any]:
    if not raw.strip():
        return {}
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime != "application/json":
        raise errors.UnsupportedMediaType("The body must be application/json.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.InvalidJson("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise errors.InvalidBody("The body must be a JSON object.")
    return data


API_DATA_BODY: dict[str, Any] = {
    "title": "ApiDataBody",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name", "value"],
        "properties": {"name": {"type": "string"}, "value": {}},
    },
}


def parse_api_data(raw: bytes, content_type: str | None) -> list[tuple[str, object]]:
    """``[{"name": str, "value": any JSON}]``; each bad item is named by its index."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if raw.strip() and mime != "application/json":
        raise errors.UnsupportedMediaType("The body must be application/json.")
    try:
        data = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError:
        raise errors.InvalidJson("The body is not valid JSON.") from None
    if not isinstance(data, list):
        raise errors.InvalidBody("The body must be a JSON array of {name, value} objects.")
    items: list[tuple[str, object]] = []
    for index, item in enumerate(data):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or "value" not in item
        ):
            raise errors.invalid_field(
                f"{index}", "Must be an object with a string 'name' and a 'value'."
            )
        items.append((item["name"], item["value"]))
    return items


def query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A query parameter as /openapi.json states it (``Route.query``)."""
    return {"name": name, "required": False, "description": description, "schema": schema}


BOOL_PARAM: dict[str, Any] = {"type": "string", "enum": ["true", "false", "1", "0"]}
TIME_PARAM: dict[str, Any] = {
    "type": "string",
    "description": "UTC with milliseconds: 2026-12-05T07:30:00.042, also with Z or +00:00.",
}
WAITING_QUERY = (
    query_param("is_waiting_response", BOOL_PARAM, "Only chats waiting (or not) for an answer."),
)
AUTO_RESUME_QUERY = (
    query_param(
        "auto_resume",
        {"type": "string", "format": "uuid"},
        "A user id: join that user to the visitor's recent chat, or to a new one "
        "(wins over the body's auto_resume).",
    ),
)


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        fields: dict[str, list[str]] = {}
        for problem in error.errors(include_url=False):
            name = ".".join(str(part) for part in problem["loc"]) if problem["loc"] else "body"
            message = problem["msg"].removeprefix("Value error, ")
            fields.setdefault(name, []).append(message)
        raise errors.Invalid("Invalid input.", fields) from None


def parse_bool(name: str, value: str) -> bool:
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise errors.invalid_field(name, "Must be true or false.")


def optional_bool(args: Any, name: str) -> bool | None:
    value = args.get(name)
    return None if value is None else parse_bool(name, value)


def parse_page_size(args: Any) -> int:
    value = args.get("page_size")
    if value is None:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(value)
    except ValueError:
        raise errors.invalid_field("page_size", "Must be an integer.") from None
    if size < 1:
        raise errors.invalid_field("page_size", "Must be at least 1.")
    return min(size, MAX_PAGE_SIZE)


def parse_int(args: Any, name: str, *, minimum: int) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise errors.invalid_field(name, "Must be an integer.") from None
    if number < minimum:
        raise errors.invalid_field(name, f"Must be at least {minimum}.")
    return number


def parse_time(args: Any, name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    try:
        return parse_ms(value)
    except ValueError as error:
        raise errors.invalid_field(name, str(error)) from None


REPORT_QUERY = (
    query_param(
        "ordering",
        {"type": "string", "enum": list(ORDERINGS), "default": "start_time"},
        "Order of the chats; ties by creation order.",
    ),
    query_param("page", {"type": "integer", "minimum": 1, "default": 1}, "Page number."),
    query_param(
        "page_size",
        {"type": "integer", "minimum": 1, "default": DEFAULT_PAGE_SIZE},
        f"Chats a page (above {MAX_PAGE_SIZE}: {MAX_PAGE_SIZE}).",
    ),
    query_param("since_id", {"type": "string", "format": "uuid"}, "Chats created after this one."),
    query_param("start_time", TIME_PARAM, "Chats started at or after this time."),
    query_param("end_time", TIME_PARAM, "Chats ended before this time."),
    query_param("has_sales", BOOL_PARAM, "Chats with (or without) a locked cart."),
    query_param("is_real_conversation", BOOL_PARAM, "Chats where both sides wrote (or not)."),
    query_param("room_id", {"type": "string", "format": "uuid"}, "Chats of this room."),
    query_param("tag", {"type": "string", "pattern": r"\S"}, "Chats with this tag."),
    query_param(
        "min_message_count", {"type": "integer", "minimum": 0}, "Chats with this many messages."
    ),
    query_param("only_ended", BOOL_PARAM, "true: ended chats only (false: as if absent)."),
)


def parse_report_query(args: Any, chats: Mapping[str, ChatState], org_id: str) -> ReportQuery:
    """The org report's filters, ordering and page from its query parameters."""
    ordering = args.get("ordering", "start_time")
    if ordering not in ORDERINGS:
        raise errors.invalid_field("ordering", f"Must be one of {', '.join(ORDERINGS)}.")
    since_seq = None
    since_id = args.get("since_id")
    if since_id is not None:
        since = chats.get(since_id) if is_uuid(since_id) else None
        if since is None or not reported(org_id, since.organization_id):
            raise errors.invalid_field("since_id", "Unknown chat.")
        since_seq = since.seq
    room_id = args.get("room_id")
    if room_id is not None and not is_uuid(room_id):
        raise errors.invalid_field("room_id", "Must be a room id.")
    tag = args.get("tag")
    if tag is not None and not tag.strip():
        raise errors.invalid_field("tag", "Must not be blank.")
    return ReportQuery(
        ordering=ordering,
        page=parse_int(args, "page", minimum=1) or 1,
        page_size=parse_page_size(args),
        since_seq=since_seq,
        start_time=parse_time(args, "start_time"),
        end_time=parse_time(args, "end_time"),
        has_sales=optional_bool(args, "has_sales"),
        is_real_conversation=optional_bool(args, "is_real_conversation"),
        room_id=room_id,
        tag=tag,
        min_message_count=parse_int(args, "min_message_count", minimum=0),
        only_ended=optional_bool(args, "only_ended") or False,
    )
