"""A chat's shopping carts: opening one, locking (purchasing) it, adding and removing
products."""

from __future__ import annotations

from engine import shapes, views
from gateway import validation as v
from gateway.auth import require_org, visible_chat
from gateway.routes.context import Context, Route, principal, read_body
from gateway.web import Request, Response, json_response


async def create_cart(ctx: Context, req: Request, org_id: str, chat_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    chat = visible_chat(ctx.state, org_id, chat_id)
    data = read_body(req, v.CartCreate)
    cart = await ctx.engine.chats.create_cart(chat, data.currency, [p.row() for p in data.products])
    return json_response(views.cart_view(cart), 201)


async def update_cart(
    ctx: Context, req: Request, org_id: str, chat_id: str, cart_id: str
) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    chat = visible_chat(ctx.state, org_id, chat_id)
    chat.cart(cart_id)  # 404 before validating the body
    data = read_body(req, v.CartUpdate)
    cart = await ctx.engine.chats.lock_cart(chat, cart_id, locked=data.locked)
    return json_response(views.cart_view(cart))


async def add_product(
    ctx: Context, req: Request, org_id: str, chat_id: str, cart_id: str
) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    chat = visible_chat(ctx.state, org_id, chat_id)
    chat.cart(cart_id)  # 404 before validating the body
    data = read_body(req, v.ProductCreate)
    product = await ctx.engine.chats.add_product(chat, cart_id, data.row())
    return json_response(views.product_view(product), 201)


async def delete_product(
    ctx: Context, req: Request, org_id: str, chat_id: str, cart_id: str, product_id: str
) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id)
    chat = visible_chat(ctx.state, org_id, chat_id)
    await ctx.engine.chats.delete_product(chat, cart_id, product_id)
    return Response(b"", 204, None)


CARTS = "/api/v5/orgs/{org_id}/chats/{chat_id}/shopping_carts"
ROUTES = [
    Route(
        "POST",
        CARTS,
        create_cart,
        "Open a shopping cart.",
        body=v.CartCreate,
        status=201,
        response=shapes.ref("Cart"),
    ),
    Route(
        "PATCH",
        CARTS + "/{cart_id}",
        update_cart,
        "Lock (purchase) a cart.",
        body=v.CartUpdate,
        response=shapes.ref("Cart"),
    ),
    Route(
        "POST",
        CARTS + "/{cart_id}/products",
        add_product,
        "Add a product to a cart.",
        body=v.ProductCreate,
        status=201,
        response=shapes.ref("Product"),
    ),
    Route(
        "DELETE",
        CARTS + "/{cart_id}/products/{product_id}",
        delete_product,
        "Remove a product (sets deleted_at).",
        status=204,
    ),
]
