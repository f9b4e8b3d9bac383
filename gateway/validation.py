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
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine import errors
from engine.chat import ChatState
from engine.directory import message_text_problem
from engine.ids import is_uuid, is_visitor_id
from engine.model import POSTABLE_TYPES
from engine.report import ORDERINGS, ReportQuery, reported
from engine.timefmt import parse_ms

MAX_BODY_BYTES = 64 * 1024
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25

M = TypeVar("M", bound=BaseModel)


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
    name: str = Field(max_length=200)
    _check_name = field_validator("name")(_not_blank)


class RoomCreate(Body):
    name: str = Field(max_length=200)
    private_chats: bool = False
    _check_name = field_validator("name")(_not_blank)


class ShareCreate(Body):
    organization_id: str


class UserCreate(Body):
    first_name: str = Field(max_length=200)
    last_name: str = Field(max_length=200)
    alias: str = Field(max_length=200)
    room_ids: list[str] | None = Field(default=None, max_length=10_000)
    _check_first = field_validator("first_name")(_not_blank)

    @field_validator("room_ids")
    @classmethod
    def _room_ids_are_uuids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not all(is_uuid(item) for item in value):
            raise ValueError("Must be a list of room ids.")
        return value


class VisitorCreate(Body):
    id: str | None = None

    @field_validator("id")
    @classmethod
    def _visitor_id(cls, value: str | None) -> str | None:
        if value is not None and not is_visitor_id(value):
            raise ValueError("Must be 32 lower-case hexadecimal characters.")
        return value


class ChatCreate(Body):
    auto_resume: str | None = None


class ChatUpdate(Body):
    is_ended: bool = False
    is_private: bool | None = None


class VisitorChatCreate(Body):
    auto_resume: bool = True


class VisitorChatUpdate(Body):
    is_ended: bool = False


class VisitorMessageCreate(Body):
    message: str
    page_url: str | None = Field(default=None, max_length=4096)
    page_title: str | None = Field(default=None, max_length=1024)

    _check_message = field_validator("message")(_message_text)


DECIMAL = re.compile(r"\d{1,12}(\.\d{1,6})?")


def _decimal_string(value: str | None) -> str | None:
    if value is not None and DECIMAL.fullmatch(value) is None:
        raise ValueError("Must be a non-negative decimal string like '19.99'.")
    return value


class ProductCreate(Body):
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=4000)
    category: str | None = Field(default=None, max_length=200)
    product_number: str | None = Field(default=None, max_length=200)
    price: str
    quantity: int = Field(ge=0, le=1_000_000)
    monthly_price: str | None = None
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
    currency: str = Field(max_length=10)
    products: list[ProductCreate] = Field(default_factory=list, max_length=1000)
    _check_currency = field_validator("currency")(_not_blank)


class CartUpdate(Body):
    locked: bool = False


class TagCreate(Body):
    name: str = Field(max_length=100)
    _check_name = field_validator("name")(_not_blank)


class PresenceCreate(Body):
    user_id: str
    exclusive: bool = False


class MessageCreate(Body):
    sender_id: str
    message: str
    type: str = "msg"
    page_url: str | None = Field(default=None, max_length=4096)
    page_title: str | None = Field(default=None, max_length=1024)

    _check_message = field_validator("message")(_message_text)

    @field_validator("type")
    @classmethod
    def _postable_type(cls, value: str) -> str:
        if value not in POSTABLE_TYPES:
            raise ValueError("Must be 'msg' or 'autosuggest'.")
        return value


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


class WebhookCreate(Body):
    url: str = Field(max_length=2048)
    events: list[str] = Field(max_length=10)
    secret: str = Field(min_length=16, max_length=256)
