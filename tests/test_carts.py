"""Shopping carts and products: decimal money, locking, deleting, sales."""

from __future__ import annotations

import pytest

from tests.conftest import World


def product(**extra: object) -> dict[str, object]:
    return {"name": "Widget", "price": "19.99", "quantity": 3, **extra}


async def new_chat(world: World) -> str:
    async with world.org_client as client:
        response = await client.post(
            world.path(f"/rooms/{world.room['id']}/visitors/{world.visitor['id']}/chats")
        )
    return response.json()["id"]


async def test_money_is_exact_and_deleted_products_do_not_count(world: World) -> None:
    chat_id = await new_chat(world)
    carts = world.path(f"/chats/{chat_id}/shopping_carts")
    async with world.org_client as client:
        created = await client.post(
            carts,
            json={
                "currency": "EUR",
                "products": [
                    product(),
                    product(name="Gone", price="5.00", quantity=1),
                    product(
                        name="Plan",
                        price="0",
                        quantity=1,
                        monthly_price="30.00",
                        monthly_quantity=12,
                    ),
                ],
            },
        )
        assert created.status_code == 201
        cart = created.json()
        assert (cart["total_price"], cart["monthly_total_price"]) == ("64.97", "360.00")
        gone = next(p for p in cart["products"] if p["name"] == "Gone")
        path = f"{carts}/{cart['id']}/products/{gone['id']}"
        assert (await client.delete(path)).status_code == 204
        assert (await client.delete(path)).status_code == 204  # again: no change
        added = await client.post(
            f"{carts}/{cart['id']}/products", json=product(name="Extra", price="0.10", quantity=0)
        )
        assert added.status_code == 201
        assert set(added.json()) == {
            "id",
            "name",
            "description",
            "category",
            "product_number",
            "price",
            "quantity",
            "monthly_price",
            "monthly_quantity",
            "stock_balance",
            "added_at",
            "deleted_at",
        }
        rich = (await client.get(world.path(f"/chats/{chat_id}"))).json()
    (shown,) = rich["shopping_carts"]
    assert shown["total_price"] == "59.97"  # 19.99 × 3; the deleted product is out
    assert shown["locked_at"] is None and shown["currency"] == "EUR"
    assert next(p for p in shown["products"] if p["name"] == "Gone")["deleted_at"] is not None


async def test_locking_sets_locked_at_once_and_makes_a_sale(world: World) -> None:
    sold, unsold = await new_chat(world), await new_chat(world)
    async with world.org_client as client:
        for chat_id in (sold, unsold):
            cart = (
                await client.post(
                    world.path(f"/chats/{chat_id}/shopping_carts"),
                    json={"currency": "EUR", "products": [product()]},
                )
            ).json()
            if chat_id == sold:
                path = world.path(f"/chats/{chat_id}/shopping_carts/{cart['id']}")
                first = (await client.patch(path, json={"locked": True})).json()
                again = (await client.patch(path, json={"locked": True})).json()
                unlock = (await client.patch(path, json={"locked": False})).json()
                assert first["locked_at"] is not None
                assert again["locked_at"] == unlock["locked_at"] == first["locked_at"]
        with_sales = (await client.get(world.path("/chats"), params={"has_sales": "true"})).json()
        without = (await client.get(world.path("/chats"), params={"has_sales": "false"})).json()
    assert [c["id"] for c in with_sales["results"]] == [sold]
    assert [c["id"] for c in without["results"]] == [unsold]


@pytest.mark.parametrize(
    "body,field",
    [
        ({"currency": "EUR", "products": [product(price=19.99)]}, "products.0.price"),
        ({"currency": "EUR", "products": [product(price="19,99")]}, "products.0.price"),
        ({"currency": "EUR", "products": [product(price="-1.00")]}, "products.0.price"),
        ({"currency": "EUR", "products": [product(quantity=-1)]}, "products.0.quantity"),
        ({"currency": "EUR", "products": [product(quantity="3")]}, "products.0.quantity"),
        ({"currency": "EUR", "products": [product(monthly_price="x")]}, "products.0.monthly_price"),
        ({"currency": "EUR", "products": [{"price": "1.00", "quantity": 1}]}, "products.0.name"),
        ({"products": []}, "currency"),
        ({"currency": " "}, "currency"),
    ],
)
async def test_bad_cart_input_names_the_field(world: World, body: dict, field: str) -> None:
    chat_id = await new_chat(world)
    async with world.org_client as client:
        response = await client.post(world.path(f"/chats/{chat_id}/shopping_carts"), json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["errors"]


async def test_unknown_carts_and_products_are_404(world: World) -> None:
    chat_id = await new_chat(world)
    carts = world.path(f"/chats/{chat_id}/shopping_carts")
    missing = "8d1c3a52-1111-4222-8333-444455556666"
    async with world.org_client as client:
        cart = (await client.post(carts, json={"currency": "EUR"})).json()
        assert cart["total_price"] == "0" and cart["products"] == []
        assert (await client.patch(f"{carts}/{missing}", json={"locked": True})).status_code == 404
        assert (await client.post(f"{carts}/{missing}/products", json=product())).status_code == 404
        assert (await client.delete(f"{carts}/{cart['id']}/products/{missing}")).status_code == 404
        # carts may still change on an ended chat
        await client.patch(world.path(f"/chats/{chat_id}"), json={"is_ended": True})
        assert (
            await client.post(f"{carts}/{cart['id']}/products", json=product())
        ).status_code == 201
