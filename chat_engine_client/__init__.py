"""A Python client of the chat engine: the HTTP API (:class:`ChatEngine`) and the live
channels with resume across reconnects (:class:`ChannelClient`), on anyio, so it runs
under asyncio and trio alike. See docs/python-client.md."""

from chat_engine_client.channels import Backoff, ChannelClient, Event, Reset, Subscription
from chat_engine_client.errors import (
    ApiError,
    ChannelError,
    ChatEngineError,
    SubscriptionError,
    TokenInvalid,
)
from chat_engine_client.http import ChatEngine, OrgApi, Page, VisitorApi

__all__ = [
    "ApiError",
    "Backoff",
    "ChannelClient",
    "ChannelError",
    "ChatEngine",
    "ChatEngineError",
    "Event",
    "OrgApi",
    "Page",
    "Reset",
    "Subscription",
    "SubscriptionError",
    "TokenInvalid",
    "VisitorApi",
]
