"""An org's webhook endpoints: registering, listing and removing them, and the recent
delivery attempts of one (delivery itself: ``gateway.webhooks``)."""

from __future__ import annotations

from sortedcontainers import SortedDict

from engine import errors, shapes
from engine.collections import SortedView
from engine.webhooks import Webhook, webhook_view
from gateway import validation as v
from gateway.auth import require_org
from gateway.routes.context import Context, Route, page, principal, read_body
from gateway.web import Request, Response, json_response
from gateway.webhooks import check_target


def _hook(ctx: Context, org_id: str, webhook_id: str) -> Webhook:
    hook = ctx.state.webhooks.by_id.get(webhook_id)
    if hook is None or hook.org_id != org_id:
        raise errors.NotFound("Webhook not found.")
    return hook


async def create_webhook(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    data = read_body(req, v.WebhookCreate)
    await check_target(data.url, ctx.settings.webhook_allow)
    hook = await ctx.engine.directory.create_webhook(org_id, data.url, data.events, data.secret)
    return json_response(webhook_view(hook), 201)


async def list_webhooks(ctx: Context, req: Request, org_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    # at most a few per org: keyed by the position of the record that created each
    hooks = SortedDict({hook.start_lsn: hook for hook in ctx.state.webhooks.of_org(org_id)})
    return page(ctx, req, SortedView(hooks), webhook_view)


async def delete_webhook(ctx: Context, req: Request, org_id: str, webhook_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    _hook(ctx, org_id, webhook_id)
    await ctx.engine.directory.delete_webhook(org_id, webhook_id)
    return Response(b"", 204, None)


async def deliveries(ctx: Context, req: Request, org_id: str, webhook_id: str) -> Response:
    require_org(ctx.state, principal(ctx, req), org_id, users_too=False)
    hook = _hook(ctx, org_id, webhook_id)
    if ctx.node.forwards_writes:
        # attempts are made, and remembered, on the primary only: a replica's own view
        # would show none
        return await ctx.node.forward(req)
    deliverer = ctx.webhooks
    attempts = deliverer.attempts(hook.id) if deliverer is not None else []
    status = deliverer.status(hook.id) if deliverer is not None else {}
    return json_response({**status, "results": attempts})


WEBHOOKS = "/api/v5/orgs/{org_id}/webhooks"
ROUTES = [
    Route(
        "GET",
        WEBHOOKS,
        list_webhooks,
        "The org's webhook endpoints (secrets never shown).",
        response=shapes.cursor_page("Webhook"),
    ),
    Route(
        "POST",
        WEBHOOKS,
        create_webhook,
        "Register a webhook endpoint.",
        body=v.WebhookCreate,
        status=201,
        response=shapes.ref("Webhook"),
    ),
    Route("DELETE", WEBHOOKS + "/{webhook_id}", delete_webhook, "Remove a webhook.", status=204),
    Route(
        "GET",
        WEBHOOKS + "/{webhook_id}/deliveries",
        deliveries,
        "The endpoint's recent delivery attempts, newest first.",
        response=shapes.ref("WebhookDeliveries"),
    ),
]
