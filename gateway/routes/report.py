"""The org's chat report: filters, orderings and numbered pages of chats in rich form."""

from __future__ import annotations

from functools import partial

from engine import shapes, views
from engine.report import run_report
from gateway import validation as v
from gateway.auth import require_org
from gateway.pagination import link_builder
from gateway.routes.context import Context, Route, base_url, principal
from gateway.web import Request, Response, json_response


async def chat_report(ctx: Context, req: Request, org_id: str) -> Response:
    state = ctx.state
    require_org(state, principal(ctx, req), org_id)
    query = v.parse_report_query(req.args, state.chats, org_id)
    result = run_report(state, org_id, query)
    link = link_builder(base_url(ctx, req), req.path, req.arg_pairs, "page")
    render = partial(views.chat_rich_view_of, users=state.users, visitors=state.visitors)
    return json_response(
        views.report_page_view(result, query.page_size, lambda number: link(str(number)), render)
    )


ROUTES = [
    Route(
        "GET",
        "/api/v5/orgs/{org_id}/chats",
        chat_report,
        "The org's chat report: filters, orderings, pages.",
        query=v.REPORT_QUERY,
        response=shapes.report_page("ChatRich"),
    ),
]
