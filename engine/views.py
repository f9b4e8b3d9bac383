"""Resource renderers: the shapes clients see.

One function a shape. The operator and visitor views of a message or presence differ
only by the operator-only fields, which the visitor view leaves out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from engine.access import api_data_shown
from engine.chat import ChatState
from engine.model import (
    SENDER_USER,
    Cart,
    JwtKey,
    Message,
    Org,
    Presence,
    Product,
    Room,
    User,
    Visitor,
)
from engine.timefmt import format_ms, format_opt

if TYPE_CHECKING:  # engine.report imports engine.state, which imports this module
    from engine.report import ReportPage


def org_view(org: Org, token: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {"id": org.id, "name": org.name, "created_at": format_ms(org.created_at)}
    if token is not None:
        view["token"] = token
    return view


def room_view(room: Room) -> dict[str, Any]:
    return {
        "id": room.id,
        "name": room.name,
        "organization_id": room.organization_id,
        "private_chats": room.private_chats,
        "created_at": format_ms(room.created_at),
    }


def user_view(user: User, token: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": user.id,
        "organization_id": user.organization_id,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "full_name": user.full_name,
        "alias": user.alias,
        "room_ids": user.room_ids,
        "created_at": format_ms(user.created_at),
    }
    if token is not None:
        view["token"] = token
    return view


def me_view(
    kind: str, principal_id: str | None, org_id: str | None, user: User | None
) -> dict[str, Any]:
    """Who a token belongs to: what a page holding only a token (the console) reads
    first, to know the org and the user its paths and channels name."""
    return {
        "kind": kind,
        "id": principal_id,
        "organization_id": org_id,
        "user": None if user is None else user_view(user),
    }


def jwt_key_view(key: JwtKey) -> dict[str, Any]:
    """A verification key as the API shows it: a shared (HS256) secret is never shown,
    a public key is."""
    view: dict[str, Any] = {"kid": key.kid, "algorithm": key.algorithm}
    if key.algorithm != "HS256":
        view["key"] = key.key
    return view


def chat_collection_view(chat: ChatState) -> dict[str, Any]:
    """The collection form of a chat (room, user and visitor collections and channels)."""
    return {
        "id": chat.id,
        "token": chat.token,
        "start_time": format_ms(chat.start_time),
        "end_time": format_opt(chat.end_time),
        "updated_at": format_ms(chat.updated_at),
        "is_private": chat.is_private,
        "is_real_conversation": chat.is_real_conversation,
        "is_autosuggested": chat.is_autosuggested,
        "room_id": chat.room_id,
        "message_count": chat.message_count,
        "user_message_count": chat.user_message_count,
        "visitor_message_count": chat.visitor_message_count,
        "first_visitor_message_url": chat.first_visitor_message_url,
        "first_visitor_message_url_title": chat.first_visitor_message_url_title,
        "autosuggest_url": chat.autosuggest_url,
        "autosuggest_url_title": chat.autosuggest_url_title,
        "tag_count": chat.tag_count,
        "is_waiting_response": chat.is_waiting_response,
        "currently_present_user_count": chat.currently_present_user_count,
        "participation_count": chat.participation_count,
        "user_participation_count": chat.user_participation_count,
        "visitor_participation_count": chat.visitor_participation_count,
        "visitor_id": chat.visitor_id,
        "organization_id": chat.organization_id,
    }


def message_view(
    message: Message, users: Mapping[str, User], *, visitor_view: bool = False
) -> dict[str, Any]:
    user = users.get(message.sender_id) if message.sender_type == SENDER_USER else None
    view: dict[str, Any] = {
        "id": message.id,
        "type": message.type,
        "created_at": format_ms(message.created_at),
        "sender_type": message.sender_type,
        "sender_id": message.sender_id,
        "sender_public_name": user.alias if user is not None else None,
    }
    if not visitor_view:
        view["sender_name"] = user.full_name if user is not None else None
    if message.message is not None:
        view["message"] = message.message
    return view


def presence_view(
    presence: Presence, chat_id: str, user: User, *, visitor_view: bool = False
) -> dict[str, Any]:
    if visitor_view:
        return {
            "user_id": presence.user_id,
            "chat_id": chat_id,
            "user": {"id": user.id, "alias": user.alias},
        }
    return {
        "user_id": presence.user_id,
        "chat_id": chat_id,
        "user": {
            "id": user.id,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "full_name": user.full_name,
            "alias": user.alias,
        },
        "created_at": format_ms(presence.created_at),
    }


def presence_renderer(
    chat_id: str, users: Mapping[str, User], *, visitor_view: bool = False
) -> Callable[[Presence], dict[str, Any]]:
    """``presence_view`` for each presence of one chat, as a page renders them."""

    def render(presence: Presence) -> dict[str, Any]:
        return presence_view(presence, chat_id, users[presence.user_id], visitor_view=visitor_view)

    return render


def participation_view(participation: tuple[str, str]) -> dict[str, Any]:
    return {"id": participation[0], "type": participation[1]}


LOG_TYPES = {"msg": 1, "autosuggest": 2}
_UNNAMED: Any = object()  # not looked up yet (None is a name: a visitor without one)
LOG_SENDERS = {"user": 1, "visitor": 2}


def chat_rich_view(
    chat: ChatState, users: Mapping[str, User], api_data: list[dict[str, Any]]
) -> dict[str, Any]:
    """The rich form of a chat (the org report and ``GET /orgs/{org}/chats/{chat}``)."""
    visitor_name = next((item["value"] for item in api_data if item.get("name") == "name"), None)
    # The org report renders whole chats, 25 a page: a chat's few senders are looked up
    # and named once, not once per message (a user's full_name is built on each call).
    names: dict[str, str | None] = {}
    logs: list[dict[str, Any]] = []
    append = logs.append
    for message in chat.messages:
        kind = LOG_TYPES.get(message.type)
        if kind is None:
            continue
        sender_id = message.sender_id
        name = names.get(sender_id, _UNNAMED)
        if name is _UNNAMED:
            user = users.get(sender_id) if message.sender_type == SENDER_USER else None
            name = names[sender_id] = user.full_name if user is not None else visitor_name
        append(
            {
                "created_at": format_ms(message.created_at),
                "type": kind,
                "sender_type": LOG_SENDERS[message.sender_type],
                "sender_id": sender_id,
                "message": message.message,
                "display_name": name,
            }
        )
    return {
        "id": chat.id,
        "token": chat.token,
        "start_time": format_ms(chat.start_time),
        "end_time": format_opt(chat.end_time),
        "updated_at": format_ms(chat.updated_at),
        "is_private": chat.is_private,
        "is_real_conversation": chat.is_real_conversation,
        "is_autosuggested": chat.is_autosuggested,
        "room_id": chat.room_id,
        "api_data": api_data,
        "operator_message_count": chat.user_message_count,
        "visitor_message_count": chat.visitor_message_count,
        "message_count": chat.message_count,
        "start_url": chat.first_visitor_message_url,
        "start_url_title": chat.first_visitor_message_url_title,
        "autosuggest_url": chat.autosuggest_url,
        "autosuggest_url_title": chat.autosuggest_url_title,
        "logs": logs,
        "tags": [{"name": name} for name in chat.tags],
        "shopping_carts": [cart_view(cart) for cart in chat.carts],
    }


def chat_rich_view_of(
    chat: ChatState, users: Mapping[str, User], visitors: Mapping[str, Visitor]
) -> dict[str, Any]:
    """The rich form with the api_data the chat's org set on its visitor."""
    api_data = api_data_shown(visitors[chat.visitor_id], chat)
    return chat_rich_view(chat, users, api_data)


def report_page_view(
    result: ReportPage,
    per_page: int,
    url_for: Callable[[int], str],
    render: Callable[[ChatState], dict[str, Any]],
) -> dict[str, Any]:
    """A page of the org's chat report: numbered pages, with links to the neighbours."""
    return {
        "count": result.count,
        "num_pages": result.num_pages,
        "per_page": per_page,
        "current_page": result.page,
        "next_page": result.page + 1 if result.page < result.num_pages else None,
        "previous_page": result.page - 1 if result.page > 1 else None,
        "next_page_url": url_for(result.page + 1) if result.page < result.num_pages else None,
        "previous_page_url": url_for(result.page - 1) if result.page > 1 else None,
        "results": [render(chat) for chat in result.chats],
    }


def _money(products: list[Product], price: str, quantity: str) -> str:
    """Money as exact decimal strings (never floats): the sum of price × quantity of the
    products not deleted."""
    total = Decimal("0")
    for product in products:
        unit, count = getattr(product, price), getattr(product, quantity)
        if product.deleted_at is None and unit is not None and count is not None:
            total += Decimal(unit) * count
    return str(total)


def product_view(product: Product) -> dict[str, Any]:
    return {
        "id": product.id,
        "name": product.name,
        "description": product.description,
        "category": product.category,
        "product_number": product.product_number,
        "price": product.price,
        "quantity": product.quantity,
        "monthly_price": product.monthly_price,
        "monthly_quantity": product.monthly_quantity,
        "stock_balance": product.stock_balance,
        "added_at": format_ms(product.added_at),
        "deleted_at": format_opt(product.deleted_at),
    }


def cart_view(cart: Cart) -> dict[str, Any]:
    return {
        "id": cart.id,
        "opened_at": format_ms(cart.opened_at),
        "total_price": _money(cart.products, "price", "quantity"),
        "monthly_total_price": _money(cart.products, "monthly_price", "monthly_quantity"),
        "currency": cart.currency,
        "locked_at": format_opt(cart.locked_at),
        "products": [product_view(product) for product in cart.products],
    }
