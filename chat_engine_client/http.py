"""The HTTP API, over httpx's async client (which runs under asyncio and trio).

``ChatEngine`` holds the connection pool and a token; ``engine.org(org_id)`` and
``engine.visitor(visitor_id)`` are views of the same client for the calls under an org
and under a visitor. Every method returns the answer's JSON (a ``dict``); an answer of
400 or more raises :class:`~chat_engine_client.errors.ApiError`. The few calls whose
status says something (a chat resumed or created, a presence new or already there)
return ``(resource, created)``.

Cursor collections come back as async iterators that follow ``next`` until it is null
(``page_size`` sets how many items each request fetches); ``page()`` reads one page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from chat_engine_client.errors import ApiError

API = "/api/v5"
Json = dict[str, Any]


@dataclass(frozen=True)
class Page:
    """One page of a cursor collection."""

    results: list[Json]
    next: str | None
    previous: str | None


class ChatEngine:
    """An HTTP client of one server, acting with one token (or none, for open visitor
    registration and the health checks), sent as ``Authorization: <scheme> <token>``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        scheme: str = "Token",
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.scheme = scheme
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    def with_token(self, token: str | None, *, scheme: str | None = None) -> ChatEngine:
        """The same server and connection pool, acting with another token. Closing the
        copy leaves the pool open (the original owns it)."""
        return ChatEngine(self.base_url, token, scheme=scheme or self.scheme, http=self.http)

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> ChatEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---- the transport -------------------------------------------------------------

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """One request; raises :class:`ApiError` for a status of 400 or more. ``path``
        is a path under the base URL or an absolute URL (a ``next`` link)."""
        headers = {"Authorization": f"{self.scheme} {self.token}"} if self.token else {}
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        response = await self.http.request(
            method, path, json=json, params=query or None, headers=headers
        )
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            raise ApiError.from_body(
                response.status_code,
                body,
                method=method,
                url=str(response.request.url),
                retry_after=_retry_after(response),
            )
        return response

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """The JSON of the answer (``None`` for a 204)."""
        response = await self.send(method, path, json=json, params=params)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def page(self, path: str, **params: Any) -> Page:
        """One page of a cursor collection (``path`` may be a ``next`` URL)."""
        body = await self.request("GET", path, params=params)
        return Page(list(body["results"]), body.get("next"), body.get("previous"))

    async def iterate(self, path: str, **params: Any) -> AsyncIterator[Json]:
        """Every item of a cursor collection, following ``next`` (which keeps the
        filters and ``page_size``); the server's keyset cursors never skip nor repeat
        an item while others insert."""
        page = await self.page(path, **params)
        while True:
            for item in page.results:
                yield item
            if not page.next:
                return
            page = await self.page(page.next)

    async def collect(self, path: str, **params: Any) -> list[Json]:
        """Every item of a cursor collection, as a list."""
        return [item async for item in self.iterate(path, **params)]

    # ---- operations and the directory ----------------------------------------------

    async def healthz(self) -> bool:
        return (await self.http.get("/healthz")).status_code == 200

    async def readyz(self) -> bool:
        return (await self.http.get("/readyz")).status_code == 200

    async def create_org(self, name: str) -> Json:
        """A new org (admin only); the answer holds its service ``token``, shown once."""
        return await self.request("POST", f"{API}/orgs", json={"name": name})

    def org(self, org_id: str) -> OrgApi:
        return OrgApi(self, org_id)

    def visitor(self, visitor_id: str) -> VisitorApi:
        return VisitorApi(self, visitor_id)

    async def register_visitor(self) -> Json:
        """Open registration: ``{id, token}`` of a new visitor (no token needed)."""
        return await self.request("POST", f"{API}/client/visitors")


class OrgApi:
    """The calls under ``/api/v5/orgs/{org_id}``: the directory, the operator API and
    the report."""

    def __init__(self, engine: ChatEngine, org_id: str) -> None:
        self.engine = engine
        self.id = org_id
        self.path = f"{API}/orgs/{org_id}"

    async def _call(self, method: str, suffix: str, **kwargs: Any) -> Any:
        return await self.engine.request(method, self.path + suffix, **kwargs)

    async def get(self) -> Json:
        return await self._call("GET", "")

    # rooms
    async def create_room(self, name: str, *, private_chats: bool = False) -> Json:
        return await self._call(
            "POST", "/rooms", json={"name": name, "private_chats": private_chats}
        )

    def rooms(self, *, page_size: int | None = None) -> AsyncIterator[Json]:
        return self.engine.iterate(self.path + "/rooms", page_size=page_size)

    async def share_room(self, room_id: str, organization_id: str) -> Json:
        return await self._call(
            "POST", f"/rooms/{room_id}/shares", json={"organization_id": organization_id}
        )

    # users and visitors
    async def create_user(
        self,
        first_name: str,
        last_name: str,
        alias: str,
        *,
        room_ids: Sequence[str] | None = None,
    ) -> Json:
        """A new operator; the answer holds its ``token``, shown once."""
        body = {
            "first_name": first_name,
            "last_name": last_name,
            "alias": alias,
            "room_ids": None if room_ids is None else list(room_ids),
        }
        return await self._call("POST", "/users", json=body)

    async def get_user(self, user_id: str) -> Json:
        return await self._call("GET", f"/users/{user_id}")

    async def register_visitor(self, visitor_id: str | None = None) -> Json:
        """``{id, token}``. Registering an ID this org already has gives it a fresh
        token, and the old one stops working (its open sessions close with 4001)."""
        body = {} if visitor_id is None else {"id": visitor_id}
        return await self._call("POST", "/visitors", json=body)

    async def put_api_data(self, visitor_id: str, items: Sequence[Mapping[str, Any]]) -> Any:
        return await self._call("PUT", f"/visitors/{visitor_id}/api_data", json=list(items))

    # chats
    async def create_chat(self, room_id: str, visitor_id: str) -> Json:
        """A new chat of the visitor in the room (collection form)."""
        return await self._call("POST", f"/rooms/{room_id}/visitors/{visitor_id}/chats")

    async def resume_chat(self, room_id: str, visitor_id: str, user_id: str) -> tuple[Json, bool]:
        """``auto_resume``: join ``user_id`` to the visitor's recent open chat in the room,
        or create one with the user present. ``created`` is true for a new chat."""
        response = await self.engine.send(
            "POST",
            f"{self.path}/rooms/{room_id}/visitors/{visitor_id}/chats",
            params={"auto_resume": user_id},
        )
        return response.json(), response.status_code == 201

    def room_chats(
        self,
        room_id: str,
        *,
        is_waiting_response: bool | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Json]:
        """The room's open chats, oldest first."""
        return self.engine.iterate(
            f"{self.path}/rooms/{room_id}/chats",
            is_waiting_response=is_waiting_response,
            page_size=page_size,
        )

    def user_chats(self, user_id: str, *, page_size: int | None = None) -> AsyncIterator[Json]:
        return self.engine.iterate(f"{self.path}/users/{user_id}/chats", page_size=page_size)

    def current_chats(self, user_id: str, *, page_size: int | None = None) -> AsyncIterator[Json]:
        """The chats where the user is present now, by join time."""
        return self.engine.iterate(
            f"{self.path}/users/{user_id}/current_chats", page_size=page_size
        )

    async def get_chat(self, chat_id: str) -> Json:
        """The rich form: api_data, logs, tags, shopping carts."""
        return await self._call("GET", f"/chats/{chat_id}")

    async def update_chat(
        self, chat_id: str, *, is_ended: bool | None = None, is_private: bool | None = None
    ) -> Json:
        body = {
            k: v for k, v in (("is_ended", is_ended), ("is_private", is_private)) if v is not None
        }
        return await self._call("PATCH", f"/chats/{chat_id}", json=body)

    async def end_chat(self, chat_id: str) -> Json:
        return await self.update_chat(chat_id, is_ended=True)

    # presences
    def presences(self, chat_id: str, *, page_size: int | None = None) -> AsyncIterator[Json]:
        return self.engine.iterate(f"{self.path}/chats/{chat_id}/presences", page_size=page_size)

    async def join(
        self, chat_id: str, user_id: str, *, exclusive: bool = False
    ) -> tuple[Json, bool]:
        """Make the user present; ``created`` is false when it already was. With
        ``exclusive``, another user's presence is ``ApiError`` ``chat_already_taken``."""
        response = await self.engine.send(
            "POST",
            f"{self.path}/chats/{chat_id}/presences",
            json={"user_id": user_id, "exclusive": exclusive},
        )
        return response.json(), response.status_code == 201

    async def leave(self, chat_id: str, user_id: str) -> None:
        await self._call("DELETE", f"/chats/{chat_id}/presences/{user_id}")

    def participations(
        self, user_id: str, chat_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[Json]:
        return self.engine.iterate(
            f"{self.path}/users/{user_id}/chats/{chat_id}/participations", page_size=page_size
        )

    # messages
    def messages(self, chat_id: str, *, page_size: int | None = None) -> AsyncIterator[Json]:
        """The chat's history, oldest first (``join``/``leave`` events included)."""
        return self.engine.iterate(f"{self.path}/chats/{chat_id}/messages", page_size=page_size)

    async def post_message(
        self,
        chat_id: str,
        sender_id: str,
        message: str,
        *,
        type: str = "msg",
        page_url: str | None = None,
        page_title: str | None = None,
    ) -> Json:
        body: Json = {"sender_id": sender_id, "message": message, "type": type}
        if page_url is not None:
            body["page_url"] = page_url
        if page_title is not None:
            body["page_title"] = page_title
        return await self._call("POST", f"/chats/{chat_id}/messages", json=body)

    # tags and carts
    async def add_tag(self, chat_id: str, name: str) -> Json:
        return await self._call("POST", f"/chats/{chat_id}/tags", json={"name": name})

    async def remove_tag(self, chat_id: str, name: str) -> None:
        await self._call("DELETE", f"/chats/{chat_id}/tags/{quote(name, safe='')}")

    async def create_cart(
        self, chat_id: str, currency: str, products: Sequence[Mapping[str, Any]] = ()
    ) -> Json:
        return await self._call(
            "POST",
            f"/chats/{chat_id}/shopping_carts",
            json={"currency": currency, "products": list(products)},
        )

    async def lock_cart(self, chat_id: str, cart_id: str) -> Json:
        return await self._call(
            "PATCH", f"/chats/{chat_id}/shopping_carts/{cart_id}", json={"locked": True}
        )

    async def add_product(self, chat_id: str, cart_id: str, product: Mapping[str, Any]) -> Json:
        return await self._call(
            "POST", f"/chats/{chat_id}/shopping_carts/{cart_id}/products", json=dict(product)
        )

    async def remove_product(self, chat_id: str, cart_id: str, product_id: str) -> None:
        await self._call(
            "DELETE", f"/chats/{chat_id}/shopping_carts/{cart_id}/products/{product_id}"
        )

    # the report (a page collection)
    async def report_page(self, *, page: int = 1, **filters: Any) -> Json:
        """One page of ``GET /orgs/{org}/chats`` (rich form), with the report's filters
        (``ordering``, ``page_size``, ``since_id``, ``start_time``, ``end_time``,
        ``has_sales``, ``is_real_conversation``, ``room_id``, ``tag``,
        ``min_message_count``, ``only_ended``)."""
        return await self._call("GET", "/chats", params={"page": page, **filters})

    async def report(self, **filters: Any) -> AsyncIterator[Json]:
        """Every chat of the report, page after page."""
        page = 1
        while True:
            body = await self.report_page(page=page, **filters)
            for chat in body["results"]:
                yield chat
            if not body.get("next_page"):
                return
            page = int(body["next_page"])


class VisitorApi:
    """The visitor's own API, under ``/api/v5/client/visitors/{visitor_id}`` (the
    client acts with the visitor's token)."""

    def __init__(self, engine: ChatEngine, visitor_id: str) -> None:
        self.engine = engine
        self.id = visitor_id
        self.path = f"{API}/client/visitors/{visitor_id}"

    async def _call(self, method: str, suffix: str, **kwargs: Any) -> Any:
        return await self.engine.request(method, self.path + suffix, **kwargs)

    def chats(self, *, page_size: int | None = None) -> AsyncIterator[Json]:
        return self.engine.iterate(self.path + "/chats", page_size=page_size)

    async def start_chat(self, room_id: str, *, auto_resume: bool = False) -> tuple[Json, bool]:
        """A new chat in the room, or with ``auto_resume`` the newest recent open one;
        ``created`` says which."""
        response = await self.engine.send(
            "POST", f"{self.path}/rooms/{room_id}/chats", json={"auto_resume": auto_resume}
        )
        return response.json(), response.status_code == 201

    async def get_chat(self, chat_id: str) -> Json:
        return await self._call("GET", f"/chats/{chat_id}")

    async def end_chat(self, chat_id: str) -> Json:
        return await self._call("PATCH", f"/chats/{chat_id}", json={"is_ended": True})

    def presences(self, chat_id: str, *, page_size: int | None = None) -> AsyncIterator[Json]:
        return self.engine.iterate(f"{self.path}/chats/{chat_id}/presences", page_size=page_size)

    def participations(self, chat_id: str, *, page_size: int | None = None) -> AsyncIterator[Json]:
        return self.engine.iterate(
            f"{self.path}/chats/{chat_id}/participations", page_size=page_size
        )

    def messages(self, chat_id: str, *, page_size: int | None = None) -> AsyncIterator[Json]:
        return self.engine.iterate(f"{self.path}/chats/{chat_id}/messages", page_size=page_size)

    async def post_message(
        self,
        chat_id: str,
        message: str,
        *,
        page_url: str | None = None,
        page_title: str | None = None,
    ) -> Json:
        body: Json = {"message": message}
        if page_url is not None:
            body["page_url"] = page_url
        if page_title is not None:
            body["page_title"] = page_title
        return await self._call("POST", f"/chats/{chat_id}/messages", json=body)


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
